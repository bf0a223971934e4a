//! Processes that run your own functions, pipes and queues between them, shared memory and locks (and,
//! in later parts, pools and managers): Python's `multiprocessing`, for Rust.
//!
//! # Hello, processes!
//! ```
//! use multiprocess::{pipe, Connection, Process};
//!
//! fn child(conn: Connection) -> usize {
//!     let words: Vec<String> = conn.recv().unwrap();
//!     conn.send(&words.join(" ")).unwrap();
//!     words.len()
//! }
//!
//! let (here, there) = pipe()?;
//! let p = Process::spawn(child, there)?;              // `there` moves into the child
//! here.send(&vec!["hello", "from", "the", "parent"])?;
//! assert_eq!(here.recv::<String>()?, "hello from the parent");
//! assert_eq!(p.join()?, 4);                            // the function's return value
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Start methods
//! A child runs a plain function `fn(A) -> R` of this program, with `A` and `R` any serde types.
//! [`StartMethod`] picks how it starts: `Fork`, `Spawn` (re-execute the program) or `ForkServer`
//! (the default: fork from a clean helper). Nothing has to be added to `main`, or to a test, for any of
//! them: the crate finds its way into re-executed children through a constructor that runs before
//! `main`. [`init`] optionally starts the fork server early.
//!
//! # When a child fails
//! [`Process::join`] never hangs on a dead child. A panic comes back as
//! [`ProcessError::Panicked`] with its message, a signal as [`ProcessError::Signaled`], an exit without
//! a result as [`ProcessError::Exited`]. Children die with their parent: each holds a *lifeline* pipe
//! whose last write end lives in the parent, and the kernel sends the child `SIGKILL` when it closes.
//!
//! # Connections
//! [`pipe`] and [`pipe_oneway`] give [`Connection`]s framed exactly like Python's
//! `multiprocessing.connection`, so raw byte messages interoperate with Python. A connection passed to a
//! child, or sent through another connection, arrives usable: its descriptor travels with `SCM_RIGHTS`.

//!
//! # Shared memory and synchronisation
//! [`SharedMemory`] shares bytes; [`Value`] and [`Array`] share plain numbers and `#[repr(C)]`
//! structs behind a lock that lives in their own memory (a guard dereferences to `&mut T`);
//! [`RawValue`] and [`RawArray`] have no lock and only copy; [`AtomicValue`] offers lock-free integer
//! operations. [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`] coordinate processes. All live in shared memory and sleep on futexes after a brief
//! adaptive spin, so an uncontended lock makes no system call, and a wait on a machine whose CPUs
//! are all busy costs what a plain blocking wait costs. A process that dies holding a lock does not
//! wedge the others: the next acquirer gets it with [`OwnerDied`]. Every one of them travels to
//! children and through connections, and nothing a peer does to the memory it shares can crash the
//! receiver: anonymous memory is sealed against resizing, a received region must be of the right
//! kind, named regions are guarded against being truncated, and every copy is an atomic copy.
//!
//! # Queues
//! [`Queue`] (bounded or not), [`SimpleQueue`] and [`JoinableQueue`] carry any serde type between any
//! number of producer and consumer processes. Items sit in a shared-memory ring (large ones, and any
//! that arrive while the ring is full, in a sparse memory file), so there is no feeder thread: when
//! `put` returns the item is stored, and the producer may exit at once. A process killed in the middle
//! of a `put` or a `get` loses at most that one item and blocks nobody; what is read from shared
//! memory is checked before it is trusted.
//! ```
//! use multiprocess::{Process, Queue};
//!
//! fn square(q: (Queue<u64>, Queue<u64>)) {
//!     let (jobs, results) = q;
//!     while let Ok(Some(n)) = jobs.get().map(|n| (n != 0).then_some(n)) {
//!         results.put(n * n).unwrap();
//!     }
//! }
//!
//! let (jobs, results) = (Queue::new()?, Queue::new()?);
//! let worker = Process::spawn(square, (jobs.clone(), results.clone()))?;
//! for n in [3, 4, 0] {
//!     jobs.put(n).unwrap();
//! }
//! worker.join()?;
//! assert_eq!((results.get()?, results.get()?), (9, 16));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod codec;
mod connection;
mod error;
mod process;
mod queue;
mod shared;
mod sync;
mod sys;
mod trace;
mod tracked;

pub use crate::connection::frame;
pub use crate::connection::{Connection, ConnectionIter, pipe, pipe_oneway};
pub use crate::error::{
    GetError, GetTimeoutError, PutError, PutTimeoutError, RecvError, RecvTimeoutError,
    ReleaseError, SendError, TaskDoneError, Timeout, TryGetError, TryPutError, TryRecvError,
};
pub use crate::process::{
    Builder, JoinTimeoutError, Process, ProcessError, ProcessInfo, StartMethod, active_children,
    cpu_count, current_process, get_start_method, init, parent_process, set_start_method,
};
/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
pub use crate::queue::fuzzing;
pub use crate::queue::{
    DEFAULT_RING_BYTES, JoinableQueue, MAX_QUEUE_ITEMS, Queue, QueueBuilder, QueueIter,
    QueueTryIter, SimpleQueue,
};
pub use crate::shared::{
    Array, ArrayGuard, AtomicInt, AtomicValue, RawArray, RawValue, SharedMemory, Value, ValueGuard,
};
// bytemuck's plain-old-data traits (the bound on the element types of the shared values) and their
// derives, re-exported with the crate so that a struct value needs no dependency of its own: see
// `Value`'s docs.
pub use crate::sync::{
    Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, LockGuard, LockResult,
    LockTimeoutError, MAX_PARTIES, OwnerDied, RLock, RLockGuard, Semaphore, SemaphorePermit,
    TryLockError, TryLockResult, WaitTimeoutError,
};
pub use bytemuck::{self, Pod, Zeroable};
