//! Timing probes of the fused path, mirroring geometry A of
//! `benchmarks/bench_kernel.py` (one 2040 x 2040 frame, rotated by 23 deg, onto
//! a 300 x 300 grid of the same pixel size), to run under callgrind for stable
//! instruction counts (see `tools/callgrind_by_function.py`). Not part of the
//! product build: `cargo bench --bench probe -- [NAME...]` runs the named
//! probes (all when none is named):
//!
//! - `square_17`, `square_1`, `bilinear_17`: geometry A, 17 or 1 planes;
//! - `whole_frame`: the whole frame on the grid (geometry B's droplet size);
//! - `off_grid`: a frame far off the grid (live-block culling only).
//!
//! Environment: `PROBE_REPS` (runs, best kept; default 5), `PROBE_THREADS`
//! (default 1), `PROBE_CROP` (set: only the 440 x 440 input pixels around the
//! grid, as the pipeline's crops), `PROBE_COLD` (set: the caches flushed
//! before each run).

use std::time::Instant;

use _core::{accumulate_frame, CubeMut, FrameStats, FrameView, Kernel, Params, Settings};
use ndarray::{Array2, Array3};

/// Input pixels per side of the frame, output pixels per side of the grid.
const N_IN: usize = 2040;
const N_OUT: usize = 300;

/// The frame's arrays: corners `(ny + 1, nx + 1)`, then image, variance,
/// flags, wavelength and bandwidth `(ny, nx)`.
struct Frame {
    cx: Array2<f64>,
    cy: Array2<f64>,
    image: Array2<f64>,
    variance: Array2<f64>,
    flags: Array2<u32>,
    lam: Array2<f64>,
    dlam: Array2<f64>,
}

impl Frame {
    /// The frame rotated by 23 deg about its centre, scaled by `scale` output
    /// pixels per input pixel, centred on the grid shifted by `offset` in x;
    /// with `crop`, only the 440 x 440 input pixels around the centre.
    fn new(offset: f64, scale: f64, crop: bool) -> Frame {
        let (c, s) = (scale * 23f64.to_radians().cos(), scale * 23f64.to_radians().sin());
        let map = |x: f64, y: f64| {
            let (u, v) = (x - 1019.5, y - 1019.5);
            (c * u - s * v + 149.5 + offset, s * u + c * v + 149.5)
        };
        let (j0, j1, i0, i1) = if crop { (800, 1240, 800, 1240) } else { (0, N_IN, 0, N_IN) };
        let corner = |j: usize, i: usize| map((i0 + i) as f64 - 0.5, (j0 + j) as f64 - 0.5);
        let shape = (j1 - j0, i1 - i0);
        let lam = Array2::from_shape_fn(shape, |(j, _)| 2.4 - 0.8 * (j0 + j) as f64 / N_IN as f64);
        let corners = Array2::from_shape_fn((shape.0 + 1, shape.1 + 1), |(j, i)| corner(j, i));
        Frame {
            cx: corners.mapv(|c| c.0),
            cy: corners.mapv(|c| c.1),
            image: Array2::from_elem(shape, 1.0),
            variance: Array2::from_elem(shape, 0.01),
            flags: Array2::zeros(shape),
            dlam: lam.mapv(|l| l / 41.0),
            lam,
        }
    }

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

/// The six accumulators of a cube.
struct Cube {
    f: [Array3<f64>; 3],
    u: [Array3<u32>; 3],
}

impl Cube {
    fn new(nz: usize) -> Cube {
        let shape = (nz, N_OUT, N_OUT);
        Cube { f: std::array::from_fn(|_| Array3::ones(shape)), u: std::array::from_fn(|_| Array3::ones(shape)) }
    }

    fn view(&mut self) -> CubeMut<'_> {
        let [flux, weight, var] = &mut self.f;
        let [count, and_mask, or_mask] = &mut self.u;
        CubeMut {
            flux: flux.view_mut(),
            weight: weight.view_mut(),
            var: var.view_mut(),
            count: count.view_mut(),
            and_mask: and_mask.view_mut(),
            or_mask: or_mask.view_mut(),
            cov: None,
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Drizzles the probe's frame `PROBE_REPS` times into one cube of `n_planes`
/// planes and prints the best time.
fn run(name: &str, offset: f64, scale: f64, kernel: Kernel, n_planes: usize) {
    let z_edges: Vec<f64> =
        if n_planes == 1 { vec![0.5, 5.5] } else { (0..=n_planes).map(|k| 1.6 * (2.45f64 / 1.6).powf(k as f64 / n_planes as f64)).collect() };
    let nz = z_edges.len() - 1;
    let p = Params::new(Settings { z_edges, xy_shrink: 0.8, z_shrink: 0.8, ivar_max: 1e10, min_overlap: 0.0, kernel }).expect("valid parameters");
    let frame = Frame::new(offset, scale, std::env::var("PROBE_CROP").is_ok());
    let mut cube = Cube::new(nz);
    let (reps, threads) = (env_or("PROBE_REPS", 5usize), env_or("PROBE_THREADS", 1usize));
    // PROBE_COLD: read 64 MiB before each run, so that the frame and cube come
    // from main memory (as in the benchmark, where implementations take turns,
    // and in a pipeline).
    let mut junk = if std::env::var("PROBE_COLD").is_ok() { vec![1.0f64; 8 << 20] } else { Vec::new() };
    let (mut best, mut st) = (f64::INFINITY, FrameStats::default());
    for rep in 0..reps {
        if !junk.is_empty() {
            junk[rep % 1000] += 1.0;
            std::hint::black_box(junk.iter().sum::<f64>());
        }
        let t = Instant::now();
        st = accumulate_frame(cube.view(), &frame.view(), &p, threads).expect("the probe's arrays fit");
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name}: {kernel:?} offset {offset} planes {nz}: best {:.2} ms of {reps} ({} pixels, {} contributions)",
        best * 1e3,
        st.n_pixels,
        st.n_contributions
    );
}

fn main() {
    type Probe = (&'static str, f64, f64, Kernel, usize);
    let probes: [Probe; 5] = [
        ("square_17", 0.0, 1.0, Kernel::Square, 17),
        ("square_1", 0.0, 1.0, Kernel::Square, 1),
        ("bilinear_17", 0.0, 1.0, Kernel::Bilinear, 17),
        ("whole_frame", 0.0, 0.7 * N_OUT as f64 / N_IN as f64, Kernel::Square, 17),
        ("off_grid", 10000.0, 1.0, Kernel::Square, 17),
    ];
    // `cargo bench` passes `--bench`; any other argument names a probe.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if let Some(unknown) = wanted.iter().find(|w| !probes.iter().any(|p| p.0 == w.as_str())) {
        eprintln!("unknown probe {unknown:?}; probes: {}", probes.map(|p| p.0).join(", "));
        std::process::exit(2);
    }
    for (name, offset, scale, kernel, n_planes) in probes {
        if wanted.is_empty() || wanted.iter().any(|w| w == name) {
            run(name, offset, scale, kernel, n_planes);
        }
    }
}
