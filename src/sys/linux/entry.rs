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
//! # Who may tell us where to jump
//! Anyone can start this executable with the bootstrap variable set and a socket at descriptor 3. So
//! before the constructor believes a word of it ([`accept_boot`]):
//! - it refuses to boot at all in secure-execution mode (`AT_SECURE`: set-user-ID, set-group-ID or
//!   capabilities gained by `execve`), where the environment belongs to whoever started us;
//! - the socket's peer (`SO_PEERCRED`: the process that created the socket pair) must be this
//!   process's parent, of this process's user, running this very executable file;
//! - the entry and function tokens are read by this module itself, from that socket, with the type
//!   names they were made for, and a token is turned into a function only for the same type name and
//!   only if it lands inside this executable's image ([`accept_boot`], [`Func::resolve`]).
//!
//! These keep out other users (and escalation through a set-user-ID bit) and every program that is
//! not this executable. A process of the same user that runs this executable can still pass them
//! (it can create the socket pair, then exec this binary itself to become the child's parent): that
//! is the boundary Unix draws anyway, since such a process may ptrace us too. Where the parent's
//! executable cannot be seen (a parent that is not dumpable, such as a daemon that changed its
//! user), the parent and user checks stand alone.
//!
//! # Safety
//! [`FnPtr::from_token`] produces a function pointer from an integer. Its contract (see the method) is
//! that the token was made by [`FnPtr::token`] *for the same type* in a process running the same
//! executable image. Its only caller is `resolve` (for [`accept_boot`] and [`Func::resolve`]), on
//! tokens that this module read from a verified parent (above) together with the type name the parent
//! made them for, after comparing that name with the type's own. A pool worker also resolves the
//! tokens of its tasks: they come from the worker's own task queue, which only the pool (the worker's
//! parent, which started it through one of the paths above) holds a handle to; a process able to
//! write that queue's memory is one the worker's user already trusts with its address space.
//!
//! A worker of a pool on a broker (`cluster`) hands its local pool tasks that came over the
//! network. It does so only for an entry whose HMAC-SHA256 under the pool's key verifies (it was
//! written by a holder of the key) and whose build ID, covered by that MAC, is this executable's
//! own; the key is the same kind of trust as Python's authkey: whoever holds it may run this
//! program's functions here. The type name travels with the token and is compared as above.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// The function every offset is measured from. Never called.
#[inline(never)]
pub(crate) extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as extern "C" fn() as usize
}

/// The base address of the loaded object (executable or shared library) containing `addr`.
fn object_base(addr: usize) -> Option<usize> {
    // SAFETY: Dl_info is plain old data (all-zero is a valid value); dladdr only reads `addr` as a
    // number and fills `info`, a valid out-pointer.
    let (ok, info) = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        (
            libc::dladdr(addr as *const libc::c_void, &mut info) != 0,
            info,
        )
    };
    (ok && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// A plain function pointer type that can be sent to a re-executed child as an offset.
pub(crate) trait FnPtr: Copy {
    /// The pointer's address.
    fn addr(self) -> usize;

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
    unsafe fn from_token(token: i64) -> Self;
}

/// The address a token names in this process.
fn token_addr(token: i64) -> usize {
    (anchor_addr() as i64).wrapping_add(token) as usize
}

impl<A, R> FnPtr for fn(A) -> R {
    fn addr(self) -> usize {
        self as usize
    }

    unsafe fn from_token(token: i64) -> Self {
        // SAFETY: by the contract, the token was made from a function of type fn(A) -> R of this
        // image, so the address it names here is that function; fn pointers and usize have the same
        // size on every supported target.
        unsafe { std::mem::transmute::<usize, fn(A) -> R>(token_addr(token)) }
    }
}

impl<A, B, R> FnPtr for fn(A, B) -> R {
    fn addr(self) -> usize {
        self as usize
    }

    unsafe fn from_token(token: i64) -> Self {
        // SAFETY: as for `fn(A) -> R`.
        unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(token_addr(token)) }
    }
}

impl<R> FnPtr for fn() -> R {
    fn addr(self) -> usize {
        self as usize
    }

    unsafe fn from_token(token: i64) -> Self {
        // SAFETY: as for `fn(A) -> R`.
        unsafe { std::mem::transmute::<usize, fn() -> R>(token_addr(token)) }
    }
}

/// A `fn(&mut S, A) -> R`, wrapped so that it can be a [`FnPtr`] (whose impl for `fn(A, B) -> R`
/// would overlap a direct one).
struct StateFn<S, A, R>(fn(&mut S, A) -> R);

impl<S, A, R> Clone for StateFn<S, A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, A, R> Copy for StateFn<S, A, R> {}

impl<S, A, R> FnPtr for StateFn<S, A, R> {
    fn addr(self) -> usize {
        self.0 as usize
    }

    unsafe fn from_token(token: i64) -> Self {
        // SAFETY: as for `fn(A) -> R` (`resolve_with_state` checked the type name of the
        // function, `fn(&mut S, A) -> R`, before this).
        StateFn(unsafe { std::mem::transmute::<usize, fn(&mut S, A) -> R>(token_addr(token)) })
    }
}

/// Places `$hook` (a `fn()`) in `.init_array`, so that it runs before `main` in every process of
/// this program (see the module notes), and defines `ensure_constructor_linked()` beside it, to be
/// called on every path that starts a child so that the linker keeps the constructor's object file.
///
/// The layer above says what runs; this floor only knows how to get there before `main`.
macro_rules! before_main {
    ($hook:path) => {
        extern "C" fn before_main() {
            $hook()
        }

        // SAFETY: `.init_array` is a list of `extern "C" fn()` that the loader calls before `main`,
        // and this is one, of a function that may run there (it touches no state `main` sets up).
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static CONSTRUCTOR: extern "C" fn() = before_main;

        /// Keeps the constructor's object file in the link.
        pub(crate) fn ensure_constructor_linked() {
            std::hint::black_box(&CONSTRUCTOR);
        }
    };
}
pub(crate) use before_main;

/// Reads and removes an environment variable holding a descriptor number left by the parent.
/// Called only from the constructor, before `main`.
pub(crate) fn take_env_fd(key: &str) -> Option<std::os::fd::RawFd> {
    let value = std::env::var_os(key)?;
    // SAFETY: this runs in the `.init_array` constructor, before `main` and before any thread of the
    // program exists, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(key) };
    value.to_str()?.parse().ok()
}

#[cfg(feature = "worker-env")]
/// Reads and removes an environment variable (worker mode's settings, which the worker's own
/// children must not see). Called only from the constructor, before `main`.
pub(crate) fn take_env(key: &str) -> Option<std::ffi::OsString> {
    let value = std::env::var_os(key)?;
    // SAFETY: as in `take_env_fd`: the constructor runs before `main` and before any thread of
    // the program exists, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(key) };
    Some(value)
}

/// A function token with the type name it was made for: received from a verified parent (see the
/// module notes), or, in a pool worker, from the worker's own task queue, which only the pool's
/// owner (the worker's parent, which forked or verified it) holds a handle to write (a broker
/// worker fills it only with entries authenticated under its pool's key, of its own build).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Func {
    token: i64,
    signature: String,
}

/// The entry a verified parent asked a child to run (checked to be an `fn(Func, C) -> i32` of this
/// executable), and the function it runs.
pub(crate) struct Entry<C> {
    entry: fn(Func, C) -> i32,
    func: Func,
}

fn type_of<F>() -> &'static str {
    std::any::type_name::<F>()
}

/// `token` turned into an `F`, if `signature` is `F`'s type name and the address is in this image.
fn resolve<F: FnPtr>(token: i64, signature: &str) -> Result<F, String> {
    if signature != type_of::<F>() {
        return Err(format!(
            "child entry mismatch: expected {}, got {signature}",
            type_of::<F>()
        ));
    }
    let addr = (anchor_addr() as i64).wrapping_add(token) as usize;
    if !inside_this_image(token, addr) {
        return Err("a function token points outside this executable".into());
    }
    // SAFETY: the token was read by `accept_boot` from our verified parent, or by a pool worker
    // from the task queue only its pool writes, whose tasks came from that pool's own caller or
    // from a broker entry authenticated under the pool's key and made by this very build (see the
    // module notes); each of them runs this executable and made it with `FnPtr::token` for the
    // type named `signature`, which is `F`'s (checked above); the address is inside this
    // executable image (checked above).
    Ok(unsafe { F::from_token(token) })
}

/// Whether `addr` (named by `token`) lies in this executable's image. A pool worker resolves the
/// same few tokens for every task, so the answers for the last few are kept (`dladdr` walks the
/// loaded objects each time).
fn inside_this_image(token: i64, addr: usize) -> bool {
    use std::cell::RefCell;
    thread_local! {
        static INSIDE: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    }
    if INSIDE
        .try_with(|k| k.borrow().contains(&token))
        .unwrap_or(false)
    {
        return true;
    }
    let inside = object_base(addr) == object_base(anchor_addr());
    if inside {
        let _ = INSIDE.try_with(|k| {
            let mut k = k.borrow_mut();
            if k.len() >= 16 {
                k.remove(0);
            }
            k.push(token);
        });
    }
    inside
}

impl Func {
    /// The token of `f`, to be resolved by a process running this executable.
    pub(crate) fn of<A, R>(f: fn(A) -> R) -> io::Result<Func> {
        Ok(Func {
            token: f.token()?,
            signature: type_of::<fn(A) -> R>().to_string(),
        })
    }

    /// The token of a function of two arguments.
    pub(crate) fn of2<A, B, R>(f: fn(A, B) -> R) -> io::Result<Func> {
        Ok(Func {
            token: f.token()?,
            signature: type_of::<fn(A, B) -> R>().to_string(),
        })
    }

    /// The token of a function of no arguments.
    pub(crate) fn of0<R>(f: fn() -> R) -> io::Result<Func> {
        Ok(Func {
            token: f.token()?,
            signature: type_of::<fn() -> R>().to_string(),
        })
    }

    /// The token of a function of a state and an item (a higher-ranked pointer type, which
    /// `FnPtr` cannot cover beside `fn(A, B) -> R`: it goes through `StateFn`).
    pub(crate) fn of_with_state<S, A, R>(f: fn(&mut S, A) -> R) -> io::Result<Func> {
        Ok(Func {
            token: StateFn(f).token()?,
            signature: type_of::<fn(&mut S, A) -> R>().to_string(),
        })
    }

    /// The function, if it was made for type `fn() -> R`.
    pub(crate) fn resolve0<R>(&self) -> Result<fn() -> R, String> {
        resolve(self.token, &self.signature)
    }

    /// The function, if it was made for type `fn(&mut S, A) -> R`.
    pub(crate) fn resolve_with_state<S, A, R>(&self) -> Result<fn(&mut S, A) -> R, String> {
        if self.signature != type_of::<fn(&mut S, A) -> R>() {
            return Err(format!(
                "child entry mismatch: expected {}, got {}",
                type_of::<fn(&mut S, A) -> R>(),
                self.signature
            ));
        }
        let f: StateFn<S, A, R> = resolve(self.token, type_of::<StateFn<S, A, R>>())?;
        Ok(f.0)
    }

    /// This function's token, to tell functions apart.
    pub(crate) fn token(&self) -> i64 {
        self.token
    }

    /// The function, if it was made for type `fn(A) -> R`.
    pub(crate) fn resolve<A, R>(&self) -> Result<fn(A) -> R, String> {
        resolve(self.token, &self.signature)
    }

    /// The function, if it was made for type `fn(A, B) -> R`.
    pub(crate) fn resolve2<A, B, R>(&self) -> Result<fn(A, B) -> R, String> {
        resolve(self.token, &self.signature)
    }
}

impl<C> Entry<C> {
    /// Runs the entry on `call`; its exit code.
    pub(crate) fn run(self, call: C) -> i32 {
        (self.entry)(self.func, call)
    }
}

/// "mpB1": the boot prelude's first word.
const PRELUDE_MAGIC: u32 = u32::from_le_bytes(*b"mpB1");
/// The most bytes a prelude may announce (two tokens and two type names).
const MAX_PRELUDE: usize = 16 << 10;

/// The prelude a parent sends first on a child's bootstrap socket, by itself (no descriptors): the
/// tokens of the entry and of the user's function, with their type names.
/// `[magic u32][n u32][entry i64][func i64][entry type name, u16 length first][func type name]`.
pub(crate) fn prelude<C, A, R>(entry: fn(Func, C) -> i32, func: fn(A) -> R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    body.extend(entry.token()?.to_le_bytes());
    body.extend(func.token()?.to_le_bytes());
    for name in [type_of::<fn(Func, C) -> i32>(), type_of::<fn(A) -> R>()] {
        let len = u16::try_from(name.len()).map_err(|_| io::Error::other("type name too long"))?;
        body.extend(len.to_le_bytes());
        body.extend(name.as_bytes());
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend(PRELUDE_MAGIC.to_le_bytes());
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    Ok(out)
}

/// The length of the prelude body announced by its first 8 bytes, if they are a prelude's.
fn prelude_len(head: [u8; 8]) -> Option<usize> {
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    (magic == PRELUDE_MAGIC && len <= MAX_PRELUDE).then_some(len)
}

/// The checks `accept_boot` applies to a whole prelude, as a pure function of its bytes (for the fuzz
/// target): the entry token and type name, and the function token and type name.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_prelude(bytes: &[u8]) -> Option<(i64, String, i64, String)> {
    let len = prelude_len(bytes.get(..8)?.try_into().ok()?)?;
    let body = bytes.get(8..)?;
    if body.len() != len {
        return None;
    }
    let (entry, signature, func) = parse_prelude(body)?;
    Some((entry, signature, func.token, func.signature))
}

/// The prelude's two tokens and two type names.
fn parse_prelude(body: &[u8]) -> Option<(i64, String, Func)> {
    let entry = i64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let func = i64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let mut at = 16;
    let mut names = [String::new(), String::new()];
    for name in &mut names {
        let len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
        *name = String::from_utf8(body.get(at + 2..at + 2 + len)?.to_vec()).ok()?;
        at += 2 + len;
    }
    (at == body.len()).then(|| {
        let [signature, func_signature] = names;
        let func = Func {
            token: func,
            signature: func_signature,
        };
        (entry, signature, func)
    })
}

/// Checks that this process may take orders from the peer of `socket` (see the module notes): not in
/// secure-execution mode, and the peer is our parent, of our user, running this executable.
pub(crate) fn verify_parent(socket: &OwnedFd) -> Result<(), String> {
    if super::process::secure_execution() {
        return Err(
            "refusing to boot a child in a set-user-ID, set-group-ID or \
                    capability-raising execution (AT_SECURE)"
                .into(),
        );
    }
    let (peer, same_user) = super::process::socket_peer(socket.as_fd())
        .map_err(|e| format!("the bootstrap descriptor is not a socket: {e}"))?;
    let parent = super::process::getppid();
    if peer != parent || !same_user {
        return Err(format!(
            "the bootstrap socket's peer (pid {peer}) is not this process's parent (pid {parent}) \
             of the same user"
        ));
    }
    // (Where the parent's executable cannot be seen, the two checks above stand alone.)
    if super::process::runs_this_executable(peer) == Some(false) {
        return Err("the bootstrap socket's peer runs another executable".into());
    }
    Ok(())
}

/// Verifies the parent behind a child's bootstrap `socket` and reads the entry it asks for (an
/// `fn(Func, C) -> i32`), before anything else is read from the socket.
pub(crate) fn accept_boot<C>(socket: &OwnedFd) -> Result<Entry<C>, BootError> {
    verify_parent(socket).map_err(BootError::Refused)?;
    let mut head = [0u8; 8];
    recv_exact(socket, &mut head)?;
    let malformed = || BootError::Refused("malformed bootstrap prelude".into());
    let len = prelude_len(head).ok_or_else(malformed)?;
    let mut body = vec![0u8; len];
    recv_exact(socket, &mut body)?;
    let (token, signature, func) = parse_prelude(&body).ok_or_else(malformed)?;
    let entry = resolve(token, &signature).map_err(BootError::Refused)?;
    Ok(Entry { entry, func })
}

/// Why a child does not boot.
#[derive(Debug)]
pub(crate) enum BootError {
    /// The parent closed the socket before telling us anything (it died, or gave up on us).
    ParentGone,
    /// Whoever started us may not tell us where to jump; the reason.
    Refused(String),
}

/// Reads exactly `buf.len()` bytes from the socket (and never descriptors: the prelude is sent by
/// itself, so a read of its bytes stops before the next message and its descriptors).
fn recv_exact(socket: &OwnedFd, buf: &mut [u8]) -> Result<(), BootError> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let flags = rustix::net::RecvFlags::WAITALL;
        match rustix::io::retry_on_intr(|| rustix::net::recv(socket, &mut *rest, flags)) {
            Ok((0, _)) => return Err(BootError::ParentGone),
            Ok((n, _)) => got += n,
            Err(e) => {
                return Err(BootError::Refused(format!(
                    "reading the bootstrap prelude: {e}"
                )));
            }
        }
    }
    Ok(())
}
