//! The pool's side: which worker holds which task, the collector and the supervisor.
//!
//! See the module notes of `pool` for the design; this file is its bookkeeping. One mutex
//! (`Shared::state`) guards the task table, the pending list and the workers; each batch of results
//! has its own. The order is always state, then batch. Callbacks run with no lock held.

use super::TaskError;
use super::worker::{self, Chunk, FromWorker, Task, ToWorker, WorkerArgs, WorkerId};
use crate::error::Timeout;
use crate::error::TryGetError;
use crate::process::{Process, ProcessError, StartMethod};
use crate::queue::Queue;
use crate::sys::entry::Func;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a pool is built with.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: Option<StartMethod>,
    pub(crate) init: Option<(Func, Chunk)>,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    /// Tasks handed to a worker ahead of the one it runs.
    pub(crate) prefetch: usize,
    /// The pool of a broker worker: its processes' results leave the machine.
    pub(crate) leaving: bool,
}

/// The most messages the collector handles under one lock.
const COLLECT_AT_ONCE: usize = 64;

/// How long the supervisor sleeps at most between looks at the workers it watches (new workers
/// join its watch at its next look; an ended one is seen at once).
const SUPERVISOR_NAP: Duration = Duration::from_millis(50);

/// A callback run (in the collector) once a batch is complete.
pub(crate) type Callback = Box<dyn FnOnce() + Send>;

/// The results of one call (`apply_async`, a map, an `imap`), by item index.
pub(crate) struct Batch {
    state: Mutex<BatchState>,
    cond: Condvar,
}

/// The outcomes of some items of a batch, as they arrived: a task's results as its worker encoded
/// them (decoded by the caller, who knows their type), or one error for all of them.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub(crate) indices: Vec<u64>,
    pub(crate) body: Body,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// A `Vec<Result<R, Failure>>`, one per index.
    Results(ByteBuf),
    Failed(TaskError),
}

#[derive(Default)]
pub(crate) struct BatchState {
    /// Pieces not yet taken, by their first item index.
    pub(crate) ready: BTreeMap<u64, Piece>,
    /// Items with an outcome (taken or not).
    pub(crate) done: u64,
    /// Items submitted; `None` while the input is still being read.
    pub(crate) total: Option<u64>,
    /// Run when every item has its outcome.
    pub(crate) on_complete: Option<Callback>,
    /// Tasks of this batch still in the pool's table (so that they can be cancelled).
    pub(crate) tasks: BTreeSet<u64>,
    /// Threads waiting on the batch (a wake-up is a system call: made only for them).
    waiters: usize,
}

impl Batch {
    pub(crate) fn new(total: Option<u64>) -> Arc<Batch> {
        Arc::new(Batch {
            state: Mutex::new(BatchState {
                total,
                ..BatchState::default()
            }),
            cond: Condvar::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a piece; the completion callback, if this completed the batch.
    pub(crate) fn deliver(&self, piece: Piece) -> Option<Callback> {
        let (cb, wake) = self.record(piece);
        if wake {
            self.wake();
        }
        cb
    }

    /// Records a piece without waking its waiters: the completion callback, if this completed the
    /// batch, and whether somebody waits (to be woken with [`Batch::wake`]).
    fn record(&self, piece: Piece) -> (Option<Callback>, bool) {
        let Some(&first) = piece.indices.first() else {
            return (None, false);
        };
        let mut s = self.lock();
        s.done += piece.indices.len() as u64;
        s.ready.insert(first, piece);
        let cb = s.is_complete().then(|| s.on_complete.take()).flatten();
        (cb, s.waiters > 0)
    }

    fn wake(&self) {
        self.cond.notify_all();
    }

    /// Gives the items at `indices` the error `e`.
    pub(crate) fn fail(&self, indices: Vec<u64>, e: TaskError) -> Option<Callback> {
        self.deliver(Piece {
            indices,
            body: Body::Failed(e),
        })
    }

    /// Waits until `ok(state)` or the deadline; the guard, and whether `ok` held.
    pub(crate) fn wait_until<'a>(
        &'a self,
        deadline: Option<Instant>,
        mut ok: impl FnMut(&BatchState) -> bool,
    ) -> (MutexGuard<'a, BatchState>, bool) {
        let mut s = self.lock();
        loop {
            if ok(&s) {
                return (s, true);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return (s, false);
            }
            s.waiters += 1;
            s = match deadline {
                None => self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    self.cond
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            s.waiters -= 1;
        }
    }
}

impl Batch {
    /// Waits until every item has its outcome, at most `timeout` when one is given (a timeout too
    /// large to be a deadline waits as long as it takes).
    pub(crate) fn wait_complete(&self, timeout: Option<Duration>) -> Result<(), Timeout> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let (guard, complete) = self.wait_until(deadline, |s| s.is_complete());
        drop(guard);
        complete.then_some(()).ok_or(Timeout)
    }

    /// How many items are done, of how many.
    pub(crate) fn progress(&self) -> super::Progress {
        let s = self.lock();
        super::Progress {
            done: s.done,
            total: s.total,
        }
    }

    /// The input has ended after `total` items; the completion callback, if that completed it.
    pub(crate) fn set_total(&self, total: u64) -> Option<Callback> {
        let mut s = self.lock();
        s.total = Some(total);
        let cb = s.is_complete().then(|| s.on_complete.take()).flatten();
        let wake = s.waiters > 0;
        drop(s);
        if wake {
            self.cond.notify_all();
        }
        cb
    }
}

impl BatchState {
    pub(crate) fn is_complete(&self) -> bool {
        self.total.is_some_and(|t| self.done >= t)
    }
}

/// A task in the pool's table, from submission until its outcomes are delivered.
struct Entry {
    batch: Arc<Batch>,
    /// The batch index of each item of the chunk.
    indices: Vec<u64>,
    /// The message, until it is handed to a worker (and kept after, for a retry, when retries are
    /// on).
    task: Option<Task>,
    retries_left: u32,
    /// How the task ends if its worker dies: set when the pool kills the worker on purpose.
    fail_as: Option<TaskError>,
}

/// One worker slot.
struct Slot {
    id: WorkerId,
    process: Option<Arc<Process<()>>>,
    tasks: Option<Queue<ToWorker>>,
    /// Tasks handed to this worker, in the order it runs them.
    held: VecDeque<u64>,
    /// Items in the tasks of `held`.
    held_items: usize,
    /// A running average of how long this worker's tasks took (from when a task became its
    /// current one to its result).
    task_time: Duration,
    /// Since when the first of `held` has been the worker's current task.
    head_since: Instant,
    retiring: bool,
    /// Its `Ended` was sent by the supervisor.
    reported: bool,
    /// Told to stop (the pool is closed and has nothing more).
    stopped: bool,
}

impl Slot {
    /// Whether this worker's tasks have been quick (see [`SMALL_TASKS_AHEAD`]).
    fn quick(&self) -> bool {
        self.task_time < QUICK_TASK
    }

    fn alive(&self) -> bool {
        self.process.is_some()
    }
    fn takes_work(&self) -> bool {
        self.alive() && !self.retiring && !self.stopped
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Closed,
    Terminated,
}

pub(crate) struct State {
    slots: Vec<Slot>,
    table: HashMap<u64, Entry>,
    pending: VecDeque<u64>,
    next_task: u64,
    pub(crate) phase: Phase,
    /// Why no task can run (the initializer failed, no worker could be started).
    broken: Option<TaskError>,
}

/// What the pool's handle, its threads and its results share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Signalled when a worker ends or the phase changes (for `join`).
    pub(crate) changed: Condvar,
    pub(crate) results: Queue<FromWorker>,
    pub(crate) config: Config,
    pub(crate) stop: AtomicBool,
    /// Written to wake the supervisor (a new worker to watch, or the end); it polls the other end.
    wake: (UnixStream, UnixStream),
}

impl Shared {
    pub(crate) fn start(config: Config) -> std::io::Result<Arc<Shared>> {
        let results = Queue::new()?;
        let now = Instant::now();
        let slots = (0..config.processes)
            .map(|slot| Slot {
                id: WorkerId {
                    slot: slot as u32,
                    generation: 0,
                },
                process: None,
                tasks: None,
                held: VecDeque::new(),
                held_items: 0,
                task_time: QUICK_TASK,
                head_since: now,
                retiring: false,
                reported: false,
                stopped: false,
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots,
                table: HashMap::new(),
                pending: VecDeque::new(),
                next_task: 0,
                phase: Phase::Running,
                broken: None,
            }),
            changed: Condvar::new(),
            results,
            config,
            stop: AtomicBool::new(false),
            wake: {
                let (w, r) = UnixStream::pair()?;
                r.set_nonblocking(true)?;
                w.set_nonblocking(true)?;
                (w, r)
            },
        });
        {
            let mut st = shared.lock();
            for slot in 0..shared.config.processes {
                if let Err(e) = shared.spawn_into(&mut st, slot, 0) {
                    drop(st);
                    shared.terminate();
                    return Err(e);
                }
            }
        }
        Ok(shared)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a worker in `slot` (its next generation).
    fn spawn_into(&self, st: &mut State, slot: usize, generation: u64) -> std::io::Result<()> {
        let s = &mut st.slots[slot];
        let id = WorkerId {
            slot: slot as u32,
            generation,
        };
        let tasks = Queue::new()?;
        let args = WorkerArgs {
            id,
            tasks: tasks.clone(),
            results: self.results.clone(),
            init: self.config.init.clone(),
            max_tasks: self.config.max_tasks,
            max_memory: self.config.max_memory,
            leaving: self.config.leaving,
        };
        let mut b = Process::builder()
            .name(format!("PoolWorker-{}.{}", slot, id.generation))
            .daemon(true);
        if let Some(m) = self.config.method {
            b = b.start_method(m);
        }
        let process = b.spawn(worker::worker_main, args)?;
        *s = Slot {
            id,
            process: Some(Arc::new(process)),
            tasks: Some(tasks),
            held: VecDeque::new(),
            held_items: 0,
            task_time: QUICK_TASK,
            head_since: Instant::now(),
            retiring: false,
            reported: false,
            stopped: false,
        };
        self.wake_supervisor();
        Ok(())
    }

    /// Makes the supervisor look again at once.
    pub(crate) fn wake_supervisor(&self) {
        // A full socket already holds a wake-up: nothing is lost if this one is refused.
        let _ = (&self.wake.0).write(&[1]);
    }

    /// Adds a task to the pending list (or fails it at once if nothing can run it).
    /// Adds tasks of one batch and runner to the pending list under one lock, with one round of
    /// dispatch (or fails them at once if nothing can run them).
    pub(crate) fn submit_many(
        &self,
        batch: &Arc<Batch>,
        runner: &Func,
        tasks: Vec<(Vec<u64>, Chunk)>,
    ) {
        if tasks.is_empty() {
            return;
        }
        let mut st = self.lock();
        let refuse = match (&st.broken, st.phase) {
            (Some(e), _) => Some(e.clone()),
            (None, Phase::Closed) => Some(TaskError::Closed),
            (None, Phase::Terminated) => Some(TaskError::Terminated),
            (None, Phase::Running) => None,
        };
        if let Some(e) = refuse {
            drop(st);
            for (indices, _) in tasks {
                run_all(batch.fail(indices, e.clone()));
            }
            return;
        }
        {
            let mut b = batch.lock();
            for (indices, chunk) in tasks {
                let id = st.next_task;
                st.next_task += 1;
                let task = Task {
                    id,
                    runner: runner.clone(),
                    chunk,
                };
                st.table.insert(
                    id,
                    Entry {
                        batch: batch.clone(),
                        indices,
                        task: Some(task),
                        retries_left: self.config.retries,
                        fail_as: None,
                    },
                );
                b.tasks.insert(id);
                st.pending.push_back(id);
            }
        }
        let cbs = self.dispatch(&mut st);
        drop(st);
        run_all(cbs);
    }

    /// Hands pending tasks to workers with room, one at a time around the slots.
    fn dispatch(&self, st: &mut State) -> Vec<Callback> {
        let mut cbs = Vec::new();
        let prefetch = self.config.prefetch.max(1);
        while !st.pending.is_empty() {
            // The least loaded worker with room: fewer than `prefetch` tasks, or, while its tasks
            // have been quick, a few more small ones, so that it does not sleep between one-item
            // tasks (a wake-up per task) while slow tasks still go to whichever worker frees first.
            let Some(slot) = (0..st.slots.len())
                .filter(|&i| {
                    let s = &st.slots[i];
                    s.takes_work()
                        && (s.held.len() < prefetch
                            || (s.quick()
                                && s.held.len() < SMALL_TASKS_AHEAD
                                && s.held_items < SMALL_ITEMS_AHEAD))
                })
                .min_by_key(|&i| st.slots[i].held.len())
            else {
                break;
            };
            let id = st.pending.pop_front().expect("not empty");
            let Some(entry) = st.table.get_mut(&id) else {
                continue;
            };
            let Some(task) = entry.task.take() else {
                continue;
            };
            if self.config.retries > 0 {
                entry.task = Some(task.clone());
            }
            let items = task.chunk.count as usize;
            let s = &mut st.slots[slot];
            let queue = s.tasks.as_ref().expect("a live worker has a queue");
            match queue.put(ToWorker::Run(task)) {
                Ok(()) => {
                    if s.held.is_empty() {
                        s.head_since = Instant::now();
                    }
                    s.held.push_back(id);
                    s.held_items += items;
                }
                Err(e) => {
                    let e = TaskError::Child(format!("could not hand the task to a worker: {e}"));
                    cbs.extend(fail(st, id, e));
                }
            }
        }
        if st.phase == Phase::Closed && st.pending.is_empty() {
            for s in &mut st.slots {
                if s.alive() && s.held.is_empty() && !s.stopped {
                    if let Some(q) = &s.tasks {
                        let _ = q.put(ToWorker::Stop);
                    }
                    s.stopped = true;
                }
            }
        }
        cbs
    }

    /// Cancels a task: one that has not started is skipped (also when it waits in a worker's
    /// queue); a running one has its worker killed (and replaced). Whether it was cancelled
    /// (false: it had ended already).
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let mut st = self.lock();
        if !st.table.contains_key(&id) {
            return false;
        }
        if let Some(at) = st.pending.iter().position(|&t| t == id) {
            st.pending.remove(at);
            let cbs = fail(&mut st, id, TaskError::Cancelled);
            drop(st);
            run_all(cbs);
            return true;
        }
        // Handed to a worker: take back what it has not started (all of that is in its queue,
        // which the pool holds a handle to), skip this task if it is among them, and put the rest
        // back in line.
        let Some(slot) = st.slots.iter().position(|s| s.held.contains(&id)) else {
            return false;
        };
        let mut unstarted = Vec::new();
        if let Some(q) = &st.slots[slot].tasks {
            for msg in q.try_iter() {
                match msg {
                    Ok(ToWorker::Run(task)) => unstarted.push(task),
                    Ok(ToWorker::Stop) => {
                        let _ = q.put(ToWorker::Stop);
                    }
                    Err(_) => {}
                }
            }
        }
        let mut cbs = Vec::new();
        let mut skipped = false;
        let mut back = Vec::new();
        for task in unstarted {
            let t = task.id;
            let items = task.chunk.count as usize;
            let s = &mut st.slots[slot];
            s.held.retain(|&h| h != t);
            s.held_items = s.held_items.saturating_sub(items);
            if t == id {
                skipped = true;
                cbs.extend(fail(&mut st, id, TaskError::Cancelled));
            } else if let Some(entry) = st.table.get_mut(&t) {
                entry.task = Some(task);
                back.push(t);
            }
        }
        for t in back.into_iter().rev() {
            st.pending.push_front(t);
        }
        if !skipped {
            // Started: its worker is killed (and replaced); the task ends as cancelled.
            if let Some(entry) = st.table.get_mut(&id) {
                entry.fail_as = Some(TaskError::Cancelled);
            }
            if let Some(p) = &st.slots[slot].process {
                let _ = p.kill();
            }
        }
        cbs.extend(self.dispatch(&mut st));
        drop(st);
        run_all(cbs);
        true
    }

    /// Cancels those of `tasks` that no worker has been handed (a dropped `imap` or map result).
    pub(crate) fn cancel_pending(&self, tasks: &[u64]) {
        let mut st = self.lock();
        let mut cbs = Vec::new();
        for &id in tasks {
            if let Some(at) = st.pending.iter().position(|&t| t == id) {
                st.pending.remove(at);
                cbs.extend(fail(&mut st, id, TaskError::Cancelled));
            }
        }
        drop(st);
        run_all(cbs);
    }

    /// The collector: takes every message from the workers and the supervisor, in order.
    ///
    /// It takes what has arrived in one go (up to [`COLLECT_AT_ONCE`] messages) and handles it
    /// under one lock, with one round of dispatch and one wake-up per batch: with quick tasks,
    /// results arrive faster than a thread wakes, and a lock, a dispatch and a wake-up per result
    /// would cost more than the tasks.
    pub(crate) fn collect(self: &Arc<Shared>) {
        let mut msgs = Vec::with_capacity(COLLECT_AT_ONCE);
        loop {
            match self.results.get() {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    crate::trace::event!(error, "a pool's result queue failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    continue;
                }
            }
            while msgs.len() < COLLECT_AT_ONCE {
                match self.results.try_get() {
                    Ok(m) => msgs.push(m),
                    Err(TryGetError::Empty) => break,
                    Err(e) => {
                        crate::trace::event!(error, "a pool's result queue failed: {e}");
                        break;
                    }
                }
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let cbs = self.handle(msgs.drain(..));
            run_all(cbs);
        }
    }

    fn handle(&self, msgs: impl Iterator<Item = FromWorker>) -> Vec<Callback> {
        let mut st = self.lock();
        let mut cbs = Vec::new();
        let mut ended = false;
        // Batches with waiters to wake once all is recorded (a few: a linear search is cheapest).
        let mut woken: Vec<Arc<Batch>> = Vec::new();
        for msg in msgs {
            match msg {
                FromWorker::Done {
                    worker,
                    task,
                    results,
                } => {
                    if let Some(s) = slot_of(&mut st, worker)
                        && let Some(at) = s.held.iter().position(|&t| t == task)
                    {
                        s.held.remove(at);
                        if at == 0 {
                            let took = s.head_since.elapsed();
                            s.task_time = (s.task_time * 3 + took) / 4;
                        }
                        let items = st.table.get(&task).map_or(0, |e| e.indices.len());
                        let s = slot_of(&mut st, worker).expect("found above");
                        s.held_items = s.held_items.saturating_sub(items);
                        if at == 0 {
                            s.head_since = Instant::now();
                        }
                    }
                    if let Some(entry) = st.table.remove(&task) {
                        entry.batch.lock().tasks.remove(&task);
                        let (cb, wake) = entry.batch.record(Piece {
                            indices: entry.indices,
                            body: Body::Results(results),
                        });
                        cbs.extend(cb);
                        if wake && !woken.iter().any(|b| Arc::ptr_eq(b, &entry.batch)) {
                            woken.push(entry.batch);
                        }
                    }
                }
                FromWorker::Retiring { worker } => {
                    if let Some(s) = slot_of(&mut st, worker) {
                        s.retiring = true;
                    }
                }
                FromWorker::InitFailed { worker, message } => {
                    if let Some(s) = slot_of(&mut st, worker) {
                        s.retiring = true;
                    }
                    let e = TaskError::Initializer(message);
                    st.broken = Some(e.clone());
                    cbs.extend(fail_everything(&mut st, e));
                }
                FromWorker::Ended { worker } => {
                    cbs.extend(self.ended(&mut st, worker));
                    ended = true;
                }
                FromWorker::Wake => {}
            }
        }
        cbs.extend(self.dispatch(&mut st));
        drop(st);
        for b in woken {
            b.wake();
        }
        if ended {
            self.changed.notify_all(); // for `join`
        }
        cbs
    }

    /// A worker's process ended: hand back what it had not started, fail (or retry) what it held,
    /// and start its successor if there is work for one.
    fn ended(&self, st: &mut State, worker: WorkerId) -> Vec<Callback> {
        let mut cbs = Vec::new();
        let Some(s) = slot_of(st, worker) else {
            return cbs;
        };
        let Some(process) = s.process.take() else {
            return cbs;
        };
        let tasks = s.tasks.take();
        let held = std::mem::take(&mut s.held);
        s.held_items = 0;
        let retiring = s.retiring;
        let pid = process.pid();
        let outcome = process.join();
        // What is still in its queue was never started: back to the front of the line, in order.
        let mut unstarted = Vec::new();
        if let Some(q) = &tasks {
            for msg in q.try_iter() {
                if let Ok(ToWorker::Run(task)) = msg {
                    unstarted.push(task);
                }
            }
        }
        let mut back = Vec::new();
        for task in unstarted {
            if let Some(entry) = st.table.get_mut(&task.id) {
                back.push(task.id);
                entry.task = Some(task);
            }
        }
        let died = died_of(pid, &outcome);
        for id in held {
            if back.contains(&id) {
                continue;
            }
            let Some(entry) = st.table.get_mut(&id) else {
                continue;
            };
            if let Some(e) = entry.fail_as.take() {
                cbs.extend(fail(st, id, e));
            } else if entry.retries_left > 0 && entry.task.is_some() {
                entry.retries_left -= 1;
                back.push(id);
            } else {
                let e = died.clone().unwrap_or(TaskError::WorkerDied {
                    pid,
                    code: Some(0),
                    signal: None,
                });
                cbs.extend(fail(st, id, e));
            }
        }
        back.sort_unstable();
        for id in back.into_iter().rev() {
            st.pending.push_front(id);
        }
        if died.is_some() && !retiring {
            crate::trace::event!(
                warn,
                "pool worker {pid} died: {:?}; replacing it",
                outcome.err()
            );
        }
        let wanted = match st.phase {
            Phase::Running => true,
            Phase::Closed => !st.pending.is_empty(),
            Phase::Terminated => false,
        };
        if wanted && st.broken.is_none() {
            let slot = worker.slot as usize;
            if let Err(e) = self.spawn_into(st, slot, worker.generation + 1) {
                crate::trace::event!(error, "a pool could not replace a worker: {e}");
                if st.slots.iter().all(|s| !s.alive()) {
                    let e = TaskError::Spawn(e.to_string());
                    st.broken = Some(e.clone());
                    cbs.extend(fail_everything(st, e));
                }
            }
        }
        cbs
    }

    /// The supervisor: watches the workers' pidfds and the running tasks' deadlines.
    pub(crate) fn supervise(self: &Arc<Shared>) {
        while !self.stop.load(Ordering::Acquire) {
            let (watched, deadline) = {
                let st = self.lock();
                let mut deadline = Instant::now() + SUPERVISOR_NAP;
                let mut watched = Vec::new();
                for s in &st.slots {
                    let (Some(p), false) = (&s.process, s.reported) else {
                        continue;
                    };
                    watched.push((s.id, p.clone()));
                    if let (Some(limit), Some(_)) = (self.config.task_timeout, s.held.front()) {
                        deadline = deadline.min(s.head_since + limit);
                    }
                }
                (watched, deadline)
            };
            let mut fds: Vec<_> = watched.iter().map(|(_, p)| p.pidfd()).collect();
            fds.push(self.wake.1.as_fd());
            let ready = match crate::sys::poll_readable(&fds, Some(deadline)) {
                Ok(r) => r,
                Err(e) => {
                    crate::trace::event!(error, "a pool's supervisor could not poll: {e}");
                    std::thread::sleep(SUPERVISOR_NAP);
                    continue;
                }
            };
            drop(fds);
            if ready.last() == Some(&true) {
                let mut sink = [0u8; 64];
                while matches!((&self.wake.1).read(&mut sink), Ok(n) if n > 0) {}
            }
            let mut st = self.lock();
            for ((id, _), ended) in watched.iter().zip(ready) {
                if !ended {
                    continue;
                }
                if let Some(s) = slot_of(&mut st, *id) {
                    s.reported = true;
                }
                if let Err(e) = self.results.put(FromWorker::Ended { worker: *id }) {
                    crate::trace::event!(error, "a pool's supervisor could not report: {e}");
                }
            }
            if let Some(limit) = self.config.task_timeout {
                let now = Instant::now();
                let mut late = Vec::new();
                for s in &st.slots {
                    if let (Some(&task), Some(p), false) = (s.held.front(), &s.process, s.reported)
                        && now >= s.head_since + limit
                    {
                        late.push((task, p.clone()));
                    }
                }
                for (task, process) in late {
                    if let Some(entry) = st.table.get_mut(&task)
                        && entry.fail_as.is_none()
                    {
                        entry.fail_as = Some(TaskError::Timeout(limit));
                        let _ = process.kill();
                    }
                }
            }
        }
    }

    /// Closes the pool to new tasks; workers stop once the submitted ones are done.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
        let cbs = self.dispatch(&mut st);
        drop(st);
        run_all(cbs);
        self.changed.notify_all();
    }

    /// Fails every outstanding task and kills the workers (SIGTERM, then SIGKILL after `grace`),
    /// waiting for them to end.
    pub(crate) fn terminate(&self) {
        let mut st = self.lock();
        st.phase = Phase::Terminated;
        let cbs = fail_everything(&mut st, TaskError::Terminated);
        let workers: Vec<_> = st
            .slots
            .iter_mut()
            .filter_map(|s| s.process.take())
            .collect();
        for s in &mut st.slots {
            s.tasks = None;
            s.held.clear();
            s.held_items = 0;
        }
        drop(st);
        run_all(cbs);
        for p in &workers {
            let _ = p.terminate();
        }
        let grace = Instant::now() + TERMINATE_GRACE;
        for p in &workers {
            let left = grace.saturating_duration_since(Instant::now());
            if p.join_timeout(left).is_err() && p.exitcode().is_none() {
                let _ = p.kill();
                let _ = p.join();
            }
        }
        self.changed.notify_all();
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        let st = self.lock();
        st.slots
            .iter()
            .filter_map(|s| s.process.as_ref().map(|p| p.pid()))
            .collect()
    }

    /// Whether every worker has ended (after `close`, once the work is done).
    pub(crate) fn all_ended(st: &State) -> bool {
        // Ended means handled by the collector (its process reaped and taken), not only seen by
        // the supervisor: after `join`, no worker is listed.
        st.slots.iter().all(|s| !s.alive())
    }
}

/// A worker is handed up to this many tasks ahead while they hold fewer than
/// [`SMALL_ITEMS_AHEAD`] items (one-item tasks: each hand-off that finds the worker asleep costs a
/// wake-up); larger tasks stay pending, for whichever worker frees first.
const SMALL_TASKS_AHEAD: usize = 16;
const SMALL_ITEMS_AHEAD: usize = 16;
/// Tasks quicker than this (on average, per worker) count as quick; a new worker starts just
/// above it, so it is handed `prefetch` tasks until its first results say otherwise.
const QUICK_TASK: Duration = Duration::from_micros(200);

/// How long `terminate` waits after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_millis(500);

fn slot_of(st: &mut State, worker: WorkerId) -> Option<&mut Slot> {
    st.slots
        .get_mut(worker.slot as usize)
        .filter(|s| s.id == worker)
}

/// Removes task `id` from the table and gives every item of it `e`.
fn fail(st: &mut State, id: u64, e: TaskError) -> Option<Callback> {
    let entry = st.table.remove(&id)?;
    entry.batch.lock().tasks.remove(&id);
    entry.batch.fail(entry.indices, e)
}

fn fail_everything(st: &mut State, e: TaskError) -> Vec<Callback> {
    st.pending.clear();
    for s in &mut st.slots {
        s.held.clear();
        s.held_items = 0;
    }
    let ids: Vec<u64> = st.table.keys().copied().collect();
    ids.into_iter()
        .filter_map(|id| fail(st, id, e.clone()))
        .collect()
}

/// How a worker that ended while holding tasks died, as a task error (`None`: it exited cleanly).
fn died_of(pid: i32, outcome: &Result<(), ProcessError>) -> Option<TaskError> {
    match outcome {
        Ok(()) => None,
        Err(ProcessError::Signaled { signal }) => Some(TaskError::WorkerDied {
            pid,
            code: None,
            signal: Some(*signal),
        }),
        Err(ProcessError::Exited { code }) => Some(TaskError::WorkerDied {
            pid,
            code: Some(*code),
            signal: None,
        }),
        Err(ProcessError::Panicked { .. }) => Some(TaskError::WorkerDied {
            pid,
            code: Some(1),
            signal: None,
        }),
        Err(e) => Some(TaskError::Child(format!("the worker {pid} failed: {e}"))),
    }
}

pub(crate) fn run_all(cbs: impl IntoIterator<Item = Callback>) {
    for cb in cbs {
        cb();
    }
}
