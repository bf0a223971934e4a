//! Shared memory regions (sealed memfds, or POSIX shm names, mapped `MAP_SHARED`) and futexes on them.
//!
//! # What another process can do to a region
//! A region is memory that other processes write too, so nothing in it is trusted, and nothing a
//! peer does to it may crash us:
//! - *Shrinking.* Accessing a mapping past the end of its file raises `SIGBUS`. Anonymous regions are
//!   memfds created sealable and sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) as soon as they
//!   have their size, so nobody, not even their creator, can change it; a received memfd that is not
//!   sealed against shrinking is refused before it is mapped. A name in `/dev/shm` cannot be sealed:
//!   mappings of named regions are guarded instead (`sigbus.rs`), and their copies report an error
//!   once the file was truncated under them.
//! - *Passing off one kind of region as another.* A received descriptor must be a memfd of the
//!   expected kind (its memfd name, as `/proc/self/fd` shows it: `multiprocess-value`,
//!   `multiprocess-lock`, ...), or, where the type allows it, a named region. So memory that safe code
//!   anywhere reaches through one type (a `SharedMemory`'s bytes, an `Event`'s word) cannot be
//!   received as another type that hands out references into it (a `Value`'s guard).
//! - *Writing at any moment.* Copies in and out of a region ([`Region::read_at`], [`Region::write_at`])
//!   are made of relaxed byte- or word-wise atomic accesses (inline assembly on x86_64), so a copy racing
//!   another process's writes may mix old and new bytes but is never undefined behaviour.
//!
//! # Safety
//! A [`Region`] owns one `mmap` of `len` bytes that stays mapped until the `Region` is dropped; every
//! pointer handed out points inside it and lives no longer than a borrow of the `Region`. Other
//! processes may write the same pages at any time, so the region is exposed to safe code only as
//! atomics (whose every access is atomic in all processes, by the crate's protocols) or through the
//! atomic copies above. Plain references to its bytes are handed out only by `unsafe fn`s whose
//! callers promise exclusivity, and by the guards of `Value` and `Array` (at the end of this file),
//! whose exclusivity is the lock word inside the same region; a process that writes a value's bytes
//! without taking that lock (which takes unsafe code or a foreign program) breaks that promise, as
//! any process writing a file that another has mapped breaks `memmap2`'s.

#![allow(unsafe_code)]

use super::sigbus;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// A mapping of a shared-memory descriptor.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    /// Device and inode of the memory object: two regions with the same id are the same memory.
    id: (u64, u64),
    /// For a named region, which another process can shrink: its slot in the SIGBUS guard.
    guard: Option<sigbus::Guard>,
}

// SAFETY: the mapping is plain memory shared with other processes anyway; all access goes through
// atomics or atomic copies (see the module contract), so sharing across threads adds nothing.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// What a descriptor is, as `/proc/self/fd` names it.
enum Identity {
    /// A memfd with this name.
    Memfd(String),
    /// A file in `/dev/shm` (a named region).
    Named,
    Other(String),
}

fn identify(fd: BorrowedFd<'_>) -> io::Result<Identity> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot identify a received shared memory descriptor (is /proc mounted?): {e}"),
        )
    })?;
    let link = link.to_string_lossy();
    Ok(if let Some(rest) = link.strip_prefix("/memfd:") {
        Identity::Memfd(rest.strip_suffix(" (deleted)").unwrap_or(rest).to_string())
    } else if link.starts_with("/dev/shm/") {
        Identity::Named
    } else {
        Identity::Other(link.into_owned())
    })
}

/// Checks that a received descriptor is a memfd of kind `kind` (see the module notes).
pub(crate) fn expect_memfd(fd: BorrowedFd<'_>, kind: &str) -> io::Result<()> {
    match identify(fd)? {
        Identity::Memfd(name) if name == kind => Ok(()),
        other => Err(mismatch(kind, other)),
    }
}

fn mismatch(kind: &str, found: Identity) -> io::Error {
    let found = match found {
        Identity::Memfd(name) => format!("the shared memory of a {name}"),
        Identity::Named => "a named shared memory region".to_string(),
        Identity::Other(what) => what,
    };
    invalid(format!(
        "expected the shared memory of a {kind}, got {found}"
    ))
}

impl Region {
    /// A new anonymous region of `len` bytes (zeroed), backed by a memfd named `kind` that vanishes
    /// with its last descriptor and mapping, sealed so that nobody can change its size.
    pub(crate) fn anonymous(kind: &str, len: usize) -> io::Result<Region> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(kind, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(super::fd::creating)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Region::map(fd, len, false)
    }

    /// Creates (`create`) or opens a named POSIX shared-memory object (`/dev/shm/<name>`).
    /// With `create`, fails with `AlreadyExists` if the name is taken, and sets the size.
    pub(crate) fn named(name: &str, create: bool, len: usize) -> io::Result<Region> {
        use rustix::shm::{Mode, OFlags};
        let flags = if create {
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL
        } else {
            OFlags::RDWR
        };
        // rustix opens shared memory close-on-exec.
        let fd = rustix::shm::open(shm_name(name)?.as_c_str(), flags, Mode::RUSR | Mode::WUSR)
            .map_err(super::fd::creating)?;
        let len = if create {
            if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
                let _ = unlink_named(name);
                return Err(e.into());
            }
            len
        } else {
            file_len(fd.as_fd())?
        };
        Region::map(fd, len, true)
    }

    /// Maps a received descriptor (its whole size), which must be a sealed memfd of kind `kind`, or,
    /// with `allow_named`, a named region (whose mapping is then guarded against shrinking).
    pub(crate) fn receive(fd: OwnedFd, kind: &str, allow_named: bool) -> io::Result<Region> {
        let guarded = match identify(fd.as_fd())? {
            Identity::Named if allow_named => true,
            Identity::Memfd(name) if name == kind => {
                use rustix::fs::SealFlags;
                let seals = rustix::fs::fcntl_get_seals(&fd)?;
                if !seals.contains(SealFlags::SHRINK) {
                    return Err(invalid(format!(
                        "the shared memory of a received {kind} is not sealed against shrinking \
                         (its sender could crash us with SIGBUS); refusing to map it"
                    )));
                }
                false
            }
            other => return Err(mismatch(kind, other)),
        };
        let len = file_len(fd.as_fd())?;
        Region::map(fd, len, guarded)
    }

    fn map(fd: OwnedFd, len: usize, guarded: bool) -> io::Result<Region> {
        let id = object_id(fd.as_fd())?;
        if len == 0 {
            return Ok(Region {
                ptr: NonNull::dangling(),
                len: 0,
                fd,
                id,
                guard: None,
            });
        }
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh shared mapping at an address the kernel chooses (so it replaces nothing);
        // `fd` is a valid shared-memory object of at least `len` bytes (set or measured above).
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut region = Region {
            ptr,
            len,
            fd,
            id,
            guard: None,
        };
        if guarded {
            // On failure `region` drops and unmaps.
            region.guard = Some(sigbus::Guard::register(ptr.as_ptr() as usize, len)?);
        }
        Ok(region)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `self` and `other` map the same memory (clones, or two receptions of one region).
    pub(crate) fn same_memory(&self, other: &Region) -> bool {
        self.id == other.id
    }

    /// The device and inode of the memory object.
    pub(crate) fn id(&self) -> (u64, u64) {
        self.id
    }

    /// `Err` once another process truncated the named file under this mapping.
    fn intact(&self) -> io::Result<()> {
        match &self.guard {
            Some(g) if g.truncated() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "another process truncated this shared memory region under us",
            )),
            _ => Ok(()),
        }
    }

    /// The 32-bit atomic at byte `offset` (which must be 4-aligned and in bounds).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.atomic::<AtomicU32>(offset)
    }

    /// Copies `dst.len()` bytes from byte `offset`. Concurrent writers in other processes may make the
    /// copy a mix of old and new bytes; it is never undefined behaviour (see the module notes).
    pub(crate) fn read_at(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        check_range(offset, dst.len(), self.len)?;
        self.intact()?;
        // SAFETY: the range is inside the mapping (checked) and `dst` is a distinct, writable buffer.
        unsafe { copy_shared(dst.as_mut_ptr(), self.ptr.as_ptr().add(offset), dst.len()) };
        self.intact()
    }

    /// Appends `n` bytes from byte `offset` to `buf` (same caveat as [`read_at`](Self::read_at)),
    /// without first filling them with zeros as `read_at` into a resized buffer would.
    pub(crate) fn read_append(&self, offset: usize, n: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        check_range(offset, n, self.len)?;
        self.intact()?;
        buf.reserve(n);
        let spare = buf.spare_capacity_mut();
        // SAFETY: the range is inside the mapping (checked), and the spare capacity, reserved above,
        // holds at least `n` writable bytes that nothing else refers to; the copy initialises them.
        unsafe {
            copy_shared(spare.as_mut_ptr().cast(), self.ptr.as_ptr().add(offset), n);
            buf.set_len(buf.len() + n);
        }
        self.intact()
    }

    /// Copies `src` to byte `offset` (same caveat as [`read_at`](Self::read_at)).
    pub(crate) fn write_at(&self, offset: usize, src: &[u8]) -> io::Result<()> {
        check_range(offset, src.len(), self.len)?;
        self.intact()?;
        // SAFETY: the range is inside the mapping (checked); the mapping is writable (PROT_WRITE).
        unsafe { copy_shared(self.ptr.as_ptr().add(offset), src.as_ptr(), src.len()) };
        self.intact()
    }
}

/// Copies `n` bytes between shared memory and a private buffer (either direction) as relaxed
/// byte-wise atomic accesses (RFC 3301's atomic memcpy): inline assembly that the compiler cannot see
/// into and that reads and writes each byte exactly once, with plain x86 loads and stores (which never
/// tear a byte). One cache line per step, through the widest registers the CPU has (AVX-512, AVX or
/// SSE2, as glibc's `memcpy` chooses), then `rep movsb` for the last few bytes. (`rep movsb` for
/// the whole copy, or 16-byte steps, ran 4 KiB queue items at two thirds of `memcpy`'s speed when the
/// source lines sat in another CPU's cache.) Elsewhere: relaxed `AtomicU64`/`AtomicU8` accesses.
///
/// # Safety
/// `src..src+n` must be readable and `dst..dst+n` writable, and the two must not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn copy_shared(dst: *mut u8, src: *const u8, n: usize) {
    let lines = n / 64;
    let done = lines * 64;
    // SAFETY: the caller guarantees both ranges: the lines are their first `lines * 64` bytes (each
    // variant runs only where the CPU has its instructions), the rest their last `n - done` bytes,
    // which `rep movsb` with the direction flag clear (the ABI guarantees it) copies forward.
    unsafe {
        if lines > 0 {
            if std::arch::is_x86_feature_detected!("avx512f") {
                copy_lines_avx512(dst, src, lines);
            } else if std::arch::is_x86_feature_detected!("avx") {
                copy_lines_avx(dst, src, lines);
            } else {
                copy_lines_sse2(dst, src, lines);
            }
        }
        std::arch::asm!(
            "rep movsb",
            inout("rcx") n - done => _,
            inout("rdi") dst.add(done) => _,
            inout("rsi") src.add(done) => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `lines` cache lines from `src` to `dst`, one 64-byte register per line.
///
/// # Safety
/// As [`copy_shared`] for `lines * 64` bytes (`lines > 0`), on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_lines_avx512(dst: *mut u8, src: *const u8, lines: usize) {
    // SAFETY: see the function's contract; the register is declared clobbered, and vzeroupper
    // leaves the upper state clean for SSE code that follows.
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovdqu64 zmm0, [{s}]",
            "vmovdqu64 [{d}], zmm0",
            "add {s}, 64",
            "add {d}, 64",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = inout(reg) lines => _,
            out("zmm0") _,
            options(nostack),
        );
    }
}

/// `lines` cache lines from `src` to `dst`, two 32-byte registers per line.
///
/// # Safety
/// As [`copy_shared`] for `lines * 64` bytes (`lines > 0`), on a CPU with AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn copy_lines_avx(dst: *mut u8, src: *const u8, lines: usize) {
    // SAFETY: see the function's contract and `copy_lines_avx512`.
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovdqu ymm0, [{s}]",
            "vmovdqu ymm1, [{s} + 32]",
            "vmovdqu [{d}], ymm0",
            "vmovdqu [{d} + 32], ymm1",
            "add {s}, 64",
            "add {d}, 64",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = inout(reg) lines => _,
            out("ymm0") _,
            out("ymm1") _,
            options(nostack),
        );
    }
}

/// `lines` cache lines from `src` to `dst`, four 16-byte registers per line (SSE2: every x86_64).
///
/// # Safety
/// As [`copy_shared`] for `lines * 64` bytes (`lines > 0`).
#[cfg(target_arch = "x86_64")]
unsafe fn copy_lines_sse2(dst: *mut u8, src: *const u8, lines: usize) {
    // SAFETY: see the function's contract; the four registers are declared clobbered.
    unsafe {
        std::arch::asm!(
            "2:",
            "movdqu xmm0, [{s}]",
            "movdqu xmm1, [{s} + 16]",
            "movdqu xmm2, [{s} + 32]",
            "movdqu xmm3, [{s} + 48]",
            "movdqu [{d}], xmm0",
            "movdqu [{d} + 16], xmm1",
            "movdqu [{d} + 32], xmm2",
            "movdqu [{d} + 48], xmm3",
            "add {s}, 64",
            "add {d}, 64",
            "dec {n}",
            "jnz 2b",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = inout(reg) lines => _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            options(nostack),
        );
    }
}

/// See the x86_64 version. Either side may be the shared one, so both are accessed atomically.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_shared(dst: *mut u8, src: *const u8, n: usize) {
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
    let mut i = 0;
    // SAFETY (whole block): the caller guarantees both ranges; every access below is inside them, and
    // the 8-byte views are taken only at addresses that are 8-aligned on both sides.
    unsafe {
        if (src as usize ^ dst as usize) % 8 == 0 {
            while i < n && (src as usize + i) % 8 != 0 {
                let b = (*src.add(i).cast::<AtomicU8>()).load(Relaxed);
                (*dst.add(i).cast::<AtomicU8>()).store(b, Relaxed);
                i += 1;
            }
            while i + 8 <= n {
                let w = (*src.add(i).cast::<AtomicU64>()).load(Relaxed);
                (*dst.add(i).cast::<AtomicU64>()).store(w, Relaxed);
                i += 8;
            }
        }
        while i < n {
            let b = (*src.add(i).cast::<AtomicU8>()).load(Relaxed);
            (*dst.add(i).cast::<AtomicU8>()).store(b, Relaxed);
            i += 1;
        }
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Release the guard's slot before the address range can be reused by another mapping.
        self.guard = None;
        if self.len > 0 {
            // SAFETY: this exact mapping was created in `map` and nothing borrowed from it outlives
            // `self`. An error here cannot be reported from `drop` and leaves only address space behind.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// A new, empty anonymous memory file (`memfd_create`) that is never mapped (it may grow), gone with
/// its last descriptor.
pub(crate) fn memfd(name: &str) -> io::Result<OwnedFd> {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(super::fd::creating)
}

/// Gives the memory behind bytes `offset..offset + len` of a memory file back to the system; they read
/// as zeros afterwards and the file's size is unchanged (`fallocate(PUNCH_HOLE | KEEP_SIZE)`).
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    Ok(rustix::fs::fallocate(fd, mode, offset, len)?)
}

fn check_range(offset: usize, n: usize, len: usize) -> io::Result<()> {
    match offset.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}..{offset}+{n} is outside a region of {len} bytes"),
        )),
    }
}

fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let size = rustix::fs::fstat(fd)?.st_size;
    usize::try_from(size).map_err(|_| invalid("negative size"))
}

fn shm_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name.len() > 250 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a shared memory name is 1 to 250 bytes without '/'",
        ));
    }
    CString::new(format!("/{name}"))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Whether `/dev/shm/<name>` is the very object behind `fd` (not another one created under the same
/// name since). The answer can be stale by the time it is used, if a third process replaces the
/// name in between; callers accept that window.
pub(crate) fn name_refers_to(name: &str, id: (u64, u64)) -> bool {
    rustix::fs::stat(format!("/dev/shm/{name}").as_str())
        .is_ok_and(|named| (named.st_dev, named.st_ino) == id)
}

/// The device and inode of the object behind `fd` (see [`Region::id`]).
pub(crate) fn object_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Removes a named shared-memory object (mappings stay valid until unmapped).
pub(crate) fn unlink_named(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(shm_name(name)?.as_c_str())?)
}

/// `FUTEX_WAIT` (shared, not `FUTEX_PRIVATE_FLAG`: waiters live in other processes) while `*word ==
/// expected`, for at most `timeout`. Returns on wake-up, value change, timeout or signal alike; callers
/// re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    // A timeout too long for a timespec is no timeout.
    let ts = timeout.and_then(|d| futex::Timespec::try_from(d).ok());
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// `FUTEX_WAKE` (shared) of up to `n` waiters.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32));
}

/// Whether process `pid` is alive: it exists and is not a zombie (a killed lock holder stays a
/// zombie until its parent reaps it, which may be the very process waiting for the lock).
pub(crate) fn process_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses.
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => true, // no /proc: trust kill()
    }
}

// The unsafe accessors of the public `SharedMemory` live here, beside the contract they rely on.
impl crate::shared::SharedMemory {
    /// The whole region as bytes, without copying.
    ///
    /// # Safety
    /// While the slice lives, no process (including this one) may write the region.
    ///
    /// # Examples
    /// ```
    /// let shm = multiprocess::SharedMemory::new(4)?;
    /// shm.write(0, b"abcd")?;
    /// // SAFETY: no process writes `shm` while `bytes` lives.
    /// let bytes = unsafe { shm.as_slice() };
    /// assert_eq!(bytes, b"abcd");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub unsafe fn as_slice(&self) -> &[u8] {
        let r = &self.region;
        // SAFETY: in bounds by construction of the region; the caller guarantees the absence of
        // writers for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(r.ptr.as_ptr(), r.len) }
    }

    /// The whole region as mutable bytes, without copying.
    ///
    /// # Safety
    /// While the slice lives, no other process or thread may read or write the region.
    ///
    /// # Examples
    /// ```
    /// let shm = multiprocess::SharedMemory::new(4)?;
    /// // SAFETY: nothing else uses `shm` while `bytes` lives.
    /// unsafe { shm.as_mut_slice() }.copy_from_slice(b"wxyz");
    /// let mut out = [0; 4];
    /// shm.read(0, &mut out)?;
    /// assert_eq!(&out, b"wxyz");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        let r = &self.region;
        // SAFETY: in bounds by construction of the region; the caller guarantees exclusive access for
        // the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), r.len) }
    }
}

/// Atomic integer types that may live in a region (same size and alignment as their integer).
pub(crate) trait AtomicCell: Sized + sealed::Sealed {}

mod sealed {
    pub(crate) trait Sealed {}
}

macro_rules! atomic_cell {
    ($($a:ty),*) => {$( impl sealed::Sealed for $a {} impl AtomicCell for $a {} )*};
}
atomic_cell!(
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicIsize,
    std::sync::atomic::AtomicUsize
);

impl Region {
    /// The atomic `A` at byte `offset` (which must be aligned for `A` and in bounds).
    pub(crate) fn atomic<A: AtomicCell>(&self, offset: usize) -> &A {
        assert!(
            offset.is_multiple_of(std::mem::align_of::<A>())
                && offset + std::mem::size_of::<A>() <= self.len,
            "atomic outside the region"
        );
        // SAFETY: in bounds and aligned (checked; mappings are page-aligned), lives as long as `&self`,
        // and by the crate's protocol this word is only accessed atomically in every process.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<A>() }
    }

    /// `len` elements of type `T` from byte `offset`, as a raw pointer, checked to fit and be aligned.
    fn elements<T>(&self, offset: usize, len: usize) -> *mut T {
        if std::mem::size_of::<T>() == 0 || len == 0 {
            return NonNull::<T>::dangling().as_ptr();
        }
        let end = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .expect("checked at construction");
        assert!(end <= self.len, "elements outside the region");
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>()) && std::mem::align_of::<T>() <= 4096,
            "misaligned elements"
        );
        // SAFETY: `offset` is inside the mapping (checked above).
        unsafe { self.ptr.as_ptr().add(offset).cast::<T>() }
    }
}

// The guards of `Value` and `Array` dereference into the region. A guard exists only while this
// process holds the lock word at offset 0 of *that same region* (the guard holds its `LockGuard`),
// and the lock word is part of the memory, not of a handle: every handle on this memory, in any
// process, is a `Value` or an `Array` (a received descriptor of that kind is checked to be a
// `multiprocess-value` or `multiprocess-array` memfd, which only their constructors create), and
// every accessor of their elements (the guards, and `get`/`set`/the copies) takes that lock first.
// So a guard's reference is exclusive for its lifetime; a writer that bypasses the lock needs unsafe
// code or a foreign program (see the module contract). `T: Pod` makes every bit pattern another
// process may have written a valid `T`.
impl<T: bytemuck::Pod> std::ops::Deref for crate::shared::ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        let p = self.region().elements::<T>(self.offset(), 1);
        // SAFETY: `p` points at an in-bounds, aligned `T` (checked by `elements`); exclusive under the
        // lock this guard holds (see above); any bit pattern is a valid `T` (`Pod`).
        unsafe { &*p }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for crate::shared::ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        let p = self.region().elements::<T>(self.offset(), 1);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *p }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for crate::shared::ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let len = self.len();
        let p = self.region().elements::<T>(self.offset(), len);
        // SAFETY: `len` elements fit, aligned (checked by `elements`); exclusive under the lock this
        // guard holds; any bit pattern is a valid `T` (`Pod`).
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for crate::shared::ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len();
        let p = self.region().elements::<T>(self.offset(), len);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}
