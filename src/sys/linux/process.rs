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

use super::fd::cvt;

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
            // SAFETY: gettid cannot fail and touches no memory.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
    // SAFETY: as above (thread-local storage is being torn down: ask the kernel).
    .unwrap_or_else(|_| unsafe { libc::gettid() })
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

    /// Decodes a raw `wait` status word (as the fork server relays it).
    pub(crate) fn from_raw(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// Encodes as a raw `wait` status word.
    pub(crate) fn to_raw(self) -> i32 {
        match self {
            WaitStatus::Exited(c) => (c & 0xff) << 8,
            WaitStatus::Signaled(s) => s & 0x7f,
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
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // A panic must never unwind out of here: the frames above belong to the parent's code.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child))
            .unwrap_or(EXIT_PANIC_IN_FORK);
        exit_now(code);
    }
    Ok(pid)
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
    // SAFETY: file_actions is initialised before use and destroyed after; every pointer passed to
    // posix_spawn (path, argv, envp) refers to CStrings and vectors alive until it returns.
    unsafe {
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        let r = libc::posix_spawn_file_actions_init(actions.as_mut_ptr());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let mut actions = actions.assume_init();
        let mut r = libc::posix_spawn_file_actions_adddup2(&mut actions, src, target);
        if r == 0 {
            r = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                std::ptr::null(),
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawn_file_actions_destroy(&mut actions);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(pid)
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the process ends.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal`. Sending to a process that has exited but not been reaped succeeds; once
/// reaped it fails with `ESRCH`, never reaching a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: raw syscall with a valid descriptor, a signal number, a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reaps a child of this process through its pidfd. With `nohang`, returns `None` if it still runs.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<WaitStatus>> {
    loop {
        // SAFETY: siginfo_t is plain old data; zeroed is a valid initial value and waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: `info` is a writable siginfo_t; P_PIDFD takes the descriptor as the id.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid succeeded; si_pid/si_status are valid to read for SIGCHLD infos.
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            return Ok(None); // WNOHANG and still running
        }
        return Ok(Some(if code == libc::CLD_EXITED {
            WaitStatus::Exited(status)
        } else {
            WaitStatus::Signaled(status)
        }));
    }
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
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    unsafe {
        cvt(libc::fcntl(raw, libc::F_SETOWN, libc::getpid()))?;
        cvt(libc::fcntl(raw, F_SETSIG, libc::SIGKILL))?;
        // A fresh pipe read end has no status flags but O_RDONLY, which F_SETFL ignores.
        cvt(libc::fcntl(raw, libc::F_SETFL, libc::O_ASYNC))?;
    }
    // The parent may have died before O_ASYNC was set: then no signal comes, so look.
    Ok(!super::fd::wait_readable(
        fd,
        Some(std::time::Duration::ZERO),
    )?)
}

/// Duplicates `fd` onto exactly `target` (clearing close-on-exec there).
pub(crate) fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 with a valid source; `target` is a number this single-threaded process reserves.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
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
        // SAFETY: getdtablesize has no preconditions; close on a closed number is harmless (EBADF).
        let max = unsafe { libc::getdtablesize() };
        for fd in from..max {
            // SAFETY: as above.
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

/// `SIGTERM`, `SIGKILL` for the process API.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
pub(crate) const SIGKILL: i32 = libc::SIGKILL;
