//! `JoinableQueue`: a [`Queue`] that also counts items marked done.

use super::{Queue, QueueIter, QueueTryIter};
use crate::error::{
    GetError, GetTimeoutError, PutError, PutTimeoutError, TaskDoneError, Timeout, TryGetError,
    TryPutError,
};
use crate::sync::futex::Wait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::time::Duration;

/// A [`Queue`] whose consumers mark each item done, so that a process can [`join`](Self::join) until
/// every item put has been processed, like Python's `multiprocessing.JoinableQueue`.
///
/// It has a [`Queue`]'s operations (`put`, `get`, their timed and non-blocking forms, the iterators;
/// a `JoinableQueue` is not a `Queue`, so that no code can take its items without knowing they must
/// be marked done) plus an *unfinished* count in shared memory: every `put` adds one, every
/// [`task_done`](Self::task_done) takes one away, and [`join`](Self::join) waits for zero. One `task_done` too many is a
/// [`TaskDoneError`], not a silent negative count.
///
/// A `JoinableQueue` cannot be used where a `Queue` is expected (a function taking `&Queue` could
/// take items without marking them done):
/// ```compile_fail,E0308
/// let q = multiprocess::JoinableQueue::<u8>::new().unwrap();
/// let _: &multiprocess::Queue<u8> = &q;
/// ```
///
/// A consumer that dies between `get` and `task_done` leaves its item unfinished forever (it cannot
/// know whether the work was done); [`join_timeout`](Self::join_timeout) bounds the wait.
///
/// # Examples
/// ```
/// use multiprocess::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     loop {
///         let n = q.get().unwrap();
///         // ... work on n ...
///         q.task_done().unwrap();
///         if n == 0 {
///             break;
///         }
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let child = Process::spawn(worker, q.clone())?;
/// for n in [3, 2, 1, 0] {
///     q.put(n).unwrap();
/// }
/// q.join(); // every item was taken and marked done
/// assert_eq!(q.unfinished(), 0);
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> JoinableQueue<T> {
    /// A new unbounded joinable queue.
    ///
    /// # Errors
    /// The shared memory could not be created.
    pub fn new() -> io::Result<JoinableQueue<T>> {
        Queue::new().map(|queue| JoinableQueue { queue })
    }

    /// A new joinable queue holding at most `maxsize` items (0: unbounded).
    ///
    /// # Errors
    /// As [`Queue::bounded`].
    pub fn bounded(maxsize: usize) -> io::Result<JoinableQueue<T>> {
        Queue::bounded(maxsize).map(|queue| JoinableQueue { queue })
    }

    pub(crate) fn from_queue(queue: Queue<T>) -> JoinableQueue<T> {
        JoinableQueue { queue }
    }

    /// Marks one item done: the consumer finished the work for an item it took.
    ///
    /// # Errors
    /// [`TaskDoneError`] if every item put is already marked done; nothing changes. (On a broker,
    /// also when the broker could not be reached for 10 s.)
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::JoinableQueue::new()?;
    /// q.put("job".to_string()).unwrap();
    /// q.get().unwrap();
    /// assert!(q.task_done().is_ok());
    /// assert!(q.task_done().is_err()); // one too many
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        if self.queue.task_done() {
            Ok(())
        } else {
            Err(TaskDoneError)
        }
    }

    /// Items put and not yet marked done.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::JoinableQueue::new()?;
    /// q.put(1).unwrap();
    /// q.put(2).unwrap();
    /// assert_eq!(q.unfinished(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unfinished(&self) -> usize {
        self.queue.unfinished()
    }

    /// Waits until every item put has been marked done (returns at once if none is unfinished).
    pub fn join(&self) {
        self.queue.join_wait(Wait::Forever);
    }

    /// Like [`join`](Self::join), waiting at most `timeout`; [`Timeout`] if items were still
    /// unfinished then.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = multiprocess::JoinableQueue::new()?;
    /// q.put(1).unwrap();
    /// assert!(q.join_timeout(Duration::from_millis(10)).is_err());
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// assert!(q.join_timeout(Duration::from_millis(10)).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Timeout> {
        if self.queue.join_wait(Wait::timeout(timeout)) {
            Ok(())
        } else {
            Err(Timeout)
        }
    }

    /// The number of items in the queue (see [`Queue::len`]); items taken but not marked done are
    /// not in it, but are [`unfinished`](Self::unfinished).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue holds no item right now (see [`Queue::is_empty`]).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a bounded queue is full right now (see [`Queue::is_full`]).
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// The bound given at creation (see [`Queue::maxsize`]).
    pub fn maxsize(&self) -> Option<usize> {
        self.queue.maxsize()
    }

    /// The size of the shared ring (see [`Queue::ring_bytes`]).
    pub fn ring_bytes(&self) -> usize {
        self.queue.ring_bytes()
    }

    /// Closes this process's handle (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close();
    }

    /// Whether this handle was closed (see [`Queue::is_closed`]).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// Puts `item` and counts it unfinished (see [`Queue::put`]).
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.queue.put(item)
    }

    /// See [`Queue::put_timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.queue.put_timeout(item, timeout)
    }

    /// See [`Queue::try_put`].
    pub fn try_put(&self, item: T) -> Result<(), TryPutError<T>> {
        self.queue.try_put(item)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// Takes an item (see [`Queue::get`]); mark it done with [`task_done`](Self::task_done) once it
    /// is processed.
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }

    /// See [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.queue.get_timeout(timeout)
    }

    /// See [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryGetError> {
        self.queue.try_get()
    }

    /// See [`Queue::iter`]; each item still has to be marked done.
    pub fn iter(&self) -> QueueIter<'_, T> {
        self.queue.iter()
    }

    /// See [`Queue::try_iter`]; each item still has to be marked done.
    pub fn try_iter(&self) -> QueueTryIter<'_, T> {
        self.queue.try_iter()
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.len())
            .field("unfinished", &self.unfinished())
            .field("maxsize", &self.maxsize())
            .finish()
    }
}

/// Travels as its queue.
impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| JoinableQueue { queue })
    }
}
