//! One connection to the broker that comes back by itself: a command that fails for any reason
//! but the server's own answer (a refused connection, a reset, a timeout) drops the connection,
//! and the next command dials again. Every caller and worker thread owns one link, so no thread
//! waits behind another's blocking read.
//!
//! A link belongs to the process that dialled it. A child forked with a copy of it (a queue
//! handed to a `Fork` child is its parent's memory) would otherwise share the parent's socket, and
//! the two would read each other's replies; so the first command in another process dials anew,
//! leaving the parent's socket alone (forgotten, not closed or shut down).

use redis::{Client, Connection, RedisError, RedisResult};
use std::time::{Duration, Instant};

/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failed dials (so a broker that is down is not hammered).
const REDIAL_PAUSE: Duration = Duration::from_millis(100);

pub(crate) struct Link {
    client: Client,
    con: Option<Connection>,
    /// A socket read waits at most this (longer than any `BLOCK` this link sends).
    read_timeout: Duration,
    last_dial: Option<Instant>,
    /// The process that dialled `con`.
    pid: i32,
    /// When the last command succeeded (or the link was made).
    pub(crate) ok_at: Instant,
    /// When a command last failed for want of the broker.
    failed_at: Option<Instant>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.con.is_some())
            .finish()
    }
}

impl Link {
    pub(crate) fn new(url: &str, read_timeout: Duration) -> RedisResult<Link> {
        Ok(Link {
            client: Client::open(url)?,
            con: None,
            read_timeout,
            last_dial: None,
            pid: 0,
            ok_at: Instant::now(),
            failed_at: None,
        })
    }

    /// Runs `f` on the connection (dialling first if there is none).
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        if self.con.is_some() && self.pid != crate::sys::getpid() {
            std::mem::forget(self.con.take());
            self.last_dial = None;
        }
        if self.con.is_none() {
            if let Some(last) = self.last_dial {
                let since = last.elapsed();
                if since < REDIAL_PAUSE {
                    std::thread::sleep(REDIAL_PAUSE - since);
                }
            }
            self.last_dial = Some(Instant::now());
            let con = match self.client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                Ok(con) => con,
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(e);
                }
            };
            con.set_read_timeout(Some(self.read_timeout))?;
            con.set_write_timeout(Some(self.read_timeout))?;
            self.con = Some(con);
            self.pid = crate::sys::getpid();
        }
        let Some(con) = self.con.as_mut() else {
            unreachable!("dialled above")
        };
        match f(con) {
            Ok(v) => {
                self.ok_at = Instant::now();
                Ok(v)
            }
            Err(e) => {
                if !is_answer(&e) {
                    self.con = None;
                    self.failed_at = Some(Instant::now());
                } else {
                    self.ok_at = Instant::now();
                }
                Err(e)
            }
        }
    }

    /// Whether a command failed for want of the broker less than `within` ago (and none has
    /// succeeded since).
    pub(crate) fn down_lately(&self, within: std::time::Duration) -> bool {
        self.failed_at
            .is_some_and(|f| f > self.ok_at && f.elapsed() < within)
    }

    /// Whether a connection is open now.
    pub(crate) fn connected(&self) -> bool {
        self.con.is_some()
    }
}

/// Whether `e` is the server's own answer (the connection is fine).
pub(crate) fn is_answer(e: &RedisError) -> bool {
    e.code().is_some() && !e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout()
}

/// Whether `e` says the consumer group (or its stream) is gone: the broker lost its data.
pub(crate) fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Creates the task stream's group if it is not there (`MKSTREAM`; `BUSYGROUP` is fine).
pub(crate) fn ensure_group(con: &mut Connection, stream: &str) -> RedisResult<()> {
    ensure_group_named(con, stream, super::GROUP)
}

/// [`ensure_group`] for group `group`.
pub(crate) fn ensure_group_named(
    con: &mut Connection,
    stream: &str,
    group: &str,
) -> RedisResult<()> {
    let r: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        r => r,
    }
}
