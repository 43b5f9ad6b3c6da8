//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory a process has freed for its next allocations: after a peak
//! (the caches' start-up list, a Table of ten thousand pods, a burst of requests) the freed
//! pages stay resident, and RSS shows the high-water mark instead of what the caches hold. Go,
//! which kube-apiserver runs on, returns such memory in the background (its scavenger); this
//! loop does the same with `malloc_trim`, which releases free pages inside the heaps, not only
//! at their top. Elsewhere than glibc it does nothing.
use std::time::{Duration, Instant};

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

/// Starts the background trimmer (a plain thread: a trim holds allocator locks for a few
/// milliseconds and must not occupy an async worker).
pub fn spawn_trimmer() {
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
    fn freed_memory_goes_back() {
        // A few megabytes in small blocks, freed: a trim finds something to release.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 2048]).collect();
        drop(blocks);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(trim());
    }
}
