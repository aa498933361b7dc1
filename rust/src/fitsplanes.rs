//! The cube file's SCI and VARIANCE planes as FITS stores them (`cubefile.py`):
//! `num / w` (or `num / (w * w)`) where the weight `w > 0`, NaN elsewhere,
//! rounded to float32 and written big-endian, in one pass. numpy's bits: the
//! same float64 division, the same rounding (`as f32` is the C cast numpy's
//! `astype(np.float32)` uses), its NaN (`0x7fc00000`).

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
}
