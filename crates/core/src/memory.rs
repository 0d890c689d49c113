//! Giving freed memory back to the system after a crowd of sockets has gone.
//!
//! glibc keeps freed heap memory for reuse, so after 2,000 or 20,000 sockets close, RSS stays at
//! the peak (the churn soak shows it). When the last socket closes and many have come and gone
//! since the last trim, `malloc_trim` returns the free pages. Only on glibc; elsewhere a no-op.

use std::sync::atomic::{AtomicU64, Ordering};

/// Connections that must have come and gone since the last trim before the next one.
const TRIM_AFTER: u64 = 1_000;

#[derive(Default)]
pub(crate) struct Trim {
    at_connections: AtomicU64,
}

impl Trim {
    /// The server has no socket left; `total` is the number of connections since start.
    pub(crate) fn on_idle(&self, total: u64) {
        let last = self.at_connections.load(Ordering::Relaxed);
        if total.saturating_sub(last) < TRIM_AFTER {
            return;
        }
        self.at_connections.store(total, Ordering::Relaxed);
        release_free_memory();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only walks glibc's own free lists; it is safe to call at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Bytes the process's allocator has handed out and not had back (glibc's `mallinfo2`: small
/// blocks in use plus mmapped ones, and the pages of [`crate::alloc`]'s aligned blocks); `None`
/// on other allocators. Beside RSS it tells memory held by the server from memory freed but
/// not yet returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    let m = malloc_info()?;
    Some((m.in_use + m.mmapped + crate::alloc::page_bytes()) as u64)
}

/// glibc's own counters (`mallinfo2`), over all its arenas.
#[derive(Debug, Clone, Copy)]
pub struct MallocInfo {
    /// Bytes of the arenas taken from the system (not mmapped blocks).
    pub arena: usize,
    /// Bytes of the arenas in blocks in use (headers included).
    pub in_use: usize,
    /// Bytes of the arenas free.
    pub free: usize,
    /// Bytes of blocks mmapped on their own.
    pub mmapped: usize,
}

/// `mallinfo2` is glibc 2.33+, while the published binaries are linked against an older glibc
/// (the baseline in docs/install.md) so that they load on Debian 11, Ubuntu 20.04, RHEL 8 and
/// Amazon Linux 2. A direct reference would make the loader refuse the addon there, so it is
/// looked up once at run time; on an older glibc this is `None` (`mallinfo`'s `int` fields wrap
/// at 2 GiB, so they would report wrong numbers, not just coarse ones).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn malloc_info() -> Option<MallocInfo> {
    use std::sync::OnceLock;

    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    type MallInfo2Fn = unsafe extern "C" fn() -> MallInfo2;

    static MALLINFO2: OnceLock<Option<MallInfo2Fn>> = OnceLock::new();
    let f = (*MALLINFO2.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only searches the loaded
        // objects; a non-null result for "mallinfo2" is glibc's function of that signature.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
        // SAFETY: `sym` is non-null here and is glibc's `mallinfo2`, whose signature is
        // `MallInfo2Fn`.
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, MallInfo2Fn>(sym) })
    }))?;
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { f() };
    Some(MallocInfo {
        arena: info.arena,
        in_use: info.uordblks,
        free: info.fordblks,
        mmapped: info.hblkhd,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn heap_in_use() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_enough_churn() {
        let t = Trim::default();
        t.on_idle(10);
        assert_eq!(t.at_connections.load(Ordering::Relaxed), 0);
        t.on_idle(1_500);
        assert_eq!(t.at_connections.load(Ordering::Relaxed), 1_500);
        t.on_idle(2_000);
        assert_eq!(t.at_connections.load(Ordering::Relaxed), 1_500);
    }

    /// The run-time lookup finds `mallinfo2` on a glibc that has it (this machine's, 2.36) and
    /// reports the live heap: at least a block this test holds.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_is_read_through_the_runtime_lookup() {
        let block = vec![1u8; 4 << 20];
        let bytes = heap_in_use().expect("mallinfo2 on glibc >= 2.33");
        assert!(bytes >= block.len() as u64, "{bytes}");
        drop(block);
    }
}
