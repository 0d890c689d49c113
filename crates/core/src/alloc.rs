//! The addon's allocator: glibc's `malloc` for everything, except cache-aligned blocks, which
//! come from pages of their own.
//!
//! Why: every socket's task and its I/O registration are tokio structures aligned to 128 bytes
//! (a cache line pair, against false sharing). glibc serves such a request with `memalign`: it
//! takes a larger chunk, cuts the aligned block out of it and frees the pieces before and
//! after, which stay in its bins as fragments that only small allocations of the right size
//! reuse. Counted over thousands of idle sockets that was about a fifth of what each socket
//! held (see `tests/idle_memory.rs`). Here such blocks are cut from 64 KB pages, one size class
//! per page, back to back: a block whose size is a multiple of its alignment wastes nothing.
//! A page whose blocks are all free is given back to the system (one per class is kept).
//!
//! Only on Linux; elsewhere this is the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// The allocator: `#[global_allocator] static A: Allocator = Allocator;` in the binary.
pub struct Allocator;

/// Blocks aligned above this come from the pages (`malloc` aligns to 16 by itself).
const MALLOC_ALIGN: usize = 16;

#[cfg(target_os = "linux")]
mod pages {
    use std::alloc::Layout;
    use std::cell::UnsafeCell;
    use std::ptr::null_mut;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A page's size and alignment: a block's page is its address with the low bits cleared.
    pub const PAGE: usize = 64 * 1024;
    /// Size classes are multiples of this, which is also the largest alignment served here.
    pub const STEP: usize = 128;
    /// Largest block served from pages; larger aligned blocks go to the system allocator.
    pub const MAX_BLOCK: usize = 4096;
    const CLASSES: usize = MAX_BLOCK / STEP;
    /// The page's first `STEP` bytes hold its header, so that blocks stay aligned.
    const FIRST_BLOCK: usize = STEP;

    /// Whether `layout` is served from pages.
    pub(super) fn serves(layout: Layout) -> bool {
        layout.align() > super::MALLOC_ALIGN && layout.align() <= STEP && layout.size() <= MAX_BLOCK
    }

    #[repr(C)]
    struct Page {
        /// Freed blocks of this page, linked through their first word.
        free: *mut Free,
        /// Blocks handed out and not freed.
        used: usize,
        /// Blocks cut so far (the rest of the page is untouched, so not resident).
        cut: usize,
        /// Blocks the page holds.
        capacity: usize,
        class: usize,
        /// Neighbours in the class's list of pages with room (when `listed`).
        prev: *mut Page,
        next: *mut Page,
        listed: bool,
    }

    struct Free {
        next: *mut Free,
    }

    /// One size class: its pages with room, under a spin lock (the allocator cannot use a lock
    /// that may allocate, and every critical section is a few pointer moves).
    struct Class {
        locked: AtomicBool,
        inner: UnsafeCell<ClassInner>,
    }

    struct ClassInner {
        /// Pages with at least one free or uncut block.
        with_room: *mut Page,
        /// Pages of this class with no block in use (kept: at most one).
        empty: usize,
    }

    // SAFETY: `inner` is only touched while `locked` is held (see `Class::with`).
    unsafe impl Sync for Class {}

    impl Class {
        const fn new() -> Class {
            Class {
                locked: AtomicBool::new(false),
                inner: UnsafeCell::new(ClassInner {
                    with_room: null_mut(),
                    empty: 0,
                }),
            }
        }

        fn with<R>(&self, f: impl FnOnce(&mut ClassInner) -> R) -> R {
            let mut spins = 0u32;
            while self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            // SAFETY: the lock is held until the store below, so no other reference exists.
            let r = f(unsafe { &mut *self.inner.get() });
            self.locked.store(false, Ordering::Release);
            r
        }
    }

    static CLASS: [Class; CLASSES] = [const { Class::new() }; CLASSES];
    /// Bytes of pages mapped now.
    static MAPPED: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn mapped_bytes() -> usize {
        MAPPED.load(Ordering::Relaxed)
    }

    fn class_of(size: usize) -> usize {
        size.max(1).div_ceil(STEP) - 1
    }

    /// A block for `layout` (which [`serves`] accepts); null when the system has no memory.
    pub(super) fn alloc(layout: Layout) -> *mut u8 {
        let class = class_of(layout.size());
        CLASS[class].with(|c| {
            if c.with_room.is_null() {
                let page = map_page(class);
                if page.is_null() {
                    return null_mut();
                }
                // A new page is empty until the block below is taken from it.
                c.empty += 1;
                // SAFETY: `page` is a fresh page with its header written; the lock is held.
                unsafe { push(c, page) };
            }
            let page = c.with_room;
            // SAFETY: pages in the list are mapped and their headers are only touched under
            // their class's lock, which is held.
            unsafe {
                let p = &mut *page;
                let block = if !p.free.is_null() {
                    let b = p.free;
                    p.free = (*b).next;
                    b.cast::<u8>()
                } else {
                    let b = page.cast::<u8>().add(FIRST_BLOCK + p.cut * (class + 1) * STEP);
                    p.cut += 1;
                    b
                };
                if p.used == 0 {
                    c.empty -= 1;
                }
                p.used += 1;
                if p.used == p.capacity {
                    unlink(c, page);
                }
                block
            }
        })
    }

    /// Gives back a block from [`alloc`].
    ///
    /// # Safety
    /// `block` came from [`alloc`] and is not used after this.
    pub(super) unsafe fn dealloc(block: *mut u8) {
        let page = (block as usize & !(PAGE - 1)) as *mut Page;
        // SAFETY: a block lies in its page, whose header was written when it was mapped and
        // whose `class` never changes.
        let class = unsafe { (*page).class };
        CLASS[class].with(|c| {
            // SAFETY: the class's lock is held; the page is mapped (it has a block in use).
            unsafe {
                let p = &mut *page;
                let b = block.cast::<Free>();
                (*b).next = p.free;
                p.free = b;
                p.used -= 1;
                if !p.listed {
                    push(c, page);
                }
                if p.used == 0 {
                    c.empty += 1;
                    if c.empty > 1 {
                        // One empty page per class is kept for the next burst; this one goes.
                        c.empty -= 1;
                        unlink(c, page);
                        unmap_page(page);
                    }
                }
            }
        })
    }

    /// # Safety
    /// The class's lock is held and `page` is not in a list.
    unsafe fn push(c: &mut ClassInner, page: *mut Page) {
        // SAFETY: as the caller promises; list pages are mapped.
        unsafe {
            (*page).prev = null_mut();
            (*page).next = c.with_room;
            if !c.with_room.is_null() {
                (*c.with_room).prev = page;
            }
            (*page).listed = true;
        }
        c.with_room = page;
    }

    /// # Safety
    /// The class's lock is held and `page` is in its list.
    unsafe fn unlink(c: &mut ClassInner, page: *mut Page) {
        // SAFETY: as the caller promises; list pages are mapped.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                c.with_room = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*page).listed = false;
        }
    }

    /// Maps a page aligned to its size (twice the size, then the ends unmapped) and writes its
    /// header; null when the system refuses.
    fn map_page(class: usize) -> *mut Page {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let raw = unsafe {
            libc::mmap(
                null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return null_mut();
        }
        let start = raw as usize;
        let aligned = (start + PAGE - 1) & !(PAGE - 1);
        // SAFETY: both ranges lie in the mapping just made and are not used; `munmap` of a
        // zero length is skipped.
        unsafe {
            if aligned > start {
                libc::munmap(raw, aligned - start);
            }
            let end = start + 2 * PAGE;
            if end > aligned + PAGE {
                libc::munmap((aligned + PAGE) as *mut libc::c_void, end - aligned - PAGE);
            }
        }
        MAPPED.fetch_add(PAGE, Ordering::Relaxed);
        let page = aligned as *mut Page;
        // SAFETY: the page is mapped, writable and ours; the header fits in `FIRST_BLOCK`.
        unsafe {
            page.write(Page {
                free: null_mut(),
                used: 0,
                cut: 0,
                capacity: (PAGE - FIRST_BLOCK) / ((class + 1) * STEP),
                class,
                prev: null_mut(),
                next: null_mut(),
                listed: false,
            });
        }
        page
    }

    /// # Safety
    /// No block of `page` is in use and it is in no list.
    unsafe fn unmap_page(page: *mut Page) {
        // SAFETY: as the caller promises, nothing refers to the page any more.
        unsafe { libc::munmap(page.cast(), PAGE) };
        MAPPED.fetch_sub(PAGE, Ordering::Relaxed);
    }
}

/// The pages' size, the step between their size classes, and the largest block they serve.
#[cfg(target_os = "linux")]
pub use pages::{MAX_BLOCK, PAGE, STEP};

/// Bytes of the pages aligned blocks are cut from (mapped now, used or not); 0 where there
/// are none.
pub fn page_bytes() -> usize {
    #[cfg(target_os = "linux")]
    return pages::mapped_bytes();
    #[cfg(not(target_os = "linux"))]
    0
}

// SAFETY: blocks from pages are aligned (a page is aligned to `PAGE`, its blocks start at
// multiples of `STEP` from it, and `STEP` is at least the alignment asked), at least as large
// as asked, and never handed out twice; the rest is the system allocator's.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if pages::serves(layout) {
            return pages::alloc(layout);
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if pages::serves(layout) {
            // SAFETY: the same layout was served from pages by `alloc`.
            return unsafe { pages::dealloc(ptr) };
        }
        // SAFETY: the system allocator gave `ptr` for this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if pages::serves(layout) {
            let p = pages::alloc(layout);
            if !p.is_null() {
                // SAFETY: `p` is a block of at least `layout.size()` bytes, ours.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            return p;
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the caller promises a valid size for this alignment.
            let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            if pages::serves(layout) || pages::serves(new) {
                // SAFETY: `new` is non-zero-sized and valid (the caller's promise).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks are at least the smaller size, and distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                return p;
            }
        }
        // SAFETY: neither layout is served from pages: the system allocator's own realloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn realloc_moves_between_pages_and_malloc() {
        let small = Layout::from_size_align(100, 64).unwrap();
        // SAFETY: non-zero sizes; each block freed once with its layout.
        unsafe {
            let p = Allocator.alloc(small);
            p.write_bytes(7, 100);
            let q = Allocator.realloc(p, small, 10_000);
            assert_eq!(q as usize % 64, 0);
            assert!(std::slice::from_raw_parts(q, 100).iter().all(|b| *b == 7));
            let big = Layout::from_size_align(10_000, 64).unwrap();
            let r = Allocator.realloc(q, big, 200);
            assert!(std::slice::from_raw_parts(r, 100).iter().all(|b| *b == 7));
            Allocator.dealloc(r, Layout::from_size_align(200, 64).unwrap());
        }
    }
}
