//! Shared memory regions (memfd or POSIX shm, mapped `MAP_SHARED`) and futexes on them.
//!
//! # Safety
//! A [`Region`] owns one `mmap` of `len` bytes that stays mapped until the `Region` is dropped; every
//! pointer handed out points inside it and lives no longer than a borrow of the `Region`. Other
//! processes may write the same pages at any time, so the region is only ever exposed to safe code
//! as atomics (whose every access is atomic in all processes, by the crate's protocols) or through
//! copies made here with the explicit caveat that racing writers may tear what is copied. Plain
//! references to its bytes are handed out only by `unsafe fn`s whose callers promise exclusivity.

#![allow(unsafe_code)]

use super::fd::cvt;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// A mapping of a shared-memory descriptor.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory shared with other processes anyway; all access goes through
// atomics or explicitly racy copies (see the module contract), so sharing across threads adds nothing.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A new anonymous region of `len` bytes (zeroed), backed by a memfd that vanishes with its last
    /// descriptor and mapping.
    pub(crate) fn anonymous(name: &str, len: usize) -> io::Result<Region> {
        let fd = memfd(name)?;
        set_len(fd.as_fd(), len)?;
        Region::map(fd, len)
    }

    /// Creates (`create`) or opens a named POSIX shared-memory object (`/dev/shm/<name>`).
    /// With `create`, fails with `AlreadyExists` if the name is taken, and sets the size.
    pub(crate) fn named(name: &str, create: bool, len: usize) -> io::Result<Region> {
        let cname = shm_name(name)?;
        let flags = libc::O_RDWR
            | libc::O_CLOEXEC
            | if create {
                libc::O_CREAT | libc::O_EXCL
            } else {
                0
            };
        // SAFETY: `cname` is a valid C string.
        let fd = cvt(unsafe { libc::shm_open(cname.as_ptr(), flags, 0o600) })?;
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = if create {
            if let Err(e) = set_len(fd.as_fd(), len) {
                let _ = unlink_named(name);
                return Err(e);
            }
            len
        } else {
            file_len(fd.as_fd())?
        };
        Region::map(fd, len)
    }

    /// Maps a received descriptor (its whole size).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Region> {
        let len = file_len(fd.as_fd())?;
        Region::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Region> {
        if len == 0 {
            return Ok(Region {
                ptr: NonNull::dangling(),
                len: 0,
                fd,
            });
        }
        // SAFETY: a fresh shared mapping chosen by the kernel; `fd` is a valid shared-memory object of
        // at least `len` bytes (set or measured above).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { ptr, len, fd })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 32-bit atomic at byte `offset` (which must be 4-aligned and in bounds).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "atomic outside the region"
        );
        // SAFETY: the address is inside the mapping (checked), 4-aligned (mappings are page-aligned and
        // the offset is checked), lives as long as `&self`, and by the crate's protocols every process
        // touches this word only atomically.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Copies `dst.len()` bytes from byte `offset`. Concurrent writers in other processes may make the
    /// copy a mix of old and new bytes (never undefined behaviour for the caller's plain bytes).
    pub(crate) fn read_at(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        check_range(offset, dst.len(), self.len)?;
        // SAFETY: the range is inside the mapping (checked) and `dst` is a distinct, writable buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Copies `src` to byte `offset` (same caveat as [`read_at`](Self::read_at)).
    pub(crate) fn write_at(&self, offset: usize, src: &[u8]) -> io::Result<()> {
        check_range(offset, src.len(), self.len)?;
        // SAFETY: the range is inside the mapping (checked); the mapping is writable (PROT_WRITE).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// The whole region as bytes.
    ///
    /// # Safety
    /// For the lifetime of the slice, no process may write the region.
    pub(crate) unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: in bounds by construction; the caller guarantees the absence of writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole region as mutable bytes.
    ///
    /// # Safety
    /// For the lifetime of the slice, no other process or thread may read or write the region.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: in bounds by construction; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: this exact mapping was created in `map` and nothing borrowed from it outlives
            // `self`. An error here cannot be reported from `drop` and leaves only address space behind.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// A new, empty anonymous memory file (`memfd_create`): gone with its last descriptor.
pub(crate) fn memfd(name: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: `cname` is a valid C string; the flags are plain integers.
    let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the memory behind bytes `offset..offset + len` of a memory file back to the system; they read
/// as zeros afterwards and the file's size is unchanged (`fallocate(PUNCH_HOLE | KEEP_SIZE)`).
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: plain syscall on a valid descriptor; it touches no memory of ours.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    })
    .map(drop)
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

fn set_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success; we read it only then.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    let size = unsafe { st.assume_init() }.st_size;
    usize::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))
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

/// Removes a named shared-memory object (mappings stay valid until unmapped).
pub(crate) fn unlink_named(name: &str) -> io::Result<()> {
    let cname = shm_name(name)?;
    // SAFETY: `cname` is a valid C string.
    cvt(unsafe { libc::shm_unlink(cname.as_ptr()) }).map(drop)
}

/// `FUTEX_WAIT` (shared, not `FUTEX_PRIVATE_FLAG`: waiters live in other processes) while `*word ==
/// expected`, for at most `timeout`. Returns on wake-up, value change, timeout or signal alike; callers
/// re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the call; `ts_ptr` is null or points at `ts`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
}

/// `FUTEX_WAKE` (shared) of up to `n` waiters.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n.min(i32::MAX as u32),
        )
    };
}

/// Whether process `pid` is alive: it exists and is not a zombie (a killed lock holder stays a
/// zombie until its parent reaps it, which may be the very process waiting for the lock).
pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
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
        // SAFETY: forwarded from this function's contract.
        unsafe { self.region.as_slice() }
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
        // SAFETY: forwarded from this function's contract.
        unsafe { self.region.as_mut_slice() }
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

    /// The first `len` elements of type `T` as a raw pointer, checked to fit and be aligned.
    fn elements<T>(&self, len: usize) -> *mut T {
        if std::mem::size_of::<T>() == 0 || len == 0 {
            return NonNull::<T>::dangling().as_ptr();
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("checked at construction");
        assert!(bytes <= self.len, "elements outside the region");
        assert!(
            std::mem::align_of::<T>() <= 4096,
            "types aligned beyond a page are not supported"
        );
        self.ptr.as_ptr().cast::<T>()
    }
}

// Guards of `Value` and `Array` dereference into the region. They exist only while the object's
// `Lock` is held, and every accessor of these bytes in every process (the guards, and `get`/`set`/
// `copy_*`) takes that lock first, so a guard's reference is exclusive for its lifetime. `T: Pod`
// makes every bit pattern another process may have written a valid `T`.
impl<T: bytemuck::Pod> std::ops::Deref for crate::shared::ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        let p = self.value.region.elements::<T>(1);
        // SAFETY: `p` points at an in-bounds, aligned `T` (checked by `elements`); exclusive under the
        // lock this guard holds (see above); any bit pattern is a valid `T` (`Pod`).
        unsafe { &*p }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for crate::shared::ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        let p = self.value.region.elements::<T>(1);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *p }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for crate::shared::ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let len = self.array.len;
        let p = self.array.region.elements::<T>(len);
        // SAFETY: `len` elements fit, aligned (checked by `elements`); exclusive under the lock this
        // guard holds; any bit pattern is a valid `T` (`Pod`).
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for crate::shared::ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.array.len;
        let p = self.array.region.elements::<T>(len);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}
