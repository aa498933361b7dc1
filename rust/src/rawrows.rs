//! Rows of a plain (uncompressed) FITS image read from a local file with
//! `pread`: the frame reader's fast path for IMAGE, VARIANCE, ZODI and plain
//! FLAGS (the Python side runs it with the GIL released).
//!
//! Only the columns `x0..x1` of the rows asked for are converted, from the
//! file's big-endian pixels straight into the caller's output: floats
//! (`BITPIX` -32 / -64) to `f64` (exact, as numpy's `astype(float64)`),
//! integers (`BITPIX` 8 / 16 / 32 / 64) to `u32` as `value + bzero` modulo
//! 2**32 (as the numpy reader: `uint8` unsigned, the others signed). Rows are
//! 0-based; `rows` is an arithmetic progression (`start`, `step`, `count`).
//!
//! A read that ends early (a truncated file, or one cut while being read) is
//! an error naming the extension, the row and the byte where the file ended,
//! never zeros; nothing here panics on any input.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where a plain 2-D image lies in its file.
#[derive(Clone, Copy, Debug)]
pub struct PlainPart<'a> {
    /// The extension's name (EXTNAME), for messages.
    pub name: &'a str,
    /// Byte offset of pixel (0, 0).
    pub offset: u64,
    /// Rows and columns of the image.
    pub ny: usize,
    pub nx: usize,
    /// FITS BITPIX: -32, -64 (floats) or 8, 16, 32, 64 (integers).
    pub bitpix: i32,
}

/// The rows of a read: `start`, `start + step`, ... (`count` of them).
#[derive(Clone, Copy, Debug)]
pub struct RowSet {
    pub start: usize,
    pub step: usize,
    pub count: usize,
}

/// The pixels of a read: `rows` x columns `x0..x1`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub rows: RowSet,
    pub x0: usize,
    pub x1: usize,
}

impl Window {
    /// Values in the window.
    pub fn len(&self) -> usize {
        self.rows.count * self.x1.saturating_sub(self.x0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes read by one `pread` at most when whole rows are read together.
const CHUNK_BYTES: usize = 1 << 20;

impl PlainPart<'_> {
    fn item(&self) -> Result<usize, String> {
        match self.bitpix {
            8 => Ok(1),
            16 => Ok(2),
            -32 | 32 => Ok(4),
            -64 | 64 => Ok(8),
            b => Err(format!("{}: BITPIX = {b} is not a FITS pixel type", self.name)),
        }
    }

    /// Checks the window against the image and the file of `size` bytes (so what a read
    /// allocates is bounded by the file).
    pub fn check(&self, win: Window, size: u64) -> Result<(), String> {
        let Window { rows, x0, x1 } = win;
        if !(x0 < x1 && x1 <= self.nx) || rows.step == 0 {
            return Err(format!("{}: columns {x0}:{x1} (row step {}) are outside the {} x {} image", self.name, rows.step, self.ny, self.nx));
        }
        if rows.count > 0 {
            let last = (rows.count - 1).checked_mul(rows.step).and_then(|d| d.checked_add(rows.start));
            if last.is_none_or(|l| l >= self.ny) {
                return Err(format!(
                    "{}: rows from {} by {} ({} of them) are outside the {} x {} image",
                    self.name, rows.start, rows.step, rows.count, self.ny, self.nx
                ));
            }
        }
        if rows.count > 0 {
            let last = rows.start + (rows.count - 1) * rows.step;
            let row_bytes = (self.nx as u64).checked_mul(self.item()? as u64);
            let row_end = row_bytes.and_then(|b| b.checked_mul(last as u64 + 1)).and_then(|b| b.checked_add(self.offset));
            match row_end {
                Some(e) if e <= size => {}
                _ => return Err(format!("{}: row {last} lies past the end of the file ({size} bytes): truncated file", self.name)),
            }
        }
        Ok(())
    }
}

/// Reads `[rows, x0..x1]` of `part` from `file` (`size` bytes when opened) and
/// hands the raw big-endian bytes of each row's columns, in row order, to
/// `put(row_index, bytes)`.
fn for_each_row(file: &File, size: u64, part: &PlainPart<'_>, win: Window, mut put: impl FnMut(usize, &[u8])) -> Result<(), String> {
    part.check(win, size)?;
    let Window { rows, x0, x1 } = win;
    let item = part.item()?;
    let row_bytes = part.nx * item;
    let span = (x1 - x0) * item;
    let read = |buf: &mut [u8], at: u64| -> Result<(), String> {
        file.read_exact_at(buf, at).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                // The file shrank after it was opened: name the row where its bytes stop.
                let now = file.metadata().map(|m| m.len()).unwrap_or(0);
                let row = now.saturating_sub(part.offset) / row_bytes as u64;
                format!("{}: row {row}: the file ended at byte {now} of {size} (changed while being read?)", part.name)
            }
            _ => format!("{}: bytes {at}-{}: read failed ({e})", part.name, at + buf.len() as u64),
        })
    };
    // Contiguous rows whose columns are most of the row: whole rows, several per read.
    if rows.step == 1 && 2 * span >= row_bytes {
        let per_chunk = (CHUNK_BYTES / row_bytes).max(1);
        let mut buf = vec![0u8; per_chunk.min(rows.count) * row_bytes];
        let mut done = 0;
        while done < rows.count {
            let n = per_chunk.min(rows.count - done);
            let first = rows.start + done;
            let chunk = &mut buf[..n * row_bytes];
            read(chunk, part.offset + (first * row_bytes) as u64)?;
            for (k, row) in chunk.chunks_exact(row_bytes).enumerate() {
                put(done + k, &row[x0 * item..x1 * item]);
            }
            done += n;
        }
        return Ok(());
    }
    let mut buf = vec![0u8; span];
    for k in 0..rows.count {
        let y = rows.start + k * rows.step;
        read(&mut buf, part.offset + (y * row_bytes + x0 * item) as u64)?;
        put(k, &buf);
    }
    Ok(())
}

/// The window's width, once `out` is checked to hold its `len` values.
fn check_output(part: &PlainPart<'_>, win: Window, out: usize) -> Result<usize, String> {
    if out != win.len() {
        return Err(format!("{}: output holds {out} values, {} needed", part.name, win.len()));
    }
    Ok(win.x1.saturating_sub(win.x0))
}

/// Pixels `[rows, x0..x1]` of a floating-point image as `f64`, row-major into
/// `out` (`rows.count * (x1 - x0)` values).
pub fn read_float(file: &File, size: u64, part: &PlainPart<'_>, win: Window, out: &mut [f64]) -> Result<(), String> {
    float_rows(file, size, part, win, None, out)
}

/// `out -= scale * [rows, x0..x1]` of the floating-point image `part` (row-major, as
/// [`read_float`] fills it): each value `out[i] - (v * scale)` with `v` the pixel as `f64`, the
/// very operations of numpy's `image -= np.multiply(zodi, scale)`, so the same bits; no array of
/// the subtracted image's pixels is made.
pub fn subtract_float(file: &File, size: u64, part: &PlainPart<'_>, win: Window, scale: f64, out: &mut [f64]) -> Result<(), String> {
    float_rows(file, size, part, win, Some(scale), out)
}

/// [`read_float`] (`scale` None) or [`subtract_float`].
fn float_rows(file: &File, size: u64, part: &PlainPart<'_>, win: Window, scale: Option<f64>, out: &mut [f64]) -> Result<(), String> {
    let width = check_output(part, win, out.len())?;
    let bitpix = part.bitpix;
    if bitpix != -32 && bitpix != -64 {
        return Err(format!("{}: BITPIX = {bitpix}, a floating-point image (-32 or -64) was expected", part.name));
    }
    let (single, avx2) = (bitpix == -32, has_avx2());
    for_each_row(file, size, part, win, |k, bytes| {
        let dst = &mut out[k * width..(k + 1) * width];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU runs AVX2 (`has_avx2`).
            unsafe { convert_avx2(dst, bytes, single, scale) };
            return;
        }
        let _ = avx2;
        convert(dst, bytes, single, scale);
    })
}

/// Whether the AVX2 build of [`convert`] can run on this CPU.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`convert`] built for AVX2: the same IEEE operations (exact conversions, no fused
/// multiply-add), so the same bits in fewer instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn convert_avx2(dst: &mut [f64], bytes: &[u8], single: bool, scale: Option<f64>) {
    convert(dst, bytes, single, scale)
}

/// One row: its big-endian `f32` (`single`) or `f64` values into `dst` as `f64`, or (`scale`)
/// subtracted from `dst` times `scale`.
#[inline(always)]
fn convert(dst: &mut [f64], bytes: &[u8], single: bool, scale: Option<f64>) {
    match scale {
        None => floats(dst, bytes, single),
        Some(s) => minus(dst, bytes, single, s),
    }
}

/// `dst[i] - (v[i] * scale)` into `dst`, `v` the big-endian `f32` (`single`) or `f64` values of `bytes`.
#[inline(always)]
fn minus(dst: &mut [f64], bytes: &[u8], single: bool, scale: f64) {
    if single {
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
            *d -= (f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64) * scale;
        }
    } else {
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
            *d -= f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) * scale;
        }
    }
}

/// Big-endian `f32` (`single`) or `f64` values of `bytes` into `dst`, as `f64` (exact).
#[inline(always)]
fn floats(dst: &mut [f64], bytes: &[u8], single: bool) {
    if single {
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64;
        }
    } else {
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
            *d = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        }
    }
}

/// Pixels `[rows, x0..x1]` of an integer image as `u32` (`value + bzero` modulo
/// 2**32), row-major into `out` (`rows.count * (x1 - x0)` values).
pub fn read_flags(file: &File, size: u64, part: &PlainPart<'_>, win: Window, bzero: i64, out: &mut [u32]) -> Result<(), String> {
    let width = check_output(part, win, out.len())?;
    let bitpix = part.bitpix;
    if !matches!(bitpix, 8 | 16 | 32 | 64) {
        return Err(format!("{}: BITPIX = {bitpix}, an integer image (8, 16, 32 or 64) was expected", part.name));
    }
    fn put<const N: usize>(dst: &mut [u32], bytes: &[u8], bzero: i64, value: impl Fn([u8; N]) -> i64) {
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(N)) {
            let mut raw = [0u8; N];
            raw.copy_from_slice(b);
            *d = value(raw).wrapping_add(bzero) as u32;
        }
    }
    for_each_row(file, size, part, win, |k, bytes| {
        let dst = &mut out[k * width..(k + 1) * width];
        match bitpix {
            8 => put(dst, bytes, bzero, |b: [u8; 1]| b[0] as i64),
            16 => put(dst, bytes, bzero, |b| i16::from_be_bytes(b) as i64),
            32 => put(dst, bytes, bzero, |b| i32::from_be_bytes(b) as i64),
            _ => put(dst, bytes, bzero, i64::from_be_bytes),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (File, u64) {
        let path = std::env::temp_dir().join(format!("rawrows-{}-{:?}.bin", std::process::id(), std::thread::current().id()));
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (f, bytes.len() as u64)
    }

    fn win(start: usize, step: usize, count: usize, x0: usize, x1: usize) -> Window {
        Window { rows: RowSet { start, step, count }, x0, x1 }
    }

    fn part(bitpix: i32, ny: usize, nx: usize) -> PlainPart<'static> {
        PlainPart { name: "IMAGE", offset: 16, ny, nx, bitpix }
    }

    #[test]
    fn floats_of_a_box_and_of_stepped_rows() {
        let (ny, nx) = (5, 4);
        let mut bytes = vec![7u8; 16];
        for v in 0..ny * nx {
            bytes.extend_from_slice(&(v as f32 + 0.5).to_be_bytes());
        }
        let (f, size) = file_with(&bytes);
        let mut out = vec![0.0; 6];
        read_float(&f, size, &part(-32, ny, nx), win(1, 1, 3, 1, 3), &mut out).unwrap();
        assert_eq!(out, vec![5.5, 6.5, 9.5, 10.5, 13.5, 14.5]);
        let mut out = vec![0.0; 12];
        read_float(&f, size, &part(-32, ny, nx), win(0, 2, 3, 0, 4), &mut out).unwrap();
        assert_eq!(out[4..8], [8.5, 9.5, 10.5, 11.5]);
        assert_eq!(out[8..], [16.5, 17.5, 18.5, 19.5]);
    }

    #[test]
    fn subtracting_an_image_gives_the_numpy_operations_bits() {
        let (ny, nx) = (3, 5);
        let mut bytes = vec![0u8; 16];
        let z: Vec<f32> = (0..ny * nx).map(|v| (v as f32 - 4.3) * 1.37e-3).collect();
        for v in &z {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let (f, size) = file_with(&bytes);
        let scale = 0.917_321_5;
        let start: Vec<f64> = (0..6).map(|v| 0.1 * v as f64 - 0.25).collect();
        let mut out = start.clone();
        subtract_float(&f, size, &part(-32, ny, nx), win(1, 1, 2, 1, 4), scale, &mut out).unwrap();
        for (k, (&o, &s0)) in out.iter().zip(&start).enumerate() {
            let v = z[(1 + k / 3) * nx + 1 + k % 3] as f64;
            let product = v * scale;
            assert_eq!(o.to_bits(), (s0 - product).to_bits(), "{k}");
        }
        let mut scalar = start.clone();
        for (d, k) in scalar.iter_mut().zip(0..) {
            let v = z[(1 + k / 3) * nx + 1 + k % 3];
            minus(std::slice::from_mut(d), &v.to_be_bytes(), true, scale);
        }
        assert_eq!(scalar, out);
        assert!(subtract_float(&f, size, &part(16, ny, nx), win(0, 1, 1, 0, 5), scale, &mut out[..5]).is_err());
    }

    #[test]
    fn integers_with_bzero_wrap_modulo_2_32() {
        let mut bytes = vec![0u8; 16];
        for v in [-1i32, 0, i32::MIN, 5] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let (f, size) = file_with(&bytes);
        let mut out = vec![0u32; 4];
        read_flags(&f, size, &part(32, 1, 4), win(0, 1, 1, 0, 4), 1 << 31, &mut out).unwrap();
        assert_eq!(out, vec![0x7fff_ffff, 0x8000_0000, 0, 0x8000_0005]);
        read_flags(&f, size, &part(32, 1, 4), win(0, 1, 1, 0, 4), 0, &mut out).unwrap();
        assert_eq!(out, vec![u32::MAX, 0, 0x8000_0000, 5]);
    }

    #[test]
    fn a_truncated_file_is_an_error_naming_the_row() {
        let bytes = vec![0u8; 16 + 4 * 4 * 3 + 2];
        let (f, size) = file_with(&bytes);
        let mut out = vec![0.0; 8];
        let err = read_float(&f, size, &part(-32, 4, 4), win(2, 1, 2, 0, 4), &mut out).unwrap_err();
        assert!(err.contains("IMAGE: row 3") && err.contains("truncated file"), "{err}");
        let err = read_float(&f, size, &part(16, 4, 4), win(0, 1, 1, 0, 4), &mut out[..4]).unwrap_err();
        assert!(err.contains("BITPIX = 16"), "{err}");
        let err = read_float(&f, size, &part(-32, 4, 4), win(0, 1, 2, 2, 5), &mut out[..6]).unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }
}
