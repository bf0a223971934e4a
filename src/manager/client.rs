//! A client's one connection to its manager, shared by every proxy and thread of the process.
//!
//! # Whoever waits, reads
//! Requests go out as soon as they are made, from any thread, without waiting for the answers
//! before them. There is no reader thread: a caller waiting for its answer reads the connection
//! itself if nobody else is reading, and keeps any answer that is not its own for its owner, whom
//! it wakes. When it has its own it stops reading and wakes the others, one of whom takes over. A
//! single-threaded client therefore pays one receive per call, with no thread hand-off (which
//! costs a cross-CPU wake-up on these machines); many threads share one connection with as many
//! requests in flight as they make.

use super::proto::{ObjectId, Op, Reply, Request, Response, Values};
use super::{ManagerError, RemoteError};
use crate::{Address, Connection};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The shared connection.
#[derive(Debug)]
pub(crate) struct Core {
    conn: Connection,
    pub(crate) address: Address,
    pub(crate) key: Vec<u8>,
    /// The process that made the connection: a forked child has a copy of this value, not of
    /// the connection's other end of things, and must connect on its own.
    pid: u32,
    next: AtomicU64,
    /// The longest a call waits for its answer, in microseconds (0: as long as it takes).
    timeout_us: AtomicU64,
    state: Mutex<Inbox>,
    arrived: Condvar,
    /// Objects this connection took a hold on for proxies inherited through `fork`.
    attached: Mutex<HashSet<ObjectId>>,
    /// How the server stores keys and values: the proxies encode them so.
    pub(crate) values: Values,
}

#[derive(Debug, Default)]
struct Inbox {
    /// A caller is reading the connection.
    reading: bool,
    /// Answers read by someone else for their owners.
    answers: HashMap<u64, Result<Reply, RemoteError>>,
    /// The connection ended (why), for every caller still waiting and every later one.
    dead: Option<String>,
    /// Calls whose callers gave up (their deadline passed): their answers are dropped.
    abandoned: HashSet<u64>,
}

impl Core {
    /// The connection `conn` to the manager at `address`, once the server has said how it
    /// stores values (the `Hello` exchange, the first on every connection).
    pub(crate) fn open(
        conn: Connection,
        address: Address,
        key: Vec<u8>,
    ) -> Result<Core, ManagerError> {
        let gone = |e: &dyn std::fmt::Display| ManagerError::Disconnected(e.to_string());
        conn.send_bytes(super::proto::hello())
            .map_err(|e| gone(&e))?;
        let answer = conn.recv_bytes().map_err(|e| gone(&e))?;
        // A pickle (CPython's server answers what it cannot read with a `#TRACEBACK`).
        if answer.first() == Some(&0x80) {
            return Err(ManagerError::Decode(
                "this server speaks only Python's manager protocol (a CPython manager): connect \
                 to it with manager::python::PythonManager"
                    .into(),
            ));
        }
        let response =
            crate::codec::decode::<Response>(&answer, Vec::new()).map_err(ManagerError::Decode)?;
        let values = match response {
            Response {
                id: 0,
                result: Ok(Reply::Values(v)),
            } => v,
            other => {
                return Err(ManagerError::Decode(format!(
                    "the server did not answer the manager's first request: {other:?}"
                )));
            }
        };
        Ok(Core {
            values,
            conn,
            address,
            key,
            pid: std::process::id(),
            next: AtomicU64::new(1),
            timeout_us: AtomicU64::new(0),
            state: Mutex::new(Inbox::default()),
            arrived: Condvar::new(),
            attached: Mutex::default(),
        })
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a hold on `object` once for this connection (a proxy inherited through `fork`).
    pub(crate) fn attach_once(&self, object: ObjectId) -> Result<(), ManagerError> {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if attached.contains(&object) {
            return Ok(());
        }
        self.call(Op::Attach {
            object,
            expect: super::proto::Expect::Any,
        })?;
        attached.insert(object);
        Ok(())
    }

    /// Sets the longest a call waits for its answer (`None`: as long as it takes).
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        let us = timeout.map_or(0, |t| {
            u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        self.timeout_us.store(us, Ordering::Relaxed);
    }

    /// Whether this process made the connection (not a forked copy of one).
    pub(crate) fn in_this_process(&self) -> bool {
        self.pid == std::process::id()
    }

    fn check_process(&self) -> Result<(), ManagerError> {
        if self.pid != std::process::id() {
            return Err(ManagerError::WrongProcess);
        }
        Ok(())
    }

    /// Sends `op` and expects no answer (a release).
    pub(crate) fn tell(&self, op: Op) {
        if self.check_process().is_ok() {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let _ = self.conn.send(&Request { id, op });
        }
    }

    /// Sends `op` and waits for its answer (at most the connection's call timeout, if it has one:
    /// then [`ManagerError::Timeout`], and the answer, if it comes, is dropped).
    pub(crate) fn call(&self, op: Op) -> Result<Reply, ManagerError> {
        self.check_process()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = &self.inbox().dead {
            return Err(ManagerError::Disconnected(why.clone()));
        }
        let deadline = match self.timeout_us.load(Ordering::Relaxed) {
            0 => None,
            us => Instant::now().checked_add(Duration::from_micros(us)),
        };
        self.conn
            .send(&Request { id, op })
            .map_err(|e| ManagerError::Disconnected(e.to_string()))?;
        let mut inbox = self.inbox();
        loop {
            if let Some(r) = inbox.answers.remove(&id) {
                return r.map_err(ManagerError::Remote);
            }
            if let Some(why) = &inbox.dead {
                return Err(ManagerError::Disconnected(why.clone()));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                inbox.abandoned.insert(id);
                return Err(ManagerError::Timeout);
            }
            if inbox.reading {
                inbox = match left {
                    Some(left) => {
                        self.arrived
                            .wait_timeout(inbox, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => self.arrived.wait(inbox).unwrap_or_else(|p| p.into_inner()),
                };
                continue;
            }
            inbox.reading = true;
            drop(inbox);
            let got = match left {
                // Lossless: a message cut by the deadline is finished by the next reader.
                Some(left) => match self.conn.recv_timeout::<Response>(left) {
                    Ok(r) => Ok(Some(r)),
                    Err(crate::RecvTimeoutError::Timeout) => Ok(None),
                    Err(crate::RecvTimeoutError::Failed(e)) => Err(e),
                },
                None => self.conn.recv::<Response>().map(Some),
            };
            inbox = self.inbox();
            inbox.reading = false;
            match got {
                Ok(None) => {
                    // Someone else reads from now on (this caller's time is up).
                    self.arrived.notify_all();
                }
                Ok(Some(r)) if r.id == id => {
                    // Someone else reads from now on.
                    self.arrived.notify_all();
                    return r.result.map_err(ManagerError::Remote);
                }
                Ok(Some(r)) => {
                    if !inbox.abandoned.remove(&r.id) {
                        inbox.answers.insert(r.id, r.result);
                    }
                    self.arrived.notify_all();
                }
                Err(e) => {
                    let why = match e {
                        crate::RecvError::Eof => "the manager closed the connection".to_string(),
                        e => e.to_string(),
                    };
                    inbox.dead = Some(why.clone());
                    self.arrived.notify_all();
                    return Err(ManagerError::Disconnected(why));
                }
            }
        }
    }
}
