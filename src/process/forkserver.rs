//! The fork server: a clean, single-threaded copy of this program from which children are forked,
//! and which removes the named shared memory of its client when the client dies.
//!
//! # Why
//! Forking the caller directly (the *fork* start method) is fast but copies a process that may have
//! other threads, whose locks (the allocator's, stdout's, any `static Mutex`) stay locked forever in the
//! child. Re-executing the program (*spawn*) is clean but pays for `execve` and dynamic loading on every
//! child. The fork server pays that price once: it is a re-executed copy of this program that never
//! runs `main` (the crate's constructor diverts it, see `sys::entry`), never starts a thread, and forks a
//! child on request. Its children start from that clean, small image.
//!
//! # The children are not the server's
//! The server forks each child with `CLONE_PARENT` (`sys::SiblingForks`), so the child's parent is
//! the client, which reaps it through its pidfd exactly like a child it forked itself. Whatever
//! happens to the server (Ctrl-C or SIGTERM, which it ignores, as CPython's fork server and
//! resource tracker do; `kill -9`), every child's
//! outcome still reaches `join`. A server that died is reaped by the client and replaced on the next
//! request; one that cannot fork that way (a kernel that does not report glibc's thread-id address)
//! says so, and the client starts that child with *spawn* instead.
//!
//! A child forked from the server would otherwise start with the server's working directory,
//! environment and signal dispositions, those of the moment the server started. The client sends its
//! current ones with each child (`bootstrap::Fresh`), and the child takes them on before it runs.
//!
//! # Tracking names
//! A named `SharedMemory` belongs to its creator, which removes the name when it drops it; a creator
//! that is killed cannot. So the creator registers each name it creates with its server, together
//! with the identity of the region's object (device and inode; not its descriptor, so the server's
//! descriptor table does not limit how many it tracks), and unregisters it once removed. When the client's end of the socket
//! closes (the client ended, however it ended), the server removes every name still registered that
//! still names the registered object (the same inode: a name that was removed and created again by
//! someone else is left alone), then exits. Openers never register, so nobody's exit removes a name it
//! did not create, and nothing is reported as "leaked" (CPython's tracker warns for every region an
//! attaching process leaves behind).
//!
//! # Protocol
//! The client (this process) and the server share a socket pair, framed like every connection.
//! - `Spawn` with one descriptor, the child's end of its bootstrap socket: the server forks; the child
//!   moves that descriptor to fd 3, closes everything else of the server's, and bootstraps exactly like
//!   a *spawn* child (the client sends it the prelude, function and argument directly). The server
//!   answers `Spawned { pid }` with the child's pidfd, `Failed(reason)` or `Unsupported(reason)`.
//! - `Track { name, id }` and `Untrack { name, id }` (the object's device and inode): no answer.

use super::state;
use crate::connection::Connection;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a new server may take to say it is ready (it is one `exec` away).
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
enum ToServer {
    Spawn,
    /// A named region and the identity (device, inode) of its object.
    Track {
        name: String,
        id: (u64, u64),
    },
    Untrack {
        name: String,
        id: (u64, u64),
    },
}

#[derive(Serialize, Deserialize)]
enum FromServer {
    /// The first message: the server accepted its client (see `sys::entry::verify_parent`).
    Ready,
    Spawned {
        pid: i32,
    },
    Failed(String),
    Unsupported(String),
}

/// The client's handle on a running fork server, a child of this process.
pub(crate) struct ForkServer {
    /// `None` only while dropping. Sends are whole frames (the connection's own lock), so requests
    /// from several threads never interleave.
    conn: Option<Connection>,
    broken: AtomicBool,
    /// Held from a `Spawn` request to its answer, so that the answer read is this request's. `track`
    /// and `untrack` expect no answer and never wait for a fork.
    spawning: Mutex<()>,
    pid: i32,
    pidfd: OwnedFd,
}

fn protocol(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("fork server: {e}"))
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the fork server is gone")
}

impl ForkServer {
    /// Starts a fork server: `/proc/self/exe` re-executed with its end of a socket pair at fd 3, and
    /// waits until it runs (from then on it cleans up after us whenever we die).
    pub(crate) fn start() -> io::Result<ForkServer> {
        super::bootstrap::ensure_constructor_linked();
        // Tracked from the start, so that a concurrent fork keeps no copy of the server's end (which
        // would hide the server's death from us).
        let (mine, theirs) = crate::tracked::made(sys::socketpair)?;
        let conn = Connection::from_tracked_socket(mine);
        let pid = sys::spawn_self(
            theirs.as_fd(),
            super::bootstrap::BOOT_FD,
            super::bootstrap::FORKSERVER_ENV,
            "3",
        )?;
        drop(theirs);
        let pidfd = sys::pidfd_open(pid).inspect_err(|_| sys::kill_and_reap(pid))?;
        // From here on, dropping `server` (also on an error) reaps it.
        let server = ForkServer {
            conn: Some(conn),
            broken: AtomicBool::new(false),
            spawning: Mutex::new(()),
            pid,
            pidfd,
        };
        // Watching its pidfd: a server that dies before it is ready is an error, not a hang.
        let ready = server.conn()?.recv_frame_watching(
            crate::sync::futex::Wait::timeout(READY_WITHIN),
            None,
            Some(server.pidfd.as_fd()),
        );
        match ready.map(|f| crate::codec::decode::<FromServer>(&f.bytes, vec![])) {
            Ok(Ok(FromServer::Ready)) => Ok(server),
            Ok(_) => Err(protocol("a new fork server did not say it was ready")),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("a new fork server did not come up: {e}"),
            )),
        }
    }

    /// Whether the server stopped answering or died (a new one must be started).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
            || sys::wait_readable(self.pidfd.as_fd(), Some(Duration::ZERO)).unwrap_or(true)
    }

    fn conn(&self) -> io::Result<&Connection> {
        self.conn.as_ref().ok_or_else(gone)
    }

    /// Sends `msg` with `fds`; a failure marks the server broken.
    fn send(&self, msg: &ToServer, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let (bytes, _) = crate::codec::encode(msg).map_err(protocol)?;
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sent = self
            .conn()
            .and_then(|c| c.send_frame(&bytes, &raw).map_err(io::Error::from));
        if sent.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        sent
    }

    /// The next message from the server, whether all its descriptors arrived, and those that did; a
    /// failure marks the server broken.
    fn read(&self) -> io::Result<(FromServer, bool, Vec<OwnedFd>)> {
        match self.conn()?.recv_frame_keeping_bytes() {
            Ok((frame, complete)) => {
                let msg = crate::codec::decode(&frame.bytes, vec![]).map_err(protocol)?;
                Ok((msg, complete, frame.fds))
            }
            Err(e) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("fork server is gone: {e}"),
                ))
            }
        }
    }

    /// Asks the server to fork a child that will bootstrap from `child_end`. Returns its pid and
    /// pidfd: the child is a child of this process. `Unsupported` when the server cannot fork it so.
    pub(crate) fn spawn_child(&self, child_end: BorrowedFd<'_>) -> io::Result<(i32, OwnedFd)> {
        let _one = self.spawning.lock().unwrap_or_else(|p| p.into_inner());
        self.send(&ToServer::Spawn, &[child_end])?;
        let (msg, complete, mut fds) = self.read().inspect_err(|_| {
            // The server may have died between forking the child (ours) and telling us its pid:
            // find it by the socket it holds, and reap it.
            if let Some(pid) = sys::child_holding(child_end) {
                sys::kill_and_reap(pid);
            }
        })?;
        match msg {
            FromServer::Spawned { pid } => match fds.pop() {
                Some(pidfd) if complete => Ok((pid, pidfd)),
                // Our child, but its pidfd did not fit in our descriptor table.
                _ => {
                    sys::kill_and_reap(pid);
                    Err(sys::out_of_descriptors())
                }
            },
            FromServer::Failed(why) => Err(io::Error::other(format!("fork server: {why}"))),
            FromServer::Unsupported(why) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("fork server: {why}"),
            )),
            FromServer::Ready => Err(protocol("unexpected message")),
        }
    }

    /// Registers the named region `name`, whose object is `id`, for removal if this process dies.
    pub(crate) fn track(&self, name: &str, id: (u64, u64)) {
        if let Err(e) = self.send(
            &ToServer::Track {
                name: name.into(),
                id,
            },
            &[],
        ) {
            crate::trace::event!(
                warn,
                "the fork server was not told of {name:?} (a replacement will be): {e}"
            );
        }
    }

    /// Unregisters `name` (object `id`: it was removed).
    pub(crate) fn untrack(&self, name: &str, id: (u64, u64)) {
        if let Err(e) = self.send(
            &ToServer::Untrack {
                name: name.into(),
                id,
            },
            &[],
        ) {
            crate::trace::event!(
                debug,
                "the fork server was not told that {name:?} is gone: {e}"
            );
        }
    }
}

impl Drop for ForkServer {
    /// Closes the socket, which tells the server to clean up and exit, and reaps it: a server is
    /// never left a zombie. A server that does not exit within a few seconds is killed.
    fn drop(&mut self) {
        drop(self.conn.take());
        if !sys::wait_readable(self.pidfd.as_fd(), Some(Duration::from_secs(5))).unwrap_or(true) {
            crate::trace::event!(
                warn,
                "the fork server (pid {}) did not exit within 5 s: killed",
                self.pid
            );
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), sys::SIGKILL);
        }
        let _ = sys::waitid_pidfd(self.pidfd.as_fd(), false);
    }
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("pid", &self.pid)
            .finish()
    }
}

/// The server's main loop. Runs in the re-executed process, before `main`; never returns.
pub(crate) fn serve(conn: Connection) -> ! {
    // Before any child is forked from here (this process has one thread).
    super::bootstrap::install_panic_hook();
    // Ctrl-C goes to the whole foreground process group, and a supervisor may SIGTERM the whole
    // group: the server is not the user's to stop (it exits when its client does, after removing
    // the client's names), as CPython's fork server and resource tracker ignore these.
    let ignored = 1 << sys::SIGINT | 1 << sys::SIGTERM;
    sys::reset_signals(ignored);
    // Also blocked, so that one sent to a child we just forked, before it stops ignoring them,
    // waits for it (a blocked signal is kept pending even while ignored) instead of vanishing.
    sys::block_signals(ignored);
    let forks = sys::SiblingForks::prepare();
    // Identities, not descriptors: the server's descriptor table must not limit what it tracks.
    let mut tracked: Vec<(String, (u64, u64))> = Vec::new();
    send(&conn, &FromServer::Ready, &[]);
    loop {
        let (frame, complete) = match conn.recv_frame_keeping_bytes() {
            Ok(f) => f,
            Err(e) if e.is_disconnect() => {
                // The client is gone: its names go with it.
                for (name, id) in &tracked {
                    if sys::shm::name_refers_to(name, *id) {
                        let _ = sys::shm::unlink_named(name);
                    }
                }
                sys::exit_now(0)
            }
            // The stream cannot be followed any more; the client notices and starts another server,
            // which it tells its names again.
            Err(_) => sys::exit_now(1),
        };
        let mut fds = frame.fds;
        match crate::codec::decode::<ToServer>(&frame.bytes, vec![]) {
            Ok(ToServer::Spawn) => {
                let reply = match (&forks, fds.pop()) {
                    (Err(e), _) => FromServer::Unsupported(e.to_string()),
                    (Ok(_), _) if !complete => {
                        FromServer::Failed("the fork server's descriptor table is full".into())
                    }
                    (Ok(_), None) => {
                        FromServer::Failed("request without a bootstrap socket".into())
                    }
                    (Ok(forks), Some(child_end)) => match fork_child(forks, child_end) {
                        Ok((pid, pidfd)) => {
                            send(&conn, &FromServer::Spawned { pid }, &[pidfd.as_raw_fd()]);
                            continue;
                        }
                        Err(e) => FromServer::Failed(e.to_string()),
                    },
                };
                send(&conn, &reply, &[]);
            }
            Ok(ToServer::Track { name, id }) => tracked.push((name, id)),
            Ok(ToServer::Untrack { name, id }) => {
                if let Some(i) = tracked.iter().position(|(n, i)| *n == name && *i == id) {
                    tracked.swap_remove(i);
                }
            }
            Err(_) => send(&conn, &FromServer::Failed("malformed request".into()), &[]),
        }
    }
}

fn fork_child(forks: &sys::SiblingForks, child_end: OwnedFd) -> io::Result<(i32, OwnedFd)> {
    forks.fork(|| {
        // In the child: keep only stdio and the bootstrap socket (at fd 3), and stop ignoring
        // SIGINT and SIGTERM (the client's dispositions arrive with the bootstrap message), then
        // unblock them: one already sent to us acts now.
        sys::reset_signals(0);
        if sys::dup2(child_end.as_fd(), super::bootstrap::BOOT_FD).is_err() {
            sys::exit_now(super::bootstrap::EXIT_BOOT_FAILED);
        }
        std::mem::forget(child_end); // closed by close_from below (it is numbered above 3)
        sys::close_from(super::bootstrap::BOOT_FD + 1);
        super::bootstrap::boot_from_fd(super::bootstrap::BOOT_FD)
    })
}

fn send(conn: &Connection, msg: &FromServer, fds: &[std::os::fd::RawFd]) {
    if let Ok((bytes, _)) = crate::codec::encode(msg)
        && conn.send_frame(&bytes, fds).is_err()
    {
        sys::exit_now(0); // the client is gone
    }
}

/// Registers a named region created by this process with its fork server (starting one if needed),
/// so that the name is removed if this process dies. Best effort: without a server (none can be
/// started here), the name is only removed by its owner's drop.
pub(crate) fn track(name: &str, region: &std::sync::Arc<sys::shm::Region>) {
    let Ok(server) = super::forkserver_handle() else {
        return;
    };
    server.track(name, region.id());
    state::lock().tracked.push(state::Tracked {
        name: name.to_string(),
        id: region.id(),
        region: std::sync::Arc::downgrade(region),
    });
}

/// Unregisters a name this process created (object `id`) and has just removed.
pub(crate) fn untrack(name: &str, id: (u64, u64)) {
    let server = {
        let mut g = state::lock();
        if let Some(i) = g.tracked.iter().position(|t| t.name == name && t.id == id) {
            g.tracked.swap_remove(i);
        }
        g.forkserver.clone()
    };
    if let Some(server) = server {
        server.untrack(name, id);
    }
}
