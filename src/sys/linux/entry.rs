//! Entry into a re-executed copy of this program, and function pointers that survive ASLR.
//!
//! # Why a constructor
//! The *spawn* and *forkserver* start methods run a fresh copy of the current executable
//! (`/proc/self/exe`). That copy must run a chosen function, not `main`: `main` may be the user's CLI,
//! or libtest's harness (inside `cargo test`), which would run the whole test suite again. So the crate
//! places one function pointer in `.init_array`. The dynamic loader calls it before `main` in every
//! process of this program; it returns at once unless the parent left a bootstrap descriptor in the
//! environment, in which case it becomes the child (or the fork server) and never returns. No line in
//! `main` is needed for this, which is what makes start methods work inside test binaries.
//!
//! # Why offsets
//! A position-independent executable is loaded at a random base in every process, so a function's
//! address differs between parent and re-executed child, but its distance from any other function of
//! the same image does not. A function is therefore named by its offset from [`anchor`], and turned back
//! into a pointer by adding the child's own address of `anchor`.
//!
//! # Safety
//! [`FnPtr::from_token`] produces a function pointer from an integer. Its contract (see the method) is
//! that the token was made by [`FnPtr::token`] *for the same type* in a process running the same
//! executable image. The crate only calls it on tokens received over a private socket pair from its own
//! parent, which started this process from `/proc/self/exe` (the same inode as itself, even if the file
//! was since replaced), and only inside the monomorphised child entry chosen together with the token.

#![allow(unsafe_code)]

use std::io;

/// The function every offset is measured from. Never called.
#[inline(never)]
pub(crate) extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as extern "C" fn() as usize
}

/// The base address of the loaded object (executable or shared library) containing `addr`.
fn object_base(addr: usize) -> Option<usize> {
    // SAFETY: Dl_info is plain old data; dladdr fills it and only reads `addr` as a number.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `info` is a valid out-pointer.
    let ok = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } != 0;
    (ok && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// A plain function pointer type that can be sent to a re-executed child as an offset.
pub(crate) trait FnPtr: Copy {
    /// The pointer's address.
    fn addr(self) -> usize;

    /// # Safety
    /// `addr` must be the address of a function of exactly this type.
    unsafe fn from_addr(addr: usize) -> Self;

    /// The offset of this function from [`anchor`]. Fails if the function does not live in the same
    /// loaded object as this crate (a re-executed child could not find it there).
    fn token(self) -> io::Result<i64> {
        let (f, a) = (self.addr(), anchor_addr());
        if object_base(f) != object_base(a) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the function does not live in the same executable image as multiprocess, so a \
                 re-executed child cannot find it; use the fork start method",
            ));
        }
        Ok(f as i64 - a as i64)
    }

    /// Turns a token back into a pointer in this process.
    ///
    /// # Safety
    /// `token` must come from [`FnPtr::token`] on a value of this same type, in a process running the
    /// same executable image (see the module contract).
    unsafe fn from_token(token: i64) -> Self {
        let addr = (anchor_addr() as i64).wrapping_add(token) as usize;
        // SAFETY: forwarded from this function's contract.
        unsafe { Self::from_addr(addr) }
    }
}

impl<A, R> FnPtr for fn(A) -> R {
    fn addr(self) -> usize {
        self as usize
    }

    unsafe fn from_addr(addr: usize) -> Self {
        // SAFETY: the caller guarantees `addr` is a function of type fn(A) -> R; fn pointers and usize
        // have the same size on every supported target.
        unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) }
    }
}

extern "C" fn on_load() {
    crate::process::bootstrap::on_load();
}

/// Runs [`on_load`] before `main` in every process of a program that links this crate.
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = on_load;

/// Keeps the constructor's object file in the link: called on every path that starts a child.
pub(crate) fn ensure_constructor_linked() {
    std::hint::black_box(&CONSTRUCTOR);
}

/// The monomorphised child entry, `process::bootstrap::child_main::<A, R>`.
pub(crate) type ChildEntryFn = fn(crate::process::bootstrap::ChildCall) -> i32;

/// Calls the child entry named by `token`.
///
/// The token comes from this process's parent over the private bootstrap socket, which the parent
/// created and handed only to us; the parent computed it with [`FnPtr::token`] on a [`ChildEntryFn`].
pub(crate) fn call_trusted_entry(token: i64, call: crate::process::bootstrap::ChildCall) -> i32 {
    // SAFETY: per the module contract the token was made from a `ChildEntryFn` by our parent, which runs
    // the same executable image (it started us from /proc/self/exe, or started our fork server so).
    let entry = unsafe { ChildEntryFn::from_token(token) };
    entry(call)
}

/// Turns the user's function token back into `fn(A) -> R`. Called only by `child_main::<A, R>` after it
/// checked that the parent's `type_name::<fn(A) -> R>()` matches its own.
pub(crate) fn resolve_trusted_fn<A, R>(token: i64) -> fn(A) -> R {
    // SAFETY: the parent made this token with `FnPtr::token` on an `fn(A) -> R` (same type, checked by
    // name by the caller) in the same executable image, and sent it over the private bootstrap socket.
    unsafe { <fn(A) -> R>::from_token(token) }
}

/// Reads and removes an environment variable holding a descriptor number left by the parent.
/// Called only from the constructor, before `main`.
pub(crate) fn take_env_fd(key: &str) -> Option<std::os::fd::RawFd> {
    let value = std::env::var_os(key)?;
    // SAFETY: this runs in the `.init_array` constructor, before `main` and before any thread of the
    // program exists, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(key) };
    value.to_str()?.parse().ok()
}
