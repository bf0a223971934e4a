//! `Pool` on a broker, with workers on many machines (feature `cluster`): Redis Streams with
//! consumer groups (Redis 6.2 or later, or Valkey).
//!
//! A program builds its pool with [`PoolBuilder::broker`](crate::PoolBuilder::broker) and calls
//! it as it calls a local pool: `apply`, `apply_async`, the maps, `imap`, chunk sizes, callbacks,
//! timeouts and cancellation. The same program, started anywhere with `MULTIPROCESS_WORKER` set
//! (or calling [`Worker::run`]), joins the pool as a worker and runs its tasks on a local pool of
//! its own, so a task that crashes still takes down only its process.
//!
//! ```no_run
//! use multiprocess::{Pool, cluster::Broker};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! // Workers: this same program, on any machine, started as
//! //   MULTIPROCESS_WORKER=squares MULTIPROCESS_BROKER=redis://broker:6379 \
//! //   MULTIPROCESS_AUTHKEY=secret ./program
//! let broker = Broker::redis("redis://broker:6379", "squares").authkey("secret");
//! let pool = Pool::builder().broker(broker).build()?;
//! assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same, whole, on one machine: a worker in this process's threads (its tasks still run in
//! processes of its own local pool), a caller, a map, and the pool's state as the broker sees it.
//! (The crate's tests point `MP_REDIS_URL` at a Redis server.)
//!
//! ```
//! use multiprocess::Pool;
//! use multiprocess::cluster::{self, Broker, Worker};
//! use std::time::Duration;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # let url = std::env::var("MP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
//! let broker = Broker::redis(&url, "doc-squares").authkey("secret");
//! let worker = Worker::new(broker.clone()).processes(2).start()?;
//! let pool = Pool::builder().broker(broker).processes(2).build()?;
//! assert_eq!(pool.map(square, 1..=100)?.iter().sum::<u64>(), 338_350);
//! let status = cluster::status(&url, "doc-squares")?;
//! assert!(status.workers.iter().any(|w| w.consumer == worker.consumer() && w.alive));
//! assert_eq!(pool.broker_stats().unwrap().outstanding, 0);
//! worker.stop(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is promised
//! - **At-least-once execution, each item's result delivered once.** A task runs at least once
//!   and may run more than once (after a worker was lost, or paused past its lease): write tasks
//!   whose repeats are harmless. The caller keeps the first result of each task and drops later
//!   ones, so a map never sees a duplicate.
//! - **Leases.** A worker renews the lease of every task it runs every third of the lease
//!   (`XCLAIM ... JUSTID`, which resets the idle time without counting a delivery). Workers look
//!   every half lease for tasks idle past it (`XPENDING ... IDLE`, then `XCLAIM`, which counts a
//!   delivery): a dead worker's tasks go to a live one. A task already handed out
//!   [`max_deliveries`](Broker::max_deliveries) times fails as [`TaskError::WorkerLost`] instead.
//! - **A result and its acknowledgement are one transaction** (`MULTI XADD XACK XDEL EXEC`): a
//!   task that left the stream has its result in the caller's stream, which is how a caller tells
//!   a finished task from one the broker lost.
//! - **The task stream is never trimmed by length** (MAXLEN drops delivered, unacknowledged
//!   tasks); tasks leave it only once answered.
//! - **A broker restart is survived.** Callers and workers reconnect. A broker that came back
//!   without its data (or lost its last second, under `appendfsync everysec`) has lost tasks: the
//!   caller notices (the pool's epoch key is gone, or a task it sent is no longer in the stream and
//!   its result is not in the caller's stream) and sends them again, so a `map` still completes.
//! - **No hang.** A caller that sees no live worker of its build for
//!   [`no_worker_timeout`](Broker::no_worker_timeout), or cannot reach the broker that long, fails
//!   its outstanding tasks with [`TaskError::NoWorkers`] or [`TaskError::Broker`].
//! - **Large payloads go beside the stream**: arguments or results over 1 MiB are stored as their
//!   own keys (with an expiry), so one big task does not stall the server's stream commands.
//! - **Only this program's tasks run.** Entries are authenticated with HMAC-SHA256 under the
//!   pool's key, and carry the executable's build ID. A worker runs a task's functions only when
//!   its build is the caller's; a worker of another build answers
//!   [`TaskError::Build`], naming both, without decoding the arguments. A worker with another
//!   key cannot read a task and leaves it for one that can; callers count only workers of their
//!   build and key as live, so a pool served only by misconfigured workers ends in
//!   [`TaskError::NoWorkers`], whose message says what was seen.
//!
//! # Trust
//! The key is the boundary, as Python's authkey is: whoever holds it can have the workers run
//! any function of the program. It never travels through the broker: a `Manager`, a proxy or a
//! `Queue` on a broker, which travel as their key, refuse to be part of a task, a result or an
//! item of a broker queue (send a name, and build the object with the key on the other side).
//! The broker itself sees entries in clear and can drop, delay or replay them: a replayed task
//! runs again (as at-least-once allows), a replayed result is a duplicate and is dropped, and an
//! entry copied into another pool, caller or queue is refused there. Give the broker a
//! password or ACL (`redis://:password@host`) and keep it on a network you trust.
//!
//! # Worker mode
//! With the `worker-env` feature (on by default) a program started with `MULTIPROCESS_WORKER`,
//! `MULTIPROCESS_BROKER` and `MULTIPROCESS_AUTHKEY` set becomes a worker before `main` runs
//! (`MULTIPROCESS_PROCESSES`, `MULTIPROCESS_LEASE_MS`, `MULTIPROCESS_MAX_DELIVERIES`,
//! `MULTIPROCESS_TASK_TIMEOUT_MS` and `MULTIPROCESS_WORKER_EXIT_ON_EOF` are optional). A tool
//! that links the crate but must never serve tasks builds without it, as the `multiprocess`
//! command does.
//!
//! # How it differs from the local pool
//! - A running task is not killed by `cancel` or `terminate`: a task not yet taken is withdrawn,
//!   one already running finishes on its worker and its result is dropped.
//! - `processes()` is the number of worker processes live when the pool was built (or what
//!   [`PoolBuilder::processes`](crate::PoolBuilder::processes) said); it sets the default chunk
//!   size and `imap`'s window. `worker_pids()` is empty.
//! - The builder's initializer, task and memory limits, task timeout and retries belong to the
//!   workers' own pools; a broker pool ignores them. A worker sets its task timeout with
//!   [`Worker::task_timeout`] (or `MULTIPROCESS_TASK_TIMEOUT_MS`); a task past it fails with
//!   [`TaskError::Timeout`] at its caller.
//!
//! # Keys
//! Every key of pool `P` carries the hash tag `{P}` (one Redis Cluster slot per pool):
//! `mp:{P}:t` the task stream (consumer group `w`), `mp:{P}:r:<caller>` each caller's results,
//! `mp:{P}:b:<...>` payloads kept beside the stream, `mp:{P}:workers` the workers' descriptions,
//! `mp:{P}:hb:<consumer>` their heartbeats, `mp:{P}:epoch`, and the counters `mp:{P}:reclaimed`
//! and `mp:{P}:lost`.

mod caller;
mod entry;
mod link;
mod queue;
mod status;
mod worker;

pub(crate) use caller::Caller;
pub(crate) use queue::{BrokerQueue, QFail, QueueRef};
pub use status::pools;
pub use status::{PoolStatus, WorkerStatus, status};
#[cfg(feature = "worker-env")]
pub(crate) use worker::main_from_env as worker_main_from_env;
pub use worker::{RunningWorker, Worker};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use entry::fuzz_decode;

use std::time::Duration;
use thiserror::Error;

#[allow(unused_imports)] // (for the docs)
use crate::TaskError;

/// What a caller of a pool on a broker has seen (see [`Pool::broker_stats`](crate::Pool::broker_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CallerStats {
    /// Tasks sent and not yet answered.
    pub outstanding: usize,
    /// Results dropped because the task had its result already (it ran twice).
    pub duplicates: u64,
    /// Tasks sent again because the broker lost them.
    pub resent: u64,
}

/// This program's build, in hex: what a worker must run to take this program's tasks (the GNU
/// build ID of the executable, or the SHA-256 of the file when it has none).
///
/// # Examples
/// ```
/// let build = multiprocess::cluster::this_build();
/// assert!(build.len() >= 32 && build.chars().all(|c| c.is_ascii_hexdigit()));
/// ```
pub fn this_build() -> String {
    hex(build_id())
}

/// Why a pool or a worker could not use its broker.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The pool's name is not 1 to 64 of `A-Z a-z 0-9 _ . -`.
    #[error("invalid pool name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    /// Neither [`Broker::authkey`] nor `MULTIPROCESS_AUTHKEY` gave the pool a key.
    #[error(
        "a pool on a broker needs a key: Broker::authkey(...) or the MULTIPROCESS_AUTHKEY \
         environment variable"
    )]
    NoAuthkey,
    /// The broker could not be reached, or answered with an error.
    #[error("the broker at {url}: {message}")]
    Broker {
        /// The broker's URL (without its password).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An environment variable of worker mode is missing or malformed.
    #[error("worker mode: {0}")]
    Env(String),
    /// The worker's own local pool could not be started.
    #[error("the worker's local pool: {0}")]
    LocalPool(std::io::Error),
}

/// Where a pool's tasks go: a Redis server (6.2 or later, or Valkey) and the pool's name there,
/// with the pool's key and its timing.
///
/// # Examples
/// ```
/// use multiprocess::cluster::Broker;
/// use std::time::Duration;
///
/// let broker = Broker::redis("redis://127.0.0.1:6379", "thumbnails")
///     .authkey("a secret shared by the callers and the workers")
///     .lease(Duration::from_secs(10))
///     .max_deliveries(5);
/// assert_eq!(broker.pool_name(), "thumbnails");
/// ```
#[derive(Clone)]
pub struct Broker {
    pub(crate) url: String,
    pub(crate) pool: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) lease: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) no_worker_timeout: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &redact(&self.url))
            .field("pool", &self.pool)
            .field("authkey", &self.key.as_ref().map(|_| "<set>"))
            .field("lease", &self.lease)
            .field("max_deliveries", &self.max_deliveries)
            .field("no_worker_timeout", &self.no_worker_timeout)
            .finish()
    }
}

/// The default lease of a task: renewed every third of it while the task runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The default number of deliveries of a task before it fails as [`TaskError::WorkerLost`].
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;
/// The default time a caller waits with no live worker before failing its tasks.
pub const DEFAULT_NO_WORKER_TIMEOUT: Duration = Duration::from_secs(60);

impl Broker {
    /// Pool `pool` on the Redis server at `url` (`redis://[:password@]host[:port][/db]`).
    pub fn redis(url: &str, pool: &str) -> Broker {
        Broker {
            url: url.to_string(),
            pool: pool.to_string(),
            key: None,
            lease: DEFAULT_LEASE,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            no_worker_timeout: DEFAULT_NO_WORKER_TIMEOUT,
        }
    }

    /// The pool's key (default: the `MULTIPROCESS_AUTHKEY` environment variable): every entry is
    /// authenticated with it, and a worker runs only what a holder of the key sent. Callers and
    /// workers of a pool must share it.
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Broker {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// How long a task may go without its worker's renewal before another worker takes it
    /// (default 30 s; at least 100 ms). Set by the workers: they renew and reclaim.
    pub fn lease(mut self, lease: Duration) -> Broker {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How many times a task is handed out before it fails as [`TaskError::WorkerLost`]
    /// (default 3; at least 1). Set by the workers.
    pub fn max_deliveries(mut self, n: u32) -> Broker {
        self.max_deliveries = n.max(1);
        self
    }

    /// How long a caller with tasks outstanding waits while no worker of its build is alive (or
    /// the broker cannot be reached) before failing them (default 60 s).
    pub fn no_worker_timeout(mut self, t: Duration) -> Broker {
        self.no_worker_timeout = t;
        self
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// The broker's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Worker mode's broker, from the environment: `MULTIPROCESS_BROKER` (the URL),
    /// `MULTIPROCESS_WORKER` (the pool), `MULTIPROCESS_AUTHKEY`, and optionally
    /// `MULTIPROCESS_LEASE_MS` and `MULTIPROCESS_MAX_DELIVERIES`.
    ///
    /// # Errors
    /// [`ClusterError::Env`] for a missing or malformed variable.
    pub fn from_env() -> Result<Broker, ClusterError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pool =
            var(ENV_WORKER).ok_or_else(|| ClusterError::Env(format!("{ENV_WORKER} is not set")))?;
        let url =
            var(ENV_BROKER).ok_or_else(|| ClusterError::Env(format!("{ENV_BROKER} is not set")))?;
        let mut b = Broker::redis(&url, &pool);
        let number = |k: &str| -> Result<Option<u64>, ClusterError> {
            var(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| ClusterError::Env(format!("{k}={v:?} is not a number")))
                })
                .transpose()
        };
        if let Some(ms) = number(ENV_LEASE_MS)? {
            b = b.lease(Duration::from_millis(ms));
        }
        if let Some(n) = number(ENV_MAX_DELIVERIES)? {
            b = b.max_deliveries(n.min(u32::MAX as u64) as u32);
        }
        Ok(b)
    }

    /// Checks the name and settles the key (from the environment when not given).
    pub(crate) fn ready(&self) -> Result<(Keys, Vec<u8>), ClusterError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if self.pool.is_empty() || self.pool.len() > 64 || !self.pool.chars().all(ok) {
            return Err(ClusterError::InvalidName(self.pool.clone()));
        }
        let key = match &self.key {
            Some(k) => k.clone(),
            None => std::env::var_os(ENV_AUTHKEY)
                .filter(|k| !k.is_empty())
                .map(|k| std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec())
                .ok_or(ClusterError::NoAuthkey)?,
        };
        Ok((Keys::new(&self.pool), key))
    }

    pub(crate) fn error(&self, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Broker {
            url: redact(&self.url),
            message: e.to_string(),
        }
    }
}

/// Worker mode: the pool to join (see [`Broker::from_env`]).
pub const ENV_WORKER: &str = "MULTIPROCESS_WORKER";
/// Worker mode: the broker's URL.
pub const ENV_BROKER: &str = "MULTIPROCESS_BROKER";
/// The pool's key, for callers and workers that were not given one.
pub const ENV_AUTHKEY: &str = "MULTIPROCESS_AUTHKEY";
/// Worker mode: the local worker processes (default: the CPUs this process may use).
pub const ENV_PROCESSES: &str = "MULTIPROCESS_PROCESSES";
/// Worker mode: `1` ends the worker when its standard input ends (so that a supervisor holding
/// the other end of a pipe takes its workers with it when it dies).
pub const ENV_EXIT_ON_EOF: &str = "MULTIPROCESS_WORKER_EXIT_ON_EOF";
/// Worker mode: the local pool's task timeout, in milliseconds (see [`Worker::task_timeout`]).
pub const ENV_TASK_TIMEOUT_MS: &str = "MULTIPROCESS_TASK_TIMEOUT_MS";
/// Worker mode: the lease, in milliseconds.
pub const ENV_LEASE_MS: &str = "MULTIPROCESS_LEASE_MS";
/// Worker mode: the most deliveries of a task.
pub const ENV_MAX_DELIVERIES: &str = "MULTIPROCESS_MAX_DELIVERIES";

/// A URL with its password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// The key names of one pool (see the module notes).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The task stream's consumer group.
pub(crate) const GROUP: &str = "w";

impl Keys {
    pub(crate) fn new(pool: &str) -> Keys {
        Keys {
            prefix: format!("mp:{{{pool}}}:"),
        }
    }
    pub(crate) fn tasks(&self) -> String {
        format!("{}t", self.prefix)
    }
    pub(crate) fn results(&self, caller: &str) -> String {
        format!("{}r:{caller}", self.prefix)
    }
    pub(crate) fn blob(&self, owner: &str, id: u64) -> String {
        format!("{}b:{owner}:{id}", self.prefix)
    }
    /// What every blob key of the pool starts with (a blob named elsewhere is refused).
    pub(crate) fn blob_prefix(&self) -> String {
        format!("{}b:", self.prefix)
    }
    pub(crate) fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
    pub(crate) fn heartbeat(&self, consumer: &str) -> String {
        format!("{}hb:{consumer}", self.prefix)
    }
    pub(crate) fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    pub(crate) fn reclaimed(&self) -> String {
        format!("{}reclaimed", self.prefix)
    }
    pub(crate) fn lost(&self) -> String {
        format!("{}lost", self.prefix)
    }
}

/// A name unique to this process run: host, pid and 8 random bytes.
pub(crate) fn unique_name() -> String {
    let host = hostname();
    format!("{host}-{}-{}", std::process::id(), hex(&random8()))
}

/// 8 random bytes (from the kernel; should it refuse, the time and a counter, still unique to
/// this process run).
pub(crate) fn random8() -> [u8; 8] {
    let mut r = [0u8; 8];
    if crate::sys::random_bytes(&mut r).is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        r = (t ^ N
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(40))
        .to_le_bytes();
    }
    r
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-.".contains(*c))
                .take(48)
                .collect()
        })
        .ok()
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A fingerprint of a pool key: the first 8 bytes of HMAC-SHA256(key, a fixed text), in hex.
pub(crate) fn key_id(key: &[u8]) -> String {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    m.update(b"multiprocess pool key id");
    hex(&m.finalize().into_bytes()[..8])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This executable's build: its GNU build ID (read from its own ELF notes), or, for an
/// executable linked without one, the SHA-256 of the file. Tasks name the functions of one
/// build; a worker of another build must not run them.
pub(crate) fn build_id() -> &'static [u8] {
    static BUILD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BUILD.get_or_init(|| {
        let exe = std::fs::read("/proc/self/exe").unwrap_or_default();
        elf_build_id(&exe).map(<[u8]>::to_vec).unwrap_or_else(|| {
            use sha2::Digest;
            sha2::Sha256::digest(&exe).to_vec()
        })
    })
}

/// The `NT_GNU_BUILD_ID` note of a 64-bit little-endian ELF image, if it has one.
fn elf_build_id(elf: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    if elf.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let notes = elf.get(off..off.checked_add(size)?)?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let word = |o: usize| {
                u32::from_le_bytes(notes[o..o + 4].try_into().unwrap_or_default()) as usize
            };
            let (namesz, descsz, kind) = (word(at), word(at + 4), word(at + 8));
            let name_end = at + 12 + namesz;
            let desc = (name_end + 3) & !3;
            let end = desc.checked_add(descsz)?;
            if end > notes.len() {
                break;
            }
            if kind == 3 && notes.get(at + 12..name_end) == Some(&b"GNU\0"[..]) {
                return Some(&notes[desc..end]);
            }
            at = (end + 3) & !3;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_build_id() {
        let id = build_id();
        assert!(id.len() >= 16, "{id:?}");
        assert_eq!(build_id(), id);
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://user:pw@h"), "redis://user:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn names_are_checked() {
        let b = Broker::redis("redis://x", "a{b}").authkey("k");
        assert!(matches!(b.ready(), Err(ClusterError::InvalidName(_))));
        let b = Broker::redis("redis://x", "ok-name.1").authkey("k");
        let (keys, key) = b.ready().unwrap();
        assert_eq!(keys.tasks(), "mp:{ok-name.1}:t");
        assert_eq!(key, b"k");
    }
}
