//! `JoinableQueue`: a [`Queue`] that also counts items marked done.

use super::Queue;
use crate::error::TaskDoneError;
use crate::sync::futex::Wait;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::time::Duration;

/// A [`Queue`] whose consumers mark each item done, so that a process can [`join`](Self::join) until
/// every item put has been processed, like Python's `multiprocessing.JoinableQueue`.
///
/// It is a `Queue` (it dereferences to one: `put`, `get` and the rest are the queue's) plus an
/// *unfinished* count in shared memory: every `put` adds one, every [`task_done`](Self::task_done)
/// takes one away, and [`join`](Self::join) waits for zero. One `task_done` too many is a
/// [`TaskDoneError`], not a silent negative count.
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

    /// Marks one item done: the consumer finished the work for an item it took.
    ///
    /// # Errors
    /// [`TaskDoneError`] if every item put is already marked done; nothing changes.
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
        if self.queue.shared().task_done() {
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
        self.queue.shared().unfinished() as usize
    }

    /// Waits until every item put has been marked done (returns at once if none is unfinished).
    pub fn join(&self) {
        self.queue.shared().join(Wait::Forever);
    }

    /// Like [`join`](Self::join), waiting at most `timeout`; true if every item was done in time.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = multiprocess::JoinableQueue::new()?;
    /// q.put(1).unwrap();
    /// assert!(!q.join_timeout(Duration::from_millis(10)));
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// assert!(q.join_timeout(Duration::from_millis(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.queue.shared().join(Wait::timeout(timeout))
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
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
