//! A pool of worker processes: Python's `multiprocessing.Pool`, built on [`Process`] and
//! [`Queue`](crate::Queue), which never hangs and never loses a result silently.
//!
//! # How tasks and results flow
//! Every call (`apply_async`, a map, an `imap`) makes a *batch*, the place its results land, and
//! cuts its input into *tasks* (chunks of items). A task goes into the pool's table and its pending
//! list; the pool hands it to a worker by putting it on **that worker's own queue**, and records that
//! the worker holds it. A worker takes its tasks in order, runs each item alone (a panic, an argument
//! that does not decode, a result that does not encode fails that item only), and puts one message
//! with the chunk's outcomes on the **results queue** that all workers share. A *collector* thread in
//! the parent takes those messages, delivers the outcomes to their batches, and hands the worker its
//! next task. Callers wait on their batch, never on a worker.
//!
//! # How the pool knows what a dead worker held
//! A *supervisor* thread polls the workers' pidfds. When one ends it puts an `Ended` message on the
//! results queue itself: every result the worker committed before it died is ahead of that message
//! (the queue is FIFO across producers, and a producer killed mid-put either committed its message or
//! left nothing), so when the collector reaches `Ended` it has seen all the worker ever delivered.
//! It then takes back whatever is still in the dead worker's own queue (those tasks never started, so
//! they go back to the front of the pending list), and fails exactly the tasks the worker still held,
//! with the signal or exit code (or retries them, when asked). Then it starts a replacement in the
//! same slot: workers are counted by slot, never by a token that could go stale (gh-115634). A worker
//! that leaves at its task limit says so only after its last result, so it is never reported dead for
//! a task it finished (gh-66587).
//!
//! # Backpressure
//! A worker is handed at most `prefetch` tasks ahead (default 2: it always has its next task at hand,
//! and no worker hoards the pending list); while its tasks have been quick (a running average under
//! 200 µs) it is handed up to 16 small ones, so that it does not sleep between one-item tasks.
//! `imap` and `imap_unordered` read their input lazily: they keep at most `in_flight` tasks
//! submitted and not yet yielded (default: 4 per worker), reading more only as results are taken
//! (once a quarter of the window is free), so an endless input never fills memory (CPython's `imap`
//! reads it all first, gh-84291).
//!
//! # Paying per wake-up, not per item
//! With one-item tasks of a trivial function the cost is the bookkeeping, and on two CPUs mostly the
//! wake-ups between the caller, the collector and the workers. So each side does what has piled up
//! in one go: a caller submits the tasks it has read under one lock of the pool (one round of
//! dispatch for all), and the collector takes every message that has arrived (up to 64) under one
//! lock, with one round of dispatch and one wake-up per waiting batch. No message carries more than
//! one task, so what a worker held when it died, or was killed on purpose, stays exact. With large
//! tasks the cost is per item, so `map` decodes each task's results straight into its output
//! vector, in order, instead of handing them through an item at a time.
//!
//! # The seam
//! The pool talks to its workers only through the two message types in `worker.rs`; a second
//! transport (a broker, for workers on other machines) carries the same messages.

mod engine;
pub(crate) mod inner;
mod progress;
pub(crate) mod worker;

use crate::codec;
use crate::error::Timeout;
use crate::process::StartMethod;
use crate::sys::entry::Func;
pub(crate) use engine::Engine;
use inner::{Batch, Body, Config, Piece, Shared};
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use worker::Chunk;

/// Why one task (one item of a map) has no result.
///
/// It is serde-serializable: a worker on another machine sends it back (feature `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskError {
    /// The function panicked; the message is the panic's.
    #[error("the task panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker process died while it held the task: killed by `signal`, or exited with `code`.
    #[error("the worker (pid {pid}) died while running the task: {}", died(*.code, *.signal))]
    WorkerDied {
        /// The worker's pid.
        pid: i32,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// The task ran past the pool's task timeout; its worker was killed and replaced.
    #[error("the task ran past its time limit of {0:?}; its worker was killed and replaced")]
    Timeout(Duration),
    /// The task was cancelled before it ended.
    #[error("the task was cancelled")]
    Cancelled,
    /// The argument could not be serialized (in this process).
    #[error("failed to serialize the task's argument: {0}")]
    Encode(String),
    /// The argument could not be decoded, or the result encoded, in the worker (the message says
    /// which).
    #[error("{0}")]
    Child(String),
    /// The result arrived but could not be deserialized here.
    #[error("failed to deserialize the task's result: {0}")]
    Decode(String),
    /// The pool was closed before the task was submitted.
    #[error("the pool is closed")]
    Closed,
    /// The pool was terminated before the task ended.
    #[error("the pool was terminated")]
    Terminated,
    /// The pool's initializer failed in a worker, so no task runs (no worker is restarted for it).
    #[error("the pool's initializer failed: {0}")]
    Initializer(String),
    /// No worker could be started.
    #[error("no worker could be started: {0}")]
    Spawn(String),
    /// (A pool on a broker.) The task was handed out `deliveries` times and every worker that
    /// took it was lost (killed, cut off, or paused past its lease) before it answered.
    #[error("the task was lost with its worker {deliveries} times (the most deliveries allowed)")]
    WorkerLost {
        /// How many times it was handed to a worker.
        deliveries: u32,
    },
    /// (A pool on a broker.) No live worker of this program's build was seen for the pool's
    /// no-worker timeout, so the task was withdrawn; the message says what was seen instead.
    #[error("no live worker: {0}")]
    NoWorkers(String),
    /// (A pool on a broker.) The worker that took the task runs another build of the program, so
    /// it could not know the task's functions; it refused the task without decoding it.
    #[error(
        "a worker of another build refused the task: this program is build {caller}, the worker \
         runs build {worker}"
    )]
    Build {
        /// The caller's build (its executable's build ID).
        caller: String,
        /// The worker's build.
        worker: String,
    },
    /// (A pool on a broker.) The broker could not be reached, or lost what the task needed.
    #[error("the broker: {0}")]
    Broker(String),
}

fn died(code: Option<i32>, signal: Option<i32>) -> String {
    match (signal, code) {
        (Some(s), _) => match crate::sys::signal_name(s) {
            Some(name) => format!("killed by signal {s} ({name})"),
            None => format!("killed by signal {s}"),
        },
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => "ended".into(),
    }
}

/// Why [`AsyncResult::get_timeout`] or [`MapResult::get_timeout`] gave no result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResultTimeoutError<E> {
    /// The result was not ready in time; the task goes on (nothing is killed).
    #[error("timed out waiting for the result")]
    Timeout,
    /// The result is there: the task failed.
    #[error(transparent)]
    Failed(E),
}

/// The first failed item of a map, with its index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("item {index} failed: {error}")]
pub struct MapError {
    /// The item's index in the input.
    pub index: usize,
    /// Why it failed.
    pub error: TaskError,
}

/// Why [`Pool::join`] could not wait.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// `join` was called on a pool that is neither closed nor terminated (its workers would never
    /// end).
    #[error("the pool is still running: close() or terminate() it before join()")]
    StillRunning,
}

/// How far a map has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Items with an outcome.
    pub done: u64,
    /// Items in all, once the input has been read to its end.
    pub total: Option<u64>,
}

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// Workers run plain `fn(A) -> R` functions of this program, with serde `A` and `R`, as
/// [`Process`](crate::Process) does. A failing item never hides the others: every item has its own
/// `Result<R, TaskError>`, and a worker that dies (killed, aborted, out of memory) fails exactly
/// the tasks it held and is replaced.
///
/// The pool can be used from several threads at once. Dropping it terminates it (as leaving
/// Python's `with Pool() as p:` block does): tasks not finished fail with
/// [`TaskError::Terminated`] and the workers are stopped. [`close`](Pool::close) then
/// [`join`](Pool::join) finishes the submitted work first.
///
/// # Examples
/// ```
/// use multiprocess::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.apply(square, 7)?, 49);
/// assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
/// let pending = pool.apply_async(square, 12);
/// assert_eq!(pending.get()?, 144);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    shared: Arc<Engine>,
    /// The local pool's collector and supervisor (a pool on a broker has its own threads).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Configures a [`Pool`]: `Pool::builder().processes(4).build()`.
#[must_use = "a builder does nothing until .build() is called"]
#[derive(Clone, Default)]
pub struct PoolBuilder {
    // (Debug by hand: the initializer is tokens and bytes.)
    processes: Option<usize>,
    method: Option<StartMethod>,
    init: Option<Result<(Func, Chunk), String>>,
    max_tasks: Option<u64>,
    max_memory: Option<u64>,
    task_timeout: Option<Duration>,
    retries: u32,
    #[cfg(feature = "cluster")]
    broker: Option<crate::cluster::Broker>,
    /// A broker worker's local pool (see `codec::leaves_machine`).
    leaving: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("start_method", &self.method)
            .field("initializer", &self.init.is_some())
            .field("max_tasks_per_worker", &self.max_tasks)
            .field("max_memory_per_worker", &self.max_memory)
            .field("task_timeout", &self.task_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl PoolBuilder {
    /// The number of workers (default: [`cpu_count`](crate::cpu_count), the CPUs this process may
    /// use, which honours its affinity mask and a cgroup CPU quota).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// How workers start (default: the process-wide default, see
    /// [`set_start_method`](crate::set_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Runs `f(arg)` once in each worker before its first task (Python's `initializer`). If it
    /// panics, the pool is broken: every task fails with [`TaskError::Initializer`], and no worker
    /// is restarted for it (no respawn storm).
    pub fn initializer<A: Serialize + DeserializeOwned>(mut self, f: fn(A), arg: A) -> Self {
        self.init = Some(prepare(f, &arg, false).map(|(runner, func, args)| {
            (
                runner,
                Chunk {
                    func,
                    args,
                    count: 1,
                    init: None,
                },
            )
        }));
        self
    }

    /// Replaces a worker with a fresh one after it ran `n` tasks (Python's `maxtasksperchild`; a task
    /// is a chunk of a map).
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks = Some(n.max(1));
        self
    }

    /// Replaces a worker whose resident memory is above `bytes` after a task (a leak stays bounded;
    /// loky and Celery do the same). It is checked between tasks, so one task may go past it.
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Kills the worker running a task for longer than `limit` (and replaces it); the task fails with
    /// [`TaskError::Timeout`]. A task's time counts from when its worker reached it.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Runs a task again, up to `n` more times, when its worker dies while holding it. With retries,
    /// a task runs *at least* once: a worker that died after the task's side effects but before its
    /// result arrived has its task run again.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Sends the pool's tasks to workers on a broker instead of starting workers here (feature
    /// `cluster`): see [`cluster`](crate::cluster) for the workers, what is promised, and how it
    /// differs from a local pool. `processes` then only sets the default chunk size and `imap`'s
    /// window (default: the live workers' processes).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Pool, TaskError};
    /// use multiprocess::cluster::{Broker, Worker};
    /// use std::time::Duration;
    ///
    /// fn halve(x: u32) -> u32 {
    ///     assert!(x % 2 == 0, "odd");
    ///     x / 2
    /// }
    ///
    /// # let url = std::env::var("MP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    /// let broker = Broker::redis(&url, "doc-halve").authkey("k");
    /// let worker = Worker::new(broker.clone()).processes(1).start()?;
    /// let pool = Pool::builder().broker(broker).build()?;
    /// assert_eq!(pool.apply(halve, 8), Ok(4));
    /// let each = pool.map_results(halve, [2, 3]);
    /// assert!(matches!(&each[1], Err(TaskError::Panicked { message }) if message == "odd"));
    /// drop(pool);
    /// worker.stop(Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "cluster")]
    pub fn broker(mut self, broker: crate::cluster::Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// A broker worker's local pool: what its processes return leaves the machine.
    #[cfg(feature = "cluster")]
    pub(crate) fn leaving(mut self) -> Self {
        self.leaving = true;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// `processes(0)`, an initializer argument that does not serialize (`InvalidInput`), or a worker
    /// that could not be started.
    pub fn build(self) -> io::Result<Pool> {
        #[cfg(feature = "cluster")]
        if let Some(broker) = self.broker {
            let caller = crate::cluster::Caller::start(broker, self.processes)?;
            return Ok(Pool {
                shared: Arc::new(Engine::Cluster(caller)),
                threads: Mutex::new(Vec::new()),
            });
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pool needs at least one worker",
            ));
        }
        let init = self
            .init
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Shared::start(Config {
            processes,
            method: self.method,
            init,
            max_tasks: self.max_tasks,
            max_memory: self.max_memory,
            task_timeout: self.task_timeout,
            retries: self.retries,
            prefetch: 2,
            leaving: self.leaving,
        })?;
        let spawn = |name: &str, f: fn(&Arc<Shared>)| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&s))
        };
        let threads = match (
            spawn("pool-collector", Shared::collect),
            spawn("pool-supervisor", Shared::supervise),
        ) {
            (Ok(a), Ok(b)) => vec![a, b],
            (a, b) => {
                shared.terminate();
                stop_threads(&shared, [a.ok(), b.ok()].into_iter().flatten().collect());
                return Err(io::Error::other("could not start the pool's threads"));
            }
        };
        Ok(Pool {
            shared: Arc::new(Engine::Local(shared)),
            threads: Mutex::new(threads),
        })
    }
}

/// The runner and function tokens for `f`, and `arg` encoded.
fn prepare<A: Serialize + DeserializeOwned, R: Serialize + DeserializeOwned>(
    f: fn(A) -> R,
    arg: &A,
    leaving: bool,
) -> Result<(Func, Func, ByteBuf), String> {
    let (runner, func) = tokens(f)?;
    Ok((
        runner,
        func,
        encode_args(std::slice::from_ref(arg), leaving)?,
    ))
}

/// The runner and function tokens of a two-argument function, whose items are pairs.
fn tokens2<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(
    f: fn(A, B) -> R,
) -> Result<(Func, Func), String> {
    let runner = Func::of(worker::runner_of2::<A, B, R>()).map_err(|e| e.to_string())?;
    let func = Func::of2(f).map_err(|e| e.to_string())?;
    Ok((runner, func))
}

fn tokens<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> Result<(Func, Func), String> {
    let runner = Func::of(worker::runner_of::<A, R>()).map_err(|e| e.to_string())?;
    let func = Func::of(f).map_err(|e| e.to_string())?;
    Ok((runner, func))
}

/// `args`, encoded as one `Vec<A>`.
fn encode_args<A: Serialize>(args: &[A], leaving: bool) -> Result<ByteBuf, String> {
    match codec::encode_leaving(args, leaving) {
        Ok((bytes, fds)) if fds.is_empty() => Ok(ByteBuf::from(bytes)),
        Ok(_) => Err(
            "the argument holds descriptors (a Connection, a Lock, ...), which a pool does not \
             carry to its workers"
                .into(),
        ),
        Err(e) => Err(e),
    }
}

/// The outcomes of a piece, by item index, as `R`s.
fn decode_piece<R: DeserializeOwned>(piece: Piece) -> Vec<(u64, Result<R, TaskError>)> {
    let n = piece.indices.len();
    match piece.body {
        Body::Failed(e) => piece
            .indices
            .into_iter()
            .map(|i| (i, Err(e.clone())))
            .collect(),
        Body::Results(bytes) => {
            match codec::decode::<Vec<Result<R, worker::Failure>>>(&bytes, Vec::new()) {
                Ok(v) if v.len() == n => piece
                    .indices
                    .into_iter()
                    .zip(v.into_iter().map(|r| r.map_err(task_error)))
                    .collect(),
                Ok(v) => {
                    let e = TaskError::Decode(format!("{} results for {n} items", v.len()));
                    piece
                        .indices
                        .into_iter()
                        .map(|i| (i, Err(e.clone())))
                        .collect()
                }
                Err(e) => {
                    let e = TaskError::Decode(e);
                    piece
                        .indices
                        .into_iter()
                        .map(|i| (i, Err(e.clone())))
                        .collect()
                }
            }
        }
    }
}

/// Decodes a task's `Vec<Result<R, Failure>>` onto the end of `out` (until the first error, which
/// goes to `error` with its index); the number of results seen.
struct AppendOk<'a, R> {
    out: &'a mut Vec<R>,
    /// The index of the first result.
    first: u64,
    error: &'a mut Option<MapError>,
}

impl<'de, R: Deserialize<'de>> DeserializeSeed<'de> for AppendOk<'_, R> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, R: Deserialize<'de>> Visitor<'de> for AppendOk<'_, R> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a task's results")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<u64, S::Error> {
        let mut seen = 0;
        while let Some(r) = seq.next_element::<Result<R, worker::Failure>>()? {
            match r {
                Ok(v) if self.error.is_none() => self.out.push(v),
                Ok(_) => {}
                Err(f) => {
                    self.error.get_or_insert(MapError {
                        index: (self.first + seen) as usize,
                        error: task_error(f),
                    });
                }
            }
            seen += 1;
        }
        Ok(seen)
    }
}

fn task_error(f: worker::Failure) -> TaskError {
    match f {
        worker::Failure::Panicked(message) => TaskError::Panicked { message },
        worker::Failure::Child(m) => TaskError::Child(m),
    }
}

/// The outcome of item 0 of a one-item batch, once it is there.
fn single<R: DeserializeOwned>(batch: &Batch) -> Option<Result<R, TaskError>> {
    let piece = batch.lock().ready.get(&0).cloned()?;
    decode_piece(piece).into_iter().next().map(|(_, r)| r)
}

pub(crate) fn stop_threads(shared: &Shared, threads: Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    shared.wake_supervisor();
    let _ = shared.results.put(worker::FromWorker::Wake);
    for t in threads {
        let _ = t.join();
    }
}

impl Pool {
    /// A pool of `processes` workers, started with the default start method.
    ///
    /// # Errors
    /// `processes` is 0, or a worker could not be started.
    pub fn new(processes: usize) -> io::Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder, for the number of workers, the start method, an initializer, task and memory
    /// limits per worker, a task timeout and retries.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn processes(&self) -> usize {
        self.shared.processes()
    }

    /// Python's chunk size for an input whose length is known, else 1.
    fn default_chunksize(&self, size_hint: (usize, Option<usize>)) -> usize {
        match size_hint {
            (lo, Some(hi)) if lo == hi => python_chunksize(lo, self.processes()),
            _ => 1,
        }
    }

    /// Runs one raw task (a chunk and its runner) and hands `done` its outcome: for a worker of a
    /// pool on a broker, whose tasks arrive already cut and encoded.
    #[cfg(feature = "cluster")]
    pub(crate) fn submit_raw(
        &self,
        runner: Func,
        chunk: Chunk,
        done: Box<dyn FnOnce(Body) + Send>,
    ) {
        let count = u64::from(chunk.count);
        if count == 0 {
            let none: Vec<Result<(), worker::Failure>> = Vec::new();
            let bytes = codec::encode(&none).map(|(b, _)| b).unwrap_or_default();
            return done(Body::Results(ByteBuf::from(bytes)));
        }
        let batch = Batch::new(Some(count));
        let b = batch.clone();
        // One task is one piece (the local pool never splits a raw task).
        batch.lock().on_complete = Some(Box::new(move || {
            let piece = std::mem::take(&mut b.lock().ready).into_values().next();
            if let Some(piece) = piece {
                done(piece.body);
            }
        }));
        self.shared
            .submit(&batch, (0..count).collect(), runner, chunk);
    }

    /// For a pool on a broker (feature `cluster`): its tasks outstanding, the duplicate results it
    /// dropped and the tasks it sent again; `None` for a local pool.
    #[cfg(feature = "cluster")]
    pub fn broker_stats(&self) -> Option<crate::cluster::CallerStats> {
        match &*self.shared {
            Engine::Cluster(c) => Some(c.stats()),
            Engine::Local(_) => None,
        }
    }

    /// The pids of the live workers, by slot (a slot whose worker is being replaced is left out).
    pub fn worker_pids(&self) -> Vec<i32> {
        self.shared.pids()
    }

    /// Submits one call of `f(arg)` and returns at once (Python's `apply_async`).
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_one(f, &arg, None)
    }

    /// [`apply_async`](Self::apply_async) with a callback, run in the pool's collector thread in
    /// this process when the result is ready, with the result or the error (Python's `callback`
    /// and `error_callback` in one). It should be quick: results wait behind it. It must not wait
    /// for this pool (an `apply`, a `get`, a `join` inside it would wait for the thread it runs on)
    /// nor drop the pool's last handle.
    ///
    /// # Examples
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn double(x: i32) -> i32 {
    ///     x * 2
    /// }
    ///
    /// let pool = multiprocess::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// pool.apply_async_then(double, 21, move |r| tx.send(r).unwrap());
    /// assert_eq!(rx.recv()?, Ok(42));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_then<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: impl FnOnce(Result<R, TaskError>) + Send + 'static,
    ) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_one(f, &arg, Some(Box::new(callback)))
    }

    fn submit_one<A, R>(
        &self,
        f: fn(A) -> R,
        arg: &A,
        callback: Option<ResultCallback<R>>,
    ) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        let batch = Batch::new(Some(1));
        if let Some(cb) = callback {
            // A strong reference: the handle may be gone by then. The cycle ends when the
            // callback is taken to run (every task ends: done, failed, cancelled or terminated).
            let b = batch.clone();
            batch.lock().on_complete = Some(Box::new(move || {
                if let Some(outcome) = single(&b) {
                    cb(outcome);
                }
            }));
        }
        match prepare(f, arg, self.shared.leaves_machine()) {
            Ok((runner, func, args)) => {
                let chunk = Chunk {
                    func,
                    args,
                    count: 1,
                    init: None,
                };
                self.shared.submit(&batch, vec![0], runner, chunk);
            }
            Err(e) => inner::run_all(batch_fail(&batch, 0, TaskError::Encode(e))),
        }
        AsyncResult {
            shared: self.shared.clone(),
            batch,
            _r: PhantomData,
        }
    }

    /// Runs `f(arg)` in a worker and waits for its result (Python's `apply`).
    ///
    /// # Errors
    /// Why the task has no result: see [`TaskError`].
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async(f, arg).get()
    }

    /// Applies `f` to every item, in the workers, and returns the results in order, or the first
    /// failed item (by index) with its error (Python's `map`). The input is read lazily, with a
    /// bounded number of tasks in flight; items go to workers in chunks of Python's default size
    /// (the length over four times the workers, rounded up) when the input's length is known, else
    /// one by one. Every item runs even when one fails.
    ///
    /// # Errors
    /// The first failed item, with its index.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_iter(f, items).collect_ordered()
    }

    /// [`map`](Self::map), with every item's own `Result`: a failing item never hides the others.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Pool, TaskError};
    ///
    /// fn checked_inverse(x: i32) -> i32 {
    ///     assert!(x != 0, "no inverse of zero");
    ///     100 / x
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let results = pool.map_results(checked_inverse, [4, 0, 50]);
    /// assert_eq!(results[0], Ok(25));
    /// assert!(matches!(&results[1], Err(TaskError::Panicked { message }) if message == "no inverse of zero"));
    /// assert_eq!(results[2], Ok(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_results<A, R, I>(&self, f: fn(A) -> R, items: I) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_iter(f, items).collect()
    }

    fn map_iter<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<I::IntoIter, A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let items = items.into_iter();
        let chunksize = self.default_chunksize(items.size_hint());
        self.imap(f, items).chunksize(chunksize)
    }

    /// [`map`](Self::map) for a function of two arguments, over pairs (Python's `starmap`). More
    /// arguments: a function of one tuple, with `map`.
    ///
    /// # Examples
    /// ```
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    ///
    /// let pool = multiprocess::Pool::new(2)?;
    /// assert_eq!(pool.starmap(power, [(2, 10), (3, 3)])?, [1024, 27]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The first failed item, with its index.
    pub fn starmap<A, B, R, I>(&self, f: fn(A, B) -> R, items: I) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned,
        B: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = (A, B)>,
    {
        let items = items.into_iter();
        let chunksize = self.default_chunksize(items.size_hint());
        let it: Imap<_, (A, B), R> = Imap::new(self, tokens2(f), items, true).chunksize(chunksize);
        it.collect_ordered()
    }

    /// [`map`](Self::map) with a state per worker (rayon's `map_init`): `init()` runs once in each
    /// worker, the first time it takes a task of this kind, and every item there is `f(&mut state,
    /// item)`. The state stays with the worker for later calls with the same `init` (a connection,
    /// a cache, a loaded model), and goes with it.
    ///
    /// # Examples
    /// ```
    /// fn new_counter() -> u64 {
    ///     0
    /// }
    ///
    /// fn count(seen: &mut u64, item: u32) -> (u32, u64) {
    ///     *seen += 1;
    ///     (item, *seen)
    /// }
    ///
    /// let pool = multiprocess::Pool::new(1)?;
    /// let out = pool.map_init(new_counter, count, [7, 8, 9])?;
    /// assert_eq!(out, [(7, 1), (8, 2), (9, 3)]); // one worker: one state, counting
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The first failed item, with its index (a panic in `init` fails the items of that task).
    pub fn map_init<S, A, R, I>(
        &self,
        init: fn() -> S,
        f: fn(&mut S, A) -> R,
        items: I,
    ) -> Result<Vec<R>, MapError>
    where
        S: 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let items = items.into_iter();
        let chunksize = self.default_chunksize(items.size_hint());
        let tokens = (|| {
            let runner =
                Func::of(worker::runner_with_state::<S, A, R>()).map_err(|e| e.to_string())?;
            let func = Func::of_with_state(f).map_err(|e| e.to_string())?;
            let init = Func::of0(init).map_err(|e| e.to_string())?;
            Ok((runner, func, init))
        })();
        let (tokens, init) = match tokens {
            Ok((runner, func, init)) => (Ok((runner, func)), Some(init)),
            Err(e) => (Err(e), None),
        };
        let mut it: Imap<_, A, R> = Imap::new(self, tokens, items, true).chunksize(chunksize);
        it.feed.init = init;
        it.collect_ordered()
    }

    /// Submits `f` over every item and returns at once (Python's `map_async`); the input is read
    /// now, into tasks of Python's default chunk size.
    pub fn map_async<A, R, I>(&self, f: fn(A) -> R, items: I) -> MapResult<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = python_chunksize(items.len(), self.processes());
        let batch = Batch::new(Some(items.len() as u64));
        let mut feed: Feed<A, R> = Feed::new(self.shared.clone(), batch.clone(), tokens(f));
        let mut it = items.into_iter();
        while feed.submit_chunk(&mut it, chunksize) {}
        feed.flush();
        MapResult {
            shared: self.shared.clone(),
            batch,
            total: feed.next,
            _r: PhantomData,
        }
    }

    /// Applies `f` to every item and yields each item's result in input order, as results arrive
    /// (Python's `imap`). The input is read lazily: at most [`Imap::in_flight`] tasks are submitted
    /// ahead of what has been yielded. Items go one per task unless [`Imap::chunksize`] says
    /// otherwise. Dropping the iterator cancels the tasks that have not started.
    ///
    /// # Examples
    /// ```
    /// fn cube(x: u64) -> u64 {
    ///     x * x * x
    /// }
    ///
    /// let pool = multiprocess::Pool::new(2)?;
    /// // An endless input: only what is taken is computed (and a few tasks ahead).
    /// let first: Vec<u64> = pool.imap(cube, 1..).take(4).map(Result::unwrap).collect();
    /// assert_eq!(first, [1, 8, 27, 64]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<I::IntoIter, A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, tokens(f), items.into_iter(), true)
    }

    /// [`imap`](Self::imap), yielding `(index, result)` pairs in the order results arrive (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> ImapUnordered<I::IntoIter, A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        ImapUnordered(Imap::new(self, tokens(f), items.into_iter(), false))
    }

    /// Accepts no more tasks; the workers leave once the submitted ones are done (Python's `close`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Stops at once: every task not finished fails with [`TaskError::Terminated`], and the
    /// workers are sent `SIGTERM`, then `SIGKILL` if they have not ended half a second later
    /// (Python's `terminate`).
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits for the workers to leave, after [`close`](Self::close) (once the submitted tasks are
    /// done) or [`terminate`](Self::terminate).
    ///
    /// # Errors
    /// [`PoolError::StillRunning`] if the pool was neither closed nor terminated.
    pub fn join(&self) -> Result<(), PoolError> {
        self.shared.join()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.shared.terminated() {
            self.shared.terminate();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.stop(threads);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("phase", &self.shared.phase())
            .finish()
    }
}

/// An item's index and outcome.
type Numbered<R> = (u64, Result<R, TaskError>);

/// A callback given a task's result.
type ResultCallback<R> = Box<dyn FnOnce(Result<R, TaskError>) + Send + 'static>;

/// Python's default chunk size for `map`: `ceil(len / (4 * workers))`, at least 1.
fn python_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(workers.clamp(1, usize::MAX / 4) * 4).max(1)
}

/// Gives item `index` of `batch` the error `e`.
fn batch_fail(batch: &Batch, index: u64, e: TaskError) -> Option<inner::Callback> {
    batch.fail(vec![index], e)
}

/// Tasks a [`Feed`] stages at most before it submits them.
const STAGED_AT_MOST: usize = 64;

/// Cuts an input into tasks and submits them.
struct Feed<A, R> {
    shared: Arc<Engine>,
    batch: Arc<Batch>,
    /// The runner and function tokens, or why there are none.
    tokens: Result<(Func, Func), String>,
    /// Items read so far.
    next: u64,
    /// For `map_init`: the function that makes each worker's state.
    init: Option<Func>,
    /// Tasks read and encoded, not yet submitted (see [`Feed::flush`]).
    staged: Vec<(Vec<u64>, Chunk)>,
    _f: PhantomData<fn(A) -> R>,
}

impl<A: Serialize + DeserializeOwned, R: Serialize + DeserializeOwned> Feed<A, R> {
    fn new(shared: Arc<Engine>, batch: Arc<Batch>, tokens: Result<(Func, Func), String>) -> Self {
        Feed {
            shared,
            batch,
            tokens,
            next: 0,
            init: None,
            staged: Vec::new(),
            _f: PhantomData,
        }
    }

    /// Submits the staged tasks, under one lock of the pool (a lock and a round of dispatch per
    /// one-item task would cost more than the task).
    fn flush(&mut self) {
        if let Ok((runner, _)) = &self.tokens {
            self.shared
                .submit_many(&self.batch, runner, std::mem::take(&mut self.staged));
        }
    }

    /// Reads up to `n` items and stages them as one task, submitting every [`STAGED_AT_MOST`]
    /// (and at the end of the input); false once the input has ended. Call [`Feed::flush`] after
    /// the last.
    fn submit_chunk(&mut self, input: &mut impl Iterator<Item = A>, n: usize) -> bool {
        let mut items = Vec::with_capacity(n);
        let first = self.next;
        let mut ended = false;
        for _ in 0..n {
            match input.next() {
                Some(item) => items.push(item),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        self.next += items.len() as u64;
        if !items.is_empty() {
            match &self.tokens {
                Ok((_, func)) => {
                    let (indices, args) = self.encode(first, items);
                    if !indices.is_empty() {
                        let chunk = Chunk {
                            func: func.clone(),
                            args,
                            count: indices.len() as u32,
                            init: self.init.clone(),
                        };
                        self.staged.push((indices, chunk));
                        if self.staged.len() >= STAGED_AT_MOST {
                            self.flush();
                        }
                    }
                }
                Err(e) => {
                    let indices = (first..self.next).collect();
                    inner::run_all(self.batch.fail(indices, TaskError::Encode(e.clone())));
                }
            }
        }
        if ended {
            self.flush();
            inner::run_all(self.batch.set_total(self.next));
        }
        !ended
    }

    /// The items from index `first` on, encoded together; an item that does not encode fails
    /// alone (its index is left out).
    fn encode(&self, first: u64, items: Vec<A>) -> (Vec<u64>, ByteBuf) {
        let all = first..first + items.len() as u64;
        let leaving = self.shared.leaves_machine();
        if let Ok(args) = encode_args(&items, leaving) {
            return (all.collect(), args);
        }
        let mut good = Vec::with_capacity(items.len());
        let mut indices = Vec::with_capacity(items.len());
        for (index, item) in all.zip(items) {
            match encode_args(std::slice::from_ref(&item), leaving) {
                Ok(_) => {
                    indices.push(index);
                    good.push(item);
                }
                Err(e) => inner::run_all(batch_fail(&self.batch, index, TaskError::Encode(e))),
            }
        }
        // What encoded alone encodes together (an encoder that fails at random does not count).
        let args = encode_args(&good, leaving).unwrap_or_default();
        (indices, args)
    }
}

/// The result of [`Pool::apply_async`]: wait for it, look at it, or cancel it.
#[must_use = "an AsyncResult is how the task's result is read"]
pub struct AsyncResult<R> {
    shared: Arc<Engine>,
    batch: Arc<Batch>,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the result (Python's `get()`); it can be read again.
    ///
    /// # Errors
    /// Why the task has no result: see [`TaskError`].
    pub fn get(&self) -> Result<R, TaskError> {
        self.wait();
        single(&self.batch).expect("ready")
    }

    /// Waits at most `timeout` for the result. Timing out kills nothing: the task goes on.
    ///
    /// # Errors
    /// [`ResultTimeoutError::Timeout`] if it is not ready in time, else the task's error.
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, ResultTimeoutError<TaskError>> {
        self.wait_timeout(timeout)
            .map_err(|Timeout| ResultTimeoutError::Timeout)?;
        single(&self.batch)
            .expect("ready")
            .map_err(ResultTimeoutError::Failed)
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        let _ = self.batch.wait_complete(None);
    }

    /// Waits at most `timeout` until the result is ready.
    ///
    /// # Errors
    /// [`Timeout`] if it is not.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Timeout> {
        self.batch.wait_complete(Some(timeout))
    }

    /// Whether the result is ready.
    pub fn ready(&self) -> bool {
        self.batch.lock().is_complete()
    }

    /// Whether the task succeeded: `None` while it is not ready (Python raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        let s = self.batch.lock();
        let piece = s.ready.get(&0)?;
        Some(match &piece.body {
            Body::Failed(_) => false,
            // The task ran; whether its item succeeded is the variant of its `Result`, the
            // 32-bit tag after the sequence's 64-bit length in the crate's encoding (bincode,
            // fixed-width integers).
            Body::Results(bytes) => bytes.get(8..12) == Some(&0u32.to_le_bytes()[..]),
        })
    }

    /// Cancels the task: one not started yet is skipped, a running one has its worker killed (and
    /// replaced). Its result becomes [`TaskError::Cancelled`]. False if it had ended already.
    pub fn cancel(&self) -> bool {
        let tasks: Vec<u64> = self.batch.lock().tasks.iter().copied().collect();
        !self.ready() && tasks.into_iter().any(|t| self.shared.cancel(t))
    }
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.batch.lock().is_complete())
            .finish()
    }
}

/// The results of [`Pool::map_async`]. Dropping it cancels the tasks that have not started.
#[must_use = "a MapResult is how the map's results are read; dropping it cancels the map"]
pub struct MapResult<R> {
    shared: Arc<Engine>,
    batch: Arc<Batch>,
    total: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> MapResult<R> {
    /// Waits for every result; all of them in order, or the first failed item with its index.
    ///
    /// # Errors
    /// The first failed item.
    pub fn get(&self) -> Result<Vec<R>, MapError> {
        self.wait();
        collect_ordered(self.results())
    }

    /// [`get`](Self::get), waiting at most `timeout`. Timing out kills nothing.
    ///
    /// # Errors
    /// [`ResultTimeoutError::Timeout`], or the first failed item.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, ResultTimeoutError<MapError>> {
        self.wait_timeout(timeout)
            .map_err(|Timeout| ResultTimeoutError::Timeout)?;
        collect_ordered(self.results()).map_err(ResultTimeoutError::Failed)
    }

    /// Waits for every result; each item's own.
    pub fn results(&self) -> Vec<Result<R, TaskError>> {
        self.wait();
        let pieces: Vec<Piece> = self.batch.lock().ready.values().cloned().collect();
        let mut out: Vec<Option<Result<R, TaskError>>> = (0..self.total).map(|_| None).collect();
        for (i, r) in pieces.into_iter().flat_map(decode_piece) {
            if let Some(slot) = out.get_mut(i as usize) {
                *slot = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(TaskError::Decode("an item has no outcome".into()))))
            .collect()
    }

    /// Waits until every item has its outcome.
    pub fn wait(&self) {
        let _ = self.batch.wait_complete(None);
    }

    /// Waits at most `timeout` until every item has its outcome.
    ///
    /// # Errors
    /// [`Timeout`] if some have not.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Timeout> {
        self.batch.wait_complete(Some(timeout))
    }

    /// Whether every item has its outcome.
    pub fn ready(&self) -> bool {
        self.batch.lock().is_complete()
    }

    /// How many items are done, of how many.
    pub fn progress(&self) -> Progress {
        self.batch.progress()
    }

    /// Cancels every task of the map that has not ended (see [`AsyncResult::cancel`]); how many.
    pub fn cancel(&self) -> usize {
        let tasks: Vec<u64> = self.batch.lock().tasks.iter().copied().collect();
        tasks.into_iter().filter(|&t| self.shared.cancel(t)).count()
    }
}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.batch.lock();
        f.debug_struct("MapResult")
            .field("done", &s.done)
            .field("total", &self.total)
            .finish()
    }
}

impl<R> Drop for MapResult<R> {
    fn drop(&mut self) {
        cancel_unstarted(&self.shared, &self.batch);
    }
}

/// Cancels the batch's tasks that no worker has started.
fn cancel_unstarted(shared: &Engine, batch: &Batch) {
    let tasks: Vec<u64> = batch.lock().tasks.iter().copied().collect();
    shared.cancel_pending(&tasks);
}

fn collect_ordered<R>(results: Vec<Result<R, TaskError>>) -> Result<Vec<R>, MapError> {
    results
        .into_iter()
        .enumerate()
        .map(|(index, r)| r.map_err(|error| MapError { index, error }))
        .collect()
}

/// Iterators' items through a pool's workers, in rayon's shape: `items.pool_map(&pool, f)` is
/// [`pool.imap(f, items)`](Pool::imap), lazy, with each item's own `Result`.
///
/// # Examples
/// ```
/// use multiprocess::{Pool, PoolMap};
///
/// fn len(s: String) -> usize {
///     s.len()
/// }
///
/// let pool = Pool::new(2)?;
/// let words = ["process", "pool", "queue"].map(String::from);
/// let lens: Vec<usize> = words.into_iter().pool_map(&pool, len).map(Result::unwrap).collect();
/// assert_eq!(lens, [7, 4, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait PoolMap: Iterator + Sized
where
    Self::Item: Serialize + DeserializeOwned,
{
    /// Each item's `f(item)`, in input order (see [`Pool::imap`]).
    fn pool_map<R: Serialize + DeserializeOwned>(
        self,
        pool: &Pool,
        f: fn(Self::Item) -> R,
    ) -> Imap<Self, Self::Item, R> {
        pool.imap(f, self)
    }

    /// Each item's index and `f(item)`, as they finish (see [`Pool::imap_unordered`]).
    fn pool_map_unordered<R: Serialize + DeserializeOwned>(
        self,
        pool: &Pool,
        f: fn(Self::Item) -> R,
    ) -> ImapUnordered<Self, Self::Item, R> {
        pool.imap_unordered(f, self)
    }
}

impl<I: Iterator> PoolMap for I where I::Item: Serialize + DeserializeOwned {}

/// The iterator of [`Pool::imap`]: each item's result, in input order.
#[must_use = "an Imap does nothing unless iterated"]
pub struct Imap<I, A, R> {
    feed: Feed<A, R>,
    input: I,
    input_done: bool,
    chunksize: usize,
    in_flight: usize,
    /// Items yielded so far (and, in order, the index of the next).
    yielded: u64,
    ordered: bool,
    /// Pieces taken from the batch and decoded, not yet yielded, by their first index.
    decoded: BTreeMap<u64, VecDeque<Numbered<R>>>,
    /// The progress bar (feature `progress`).
    bar: progress::Bar,
}

impl<I, A, R> Imap<I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    fn new(pool: &Pool, tokens: Result<(Func, Func), String>, input: I, ordered: bool) -> Self {
        Imap {
            feed: Feed::new(pool.shared.clone(), Batch::new(None), tokens),
            input,
            input_done: false,
            chunksize: 1,
            in_flight: pool.shared.default_in_flight(),
            yielded: 0,
            ordered,
            decoded: BTreeMap::new(),
            bar: progress::Bar::new(),
        }
    }

    /// Items per task (default 1). Set it before the first item is taken.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    /// Tasks submitted ahead of what has been yielded (default: 4 per worker; 32 per worker
    /// process on a broker).
    pub fn in_flight(mut self, tasks: usize) -> Self {
        self.in_flight = tasks.max(1);
        self
    }

    /// How many items are done, of how many (the total is known once the input has ended).
    pub fn progress(&self) -> Progress {
        self.feed.batch.progress()
    }

    /// Fills the window again once a quarter of it is free (not at every item: see
    /// [`Feed::flush`]), or when nothing is in flight.
    fn top_up(&mut self) {
        let chunk = self.chunksize as u64;
        let limit = (self.in_flight as u64).saturating_mul(chunk);
        let slack = (self.in_flight as u64 / 4).max(1).saturating_mul(chunk);
        let in_flight = self.feed.next - self.yielded;
        if self.input_done || (in_flight > 0 && in_flight + slack > limit) {
            return;
        }
        while !self.input_done && self.feed.next - self.yielded < limit {
            self.input_done = !self.feed.submit_chunk(&mut self.input, self.chunksize);
        }
        self.feed.flush();
    }

    fn next_outcome(&mut self) -> Option<(u64, Result<R, TaskError>)> {
        self.top_up();
        if self.input_done && self.yielded >= self.feed.next {
            self.bar.finish();
            return None;
        }
        loop {
            if let Some(item) = self.take_decoded() {
                self.yielded += 1;
                let total = self.input_done.then_some(self.feed.next);
                self.bar.update(self.yielded, total);
                return Some(item);
            }
            // Nothing to yield yet: take every piece that has arrived.
            let (mut s, _) = self.feed.batch.wait_until(None, |s| !s.ready.is_empty());
            let pieces = std::mem::take(&mut s.ready);
            drop(s);
            for (first, piece) in pieces {
                self.decoded.insert(first, decode_piece(piece).into());
            }
        }
    }

    /// Every item's result in input order, or the first failed item with its index (once every
    /// item has ended, as Python's `map`): what `map` returns.
    ///
    /// The same walk as iterating, without an item at a time: a task's results are decoded straight
    /// into the output (a trivial function's items cost less than their bookkeeping would).
    fn collect_ordered(mut self) -> Result<Vec<R>, MapError> {
        debug_assert!(self.ordered);
        let mut out: Vec<R> = Vec::new();
        let mut first_error: Option<MapError> = None;
        // Pieces taken from the batch that are not next yet, by their first index.
        let mut waiting: BTreeMap<u64, Piece> = BTreeMap::new();
        loop {
            // The next items: a whole task's results (indices without a gap), else one at a time
            // through the general path (a piece with a gap, an error for all, a task still held).
            loop {
                if let Some(item) = self.take_decoded() {
                    self.yielded += 1;
                    match item.1 {
                        Ok(v) if first_error.is_none() => out.push(v),
                        Ok(_) => {}
                        Err(error) => {
                            first_error.get_or_insert(MapError {
                                index: item.0 as usize,
                                error,
                            });
                        }
                    }
                    continue;
                }
                let Some(entry) = waiting.first_entry() else {
                    break;
                };
                if *entry.key() != self.yielded {
                    break;
                }
                let piece = entry.remove();
                let n = piece.indices.len() as u64;
                let whole = piece.indices.last() == Some(&(self.yielded + n - 1));
                match piece.body {
                    Body::Results(bytes) if whole && first_error.is_none() => {
                        out.reserve(n as usize);
                        let seed = AppendOk {
                            out: &mut out,
                            first: self.yielded,
                            error: &mut first_error,
                        };
                        let seen = match codec::decode_seed(&bytes, seed) {
                            Ok(seen) if seen == n => Ok(()),
                            Ok(seen) => {
                                Err(TaskError::Decode(format!("{seen} results for {n} items")))
                            }
                            Err(e) => Err(TaskError::Decode(e)),
                        };
                        if let Err(error) = seen {
                            // A worker's reply that does not decode: the first of its items that
                            // has no result is the error (at worst the whole task).
                            let index = out.len().max(self.yielded as usize);
                            first_error.get_or_insert(MapError { index, error });
                        }
                        self.yielded += n;
                    }
                    // After an error nothing more is decoded; the items are only counted.
                    _ if whole && first_error.is_some() => self.yielded += n,
                    body => {
                        let piece = Piece {
                            indices: piece.indices,
                            body,
                        };
                        let first = self.yielded;
                        self.decoded.insert(first, decode_piece(piece).into());
                    }
                }
                let total = self.input_done.then_some(self.feed.next);
                self.bar.update(self.yielded, total);
            }
            self.top_up();
            if self.input_done && self.yielded >= self.feed.next {
                self.bar.finish();
                return first_error.map_or(Ok(out), Err);
            }
            // Nothing next yet: take every piece that has arrived.
            let (mut s, _) = self.feed.batch.wait_until(None, |s| !s.ready.is_empty());
            waiting.append(&mut s.ready);
        }
    }

    /// The next item to yield, if it is decoded: in order, the one at `yielded` (the front of the
    /// piece with the smallest first index, since every smaller index was yielded); else any.
    fn take_decoded(&mut self) -> Option<(u64, Result<R, TaskError>)> {
        let mut entry = self.decoded.first_entry()?;
        if self.ordered && entry.get().front().map(|(i, _)| *i) != Some(self.yielded) {
            return None;
        }
        let item = entry.get_mut().pop_front()?;
        match entry.get().front().map(|(i, _)| *i) {
            None => {
                entry.remove();
            }
            // A piece with a gap (an item that failed to encode went alone): filed again under its
            // new front, so that the smallest key is still the smallest index.
            Some(next) if next != item.0 + 1 => {
                let rest = entry.remove();
                self.decoded.insert(next, rest);
            }
            Some(_) => {}
        }
        Some(item)
    }
}

impl<I, A, R> Iterator for Imap<I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_outcome().map(|(_, r)| r)
    }
}

impl<I, A, R> std::fmt::Debug for Imap<I, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("submitted", &self.feed.next)
            .field("yielded", &self.yielded)
            .field("ordered", &self.ordered)
            .finish()
    }
}

impl<I, A, R> std::fmt::Debug for ImapUnordered<I, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<I, A, R> Drop for Imap<I, A, R> {
    fn drop(&mut self) {
        self.bar.finish();
        cancel_unstarted(&self.feed.shared, &self.feed.batch);
    }
}

/// The iterator of [`Pool::imap_unordered`]: `(index, result)` in the order results arrive.
#[must_use = "an ImapUnordered does nothing unless iterated"]
pub struct ImapUnordered<I, A, R>(Imap<I, A, R>);

impl<I, A, R> ImapUnordered<I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    /// Items per task (default 1). Set it before the first item is taken.
    pub fn chunksize(self, n: usize) -> Self {
        ImapUnordered(self.0.chunksize(n))
    }

    /// Tasks submitted ahead of what has been yielded (default: 4 per worker; 32 per worker
    /// process on a broker).
    pub fn in_flight(self, tasks: usize) -> Self {
        ImapUnordered(self.0.in_flight(tasks))
    }

    /// How many items are done, of how many.
    pub fn progress(&self) -> Progress {
        self.0.progress()
    }
}

impl<I, A, R> Iterator for ImapUnordered<I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_outcome().map(|(i, r)| (i as usize, r))
    }
}

#[cfg(test)]
mod tests {
    use super::python_chunksize;

    #[test]
    fn chunksize_follows_python() {
        // divmod(len, 4 * workers), rounded up; at least 1.
        assert_eq!(python_chunksize(100_000, 2), 12_500);
        assert_eq!(python_chunksize(10, 2), 2);
        assert_eq!(python_chunksize(9, 2), 2);
        assert_eq!(python_chunksize(8, 2), 1);
        assert_eq!(python_chunksize(0, 2), 1);
        assert_eq!(python_chunksize(1, 8), 1);
    }
}
