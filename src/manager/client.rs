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

use super::proto::{ObjectId, Op, Reply, Request, Response};
use super::{ManagerError, RemoteError};
use crate::{Address, Connection};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

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
    state: Mutex<Inbox>,
    arrived: Condvar,
    /// Objects this connection took a hold on for proxies inherited through `fork`.
    attached: Mutex<HashSet<ObjectId>>,
}

#[derive(Debug, Default)]
struct Inbox {
    /// A caller is reading the connection.
    reading: bool,
    /// Answers read by someone else for their owners.
    answers: HashMap<u64, Result<Reply, RemoteError>>,
    /// The connection ended (why), for every caller still waiting and every later one.
    dead: Option<String>,
}

impl Core {
    pub(crate) fn new(conn: Connection, address: Address, key: Vec<u8>) -> Core {
        Core {
            conn,
            address,
            key,
            pid: std::process::id(),
            next: AtomicU64::new(1),
            state: Mutex::new(Inbox::default()),
            arrived: Condvar::new(),
            attached: Mutex::default(),
        }
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
        self.call(Op::Attach { object })?;
        attached.insert(object);
        Ok(())
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

    /// Sends `op` and waits for its answer.
    pub(crate) fn call(&self, op: Op) -> Result<Reply, ManagerError> {
        self.check_process()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = &self.inbox().dead {
            return Err(ManagerError::Disconnected(why.clone()));
        }
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
            if inbox.reading {
                inbox = self.arrived.wait(inbox).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            inbox.reading = true;
            drop(inbox);
            let got = self.conn.recv::<Response>();
            inbox = self.inbox();
            inbox.reading = false;
            match got {
                Ok(r) if r.id == id => {
                    // Someone else reads from now on.
                    self.arrived.notify_all();
                    return r.result.map_err(ManagerError::Remote);
                }
                Ok(r) => {
                    inbox.answers.insert(r.id, r.result);
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
