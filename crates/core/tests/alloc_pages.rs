//! The addon's allocator's pages, counted: blocks of every class are aligned, never shared,
//! packed, and their pages given back. A test binary of its own: the pages are global, and in
//! the library's tests (whose allocator this is) every other test's tasks take blocks from them
//! meanwhile, which made the counts race.
#![cfg(target_os = "linux")]

use std::alloc::{GlobalAlloc, Layout};

use payload_realtime_core::alloc::{page_bytes, Allocator, MAX_BLOCK, PAGE, STEP};

/// The tests below count pages and look at neighbours: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Blocks of every class and alignment served here, from several threads at once, filled
/// and checked: aligned, never shared, and the pages given back once all are freed.
#[test]
fn aligned_blocks_are_aligned_distinct_and_given_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let before = page_bytes();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut held: Vec<(*mut u8, Layout, u8)> = Vec::new();
                let mut seed = 0x9e37_79b9_u32.wrapping_mul(t + 1);
                for i in 0..20_000u32 {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let align = [32, 64, 128][(seed % 3) as usize];
                    let size = 1 + (seed as usize >> 4) % MAX_BLOCK;
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: a non-zero size.
                    let p = unsafe { Allocator.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{layout:?}");
                    let fill = (i % 251) as u8;
                    // SAFETY: the block is ours and `size` long.
                    unsafe { p.write_bytes(fill, size) };
                    held.push((p, layout, fill));
                    if !seed.is_multiple_of(3) {
                        let k = (seed as usize >> 8) % held.len();
                        let (p, layout, fill) = held.swap_remove(k);
                        // SAFETY: still ours; checked, then freed once.
                        unsafe {
                            assert!(std::slice::from_raw_parts(p, layout.size()).iter().all(|b| *b == fill));
                            Allocator.dealloc(p, layout);
                        }
                    }
                }
                for (p, layout, fill) in held {
                    // SAFETY: as above.
                    unsafe {
                        assert!(std::slice::from_raw_parts(p, layout.size()).iter().all(|b| *b == fill));
                        Allocator.dealloc(p, layout);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each class keeps at most one empty page.
    assert!(page_bytes() <= before + (MAX_BLOCK / STEP) * PAGE);
}

#[test]
fn blocks_of_a_multiple_of_their_alignment_are_packed() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let layout = Layout::from_size_align(384, 128).unwrap();
    // SAFETY: a non-zero size; freed below.
    let blocks: Vec<*mut u8> = (0..1000).map(|_| unsafe { Allocator.alloc(layout) }).collect();
    let mut pages: Vec<usize> = blocks.iter().map(|p| *p as usize & !(PAGE - 1)).collect();
    pages.sort();
    pages.dedup();
    // 170 blocks of 384 bytes fit in a page (its first step is its header): 6 pages.
    let per_page = (PAGE - STEP) / 384;
    assert_eq!(pages.len(), 1000usize.div_ceil(per_page), "{} pages", pages.len());
    for p in blocks {
        // SAFETY: from `alloc` above with this layout.
        unsafe { Allocator.dealloc(p, layout) };
    }
}
