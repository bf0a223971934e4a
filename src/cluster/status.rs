//! What a pool on a broker looks like from outside: its workers, and its tasks queued, in flight,
//! reclaimed and lost (`multiprocess pool status`).

use super::link::Link;
use super::{Broker, ClusterError, GROUP, Keys};
use redis::streams::{StreamInfoConsumersReply, StreamPendingReply};
use redis::{Connection, RedisResult};
use std::time::Duration;

/// A worker process of a pool, as it described itself when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Its consumer name in the task stream's group (host, pid and a random part: unique to the
    /// process run).
    pub consumer: String,
    /// Its machine's host name.
    pub host: String,
    /// Its pid there.
    pub pid: u32,
    /// The processes of its local pool.
    pub processes: usize,
    /// Its program's build (hex).
    pub build: String,
    /// A fingerprint of its pool key (the first 8 bytes of an HMAC under it, hex): a worker
    /// whose key differs from a caller's cannot read that caller's tasks.
    pub key_id: String,
    /// Whether its heartbeat is current.
    pub alive: bool,
    /// The tasks it holds (delivered to it and not yet answered).
    pub pending: u64,
}

/// A pool's state on its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The pool's name.
    pub pool: String,
    /// Workers that registered (live or not yet cleaned up).
    pub workers: Vec<WorkerStatus>,
    /// Tasks on the stream that no worker has taken.
    pub queued: u64,
    /// Tasks delivered to a worker and not yet answered.
    pub in_flight: u64,
    /// Tasks taken from a lost worker by another, since the pool's stream was made.
    pub reclaimed: u64,
    /// Tasks failed as worker-lost (past their most deliveries).
    pub lost: u64,
    /// Consumers of the group whose heartbeat has stopped, with the tasks they still hold.
    pub dead_consumers: Vec<(String, u64)>,
}

/// The registered workers, with whether each heartbeat is current.
pub(crate) fn read_workers(c: &mut Connection, keys: &Keys) -> RedisResult<Vec<WorkerStatus>> {
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(keys.workers()).query(c)?;
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for (name, _) in &all {
        p.cmd("EXISTS").arg(keys.heartbeat(name));
    }
    let alive: Vec<bool> = p.query(c)?;
    Ok(all
        .into_iter()
        .zip(alive)
        .map(|((consumer, info), alive)| {
            let mut f = info.split(' ');
            let mut next = || f.next().unwrap_or("").to_string();
            let (build, host, pid, processes, key_id) = (next(), next(), next(), next(), next());
            WorkerStatus {
                consumer,
                host,
                pid: pid.parse().unwrap_or(0),
                // (Anyone who can write to the broker writes this: bounded.)
                processes: processes.parse::<usize>().unwrap_or(0).min(MAX_PROCESSES),
                build,
                key_id,
                alive,
                pending: 0,
            }
        })
        .collect())
}

/// The description a worker registers under its consumer name.
pub(crate) fn describe(build: &str, processes: usize, key_id: &str) -> String {
    format!(
        "{build} {} {} {processes} {key_id}",
        super::hostname(),
        std::process::id()
    )
}

/// The most processes a worker's description may claim.
pub(crate) const MAX_PROCESSES: usize = 4096;

/// Pool `pool`'s state on the broker at `url` (no key is needed: nothing secret is read).
///
/// # Examples
/// ```
/// use multiprocess::cluster::{self, Broker, Worker};
/// use std::time::Duration;
///
/// # let url = std::env::var("MP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
/// let worker = Worker::new(Broker::redis(&url, "doc-status").authkey("k")).processes(1).start()?;
/// let s = cluster::status(&url, "doc-status")?;
/// let me = s.workers.iter().find(|w| w.consumer == worker.consumer()).unwrap();
/// assert!(me.alive && me.processes == 1 && me.pid == std::process::id());
/// assert_eq!((s.queued, s.in_flight), (0, 0));
/// assert!(cluster::pools(&url)?.contains(&"doc-status".to_string()));
/// worker.stop(Duration::ZERO);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The broker could not be reached or answered with an error.
pub fn status(url: &str, pool: &str) -> Result<PoolStatus, ClusterError> {
    let broker = Broker::redis(url, pool).authkey("-");
    let (keys, _) = broker.ready()?;
    let mut link = Link::new(url, Duration::from_secs(5)).map_err(|e| broker.error(e))?;
    link.run(|c| {
        let mut workers = read_workers(c, &keys)?;
        let stream = keys.tasks();
        let (len, reclaimed, lost): (u64, Option<u64>, Option<u64>) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("GET")
            .arg(keys.reclaimed())
            .cmd("GET")
            .arg(keys.lost())
            .query(c)?;
        let (in_flight, consumers) = if len == 0 {
            (0, Vec::new())
        } else {
            let pending: RedisResult<StreamPendingReply> =
                redis::cmd("XPENDING").arg(&stream).arg(GROUP).query(c);
            let in_flight = match pending {
                Ok(p) => p.count() as u64,
                Err(e) if e.code() == Some("NOGROUP") => 0,
                Err(e) => return Err(e),
            };
            let consumers: RedisResult<StreamInfoConsumersReply> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(GROUP)
                .query(c);
            (
                in_flight,
                consumers.map(|r| r.consumers).unwrap_or_default(),
            )
        };
        let mut dead = Vec::new();
        for con in consumers {
            match workers.iter_mut().find(|w| w.consumer == con.name) {
                Some(w) => {
                    w.pending = con.pending as u64;
                    if !w.alive {
                        dead.push((con.name, con.pending as u64));
                    }
                }
                None => dead.push((con.name, con.pending as u64)),
            }
        }
        workers.sort_by(|a, b| (!a.alive, &a.consumer).cmp(&(!b.alive, &b.consumer)));
        Ok(PoolStatus {
            pool: pool.to_string(),
            workers,
            queued: len.saturating_sub(in_flight),
            in_flight,
            reclaimed: reclaimed.unwrap_or(0),
            lost: lost.unwrap_or(0),
            dead_consumers: dead,
        })
    })
    .map_err(|e| broker.error(e))
}

/// The names of the pools on the broker at `url` (those with a task stream).
///
/// # Errors
/// The broker could not be reached or answered with an error.
pub fn pools(url: &str) -> Result<Vec<String>, ClusterError> {
    let broker = Broker::redis(url, "-");
    let mut link = Link::new(url, Duration::from_secs(5)).map_err(|e| broker.error(e))?;
    let mut names: Vec<String> = link
        .run(|c| {
            let keys: Vec<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg("mp:{*}:t")
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter(c)?
                .collect::<RedisResult<Vec<String>>>()?;
            Ok(keys)
        })
        .map_err(|e| broker.error(e))?
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix("mp:{")?
                .strip_suffix("}:t")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}
