//! `Queue` and `JoinableQueue` on a broker: a Redis stream per queue, read through one consumer
//! group, so that each item goes to one consumer.
//!
//! - `put` is one atomic script: check the bound (`XLEN` against `maxsize`), `XADD`, and count the
//!   item unfinished (for `JoinableQueue`). A bounded queue's put that finds it full waits and
//!   tries again.
//! - `get` reads one item for this handle's consumer (`XREADGROUP COUNT 1`, blocking in slices
//!   of at most a second, so a deadline is kept and a broker that went away is noticed), then
//!   acknowledges and deletes it in one transaction. An item read by a consumer that died before
//!   that transaction stays pending in the group; other consumers take it over once it has been
//!   idle for the broker's lease (`XAUTOCLAIM`), so it is delivered again, not lost.
//! - Items are authenticated entries (as the pool's are) under the queue's key: a stranger with
//!   access to the broker cannot slip an item in. The queue's item type is recorded in the broker
//!   when the queue is made; a handle for another type is refused.
//! - What is lost when the broker dies: what its persistence had not written (with
//!   `appendfsync everysec`, up to about a second of puts and gets).

use super::entry::{self, Kind};
use super::link::{Link, is_nogroup};
use super::{Broker, ClusterError, unique_name};
use crate::sync::futex::Wait;
use redis::streams::StreamReadReply;
use redis::{RedisResult, Value};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a put or get keeps trying while the broker cannot be reached, before failing.
const PATIENCE: Duration = Duration::from_secs(10);
/// The group every consumer of a queue reads through.
const GROUP: &str = "g";

const PUT: &str = r"
local max = tonumber(ARGV[2])
if max > 0 and redis.call('XLEN', KEYS[1]) >= max then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
redis.call('INCR', KEYS[2])
return 1
";

const TASK_DONE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 0 then return -1 end
return redis.call('DECR', KEYS[1])
";

/// What a broker queue handle is made from, and travels as to another process.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct QueueRef {
    url: String,
    name: String,
    key: ByteBuf,
    maxsize: u64,
    /// The fingerprint of the item type.
    item: u64,
    /// An item read and not acknowledged for this long (ms) belongs to a consumer that died.
    orphan_ms: u64,
}

/// Why a broker queue operation did nothing.
#[derive(Debug)]
pub(crate) enum QFail {
    /// Full (put) or empty (get), when not waiting (longer).
    WouldBlock,
    /// The broker could not be reached, or refused.
    Broker(String),
    /// An entry that is not an item of this queue (taken and dropped).
    Corrupt(String),
}

pub(crate) struct BrokerQueue {
    r: QueueRef,
    stream: String,
    unfinished: String,
    /// This process's consumer name, and the pid it was made for (a forked child makes its own).
    consumer: Mutex<(i32, String)>,
    /// Connections not in use (each operation takes one, so that a blocking get does not hold
    /// up a put, a `len` or another thread's get).
    links: Links,
    last_len: AtomicU64,
    last_claim: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for BrokerQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerQueue")
            .field("name", &self.r.name)
            .field("url", &super::redact(&self.r.url))
            .finish()
    }
}

impl BrokerQueue {
    /// The queue named by `broker`'s pool name (made if it is not there) for items of type
    /// fingerprint `item`, holding at most `maxsize` items (0: unbounded).
    pub(crate) fn create(
        broker: &Broker,
        maxsize: usize,
        item: u64,
    ) -> Result<BrokerQueue, ClusterError> {
        let (_, key) = broker.ready()?;
        BrokerQueue::open(
            QueueRef {
                url: broker.url.clone(),
                name: broker.pool.clone(),
                key: ByteBuf::from(key),
                maxsize: maxsize as u64,
                item,
                orphan_ms: broker.lease.as_millis() as u64,
            },
            item,
        )
    }

    /// A handle of the queue `r` names, for items of type fingerprint `item`.
    pub(crate) fn open(r: QueueRef, item: u64) -> Result<BrokerQueue, ClusterError> {
        let r = QueueRef { item, ..r };
        let broker = Broker::redis(&r.url, &r.name).authkey(&r.key);
        broker.ready()?;
        let prefix = format!("mq:{{{}}}:", r.name);
        let stream = format!("{prefix}q");
        let link = || Link::new(&r.url, Duration::from_secs(5)).map_err(|e| broker.error(e));
        let mut put = link()?;
        let stored: String = put
            .run(|c| {
                let made: RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query(c);
                match made {
                    Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
                    _ => {}
                }
                let (set, stored): (Option<String>, String) = redis::pipe()
                    .cmd("SET")
                    .arg(format!("{prefix}type"))
                    .arg(format!("{} {}", r.item, r.maxsize))
                    .arg("NX")
                    .cmd("GET")
                    .arg(format!("{prefix}type"))
                    .query(c)?;
                let _ = set;
                Ok(stored)
            })
            .map_err(|e| broker.error(e))?;
        let mut f = stored.split(' ');
        let (item, maxsize) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if item != r.item.to_string() {
            return Err(broker.error(format!(
                "the queue {:?} was made for another item type (fingerprint {item}, this handle's is {})",
                r.name, r.item
            )));
        }
        let r = QueueRef {
            maxsize: maxsize.parse().unwrap_or(r.maxsize),
            ..r
        };
        Ok(BrokerQueue {
            stream,
            unfinished: format!("{prefix}u"),
            consumer: Mutex::new((crate::sys::getpid(), unique_name())),
            links: Links {
                url: r.url.clone(),
                idle: Mutex::new(vec![put]),
            },
            last_len: AtomicU64::new(0),
            last_claim: Mutex::new(None),
            r,
        })
    }

    /// This process's consumer name.
    fn consumer(&self) -> String {
        let mut c = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != crate::sys::getpid() {
            *c = (crate::sys::getpid(), unique_name());
        }
        c.1.clone()
    }

    pub(crate) fn to_ref(&self) -> QueueRef {
        self.r.clone()
    }

    pub(crate) fn maxsize(&self) -> Option<usize> {
        (self.r.maxsize > 0).then_some(self.r.maxsize as usize)
    }

    /// The items in the queue (the last count the broker gave, when it cannot be reached now).
    pub(crate) fn len(&self) -> usize {
        if let Ok(mut link) = self.links.take()
            && let Ok(n) = link.run(|c| redis::cmd("XLEN").arg(&self.stream).query::<u64>(c))
        {
            self.last_len.store(n, Ordering::Relaxed);
        }
        self.last_len.load(Ordering::Relaxed) as usize
    }

    /// An item's entry: the queue's name, a NUL, the item (all under the MAC).
    fn item_entry(&self, item: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.r.name.len() + 1 + item.len());
        body.extend_from_slice(self.r.name.as_bytes());
        body.push(0);
        body.extend_from_slice(item);
        entry::encode_raw(Kind::Item, super::build_id(), &self.r.key, &body)
    }

    /// Puts one encoded item, waiting for room as `wait` allows.
    pub(crate) fn put(&self, item: &[u8], wait: Wait) -> Result<(), QFail> {
        if item.len() > entry::MAX_ENTRY - 256 {
            return Err(QFail::Broker(format!(
                "an item of a queue on a broker is at most {} bytes, this one is {}",
                entry::MAX_ENTRY - 256,
                item.len()
            )));
        }
        let e = self.item_entry(item);
        let mut link = self.links.take()?;
        let mut pause = Duration::from_millis(1);
        let mut failing_since: Option<Instant> = None;
        loop {
            let r: RedisResult<i64> = link.run(|c| {
                redis::cmd("EVAL")
                    .arg(PUT)
                    .arg(2)
                    .arg(&self.stream)
                    .arg(&self.unfinished)
                    .arg(&e[..])
                    .arg(self.r.maxsize)
                    .query(c)
            });
            match r {
                Ok(1) => return Ok(()),
                Ok(_) => failing_since = None,
                Err(err) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > PATIENCE || matches!(wait, Wait::Never) {
                        return Err(QFail::Broker(err.to_string()));
                    }
                }
            }
            if !sleep_until(wait, pause) {
                return Err(QFail::WouldBlock);
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Takes one item, waiting as `wait` allows.
    pub(crate) fn get(&self, wait: Wait) -> Result<Vec<u8>, QFail> {
        let consumer = self.consumer();
        let mut link = self.links.take()?;
        let mut failing_since: Option<Instant> = None;
        loop {
            let block = match wait {
                Wait::Never => None,
                Wait::Forever => Some(1000),
                Wait::Until(d) => Some(
                    d.saturating_duration_since(Instant::now())
                        .as_millis()
                        .clamp(1, 1000) as u64,
                ),
            };
            let got = self.orphan(&mut link, &consumer).or_else(|| {
                let r: RedisResult<Option<StreamReadReply>> = link.run(|c| {
                    let mut cmd = redis::cmd("XREADGROUP");
                    cmd.arg("GROUP")
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(1);
                    if let Some(ms) = block {
                        cmd.arg("BLOCK").arg(ms);
                    }
                    cmd.arg("STREAMS").arg(&self.stream).arg(">").query(c)
                });
                Some(r.map(|r| {
                    r.and_then(|r| r.keys.into_iter().flat_map(|k| k.ids).next())
                        .map(|e| (e.id, e.map))
                }))
            });
            match got {
                Some(Ok(Some((id, map)))) => {
                    let done: RedisResult<()> = link.run(|c| {
                        redis::pipe()
                            .atomic()
                            .cmd("XACK")
                            .arg(&self.stream)
                            .arg(GROUP)
                            .arg(&id)
                            .ignore()
                            .cmd("XDEL")
                            .arg(&self.stream)
                            .arg(&id)
                            .ignore()
                            .query(c)
                    });
                    if let Err(e) = done {
                        // Not acknowledged: it stays pending to this consumer and is taken over
                        // after ORPHAN_AFTER; the item is handed out now all the same.
                        crate::trace::event!(
                            warn,
                            "a broker queue could not acknowledge {id}: {e}"
                        );
                    }
                    let item = entry::field(&map)
                        .and_then(|m| entry::check(m, Kind::Item, &self.r.key))
                        .map_err(|e| QFail::Corrupt(format!("entry {id}: {e}")))?;
                    // Bound to this queue: an item copied from another queue under the same key
                    // is refused, not decoded as this queue's type.
                    return item
                        .raw()
                        .strip_prefix(self.r.name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"\0"))
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| {
                            QFail::Corrupt(format!("entry {id} is an item of another queue"))
                        });
                }
                Some(Ok(None)) | None => failing_since = None,
                Some(Err(e)) if is_nogroup(&e) => {
                    let _ = link.run(|c| super::link::ensure_group_named(c, &self.stream, GROUP));
                }
                Some(Err(e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > PATIENCE || matches!(wait, Wait::Never) {
                        return Err(QFail::Broker(e.to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if matches!(wait, Wait::Never) || wait.deadline().is_some_and(|d| Instant::now() >= d) {
                return Err(QFail::WouldBlock);
            }
        }
    }

    /// An item a dead consumer read and never acknowledged (looked for once a second).
    #[allow(clippy::type_complexity)]
    fn orphan(
        &self,
        link: &mut Link,
        consumer: &str,
    ) -> Option<RedisResult<Option<(String, std::collections::HashMap<String, Value>)>>> {
        {
            let mut last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let r: RedisResult<redis::streams::StreamAutoClaimReply> = link.run(|c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(self.r.orphan_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(c)
        });
        match r {
            Ok(reply) => reply
                .claimed
                .into_iter()
                .next()
                .map(|e| Ok(Some((e.id, e.map)))),
            Err(_) => None,
        }
    }

    /// Marks one item done; false if none is unfinished.
    pub(crate) fn task_done(&self) -> Result<bool, String> {
        let Ok(mut link) = self.links.take() else {
            return Err("the broker could not be reached".into());
        };
        link.run(|c| {
            redis::cmd("EVAL")
                .arg(TASK_DONE)
                .arg(1)
                .arg(&self.unfinished)
                .query::<i64>(c)
        })
        .map(|n| n >= 0)
        .map_err(|e| e.to_string())
    }

    pub(crate) fn unfinished(&self) -> usize {
        let Ok(mut link) = self.links.take() else {
            return 0;
        };
        link.run(|c| {
            redis::cmd("GET")
                .arg(&self.unfinished)
                .query::<Option<i64>>(c)
        })
        .ok()
        .flatten()
        .unwrap_or(0)
        .max(0) as usize
    }

    /// Waits until no item is unfinished; false at the deadline.
    pub(crate) fn join(&self, wait: Wait) -> bool {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.unfinished() == 0 {
                return true;
            }
            if !sleep_until(wait, pause) {
                return false;
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerQueue {
    /// Leaves the group if this handle's consumer holds nothing (what it holds stays, for others
    /// to take over).
    fn drop(&mut self) {
        let consumer = self.consumer();
        let Ok(mut link) = self.links.take() else {
            return;
        };
        let _ = link.run(|c| {
            let mine: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&consumer)
                .query(c)?;
            if mine.ids.is_empty() {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&consumer)
                    .query::<()>(c)?;
            }
            Ok(())
        });
    }
}

/// A queue handle's idle connections.
struct Links {
    url: String,
    idle: Mutex<Vec<Link>>,
}

/// A connection taken from [`Links`], given back when dropped.
struct Taken<'a> {
    links: &'a Links,
    link: Option<Link>,
}

impl Links {
    /// An idle connection, or a new one. Never waits on another thread: the list is only
    /// tried (a `Fork` child of a process whose other thread held it would wait for ever).
    fn take(&self) -> Result<Taken<'_>, QFail> {
        let idle = self.idle.try_lock().ok().and_then(|mut v| v.pop());
        let link = match idle {
            Some(l) => l,
            None => Link::new(&self.url, Duration::from_secs(5))
                .map_err(|e| QFail::Broker(e.to_string()))?,
        };
        Ok(Taken {
            links: self,
            link: Some(link),
        })
    }
}

impl std::ops::Deref for Taken<'_> {
    type Target = Link;
    fn deref(&self) -> &Link {
        self.link
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken until dropped"))
    }
}

impl std::ops::DerefMut for Taken<'_> {
    fn deref_mut(&mut self) -> &mut Link {
        self.link
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken until dropped"))
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let (Some(link), Ok(mut idle)) = (self.link.take(), self.links.idle.try_lock())
            && idle.len() < 4
        {
            idle.push(link);
        }
    }
}

/// Sleeps `pause` (less if the deadline is nearer); false if the deadline has passed or there is
/// none to wait for (`Never`).
fn sleep_until(wait: Wait, pause: Duration) -> bool {
    match wait {
        Wait::Never => false,
        Wait::Forever => {
            std::thread::sleep(pause);
            true
        }
        Wait::Until(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(pause.min(left));
            true
        }
    }
}
