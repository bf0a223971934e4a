//! A worker of a pool on a broker: takes tasks from the stream, runs them on a local pool of its
//! own, and answers each in one transaction with its acknowledgement.
//!
//! # Three threads, three connections
//! - The **reader** takes tasks (`XREADGROUP ... COUNT <free slots> BLOCK`): two per local
//!   process while tasks are slow, so a worker does not hoard tasks that another could run now;
//!   up to sixteen per process while they are quick, taken many at a time (see `Inner::room`).
//!   It checks each entry (its MAC, then its build) before anything else is read.
//! - The **writer** answers: one script per caller (`XADD` of the results, then `XACK` and
//!   `XDEL` of their tasks; sent by its digest), retried until the broker takes it (a result is
//!   never dropped because the broker was down for a while; the task stays leased to this worker
//!   meanwhile).
//! - The **keeper** does what time asks for, every quarter lease: the heartbeat, renewing the lease
//!   of every task the local pool holds (`XCLAIM <me> 0 ... JUSTID`, only for tasks the group still
//!   says are ours, so that a worker resumed after a pause does not take back what another took),
//!   taking tasks idle past their lease from lost workers (`XPENDING ... IDLE`, `XCLAIM`: a
//!   delivery is counted), failing those past the most deliveries as worker-lost, and, now and
//!   then, removing consumers that are dead and hold nothing.
//!
//! A task's own crash (a panic, an abort, a signal) is the local pool's business: the task fails
//! with the local pool's error, which is sent back like any result. Only the loss of the whole
//! worker (or its connection) leaves a task to be reclaimed.

use super::caller::{fetch_blob, set_blob};
use super::entry::{self, BLOB_OVER, Kind, Outcome, Payload, ResultBody, TaskBody};
use super::link::{Link, ensure_group, is_nogroup};
use super::status::describe;
use super::{Broker, ClusterError, GROUP, Keys, build_id, hex, unique_name};
use crate::Pool;
use crate::pool::TaskError;
use crate::pool::inner::Body;
use crate::process::StartMethod;
use redis::RedisResult;
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use serde_bytes::ByteBuf;
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Joins a pool on a broker as a worker, running its tasks on a local pool of this program.
///
/// The one line a worker program needs is none: a program started with `MULTIPROCESS_WORKER`
/// (and `MULTIPROCESS_BROKER`, `MULTIPROCESS_AUTHKEY`) set becomes a worker before `main` runs
/// (see [`Broker::from_env`]). `Worker` is for a program that decides for itself.
///
/// # Examples
/// ```no_run
/// use multiprocess::cluster::{Broker, Worker};
///
/// let broker = Broker::redis("redis://127.0.0.1:6379", "squares").authkey("secret");
/// // Runs until the process is stopped.
/// Worker::new(broker).processes(4).run()?;
/// # Ok::<(), multiprocess::cluster::ClusterError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Worker does nothing until .run() or .start()"]
pub struct Worker {
    broker: Broker,
    processes: Option<usize>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
}

/// A worker started with [`Worker::start`]; stop it with [`stop`](RunningWorker::stop).
#[derive(Debug)]
pub struct RunningWorker {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

struct Inner {
    broker: Broker,
    keys: Keys,
    key: Vec<u8>,
    /// The key's fingerprint, as registered.
    key_id: String,
    consumer: String,
    build: String,
    pool: Pool,
    /// Stream ids of the tasks this worker holds (taken, not yet answered).
    /// With when each was taken.
    held: Mutex<HashMap<String, Instant>>,
    freed: Condvar,
    /// The local pool's processes.
    processes: usize,
    /// Rounds of tasks let go of (answered, or left) so far.
    answered: AtomicU64,
    /// A running average of how long tasks take here (µs, from taken to answered).
    task_us: AtomicU64,
    done: Mutex<Option<mpsc::Sender<Done>>>,
    stop: AtomicBool,
    blobs: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// A task's outcome, for the writer.
struct Done {
    /// When the task was taken.
    taken: Instant,
    /// A result too large for the stream, with the key it goes to (set again on every try
    /// until the answer is written).
    blob: Option<(String, Vec<u8>)>,
    stream_id: String,
    caller: String,
    task: u64,
    outcome: Outcome,
}

/// Answers tasks: the result entry, then (only if it was written) the acknowledgement and the
/// deletion of the tasks, in one script, which Redis runs whole or, on an error, stops there.
/// (`MULTI` would go on past a failed `XADD` and acknowledge tasks whose result was lost.)
/// KEYS: the caller's result stream, the task stream; ARGV: the entry, the group, the result
/// stream's time to live (ms), then the task ids.
/// Sent by its digest (`EVALSHA`; loaded again when the broker has lost it): the text and its
/// hashing on every answer cost the broker more than the answer itself.
static ANSWER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 4))
redis.call('XDEL', KEYS[2], unpack(ARGV, 4))
return 1
",
    )
});

/// Removes a consumer from the group, and its description, only if it holds nothing: atomic,
/// unlike a look (`XINFO`) then a `DELCONSUMER`. KEYS: the task stream, the workers' hash;
/// ARGV: the group, the consumer.
const FORGET_IDLE_CONSUMER: &str = r"
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
";

/// A caller's result stream lives this long past the last answer (a caller that died leaves
/// nothing behind for long).
const RESULTS_TTL_MS: u64 = 3_600_000;

/// The most items in one task a worker takes (a task claiming more is not one a caller made).
const MAX_TASK_ITEMS: u32 = 1 << 24;

/// The most answers in one result entry.
const ANSWERS_PER_ENTRY: usize = 64;

/// A caller's name as a key part: what `unique_name` makes.
fn plausible_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

impl Worker {
    /// A worker of `broker`'s pool.
    pub fn new(broker: Broker) -> Worker {
        Worker {
            broker,
            processes: None,
            method: None,
            task_timeout: None,
        }
    }

    /// Kills the local process running a task for longer than `limit` (and replaces it); the
    /// task fails with [`TaskError::Timeout`](crate::TaskError::Timeout), which goes back to its
    /// caller (the local pool's [`task_timeout`](crate::PoolBuilder::task_timeout)).
    pub fn task_timeout(mut self, limit: Duration) -> Worker {
        self.task_timeout = Some(limit);
        self
    }

    /// The processes of its local pool (default: the CPUs this process may use).
    pub fn processes(mut self, n: usize) -> Worker {
        self.processes = Some(n.max(1));
        self
    }

    /// How its local pool starts its processes.
    pub fn start_method(mut self, method: StartMethod) -> Worker {
        self.method = Some(method);
        self
    }

    /// Starts the worker and serves until the process ends.
    ///
    /// # Errors
    /// See [`start`](Self::start).
    pub fn run(self) -> Result<(), ClusterError> {
        let w = self.start()?;
        for t in w.threads {
            let _ = t.join();
        }
        Ok(())
    }

    /// Starts the worker in this process's background threads.
    ///
    /// # Errors
    /// A bad pool name or no key ([`ClusterError`]), a broker that cannot be reached, or a local
    /// pool that could not start.
    pub fn start(self) -> Result<RunningWorker, ClusterError> {
        let (keys, key) = self.broker.ready()?;
        let processes = self.processes.unwrap_or_else(crate::cpu_count).max(1);
        let mut link = Link::new(&self.broker.url, Duration::from_secs(5))
            .map_err(|e| self.broker.error(e))?;
        let consumer = unique_name();
        let key_id = super::key_id(&key);
        let build = hex(build_id());
        link.run(|c| {
            ensure_group(c, &keys.tasks())?;
            register(
                c,
                &keys,
                &consumer,
                &build,
                processes,
                self.broker.lease,
                &key_id,
            )
        })
        .map_err(|e| self.broker.error(e))?;
        let mut b = Pool::builder().processes(processes).leaving();
        if let Some(m) = self.method {
            b = b.start_method(m);
        }
        if let Some(t) = self.task_timeout {
            b = b.task_timeout(t);
        }
        let pool = b.build().map_err(ClusterError::LocalPool)?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            broker: self.broker,
            keys,
            key,
            key_id,
            consumer,
            build,
            pool,
            held: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            processes,
            task_us: AtomicU64::new(u64::MAX),
            answered: AtomicU64::new(0),
            done: Mutex::new(Some(tx)),
            stop: AtomicBool::new(false),
            blobs: AtomicU64::new(0),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(ClusterError::LocalPool)
        };
        let (a, b, c) = (inner.clone(), inner.clone(), inner.clone());
        let threads = vec![
            spawn("worker-read", Box::new(move || a.read_loop()))?,
            spawn("worker-write", Box::new(move || b.write_loop(rx)))?,
            spawn("worker-keep", Box::new(move || c.keep_loop()))?,
        ];
        crate::trace::event!(
            info,
            "worker {} joined pool {:?}",
            inner.consumer,
            inner.broker.pool
        );
        Ok(RunningWorker { inner, threads })
    }
}

fn register(
    c: &mut redis::Connection,
    keys: &Keys,
    consumer: &str,
    build: &str,
    processes: usize,
    lease: Duration,
    key_id: &str,
) -> RedisResult<()> {
    redis::pipe()
        .cmd("HSET")
        .arg(keys.workers())
        .arg(consumer)
        .arg(describe(build, processes, key_id))
        .ignore()
        .cmd("SET")
        .arg(keys.heartbeat(consumer))
        .arg(1)
        .arg("PX")
        .arg(lease.as_millis() as u64)
        .ignore()
        .query(c)
}

impl RunningWorker {
    /// Its consumer name (unique to this process run).
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// The tasks its local pool holds now.
    pub fn holding(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops taking tasks, lets the running ones finish (for up to `grace`) and answers them,
    /// then leaves the pool. Tasks still running after `grace` are left to be reclaimed by other
    /// workers after their lease.
    pub fn stop(self, grace: Duration) {
        let inner = self.inner;
        inner.stop.store(true, Ordering::Release);
        inner.freed.notify_all();
        let deadline = Instant::now() + grace;
        let mut held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        while !held.is_empty() && Instant::now() < deadline {
            held = inner
                .freed
                .wait_timeout(held, Duration::from_millis(20))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(held);
        inner.pool.terminate();
        inner.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// How many tasks this worker holds at most: two per local process, so that none waits on
    /// the broker between tasks, while tasks are slow (another worker may be free for them);
    /// sixteen per process (at most 256) while they take under 2 ms, where the round trips to
    /// the broker, not the tasks, would set the pace.
    /// A task held longer than 20 ms means the quick ones are over (a slow map after quick
    /// calls): back to two per process at once, not after the average has caught up, so that one
    /// worker does not hoard a slow map's tasks.
    fn capacity(&self, held: &HashMap<String, Instant>) -> usize {
        let slow_now = held
            .values()
            .any(|t| t.elapsed() > Duration::from_millis(20));
        if !slow_now && self.task_us.load(Ordering::Relaxed) < 2_000 {
            (16 * self.processes).min(256)
        } else {
            2 * self.processes
        }
    }

    /// How many tasks to take now (none: wait for answers).
    ///
    /// Past two per process, more only once a task has been answered since the last read
    /// (`answered_since`): whether tasks are quick is known by their answers, and until then a
    /// slow map after quick calls would all go to the first worker to read. When they are quick,
    /// the worker reads again only once it holds half its capacity or less, and then fills it:
    /// tasks come from the broker many at a time (one read, one batch to the local processes,
    /// their answers together) rather than one per answer, which would cost every task its own
    /// round of wake-ups in every process on the way.
    fn room(&self, held: &HashMap<String, Instant>, answered_since: bool) -> usize {
        let base = 2 * self.processes;
        let cap = self.capacity(held);
        let (limit, low) = if cap > base && answered_since {
            (cap, cap / 2)
        } else {
            (base, base - 1)
        };
        if held.len() > low {
            0
        } else {
            limit - held.len()
        }
    }

    /// Folds one task's time into the running average.
    fn timed(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let avg = self.task_us.load(Ordering::Relaxed);
        let next = if avg == u64::MAX {
            us
        } else {
            (avg * 7 + us) / 8
        };
        self.task_us.store(next, Ordering::Relaxed);
    }

    fn link(&self) -> Option<Link> {
        Link::new(&self.broker.url, Duration::from_secs(5)).ok()
    }

    fn read_loop(self: Arc<Self>) {
        let Some(mut link) = self.link() else { return };
        let stream = self.keys.tasks();
        let mut answered_at_read = 0u64;
        while !self.stopping() {
            let free = {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                let done = self.answered.load(Ordering::Relaxed);
                if self.room(&held, done != answered_at_read) == 0 {
                    held = self
                        .freed
                        .wait_timeout(held, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let done = self.answered.load(Ordering::Relaxed);
                let room = self.room(&held, done != answered_at_read);
                if room > 0 {
                    answered_at_read = done;
                }
                room
            };
            if free == 0 || self.stopping() {
                continue;
            }
            let r: RedisResult<Option<StreamReadReply>> = link.run(|c| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(free)
                    .arg("BLOCK")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query(c)
            });
            match r {
                Ok(Some(reply)) => {
                    for e in reply.keys.into_iter().flat_map(|k| k.ids) {
                        self.take(&mut link, e);
                    }
                }
                Ok(None) => {}
                Err(e) if is_nogroup(&e) => {
                    // The broker lost its data: the group is made again (the callers resend).
                    let _ = link.run(|c| ensure_group(c, &stream));
                }
                Err(e) => {
                    if link.connected() {
                        crate::trace::event!(warn, "worker {}: reading tasks: {e}", self.consumer);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn answer(&self, d: Done) {
        if let Some(tx) = self.done.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(d);
        }
    }

    /// Drops an entry that is not a task of this pool (it cannot be answered: nothing in it can
    /// be believed).
    fn discard(&self, link: &mut Link, id: &str, why: &str) {
        crate::trace::event!(warn, "worker {}: dropped entry {id}: {why}", self.consumer);
        let stream = self.keys.tasks();
        let _ = link.run(|c| {
            redis::pipe()
                .cmd("XACK")
                .arg(&stream)
                .arg(GROUP)
                .arg(id)
                .ignore()
                .cmd("XDEL")
                .arg(&stream)
                .arg(id)
                .ignore()
                .query::<()>(c)
        });
        self.release(id);
    }

    /// Answers task `body` (entry `id`) with an error, without running it.
    fn refuse(&self, id: String, body: TaskBody, e: TaskError) {
        self.answer(Done {
            taken: Instant::now(),
            blob: None,
            stream_id: id,
            caller: body.caller,
            task: body.task,
            outcome: Outcome::Failed(e),
        });
    }

    /// Leaves an entry this worker cannot read pending (see `take`), unrenewed.
    fn leave(&self, id: &str, why: &str) {
        crate::trace::event!(
            warn,
            "worker {}: left entry {id} to others: {why}",
            self.consumer
        );
        self.release(id);
    }

    fn release(&self, id: &str) {
        self.release_all(std::iter::once(id));
    }

    fn release_all<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            held.remove(id);
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        drop(held);
        self.freed.notify_all();
    }

    /// Takes one task entry: checks it, and hands it to the local pool.
    fn take(self: &Arc<Self>, link: &mut Link, e: StreamId) {
        let id = e.id;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        // An entry this worker cannot read (another key, another version of the crate, or
        // junk) is left pending, not deleted: a worker that can read it takes it after the lease,
        // and one that finds it past the most deliveries drops it. Deleting it here would make a
        // misconfigured worker swallow every task.
        let checked =
            match entry::field(&e.map).and_then(|m| entry::check(m, Kind::Task, &self.key)) {
                Ok(c) => c,
                Err(why) => return self.leave(&id, &why.to_string()),
            };
        let body = match checked.body::<TaskBody>() {
            Ok(b) if b.pool != self.broker.pool => {
                // Authentic, but sent to another pool (copied here): not this pool's to run.
                return self.discard(link, &id, "a task of another pool");
            }
            Ok(b) if plausible_name(&b.caller) && b.count <= MAX_TASK_ITEMS => b,
            Ok(_) => return self.discard(link, &id, "not a task this worker can run"),
            Err(why) => return self.leave(&id, &why.to_string()),
        };
        let theirs = checked.build_hex();
        if theirs != self.build {
            crate::trace::event!(
                warn,
                "worker {}: refused a task of build {theirs}",
                self.consumer
            );
            let e = TaskError::Build {
                caller: theirs,
                worker: self.build.clone(),
            };
            return self.refuse(id, body, e);
        }
        let args = match &body.args {
            Payload::Inline(b) => b.clone(),
            Payload::Blob { key, len, sha256 } => {
                match fetch_blob(link, &self.keys.blob_prefix(), key, *len, *sha256) {
                    Ok(b) => ByteBuf::from(b),
                    Err(why) => {
                        return self.refuse(id, body, TaskError::Broker(why));
                    }
                }
            }
        };
        let chunk = body.chunk(args);
        let me = self.clone();
        let (caller, task) = (body.caller, body.task);
        let taken = Instant::now();
        self.pool.submit_raw(
            body.runner,
            chunk,
            Box::new(move |outcome: Body| {
                if me.stopping() && matches!(outcome, Body::Failed(TaskError::Terminated)) {
                    // Cut short by this worker's own stop: left leased, for another worker.
                    return;
                }
                me.answer(Done {
                    taken,
                    blob: None,
                    stream_id: id,
                    caller,
                    task,
                    outcome: match outcome {
                        Body::Results(b) => Outcome::Results(Payload::Inline(b)),
                        Body::Failed(e) => Outcome::Failed(e),
                    },
                });
            }),
        );
    }

    fn write_loop(self: Arc<Self>, rx: mpsc::Receiver<Done>) {
        let Some(mut link) = self.link() else { return };
        let mut pending: Vec<Done> = Vec::new();
        let mut failures = 0u32;
        loop {
            if pending.is_empty() {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(d) => pending.push(d),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while pending.len() < 256 {
                match rx.try_recv() {
                    Ok(d) => pending.push(d),
                    Err(_) => break,
                }
            }
            let (blobs, groups) = self.answers(&mut pending);
            if !blobs.is_empty()
                && let Err(e) = link.run(|c| blobs.query::<()>(c))
            {
                failures += 1;
                crate::trace::event!(warn, "worker {}: storing results: {e}", self.consumer);
                if self.stopping() && failures > 20 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // One script per caller: one that fails does not hold up the others' answers.
            let mut retry: HashSet<String> = HashSet::new();
            for (ids, script) in groups {
                match link.run(|c| script.invoke::<i64>(c)) {
                    Ok(_) => {
                        self.release_all(ids.iter().map(String::as_str));
                    }
                    Err(e) if super::link::is_answer(&e) => {
                        // Refused by the broker (a caller's result key holding something else):
                        // left pending, for a later delivery or, past the most, to be dropped.
                        crate::trace::event!(
                            warn,
                            "worker {}: an answer was refused: {e}",
                            self.consumer
                        );
                        self.release_all(ids.iter().map(String::as_str));
                    }
                    Err(e) => {
                        crate::trace::event!(warn, "worker {}: answering: {e}", self.consumer);
                        retry.extend(ids);
                    }
                }
            }
            pending.retain(|d| {
                let again = retry.contains(&d.stream_id);
                if !again {
                    self.timed(d.taken.elapsed());
                }
                again
            });
            if pending.is_empty() {
                failures = 0;
            } else {
                failures += 1;
                if self.stopping() && failures > 20 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The pipeline that answers `pending`: per caller, one result entry for up to
    /// [`ANSWERS_PER_ENTRY`] tasks (or about 4 MiB), written with the acknowledgement and the
    /// deletion of those tasks in one transaction; results over 1 MiB go beside the stream first.
    fn answers(
        &self,
        pending: &mut [Done],
    ) -> (
        redis::Pipeline,
        Vec<(Vec<String>, redis::ScriptInvocation<'static>)>,
    ) {
        let stream = self.keys.tasks();
        let mut p = redis::pipe();
        let mut groups = Vec::new();
        let mut by_caller: std::collections::BTreeMap<String, Vec<(ResultBody, String)>> =
            std::collections::BTreeMap::new();
        for d in pending.iter_mut() {
            if let Outcome::Results(Payload::Inline(b)) = &mut d.outcome
                && b.len() > BLOB_OVER
            {
                let n = self.blobs.fetch_add(1, Ordering::Relaxed);
                let key = self.keys.blob(&self.consumer, n);
                let bytes = std::mem::take(b).into_vec();
                d.outcome = Outcome::Results(Payload::Blob {
                    key: key.clone(),
                    len: bytes.len() as u64,
                    sha256: sha2::Sha256::digest(&bytes).into(),
                });
                d.blob = Some((key, bytes));
            }
            if let Some((key, bytes)) = &d.blob {
                set_blob(&mut p, key, bytes);
            }
            let body = ResultBody {
                caller: d.caller.clone(),
                task: d.task,
                consumer: self.consumer.clone(),
                outcome: d.outcome.clone(),
            };
            by_caller
                .entry(d.caller.clone())
                .or_default()
                .push((body, d.stream_id.clone()));
        }
        for (caller, answers) in by_caller {
            let results = self.keys.results(&caller);
            let mut rest = &answers[..];
            while !rest.is_empty() {
                // As many answers as fit one entry.
                let mut n = 0;
                let mut bytes = 0;
                while n < rest.len() && n < ANSWERS_PER_ENTRY && (n == 0 || bytes < 4 << 20) {
                    bytes += match &rest[n].0.outcome {
                        Outcome::Results(Payload::Inline(b)) => b.len(),
                        _ => 256,
                    };
                    n += 1;
                }
                let (these, more) = rest.split_at(n);
                rest = more;
                let bodies: Vec<&ResultBody> = these.iter().map(|(b, _)| b).collect();
                let entry = entry::encode(Kind::Result, build_id(), &self.key, &bodies)
                    .unwrap_or_else(|e| {
                        let failed: Vec<ResultBody> = these
                            .iter()
                            .map(|(b, _)| ResultBody {
                                caller: b.caller.clone(),
                                task: b.task,
                                consumer: self.consumer.clone(),
                                outcome: Outcome::Failed(TaskError::Child(format!(
                                    "the result could not be encoded: {e}"
                                ))),
                            })
                            .collect();
                        entry::encode(Kind::Result, build_id(), &self.key, &failed)
                            .unwrap_or_default()
                    });
                let ids: Vec<String> = these.iter().map(|(_, id)| id.clone()).collect();
                let mut script = ANSWER.prepare_invoke();
                script
                    .key(&results)
                    .key(&stream)
                    .arg(entry)
                    .arg(GROUP)
                    .arg(RESULTS_TTL_MS)
                    .arg(&ids);
                groups.push((ids, script));
            }
        }
        (p, groups)
    }

    fn keep_loop(self: Arc<Self>) {
        let Some(mut link) = self.link() else { return };
        let lease = self.broker.lease;
        let tick = (lease / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let mut n = 0u64;
        let mut next = Instant::now();
        while !self.stopping() {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            next = now + tick;
            n += 1;
            let beat = link.run(|c| {
                if n % 8 == 1 {
                    register(
                        c,
                        &self.keys,
                        &self.consumer,
                        &self.build,
                        self.pool.processes(),
                        lease,
                        &self.key_id,
                    )
                } else {
                    redis::cmd("SET")
                        .arg(self.keys.heartbeat(&self.consumer))
                        .arg(1)
                        .arg("PX")
                        .arg(lease.as_millis() as u64)
                        .query(c)
                }
            });
            if beat.is_err() {
                continue;
            }
            self.renew(&mut link);
            if n.is_multiple_of(2) {
                self.reclaim(&mut link);
            }
            if n.is_multiple_of(40) {
                self.clean(&mut link);
            }
        }
        let _ = link.run(|c| {
            redis::pipe()
                .cmd("HDEL")
                .arg(self.keys.workers())
                .arg(&self.consumer)
                .ignore()
                .cmd("DEL")
                .arg(self.keys.heartbeat(&self.consumer))
                .ignore()
                .query::<()>(c)
        });
    }

    /// The stream ids of the tasks held now.
    fn held_ids(&self) -> HashSet<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.keys().cloned().collect()
    }

    /// Renews the lease of every task this worker holds that the group still says is its own.
    fn renew(&self, link: &mut Link) {
        let held = self.held_ids();
        if held.is_empty() {
            return;
        }
        let stream = self.keys.tasks();
        let _ = link.run(|c| {
            let mine: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(held.len() + 64)
                .arg(&self.consumer)
                .query(c)?;
            let ids: Vec<&str> = mine
                .ids
                .iter()
                .map(|p| p.id.as_str())
                .filter(|id| held.contains(*id))
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .query::<Vec<String>>(c)
                .map(drop)
        });
    }

    /// Takes tasks idle past their lease (from lost workers); fails those past the most
    /// deliveries as worker-lost.
    fn reclaim(self: &Arc<Self>, link: &mut Link) {
        let stream = self.keys.tasks();
        let lease_ms = self.broker.lease.as_millis() as u64;
        let idle: RedisResult<StreamPendingCountReply> = link.run(|c| {
            redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg("IDLE")
                .arg(lease_ms)
                .arg("-")
                .arg("+")
                .arg(64)
                .query(c)
        });
        let Ok(idle) = idle else { return };
        let held = self.held_ids();
        let max = self.broker.max_deliveries as usize;
        let (lost, again): (Vec<_>, Vec<_>) = idle
            .ids
            .into_iter()
            .filter(|p| !held.contains(&p.id))
            .partition(|p| p.times_delivered >= max);
        if !again.is_empty() {
            let ids: Vec<&str> = again.iter().map(|p| p.id.as_str()).collect();
            let claimed: RedisResult<StreamClaimReply> = link.run(|c| {
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(lease_ms)
                    .arg(&ids)
                    .query(c)
            });
            if let Ok(claimed) = claimed {
                let n = claimed.ids.len();
                if n > 0 {
                    crate::trace::event!(info, "worker {} reclaimed {n} tasks", self.consumer);
                    let _ = link.run(|c| {
                        redis::cmd("INCRBY")
                            .arg(self.keys.reclaimed())
                            .arg(n)
                            .query::<()>(c)
                    });
                }
                for e in claimed.ids {
                    self.take(link, e);
                }
            }
        }
        for p in lost {
            let id = p.id;
            // Claimed first (without counting a delivery), so that one worker answers it.
            let won: RedisResult<Vec<String>> = link.run(|c| {
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(lease_ms)
                    .arg(&id)
                    .arg("JUSTID")
                    .query(c)
            });
            if !won.is_ok_and(|w| w.contains(&id)) {
                continue;
            }
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), Instant::now());
            let entry: RedisResult<redis::streams::StreamRangeReply> =
                link.run(|c| redis::cmd("XRANGE").arg(&stream).arg(&id).arg(&id).query(c));
            let Ok(entry) = entry else {
                self.release(&id);
                continue;
            };
            let Some(e) = entry.ids.into_iter().next() else {
                // Deleted meanwhile (answered, or withdrawn): nothing to say.
                let _ = link.run(|c| {
                    redis::cmd("XACK")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg(&id)
                        .query::<()>(c)
                });
                self.release(&id);
                continue;
            };
            let body = entry::field(&e.map)
                .and_then(|m| entry::check(m, Kind::Task, &self.key))
                .and_then(|c| c.body::<TaskBody>());
            match body {
                Ok(b) if plausible_name(&b.caller) => {
                    let _ = link.run(|c| redis::cmd("INCR").arg(self.keys.lost()).query::<()>(c));
                    self.answer(Done {
                        taken: Instant::now(),
                        blob: None,
                        stream_id: id,
                        caller: b.caller,
                        task: b.task,
                        outcome: Outcome::Failed(TaskError::WorkerLost {
                            deliveries: p.times_delivered as u32,
                        }),
                    });
                }
                _ => self.discard(link, &id, "not a task of this pool"),
            }
        }
    }

    /// Removes dead consumers that hold nothing, and the descriptions of dead workers.
    fn clean(&self, link: &mut Link) {
        let stream = self.keys.tasks();
        let _ = link.run(|c| {
            let workers = super::status::read_workers(c, &self.keys)?;
            let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(GROUP)
                .query(c)?;
            let alive: HashSet<&str> = workers
                .iter()
                .filter(|w| w.alive)
                .map(|w| w.consumer.as_str())
                .collect();
            let mut p = redis::pipe();
            for con in &consumers.consumers {
                let idle_long = con.idle as u128 > 4 * self.broker.lease.as_millis();
                if con.name != self.consumer
                    && con.pending == 0
                    && idle_long
                    && !alive.contains(con.name.as_str())
                {
                    // Checked again inside the script: a consumer that woke up and read a task
                    // since XINFO keeps it (DELCONSUMER would drop its pending entries).
                    p.cmd("EVAL")
                        .arg(FORGET_IDLE_CONSUMER)
                        .arg(2)
                        .arg(&stream)
                        .arg(self.keys.workers())
                        .arg(GROUP)
                        .arg(&con.name)
                        .ignore();
                }
            }
            for w in workers.iter().filter(|w| !w.alive) {
                if !consumers.consumers.iter().any(|c| c.name == w.consumer) {
                    p.cmd("HDEL")
                        .arg(self.keys.workers())
                        .arg(&w.consumer)
                        .ignore();
                }
            }
            p.query::<()>(c)
        });
    }
}

/// Worker mode from the environment (before `main`, when `MULTIPROCESS_WORKER` is set): serves
/// until the process is stopped, then exits. Never returns.
#[cfg(feature = "worker-env")]
pub(crate) fn main_from_env() -> ! {
    if crate::sys::secure_execution() {
        // Set-user-ID or with capabilities gained by exec: the environment is whoever started us.
        eprintln!(
            "multiprocess worker: refused in secure-execution mode (set-user-ID or capabilities)"
        );
        std::process::exit(2);
    }
    // Before `main`, Rust's runtime has not yet made SIGPIPE ignored (it does for every program):
    // a task writing to a closed pipe gets EPIPE, not death, as on a local pool.
    crate::sys::ignore_sigpipe();
    if crate::sys::entry::take_env(super::ENV_EXIT_ON_EOF).is_some_and(|v| v == "1") {
        // Tied to whoever started it: when its stdin ends (that process died, or closed the
        // pipe), so does the worker (its local pool's processes follow, by their lifelines).
        let _ = std::thread::Builder::new().name("worker-stdin".into()).spawn(|| {
            let mut sink = [0u8; 256];
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
            std::process::exit(0)
        });
    }
    let code = match worker_from_env() {
        Ok(w) => match w.run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("multiprocess worker: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("multiprocess worker: {e}");
            2
        }
    };
    std::process::exit(code)
}

#[cfg(feature = "worker-env")]
fn worker_from_env() -> Result<Worker, ClusterError> {
    let broker = Broker::from_env()?;
    let key = crate::sys::entry::take_env(super::ENV_AUTHKEY);
    let processes = crate::sys::entry::take_env(super::ENV_PROCESSES);
    let timeout = crate::sys::entry::take_env(super::ENV_TASK_TIMEOUT_MS);
    for k in [
        super::ENV_WORKER,
        super::ENV_BROKER,
        super::ENV_LEASE_MS,
        super::ENV_MAX_DELIVERIES,
    ] {
        let _ = crate::sys::entry::take_env(k);
    }
    let broker = match key {
        Some(k) => broker.authkey(std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str())),
        None => return Err(ClusterError::NoAuthkey),
    };
    let mut w = Worker::new(broker);
    if let Some(n) = processes {
        let n = n
            .to_str()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| {
                ClusterError::Env(format!("{}={n:?} is not a number", super::ENV_PROCESSES))
            })?;
        w = w.processes(n);
    }
    if let Some(ms) = timeout {
        let ms = ms
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                ClusterError::Env(format!(
                    "{}={ms:?} is not a number",
                    super::ENV_TASK_TIMEOUT_MS
                ))
            })?;
        w = w.task_timeout(Duration::from_millis(ms));
    }
    Ok(w)
}
