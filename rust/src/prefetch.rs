//! Software prefetch: a hint that brings a cache line in ahead of use. Used
//! for the cube cells and input rows the band scan reaches next (see
//! `scan::CUBE_AHEAD` and `scan::INPUT_AHEAD`).

/// Asks the CPU to bring the cache line at `p` into all its caches, L1 too (a
/// hint: no effect on results, no fault for any address). Measured on the
/// kernel benchmark: ~2% faster than into L2 only.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults and does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
