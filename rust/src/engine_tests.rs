//! Tests of the accumulation paths: the fused scan against the spxquery 0.4.1
//! API's contribution lists, determinism across threads, strips and builds,
//! the skip rules, conservation laws and shape errors.

use ndarray::{Array2, Array3, ArrayView1};
use proptest::prelude::*;

use crate::contributions::{accumulate_contributions, spatial_mapping, Contributions};
use crate::culling::{BLOCK, SUPER, TOP};
use crate::frame::FrameView;
use crate::params::{Kernel, Params, Settings};
use crate::scan::CubeMut;
use crate::scan::{accumulate_frame, accumulate_frame_with, Isa};

struct Cube {
    flux: Array3<f64>,
    weight: Array3<f64>,
    var: Array3<f64>,
    count: Array3<u32>,
    and_mask: Array3<u32>,
    or_mask: Array3<u32>,
}

impl Cube {
    fn new(nz: usize, ny: usize, nx: usize) -> Cube {
        Cube {
            flux: Array3::zeros((nz, ny, nx)),
            weight: Array3::zeros((nz, ny, nx)),
            var: Array3::zeros((nz, ny, nx)),
            count: Array3::zeros((nz, ny, nx)),
            and_mask: Array3::zeros((nz, ny, nx)),
            or_mask: Array3::zeros((nz, ny, nx)),
        }
    }
    fn view(&mut self) -> CubeMut<'_> {
        CubeMut {
            flux: self.flux.view_mut(),
            weight: self.weight.view_mut(),
            var: self.var.view_mut(),
            count: self.count.view_mut(),
            and_mask: self.and_mask.view_mut(),
            or_mask: self.or_mask.view_mut(),
            cov: None,
        }
    }
}

/// Input frame under an affine map: output = a * (x, y) + t.
struct Frame {
    cx: Array2<f64>,
    cy: Array2<f64>,
    image: Array2<f64>,
    variance: Array2<f64>,
    flags: Array2<u32>,
    lam: Array2<f64>,
    dlam: Array2<f64>,
}

fn affine_frame(ny: usize, nx: usize, a: [[f64; 2]; 2], t: [f64; 2], value: impl Fn(usize, usize) -> f64) -> Frame {
    let cx = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| {
        let (x, y) = (i as f64 - 0.5, j as f64 - 0.5);
        a[0][0] * x + a[0][1] * y + t[0]
    });
    let cy = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| {
        let (x, y) = (i as f64 - 0.5, j as f64 - 0.5);
        a[1][0] * x + a[1][1] * y + t[1]
    });
    Frame {
        cx,
        cy,
        image: Array2::from_shape_fn((ny, nx), |(j, i)| value(j, i)),
        variance: Array2::from_elem((ny, nx), 0.25),
        flags: Array2::from_shape_fn((ny, nx), |(j, i)| 1 << ((j + i) % 3)),
        lam: Array2::from_shape_fn((ny, nx), |(j, _)| 1.0 + 0.01 * j as f64),
        dlam: Array2::from_elem((ny, nx), 0.02),
    }
}

impl Frame {
    fn view(&self) -> FrameView<'_> {
        FrameView {
            corners_x: self.cx.view(),
            corners_y: self.cy.view(),
            image: self.image.view(),
            variance: self.variance.view(),
            flags: self.flags.view(),
            lambda_c: self.lam.view(),
            delta_lambda: self.dlam.view(),
            exclude: None,
        }
    }
}

fn settings(kernel: Kernel, xy_shrink: f64) -> Settings {
    Settings { z_edges: vec![0.9, 1.05, 1.2, 1.5], xy_shrink, z_shrink: 1.0, ivar_max: 1e10, min_overlap: 0.0, kernel }
}

fn params(kernel: Kernel, xy_shrink: f64) -> Params {
    Params::new(settings(kernel, xy_shrink)).unwrap()
}

fn rotation(theta: f64, scale: f64) -> [[f64; 2]; 2] {
    let (s, c) = theta.sin_cos();
    [[scale * c, -scale * s], [scale * s, scale * c]]
}

#[test]
fn bitwise_identical_for_any_thread_count() {
    // One band per thread, with boundaries that follow the work (1, 2, 3
    // and 8 bands on each grid).
    let small = affine_frame(40, 37, rotation(0.3, 0.8), [5.0, -3.0], |j, i| (j * 31 + i * 17) as f64 % 7.0 - 2.0);
    let tall = affine_frame(120, 110, rotation(0.3, 2.1), [60.0, -10.0], |j, i| (j * 31 + i * 17) as f64 % 7.0 - 2.0);
    for (f, (ny, nx)) in [(&small, (33, 29)), (&tall, (260, 250))] {
        let mut results = vec![];
        for threads in [1, 2, 3, 8] {
            for kernel in [Kernel::Square, Kernel::Bilinear] {
                let mut c = Cube::new(3, ny, nx);
                let stats = accumulate_frame(c.view(), &f.view(), &params(kernel, 0.7), threads).unwrap();
                results.push((threads, kernel, stats.n_contributions, c.flux, c.weight, c.var, c.count, c.and_mask, c.or_mask));
            }
        }
        assert!(results[0].2 > 1000);
        for r in &results[2..] {
            let base = &results[if r.1 == Kernel::Square { 0 } else { 1 }];
            assert_eq!(r.2, base.2);
            assert!(r.3.iter().zip(base.3.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "flux differs at {} threads", r.0);
            assert!(r.4.iter().zip(base.4.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(r.5.iter().zip(base.5.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert_eq!(r.6, base.6);
            assert_eq!(r.7, base.7);
            assert_eq!(r.8, base.8);
        }
    }
}

#[test]
fn strips_of_rows_give_the_same_bits_as_one_call() {
    // Input pixels are visited row-major, so feeding a frame in strips of rows
    // (as the pipeline does for large crops) changes nothing.
    use ndarray::s;
    let f = affine_frame(40, 37, rotation(0.4, 0.45), [3.0, 1.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
    for kernel in [Kernel::Square, Kernel::Bilinear] {
        let mut whole = Cube::new(3, 33, 29);
        accumulate_frame(whole.view(), &f.view(), &params(kernel, 0.7), 2).unwrap();
        let mut strips = Cube::new(3, 33, 29);
        for (j0, j1) in [(0, 13), (13, 14), (14, 29), (29, 40)] {
            let v = FrameView {
                corners_x: f.cx.slice(s![j0..=j1, ..]),
                corners_y: f.cy.slice(s![j0..=j1, ..]),
                image: f.image.slice(s![j0..j1, ..]),
                variance: f.variance.slice(s![j0..j1, ..]),
                flags: f.flags.slice(s![j0..j1, ..]),
                lambda_c: f.lam.slice(s![j0..j1, ..]),
                delta_lambda: f.dlam.slice(s![j0..j1, ..]),
                exclude: None,
            };
            accumulate_frame(strips.view(), &v, &params(kernel, 0.7), 2).unwrap();
        }
        assert!(whole.flux.iter().any(|v| *v != 0.0));
        assert!(whole.flux.iter().zip(strips.flux.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{kernel:?}");
        assert!(whole.var.iter().zip(strips.var.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(whole.count, strips.count);
        assert_eq!(whole.and_mask, strips.and_mask);
    }
}

#[test]
fn empty_cubes_and_frames_deposit_nothing() {
    // Regression: a zero-row cube with a non-finite corner panicked (band range underflow).
    let mut f = affine_frame(6, 5, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
    f.cx.fill(f64::NAN);
    for (ny, nx) in [(0, 4), (4, 0), (0, 0)] {
        for kernel in [Kernel::Square, Kernel::Bilinear] {
            let mut c = Cube::new(3, ny, nx);
            let st = accumulate_frame(c.view(), &f.view(), &params(kernel, 0.8), 1).unwrap();
            assert_eq!((st.n_pixels, st.n_contributions, st.planes.len()), (0, 0, 3));
        }
    }
    let empty = affine_frame(0, 5, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
    let mut c = Cube::new(3, 4, 4);
    assert_eq!(accumulate_frame(c.view(), &empty.view(), &params(Kernel::Square, 0.8), 1).unwrap().n_pixels, 0);
}

/// Drizzles `f` with the fused path and with the spxquery 0.4.1 API (contribution list,
/// then accumulation) and checks that they agree voxel for voxel, with the same
/// statistics. Returns the number of contributing pixels.
fn assert_fused_equals_contribution_list(f: &Frame, p: &Params, shape: (usize, usize, usize)) -> u64 {
    let (nz, ny, nx) = shape;
    let mut fused = Cube::new(nz, ny, nx);
    let st = accumulate_frame(fused.view(), &f.view(), p, 2).unwrap();
    let m = spatial_mapping(f.cx.view(), f.cy.view(), ny, nx, p.xy_shrink, p.kernel, 2).unwrap();
    let flat = |a: &Array2<f64>| a.iter().copied().collect::<Vec<f64>>();
    let (img, var, lam, dlam) = (flat(&f.image), flat(&f.variance), flat(&f.lam), flat(&f.dlam));
    let flags: Vec<u32> = f.flags.iter().copied().collect();
    let c = Contributions {
        image: ArrayView1::from(&img),
        variance: ArrayView1::from(&var),
        flags: ArrayView1::from(&flags),
        lambda_c: ArrayView1::from(&lam),
        delta_lambda: ArrayView1::from(&dlam),
        exclude: None,
        pixel_idx: ArrayView1::from(&m.pixel_idx),
        out_y: ArrayView1::from(&m.out_y),
        out_x: ArrayView1::from(&m.out_x),
        f_xy: ArrayView1::from(&m.f_xy),
    };
    let mut listed = Cube::new(nz, ny, nx);
    let ss = accumulate_contributions(listed.view(), &c, p, 2).unwrap();
    assert_eq!((st.n_pixels, st.n_contributions, &st.planes), (ss.n_pixels, ss.n_contributions, &ss.planes));
    for (a, b) in fused.flux.iter().zip(listed.flux.iter()).chain(fused.var.iter().zip(listed.var.iter())) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert_eq!(fused.count, listed.count);
    assert_eq!((&fused.and_mask, &fused.or_mask), (&listed.and_mask, &listed.or_mask));
    st.n_pixels
}

#[test]
fn fused_path_equals_contribution_list_and_counts_each_pixel_once() {
    // Pixels whose droplets straddle band boundaries are drizzled by two band
    // tasks; the statistics must still count each once, and every voxel must
    // equal the spxquery 0.4.1 API's result (contribution list, then accumulation).
    for (theta, scale, kernel) in [(0.3, 0.45, Kernel::Square), (1.1, 1.7, Kernel::Square), (0.3, 0.45, Kernel::Bilinear), (2.0, 3.3, Kernel::Square)]
    {
        let mut f = affine_frame(40, 37, rotation(theta, scale), [16.0, 14.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        f.image[[5, 5]] = f64::NAN;
        let n = assert_fused_equals_contribution_list(&f, &params(kernel, 0.7), (3, 33, 29));
        assert!(n > 20, "{theta} {scale}: {n}");
    }
}

#[test]
fn live_blocks_across_region_boundaries_find_every_pixel() {
    // A frame larger than the regions tested first (TOP super-blocks), the
    // grid seeing a patch that straddles region, super-block and block
    // boundaries, or lies inside one region: the fused path (live blocks)
    // must find every pixel the contribution list (all pixels) finds.
    let side = (BLOCK * SUPER * TOP) as f64;
    for (centre, theta) in [((side, side), 0.4), ((side, 2.0 * side), 1.3), ((1.5 * side, 0.5 * side), 2.9)] {
        let a = rotation(theta, 1.0);
        // Input pixel `centre` lands on output pixel (30, 30).
        let t = [30.0 - (a[0][0] * centre.0 + a[0][1] * centre.1), 30.0 - (a[1][0] * centre.0 + a[1][1] * centre.1)];
        let mut f = affine_frame(1100, 1300, a, t, |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        f.lam = Array2::from_shape_fn((1100, 1300), |(j, i)| 1.0 + 0.05 * ((j + 2 * i) % 9) as f64);
        let n = assert_fused_equals_contribution_list(&f, &params(Kernel::Square, 0.8), (3, 61, 60));
        assert!(n > 3000, "{centre:?}: {n}");
    }
}

/// Drizzles `f` once with contiguous corner rows (whole blocks go through
/// the SIMD lanes) and once with strided corner rows (every pixel through
/// the scalar path); the cubes must be bit for bit the same.
fn assert_lanes_equal_scalar(f: &Frame, p: &Params, shape: (usize, usize, usize)) {
    let (nz, ny, nx) = shape;
    let strided = |a: &Array2<f64>| {
        let mut wide = Array2::from_elem((a.nrows(), 2 * a.ncols()), f64::NAN);
        wide.slice_mut(ndarray::s![.., ..;2]).assign(a);
        wide
    };
    let (wx, wy) = (strided(&f.cx), strided(&f.cy));
    let mut view = f.view();
    assert_eq!(view.corners_x.strides()[1], 1);
    let mut lanes = Cube::new(nz, ny, nx);
    let a = accumulate_frame(lanes.view(), &view, p, 2).unwrap();
    view.corners_x = wx.slice(ndarray::s![.., ..;2]);
    view.corners_y = wy.slice(ndarray::s![.., ..;2]);
    let mut scalar = Cube::new(nz, ny, nx);
    let b = accumulate_frame(scalar.view(), &view, p, 2).unwrap();
    assert_eq!((a.n_pixels, a.n_contributions, &a.planes), (b.n_pixels, b.n_contributions, &b.planes));
    let bits = |c: &Cube| -> Vec<u64> { c.flux.iter().chain(c.weight.iter()).chain(c.var.iter()).map(|v| v.to_bits()).collect() };
    assert!(bits(&lanes) == bits(&scalar), "SIMD lanes and the scalar path differ");
    assert_eq!((&lanes.count, &lanes.and_mask, &lanes.or_mask), (&scalar.count, &scalar.and_mask, &scalar.or_mask));
    // Contiguous corners but a strided image: the block path reads rows
    // with unit stride only, so these pixels too go the scalar way.
    let wi = strided(&f.image);
    let mut view = f.view();
    view.image = wi.slice(ndarray::s![.., ..;2]);
    let mut strided_image = Cube::new(nz, ny, nx);
    let c = accumulate_frame(strided_image.view(), &view, p, 2).unwrap();
    assert_eq!((a.n_pixels, a.n_contributions), (c.n_pixels, c.n_contributions));
    assert!(bits(&lanes) == bits(&strided_image), "SIMD lanes and the scalar path (strided image) differ");
    assert_eq!((&lanes.count, &lanes.and_mask, &lanes.or_mask), (&strided_image.count, &strided_image.and_mask, &strided_image.or_mask));
}

#[test]
fn simd_lanes_equal_the_scalar_path_with_bad_corners_and_values() {
    for (theta, scale, kernel, shrink) in
        [(0.4, 1.0, Kernel::Square, 0.8), (0.4, 1.0, Kernel::Bilinear, 0.8), (2.5, 0.3, Kernel::Square, 1.0), (1.0, 2.6, Kernel::Square, 0.5)]
    {
        let mut f = affine_frame(24, 45, rotation(theta, scale), [20.0, 6.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        f.cx[[3, 4]] = f64::NAN; // four pixels lose their droplet
        f.cy[[7, 20]] = f64::INFINITY;
        f.cx[[9, 30]] = 1e300;
        // A folded (bow-tie) pixel: swap two corners of pixel (12, 10).
        let t = f.cx[[12, 10]];
        f.cx[[12, 10]] = f.cx[[12, 11]];
        f.cx[[12, 11]] = t;
        // Variances that are not powers of two, so that every rounding of the
        // weight arithmetic shows in the bits.
        f.variance.indexed_iter_mut().for_each(|((j, i), v)| *v = 0.23 + 0.0137 * ((j * 5 + i * 3) % 7) as f64);
        // Unflagged pixels among flagged ones (the deposit has a path for each).
        f.flags.indexed_iter_mut().filter(|((j, i), _)| (j * 7 + i) % 4 == 0).for_each(|(_, v)| *v = 0);
        f.image[[5, 5]] = f64::NAN;
        f.variance[[6, 17]] = 0.0;
        f.dlam[[8, 18]] = -1.0;
        let shape = (3, 40, 50);
        assert_lanes_equal_scalar(&f, &params(kernel, shrink), shape);
        assert_fused_equals_contribution_list(&f, &params(kernel, shrink), shape);
    }
}

#[test]
fn avx512_avx2_and_portable_builds_give_the_same_bits() {
    let f = affine_frame(64, 80, rotation(0.4, 1.1), [10.0, -20.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
    // Capped at the widest build the CPU has.
    let run = |isa: Isa, kernel: Kernel| {
        let mut c = Cube::new(3, 60, 70);
        accumulate_frame_with(c.view(), (0, 0), &f.view(), &params(kernel, 0.8), 1, isa).unwrap();
        let floats = c.flux.iter().chain(c.weight.iter()).chain(c.var.iter()).map(|v| v.to_bits());
        floats.chain(c.count.iter().chain(c.and_mask.iter()).chain(c.or_mask.iter()).map(|&v| v as u64)).collect::<Vec<u64>>()
    };
    for kernel in [Kernel::Square, Kernel::Bilinear] {
        let (portable, avx2, native) = (run(Isa::Portable, kernel), run(Isa::Avx2, kernel), run(Isa::Avx512, kernel));
        assert!(portable.iter().any(|&b| b != 0));
        assert!(portable == avx2, "AVX2 and portable builds differ ({kernel:?})");
        assert!(native == avx2, "AVX-512 and AVX2 builds differ ({kernel:?})");
    }
}

#[test]
fn voxels_that_receive_nothing_keep_their_bits() {
    // Regression: the 2 x 2 fast path added a zero weight to cells below
    // min_overlap, which turned a -0.0 already in the cube into +0.0. Cells
    // that receive nothing must keep their bits exactly.
    let f = affine_frame(40, 37, rotation(0.4, 1.0), [2.0, 1.5], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
    let p = Params::new(Settings { min_overlap: 0.15, ..settings(Kernel::Square, 0.8) }).unwrap();
    let mut cube = Cube::new(3, 45, 45);
    for a in [&mut cube.flux, &mut cube.weight, &mut cube.var] {
        a.fill(-0.0);
    }
    let st = accumulate_frame(cube.view(), &f.view(), &p, 1).unwrap();
    assert!(st.n_contributions > 1000);
    let mut untouched = 0;
    for (idx, &n) in cube.count.indexed_iter() {
        if n == 0 {
            untouched += 1;
            for a in [&cube.flux, &cube.weight, &cube.var] {
                assert_eq!(a[idx].to_bits(), (-0.0f64).to_bits(), "voxel {idx:?}");
            }
        }
    }
    assert!(untouched > 100, "{untouched}");
}

#[test]
fn and_mask_is_zero_where_nothing_landed_and_masks_combine() {
    let f = affine_frame(10, 10, rotation(0.0, 1.0), [2.0, 2.0], |_, _| 1.0);
    let mut c = Cube::new(3, 20, 20);
    accumulate_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 1).unwrap();
    for ((a, o), n) in c.and_mask.iter().zip(c.or_mask.iter()).zip(c.count.iter()) {
        if *n == 0 {
            assert_eq!((*a, *o), (0, 0));
        } else {
            assert_eq!(*a & !*o, 0, "AND must be a subset of OR");
        }
    }
    // An aligned pixel lands whole in one output pixel: AND == OR == its flags.
    let (j, i) = (4, 4);
    // lambda = 1.04 +- 0.01 lies wholly in bin 0 ([0.9, 1.05]).
    assert_eq!(c.count[[0, j + 2, i + 2]], 1);
    assert_eq!(c.and_mask[[0, j + 2, i + 2]], f.flags[[j, i]]);
    assert_eq!(c.or_mask[[0, j + 2, i + 2]], f.flags[[j, i]]);
}

#[test]
fn invalid_pixels_are_skipped() {
    // 20 columns: the first 16 go through the SIMD block path, the rest pixel by pixel.
    let mut f = affine_frame(4, 20, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
    type Spoil = fn(&mut Frame, usize, usize);
    let bad: [((usize, usize), Spoil); 14] = [
        ((0, 0), |f, j, i| f.image[[j, i]] = f64::NAN),
        ((0, 1), |f, j, i| f.variance[[j, i]] = 0.0),
        ((0, 2), |f, j, i| f.variance[[j, i]] = f64::INFINITY),
        ((0, 3), |f, j, i| f.lam[[j, i]] = f64::NAN),
        ((1, 0), |f, j, i| f.dlam[[j, i]] = 0.0),
        ((1, 1), |f, j, i| f.dlam[[j, i]] = -1.0),
        ((1, 2), |_, _, _| {}), // excluded by the mask below
        ((2, 5), |f, j, i| f.image[[j, i]] = f64::NEG_INFINITY),
        ((2, 6), |f, j, i| f.variance[[j, i]] = f64::NAN),
        ((2, 7), |f, j, i| f.variance[[j, i]] = -0.5),
        ((2, 8), |f, j, i| f.lam[[j, i]] = f64::INFINITY),
        ((2, 9), |f, j, i| f.dlam[[j, i]] = f64::INFINITY),
        ((3, 17), |f, j, i| f.image[[j, i]] = f64::INFINITY),
        ((3, 18), |f, j, i| f.dlam[[j, i]] = f64::NAN),
    ];
    for ((j, i), spoil) in bad {
        spoil(&mut f, j, i);
    }
    // Excluded by the mask: one pixel on the SIMD block path, one on the scalar path.
    let mut exclude = Array2::from_elem((4, 20), false);
    exclude[[1, 2]] = true;
    exclude[[3, 19]] = true;
    let mut view = f.view();
    view.exclude = Some(exclude.view());
    let mut c = Cube::new(3, 4, 20);
    let stats = accumulate_frame(c.view(), &view, &params(Kernel::Square, 1.0), 1).unwrap();
    assert_eq!(stats.n_pixels, 80 - bad.len() as u64 - 1);
    for (j, i) in bad.iter().map(|b| b.0).chain([(3, 19)]) {
        assert_eq!(c.count.slice(ndarray::s![.., j, i]).sum(), 0, "pixel {j},{i}");
    }
    assert!(c.flux.iter().all(|v| v.is_finite()));
}

#[test]
fn shape_errors_are_reported() {
    let f = affine_frame(4, 4, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
    let mut c = Cube::new(2, 4, 4);
    let err = accumulate_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 1).unwrap_err();
    assert!(err.contains("planes"), "{err}");
    let mut c = Cube::new(3, 4, 4);
    let mut bad = affine_frame(4, 4, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
    bad.cx = Array2::zeros((4, 4));
    assert!(accumulate_frame(c.view(), &bad.view(), &params(Kernel::Square, 1.0), 1).unwrap_err().contains("corners_x"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fused_path_equals_contribution_list_for_random_geometry(theta in 0.0f64..6.3, scale in 0.15f64..4.5, shrink in 0.1f64..=1.0,
                                                       tx in -2.0f64..2.0, ty in -2.0f64..2.0, min_overlap in prop_oneof![Just(0.0), 0.0f64..0.3],
                                                       flip in proptest::bool::ANY, bilinear in proptest::bool::ANY) {
        // Every path of the fused engine (2x2 and three-pixel fast path, band and grid
        // edges, 4x4 footprints, per-pixel areas) against the spxquery 0.4.1 API.
        let mut a = rotation(theta, scale);
        if flip { a[0][0] = -a[0][0]; a[1][0] = -a[1][0]; }
        let n = (24.0 / scale).ceil() as usize + 2;
        let f = affine_frame(n, n, a, [17.0 + tx, 19.0 + ty], |j, i| ((j * 7 + i * 3) % 5) as f64 + 0.5);
        let kernel = if bilinear { Kernel::Bilinear } else { Kernel::Square };
        let p = Params::new(Settings { min_overlap, ..settings(kernel, shrink) }).unwrap();
        assert_fused_equals_contribution_list(&f, &p, (3, 37, 35));
    }

    #[test]
    fn constant_image_gives_the_constant(theta in 0.0f64..6.3, scale in 0.3f64..2.5, shrink in 0.1f64..=1.0,
                                         tx in -3.0f64..3.0, ty in -3.0f64..3.0, bilinear in proptest::bool::ANY) {
        let f = affine_frame(30, 30, rotation(theta, scale), [12.0 + tx, 12.0 + ty], |_, _| 3.25);
        let kernel = if bilinear { Kernel::Bilinear } else { Kernel::Square };
        let mut c = Cube::new(3, 24, 24);
        accumulate_frame(c.view(), &f.view(), &params(kernel, shrink), 0).unwrap();
        let mut covered = 0;
        for (fl, w) in c.flux.iter().zip(c.weight.iter()) {
            if *w > 0.0 {
                covered += 1;
                prop_assert!((fl / w - 3.25).abs() < 1e-12 * 3.25, "{}", fl / w);
            }
        }
        prop_assert!(covered > 0);
    }

    #[test]
    fn flux_is_conserved_for_affine_maps(theta in 0.0f64..6.3, scale in 0.4f64..2.0, tx in 0.0f64..1.0, ty in 0.0f64..1.0,
                                         flip in proptest::bool::ANY) {
        // One input whose footprint lies wholly inside the grid, xy_shrink = 1,
        // equal variances: sum_j f_ij = 1 for each input pixel, so
        // sum(flux_weighted) / ivar = sum_i F_i (input pixel area 1, in output units = |det A|).
        let mut a = rotation(theta, scale);
        if flip { a[0][0] = -a[0][0]; a[0][1] = -a[0][1]; }
        let f = affine_frame(8, 8, a, [30.0 + tx, 30.0 + ty], |j, i| 1.0 + ((j * 8 + i) % 5) as f64);
        let mut c = Cube::new(3, 60, 60);
        accumulate_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 0).unwrap();
        let ivar = 4.0;
        let total_in: f64 = f.image.iter().sum();
        // Every pixel's top-hat lies inside the z grid (0.99..1.09 within 0.9..1.5).
        let total_out: f64 = c.flux.iter().sum::<f64>() / ivar;
        prop_assert!((total_out - total_in).abs() < 1e-9 * total_in, "{} vs {}", total_out, total_in);
    }
}

/// Every tile of a grid, drizzled with the whole grid's corner map and its
/// origin, holds the whole grid's voxels bit for bit (droplets crossing tile
/// edges, several scales so that small, medium and large droplets occur, both
/// kernels, one and three threads); the voxel updates add up to the whole's.
#[test]
fn tiles_of_a_grid_hold_the_whole_grids_bits() {
    let value = |j: usize, i: usize| (j * 31 + i * 17) as f64 % 7.0 - 2.0;
    let frames = [
        affine_frame(60, 57, rotation(0.3, 0.8), [5.0, -3.0], value),
        affine_frame(40, 45, rotation(1.1, 2.6), [30.0, -20.0], value),
        affine_frame(30, 30, rotation(0.2, 4.2), [9.0, 3.0], value),
    ];
    let (ny, nx) = (70, 66);
    for f in &frames {
        for kernel in [Kernel::Square, Kernel::Bilinear] {
            let p = params(kernel, 0.7);
            let mut whole = Cube::new(3, ny, nx);
            let all = accumulate_frame(whole.view(), &f.view(), &p, 1).unwrap();
            for (th, tw) in [(17, 23), (35, 66), (70, 9)] {
                for threads in [1, 3] {
                    let mut n_contributions = 0;
                    for oy in (0..ny).step_by(th) {
                        for ox in (0..nx).step_by(tw) {
                            let (h, w) = (th.min(ny - oy), tw.min(nx - ox));
                            let mut tile = Cube::new(3, h, w);
                            let s = crate::scan::accumulate_frame_at(tile.view(), (oy, ox), &f.view(), &p, threads).unwrap();
                            n_contributions += s.n_contributions;
                            let part = |a: &Array3<f64>| a.slice(ndarray::s![.., oy..oy + h, ox..ox + w]).to_owned();
                            let part_u = |a: &Array3<u32>| a.slice(ndarray::s![.., oy..oy + h, ox..ox + w]).to_owned();
                            let bits = |a: &Array3<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&tile.flux), bits(&part(&whole.flux)), "flux of tile ({oy}, {ox})");
                            assert_eq!(bits(&tile.weight), bits(&part(&whole.weight)));
                            assert_eq!(bits(&tile.var), bits(&part(&whole.var)));
                            assert_eq!(tile.count, part_u(&whole.count));
                            assert_eq!(tile.and_mask, part_u(&whole.and_mask));
                            assert_eq!(tile.or_mask, part_u(&whole.or_mask));
                        }
                    }
                    assert_eq!(n_contributions, all.n_contributions);
                }
            }
        }
    }
}

/// The positive offsets `(dz, dy, dx)` within `|dz| <= z` and `|dy|, |dx| <= s`.
fn cov_stencil(z: i64, s: i64) -> crate::covariance::Stencil {
    let mut o = vec![];
    for dy in -s..=s {
        for dx in -s..=s {
            for dz in -z..=z {
                if crate::covariance::positive([dz, dy, dx]) {
                    o.push([dz, dy, dx]);
                }
            }
        }
    }
    crate::covariance::Stencil::new(&o).unwrap()
}

#[test]
fn covariance_is_bitwise_identical_for_any_thread_count_and_leaves_the_cube_alone() {
    use crate::covariance::CovMut;
    use ndarray::Array5;
    let f = affine_frame(60, 55, rotation(0.3, 0.9), [20.0, -3.0], |j, i| (j * 31 + i * 17) as f64 % 7.0 - 2.0);
    let (ny, nx) = (60, 60);
    let stencil = cov_stencil(1, 2);
    let mut plain = Cube::new(3, ny, nx);
    accumulate_frame(plain.view(), &f.view(), &params(Kernel::Square, 0.7), 1).unwrap();
    let mut results = vec![];
    for threads in [1, 2, 3, 8] {
        let mut c = Cube::new(3, ny, nx);
        let mut cross = Array5::<f64>::zeros((stencil.parts(), 3, ny, nx, stencil.slots()));
        let view = CubeMut { cov: Some(CovMut { cross: cross.view_mut(), stencil: stencil.clone() }), ..c.view() };
        accumulate_frame(view, &f.view(), &params(Kernel::Square, 0.7), threads).unwrap();
        // The cube itself bit for bit as without covariance (the same scan deposits it).
        for (a, b) in [(&c.flux, &plain.flux), (&c.weight, &plain.weight), (&c.var, &plain.var)] {
            assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        assert_eq!((&c.count, &c.and_mask, &c.or_mask), (&plain.count, &plain.and_mask, &plain.or_mask));
        results.push(cross);
    }
    assert!(results[0].iter().filter(|v| **v > 0.0).count() > 1000);
    for r in &results[1..] {
        assert!(r.iter().zip(results[0].iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // Droplets larger than the stencil: an error naming the offset, on any thread count.
    let big = affine_frame(10, 10, rotation(0.3, 3.0), [20.0, 20.0], |_, _| 1.0);
    for threads in [1, 3] {
        let mut c = Cube::new(3, ny, nx);
        let mut cross = Array5::<f64>::zeros((stencil.parts(), 3, ny, nx, stencil.slots()));
        let view = CubeMut { cov: Some(CovMut { cross: cross.view_mut(), stencil: stencil.clone() }), ..c.view() };
        let err = accumulate_frame(view, &big.view(), &params(Kernel::Square, 0.7), threads).unwrap_err();
        assert!(err.contains("beyond the stencil"), "{err}");
    }
}
