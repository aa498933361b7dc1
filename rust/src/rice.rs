//! FITS `RICE_1` tile decompression (the tile-compressed FLAGS of SPHEREx QR3
//! and later: one image row per tile).
//!
//! A tile's bytes are the first pixel (big-endian, `bytepix` bytes), then
//! blocks of `blocksize` pixel differences, each block a split level `fs`
//! (`fsbits` bits) followed by Rice codes (`fs + 1 == 0`: every difference is
//! zero; `fs == fsmax`: raw `8 * bytepix`-bit differences), differences
//! mapped to unsigned values (`2d` or `-2d - 1`). This is the algorithm of
//! CFITSIO's `fits_rdecomp` (Pence, White & Seaman), written so that any byte
//! string is either decoded or an error: every read is bounds-checked and
//! nothing panics. Arithmetic wraps modulo `2^(8 * bytepix)`, as in CFITSIO.
//!
//! [`decode_rows`] decodes many tiles of whole rows and keeps the columns
//! `x0..x1` of each row as `u32` flags; tiles of one row stop decoding at `x1`.

/// Parameters of one tile layout: pixels per row, bytes per pixel, pixels per block.
#[derive(Clone, Copy, Debug)]
pub struct RiceParams {
    pub bytepix: usize,
    pub blocksize: usize,
}

impl RiceParams {
    fn check(&self) -> Result<(u32, u32), String> {
        let (fsbits, fsmax) = match self.bytepix {
            1 => (3, 6),
            2 => (4, 14),
            4 => (5, 25),
            b => return Err(format!("RICE_1 bytes per pixel must be 1, 2 or 4, got {b}")),
        };
        if self.blocksize == 0 || self.blocksize > 1 << 16 {
            return Err(format!("RICE_1 block size must be 1-65536, got {}", self.blocksize));
        }
        Ok((fsbits, fsmax))
    }
}

/// MSB-first bit reader over a byte slice; reading past the end is an error.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0, acc: 0, n: 0 }
    }

    #[inline]
    fn refill(&mut self, need: u32) -> Result<(), String> {
        while self.n < need {
            let Some(&b) = self.data.get(self.pos) else {
                return Err(format!("compressed tile ends early (after {} bytes)", self.data.len()));
            };
            self.acc = (self.acc << 8) | u64::from(b);
            self.pos += 1;
            self.n += 8;
        }
        Ok(())
    }

    /// The next `k` bits (k <= 32) as an unsigned number.
    #[inline]
    fn take(&mut self, k: u32) -> Result<u32, String> {
        if k == 0 {
            return Ok(0);
        }
        self.refill(k)?;
        self.n -= k;
        let v = (self.acc >> self.n) & ((1u64 << k) - 1);
        self.acc &= (1u64 << self.n) - 1;
        Ok(v as u32)
    }

    /// Zero bits up to the next one bit (consumed too): their number.
    #[inline]
    fn zeros_then_one(&mut self) -> Result<u32, String> {
        let mut zeros = 0u32;
        loop {
            if self.n == 0 {
                self.refill(8)?;
            }
            if self.acc == 0 {
                // a long run of zeros (an outlier in a quiet block) is valid; the input bounds it
                zeros = zeros.wrapping_add(self.n);
                self.n = 0;
                continue;
            }
            let lead = (self.acc << (64 - self.n)).leading_zeros();
            zeros += lead;
            self.n -= lead + 1;
            self.acc &= (1u64 << self.n) - 1;
            return Ok(zeros);
        }
    }
}

/// Decodes the first `out.len()` pixels of one tile into `out` (values modulo
/// `2^(8 * bytepix)`, as unsigned numbers).
pub fn decode_tile(data: &[u8], out: &mut [u32], p: RiceParams) -> Result<(), String> {
    let (fsbits, fsmax) = p.check()?;
    let bbits = 8 * p.bytepix as u32;
    let mask: u32 = if bbits == 32 { u32::MAX } else { (1u32 << bbits) - 1 };
    if data.len() < p.bytepix {
        return Err(format!("compressed tile of {} bytes is shorter than its first pixel", data.len()));
    }
    let mut last: u32 = data[..p.bytepix].iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let mut bits = Bits::new(&data[p.bytepix..]);
    let n = out.len();
    let mut i = 0;
    while i < n {
        let fs = bits.take(fsbits)? as i64 - 1;
        let end = (i + p.blocksize).min(n);
        if fs < 0 {
            out[i..end].fill(last);
            i = end;
            continue;
        }
        let fs = fs as u32;
        if fs > fsmax {
            return Err(format!("corrupt block header (split level {fs} > {fsmax})"));
        }
        for slot in &mut out[i..end] {
            let diff = if fs == fsmax {
                bits.take(bbits)?
            } else {
                let top = bits.zeros_then_one()?;
                top.wrapping_shl(fs) | bits.take(fs)?
            };
            let d = if diff & 1 == 0 { diff >> 1 } else { !(diff >> 1) };
            last = d.wrapping_add(last) & mask;
            *slot = last;
        }
        i = end;
    }
    Ok(())
}

/// Which columns of rows of `nx` pixels are kept: `x0..x1`.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    pub nx: usize,
    pub x0: usize,
    pub x1: usize,
}

/// One tile's bytes in `heap`: `(offset, length)`; the tile holds `rows` rows.
#[derive(Clone, Copy, Debug)]
pub struct Tile {
    pub offset: usize,
    pub length: usize,
    pub rows: usize,
}

/// Decodes `tiles` (whole rows of `cols.nx` pixels each, in order) and writes
/// the columns `cols.x0..cols.x1` of every row to `out` (rows one after another, `x1 - x0`
/// values each) as `u32` flags: `bytepix` 2 values are sign-extended (FITS
/// 16-bit integers are signed), 1 and 4 are taken as they are, then `bzero`
/// is added modulo `2^32` (unsigned data). Errors name the tile.
pub fn decode_rows(heap: &[u8], tiles: &[Tile], cols: Columns, p: RiceParams, bzero: i64, out: &mut [u32]) -> Result<(), String> {
    p.check()?;
    let Columns { nx, x0, x1 } = cols;
    if !(x0 < x1 && x1 <= nx) {
        return Err(format!("columns {x0}..{x1} are outside rows of {nx} pixels"));
    }
    let width = x1 - x0;
    let total_rows: usize = tiles.iter().map(|t| t.rows).sum();
    if out.len() != total_rows * width {
        return Err(format!("output holds {} values, {} rows of {width} need {}", out.len(), total_rows, total_rows * width));
    }
    let mut buf = vec![0u32; tiles.iter().map(|t| t.rows * nx).max().unwrap_or(0)];
    let mut row = 0;
    for (k, t) in tiles.iter().enumerate() {
        let Some(bytes) = t.offset.checked_add(t.length).and_then(|end| heap.get(t.offset..end)) else {
            return Err(format!("tile {k}: bytes {}+{} outside the {} bytes read", t.offset, t.length, heap.len()));
        };
        // one row per tile: the pixels after x1 are not needed
        let npix = if t.rows == 1 { x1 } else { t.rows * nx };
        decode_tile(bytes, &mut buf[..npix], p).map_err(|e| format!("tile {k}: {e}"))?;
        for r in 0..t.rows {
            let src = &buf[r * nx + x0..r * nx + x1];
            let dst = &mut out[(row + r) * width..(row + r + 1) * width];
            for (d, &v) in dst.iter_mut().zip(src) {
                let signed = if p.bytepix == 2 { i64::from(v as u16 as i16) } else { i64::from(v) };
                *d = signed.wrapping_add(bzero) as u32;
            }
        }
        row += t.rows;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The encoder of CFITSIO's `fits_rcomp`; `force_raw(block)` forces raw
    /// differences for a block (the decoder must read every mode).
    fn encode(values: &[u32], p: RiceParams, force_raw: &dyn Fn(usize) -> bool) -> Vec<u8> {
        let (fsbits, fsmax) = p.check().unwrap();
        let bbits = 8 * p.bytepix as u32;
        let mask: u64 = (1u64 << bbits) - 1;
        let mut out: Vec<u8> = Vec::new();
        let mut bits: Vec<bool> = Vec::new();
        let mut put = |v: u64, k: u32, _: &mut Vec<u8>| {
            for bit in (0..k).rev() {
                bits.push((v >> bit) & 1 == 1);
            }
        };
        for b in (0..p.bytepix).rev() {
            out.push((values[0] >> (8 * b)) as u8);
        }
        let mut last = values[0];
        for (bi, block) in values.chunks(p.blocksize).enumerate() {
            let diffs: Vec<u64> = block
                .iter()
                .map(|&v| {
                    let d = (v.wrapping_sub(last) as u64) & mask;
                    last = v;
                    let signed = if d >> (bbits - 1) == 1 { d as i64 - (1i64 << bbits) } else { d as i64 };
                    (if signed < 0 { !((signed as u64) << 1) } else { (signed as u64) << 1 }) & mask
                })
                .collect();
            let sum: f64 = diffs.iter().map(|&d| d as f64).sum();
            let dpsum = ((sum - (block.len() / 2) as f64 - 1.0) / block.len() as f64).max(0.0);
            let mut psum = (dpsum as u64) >> 1;
            let mut fs = 0;
            while psum > 0 {
                fs += 1;
                psum >>= 1;
            }
            if fs >= fsmax || force_raw(bi) {
                put(u64::from(fsmax + 1), fsbits, &mut out);
                for &d in &diffs {
                    put(d, bbits, &mut out);
                }
            } else if fs == 0 && sum == 0.0 {
                put(0, fsbits, &mut out);
            } else {
                put(u64::from(fs + 1), fsbits, &mut out);
                for &d in &diffs {
                    let top = d >> fs;
                    put(0, top as u32, &mut out);
                    put(1, 1, &mut out);
                    put(d & ((1u64 << fs) - 1), fs, &mut out);
                }
            }
        }
        for byte in bits.chunks(8) {
            out.push(byte.iter().enumerate().fold(0u8, |acc, (i, &b)| acc | ((b as u8) << (7 - i))));
        }
        out
    }

    fn params(bytepix: usize, blocksize: usize) -> RiceParams {
        RiceParams { bytepix, blocksize }
    }

    #[test]
    fn tiles_written_by_astropy() {
        // astropy 8 (CFITSIO's fits_rcomp) compressing the same 12 values as int32, int16, uint8
        let int32: [u8; 19] = [0, 0, 0, 0, 68, 4, 20, 20, 20, 36, 52, 84, 132, 213, 87, 152, 0, 13, 96];
        let int16: [u8; 17] = [0, 0, 136, 8, 40, 40, 40, 72, 104, 169, 9, 170, 175, 48, 0, 26, 192];
        let uint8: [u8; 12] = [0, 208, 69, 20, 82, 77, 86, 29, 42, 3, 209, 240];
        let fib = [0i64, 1, 2, 3, 5, 8, 13, 21, 34, 55];
        for (bytes, bytepix, tail) in [(&int32[..], 4, [-3i64, 1000]), (&int16[..], 2, [-3, 1000]), (&uint8[..], 1, [200, 7])] {
            let mut out = vec![0u32; 12];
            decode_tile(bytes, &mut out, params(bytepix, 32)).unwrap();
            let want: Vec<u32> =
                fib.iter().chain(tail.iter()).map(|&v| (v as u32) & if bytepix == 4 { u32::MAX } else { (1 << (8 * bytepix)) - 1 }).collect();
            assert_eq!(out, want, "bytepix {bytepix}");
            // as flags: int16 sign-extended, uint8 as it is
            let mut flags = vec![0u32; 12];
            let whole = Columns { nx: 12, x0: 0, x1: 12 };
            decode_rows(bytes, &[Tile { offset: 0, length: bytes.len(), rows: 1 }], whole, params(bytepix, 32), 0, &mut flags).unwrap();
            assert_eq!(flags[10], if bytepix == 1 { 200 } else { (-3i32) as u32 });
        }
    }

    #[test]
    fn an_outlier_in_a_quiet_block_is_a_long_zero_run() {
        let p = params(4, 32);
        let mut values = vec![3u32; 32];
        values[17] = 5_000_000;
        let bytes = encode(&values, p, &|_| false);
        let mut out = vec![0u32; 32];
        decode_tile(&bytes, &mut out, p).unwrap();
        assert_eq!(out, values);
    }

    #[test]
    fn every_block_mode_round_trips() {
        let p = params(4, 32);
        let flat = vec![7u32; 100];
        let noisy: Vec<u32> = (0..100u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let small: Vec<u32> = (0..100u32).map(|i| (i * 7) % 13).collect();
        for values in [flat, noisy, small] {
            for raw in [false, true] {
                let bytes = encode(&values, p, &|b| raw && b % 2 == 0);
                let mut out = vec![0u32; values.len()];
                decode_tile(&bytes, &mut out, p).unwrap();
                assert_eq!(out, values);
            }
        }
    }

    #[test]
    fn truncated_and_bad_inputs_are_errors() {
        let p = params(4, 32);
        let values: Vec<u32> = (0..64u32).map(|i| i * 1000).collect();
        let bytes = encode(&values, p, &|_| false);
        let mut out = vec![0u32; 64];
        for cut in [0, 3, 5, bytes.len() / 2] {
            assert!(decode_tile(&bytes[..cut], &mut out, p).is_err(), "cut {cut}");
        }
        assert!(decode_tile(&bytes, &mut out, params(3, 32)).is_err());
        assert!(decode_tile(&bytes, &mut out, params(4, 0)).is_err());
        // split level 31 > 25
        assert!(decode_tile(&[0, 0, 0, 0, 0xFF, 0xFF], &mut out[..4], p).is_err());
    }

    #[test]
    fn rows_keep_columns_and_apply_bzero() {
        let p = params(4, 32);
        let rows: Vec<Vec<u32>> = (0..3).map(|r| (0..40u32).map(|i| i + 100 * r).collect()).collect();
        let mut heap = Vec::new();
        let mut tiles = Vec::new();
        for row in &rows {
            let b = encode(row, p, &|_| false);
            tiles.push(Tile { offset: heap.len(), length: b.len(), rows: 1 });
            heap.extend(b);
        }
        let mut out = vec![0u32; 3 * 5];
        decode_rows(&heap, &tiles, Columns { nx: 40, x0: 10, x1: 15 }, p, 1 << 31, &mut out).unwrap();
        for r in 0..3 {
            for c in 0..5 {
                assert_eq!(out[r * 5 + c], rows[r][10 + c].wrapping_add(1 << 31));
            }
        }
        let bad = [Tile { offset: heap.len(), length: 4, rows: 1 }];
        assert!(decode_rows(&heap, &bad, Columns { nx: 40, x0: 0, x1: 5 }, p, 0, &mut out[..5]).unwrap_err().contains("tile 0"));
        assert!(decode_rows(&heap, &tiles, Columns { nx: 40, x0: 5, x1: 50 }, p, 0, &mut out).is_err());
    }

    proptest! {
        /// Property: any values, any block size and pixel width round-trip.
        #[test]
        fn round_trip(raw in proptest::collection::vec(any::<u32>(), 1..300), bytepix in prop::sample::select(vec![1usize, 2, 4]),
                      blocksize in 1usize..70, smooth in any::<bool>()) {
            let mask = if bytepix == 4 { u32::MAX } else { (1u32 << (8 * bytepix)) - 1 };
            let values: Vec<u32> = if smooth { raw.iter().map(|v| (v % 5) & mask).collect() } else { raw.iter().map(|v| v & mask).collect() };
            let p = params(bytepix, blocksize);
            let bytes = encode(&values, p, &|b| b % 3 == 1);
            let mut out = vec![0u32; values.len()];
            decode_tile(&bytes, &mut out, p).unwrap();
            prop_assert_eq!(out, values);
        }

        /// Property (fuzz): random bytes are decoded or refused, never a panic or a read past the end.
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), npix in 0usize..500,
                                    bytepix in prop::sample::select(vec![1usize, 2, 4]), blocksize in 1usize..70) {
            let mut out = vec![0u32; npix];
            let _ = decode_tile(&data, &mut out, params(bytepix, blocksize));
            let tiles = [Tile { offset: 0, length: data.len(), rows: 1 }];
            let mut row = vec![0u32; 3];
            let _ = decode_rows(&data, &tiles, Columns { nx: 7, x0: 2, x1: 5 }, params(bytepix, blocksize), 0, &mut row);
        }
    }
}
