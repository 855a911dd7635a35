//! The process's heap, kept to what the current stage holds.

/// One heap for all threads. glibc otherwise gives each thread its own arena, and memory freed
/// in one is never reused by another: the tree the layer readers allocated, freed while the
/// composefs image is built on the main thread, would stay resident beside it.
pub fn share_one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the heap's free pages back to the system between stages: glibc keeps what a stage
/// freed for reuse, so the next stage's peak would otherwise count the last one's too.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it touches nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
