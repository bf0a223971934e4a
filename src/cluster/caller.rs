//! The caller's side of a pool on a broker: the engine behind a `Pool` built with
//! `PoolBuilder::broker`.
//!
//! # What the caller keeps, and why
//! Every task the caller sent and has no outcome for stays in its table, with its entry's bytes,
//! until a result arrives, it is cancelled, or it fails. The table is what makes the promises
//! hold when the broker does not:
//! - a result for a task no longer in the table is a duplicate (the task ran twice, after a lost
//!   or paused worker) and is dropped: each item's result is delivered once;
//! - a task whose entry is gone from the stream although no result came has been lost by the
//!   broker, and is sent again. Workers write a result and delete its task in one transaction,
//!   so after checking that an entry is gone and then reading the result stream, "no result" can
//!   only mean "lost";
//! - a broker that came back without its data has lost the pool's epoch key as well; then every
//!   task in the table is sent again.
//!
//! One thread per caller reads its result stream (`XREAD BLOCK`, on a connection of its own) and,
//! four times a second, looks after the rest: the epoch, vanished tasks, whether any worker of
//! this build is alive, and tasks not sent yet because the broker was down. Submitting sends on
//! the submitting thread, pipelined, so a map's tasks go out in a few round trips.

use super::entry::{self, BLOB_OVER, Kind, Outcome, Payload, ResultBody, TaskBody};
use super::link::{Link, ensure_group};
use super::status::read_workers;
use super::{Broker, ClusterError, Keys, build_id, hex, unique_name};
use crate::pool::PoolError;
use crate::pool::TaskError;
use crate::pool::inner::{Batch, Body, Callback, Phase, Piece, run_all};
use crate::pool::worker::Chunk;
use crate::sys::entry::Func;
use redis::streams::StreamReadReply;
use redis::{RedisResult, Value};
use serde_bytes::ByteBuf;
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A caller's socket reads wait at most this (its blocking reads block a tenth of it): a broker
/// that stops answering costs a look at most a few of these.
const LINK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the caller looks after its table.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// A task sent this long ago is checked for having vanished from the stream.
const VANISH_AFTER: Duration = Duration::from_secs(1);
/// The most tasks checked for having vanished in one look.
const VANISH_CHECKS: usize = 256;
/// Tasks sent in one pipeline.
const SEND_AT_ONCE: usize = 256;
/// How long the result stream's `XREAD` blocks (it also bounds how long stopping takes).
const READ_BLOCK_MS: u64 = 100;
/// How long the caller's result stream lives after the caller last looked (a caller that died
/// leaves nothing behind for long).
const RESULTS_TTL_MS: u64 = 3_600_000;
/// Blobs live this long (a task waiting longer than this in the stream loses its payload and
/// fails with `TaskError::Broker`).
pub(crate) const BLOB_TTL_MS: u64 = 24 * 3_600_000;

pub(crate) struct Caller {
    broker: Broker,
    keys: Keys,
    key: Vec<u8>,
    /// The pool key's fingerprint, and this program's build (hex): what a live worker must match.
    key_id: String,
    build: String,
    name: String,
    results: String,
    processes: usize,
    state: Mutex<State>,
    changed: Condvar,
    send: Mutex<Link>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    phase: Phase,
    next_task: u64,
    /// Tasks without an outcome.
    out: HashMap<u64, Out>,
    /// Tasks to send (again).
    unsent: VecDeque<u64>,
    /// When a live worker of this build was last seen (or work began after none was outstanding).
    live_at: Instant,
    /// What the last look at the workers saw, for `NoWorkers`'s message.
    seen: String,
    epoch: Option<Vec<u8>>,
    duplicates: u64,
    resent: u64,
}

/// A payload kept beside the stream: its key and bytes.
type Blob = (String, Arc<Vec<u8>>);

struct Out {
    batch: Arc<Batch>,
    indices: Vec<u64>,
    entry: Arc<Vec<u8>>,
    blob: Option<Blob>,
    stream_id: Option<String>,
    sent: Instant,
    /// In `unsent` now (so that it is queued once).
    queued: bool,
}

fn io_error(e: ClusterError) -> std::io::Error {
    match e {
        ClusterError::NoAuthkey | ClusterError::InvalidName(_) => {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
        }
        e => std::io::Error::other(e),
    }
}

impl Caller {
    /// Joins pool `broker` as a caller: checks the broker, makes the task stream's group, and
    /// starts the result reader.
    pub(crate) fn start(broker: Broker, processes: Option<usize>) -> std::io::Result<Arc<Caller>> {
        crate::process::bootstrap::ensure_constructor_linked();
        let (keys, key) = broker.ready().map_err(io_error)?;
        let name = unique_name();
        let mut link =
            Link::new(&broker.url, LINK_TIMEOUT).map_err(|e| io_error(broker.error(e)))?;
        let setup = link.run(|c| {
            ensure_group(c, &keys.tasks())?;
            let workers = read_workers(c, &keys)?;
            Ok(workers)
        });
        let workers = setup.map_err(|e| io_error(broker.error(e)))?;
        let (key_id, build) = (super::key_id(&key), hex(build_id()));
        let live: usize = workers
            .iter()
            .filter(|w| w.alive && w.build == build && w.key_id == key_id)
            .map(|w| w.processes)
            .fold(0, usize::saturating_add);
        let caller = Arc::new(Caller {
            results: keys.results(&name),
            processes: processes
                .unwrap_or(live)
                .clamp(1, super::status::MAX_PROCESSES),
            broker,
            keys,
            key,
            key_id,
            build,
            name,
            state: Mutex::new(State {
                phase: Phase::Running,
                next_task: 0,
                out: HashMap::new(),
                unsent: VecDeque::new(),
                live_at: Instant::now(),
                seen: String::new(),
                epoch: None,
                duplicates: 0,
                resent: 0,
            }),
            changed: Condvar::new(),
            send: Mutex::new(link),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let c = caller.clone();
        let thread = std::thread::Builder::new()
            .name("pool-broker".into())
            .spawn(move || c.receive())?;
        *caller.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(caller)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn processes(&self) -> usize {
        self.processes
    }

    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub(crate) fn stats(&self) -> super::CallerStats {
        let st = self.lock();
        super::CallerStats {
            outstanding: st.out.len(),
            duplicates: st.duplicates,
            resent: st.resent,
        }
    }

    pub(crate) fn submit_many(
        &self,
        batch: &Arc<Batch>,
        runner: &Func,
        tasks: Vec<(Vec<u64>, Chunk)>,
    ) {
        if tasks.is_empty() {
            return;
        }
        let mut cbs: Vec<Callback> = Vec::new();
        {
            let mut st = self.lock();
            let refuse = match st.phase {
                Phase::Running => None,
                Phase::Closed => Some(TaskError::Closed),
                Phase::Terminated => Some(TaskError::Terminated),
            };
            if let Some(e) = refuse {
                drop(st);
                for (indices, _) in tasks {
                    run_all(batch.fail(indices, e.clone()));
                }
                return;
            }
            if st.out.is_empty() {
                st.live_at = Instant::now();
            }
            for (indices, chunk) in tasks {
                let id = st.next_task;
                st.next_task += 1;
                match self.entry_of(id, runner, chunk) {
                    Ok((entry, blob)) => {
                        batch.lock().tasks.insert(id);
                        st.out.insert(
                            id,
                            Out {
                                batch: batch.clone(),
                                indices,
                                entry: Arc::new(entry),
                                blob,
                                stream_id: None,
                                sent: Instant::now(),
                                queued: true,
                            },
                        );
                        st.unsent.push_back(id);
                    }
                    Err(e) => cbs.extend(batch.fail(indices, TaskError::Encode(e))),
                }
            }
        }
        run_all(cbs);
        // Sent from here, unless another thread is sending (it takes these too) or the broker
        // was just found down (the reader's next look sends them): a submit does not wait on a
        // broker that does not answer.
        let Ok(mut link) = self.send.try_lock() else {
            return;
        };
        if !link.down_lately(Duration::from_secs(1)) {
            self.flush_with(&mut link);
        }
    }

    fn entry_of(
        &self,
        id: u64,
        runner: &Func,
        chunk: Chunk,
    ) -> Result<(Vec<u8>, Option<Blob>), String> {
        let (args, blob) = if chunk.args.len() > BLOB_OVER {
            let key = self.keys.blob(&self.name, id);
            let bytes = chunk.args.into_vec();
            let payload = Payload::Blob {
                key: key.clone(),
                len: bytes.len() as u64,
                sha256: sha2::Sha256::digest(&bytes).into(),
            };
            (payload, Some((key, Arc::new(bytes))))
        } else {
            (Payload::Inline(chunk.args), None)
        };
        let body = TaskBody {
            pool: self.broker.pool.clone(),
            caller: self.name.clone(),
            task: id,
            runner: runner.clone(),
            func: chunk.func,
            init: chunk.init,
            count: chunk.count,
            args,
        };
        Ok((
            entry::encode(Kind::Task, build_id(), &self.key, &body)?,
            blob,
        ))
    }

    /// Sends the tasks waiting to be sent, pipelined; those that could not go stay waiting.
    fn flush(&self) {
        let mut link = self.send.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_with(&mut link);
    }

    fn flush_with(&self, link: &mut Link) {
        loop {
            let batch: Vec<(u64, Arc<Vec<u8>>, Option<Blob>)> = {
                let mut st = self.lock();
                let mut v = Vec::new();
                while v.len() < SEND_AT_ONCE {
                    let Some(id) = st.unsent.pop_front() else {
                        break;
                    };
                    if let Some(o) = st.out.get_mut(&id) {
                        o.queued = false;
                        v.push((id, o.entry.clone(), o.blob.clone()));
                    }
                }
                v
            };
            if batch.is_empty() {
                return;
            }
            let stream = self.keys.tasks();
            let sent: RedisResult<Vec<Value>> = link.run(|c| {
                let mut p = redis::pipe();
                for (_, entry, blob) in &batch {
                    if let Some((key, bytes)) = blob {
                        set_blob(&mut p, key, bytes);
                    }
                    p.cmd("XADD").arg(&stream).arg("*").arg("m").arg(&entry[..]);
                }
                p.query(c)
            });
            let mut st = self.lock();
            match sent {
                Ok(ids) => {
                    let now = Instant::now();
                    for ((id, _, _), sid) in batch.iter().zip(ids) {
                        if let (Some(o), Ok(sid)) =
                            (st.out.get_mut(id), redis::from_redis_value::<String>(sid))
                        {
                            o.stream_id = Some(sid);
                            o.sent = now;
                        }
                    }
                }
                Err(e) => {
                    crate::trace::event!(warn, "a pool could not send tasks to its broker: {e}");
                    for (id, _, _) in batch.into_iter().rev() {
                        if let Some(o) = st.out.get_mut(&id)
                            && !o.queued
                        {
                            o.queued = true;
                            st.unsent.push_front(id);
                        }
                    }
                    return;
                }
            }
        }
    }

    pub(crate) fn cancel(&self, id: u64) -> bool {
        let Some(o) = self.lock().out.remove(&id) else {
            return false;
        };
        self.changed.notify_all();
        o.batch.lock().tasks.remove(&id);
        self.withdraw(std::slice::from_ref(&o));
        run_all(o.batch.fail(o.indices, TaskError::Cancelled));
        true
    }

    /// Deletes the entries (and blobs) of tasks that will not be waited for.
    fn withdraw(&self, tasks: &[Out]) {
        let stream = self.keys.tasks();
        let mut p = redis::pipe();
        let mut any = false;
        for o in tasks {
            if let Some(sid) = &o.stream_id {
                p.cmd("XDEL").arg(&stream).arg(sid).ignore();
                any = true;
            }
            if let Some((key, _)) = &o.blob {
                p.cmd("DEL").arg(key).ignore();
                any = true;
            }
        }
        if any {
            let mut link = self.send.lock().unwrap_or_else(|p| p.into_inner());
            let _ = link.run(|c| p.query::<()>(c));
        }
    }

    /// Fails every outstanding task with `e`, withdrawing their entries.
    fn fail_all(&self, e: TaskError) {
        let taken: Vec<(u64, Out)> = self.lock().out.drain().collect();
        self.changed.notify_all();
        let outs: Vec<Out> = taken
            .into_iter()
            .map(|(id, o)| {
                o.batch.lock().tasks.remove(&id);
                o
            })
            .collect();
        self.withdraw(&outs);
        for o in outs {
            run_all(o.batch.fail(o.indices, e.clone()));
        }
    }

    pub(crate) fn close(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
        drop(st);
        self.changed.notify_all();
    }

    pub(crate) fn terminate(&self) {
        self.lock().phase = Phase::Terminated;
        self.fail_all(TaskError::Terminated);
    }

    pub(crate) fn join(&self) -> Result<(), PoolError> {
        let mut st = self.lock();
        if st.phase == Phase::Running {
            return Err(PoolError::StillRunning);
        }
        while !st.out.is_empty() {
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Stops the reader and removes the result stream.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let mut link = self.send.lock().unwrap_or_else(|p| p.into_inner());
        let results = self.results.clone();
        let _ = link.run(|c| redis::cmd("DEL").arg(&results).query::<()>(c));
    }

    /// The reader: results as they come, and a look after the table every [`LOOK_EVERY`].
    fn receive(self: Arc<Self>) {
        let mut link = match Link::new(&self.broker.url, LINK_TIMEOUT) {
            Ok(l) => l,
            Err(_) => return, // the URL parsed in `start`
        };
        let mut last = "0-0".to_string();
        let mut next_look = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            self.read_results(&mut link, &mut last, Some(READ_BLOCK_MS));
            if !link.connected() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() >= next_look {
                self.look(&mut link, &mut last);
                next_look = Instant::now() + LOOK_EVERY;
            }
        }
    }

    /// Reads what is on the result stream after `last` (waiting up to `block` ms for something)
    /// and delivers it.
    fn read_results(&self, link: &mut Link, last: &mut String, block: Option<u64>) {
        let results = self.results.clone();
        let cursor = last.clone();
        let reply: RedisResult<Option<StreamReadReply>> = link.run(|c| {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1024);
            if let Some(ms) = block {
                cmd.arg("BLOCK").arg(ms);
            }
            cmd.arg("STREAMS").arg(&results).arg(&cursor).query(c)
        });
        let entries = match reply {
            Ok(Some(r)) => r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>(),
            Ok(None) => return,
            Err(e) => {
                if link.connected() {
                    crate::trace::event!(warn, "a pool could not read its results: {e}");
                }
                return;
            }
        };
        let Some(end) = entries.last().map(|e| e.id.clone()) else {
            return;
        };
        let mut got: Vec<(Out, Outcome)> = Vec::new();
        {
            let mut st = self.lock();
            for e in &entries {
                let bodies = entry::field(&e.map)
                    .and_then(|m| entry::check(m, Kind::Result, &self.key))
                    .and_then(|c| c.body::<Vec<ResultBody>>());
                match bodies {
                    Ok(rs) => {
                        for r in rs {
                            if r.caller != self.name {
                                crate::trace::event!(
                                    warn,
                                    "a pool dropped a result for another caller ({})",
                                    r.caller
                                );
                                continue;
                            }
                            match st.out.remove(&r.task) {
                                Some(o) => {
                                    o.batch.lock().tasks.remove(&r.task);
                                    got.push((o, r.outcome));
                                }
                                None => st.duplicates += 1,
                            }
                        }
                    }
                    Err(err) => {
                        crate::trace::event!(warn, "a pool dropped a result entry {}: {err}", e.id);
                    }
                }
            }
        }
        if !got.is_empty() {
            self.changed.notify_all();
        }
        // Read entries are deleted (nobody else reads this stream), with the caller's blobs of the
        // tasks answered; then each outcome goes to its batch.
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut dels = vec![];
        for (o, _) in &got {
            if let Some((key, _)) = &o.blob {
                dels.push(key.clone());
            }
        }
        let _ = link.run(|c| {
            let mut p = redis::pipe();
            p.cmd("XDEL").arg(&results).arg(&ids).ignore();
            if !dels.is_empty() {
                p.cmd("DEL").arg(&dels).ignore();
            }
            p.query::<()>(c)
        });
        *last = end;
        for (o, outcome) in got {
            let body = match outcome {
                Outcome::Failed(e) => Body::Failed(e),
                Outcome::Results(Payload::Inline(b)) => Body::Results(b),
                Outcome::Results(Payload::Blob { key, len, sha256 }) => {
                    let prefix = self.keys.blob_prefix();
                    let got = fetch_blob(link, &prefix, &key, len, sha256);
                    if key.starts_with(&prefix) {
                        let _ = link.run(|c| redis::cmd("DEL").arg(&key).query::<()>(c));
                    }
                    match got {
                        Ok(b) => Body::Results(ByteBuf::from(b)),
                        Err(e) => Body::Failed(TaskError::Broker(e)),
                    }
                }
            };
            run_all(o.batch.deliver(Piece {
                indices: o.indices,
                body,
            }));
        }
    }

    /// The look after the table: the epoch, vanished tasks, live workers, unsent tasks.
    fn look(&self, link: &mut Link, last: &mut String) {
        let busy = !self.lock().out.is_empty();
        let epoch_key = self.keys.epoch();
        let results = self.results.clone();
        let epoch = link.run(|c| {
            let fresh = super::random8();
            let (_, now, _): ((), Option<Vec<u8>>, ()) = redis::pipe()
                .cmd("SET")
                .arg(&epoch_key)
                .arg(&fresh[..])
                .arg("NX")
                .cmd("GET")
                .arg(&epoch_key)
                .cmd("PEXPIRE")
                .arg(&results)
                .arg(RESULTS_TTL_MS)
                .query(c)?;
            Ok(now)
        });
        let reachable = match epoch {
            Ok(Some(now)) => {
                let mut st = self.lock();
                let changed = st.epoch.as_ref().is_some_and(|e| *e != now);
                st.epoch = Some(now);
                if changed {
                    // The broker lost its data: every task in the table goes again, and the
                    // group is made again.
                    drop(st);
                    let _ = link.run(|c| ensure_group(c, &self.keys.tasks()));
                    let mut st = self.lock();
                    let mut ids = Vec::new();
                    for (id, o) in st.out.iter_mut() {
                        o.stream_id = None;
                        if !o.queued {
                            o.queued = true;
                            ids.push(*id);
                        }
                    }
                    st.resent += ids.len() as u64;
                    st.unsent.extend(ids);
                    *last = "0-0".into();
                }
                true
            }
            _ => false,
        };
        if reachable && busy {
            self.resend_vanished(link, last);
            self.check_workers(link);
        } else if busy {
            let mut st = self.lock();
            let waited = st.live_at.elapsed();
            if waited > self.broker.no_worker_timeout {
                st.seen = format!("the broker could not be reached for {waited:?}");
            }
        }
        let timed_out = {
            let st = self.lock();
            (busy && st.live_at.elapsed() > self.broker.no_worker_timeout)
                .then(|| (st.live_at.elapsed(), st.seen.clone()))
        };
        if let Some((waited, seen)) = timed_out {
            let e = if reachable {
                TaskError::NoWorkers(format!(
                    "none of build {} on pool {:?} for {waited:?}{seen}",
                    short(&self.build),
                    self.broker.pool
                ))
            } else {
                TaskError::Broker(format!(
                    "{} could not be reached for {waited:?}",
                    super::redact(&self.broker.url)
                ))
            };
            self.fail_all(e);
        }
        if reachable {
            self.flush();
        }
    }

    /// Sends again the tasks that left the stream with no result.
    fn resend_vanished(&self, link: &mut Link, last: &mut String) {
        let mut check: Vec<(u64, String)> = {
            let st = self.lock();
            st.out
                .iter()
                .filter(|(_, o)| o.sent.elapsed() >= VANISH_AFTER)
                .filter_map(|(id, o)| o.stream_id.clone().map(|s| (*id, s)))
                .collect()
        };
        if check.is_empty() {
            return;
        }
        check.sort_unstable_by_key(|(id, _)| *id);
        check.truncate(VANISH_CHECKS);
        let stream = self.keys.tasks();
        let present: RedisResult<Vec<Vec<Value>>> = link.run(|c| {
            let mut p = redis::pipe();
            for (_, sid) in &check {
                p.cmd("XRANGE").arg(&stream).arg(sid).arg(sid);
            }
            p.query(c)
        });
        let Ok(present) = present else { return };
        let gone: Vec<(u64, String)> = check
            .into_iter()
            .zip(present)
            .filter(|(_, p)| p.is_empty())
            .map(|(c, _)| c)
            .collect();
        if gone.is_empty() {
            return;
        }
        // Results written before their tasks left the stream are there now.
        self.read_results(link, last, None);
        let mut st = self.lock();
        let mut resend = Vec::new();
        for (id, sid) in gone {
            if st
                .out
                .get(&id)
                .is_some_and(|o| o.stream_id.as_deref() == Some(&sid))
            {
                resend.push(id);
            }
        }
        if !resend.is_empty() {
            crate::trace::event!(
                warn,
                "a pool sends {} tasks again: the broker lost them",
                resend.len()
            );
            st.resent += resend.len() as u64;
            for id in resend {
                if let Some(o) = st.out.get_mut(&id) {
                    o.stream_id = None;
                    if !o.queued {
                        o.queued = true;
                        st.unsent.push_back(id);
                    }
                }
            }
        }
    }

    /// Notes whether a worker of this build is alive.
    fn check_workers(&self, link: &mut Link) {
        let Ok(workers) = link.run(|c| read_workers(c, &self.keys)) else {
            return;
        };
        let (mine, key) = (self.build.as_str(), self.key_id.as_str());
        let live: Vec<_> = workers.iter().filter(|w| w.alive).collect();
        let mut st = self.lock();
        if live.iter().any(|w| w.build == mine && w.key_id == key) {
            st.live_at = Instant::now();
            st.seen.clear();
        } else if live.is_empty() {
            st.seen = "; no worker is alive".into();
        } else if live.iter().any(|w| w.build == mine) {
            st.seen = format!(
                "; {} live workers of this build hold another pool key (fingerprint {}, not {key})",
                live.len(),
                live[0].key_id
            );
        } else {
            let builds: Vec<String> = live.iter().map(|w| short(&w.build)).collect();
            st.seen = format!(
                "; {} live workers of other builds: {}",
                live.len(),
                builds.join(", ")
            );
        }
    }
}

/// A build ID's first 16 hex digits.
pub(crate) fn short(build: &str) -> String {
    build.chars().take(16).collect()
}

/// Adds the `SET` of a payload kept beside the stream (with its expiry) to `p`.
pub(crate) fn set_blob(p: &mut redis::Pipeline, key: &str, bytes: &[u8]) {
    p.cmd("SET")
        .arg(key)
        .arg(bytes)
        .arg("PX")
        .arg(BLOB_TTL_MS)
        .ignore();
}

/// A blob's bytes, checked against its length and digest.
pub(crate) fn fetch_blob(
    link: &mut Link,
    prefix: &str,
    key: &str,
    len: u64,
    sha256: [u8; 32],
) -> Result<Vec<u8>, String> {
    if !key.starts_with(prefix) || len > entry::MAX_BLOB {
        return Err(format!("a payload key {key:?} that is not this pool's"));
    }
    let got: Option<Vec<u8>> = link
        .run(|c| redis::cmd("GET").arg(key).query(c))
        .map_err(|e| format!("could not read the payload {key}: {e}"))?;
    let bytes =
        got.ok_or_else(|| format!("the payload {key} is gone (expired, or lost by the broker)"))?;
    if bytes.len() as u64 != len || <[u8; 32]>::from(sha2::Sha256::digest(&bytes)) != sha256 {
        return Err(format!("the payload {key} does not match its digest"));
    }
    Ok(bytes)
}
