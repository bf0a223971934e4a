//! Processes: `fork`, `posix_spawn` of the running executable, pidfds, `waitid`, signals, the
//! parent-death lifeline and `_exit`.
//!
//! # Safety
//! - `fork` duplicates only the calling thread. The child side of [`fork_then`] runs a closure supplied
//!   by the crate; the crate keeps that path short (no lock other than the fork lock, which the forking
//!   thread holds and hands to the child) before it runs the user's function. What a user function may
//!   safely do after a fork from a multi-threaded parent is the documented caveat of the fork start
//!   method, as in every language.
//! - `posix_spawn` receives only pointers to `CString`s and arrays built before the call and kept alive
//!   until it returns.
//! - pidfds are owned descriptors; signals are sent through them so a recycled pid is never hit.

#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use rustix::io::retry_on_intr;
use rustix::process::{Pid, Signal};

static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

thread_local! {
    static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Runs in the child after every `fork()` made through glibc (ours or anyone's), in the forking
/// thread: the cached ids belong to the parent.
extern "C" fn forget_ids_after_fork() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
    let _ = TID.try_with(|t| t.set(0));
}

fn install_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain C-ABI function with static lifetime that only stores to an atomic
        // and a thread-local cell (async-signal-safe enough for the post-fork child).
        unsafe { libc::pthread_atfork(None, None, Some(forget_ids_after_fork)) };
    });
}

/// This process's id, cached: glibc no longer caches `getpid`, and the lock fast path needs it.
pub(crate) fn getpid() -> i32 {
    let p = PID.load(std::sync::atomic::Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    install_fork_handler();
    let p = std::process::id() as i32;
    PID.store(p, std::sync::atomic::Ordering::Relaxed);
    p
}

/// This thread's id (unique system-wide while the thread lives, like a pid), cached per thread.
pub(crate) fn gettid() -> i32 {
    TID.try_with(|t| {
        if t.get() == 0 {
            install_fork_handler();
            t.set(raw_gettid());
        }
        t.get()
    })
    // Thread-local storage is being torn down: ask the kernel.
    .unwrap_or_else(|_| raw_gettid())
}

fn raw_gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// How a process ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// `exit(code)` / `_exit(code)`.
    Exited(i32),
    /// Killed by a signal (the number).
    Signaled(i32),
}

impl WaitStatus {
    /// Python's `exitcode` convention: the exit code, or minus the signal number.
    pub(crate) fn exitcode(self) -> i32 {
        match self {
            WaitStatus::Exited(c) => c,
            WaitStatus::Signaled(s) => -s,
        }
    }
}

/// Exit status of a forked child in which the crate's own child path panicked.
pub(crate) const EXIT_PANIC_IN_FORK: i32 = 70;

/// Runs `child` in a forked copy of this process and returns the child's pid in the parent. In the
/// child, `child`'s return value is the exit status, passed to `_exit`.
pub(crate) fn fork_then(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: see the module contract; the child runs only `child` (a panic is caught) and then
    // `_exit`, never returning into the parent's stack frames.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // A panic must never unwind out of here: the frames above belong to the parent's code.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child))
            .unwrap_or(EXIT_PANIC_IN_FORK);
        exit_now(code);
    }
    Ok(pid)
}

/// What the fork server needs to fork children that belong to *its* parent (see
/// [`SiblingForks::fork`]), read once in the server.
///
/// # Why children of the server's parent
/// A child is reaped, and its exit status known, only by its parent. If the fork server were the
/// parent of the children it forks, its death (a `kill -9`, a Ctrl-C sent to the whole process group)
/// would take every child's status with it, and the children would be left for init to reap, as
/// zombies under an init that does not. `clone3(CLONE_PARENT)` makes each child a child of the fork
/// server's own parent, the process that asked for it: that process reaps it through its pidfd, like
/// a child it forked itself, whatever happens to the server.
///
/// `clone3` is the raw system call, not glibc's `fork`, so what glibc's `fork` does in the child is
/// done here: the thread id that glibc caches in its thread control block (which `pthread_self`-based
/// calls such as `pthread_setaffinity_np` or `pthread_getcpuclockid` use) is written by the kernel
/// (`CLONE_CHILD_SETTID` at the address glibc registered with `set_tid_address`, which
/// `PR_GET_TID_ADDRESS` reports), and the robust-mutex list is registered again. The fork server has a
/// single thread and never ran `main`, so no lock is held at the fork.
#[derive(Debug)]
pub(crate) struct SiblingForks {
    tid_address: usize,
    robust: (usize, usize),
}

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const PR_GET_TID_ADDRESS: libc::c_int = 40;

impl SiblingForks {
    /// Reads what [`fork`](Self::fork) needs; `Unsupported` where the kernel cannot say where glibc
    /// keeps the thread id (a kernel without `CONFIG_CHECKPOINT_RESTORE`).
    pub(crate) fn prepare() -> io::Result<SiblingForks> {
        let Some(tid_address) = cached_tid_address() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel does not report where the C library keeps the thread id",
            ));
        };
        let (mut head, mut len): (usize, usize) = (0, 0);
        // SAFETY: get_robust_list(0, ...) writes the calling thread's list head and its length.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0,
                &mut head as *mut usize,
                &mut len as *mut usize,
            )
        };
        let robust = if r == 0 { (head, len) } else { (0, 0) };
        Ok(SiblingForks {
            tid_address,
            robust,
        })
    }

    /// Forks this (single-threaded) process into a child of its parent that runs `child`, whose
    /// return value is its exit status. Returns the child's pid and a pidfd of it.
    pub(crate) fn fork(&self, child: impl FnOnce() -> i32) -> io::Result<(i32, OwnedFd)> {
        let mut pidfd: libc::c_int = -1;
        let flags = (libc::CLONE_PARENT
            | libc::CLONE_PIDFD
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let args = CloneArgs {
            flags,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            child_tid: self.tid_address as u64,
            // With CLONE_PARENT the child signals our parent as we would (clone3 insists on 0 here).
            exit_signal: 0,
            ..CloneArgs::default()
        };
        // SAFETY: a fork (no CLONE_VM, no new stack) of a single-threaded process: the child
        // continues on its own copy of this stack. `pidfd` and the thread-id field are valid for the
        // kernel's writes (the latter in the child's copy of memory).
        let mut r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r < 0 && matches!(errno(), libc::ENOSYS | libc::EPERM) {
            // Seccomp profiles (Docker's) refuse clone3 so that libraries fall back to clone.
            r = self.legacy_clone(flags, &mut pidfd);
        }
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            self.in_child();
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child))
                .unwrap_or(EXIT_PANIC_IN_FORK);
            exit_now(code);
        }
        // SAFETY: CLONE_PIDFD stored a descriptor of the new child, which nobody else owns.
        Ok((r as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
    }

    /// What glibc's `fork` would have done in the child, beyond what the kernel did.
    fn in_child(&self) {
        if self.robust.0 != 0 {
            // SAFETY: the list head is this (only) thread's glibc-owned robust list, as read in the
            // parent; the kernel resets the registration in a new process.
            unsafe { libc::syscall(libc::SYS_set_robust_list, self.robust.0, self.robust.1) };
        }
        forget_ids_after_fork();
    }

    #[cfg(target_arch = "x86_64")]
    fn legacy_clone(&self, flags: u64, pidfd: &mut libc::c_int) -> libc::c_long {
        // SAFETY: as for clone3; x86_64's argument order is (flags, stack, parent_tid, child_tid, tls),
        // and CLONE_PIDFD stores the pidfd at parent_tid.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                pidfd as *mut libc::c_int,
                self.tid_address,
                0usize,
            )
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn legacy_clone(&self, flags: u64, pidfd: &mut libc::c_int) -> libc::c_long {
        // SAFETY: as for clone3; aarch64's argument order is (flags, stack, parent_tid, tls, child_tid).
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                pidfd as *mut libc::c_int,
                0usize,
                self.tid_address,
            )
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn legacy_clone(&self, _: u64, _: &mut libc::c_int) -> libc::c_long {
        -1
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The address at which the C library caches this thread's id (registered with the kernel by
/// `set_tid_address`), if the kernel reports it and it does hold this thread's id.
fn cached_tid_address() -> Option<usize> {
    let mut tid_address: *mut i32 = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer into the location we pass. A non-null address
    // registered with set_tid_address is glibc's own, live, aligned field holding this thread's id;
    // we only read it, to check it is what we expect.
    let cached = unsafe {
        let r = libc::prctl(PR_GET_TID_ADDRESS, &mut tid_address as *mut *mut i32);
        if r != 0 || tid_address.is_null() {
            return None;
        }
        tid_address.read_volatile()
    };
    (cached == raw_gettid()).then_some(tid_address as usize)
}

/// Whether the value glibc caches as this thread's id is its real id (after [`SiblingForks::fork`] as
/// after glibc's own `fork`).
#[cfg(test)]
pub(crate) fn cached_tid_is_right() -> bool {
    cached_tid_address().is_some()
}

/// Starts a fresh copy of the running executable (`/proc/self/exe`) with `boot` placed at descriptor
/// `target` and the extra environment variable `key=value`. Returns the child's pid.
pub(crate) fn spawn_self(
    boot: BorrowedFd<'_>,
    target: RawFd,
    key: &str,
    value: &str,
) -> io::Result<i32> {
    // dup2(fd, fd) would not clear close-on-exec, so make sure the source is a different number.
    let tmp;
    let src = if boot.as_raw_fd() == target {
        tmp = super::fd::dup_cloexec(boot, target + 1)?;
        tmp.as_raw_fd()
    } else {
        boot.as_raw_fd()
    };
    let path = CString::new("/proc/self/exe").expect("no NUL");
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiprocess-child"));
    let argv0 =
        CString::new(argv0.into_vec()).unwrap_or_else(|_| CString::new("child").expect("no NUL"));
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k.as_encoded_bytes() != key.as_bytes())
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    env.push(
        CString::new(format!("{key}={value}"))
            .map_err(|_| io::Error::other("NUL in environment"))?,
    );
    let argv: [*mut libc::c_char; 2] = [argv0.as_ptr() as *mut _, std::ptr::null_mut()];
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|c| c.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());

    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use and destroyed after; every
    // pointer passed to posix_spawn (path, argv, envp) refers to CStrings and vectors alive until it
    // returns.
    unsafe {
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        let r = libc::posix_spawn_file_actions_init(actions.as_mut_ptr());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let mut actions = actions.assume_init();
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        let r = libc::posix_spawnattr_init(attr.as_mut_ptr());
        if r != 0 {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(io::Error::from_raw_os_error(r));
        }
        let mut attr = attr.assume_init();
        // The child gets the bootstrap socket at `target` and nothing else beyond stdio: a
        // descriptor of ours that lacks close-on-exec (opened by other code) is not inherited.
        let mut r = libc::posix_spawn_file_actions_adddup2(&mut actions, src, target);
        if r == 0 {
            r = add_close_from(&mut actions, target + 1);
        }
        // And an empty signal mask, as `std::process::Command` gives (a parent that blocked
        // SIGTERM must still be able to terminate its child).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if r == 0 {
            r = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        }
        if r == 0 {
            r = libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGMASK as _);
        }
        if r == 0 {
            r = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        if r != 0 {
            return Err(super::fd::creating(io::Error::from_raw_os_error(r)));
        }
    }
    Ok(pid)
}

/// `posix_spawn_file_actions_addclosefrom_np` where glibc has it; elsewhere the child closes what it
/// inherited itself, first thing (see `bootstrap`).
///
/// # Safety
/// `actions` must be initialised.
#[cfg(target_env = "gnu")]
unsafe fn add_close_from(actions: &mut libc::posix_spawn_file_actions_t, from: RawFd) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { libc::posix_spawn_file_actions_addclosefrom_np(actions, from) }
}

#[cfg(not(target_env = "gnu"))]
unsafe fn add_close_from(_: &mut libc::posix_spawn_file_actions_t, _: RawFd) -> i32 {
    0
}

/// Kills child `pid` of this process and reaps it: for every path that fails after a child was
/// created, so that none is left a zombie. (It is our unreaped child, so its pid cannot have been
/// reused.)
pub(crate) fn kill_and_reap(pid: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    let _ = retry_on_intr(|| {
        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
    });
}

/// The child of this process that holds `socket` (the same socket, not a copy of its number) at its
/// descriptor 3, found through `/proc`: a fork-server child whose pid never reached us.
pub(crate) fn child_holding(socket: BorrowedFd<'_>) -> Option<i32> {
    let ino = rustix::fs::fstat(socket).ok()?.st_ino;
    let want = format!("socket:[{ino}]");
    let me = getpid().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
        let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).ok()?;
        (ppid == me && fd3.to_str() == Some(want.as_str())).then_some(pid)
    })
}

/// Whether this process runs in secure-execution mode (`AT_SECURE`: set-user-ID or set-group-ID, or
/// given capabilities, by its `execve`): then its environment is an attacker's, and no child is
/// booted from it.
pub(crate) fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// This process's parent, or 0 when it has none (its parent exited and it was reparented to init
/// of another namespace).
pub(crate) fn getppid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// The process that created the peer end of socket `fd` (for a socket pair: whoever called
/// `socketpair`), and whether it runs as this process's real and effective user.
pub(crate) fn socket_peer(fd: BorrowedFd<'_>) -> io::Result<(i32, bool)> {
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    let me = rustix::process::getuid();
    let same_user = cred.uid == me && rustix::process::geteuid() == me;
    Ok((cred.pid.as_raw_nonzero().get(), same_user))
}

/// Whether process `pid` runs the very executable file this process runs (same device and inode
/// behind `/proc/<pid>/exe`, which survives the file being replaced on disk); `None` when that
/// cannot be told (a parent that is not dumpable, such as one that changed its user, hides its
/// `exe` link even from its own children).
pub(crate) fn runs_this_executable(pid: i32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = match std::fs::metadata(format!("/proc/{pid}/exe")) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
        Err(_) => return Some(false),
    };
    let ours = std::fs::metadata("/proc/self/exe").ok()?;
    Some(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}

/// A disposition that runs no code of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plain {
    /// `SIG_DFL`.
    Default,
    /// `SIG_IGN`.
    Ignore,
}

/// The current disposition of `sig`: its handler (`SIG_DFL`, `SIG_IGN` or a function's address)
/// and its flags. Async-signal-safe (one `sigaction`).
pub(super) fn disposition(sig: i32) -> Option<(libc::sighandler_t, libc::c_int)> {
    // SAFETY: sigaction is plain old data (all-zero is a valid value); with a null new action the
    // call only reads the disposition into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, std::ptr::null(), &mut old) == 0)
            .then_some((old.sa_sigaction, old.sa_flags))
    }
}

/// Sets `sig` to its default action or to be ignored. Async-signal-safe (one `sigaction`).
/// Ignores SIGPIPE, as Rust's runtime does before `main` runs (for code that runs before it).
#[cfg(feature = "worker-env")]
pub(crate) fn ignore_sigpipe() {
    set_disposition(libc::SIGPIPE, Plain::Ignore);
}

pub(crate) fn set_disposition(sig: i32, plain: Plain) {
    let action = match plain {
        Plain::Default => libc::SIG_DFL,
        Plain::Ignore => libc::SIG_IGN,
    };
    // SAFETY: installs SIG_DFL or SIG_IGN (no handler code) with an empty mask.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = action;
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(sig, &new, std::ptr::null_mut());
    }
}

/// The signals (below 32) that this process ignores, as a bit set, so that a child started by the
/// fork server can ignore the same ones, as it would had it been `exec`ed from here.
pub(crate) fn ignored_signals() -> u32 {
    (1..32)
        .filter(|&sig| disposition(sig).is_some_and(|(h, _)| h == libc::SIG_IGN))
        .fold(0, |set, sig| set | 1 << sig)
}

/// Gives this (freshly forked, single-threaded) process the signal state of a freshly `exec`ed one:
/// an empty mask, the signals in `ignored` ignored and every other one at its default action.
pub(crate) fn reset_signals(ignored: u32) {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let plain = if ignored & (1 << sig) != 0 {
            Plain::Ignore
        } else {
            Plain::Default
        };
        set_disposition(sig, plain);
    }
    unblock_all_signals();
}

/// Changes this thread's signal mask (`how`: `SIG_BLOCK` or `SIG_SETMASK`) with the signals in `set`
/// (bit `n` for signal `n`, below 32).
fn change_mask(how: libc::c_int, set: u32) {
    // SAFETY: a zeroed sigset is valid for sigemptyset to initialise; sigaddset only writes it and
    // pthread_sigmask only reads it.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        for sig in (1..32).filter(|s| set & (1 << s) != 0) {
            libc::sigaddset(&mut mask, sig);
        }
        libc::pthread_sigmask(how, &mask, std::ptr::null_mut());
    }
}

/// Adds the signals in `set` (bit `n` for signal `n`, below 32) to this thread's signal mask.
pub(crate) fn block_signals(set: u32) {
    change_mask(libc::SIG_BLOCK, set);
}

/// Empties this thread's signal mask.
pub(crate) fn unblock_all_signals() {
    change_mask(libc::SIG_SETMASK, 0);
}

/// Replaces this process's whole environment with `vars` (a fork server's child takes on the
/// environment its parent has at the moment it starts it).
///
/// Called only in a child forked from the fork server, before the child's function runs: the
/// process has a single thread, so nothing reads or writes the environment concurrently.
pub(crate) fn replace_environment(vars: &[(OsString, OsString)]) {
    let current: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    // SAFETY: see above: this process has exactly one thread (a fork server child before running
    // any user code; the bootstrap starts no thread).
    unsafe {
        for k in current {
            std::env::remove_var(k);
        }
        for (k, v) in vars {
            if !k.is_empty() && !k.as_encoded_bytes().contains(&b'=') {
                std::env::set_var(k, v);
            }
        }
    }
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the process ends.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(super::fd::creating)
}

/// `pidfd_send_signal`. Sending to a process that has exited but not been reaped succeeds; once
/// reaped it fails with `ESRCH`, never reaching a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let sig =
        Signal::from_named_raw(sig).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_send_signal(pidfd, sig)?)
}

/// Reaps a child of this process through its pidfd. With `nohang`, returns `None` if it still runs.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<WaitStatus>> {
    use rustix::process::{WaitId, WaitIdOptions};
    let mut options = WaitIdOptions::EXITED;
    if nohang {
        options |= WaitIdOptions::NOHANG;
    }
    let Some(status) = retry_on_intr(|| rustix::process::waitid(WaitId::PidFd(pidfd), options))?
    else {
        return Ok(None); // NOHANG and still running
    };
    Ok(Some(
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => WaitStatus::Exited(code),
            (None, Some(sig)) => WaitStatus::Signaled(sig),
            (None, None) => return Ok(None), // not an exit (waitid was asked only for exits)
        },
    ))
}

/// Ends this process at once with `code`, running no destructor and no `atexit` handler (the right
/// exit for a forked child, whose handlers belong to its parent). Callers flush what they need first.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Arms the parent-death lifeline: when every write end of the pipe whose read end is `fd` closes
/// (the parent process ended, however it ended), the kernel sends this process `SIGKILL`.
///
/// This uses `O_ASYNC` with `F_SETSIG`, owned by this process, rather than `PR_SET_PDEATHSIG`, which
/// fires when the parent *thread* that forked us exits, not the parent process.
/// `fd` must be the read end of a pipe made by [`pipe`](super::fd::pipe) (no other status flags).
/// Returns `Ok(false)` if the parent is already gone.
pub(crate) fn arm_lifeline(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments (rustix has neither command).
    let set = unsafe {
        libc::fcntl(raw, libc::F_SETOWN, getpid()) != -1
            && libc::fcntl(raw, F_SETSIG, libc::SIGKILL) != -1
    };
    if !set {
        return Err(io::Error::last_os_error());
    }
    // A fresh pipe read end has no status flags but O_RDONLY, which F_SETFL ignores.
    rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::ASYNC)?;
    // The parent may have died before O_ASYNC was set: then no signal comes, so look.
    Ok(!super::fd::wait_readable(
        fd,
        Some(std::time::Duration::ZERO),
    )?)
}

/// Duplicates `fd` onto exactly `target` (clearing close-on-exec there).
pub(crate) fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 with a valid source; `target` is a number this single-threaded process reserves.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor numbered `from` and above (used in a fresh child of the fork server, where
/// everything above the bootstrap descriptors belongs to the server).
pub(crate) fn close_from(from: RawFd) {
    // SAFETY: close_range only closes descriptors; the callers own (or abandon) all of them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r != 0 {
        // Old kernels: fall back to closing one by one up to the soft limit.
        let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(1 << 20, |n| n.min(1 << 20) as RawFd);
        for fd in from..max {
            // SAFETY: as for close_range; close on a number that is not open is harmless (EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// Registers a function to run at normal process exit (`exit(3)`, including a return from `main`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with C ABI and static lifetime.
    if unsafe { libc::atexit(f) } == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit failed"))
    }
}

/// The conventional name of a signal (`"SIGKILL"`), or `None` for an unknown number.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// `fcntl(F_SETSIG)` (Linux; not exported by the libc crate).
const F_SETSIG: libc::c_int = 10;

/// `SIGTERM`, `SIGKILL`, `SIGINT` for the process API.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
pub(crate) const SIGINT: i32 = libc::SIGINT;
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Tests of what children inherit, which need raw signal and environment calls (so they live here,
/// beside the other unsafe code).
/// This process's resident memory in bytes (`/proc/self/statm`'s second field, in pages).
pub(crate) fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// When process `pid` started (clock ticks after boot, `/proc/<pid>/stat`'s 22nd field), or
/// `None` when there is no such process or it has ended (a zombie): with the pid, a name for one
/// process run that a reused pid does not take over.
pub(crate) fn process_started(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // A zombie (or one being reaped) has ended: only its entry is left.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Process, ProcessError, StartMethod};
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn start<A, R>(m: StartMethod, f: fn(A) -> R, arg: A) -> crate::Process<R>
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
        R: serde::Serialize + serde::de::DeserializeOwned,
    {
        Process::builder()
            .daemon(true)
            .start_method(m)
            .spawn(f, arg)
            .unwrap()
    }

    fn join<R: serde::de::DeserializeOwned>(p: crate::Process<R>) -> Result<R, ProcessError> {
        match p.join_timeout(DEADLINE) {
            Ok(r) => Ok(r),
            Err(crate::JoinTimeoutError::Timeout) => {
                let _ = p.kill();
                panic!("child {} did not finish", p.pid())
            }
            Err(crate::JoinTimeoutError::Failed(e)) => Err(e),
        }
    }

    fn tid_is_right(_: ()) -> bool {
        cached_tid_is_right()
    }

    #[test]
    fn every_child_has_the_right_thread_id_in_its_c_library() {
        for m in StartMethod::ALL {
            assert!(join(start(m, tid_is_right, ())).unwrap(), "{m}");
        }
    }

    fn sleep_long(_: ()) {
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn a_parent_that_blocked_sigterm_can_still_terminate_its_children() {
        // (The test thread's mask; libtest runs each test on a thread of its own.)
        block_signals(1 << libc::SIGTERM);
        let results: Vec<_> = StartMethod::ALL
            .iter()
            .map(|&m| {
                let p = start(m, sleep_long, ());
                p.terminate().unwrap();
                (m, join(p))
            })
            .collect();
        unblock_all_signals();
        for (m, r) in results {
            assert!(
                matches!(r, Err(ProcessError::Signaled { signal: 15 })),
                "{m}: {r:?}"
            );
        }
    }

    fn ignored_here(_: ()) -> u32 {
        ignored_signals()
    }

    /// In a forked child of the test process, so that the changes to process-wide state stay there.
    fn dispositions_of_children(_: ()) -> Vec<(String, u32)> {
        crate::init().unwrap(); // a fork server started before the change below
        set_disposition(libc::SIGUSR1, Plain::Ignore);
        set_disposition(libc::SIGHUP, Plain::Default);
        // Whoever ran the tests may have had them ignored (a shell's background job ignores
        // SIGINT): the children must not take them from the fork server.
        set_disposition(libc::SIGINT, Plain::Default);
        set_disposition(libc::SIGTERM, Plain::Default);
        [StartMethod::Spawn, StartMethod::ForkServer]
            .iter()
            .map(|&m| (m.to_string(), join(start(m, ignored_here, ())).unwrap()))
            .collect()
    }

    #[test]
    fn children_take_the_parents_current_ignored_signals_and_not_the_fork_servers() {
        let seen = join(start(StartMethod::Fork, dispositions_of_children, ())).unwrap();
        for (m, ignored) in seen {
            assert!(
                ignored & 1 << libc::SIGUSR1 != 0,
                "{m}: SIGUSR1 not ignored"
            );
            assert!(ignored & 1 << libc::SIGHUP == 0, "{m}: SIGHUP ignored");
            // The fork server ignores SIGINT and SIGTERM; its children must not.
            assert!(ignored & 1 << libc::SIGINT == 0, "{m}: SIGINT ignored");
            assert!(ignored & 1 << libc::SIGTERM == 0, "{m}: SIGTERM ignored");
        }
    }

    extern "C" fn ignore_it(_: i32) {}

    /// CPython's `test_ignore` (EINTR must not break a blocking call): a child with a SIGUSR1
    /// handler keeps receiving and sending across the signals its parent sends.
    fn with_a_handler(conn: crate::Connection) -> bool {
        // SAFETY: installs a handler that does nothing, without SA_RESTART, so that blocking calls
        // do see EINTR.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = ignore_it as extern "C" fn(i32) as usize;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGUSR1, &new, std::ptr::null_mut());
        }
        conn.send(&"ready").unwrap();
        let x: u32 = conn.recv().unwrap();
        conn.send(&x).unwrap();
        conn.send_bytes(&vec![b'x'; 32 << 20]).is_ok()
    }

    #[test]
    fn signals_do_not_break_a_childs_blocking_calls() {
        for m in StartMethod::ALL {
            let (here, there) = crate::pipe().unwrap();
            let p = start(m, with_a_handler, there);
            assert_eq!(here.recv::<String>().unwrap(), "ready");
            let usr1 = || {
                let pid = Pid::from_raw(p.pid()).unwrap();
                rustix::process::kill_process(pid, Signal::USR1).unwrap();
            };
            std::thread::sleep(Duration::from_millis(50));
            usr1();
            std::thread::sleep(Duration::from_millis(50));
            here.send(&1234u32).unwrap();
            assert_eq!(here.recv::<u32>().unwrap(), 1234, "{m}");
            std::thread::sleep(Duration::from_millis(50));
            usr1();
            assert_eq!(here.recv_bytes().unwrap().len(), 32 << 20, "{m}");
            assert!(join(p).unwrap(), "{m}");
        }
    }

    /// In a forked child of the test (its own children and fork server): starts a daemon child and
    /// the fork server, then forks with plain `fork` (as a daemonizing library would) and lets that
    /// copy `exit` normally, which runs the exit handler it inherited.
    fn a_copy_exits(_: ()) -> (bool, bool) {
        let daemon = Process::builder()
            .daemon(true)
            .start_method(StartMethod::Spawn)
            .spawn(sleep_long, ())
            .unwrap();
        crate::init().unwrap();
        // The copy only calls `exit`, which runs the exit handlers (the point of the test).
        let pid = fork_then(|| std::process::exit(0)).unwrap();
        let pid = Pid::from_raw(pid);
        retry_on_intr(|| rustix::process::waitpid(pid, rustix::process::WaitOptions::empty()))
            .unwrap();
        let daemon_alive = daemon.is_alive();
        let server_alive = {
            let g = crate::process::state::lock();
            g.forkserver.as_ref().is_some_and(|fs| !fs.is_broken())
        };
        daemon.kill().unwrap();
        let _ = daemon.join();
        (daemon_alive, server_alive)
    }

    /// (Found by review: the copy's exit terminated our daemon children and shut our server down.)
    #[test]
    fn a_copy_forked_by_other_code_leaves_our_children_and_server_alone() {
        let (daemon, server) = join(start(StartMethod::Fork, a_copy_exits, ())).unwrap();
        assert!(daemon, "the copy's exit terminated our daemon child");
        assert!(server, "the copy's exit shut our fork server down");
    }

    fn where_and_what(key: String) -> (std::path::PathBuf, Option<String>) {
        (std::env::current_dir().unwrap(), std::env::var(key).ok())
    }

    const LATE: &str = "MULTIPROCESS_TEST_SET_AFTER_THE_SERVER_STARTED";

    /// In a forked child of the test process (single-threaded, so it may change its environment).
    fn moves_then_spawns(dir: std::path::PathBuf) -> Vec<(std::path::PathBuf, Option<String>)> {
        crate::init().unwrap(); // the fork server starts here, before the changes
        std::env::set_current_dir(&dir).unwrap();
        // A forked child of the test runs on a single thread, as `replace_environment` needs.
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        env.push((LATE.into(), "yes".into()));
        replace_environment(&env);
        let mut seen =
            vec![join(start(StartMethod::ForkServer, where_and_what, LATE.into())).unwrap()];
        env.pop();
        replace_environment(&env);
        std::env::set_current_dir("/").unwrap();
        seen.push(join(start(StartMethod::ForkServer, where_and_what, LATE.into())).unwrap());
        seen
    }

    #[test]
    fn fork_server_children_start_where_their_parent_is_now() {
        let dir = std::env::temp_dir().join(format!("mp-cwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let seen = join(start(StartMethod::Fork, moves_then_spawns, dir.clone()));
        std::fs::remove_dir(&dir).unwrap();
        let seen = seen.unwrap();
        assert_eq!(seen[0], (dir, Some("yes".into())));
        assert_eq!(seen[1], (std::path::PathBuf::from("/"), None));
    }
}
