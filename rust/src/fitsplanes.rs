//! The cube file's SCI and VARIANCE planes as FITS stores them (`cubefile.py`):
//! `num / w` (or `num / (w * w)`) where the weight `w > 0`, NaN elsewhere,
//! rounded to float32 and written big-endian, in one pass. numpy's bits: the
//! same float64 division, the same rounding (`as f32` is the C cast numpy's
//! `astype(np.float32)` uses), its NaN (`0x7fc00000`).
//!
//! [`covariance_band`]: the float64 COVARIANCE image (`covariance.py`) of one
//! plane and a band of rows, the written offsets from one read of each voxel's
//! terms; [`terms_used`]: which offsets have a nonzero term (the file holds those).

use ndarray::{s, ArrayView4, ArrayView5, Axis};
use rayon::prelude::*;

/// Writes plane values into `out` (each `u32` holds the big-endian bytes of one
/// float32, so `out`'s memory is the FITS data). `squared`: divide by `w * w`.
pub fn ratio_plane(num: &[f64], weight: &[f64], squared: bool, out: &mut [u32]) -> Result<(), String> {
    if weight.len() != num.len() || out.len() != num.len() {
        return Err(format!("fits plane: numerator ({}), weight ({}) and out ({}) must have the same size", num.len(), weight.len(), out.len()));
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked just above).
            unsafe { ratio_avx2(num, weight, squared, out) };
            return Ok(());
        }
    }
    ratio(num, weight, squared, out);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ratio_avx2(num: &[f64], weight: &[f64], squared: bool, out: &mut [u32]) {
    ratio(num, weight, squared, out)
}

#[inline(always)]
fn ratio(num: &[f64], weight: &[f64], squared: bool, out: &mut [u32]) {
    let nan = f32::NAN.to_bits().swap_bytes();
    for ((o, &n), &w) in out.iter_mut().zip(num).zip(weight) {
        let d = if squared { w * w } else { w };
        let v = ((n / d) as f32).to_bits().swap_bytes();
        *o = if w > 0.0 { v } else { nan };
    }
}

/// One plane `k` and rows `y0 .. y0 + rows` of a cube with covariance, as the
/// COVARIANCE image needs them: `cross` the band's cross terms
/// `(parts, rows, nx, slots)` (any strides: the accumulator's parts, see
/// `covariance.rs`), `var` its `var_accum` (`rows * nx`), `weight` the whole
/// `weight_total` of `shape` `(nz, ny, nx)` in C order, `offsets` the `(dz,
/// dy, dx)` of the offsets written and `columns` the term of each,
/// `part * slots + slot` (the stencil's order; [`terms_used`] tells which the
/// file holds).
pub struct CovBand<'a> {
    pub cross: ArrayView4<'a, f64>,
    pub var: &'a [f64],
    pub weight: &'a [f64],
    pub shape: (usize, usize, usize),
    pub k: usize,
    pub y0: usize,
    pub offsets: &'a [[i64; 3]],
    pub columns: &'a [usize],
}

/// Per term of the cross-term accumulator `cross` `(parts, nz, ny, nx, slots)`
/// (any strides), `part * slots + slot`, whether any voxel's term has a bit set
/// (a term of a pixel is `w_k w_l sigma^2 >= 0`, so all bits clear means no
/// pixel coupled the pair anywhere: its COVARIANCE plane is all `0.0`). One
/// read of the array (a part never written reads the kernel's zero page: no
/// memory is allocated for it), rows of voxels on rayon's pool (an OR: the same
/// result for any thread count).
pub fn terms_used(cross: ArrayView5<'_, f64>) -> Vec<bool> {
    cross.outer_iter().flat_map(part_terms_used).collect()
}

/// [`terms_used`] of one part `(nz, ny, nx, slots)`.
fn part_terms_used(cross: ArrayView4<'_, f64>) -> Vec<bool> {
    let (nz, ny, _, n) = cross.dim();
    let or_row = |mut acc: Vec<u64>, zy: usize| {
        let row = cross.slice(s![zy / ny, zy % ny, .., ..]);
        for voxel in row.outer_iter() {
            match voxel.as_slice() {
                Some(terms) => acc.iter_mut().zip(terms).for_each(|(a, t)| *a |= t.to_bits()),
                None => acc.iter_mut().zip(voxel.iter()).for_each(|(a, t)| *a |= t.to_bits()),
            }
        }
        acc
    };
    let or_both = |a: Vec<u64>, b: Vec<u64>| a.iter().zip(&b).map(|(x, y)| x | y).collect::<Vec<u64>>();
    let bits = (0..nz * ny).into_par_iter().fold(|| vec![0u64; n], or_row).reduce(|| vec![0u64; n], or_both);
    bits.iter().map(|&b| b != 0).collect()
}

/// Fills `out` (`(1 + offsets) * rows * nx`, each `u64` the big-endian bytes of
/// one float64) with the band's COVARIANCE blocks, offset-major: block 0 is
/// `var / (w * w)` where `w > 0`, NaN elsewhere; block `1 + j` is
/// `cross[.., columns[j]] / (W_k * W_{k+o})` where that product is `> 0` and the partner
/// lies in the cube, `0.0` elsewhere (numpy's bits, `covariance.file_planes`).
/// Rows run in parallel on rayon's global pool (each value is a function of its
/// voxel alone: the same bytes for any thread count); a row's terms come from
/// memory once (then from L2 for each offset).
pub fn covariance_band(b: &CovBand<'_>, out: &mut [u64]) -> Result<(), String> {
    let (nz, ny, nx) = b.shape;
    let (parts, rows, cx, slots) = b.cross.dim();
    let nc = parts * slots;
    let block = rows * nx;
    if b.weight.len() != nz * ny * nx {
        return Err(format!("covariance band: weight has {} values, shape {:?} needs {}", b.weight.len(), b.shape, nz * ny * nx));
    }
    if b.k >= nz || b.y0 + rows > ny {
        return Err(format!("covariance band: plane {} rows {}..{} lie outside the cube {:?}", b.k, b.y0, b.y0 + rows, b.shape));
    }
    if cx != nx {
        return Err(format!("covariance band: cross has shape {:?}, expected (parts, {rows}, {nx}, slots)", b.cross.dim()));
    }
    if b.columns.len() != b.offsets.len() || b.columns.iter().any(|&c| c >= nc) {
        return Err(format!("covariance band: columns {:?} must name one of cross's {nc} terms per offset ({})", b.columns, b.offsets.len()));
    }
    let n_off = b.offsets.len();
    if b.var.len() != block || out.len() != (1 + n_off) * block {
        return Err(format!("covariance band: var ({}) must hold {block} values and out ({}) {}", b.var.len(), out.len(), (1 + n_off) * block));
    }
    if nx == 0 || rows == 0 {
        return Ok(());
    }
    // Row r's segment of every block: the rows are independent tasks.
    let mut segments: Vec<Vec<&mut [u64]>> = (0..rows).map(|_| Vec::with_capacity(1 + n_off)).collect();
    for blk in out.chunks_exact_mut(block) {
        for (seg, row) in blk.chunks_exact_mut(nx).zip(segments.iter_mut()) {
            row.push(seg);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked just above).
            segments.into_par_iter().enumerate().for_each(|(r, mut segs)| unsafe { band_row_avx2(b, r, &mut segs) });
            return Ok(());
        }
    }
    segments.into_par_iter().enumerate().for_each(|(r, mut segs)| band_row(b, r, &mut segs));
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn band_row_avx2(b: &CovBand<'_>, r: usize, segs: &mut [&mut [u64]]) {
    band_row(b, r, segs)
}

/// Row `r` of the band into `segs` (its segment of each block: the variance, then one per offset).
#[inline(always)]
fn band_row(b: &CovBand<'_>, r: usize, segs: &mut [&mut [u64]]) {
    let (nz, ny, nx) = b.shape;
    let plane = |z: usize| &b.weight[z * ny * nx..(z + 1) * ny * nx];
    let y = b.y0 + r;
    let wrow = &plane(b.k)[y * nx..(y + 1) * nx];
    let nan = f64::NAN.to_bits().swap_bytes();
    let (diag, rest) = segs.split_first_mut().expect("a segment per block");
    for ((o, &v), &w) in diag.iter_mut().zip(&b.var[r * nx..(r + 1) * nx]).zip(wrow) {
        *o = if w > 0.0 { (v / (w * w)).to_bits().swap_bytes() } else { nan };
    }
    let terms = b.cross.index_axis(Axis(1), r);
    let slots = terms.dim().2;
    for ((&[dz, dy, dx], &j), dst) in b.offsets.iter().zip(b.columns).zip(rest.iter_mut()) {
        let (zp, yp) = (b.k as i64 + dz, y as i64 + dy);
        if zp < 0 || zp >= nz as i64 || yp < 0 || yp >= ny as i64 {
            dst.fill(0);
            continue;
        }
        let prow = &plane(zp as usize)[yp as usize * nx..(yp as usize + 1) * nx];
        // Anchors lo..hi have their partner x + dx in the row.
        let lo = (-dx).clamp(0, nx as i64) as usize;
        let hi = (nx as i64 - dx.max(0)).clamp(0, nx as i64) as usize;
        if lo >= hi {
            dst.fill(0);
            continue;
        }
        dst[..lo].fill(0);
        dst[hi..].fill(0);
        let partners = &prow[(lo as i64 + dx) as usize..(hi as i64 + dx) as usize];
        let col = terms.slice(s![j / slots, lo..hi, j % slots]);
        for (((o, &x), &wa), &wp) in dst[lo..hi].iter_mut().zip(col).zip(&wrow[lo..hi]).zip(partners) {
            let w = wa * wp;
            let v = (x / w).to_bits().swap_bytes();
            *o = if w > 0.0 { v } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_nan_and_byte_order() {
        let num = [1.0, 2.0, 3.0, f64::NAN, 1e300];
        let w = [2.0, 0.0, f64::NAN, 1.0, 1e-300];
        let mut out = [0u32; 5];
        ratio_plane(&num, &w, false, &mut out).unwrap();
        let got: Vec<u32> = out.iter().map(|&b| b.swap_bytes()).collect();
        assert_eq!(got[0], 0.5f32.to_bits());
        assert_eq!(got[1], 0x7fc0_0000);
        assert_eq!(got[2], 0x7fc0_0000);
        assert!(f32::from_bits(got[3]).is_nan());
        assert_eq!(f32::from_bits(got[4]), f32::INFINITY);
        ratio_plane(&num[..2], &w[..2], true, &mut out[..2]).unwrap();
        assert_eq!(out[0].swap_bytes(), 0.25f32.to_bits());
        assert!(ratio_plane(&num, &w[..2], true, &mut out).is_err());
    }

    #[test]
    fn covariance_band_values_edges_and_errors() {
        use ndarray::Array3;
        // nz = 2, ny = 2, nx = 3; offsets: inside, beyond the cube in z, a row down and a column left.
        let weight = [1.0, 2.0, 0.0, 4.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let offsets = [[1, 0, 1], [2, 0, 0], [0, 1, -1]];
        let cross = Array3::from_shape_fn((2, 3, 3), |(y, x, j)| (1 + y * 9 + x * 3 + j) as f64);
        let var = [4.0, 8.0, 1.0, 16.0, 2.0, 8.0];
        let band = CovBand {
            cross: cross.view().insert_axis(Axis(0)),
            var: &var,
            weight: &weight,
            shape: (2, 2, 3),
            k: 0,
            y0: 0,
            offsets: &offsets,
            columns: &[0, 1, 2],
        };
        let mut out = vec![7u64; 4 * 6];
        covariance_band(&band, &mut out).unwrap();
        let v: Vec<f64> = out.iter().map(|b| f64::from_bits(b.swap_bytes())).collect();
        assert_eq!(&v[..2], &[4.0, 2.0]);
        assert_eq!(out[2].swap_bytes(), f64::NAN.to_bits());
        // (1, 0, 1): anchor (0, 0, x), partner (1, 0, x + 1); the last column has none.
        assert_eq!(&v[6..9], &[1.0 / (1.0 * 1.0), 4.0 / (2.0 * 1.0), 0.0]);
        // dz = 2 lies beyond the cube.
        assert!(v[12..18].iter().all(|&x| x == 0.0));
        // (0, 1, -1): row 0 pairs with row 1, column x - 1; column 0 has no partner,
        // column 2 has weight 0, row 1 has no row below.
        assert_eq!(&v[18..21], &[0.0, 6.0 / (2.0 * 4.0), 0.0]);
        assert!(v[21..24].iter().all(|&x| x == 0.0));
        // Offsets wider than the cube (a stencil on a cube of few columns): all 0.0, no panic.
        let wide = [[0, 0, 5], [0, 1, -5], [0, 0, 3], [0, 1, -3]];
        let cross4 = Array3::from_elem((2, 3, 4), 1.0);
        let band4 = CovBand { cross: cross4.view().insert_axis(Axis(0)), offsets: &wide, columns: &[0, 1, 2, 3], ..band };
        let mut out4 = vec![7u64; 5 * 6];
        covariance_band(&band4, &mut out4).unwrap();
        assert!(out4[6..].iter().all(|&b| b == 0));
        let bad = CovBand { y0: 1, ..band };
        assert!(covariance_band(&bad, &mut out).is_err());
        // Some offsets only: their blocks, each from its own column, bit for bit.
        let some = CovBand { offsets: &[offsets[2], offsets[0]], columns: &[2, 0], ..band };
        let mut out2 = vec![7u64; 3 * 6];
        covariance_band(&some, &mut out2).unwrap();
        assert_eq!(out2[..6], out[..6]);
        assert_eq!(out2[6..12], out[18..24]);
        assert_eq!(out2[12..], out[6..12]);
        // The same terms in two parts (4 slots each: offset 1's term in part 1, slot 2): the same bytes.
        let mut parted = ndarray::Array4::<f64>::from_elem((2, 2, 3, 4), -1.0);
        for ((y, x, j), &v) in cross.indexed_iter() {
            let (p, slot) = if j == 1 { (1, 2) } else { (0, j) };
            parted[[p, y, x, slot]] = v;
        }
        let two = CovBand { cross: parted.view(), columns: &[0, 6, 2], ..band };
        let mut out3 = vec![7u64; 4 * 6];
        covariance_band(&two, &mut out3).unwrap();
        assert_eq!(out3, out);
        for columns in [&[0, 3][..], &[0][..]] {
            let wrong = CovBand { offsets: &offsets[..2], columns, ..band };
            assert!(covariance_band(&wrong, &mut out2[..18]).unwrap_err().contains("columns"));
        }
    }

    #[test]
    fn covariance_band_same_bytes_for_any_thread_count() {
        use ndarray::Array3;
        let (nz, ny, nx) = (3, 9, 11);
        let weight: Vec<f64> = (0..nz * ny * nx).map(|i| if i % 7 == 0 { 0.0 } else { 1.0 + (i % 5) as f64 * 0.37 }).collect();
        let offsets = [[0, 0, 1], [1, 0, 0], [-1, 1, -2], [0, 2, 2], [2, 1, 0]];
        let (y0, rows) = (2, 6);
        let cross = Array3::from_shape_fn((rows, nx, offsets.len()), |(y, x, j)| 0.1 + (y * 131 + x * 17 + j * 5) as f64 / 7.0);
        let var: Vec<f64> = (0..rows * nx).map(|i| i as f64 * 0.25).collect();
        let band = CovBand {
            cross: cross.view().insert_axis(Axis(0)),
            var: &var,
            weight: &weight,
            shape: (nz, ny, nx),
            k: 1,
            y0,
            offsets: &offsets,
            columns: &[0, 1, 2, 3, 4],
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0u64; (1 + offsets.len()) * rows * nx];
            pool.install(|| covariance_band(&band, &mut out)).unwrap();
            out
        };
        let one = run(1);
        assert!(one.iter().any(|&b| b != 0));
        assert_eq!(one, run(2));
        assert_eq!(one, run(4));
    }

    #[test]
    fn terms_used_finds_each_term_with_a_bit_set_for_any_thread_count() {
        use ndarray::Array4;
        // Padded records (as covariance.cross_terms): 5 terms in 8 slots; the padding is never read.
        let mut a = Array4::<f64>::zeros((3, 5, 7, 8));
        a[[2, 4, 6, 1]] = 1e-300; // one voxel, the last
        a[[0, 0, 0, 3]] = 2.5; // the first
        a[[1, 2, 3, 4]] = f64::MIN_POSITIVE / 4.0; // a subnormal
        a[[1, 1, 1, 6]] = 9.0; // padding
        let view = a.slice(s![.., .., .., ..5]);
        let run =
            |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| terms_used(view.insert_axis(Axis(0))));
        let want = vec![false, true, false, true, true];
        assert_eq!(run(1), want);
        assert_eq!(run(3), want);
        assert_eq!(terms_used(a.slice(s![.., .., .., 2..3]).insert_axis(Axis(0))), vec![false]);
        // Any strides: planes reversed, a column step of 2.
        assert_eq!(terms_used(a.slice(s![..;-1, .., ..;2, ..5]).insert_axis(Axis(0))), vec![false, true, false, true, false]);
        assert_eq!(terms_used(ndarray::Array5::<f64>::zeros((1, 0, 4, 4, 3)).view()), vec![false; 3]);
        // Two parts: part-major, `part * slots + slot`.
        let mut two = ndarray::Array5::<f64>::zeros((2, 3, 5, 7, 4));
        two[[1, 2, 0, 3, 2]] = 0.5;
        two[[0, 0, 4, 6, 1]] = 1.0;
        assert_eq!(terms_used(two.view()), vec![false, true, false, false, false, false, true, false]);
    }
}
