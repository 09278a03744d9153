//! Giving freed heap memory back to the kernel.
//!
//! glibc malloc keeps freed memory in its arenas: a heap grown by transient work (the
//! eBPF object and the kernel's BTF parsed at start-up, a burst of misses with their
//! upstream sockets and decoded replies) cannot shrink past the cache entries that
//! were allocated in between, so the pages stay resident although free. Measured with
//! `examples/cache_memory.rs` and `cargo xtask bench` (RSS after 100k names):
//! `malloc_trim(0)` returns every whole free page inside the heaps, not just the top.
//! A different allocator (mimalloc) was measured too: it held 43 MiB at idle where
//! glibc holds 12 MiB, so glibc stays.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Returns free heap pages to the kernel (glibc); elsewhere a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it takes malloc's
    // own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every `period` while queries went upstream since the last trim: the miss
/// path is what leaves freed memory behind (cache hits allocate and free the same
/// few small blocks, which malloc reuses). Runs on a blocking thread, since a trim
/// walks every arena's free lists.
pub async fn trim_after_misses(metrics: Arc<Metrics>, period: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed_at = metrics.cache_misses.get();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                let misses = metrics.cache_misses.get();
                if misses != trimmed_at {
                    trimmed_at = misses;
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                }
            }
        }
    }
}
