//! The worker side of a pool, and the messages between a pool and its workers.
//!
//! This is the seam between the pool and its transport: a worker is a [`Process`](crate::Process)
//! that reads [`ToWorker`] messages from a queue of its own and writes [`FromWorker`] messages to a
//! queue it shares with the other workers and the pool. Nothing else crosses; another transport (a
//! broker, for workers on other machines) carries the same two message types.

use crate::codec;
use crate::process::bootstrap::panic_message;
use crate::queue::Queue;
use crate::sys::entry::Func;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Which worker: its slot in the pool and which of the slot's successive workers it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct WorkerId {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
}

/// Items of a task: the arguments of the function, encoded together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Chunk {
    /// The user's function, `fn(A) -> R`.
    pub(crate) func: Func,
    /// A `Vec<A>` of `count` items, in the crate's encoding.
    pub(crate) args: ByteBuf,
    pub(crate) count: u32,
    /// For `map_init`: the `fn() -> S` that makes the worker's state for `func`.
    pub(crate) init: Option<Func>,
}

/// One task: a chunk and the monomorphised code that runs it ([`run_chunk`] for its `A` and `R`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) runner: Func,
    pub(crate) chunk: Chunk,
}

/// From the pool to one worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    Run(Task),
    /// Finish: the pool is closed and has nothing more for this worker.
    Stop,
}

/// Why one item failed in the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The function panicked, with this message.
    Panicked(String),
    /// The argument could not be decoded, or the result encoded, in the worker (the message says
    /// which).
    Child(String),
}

/// From a worker (or the pool's own supervisor) to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// A task ran: a `Vec<Result<R, Failure>>`, one per item in order, in the crate's encoding.
    Done {
        worker: WorkerId,
        task: u64,
        results: ByteBuf,
    },
    /// The worker ran its last task (its task limit) and is leaving. Sent after that task's
    /// `Done`, so the pool knows it holds nothing.
    Retiring { worker: WorkerId },
    /// The initializer failed; the worker is leaving without running anything.
    InitFailed { worker: WorkerId, message: String },
    /// (From the pool's supervisor.) The worker's process has ended. Every message the worker sent
    /// is ahead of this one in the queue: it sent them before it ended, and this was sent after.
    Ended { worker: WorkerId },
    /// (From the pool.) Look at the pool's state: it is shutting down.
    Wake,
}

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) id: WorkerId,
    pub(crate) tasks: Queue<ToWorker>,
    pub(crate) results: Queue<FromWorker>,
    /// The initializer (runner and a chunk of one item), run once before any task.
    pub(crate) init: Option<(Func, Chunk)>,
    /// Tasks to run before leaving for a fresh worker (`None`: no limit).
    pub(crate) max_tasks: Option<u64>,
    /// Resident memory (bytes) past which the worker leaves after a task.
    pub(crate) max_memory: Option<u64>,
    /// A broker worker's local process: its results leave the machine (see
    /// `codec::leaves_machine`).
    pub(crate) leaving: bool,
}

/// The code that runs a chunk of `fn(A) -> R`: resolved in the worker from its token.
pub(crate) type Runner = fn(Chunk) -> ByteBuf;

/// The [`Runner`] for `fn(A) -> R`.
pub(crate) fn runner_of<A: DeserializeOwned, R: Serialize>() -> Runner {
    run_chunk::<A, R>
}

/// The [`Runner`] for `fn(A, B) -> R` (items are `(A, B)` pairs).
pub(crate) fn runner_of2<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>() -> Runner {
    run_chunk2::<A, B, R>
}

fn run_chunk<A: DeserializeOwned, R: Serialize>(chunk: Chunk) -> ByteBuf {
    match chunk.func.resolve::<A, R>() {
        Ok(f) => run_items(chunk, f),
        Err(e) => all_fail(chunk.count as usize, e),
    }
}

/// The [`Runner`] for `fn(&mut S, A) -> R` with a state per worker made by the chunk's `init`.
pub(crate) fn runner_with_state<S: 'static, A: DeserializeOwned, R: Serialize>() -> Runner {
    run_chunk_with_state::<S, A, R>
}

thread_local! {
    /// The states of `map_init` calls in this worker, by their `init` function's token.
    static STATES: std::cell::RefCell<Vec<(i64, Box<dyn std::any::Any>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn run_chunk_with_state<S: 'static, A: DeserializeOwned, R: Serialize>(chunk: Chunk) -> ByteBuf {
    let n = chunk.count as usize;
    let Some(init) = chunk.init.clone() else {
        return all_fail(n, "a map_init task without its init function".into());
    };
    let (make, f) = match (
        init.resolve0::<S>(),
        chunk.func.resolve_with_state::<S, A, R>(),
    ) {
        (Ok(make), Ok(f)) => (make, f),
        (Err(e), _) | (_, Err(e)) => return all_fail(n, e),
    };
    // The state is taken out while the chunk runs (an item's function could itself use a pool's
    // state... of another call) and put back after; a panic in `init` fails the chunk.
    let key = init.token();
    let taken = STATES
        .with(|s| {
            let mut s = s.borrow_mut();
            let at = s.iter().position(|(k, _)| *k == key)?;
            Some(s.swap_remove(at).1)
        })
        .and_then(|b| b.downcast::<S>().ok());
    let mut state = match taken {
        Some(state) => state,
        None => match catch_unwind(make) {
            Ok(state) => Box::new(state),
            Err(payload) => {
                return all_fail(
                    n,
                    format!("map_init's init panicked: {}", panic_message(&*payload)),
                );
            }
        },
    };
    let out = run_items(chunk, |a: A| f(&mut state, a));
    STATES.with(|s| s.borrow_mut().push((key, state)));
    out
}

fn run_chunk2<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(chunk: Chunk) -> ByteBuf {
    match chunk.func.resolve2::<A, B, R>() {
        Ok(f) => run_items(chunk, |(a, b): (A, B)| f(a, b)),
        Err(e) => all_fail(chunk.count as usize, e),
    }
}

/// `n` failed items, encoded as results are.
fn all_fail(n: usize, why: String) -> ByteBuf {
    let v: Vec<Result<(), Failure>> = vec![Err(Failure::Child(why)); n];
    ByteBuf::from(codec::encode(&v).map(|(b, _)| b).unwrap_or_default())
}

/// Runs every item of `chunk` through `f`, each alone: a panic or a result that does not encode
/// fails that item only. The results are encoded as one `Vec<Result<R, Failure>>` (where one
/// fails to encode, each is appended on its own: bincode writes a sequence as its length, then its
/// items one after the other).
fn run_items<A: DeserializeOwned, R: Serialize>(
    chunk: Chunk,
    mut f: impl FnMut(A) -> R,
) -> ByteBuf {
    let n = chunk.count as usize;
    let all_fail = |why: String| all_fail(n, why);
    let args: Vec<A> = match codec::decode(&chunk.args, Vec::new()) {
        Ok(args) => args,
        Err(e) => {
            return all_fail(format!(
                "failed to deserialize the arguments in the worker: {e}"
            ));
        }
    };
    if args.len() != n {
        return all_fail("a task's arguments do not match its count".into());
    }
    // Every item runs alone (a panic fails that item only); then the results are encoded in one
    // go, and only if that fails (a result that does not serialize, or holds descriptors) one by
    // one, to find which.
    let results: Vec<Result<R, Failure>> = args
        .into_iter()
        .map(|arg| {
            catch_unwind(AssertUnwindSafe(|| f(arg)))
                .map_err(|payload| Failure::Panicked(panic_message(&*payload)))
        })
        .collect();
    if let Ok(Ok((bytes, fds))) = catch_unwind(AssertUnwindSafe(|| codec::encode(&results)))
        && fds.is_empty()
    {
        return ByteBuf::from(bytes);
    }
    let mut out = Vec::with_capacity(16 + chunk.args.len());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    let mut scratch = Vec::new();
    for r in results {
        let failure = match r {
            Err(failure) => failure,
            // Encoded inside `catch_unwind`: a `Serialize` impl may panic.
            Ok(r) => match catch_unwind(AssertUnwindSafe(|| {
                codec::encode_into(&mut scratch, &Ok::<&R, Failure>(&r))
            })) {
                Ok(Ok(fds)) if fds.is_empty() => {
                    out.extend_from_slice(&scratch);
                    continue;
                }
                Ok(Ok(_)) => Failure::Child(
                    "the result holds descriptors (a Connection, a Lock, ...), which a pool does \
                     not carry back: return them through a Queue or a Connection"
                        .into(),
                ),
                Ok(Err(e)) => {
                    Failure::Child(format!("failed to serialize the result in the worker: {e}"))
                }
                Err(payload) => Failure::Panicked(panic_message(&*payload)),
            },
        };
        if codec::encode_into(&mut scratch, &Err::<(), Failure>(failure)).is_ok() {
            out.extend_from_slice(&scratch);
        }
    }
    ByteBuf::from(out)
}

/// A worker's life: the initializer, then tasks until told to stop, its limit, or its memory
/// ceiling.
pub(crate) fn worker_main(args: WorkerArgs) {
    let WorkerArgs {
        id,
        tasks,
        results,
        init,
        max_tasks,
        max_memory,
        leaving,
    } = args;
    #[cfg(feature = "cluster")]
    if leaving {
        codec::mark_process_leaving();
    }
    #[cfg(not(feature = "cluster"))]
    let _ = leaving;
    let tell = |msg: FromWorker| {
        if let Err(e) = results.put(msg) {
            crate::trace::event!(warn, "pool worker {id:?} could not report: {e}");
        }
    };
    if let Some((runner, chunk)) = init {
        let failed = match runner.resolve::<Chunk, ByteBuf>() {
            Ok(run) => match codec::decode::<Vec<Result<(), Failure>>>(&run(chunk), Vec::new()) {
                Ok(v) => v.into_iter().find_map(Result::err).map(|f| match f {
                    Failure::Panicked(m) => format!("the initializer panicked: {m}"),
                    Failure::Child(m) => format!("the initializer could not run: {m}"),
                }),
                Err(e) => Some(format!("the initializer's outcome is unreadable: {e}")),
            },
            Err(e) => Some(e),
        };
        if let Some(message) = failed {
            tell(FromWorker::InitFailed {
                worker: id,
                message,
            });
            return;
        }
    }
    for (done, msg) in (1u64..).zip(tasks.iter()) {
        let task = match msg {
            Ok(ToWorker::Run(task)) => task,
            Ok(ToWorker::Stop) => return,
            Err(e) => {
                // An undecodable message is the pool's bug or memory corruption: nothing here can
                // say which task it was, so leave, and let the pool fail what this worker held.
                crate::trace::event!(error, "pool worker {id:?} got a bad task: {e}");
                return;
            }
        };
        let outcomes = match task.runner.resolve::<Chunk, ByteBuf>() {
            Ok(run) => run(task.chunk),
            Err(e) => all_fail(task.chunk.count as usize, e),
        };
        tell(FromWorker::Done {
            worker: id,
            task: task.id,
            results: outcomes,
        });
        let tired = max_tasks.is_some_and(|n| done >= n);
        let heavy = max_memory.is_some_and(|m| crate::sys::resident_bytes().is_ok_and(|r| r > m));
        if tired || heavy {
            tell(FromWorker::Retiring { worker: id });
            return;
        }
    }
}
