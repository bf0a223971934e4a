//! `SimpleQueue`: the minimal unbounded queue.

use super::Queue;
use crate::error::{GetError, PutError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;

/// An unbounded queue with only `put`, `get`, `is_empty` and `close`, like Python's
/// `multiprocessing.SimpleQueue`.
///
/// It is a [`Queue`] with less surface: the same shared state, the same guarantees (no feeder thread,
/// crash-safe, checked reads), no bound and no timeouts. Use a `Queue` when you need either.
///
/// # Examples
/// ```
/// use multiprocess::{Process, SimpleQueue};
///
/// fn greet(q: SimpleQueue<String>) {
///     q.put(format!("hello from {}", std::process::id())).unwrap();
/// }
///
/// let q = SimpleQueue::new()?;
/// let child = Process::spawn(greet, q.clone())?;
/// assert!(q.get()?.starts_with("hello from"));
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// # Errors
    /// The shared memory could not be created.
    pub fn new() -> io::Result<SimpleQueue<T>> {
        Queue::new().map(|queue| SimpleQueue { queue })
    }

    /// Whether the queue holds no item right now.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::<u8>::new()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Closes this process's handle (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close();
    }
}

impl<T: Serialize> SimpleQueue<T> {
    /// Puts `item` at the back; never waits.
    ///
    /// # Errors
    /// As [`Queue::put`] (never `Full`); the error hands the item back.
    ///
    /// # Examples
    /// ```
    /// let q = multiprocess::SimpleQueue::new()?;
    /// q.put((1, "one".to_string())).unwrap();
    /// assert_eq!(q.get().unwrap(), (1, "one".to_string()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.queue.put(item)
    }
}

impl<T: DeserializeOwned> SimpleQueue<T> {
    /// Takes the item at the front, waiting for one as long as it takes.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("len", &self.queue.len())
            .finish()
    }
}

/// Travels as its queue.
impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| SimpleQueue { queue })
    }
}
