//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory a process has freed for its next allocations: after a peak
//! (the caches' start-up list, a Table of ten thousand pods, a burst of requests) the freed
//! pages stay resident, and RSS shows the high-water mark instead of what the caches hold. Go,
//! which kube-apiserver runs on, returns such memory in the background (its scavenger); this
//! loop does the same with `malloc_trim`, which releases free pages inside the heaps, not only
//! at their top, and big buffers (a LIST's response) get mappings of their own, unmapped when
//! freed. Elsewhere than glibc it does nothing.
use std::time::{Duration, Instant};

/// Allocations from this size up get their own mapping, returned to the system when freed
/// (glibc's default threshold starts at 128 KiB but rises to 32 MiB after the first large
/// free, after which a LIST's multi-megabyte response buffers stay in the heap).
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// How often freed memory is handed back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Hands freed heap memory back to the system once (glibc only); returns whether any was.
#[allow(unsafe_code)]
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own free chunks; it takes
        // the arena locks itself and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (glibc only; returns whether it was set).
#[allow(unsafe_code)]
pub fn configure() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tunables; setting M_MMAP_THRESHOLD is
        // allowed at any time and affects allocations made afterwards.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Fixes the mmap threshold and starts the background trimmer (a plain thread: a trim holds allocator locks for a few
/// milliseconds and must not occupy an async worker).
pub fn spawn_trimmer() {
    // Once per process: several servers in one process (tests) share one allocator.
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(start_trimmer);
}

fn start_trimmer() {
    configure();
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                let started = Instant::now();
                let released = trim();
                tracing::trace!(released, took = ?started.elapsed(), "malloc_trim");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "not starting the malloc-trim thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mmap_threshold_is_fixed() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(configure());
    }

    #[test]
    fn freed_memory_goes_back() {
        // A few megabytes in small blocks, freed: a trim finds something to release.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 2048]).collect();
        drop(blocks);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(trim());
    }
}
