//! The fork server: a clean, single-threaded copy of this program from which children are forked.
//!
//! # Why
//! Forking the caller directly (the *fork* start method) is fast but copies a process that may have
//! other threads, whose locks (the allocator's, stdout's, any `static Mutex`) stay locked forever in the
//! child. Re-executing the program (*spawn*) is clean but pays for `execve` and dynamic loading on every
//! child. The fork server pays that price once: it is a re-executed copy of this program that never
//! runs `main` (the crate's constructor diverts it, see `sys::entry`), never starts a thread, and forks a
//! child on request. Its children start from that clean, small image.
//!
//! # Protocol
//! The client (this process) and the server share a socket pair, framed like every connection.
//! - client → server: `Spawn`, with one descriptor: the child's end of its bootstrap socket. The server
//!   forks; the child moves that descriptor to fd 3, closes everything else of the server's, and
//!   bootstraps exactly like a *spawn* child (the client sends it the function and argument directly).
//! - server → client: `Spawned { pid, id }` with the child's pidfd, or `Failed(reason)`; and, whenever
//!   a child ends, `Exited { id, status }` (the server is the children's parent, so only it can reap
//!   them). Children are named by `id`, never by pid: a pid can be reused once its child is reaped.
//!   The client stashes statuses until someone asks for them.
//!
//! The server exits when the client's end closes (the client process ended). Children do not depend on
//! the server: each is tied to the client by its own lifeline pipe.

use crate::connection::Connection;
use crate::sys::{self, WaitStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

#[derive(Serialize, Deserialize)]
enum ToServer {
    Spawn,
}

#[derive(Serialize, Deserialize)]
enum FromServer {
    /// `id` names the child in later messages (pids get reused; ids do not).
    Spawned {
        pid: i32,
        id: u64,
    },
    Failed(String),
    Exited {
        id: u64,
        status: i32,
    },
}

/// The client's handle on a running fork server.
pub(crate) struct ForkServer {
    io: Mutex<Client>,
}

struct Client {
    conn: Connection,
    stash: HashMap<u64, WaitStatus>,
    broken: bool,
}

fn protocol(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("fork server: {e}"))
}

impl ForkServer {
    /// Starts a fork server: `/proc/self/exe` re-executed with its end of a socket pair at fd 3.
    pub(crate) fn start() -> io::Result<ForkServer> {
        sys::entry::ensure_constructor_linked();
        let (mine, theirs) = sys::socketpair()?;
        sys::spawn_self(
            theirs.as_fd(),
            super::bootstrap::BOOT_FD,
            super::bootstrap::FORKSERVER_ENV,
            "3",
        )?;
        drop(theirs);
        let conn = Connection::from_socket(mine);
        Ok(ForkServer {
            io: Mutex::new(Client {
                conn,
                stash: HashMap::new(),
                broken: false,
            }),
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the server stopped answering (a new one must be started).
    pub(crate) fn is_broken(&self) -> bool {
        self.client().broken
    }

    /// Asks the server to fork a child that will bootstrap from `child_end`. Returns its pid, pidfd,
    /// and the id under which the server will report its exit.
    pub(crate) fn spawn_child(&self, child_end: BorrowedFd<'_>) -> io::Result<(i32, OwnedFd, u64)> {
        let mut c = self.client();
        let (bytes, _) = crate::codec::encode(&ToServer::Spawn).map_err(protocol)?;
        use std::os::fd::AsRawFd;
        if let Err(e) = c.conn.send_frame(&bytes, &[child_end.as_raw_fd()]) {
            c.broken = true;
            return Err(io::Error::from(e));
        }
        loop {
            match c.read()? {
                (FromServer::Spawned { pid, id }, mut fds) => {
                    let pidfd = fds
                        .pop()
                        .ok_or_else(|| protocol("Spawned without a pidfd"))?;
                    return Ok((pid, pidfd, id));
                }
                (FromServer::Failed(why), _) => {
                    return Err(io::Error::other(format!("fork server: {why}")));
                }
                (FromServer::Exited { id, status }, _) => {
                    c.stash.insert(id, WaitStatus::from_raw(status));
                }
            }
        }
    }

    /// The exit status of child `id`, which has ended (its pidfd is readable), as the server reports
    /// it. Each status is reported once; the caller (`ChildEntry::reap`) asks for each id once.
    pub(crate) fn wait_status(&self, id: u64) -> io::Result<WaitStatus> {
        let mut c = self.client();
        loop {
            if let Some(s) = c.stash.remove(&id) {
                return Ok(s);
            }
            match c.read()? {
                (FromServer::Exited { id, status }, _) => {
                    c.stash.insert(id, WaitStatus::from_raw(status));
                }
                _ => return Err(protocol("unexpected message")),
            }
        }
    }
}

impl Client {
    fn read(&mut self) -> io::Result<(FromServer, Vec<OwnedFd>)> {
        match self.conn.recv_frame(None, None) {
            Ok(frame) => {
                let msg = crate::codec::decode(&frame.bytes, vec![]).map_err(protocol)?;
                Ok((msg, frame.fds))
            }
            Err(e) => {
                self.broken = true;
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("fork server is gone: {e}"),
                ))
            }
        }
    }
}

/// The server's main loop. Runs in the re-executed process, before `main`; never returns.
pub(crate) fn serve(conn: Connection) -> ! {
    let mut children: Vec<(u64, OwnedFd)> = Vec::new();
    let mut next_id = 0u64;
    loop {
        let ready = {
            let mut fds = vec![conn.as_fd()];
            fds.extend(children.iter().map(|(_, p)| p.as_fd()));
            match sys::poll_readable(&fds, None) {
                Ok(r) => r,
                Err(_) => sys::exit_now(1),
            }
        };
        // Reap first, so that statuses are reported in order of death.
        let mut i = children.len();
        while i > 0 {
            i -= 1;
            if ready[i + 1] {
                let (id, pidfd) = children.swap_remove(i);
                if let Ok(Some(st)) = sys::waitid_pidfd(pidfd.as_fd(), false) {
                    send(
                        &conn,
                        &FromServer::Exited {
                            id,
                            status: st.to_raw(),
                        },
                        &[],
                    );
                }
            }
        }
        if ready[0] {
            let frame = match conn.recv_frame(None, None) {
                Ok(f) => f,
                Err(_) => sys::exit_now(0), // the client is gone
            };
            let Ok(ToServer::Spawn) = crate::codec::decode::<ToServer>(&frame.bytes, vec![]) else {
                send(&conn, &FromServer::Failed("malformed request".into()), &[]);
                continue;
            };
            let mut fds = frame.fds;
            let Some(child_end) = fds.pop() else {
                send(
                    &conn,
                    &FromServer::Failed("request without a bootstrap socket".into()),
                    &[],
                );
                continue;
            };
            match fork_child(child_end) {
                Ok((pid, mine, theirs)) => {
                    use std::os::fd::AsRawFd;
                    next_id += 1;
                    let id = next_id;
                    send(
                        &conn,
                        &FromServer::Spawned { pid, id },
                        &[theirs.as_raw_fd()],
                    );
                    children.push((id, mine));
                }
                Err(e) => send(&conn, &FromServer::Failed(e.to_string()), &[]),
            }
        }
    }
}

fn fork_child(child_end: OwnedFd) -> io::Result<(i32, OwnedFd, OwnedFd)> {
    let pid = sys::fork_then(|| {
        // In the child: keep only stdio and the bootstrap socket (at fd 3).
        if sys::dup2(child_end.as_fd(), super::bootstrap::BOOT_FD).is_err() {
            sys::exit_now(super::bootstrap::EXIT_BOOT_FAILED);
        }
        std::mem::forget(child_end); // closed by close_from below (it is numbered above 3)
        sys::close_from(super::bootstrap::BOOT_FD + 1);
        super::bootstrap::boot_from_fd(super::bootstrap::BOOT_FD)
    })?;
    let mine = sys::pidfd_open(pid)?;
    let theirs = sys::dup_cloexec(mine.as_fd(), 0)?;
    Ok((pid, mine, theirs))
}

fn send(conn: &Connection, msg: &FromServer, fds: &[std::os::fd::RawFd]) {
    if let Ok((bytes, _)) = crate::codec::encode(msg)
        && conn.send_frame(&bytes, fds).is_err()
    {
        sys::exit_now(0); // the client is gone
    }
}
