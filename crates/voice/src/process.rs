//! Tuning the process for synthesis: candle's thread pool and glibc's allocator.
//!
//! With `crates/voice/src/kernels.rs`, the only module of the workspace with `unsafe` code:
//! `std::env::set_var` (sound only while no other thread exists, which is checked here rather
//! than assumed) and two calls into glibc's allocator (`mallopt`, `malloc_trim`), which only set
//! its parameters and give free pages back.
#![allow(unsafe_code)]

/// The environment variable that sizes candle's own pool of threads for element-wise operations.
pub const CANDLE_THREADS_VARIABLE: &str = "CANDLE_NUM_THREADS";

/// glibc's allocator hands out blocks of at least this size with `mmap` (and gives them back
/// with `munmap`); see [`prepare_process`].
pub const MMAP_THRESHOLD: usize = 64 << 20;
/// glibc gives the free memory at the top of an arena back to the system past this size.
pub const TRIM_THRESHOLD: usize = 128 << 20;

/// Tunes the process for synthesis. Call it first thing in the `main` of a program that
/// synthesises; it returns whether candle's pool could be set (see below).
///
/// - candle's element-wise operations stay on the calling thread (`CANDLE_NUM_THREADS=1`,
///   unless the environment says otherwise). candle runs an operation of 64K values or more
///   on a pool of its own, apart from rayon's, whose idle threads then spin for about 25,000
///   rounds before they sleep. The voice's parallel work (the decoder's kernels, and candle's
///   matrix products) is on rayon, so on a small machine the spinning takes a core from the
///   next product: on a 2-core AMD EPYC with 2 threads, the flows took 45 to 50 ms on a 3.6 s
///   sentence with candle's pool and 32 to 38 ms without it. Changing the environment is sound
///   only while no other thread can read it, so it is done only when this is the process's one
///   thread (`/proc/self/status`); otherwise it is left as it is and this returns `false`.
/// - With glibc, blocks under [`MMAP_THRESHOLD`] come from the heap, and up to
///   [`TRIM_THRESHOLD`] of free memory stays in it. Each decoder layer allocates its output,
///   megabytes at a time; by default glibc maps such blocks afresh and unmaps them when freed, so
///   every layer paid for page faults and for the kernel zeroing its pages (172,000 faults for
///   the benchmark's paragraph). Kept in the heap, they are reused: 52,000 faults, and the
///   paragraph's real-time factor went from 0.059 to 0.050 (2 threads, same machine). The cost
///   is memory kept after a burst; [`release_free_memory`] gives it back.
pub fn prepare_process() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters (under its own lock); the values are
    // in range for a 64-bit process.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
    if std::env::var_os(CANDLE_THREADS_VARIABLE).is_some() {
        return true;
    }
    if !only_thread() {
        return false;
    }
    // SAFETY: this is the process's only thread (checked above), and it is busy here, so no
    // other code reads or writes the environment meanwhile.
    unsafe { std::env::set_var(CANDLE_THREADS_VARIABLE, "1") };
    true
}

/// Whether the calling thread is the process's only one.
fn only_thread() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.split_whitespace().eq(["Threads:", "1"]))
    })
}

/// Gives the allocator's free memory back to the system (glibc's `malloc_trim`), for example when
/// a service has nothing left to synthesise. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_left_alone_beside_other_threads() {
        // The test harness runs tests on threads of its own: never the only thread.
        assert!(!only_thread());
        if std::env::var_os(CANDLE_THREADS_VARIABLE).is_none() {
            assert!(!prepare_process());
            assert!(std::env::var_os(CANDLE_THREADS_VARIABLE).is_none());
        }
    }
}
