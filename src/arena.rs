//! The binary's allocator: a bump arena in .bss, then the system's.
//!
//! One add or remove lives for about a millisecond and allocates some 20 KB
//! in under 300 blocks (dhat), yet musl's allocator (mallocng) spent about
//! half of a file add's instructions on them, and mapped and unmapped pages
//! for them (docs/performance.md). Here an allocation is an atomic bump of
//! an offset into a static buffer, whose pages the kernel provides on first
//! touch like any other. Freeing gives back only the most recent block
//! (temporaries, freed in the order they were made), and a realloc of the
//! most recent block grows it in place (a `Vec` or `String` being filled).
//! Nothing else is reused: past `N` bytes the system allocator serves, and
//! blocks it gave are freed to it. So a long run (a diagnose of a big host,
//! selftest's simulator) costs at most `N` bytes more than with the system
//! allocator alone, and a short one never calls it.
//!
//! Threads: the offset is one atomic, so blocks never overlap; selftest and
//! the simulator allocate from several threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of the binary's arena: some fifty adds' worth.
pub const BYTES: usize = 1 << 20;

#[repr(C, align(4096))]
struct Buf<const N: usize>(UnsafeCell<[u8; N]>);

/// A bump allocator over `N` static bytes, falling back to `System`.
pub struct Arena<const N: usize> {
    buf: Buf<N>,
    /// Offset of the first free byte.
    top: AtomicUsize,
}

// SAFETY: the buffer is only reached through blocks handed out by `alloc`,
// which the atomic `top` keeps disjoint.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arena {
            buf: Buf(UnsafeCell::new([0; N])),
            top: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.buf.0.get() as usize
    }

    /// Whether `p` is a block of the arena (else the system's).
    fn owns(&self, p: *mut u8) -> bool {
        let a = p as usize;
        a >= self.base() && a < self.base() + N
    }

    /// Moves `top` from `from` to `to` if nobody allocated meanwhile.
    fn swing(&self, from: usize, to: usize) -> bool {
        // AcqRel: a block given back by one thread and handed out again to
        // another was written by the first.
        self.top
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Bytes of the arena handed out (and not given back) so far.
    pub fn used(&self) -> usize {
        self.top.load(Ordering::Acquire)
    }
}

// SAFETY: every block is `layout.size()` bytes aligned to `layout.align()`,
// inside the buffer or from `System`, and no two live blocks overlap: `top`
// only moves back over the most recent block, when it is freed or shrunk.
unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.base();
        let mut top = self.top.load(Ordering::Acquire);
        // The block's offsets, aligned as an address (not as an offset);
        // None when it does not fit.
        let place = |top: usize| {
            let start = (base + top).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size()).filter(|e| *e <= N)?;
            Some((start, end))
        };
        while let Some((start, end)) = place(top) {
            match self
                .top
                .compare_exchange_weak(top, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => top = now,
            }
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if !self.owns(p) {
            // SAFETY: `p` came from System.alloc with this layout.
            return unsafe { System.dealloc(p, layout) };
        }
        let start = p as usize - self.base();
        // Only the most recent block comes back; others stay used.
        self.swing(start + layout.size(), start);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.owns(p) {
            let start = p as usize - self.base();
            let end = start + layout.size();
            if new_size <= layout.size() {
                // The tail of the most recent block comes back.
                self.swing(end, start + new_size);
                return p;
            }
            if start + new_size <= N && self.swing(end, start + new_size) {
                return p;
            }
        }
        // SAFETY: new_size is non-zero and, rounded up to the alignment,
        // does not overflow (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero layout.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_inside() {
        static A: Arena<4096> = Arena::new();
        let mut blocks = Vec::new();
        for (size, align) in [(1, 1), (24, 8), (3, 1), (64, 64), (5, 2), (100, 16)] {
            // SAFETY: a non-zero layout.
            let p = unsafe { A.alloc(layout(size, align)) };
            assert_eq!(p as usize % align, 0, "{size} aligned to {align}");
            assert!(A.owns(p));
            blocks.push((p as usize, size));
        }
        blocks.sort_unstable();
        for w in blocks.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?} overlap");
        }
    }

    #[test]
    fn freeing_the_latest_block_gives_it_back_and_an_earlier_one_does_not() {
        static A: Arena<4096> = Arena::new();
        let l = layout(32, 8);
        // SAFETY: a non-zero layout.
        let a = unsafe { A.alloc(l) };
        // SAFETY: a non-zero layout.
        let b = unsafe { A.alloc(l) };
        let top = A.used();
        // SAFETY: `a` is a live block of this allocator with this layout.
        unsafe { A.dealloc(a, l) };
        assert_eq!(A.used(), top, "an earlier block stays used");
        // SAFETY: `b` is a live block of this allocator with this layout.
        unsafe { A.dealloc(b, l) };
        assert_eq!(A.used(), top - 32);
        // SAFETY: a non-zero layout.
        assert_eq!(unsafe { A.alloc(l) }, b, "its space is handed out again");
    }

    #[test]
    fn growing_the_latest_block_keeps_it_in_place_and_others_move_with_their_bytes() {
        static A: Arena<4096> = Arena::new();
        let l = layout(8, 8);
        // SAFETY: a non-zero layout.
        let a = unsafe { A.alloc(l) };
        // SAFETY: `a` is a live block of 8 bytes.
        unsafe { a.copy_from(b"abcdefgh".as_ptr(), 8) };
        // SAFETY: `a` is a live block with layout `l`; 64 is non-zero.
        let grown = unsafe { A.realloc(a, l, 64) };
        assert_eq!(grown, a);
        // SAFETY: a non-zero layout.
        let b = unsafe { A.alloc(l) };
        // SAFETY: `grown` is a live block of 64 bytes; 128 is non-zero.
        let moved = unsafe { A.realloc(grown, layout(64, 8), 128) };
        assert_ne!(moved, grown);
        // SAFETY: `moved` is a live block whose first 8 bytes were copied.
        assert_eq!(unsafe { std::slice::from_raw_parts(moved, 8) }, b"abcdefgh");
        assert!(moved as usize > b as usize);
        // SAFETY: `moved` is a live block of 128 bytes; 16 is non-zero.
        let shrunk = unsafe { A.realloc(moved, layout(128, 8), 16) };
        assert_eq!(shrunk, moved);
        assert_eq!(A.used(), moved as usize - A.base() + 16);
    }

    #[test]
    fn past_its_bound_the_system_allocator_serves() {
        static A: Arena<256> = Arena::new();
        let big = layout(1024, 8);
        // SAFETY: a non-zero layout.
        let p = unsafe { A.alloc(big) };
        assert!(!p.is_null() && !A.owns(p));
        // SAFETY: `p` is a live block of 1024 bytes.
        unsafe { p.write_bytes(7, 1024) };
        let small = layout(200, 8);
        // SAFETY: a non-zero layout.
        let s = unsafe { A.alloc(small) };
        assert!(A.owns(s));
        // Growing past the bound moves the block to the system allocator.
        // SAFETY: `s` is a live block of 200 bytes.
        unsafe { s.write_bytes(9, 200) };
        // SAFETY: `s` is a live block with layout `small`; 512 is non-zero.
        let g = unsafe { A.realloc(s, small, 512) };
        assert!(!A.owns(g));
        // SAFETY: `g` is a live block whose first 200 bytes were copied.
        assert!(unsafe { std::slice::from_raw_parts(g, 200) }
            .iter()
            .all(|b| *b == 9));
        // SAFETY: both are live blocks of this allocator with these layouts.
        unsafe {
            A.dealloc(g, layout(512, 8));
            A.dealloc(p, big);
        }
    }

    #[test]
    fn threads_get_disjoint_blocks() {
        static A: Arena<{ 64 * 1024 }> = Arena::new();
        let blocks: Vec<(usize, usize)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    s.spawn(move || {
                        (0..100)
                            .map(|i| {
                                let size = 1 + (t * 7 + i) % 40;
                                // SAFETY: a non-zero layout.
                                let p = unsafe { A.alloc(layout(size, 8)) };
                                // SAFETY: `p` is a live block of `size` bytes.
                                unsafe { p.write_bytes(t as u8, size) };
                                (p as usize, size)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = blocks.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?} overlap");
        }
    }
}
