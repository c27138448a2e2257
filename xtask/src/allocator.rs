//! The benchmarks' allocator: mimalloc (keeping freed memory for reuse, as the `gemma-scope`
//! binary does: [`gemma_scope::allocator::keep_freed_memory`]), counting live heap bytes so the
//! benchmarks can report a step's peak memory.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Heap bytes allocated and not yet freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most [`LIVE`] has been since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// mimalloc with two relaxed counters (one atomic add per allocation and free, and one
/// atomic max per allocation; nothing next to a training step's cost).
pub struct CountingMimalloc;

fn allocated(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to mimalloc, a correct allocator; the counters
// only observe sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !pointer.is_null() {
            allocated(layout.size());
        }
        pointer
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !pointer.is_null() {
            allocated(layout.size());
        }
        pointer
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the pointer came from this allocator with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the pointer came from this allocator with this layout.
        let moved = unsafe { mimalloc::MiMalloc.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            allocated(new_size);
        }
        moved
    }
}

/// Starts a new peak window at the current live heap; returns the live bytes.
pub fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The most heap bytes live at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test binary counts with the allocator it tests: `main.rs`'s `#[global_allocator]`
    // applies to it too.

    #[test]
    fn the_peak_counts_a_buffer_alive_inside_the_window() {
        reset_peak();
        let before = peak();
        let buffer = vec![1u8; 64 << 20];
        assert!(peak() >= before + (64 << 20), "{} vs {before}", peak());
        drop(buffer);
    }
}
