//! Queues between processes: [`Queue`], [`SimpleQueue`] and [`JoinableQueue`].
//!
//! All three sit on one shared state (see `ring.rs` for how it is built and why): a byte ring in
//! shared memory for the common case and a sparse memory file for large items and overflow, with a
//! lock per side whose holder pid lets the next process take over from a dead one. There is no feeder
//! thread: `put` has stored the item in memory shared with every holder of the queue when it returns,
//! so the producer can exit at once and the item outlives it.

pub(crate) mod ring;

mod joinable;
mod simple;

pub use joinable::JoinableQueue;
pub use simple::SimpleQueue;

use crate::codec;
use crate::error::{
    GetError, GetTimeoutError, PutError, PutTimeoutError, TryGetError, TryPutError,
};
use crate::sync::futex::Wait;
use ring::{Fail, Shared};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The ring of a queue built by [`Queue::new`] or [`Queue::bounded`]: 4 MiB of shared memory, of
/// which only the pages the queue's traffic has reached are ever allocated.
pub const DEFAULT_RING_BYTES: usize = 4 << 20;

/// The most items a queue can hold at once (2^31 - 1); also the largest `maxsize`.
pub const MAX_QUEUE_ITEMS: usize = ring::MAX_ITEMS as usize;

/// The largest scratch buffer a thread keeps between items (the default ring's size).
const KEEP_SCRATCH: usize = DEFAULT_RING_BYTES;

thread_local! {
    /// Encoding and decoding buffer, reused so that a small item costs no allocation.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (or a fresh one if it is in use or already gone).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut f = Some(f);
    let reused = SCRATCH.try_with(|s| {
        let mut buf = s.try_borrow_mut().ok()?;
        let r = (f.take()?)(&mut buf);
        // Do not keep a large item's buffer alive for the thread's lifetime.
        if buf.capacity() > KEEP_SCRATCH {
            *buf = Vec::new();
        }
        Some(r)
    });
    match (reused, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut Vec::new()),
        (_, None) => unreachable!("`f` ran, so its result was returned"),
    }
}

/// A first-in, first-out queue of `T` shared by any number of producer and consumer processes, like
/// Python's `multiprocessing.Queue`.
///
/// Create it, hand clones to children in their argument (or send it through a
/// [`Connection`](crate::Connection)): every copy is the same queue. Items are serialized with serde
/// and stored in shared memory, so `T` is any `Serialize + DeserializeOwned` type; an item can be
/// anything from a byte to hundreds of MiB.
///
/// - [`put`](Self::put) never waits on an unbounded queue ([`new`](Self::new)) and waits for room on
///   a bounded one ([`bounded`](Self::bounded)); [`put_timeout`](Self::put_timeout) and
///   [`try_put`](Self::try_put) give up (with [`PutTimeoutError::Timeout`], [`TryPutError::Full`]),
///   handing the item back.
/// - [`get`](Self::get) waits for an item; [`get_timeout`](Self::get_timeout) and
///   [`try_get`](Self::try_get) give up with [`GetTimeoutError::Timeout`], [`TryGetError::Empty`];
///   [`iter`](Self::iter) and [`try_iter`](Self::try_iter) take items in a loop.
/// - [`len`](Self::len) is exact: both counts live in shared memory.
///
/// Better than Python's: there is no feeder thread, so a process that put items (even one of 50 MiB)
/// can exit and be joined at once, and its items are still delivered; a process killed in the middle
/// of a `put` or a `get` loses at most that one item and blocks nobody; and what is read from shared
/// memory is checked before it is trusted.
///
/// Items may carry descriptors: a [`Connection`](crate::Connection), a [`Lock`](crate::Lock), a
/// [`SharedMemory`](crate::SharedMemory), another `Queue`, anything that travels as a descriptor, as
/// CPython's queues carry connections. The descriptors travel beside the item on a side channel of
/// the queue (a socket pair, since only the kernel can carry descriptors), so such an item costs a
/// system call on each side, and a queue holds at most a few hundred to a few thousand of them at
/// once (the channel's buffer, which `net.core.wmem_max` bounds): a put of one more waits for a
/// consumer to take one, a `try_put` is `Full`.
///
/// # Examples
/// ```
/// use multiprocess::{Process, Queue};
///
/// fn produce(q: Queue<String>) {
///     for i in 0..3 {
///         q.put(format!("item {i}")).unwrap();
///     }
/// }
///
/// let q = Queue::new()?;
/// let child = Process::spawn(produce, q.clone())?;
/// child.join()?; // no feeder thread: joining before the items are taken is fine
/// assert_eq!(q.len(), 3);
/// assert_eq!(q.get()?, "item 0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _items: PhantomData<fn(T) -> T>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// The pid of the process that closed this handle (0: open). A pid, not a flag, so that a child
    /// forked with a copy of a closed handle starts with an open one, as under the other methods.
    closed_by: AtomicI32,
}

/// Where a queue's items are: shared memory of this machine, or a broker (feature `cluster`).
#[derive(Debug)]
enum Backend {
    Local(Shared),
    #[cfg(feature = "cluster")]
    Broker(Box<crate::cluster::BrokerQueue>),
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _items: PhantomData,
        }
    }
}

/// Options for a new [`Queue`] (or, through [`build_joinable`](Self::build_joinable), a
/// [`JoinableQueue`]).
///
/// # Examples
/// ```
/// let q = multiprocess::Queue::<u64>::builder()
///     .maxsize(100)
///     .ring_bytes(64 << 10)
///     .build()?;
/// assert_eq!(q.maxsize(), Some(100));
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct QueueBuilder<T> {
    maxsize: usize,
    ring_bytes: usize,
    #[cfg(feature = "cluster")]
    broker: Option<crate::cluster::Broker>,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder {
            maxsize: self.maxsize,
            ring_bytes: self.ring_bytes,
            #[cfg(feature = "cluster")]
            broker: self.broker.clone(),
            _items: PhantomData,
        }
    }
}

/// Marks a put's failure as the broker's (not the serializer's) on its way out of `with_scratch`.
#[cfg(feature = "cluster")]
const BROKER_PREFIX: &str = "\0broker\0";

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("ring_bytes", &self.ring_bytes)
            .finish()
    }
}

impl<T> Default for QueueBuilder<T> {
    fn default() -> Self {
        QueueBuilder {
            maxsize: 0,
            ring_bytes: DEFAULT_RING_BYTES,
            #[cfg(feature = "cluster")]
            broker: None,
            _items: PhantomData,
        }
    }
}

impl<T> QueueBuilder<T> {
    /// At most `maxsize` items at once (`put` waits for room). 0, the default, means unbounded, as in
    /// Python.
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// The size of the shared ring that holds items of up to half its size without a system call
    /// (larger items, and items arriving while it is full, go to the overflow file). Rounded up to a
    /// power of two between 4 KiB and 1 GiB; default [`DEFAULT_RING_BYTES`].
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// Creates the queue.
    ///
    /// # Errors
    /// `InvalidInput` for a `maxsize` above [`MAX_QUEUE_ITEMS`] or a ring above 1 GiB; otherwise the
    /// shared memory could not be created.
    pub fn build(self) -> io::Result<Queue<T>> {
        if self.maxsize > MAX_QUEUE_ITEMS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a queue holds at most {MAX_QUEUE_ITEMS} items"),
            ));
        }
        #[cfg(feature = "cluster")]
        if let Some(broker) = &self.broker {
            let q = crate::cluster::BrokerQueue::create(broker, self.maxsize, type_id::<T>())
                .map_err(|e| match e {
                    crate::cluster::ClusterError::NoAuthkey
                    | crate::cluster::ClusterError::InvalidName(_) => {
                        io::Error::new(io::ErrorKind::InvalidInput, e)
                    }
                    e => io::Error::other(e),
                })?;
            return Ok(Queue::from_backend(Backend::Broker(Box::new(q))));
        }
        let ring = self
            .ring_bytes
            .max(ring::MIN_RING as usize)
            .checked_next_power_of_two()
            .filter(|&r| r <= ring::MAX_RING as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a queue's ring is at most 1 GiB",
                )
            })?;
        let shared = Shared::create(ring as u32, self.maxsize as u32, type_id::<T>())?;
        Ok(Queue::from_shared(shared))
    }

    /// Puts the queue on a broker instead of this machine's shared memory (feature `cluster`):
    /// the queue named by `broker`'s pool name, made if it is not there, reachable by every
    /// process anywhere that builds the same (or receives a handle). `maxsize` is kept by the
    /// broker (the first handle made sets it); `ring_bytes` does not apply.
    ///
    /// Items are authenticated under the broker's key, so all handles must share it. An item
    /// taken by a process that dies before acknowledging it (a moment after the read) is
    /// delivered again once it has been idle for the broker's [lease](crate::cluster::Broker::lease). What the broker's persistence had not written when it died
    /// is lost (with `appendfsync everysec`, up to a second of puts and gets).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, Queue, cluster::Broker};
    ///
    /// fn produce(q: Queue<String>) {
    ///     q.put("resize a.png".into()).unwrap();
    /// }
    ///
    /// # let url = std::env::var("MP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    /// let broker = Broker::redis(&url, "doc-jobs").authkey("secret");
    /// let q: Queue<String> = Queue::builder().broker(broker).build()?;
    /// Process::spawn(produce, q.clone())?.join()?; // the handle travels as the queue's address
    /// assert_eq!(q.get()?, "resize a.png");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "cluster")]
    pub fn broker(mut self, broker: crate::cluster::Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Creates a [`JoinableQueue`] with these options.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_joinable(self) -> io::Result<JoinableQueue<T>> {
        self.build().map(JoinableQueue::from_queue)
    }
}

fn type_id<T>() -> u64 {
    ring::fingerprint(std::any::type_name::<T>())
}

impl<T> Queue<T> {
    fn from_shared(shared: Shared) -> Queue<T> {
        Queue::from_backend(Backend::Local(shared))
    }

    fn from_backend(backend: Backend) -> Queue<T> {
        Queue {
            inner: Arc::new(Inner {
                backend,
                closed_by: AtomicI32::new(0),
            }),
            _items: PhantomData,
        }
    }

    fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// `JoinableQueue`'s counter: one item done; false if none was unfinished.
    pub(crate) fn task_done(&self) -> bool {
        match self.backend() {
            Backend::Local(s) => s.task_done(),
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => b.task_done().unwrap_or_else(|e| {
                crate::trace::event!(warn, "task_done on a broker queue: {e}");
                false
            }),
        }
    }

    pub(crate) fn unfinished(&self) -> usize {
        match self.backend() {
            Backend::Local(s) => s.unfinished() as usize,
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => b.unfinished(),
        }
    }

    pub(crate) fn join_wait(&self, wait: Wait) -> bool {
        match self.backend() {
            Backend::Local(s) => s.join(wait),
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => b.join(wait),
        }
    }

    /// The shared memory of a local queue (tests and fuzzing only).
    #[cfg(any(test, feature = "fuzzing"))]
    fn shared(&self) -> &Shared {
        match self.backend() {
            Backend::Local(s) => s,
            #[cfg(feature = "cluster")]
            Backend::Broker(_) => panic!("not a local queue"),
        }
    }

    /// Options for a new queue.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::default()
    }

    /// A new unbounded queue: [`put`](Self::put) never waits.
    ///
    /// # Errors
    /// The shared memory could not be created.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new()?;
    /// q.put(1u8).unwrap();
    /// assert_eq!(q.maxsize(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Queue<T>> {
        QueueBuilder::default().build()
    }

    /// A new queue holding at most `maxsize` items: [`put`](Self::put) waits for room. Python's
    /// `Queue(maxsize)`; a `maxsize` of 0 means unbounded, as in Python.
    ///
    /// # Errors
    /// `InvalidInput` above [`MAX_QUEUE_ITEMS`]; otherwise the shared memory could not be created.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::bounded(1)?;
    /// q.put('a').unwrap();
    /// assert!(q.try_put('b').unwrap_err().is_full());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bounded(maxsize: usize) -> io::Result<Queue<T>> {
        QueueBuilder::default().maxsize(maxsize).build()
    }

    /// The number of items in the queue: put, and not yet taken. Exact at the moment it is read
    /// (Python's `qsize()`).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new()?;
    /// q.put("a").unwrap();
    /// q.put("b").unwrap();
    /// assert_eq!(q.len(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// On a broker (feature `cluster`) it asks the broker, and answers the last count it got when
    /// the broker cannot be reached (Python's `qsize()` is approximate too).
    pub fn len(&self) -> usize {
        match self.backend() {
            Backend::Local(s) => s.len() as usize,
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => b.len(),
        }
    }

    /// Whether the queue holds no item right now (Python's `empty()`).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<u8>::new()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a bounded queue holds `maxsize` items right now (Python's `full()`); never for an
    /// unbounded one.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::bounded(1)?;
    /// q.put(0u8).unwrap();
    /// assert!(q.is_full());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_full(&self) -> bool {
        self.maxsize().is_some_and(|m| self.len() >= m)
    }

    /// The bound given at creation; `None` for an unbounded queue.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(multiprocess::Queue::<u8>::bounded(3)?.maxsize(), Some(3));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn maxsize(&self) -> Option<usize> {
        match self.backend() {
            Backend::Local(s) => s.maxsize().map(|m| m as usize),
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => b.maxsize(),
        }
    }

    /// The size of the shared ring (see [`QueueBuilder::ring_bytes`]).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::<u8>::new()?;
    /// assert_eq!(q.ring_bytes(), multiprocess::DEFAULT_RING_BYTES);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    /// (0 for a queue on a broker.)
    pub fn ring_bytes(&self) -> usize {
        match self.backend() {
            Backend::Local(s) => s.ring_bytes() as usize,
            #[cfg(feature = "cluster")]
            Backend::Broker(_) => 0,
        }
    }

    /// Closes this process's handle, as Python's `close()`: afterwards `put`s and `get`s through it
    /// (and through its clones in this process) fail with `Closed`, while `len` and the like still
    /// answer. The queue itself is untouched: items already put stay for other processes to take (they
    /// are in shared memory already; there is nothing to flush), and other processes' handles, and
    /// handles later sent from this one (under every start method, `Fork` included), keep working.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{GetError, Queue, TryGetError};
    ///
    /// let q = Queue::new()?;
    /// let other = q.clone();
    /// q.put(1).unwrap();
    /// q.close();
    /// assert!(matches!(q.get(), Err(GetError::Closed)));
    /// assert!(matches!(other.try_get(), Err(TryGetError::Failed(GetError::Closed)))); // a clone here
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&self) {
        self.inner
            .closed_by
            .store(crate::sys::getpid(), Ordering::Release);
    }

    /// Whether [`close`](Self::close) was called on this handle or one of its clones.
    pub fn is_closed(&self) -> bool {
        self.inner.closed_by.load(Ordering::Acquire) == crate::sys::getpid()
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts `item` at the back of the queue, waiting for room if the queue is bounded and full.
    /// When it returns `Ok`, the item is in shared memory: this process may exit at once.
    ///
    /// # Errors
    /// Every error hands the item back: [`PutError::Closed`], [`PutError::Encode`] (it does not
    /// serialize), [`PutError::Io`] (no memory for it), [`PutError::Corrupt`].
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new()?;
    /// q.put(vec![1, 2, 3]).unwrap();
    /// assert_eq!(q.get().unwrap(), [1, 2, 3]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::Forever).map_err(|e| match e {
            TryPutError::Failed(e) => e,
            TryPutError::Full(_) => unreachable!("a put without a deadline gave up"),
        })
    }

    /// Like [`put`](Self::put), waiting at most `timeout` for room; then
    /// [`PutTimeoutError::Timeout`], which hands the item back.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let q = multiprocess::Queue::bounded(1)?;
    /// q.put(1).unwrap();
    /// let t = Instant::now();
    /// let err = q.put_timeout(2, Duration::from_millis(20)).unwrap_err();
    /// assert!(err.is_timeout() && t.elapsed() >= Duration::from_millis(20));
    /// assert_eq!(err.into_inner(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.put_wait(item, Wait::timeout(timeout))
            .map_err(|e| match e {
                TryPutError::Full(item) => PutTimeoutError::Timeout(item),
                TryPutError::Failed(e) => PutTimeoutError::Failed(e),
            })
    }

    /// Like [`put`](Self::put) without waiting: [`TryPutError::Full`] if there is no room right now
    /// (Python's `put_nowait`), also when another producer is in the middle of a put.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::bounded(1)?;
    /// assert!(q.try_put("a").is_ok());
    /// let err = q.try_put("b").unwrap_err();
    /// assert!(err.is_full());
    /// assert_eq!(err.into_inner(), "b");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_put(&self, item: T) -> Result<(), TryPutError<T>> {
        self.put_wait(item, Wait::Never)
    }

    fn put_wait(&self, item: T, wait: Wait) -> Result<(), TryPutError<T>> {
        if self.is_closed() {
            return Err(PutError::Closed(item).into());
        }
        #[cfg(feature = "cluster")]
        let leaving = matches!(self.backend(), Backend::Broker(_));
        #[cfg(not(feature = "cluster"))]
        let leaving = false;
        let outcome = with_scratch(|buf| {
            match codec::leaving_if(leaving, || codec::encode_into(buf, &item)) {
            Err(reason) => Err(Err(reason)),
            Ok(fds) if fds.len() > crate::sys::MAX_FDS_PER_MESSAGE => Err(Err(format!(
                "an item can carry at most {} connections or other OS objects, this one has {}",
                crate::sys::MAX_FDS_PER_MESSAGE,
                fds.len()
            ))),
            // The descriptors are the item's own, open until it is dropped after this call.
            Ok(fds) => match self.backend() {
                Backend::Local(s) => s.put(buf, &fds, wait).map_err(Ok),
                #[cfg(feature = "cluster")]
                Backend::Broker(_) if !fds.is_empty() => Err(Err(
                    "an item of a queue on a broker cannot carry connections or other OS objects"
                        .into(),
                )),
                #[cfg(feature = "cluster")]
                Backend::Broker(b) => b.put(buf, wait).map_err(|e| match e {
                    crate::cluster::QFail::WouldBlock => Ok(Fail::WouldBlock),
                    crate::cluster::QFail::Corrupt(r) => Ok(Fail::Corrupt(r)),
                    crate::cluster::QFail::Broker(r) => Err(BROKER_PREFIX.to_string() + &r),
                }),
            },
        }
        });
        match outcome {
            Ok(()) => Ok(()),
            #[cfg(feature = "cluster")]
            Err(Err(reason)) if reason.starts_with(BROKER_PREFIX) => Err(PutError::Broker {
                item,
                reason: reason[BROKER_PREFIX.len()..].to_string(),
            }
            .into()),
            Err(Err(reason)) => Err(PutError::Encode { item, reason }.into()),
            Err(Ok(Fail::WouldBlock)) => Err(TryPutError::Full(item)),
            Err(Ok(Fail::Corrupt(reason))) => Err(PutError::Corrupt { item, reason }.into()),
            Err(Ok(Fail::Io(error))) => Err(PutError::Io { item, error }.into()),
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the item at the front of the queue, waiting for one as long as it takes.
    ///
    /// # Errors
    /// [`GetError::Closed`], [`GetError::Decode`] (the item did not deserialize as `T`; it is
    /// dropped), [`GetError::Corrupt`], [`GetError::Io`].
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, Queue};
    ///
    /// fn answer(q: Queue<u32>) {
    ///     q.put(42).unwrap();
    /// }
    ///
    /// let q = Queue::new()?;
    /// let child = Process::spawn(answer, q.clone())?;
    /// assert_eq!(q.get()?, 42);
    /// child.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.get_wait(Wait::Forever).map_err(|e| match e {
            TryGetError::Failed(e) => e,
            TryGetError::Empty => unreachable!("a get without a deadline gave up"),
        })
    }

    /// Like [`get`](Self::get), waiting at most `timeout`; then [`GetTimeoutError::Timeout`].
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// use multiprocess::GetTimeoutError;
    ///
    /// let q = multiprocess::Queue::<u8>::new()?;
    /// let t = Instant::now();
    /// assert!(matches!(q.get_timeout(Duration::from_millis(20)), Err(GetTimeoutError::Timeout)));
    /// assert!(t.elapsed() >= Duration::from_millis(20));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.get_wait(Wait::timeout(timeout)).map_err(|e| match e {
            TryGetError::Empty => GetTimeoutError::Timeout,
            TryGetError::Failed(e) => GetTimeoutError::Failed(e),
        })
    }

    /// Like [`get`](Self::get) without waiting: [`TryGetError::Empty`] if there is no item right now
    /// (Python's `get_nowait`), also when another consumer is in the middle of a get.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::TryGetError;
    ///
    /// let q = multiprocess::Queue::new()?;
    /// assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    /// q.put(7).unwrap();
    /// assert_eq!(q.try_get().unwrap(), 7);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<T, TryGetError> {
        self.get_wait(Wait::Never)
    }

    fn get_wait(&self, wait: Wait) -> Result<T, TryGetError> {
        if self.is_closed() {
            return Err(GetError::Closed.into());
        }
        #[allow(clippy::infallible_destructuring_match)] // (without the `cluster` feature)
        let shared = match self.backend() {
            Backend::Local(s) => s,
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => {
                use crate::cluster::QFail;
                return match b.get(wait) {
                    Ok(bytes) => {
                        codec::decode(&bytes, Vec::new()).map_err(|e| GetError::Decode(e).into())
                    }
                    Err(QFail::WouldBlock) => Err(TryGetError::Empty),
                    Err(QFail::Corrupt(why)) => Err(GetError::Decode(why).into()),
                    Err(QFail::Broker(why)) => Err(GetError::Broker(why).into()),
                };
            }
        };
        with_scratch(|buf| match shared.get(buf, wait) {
            Ok(got) => match got.fds {
                Ok(fds) => codec::decode(buf, fds).map_err(|e| GetError::Decode(e).into()),
                Err(why) => Err(GetError::DescriptorsLost(why).into()),
            },
            Err(Fail::WouldBlock) => Err(TryGetError::Empty),
            Err(Fail::Corrupt(reason)) => Err(GetError::Corrupt(reason).into()),
            Err(Fail::Io(e)) => Err(GetError::Io(e).into()),
        })
    }

    /// An iterator that takes items as they come, waiting for each: every item is what
    /// [`get`](Self::get) gives. It ends when this handle is [`close`](Self::close)d; an item that
    /// does not decode is an `Err` item and the iteration goes on; an error after which the queue
    /// cannot be trusted ([`GetError::Corrupt`], [`GetError::Io`]) is the last item. Nothing ends a
    /// queue from the producers' side: they send a sentinel value (or the consumer stops after as
    /// many items as it expects).
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{Process, Queue};
    ///
    /// fn produce(q: Queue<Option<u32>>) {
    ///     for i in 1..=3 {
    ///         q.put(Some(i)).unwrap();
    ///     }
    ///     q.put(None).unwrap(); // the sentinel
    /// }
    ///
    /// let q = Queue::new()?;
    /// let child = Process::spawn(produce, q.clone())?;
    /// let got: Vec<u32> = q.iter().map_while(|item| item.ok().flatten()).collect();
    /// assert_eq!(got, [1, 2, 3]);
    /// child.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter {
            queue: self,
            done: false,
        }
    }

    /// An iterator over the items there right now, without waiting: it ends when the queue is empty
    /// (or another consumer is in the middle of a get), or this handle is closed. Errors are as in
    /// [`iter`](Self::iter).
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::Queue::new()?;
    /// for i in 0..3 {
    ///     q.put(i).unwrap();
    /// }
    /// let drained: Vec<i32> = q.try_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(drained, [0, 1, 2]);
    /// assert!(q.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_iter(&self) -> QueueTryIter<'_, T> {
        QueueTryIter {
            queue: self,
            done: false,
        }
    }
}

/// What an iteration does after an error of a get: keep going (the item alone was lost), or stop.
fn item_after<T>(r: Result<T, GetError>, done: &mut bool) -> Option<Result<T, GetError>> {
    match r {
        Ok(v) => Some(Ok(v)),
        Err(GetError::Closed) => {
            *done = true;
            None
        }
        Err(e @ (GetError::Decode(_) | GetError::DescriptorsLost(_))) => Some(Err(e)),
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

/// An iterator that waits for each item of a [`Queue`]: see [`Queue::iter`].
pub struct QueueIter<'a, T> {
    queue: &'a Queue<T>,
    done: bool,
}

impl<T: DeserializeOwned> Iterator for QueueIter<'_, T> {
    type Item = Result<T, GetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        item_after(self.queue.get(), &mut self.done)
    }
}

/// An iterator over the items a [`Queue`] holds right now: see [`Queue::try_iter`].
pub struct QueueTryIter<'a, T> {
    queue: &'a Queue<T>,
    done: bool,
}

impl<T: DeserializeOwned> Iterator for QueueTryIter<'_, T> {
    type Item = Result<T, GetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.queue.try_get() {
            Err(TryGetError::Empty) => {
                self.done = true;
                None
            }
            Ok(v) => Some(Ok(v)),
            Err(TryGetError::Failed(e)) => item_after(Err(e), &mut self.done),
        }
    }
}

impl<'a, T: DeserializeOwned> IntoIterator for &'a Queue<T> {
    type Item = Result<T, GetError>;
    type IntoIter = QueueIter<'a, T>;

    fn into_iter(self) -> QueueIter<'a, T> {
        self.iter()
    }
}

impl<T> fmt::Debug for QueueIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueIter")
            .field("queue", self.queue)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> fmt::Debug for QueueTryIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTryIter")
            .field("queue", self.queue)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .field("maxsize", &self.maxsize())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A queue travels as its four descriptors (the shared mapping, the overflow file, and the two
/// ends of the side channel for items that carry descriptors).
///
/// A queue on a broker travels as its broker's address, name and key.
impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.backend() {
            Backend::Local(shared) => {
                let (tx, rx) = shared.side();
                WireOut::Local(
                    codec::FdRef(shared.region().as_fd(), "Queue"),
                    codec::FdRef(shared.log_file().as_fd(), "Queue"),
                    codec::FdRef(tx, "Queue"),
                    codec::FdRef(rx, "Queue"),
                )
                .serialize(s)
            }
            #[cfg(feature = "cluster")]
            Backend::Broker(_) if codec::leaves_machine() => Err(serde::ser::Error::custom(
                format!("a Queue on a broker {}", codec::KEY_WOULD_LEAVE),
            )),
            #[cfg(feature = "cluster")]
            Backend::Broker(b) => WireOut::Broker(b.to_ref()).serialize(s),
        }
    }
}

#[derive(Serialize)]
enum WireOut<'a> {
    Local(
        codec::FdRef<'a>,
        codec::FdRef<'a>,
        codec::FdRef<'a>,
        codec::FdRef<'a>,
    ),
    #[cfg(feature = "cluster")]
    Broker(crate::cluster::QueueRef),
}

#[derive(Deserialize)]
enum WireIn {
    Local(
        codec::ReceivedFd,
        codec::ReceivedFd,
        codec::ReceivedFd,
        codec::ReceivedFd,
    ),
    #[cfg(feature = "cluster")]
    Broker(crate::cluster::QueueRef),
}

/// A received queue is checked before use: its shared memory must be a queue's, of a consistent size,
/// created for the same item type. A fresh handle is open even if the sender's was closed.
impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WireIn::deserialize(d)? {
            WireIn::Local(region, log, tx, rx) => {
                Shared::open(region.0, log.0, (tx.0, rx.0), type_id::<T>())
                    .map(Queue::from_shared)
                    .map_err(serde::de::Error::custom)
            }
            #[cfg(feature = "cluster")]
            WireIn::Broker(r) => crate::cluster::BrokerQueue::open(r, type_id::<T>())
                .map(|b| Queue::from_backend(Backend::Broker(Box::new(b))))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Entry points for the fuzz targets (not a stable API).
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub mod fuzzing {
    use super::{Queue, ring};
    use crate::error::{GetError, TryGetError};

    /// The checks a child applies to the bootstrap prelude its parent sends (see `sys::entry`): the
    /// entry token and type name, and the function token and type name, when the bytes are a
    /// well-formed prelude.
    pub fn boot_prelude(bytes: &[u8]) -> Option<(i64, String, i64, String)> {
        crate::sys::entry::decode_prelude(bytes)
    }

    /// A worker's and a caller's checks of a broker entry (feature `cluster`): its frame and MAC
    /// under the key `fuzz`, then its body; every byte string gets an answer, never a panic.
    #[cfg(feature = "cluster")]
    pub fn broker_entry(bytes: &[u8]) -> Result<String, String> {
        crate::cluster::fuzz_decode(bytes)
    }

    /// A consumer's check of a ring record header.
    pub fn ring_record_len(
        header: [u8; 8],
        available: u64,
        max_record: u64,
    ) -> Result<u32, String> {
        ring::ring_record_len(header, available, max_record)
    }

    /// A consumer's check of a log record header.
    pub fn log_record_len(header: [u8; 16], available: u64) -> Result<u64, String> {
        ring::log_record_len(header, available)
    }

    /// Runs the manager requests encoded in `data` (chunks of a 2-byte little-endian length and one
    /// encoded request) against a fresh server state as one client; how many it handled.
    pub fn manager_requests(data: &[u8]) -> usize {
        crate::manager::fuzz_requests(data)
    }

    /// Runs the Python-protocol manager requests encoded in `data` (chunks of a 2-byte
    /// little-endian length and one pickled request) against a fresh Python-mode server state;
    /// how many it answered.
    pub fn python_manager_requests(data: &[u8]) -> usize {
        crate::manager::python::fuzz_requests(data)
    }

    /// Runs the Rust-protocol manager requests encoded in `data` (chunks of a 2-byte
    /// little-endian length and one request in the crate's codec) against a fresh server for
    /// Python clients (the Rust clients' side of it); how many it answered.
    pub fn python_manager_native_requests(data: &[u8]) -> usize {
        crate::manager::python::fuzz_native_requests(data)
    }

    /// The item type the forged queue holds.
    pub type Item = (u64, String, Vec<u8>);

    /// Forges a 4 KiB-ring queue's state from `data` (six words, then the ring, then the log file)
    /// and takes one item from it without waiting, as a consumer meeting corrupt shared memory would.
    pub fn get_from_forged_queue(data: &[u8]) -> Result<Item, TryGetError> {
        let q: Queue<Item> = Queue::builder()
            .ring_bytes(4096)
            .build()
            .map_err(GetError::Io)?;
        let mut words = [0u64; 6];
        for (i, w) in words.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            let chunk = data.get(i * 8..(i + 1) * 8).unwrap_or(&[]);
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        let rest = data.get(48..).unwrap_or(&[]);
        let (ring, log) = rest.split_at(rest.len().min(4096));
        q.shared().forge(words, ring, log).map_err(GetError::Io)?;
        q.try_get()
    }
}

#[cfg(test)]
mod tests;
