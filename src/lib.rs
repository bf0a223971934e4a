//! Processes that run your own functions, pipes and queues between them, shared memory and locks,
//! pools of workers (and, in later parts, managers): Python's `multiprocessing`, for Rust.
//!
//! The sections below walk through the crate in the order a program meets it; each has an example
//! that runs (they are the crate's doctests). `cargo run --release --example tour` walks the same
//! ground with real numbers, and `examples/` holds a Rust counterpart of every example of the
//! tutorials the crate was measured against.
//!
//! # Hello, processes!
//! A child runs a plain function `fn(A) -> R` of this program, with `A` and `R` any serde types: the
//! argument goes to the child, the return value comes back from [`Process::join`].
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
//! assert_eq!(p.exitcode(), Some(0));                   // and the handle still answers
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Start methods
//! [`StartMethod`] picks how a child starts: `Fork` (a copy of this process), `Spawn` (the program
//! executed again) or `ForkServer` (the default: forked from a clean helper process started once).
//! Nothing has to be added to `main`, or to a test, for any of them: the crate finds its way into
//! re-executed children through a constructor that runs before `main`. [`set_start_method`] sets the
//! default, a [`Builder`] sets it (and a name, and the daemon flag) for one child, and [`init`]
//! optionally starts the fork server early.
//! ```
//! use multiprocess::{current_process, Process, StartMethod};
//!
//! fn whoami(_: ()) -> String {
//!     current_process().name
//! }
//!
//! for method in [StartMethod::Fork, StartMethod::Spawn, StartMethod::ForkServer] {
//!     let p = Process::builder()
//!         .name(format!("worker-{}", method.name()))
//!         .start_method(method)
//!         .spawn(whoami, ())?;
//!     assert_eq!(p.join()?, format!("worker-{}", method.name()));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # When a child fails
//! [`Process::join`] never hangs on a dead child. A panic comes back as [`ProcessError::Panicked`]
//! with its message (and the parent prints the child's panic, where a test harness captures it), a
//! signal as [`ProcessError::Signaled`], an exit without a result as [`ProcessError::Exited`].
//! [`Process::join_timeout`] gives up after a while with [`JoinTimeoutError::Timeout`] and can be
//! called again. Children die with their parent: each holds a *lifeline* pipe whose last write end
//! lives in the parent, and the kernel sends the child `SIGKILL` when it closes.
//! ```
//! use multiprocess::{JoinTimeoutError, Process, ProcessError};
//! use std::time::Duration;
//!
//! fn fails(n: u32) -> u32 {
//!     if n == 0 {
//!         panic!("no zeros here");
//!     }
//!     std::thread::sleep(Duration::from_secs(n.into()));
//!     n
//! }
//!
//! let p = Process::spawn(fails, 0)?;
//! assert!(matches!(p.join(), Err(ProcessError::Panicked { message }) if message == "no zeros here"));
//! assert_eq!(p.exitcode(), Some(1));
//!
//! let slow = Process::spawn(fails, 60)?;
//! assert!(matches!(slow.join_timeout(Duration::from_millis(50)), Err(JoinTimeoutError::Timeout)));
//! slow.kill()?;
//! assert!(matches!(slow.join(), Err(ProcessError::Signaled { signal: 9 })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Connections
//! [`pipe`] and [`pipe_oneway`] give [`Connection`]s framed exactly like Python's
//! `multiprocessing.connection`, so raw byte messages interoperate with Python. A connection passed to a
//! child, or sent through another connection, arrives usable: its descriptor travels with `SCM_RIGHTS`.
//! Every wait has a blocking, a timed and a non-blocking form, each with an error of its own:
//! [`recv`](Connection::recv) cannot time out, [`recv_timeout`](Connection::recv_timeout) can
//! ([`RecvTimeoutError`]), [`try_recv`](Connection::try_recv) finds nothing ([`TryRecvError`]);
//! [`iter`](Connection::iter) receives until the other end is closed.
//! ```
//! use multiprocess::{pipe, Connection, Process, RecvTimeoutError, TryRecvError};
//! use std::time::Duration;
//!
//! fn count_to(arg: (Connection, u32)) {
//!     let (conn, n) = arg;
//!     for i in 1..=n {
//!         conn.send(&i).unwrap();
//!     }
//! }
//!
//! let (here, there) = pipe()?;
//! assert!(matches!(here.try_recv::<u32>(), Err(TryRecvError::Empty)));
//! assert!(matches!(
//!     here.recv_timeout::<u32>(Duration::from_millis(10)),
//!     Err(RecvTimeoutError::Timeout)
//! ));
//! let child = Process::spawn(count_to, (there, 3))?;
//! let got: Vec<u32> = here.iter().collect::<Result<_, _>>()?; // ends when the child's end closes
//! assert_eq!(got, [1, 2, 3]);
//! child.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Shared memory
//! [`SharedMemory`] shares bytes; [`Value`] and [`Array`] share plain numbers and `#[repr(C)]`
//! structs (the derives are re-exported: [`Pod`], [`Zeroable`]) behind a lock that lives in their own
//! memory, and a guard dereferences to `&mut T`; [`RawValue`] and [`RawArray`] have no lock and only
//! copy; [`AtomicValue`] offers lock-free integer operations. Nothing a peer does to memory it shares
//! can crash the receiver: anonymous memory is sealed against resizing, a received region must be of
//! the right kind, named regions are guarded against being truncated, and every copy is an atomic
//! copy.
//! ```
//! use multiprocess::{Array, Process, Value};
//!
//! #[derive(Clone, Copy, multiprocess::Pod, multiprocess::Zeroable)]
//! #[bytemuck(crate = "multiprocess::bytemuck")]
//! #[repr(C)]
//! struct Stats {
//!     count: u64,
//!     total: f64,
//! }
//!
//! fn tally(shared: (Value<Stats>, Array<f64>)) {
//!     let (stats, samples) = shared;
//!     let mut s = stats.lock().unwrap(); // Err only if a holder died; it holds the guard too
//!     for x in samples.to_vec() {
//!         s.count += 1;
//!         s.total += x;
//!     }
//! }
//!
//! let stats = Value::new(Stats { count: 0, total: 0.0 })?;
//! let samples = Array::from_slice(&[1.5, 2.5, 3.0])?;
//! Process::spawn(tally, (stats.clone(), samples.clone()))?.join()?;
//! let s = stats.get();
//! assert_eq!((s.count, s.total), (3, 7.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Locks and the other primitives
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and [`Barrier`]
//! coordinate processes. They live in shared memory and sleep on futexes after a brief adaptive spin,
//! so an uncontended lock makes no system call, and a wait on a machine whose CPUs are all busy costs
//! what a plain blocking wait costs. They are shaped like `std` and `lock_api`: a lock hands out a
//! guard, a semaphore a [`SemaphorePermit`]; every wait has a blocking, a `try_` and a `_timeout`
//! form. A process that dies holding a lock does not wedge the others: the next acquirer gets the
//! guard inside [`OwnerDied`], so it knows the protected state may be half-updated.
//! ```
//! use multiprocess::{Event, Lock, Process, Semaphore};
//!
//! fn dies_holding(lock: Lock) {
//!     let guard = lock.lock().unwrap();
//!     std::mem::forget(guard); // never released...
//!     std::process::exit(0); // ...and its holder gone
//! }
//!
//! let lock = Lock::new()?;
//! let _ = Process::spawn(dies_holding, lock.clone())?.join();
//! let Err(died) = lock.lock() else { panic!("the holder died") };
//! drop(died.into_inner()); // OwnerDied carries the guard: the lock was ours until here
//! assert!(lock.try_lock().is_ok());
//!
//! let slots = Semaphore::new(2)?;
//! let (a, b) = (slots.acquire(), slots.acquire());
//! assert!(slots.try_acquire().is_none());
//! drop((a, b)); // a permit releases when it drops
//! assert_eq!(slots.get_value(), 2);
//!
//! let ready = Event::new()?;
//! ready.set();
//! assert!(ready.wait_timeout(std::time::Duration::ZERO).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Queues
//! [`Queue`] (bounded or not), [`SimpleQueue`] and [`JoinableQueue`] carry any serde type between any
//! number of producer and consumer processes. Items sit in a shared-memory ring (large ones, and any
//! that arrive while the ring is full, in a sparse memory file), so there is no feeder thread: when
//! `put` returns the item is stored, and the producer may exit at once. A process killed in the middle
//! of a `put` or a `get` loses at most that one item and blocks nobody; what is read from shared
//! memory is checked before it is trusted. Items may hold objects that travel as descriptors (a
//! [`Connection`], a [`Lock`], another queue...). [`iter`](Queue::iter) waits for each item,
//! [`try_iter`](Queue::try_iter) drains what is there; the timed and non-blocking forms of `put` and
//! `get` have errors of their own, and every error of a `put` hands the item back.
//! ```
//! use multiprocess::{Process, Queue, TryGetError};
//!
//! fn square(q: (Queue<Option<u64>>, Queue<u64>)) {
//!     let (jobs, results) = q;
//!     for n in jobs.iter().map_while(|job| job.ok().flatten()) { // until the `None` sentinel
//!         results.put(n * n).unwrap();
//!     }
//! }
//!
//! let (jobs, results) = (Queue::new()?, Queue::new()?);
//! let worker = Process::spawn(square, (jobs.clone(), results.clone()))?;
//! for n in [Some(3), Some(4), None] {
//!     jobs.put(n).unwrap();
//! }
//! worker.join()?;
//! let squares: Vec<u64> = results.try_iter().collect::<Result<_, _>>()?;
//! assert_eq!(squares, [9, 16]);
//! assert!(matches!(results.try_get(), Err(TryGetError::Empty)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Pools
//! [`Pool`] farms calls of a function out to worker processes, as Python's `Pool`: [`apply`]
//! and [`apply_async`] for one call, [`map`], [`map_results`], [`starmap`], [`map_init`] and
//! [`map_async`] for many, [`imap`] and [`imap_unordered`] for a lazy input (an endless one is
//! fine), or `items.pool_map(&pool, f)` ([`PoolMap`]). Every item has its own outcome: a panic, a
//! value that does not serialize, a worker killed in the middle fail that item (or that task) alone,
//! with a [`TaskError`] that says which, and a dead worker is replaced.
//! ```
//! use multiprocess::{Pool, TaskError};
//!
//! fn parse(s: String) -> u32 {
//!     s.parse().expect("not a number")
//! }
//!
//! let pool = Pool::new(2)?;
//! let words = ["1", "22", "x", "333"].map(String::from);
//! let parsed = pool.map_results(parse, words);
//! assert_eq!(parsed[1], Ok(22));
//! assert!(matches!(&parsed[2], Err(TaskError::Panicked { message }) if message.starts_with("not a number")));
//! assert_eq!(parsed[3], Ok(333));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`apply`]: Pool::apply
//! [`apply_async`]: Pool::apply_async
//! [`map`]: Pool::map
//! [`map_results`]: Pool::map_results
//! [`starmap`]: Pool::starmap
//! [`map_init`]: Pool::map_init
//! [`map_async`]: Pool::map_async
//! [`imap`]: Pool::imap
//! [`imap_unordered`]: Pool::imap_unordered
//!
//! # Past one machine
//! The same `Pool` and `Queue` calls fan out to workers on many machines through a broker, Redis
//! Streams (feature `cluster`, on by default): build the pool with
//! [`PoolBuilder::broker`], and start the same program anywhere with `MULTIPROCESS_WORKER` set to
//! join it as a worker. Tasks run at least once and each result arrives once; a dead worker's
//! tasks are reclaimed after their lease; a broker restart is survived. See [`cluster`].
//!
//! # Listeners, clients and Python
//! [`Listener`] and [`Client`] connect unrelated processes over a Unix socket file, a Linux
//! abstract name or TCP, with Python's framing and authentication handshake, so the peer may be a
//! Python program using `multiprocessing.connection`. [`wait`] waits for any of several
//! connections, listeners and processes. Values cross to Python pickled: [`Connection::send_pickle`]
//! and [`Connection::recv_pickle`] (serde types) or the dynamic [`pickle::Value`], through a codec
//! of this crate's that never imports or calls and stops hostile pickles with typed limits.
//! ```
//! use multiprocess::{Client, Listener, pickle::Value};
//!
//! let listener = Listener::builder("127.0.0.1:0").authkey(b"secret").bind()?;
//! let address = listener.address().clone();
//! let client = std::thread::spawn(move || -> Result<(), multiprocess::SendError> {
//!     let conn = Client::builder(&address).authkey(b"secret").connect().expect("connect");
//!     conn.send_pickle(&("ping", 1u8)) // what Python's `conn.recv()` reads as ('ping', 1)
//! });
//! let conn = listener.accept()?;
//! let v = conn.recv_pickle_value()?;
//! assert_eq!(v, Value::Tuple(vec![Value::Str("ping".into()), Value::Int(1)]));
//! client.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Between Rust processes the byte stream can run over TLS (the `tls` feature, on by default):
//! [`ListenerBuilder::tls`] and [`ClientBuilder::tls`] take rustls configurations, and
//! [`tls::server_config`]/[`tls::client_config`] make them from PEM. The framing, the limits and
//! the key handshake (inside TLS) are unchanged.
//!
//! # Manager
//! [`manager::Manager`] starts a server process that holds shared objects (dicts, lists,
//! namespaces, values, locks) and hands out typed proxies; children get proxies as arguments and
//! unrelated processes connect by address and key. One pipelined connection per client process,
//! batches and version-checked transactions, snapshots in one round trip, and a dead client's locks
//! released: see the [`manager`] module.
//!
//! [`manager::python`] speaks CPython's manager protocol instead: `PythonServer` serves unchanged
//! Python clients (`SyncManager(address, authkey).connect()`) and, on the same objects, Rust
//! clients through the [`manager`] proxies; `PythonManager` is a Rust client of any server that
//! speaks it, CPython's own included.
//!
//! # Optional features
//! - `tls` (default): TLS for listeners and clients, with rustls and the ring provider
//!   (`default-features = false` leaves both out).
//! - `cluster` (default): [`Pool`] and [`Queue`] on a broker (Redis Streams, Redis 6.2+ or
//!   Valkey), with workers on many machines: see the [`cluster`] module. It brings the `redis`
//!   crate (sync API, streams only, no async runtime).
//! - `worker-env` (default): worker mode from the environment: a program started with
//!   `MULTIPROCESS_WORKER` set becomes a worker of that pool before `main` (see
//!   [`cluster::Broker::from_env`]). A tool that links the crate but must never serve tasks leaves
//!   it out (the `multiprocess` command does).
//! - `tracing`: events (target `multiprocess`) for what the crate does on its own behalf (a lock
//!   taken over from a dead holder, a fork server replaced, a queue repaired after a dead producer or
//!   consumer, corrupt shared state) and for errors it has nobody to return to. Without the feature
//!   they compile to nothing.
//! - `progress`: a progress bar (indicatif) on stderr for a pool's maps that run longer than a
//!   second, when stderr is a terminal.
//! - `fuzzing`: entry points for the fuzz targets in `fuzz/`; not part of the API.
//!
//! # Caveats
//! - **Fork in a threaded program.** Under [`StartMethod::Fork`] the child is a copy of this process
//!   with only the calling thread in it: a lock another thread held at that instant (in the
//!   allocator, in another library) stays held forever in the child. The crate's own locks, stdout
//!   and stderr are taken across the fork so the child finds them consistent, but it cannot do that
//!   for code it does not know. In a program with threads of its own, prefer the default
//!   `ForkServer` (forked from a helper that has no other threads) or `Spawn`.
//! - **What drop does.** Dropping a [`Process`] neither kills nor detaches the child: as in Python, a
//!   non-daemon child is waited for when this process exits, and a daemon child is terminated then;
//!   if this process dies instead, every child is killed by its lifeline. Dropping the last handle of
//!   a queue, a lock or an anonymous shared region frees it once no process holds one; a *named*
//!   region is unlinked by the handle that created it. A [`LockGuard`] or [`SemaphorePermit`] releases
//!   on drop; a guard that is `forget`-ten leaves the lock held (another process can still
//!   [`release`](Lock::release) it, as in Python).
//! - **Descriptor costs.** Every object that crosses to another process is one or more descriptors
//!   in each process that holds it: a [`Connection`] or a lock is one, a [`Queue`] four (its memory,
//!   its log, and the two ends of the side channel for items that hold descriptors). A program that
//!   keeps thousands of them needs a higher `RLIMIT_NOFILE` (`ulimit -n`); running out is an error
//!   of its own kind, [`std::io::ErrorKind::QuotaExceeded`], never a crash. An item on a queue that
//!   holds descriptors costs a system call on each side, and a queue holds at most a few hundred to
//!   a few thousand of them at once (bounded by `net.core.wmem_max`).
//! - **Panics.** A child's panic is printed by its parent (in `join`, or when the handle of an
//!   ended child drops), where a test harness captures it. For that the crate installs a
//!   process-wide panic hook before the first child starts, chained to the hook that was there. A
//!   hook the program sets later replaces it in this process and so in children forked from it
//!   afterwards: their panics are then printed by that hook, in the child (the message still reaches
//!   `join` as [`ProcessError::Panicked`]). Spawned and fork-server children always have the crate's.
//! - **Types across builds.** Values travel in the crate's own encoding (bincode) between processes
//!   of one program; a queue received by a different build of the program may be refused (its item
//!   type is checked by name). To talk to Python, send raw bytes.

#![warn(missing_docs)]

#[cfg(feature = "cluster")]
pub mod cluster;
mod codec;
mod connection;
mod error;
mod forkgate;
pub mod manager;
pub mod pickle;
mod pool;
mod process;
mod queue;
mod shared;
mod sync;
mod sys;
mod trace;
mod tracked;

#[cfg(feature = "tls")]
pub use crate::connection::tls;
pub use crate::connection::{
    AcceptError, Address, Client, ClientBuilder, ClientError, DEFAULT_MAX_MESSAGE, Listener,
    ListenerBuilder, ToAddress,
};
pub use crate::connection::{Connection, ConnectionIter, Waitable, pipe, pipe_oneway, wait};
pub use crate::connection::{auth, frame};
pub use crate::error::{
    AuthError, GetError, GetTimeoutError, PutError, PutTimeoutError, RecvError, RecvTimeoutError,
    ReleaseError, SendError, TaskDoneError, Timeout, TryGetError, TryPutError, TryRecvError,
};
pub use crate::pool::{
    AsyncResult, Imap, ImapUnordered, MapError, MapResult, Pool, PoolBuilder, PoolError, PoolMap,
    Progress, ResultTimeoutError, TaskError,
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
