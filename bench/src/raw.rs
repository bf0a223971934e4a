//! Raw OS baselines: what the kernel costs with no library in the way.
//!
//! This is baseline *measurement* code, not library code: it calls `fork`, `waitpid` and `setsockopt`
//! directly so that `multiprocess` can be compared with the floor the OS sets, measured in the same run.
//! It is the only place in the harness that needs `unsafe`; every block says why it is sound. The CPU
//! affinity helpers at the end live here for the same reason: the pipe figures pin their two processes
//! to two CPUs; so does the parent-death signal that group `cluster` arms in the servers and workers it
//! starts.
//!
//! Children forked here only run `read`/`write` on a socket they were handed and then `_exit`, so they
//! never touch a lock another thread might have held at the fork, run no destructors and flush no
//! buffers of ours.

#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A child forked by this module. It is waited for by [`RawChild::wait`], or killed and reaped when
/// dropped, so none outlives its figure.
#[derive(Debug)]
pub(crate) struct RawChild {
    pid: Option<libc::pid_t>,
}

impl RawChild {
    /// Waits for the child; an error unless it exited with status 0.
    pub(crate) fn wait(mut self) -> io::Result<()> {
        match self.pid.take() {
            Some(pid) => waitpid_ok(pid),
            None => Ok(()),
        }
    }
}

impl Drop for RawChild {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: `pid` is our own unreaped child (reaping clears `self.pid`), so the signal cannot
            // reach an unrelated process that reused the number.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waitpid_ok(pid);
        }
    }
}

/// Waits for `pid` (retrying on `EINTR`); an error unless it exited with status 0.
fn waitpid_ok(pid: libc::pid_t) -> io::Result<()> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable `c_int` for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "raw child {pid} ended with wait status {status:#x}"
        )))
    }
}

/// `fork()` a child that does `_exit(0)` at once, then `waitpid()` for it: the floor under any
/// process start + join.
pub(crate) fn fork_exit_wait() -> io::Result<()> {
    // SAFETY: fork has no memory-safety preconditions. The child only calls `_exit`, which is
    // async-signal-safe and so sound in the child of a possibly multi-threaded process.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: see above; `_exit` ends the child without running any code of ours.
        0 => unsafe { libc::_exit(0) },
        pid => waitpid_ok(pid),
    }
}

/// Forks a child that runs `body` and then `_exit`s with its result (101 if it panicked).
/// `body` must restrict itself to system calls on descriptors it owns (see the module docs).
fn fork_with(body: impl FnOnce() -> i32) -> io::Result<RawChild> {
    // SAFETY: fork has no memory-safety preconditions. The callers' bodies only read and write sockets
    // (no allocation, no locks), which is sound in the child of a possibly multi-threaded process.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: `_exit` ends the child without unwinding into the parent's code or running its
            // destructors and exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(RawChild { pid: Some(pid) }),
    }
}

/// Forks a child that echoes 8-byte messages on `child_end` with plain `read`/`write` until end of
/// file. `parent_end` is the other end of the pair: the child closes its copy, the caller keeps it.
pub(crate) fn spawn_echo(parent_end: &UnixStream, child_end: UnixStream) -> io::Result<RawChild> {
    let parent_fd = parent_end.as_raw_fd();
    let child = fork_with(move || {
        close(parent_fd);
        let mut s = child_end;
        let mut buf = [0u8; 8];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return 0,
                Err(_) => return 1,
            }
            if s.write_all(&buf).is_err() {
                return 1;
            }
        }
    })?;
    Ok(child)
}

/// Forks a child that, for each 8-byte little-endian count `n` it reads on `child_end`, writes `n`
/// copies of `msg` with plain `write`; a count of 0 (or end of file) ends it. `msg` is allocated by the
/// caller, before the fork.
pub(crate) fn spawn_writer(
    parent_end: &UnixStream,
    child_end: UnixStream,
    msg: &[u8],
) -> io::Result<RawChild> {
    let parent_fd = parent_end.as_raw_fd();
    fork_with(move || {
        close(parent_fd);
        let mut s = child_end;
        let mut count = [0u8; 8];
        loop {
            if s.read_exact(&mut count).is_err() {
                return 0;
            }
            let n = u64::from_le_bytes(count);
            if n == 0 {
                return 0;
            }
            for _ in 0..n {
                if s.write_all(msg).is_err() {
                    return 1;
                }
            }
        }
    })
}

/// Forks a child that keeps one CPU busy (a loop without system calls) until it is killed, which
/// dropping the returned handle does.
pub(crate) fn spawn_burner() -> io::Result<RawChild> {
    fork_with(|| {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    })
}

/// Closes a descriptor inherited from the parent, in a forked child.
fn close(fd: i32) {
    // SAFETY: called only in a forked child on its copy of a descriptor the parent still owns; nothing
    // in the child uses `fd` afterwards (its `UnixStream` is never dropped: the child `_exit`s).
    unsafe { libc::close(fd) };
}

/// Sets `SO_SNDBUF` and `SO_RCVBUF` on `s` to `bytes` (the kernel caps them at `wmem_max`/`rmem_max`),
/// as `multiprocess::pipe()` does for its own sockets, so that raw throughput is measured like for like.
pub(crate) fn set_socket_buffers(s: &UnixStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `value` is a valid `c_int` that outlives the call, and the length passed is its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on (its affinity mask).
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain old data, for which all zeroes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable for the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: every index is below `CPU_SETSIZE`, inside the set.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts the calling thread (and so the children it forks from now on) to `cpus`.
pub(crate) fn set_allowed_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is plain old data, for which all zeroes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no CPU {cpu}"),
            ));
        }
        // SAFETY: `cpu` was just checked to be below `CPU_SETSIZE`, inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is valid and readable for the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child `cmd` starts receive `SIGKILL` when this process's main thread ends (Linux's
/// parent-death signal), so that a harness ended by a signal (Ctrl-C) leaves no redis-server or
/// worker of group `cluster` behind. Spawn `cmd` from the main thread: the signal follows the
/// thread that forked.
pub(crate) fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe calls
    // are sound: it makes two system calls (`prctl`, `getppid`) and allocates nothing (its errors
    // are raw OS codes).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
