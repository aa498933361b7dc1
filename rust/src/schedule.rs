//! Scheduling: thread pools, the work-balanced band layout of the fused path,
//! stable bucketing of items into bands, and the merge of the bands' statistics.
//!
//! Which thread computes what never changes the results: every voxel belongs to
//! one band, and each band visits its items in input order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use crate::scan::FrameStats;

/// Band boundaries of [`crate::scan::accumulate_frame`] on `threads` threads: one band per
/// thread, the boundaries chosen so that each band has about the same work,
/// estimated from the live input blocks (each block's pixels spread evenly
/// over the output rows it can reach, `rows[b] = (first, last)`), so that
/// every thread stays busy when the frame covers the grid unevenly. One band
/// per thread scans the fewest input blocks twice (a block that straddles two
/// bands is scanned by both); with the cube cells prefetched (see
/// `scan::CUBE_AHEAD`) shorter bands gain nothing from their smaller part of the
/// cube (measured: 300-row bands 5-11% faster than 40- and 80-row bands,
/// 150-row ones alike). Returns the first row of each band and `ny_out` at
/// the end. Results do not depend on it.
pub(crate) fn band_starts(ny_out: usize, threads: usize, rows: impl Iterator<Item = (u32, u32)>) -> Vec<usize> {
    let n_bands = threads.clamp(1, ny_out.max(1));
    if n_bands == 1 {
        return vec![0, ny_out];
    }
    // Work per output row, then the rows where the cumulative work crosses k / n_bands.
    let mut work = vec![0.0f64; ny_out];
    for (r0, r1) in rows {
        let share = 1.0 / (r1 - r0 + 1) as f64;
        work[r0 as usize..=r1 as usize].iter_mut().for_each(|w| *w += share);
    }
    let total: f64 = work.iter().sum();
    let mut starts = vec![0];
    let mut cum = 0.0;
    for (r, w) in work.iter().enumerate() {
        cum += w;
        let next = starts.len();
        if next < n_bands && cum >= total * next as f64 / n_bands as f64 && r + 1 < ny_out && r + 1 > *starts.last().unwrap() {
            starts.push(r + 1);
        }
    }
    starts.push(ny_out);
    starts
}

/// Runs `f` in a rayon pool of `threads` threads (`0`: the global pool).
/// Pools are built once per thread count and kept for later calls.
pub(crate) fn run_in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if threads == 0 {
        return Ok(f());
    }
    Ok(pool_of(threads)?.install(f))
}

/// The rayon pool of `threads` (> 0) threads, built on first use and kept.
pub(crate) fn pool_of(threads: usize) -> Result<Arc<rayon::ThreadPool>, String> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = pools.get(&threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?);
    pools.insert(threads, Arc::clone(&pool));
    Ok(pool)
}

/// `f(0), ..., f(n - 1)` in index order, computed by the calling thread and
/// the workers of `helpers` (each taking the next index when it finishes one).
/// The calling thread starts at once, while the helpers (asleep between calls,
/// tens of microseconds to wake) join in; which thread computes what does not
/// change the results.
pub(crate) fn run_indexed<R: Send>(helpers: Option<&rayon::ThreadPool>, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let r = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    match helpers {
        Some(pool) if n > 1 => pool.in_place_scope(|s| {
            for _ in 0..pool.current_num_threads().min(n - 1) {
                s.spawn(|_| work());
            }
            work();
        }),
        _ => work(),
    }
    slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every index is computed")).collect()
}

/// Stable counting sort of `n_items` items into bands: returns `(offsets,
/// items)` with the items of band `b` at `items[offsets[b]..offsets[b + 1]]`,
/// in input order. `range(item)` gives the first and last band of an item.
pub(crate) fn bucket_by_band(n_items: usize, n_bands: usize, range: impl Fn(usize) -> (u32, u32)) -> (Vec<usize>, Vec<u32>) {
    let mut counts = vec![0usize; n_bands + 1];
    for idx in 0..n_items {
        let (b0, b1) = range(idx);
        for b in b0..=b1 {
            counts[b as usize + 1] += 1;
        }
    }
    for b in 0..n_bands {
        counts[b + 1] += counts[b];
    }
    let mut fill = counts.clone();
    let mut items = vec![0u32; counts[n_bands]];
    for idx in 0..n_items {
        let (b0, b1) = range(idx);
        for b in b0..=b1 {
            let slot = &mut fill[b as usize];
            items[*slot] = idx as u32;
            *slot += 1;
        }
    }
    (counts, items)
}

/// Statistics from the band tasks' `(voxel updates, planes hit)` and the number
/// of contributing input pixels.
pub(crate) fn merge_stats(n_z: usize, parts: impl IntoIterator<Item = (u64, Vec<bool>)>, n_pixels: u64) -> FrameStats {
    let mut planes = vec![false; n_z];
    let mut n_contributions = 0;
    for (n, p) in parts {
        n_contributions += n;
        for (acc, v) in planes.iter_mut().zip(p) {
            *acc |= v;
        }
    }
    FrameStats { n_pixels, n_contributions, planes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_share_the_work_evenly() {
        // Uniform work: equal heights.
        let uniform = (0..100u32).map(|r| (r, r));
        assert_eq!(band_starts(100, 4, uniform), vec![0, 25, 50, 75, 100]);
        assert_eq!(band_starts(300, 1, (0..300u32).map(|r| (r, r))), vec![0, 300]);
        // All the work in rows 60..80: the boundaries fall there.
        let s = band_starts(100, 2, (60..80u32).map(|r| (r, r)));
        assert_eq!(s, vec![0, 70, 100]);
        // A block reaching rows 0..=99 counts a hundredth per row.
        let s = band_starts(100, 2, [(0u32, 99u32)].into_iter().chain((0..10).map(|_| (90, 99))));
        assert!(s[1] > 90 && s[1] < 99, "{s:?}");
        // More threads than rows; no work at all; a short grid on one thread.
        assert_eq!(band_starts(3, 8, (0..3u32).map(|r| (r, r))), vec![0, 1, 2, 3]);
        let s = band_starts(50, 4, std::iter::empty());
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[0] == 0 && *s.last().unwrap() == 50 && s.len() <= 5);
        assert_eq!(band_starts(50, 1, (0..50u32).map(|r| (r, r))), vec![0, 50]);
    }

    #[test]
    fn bucketing_is_stable_and_counts_items_in_every_band_they_reach() {
        let ranges = [(0u32, 0u32), (1, 2), (0, 2), (2, 2)];
        let (offsets, items) = bucket_by_band(ranges.len(), 3, |k| ranges[k]);
        assert_eq!(offsets, vec![0, 2, 4, 7]);
        assert_eq!(items, vec![0, 2, 1, 2, 1, 2, 3]);
        let out = run_indexed(Some(&pool_of(2).unwrap()), 5, |i| i * i);
        assert_eq!(out, vec![0, 1, 4, 9, 16]);
    }
}
