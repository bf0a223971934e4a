//! Error types: one per operation, in the shape of crossbeam-channel's and std's.
//!
//! Each blocking operation has an error that lists only what can go wrong while it blocks: a
//! blocking [`Queue::get`](crate::Queue::get) cannot fail with "empty", nor a blocking
//! [`Connection::recv`](crate::Connection::recv) with "timed out". The timed form of an operation
//! (`*_timeout`) fails with a `*TimeoutError`, which is either `Timeout` or the blocking form's error
//! (`Failed`), and the non-blocking form (`try_*`) with a `Try*Error`, which is either `Empty` /
//! `Full` / `WouldBlock` or the blocking form's error. Errors of operations that take an item hand
//! it back. Where nothing but the time can fail, a timed wait returns `Result<_, Timeout>`.

use std::io;
use thiserror::Error;

/// A timed wait ran out of time, and nothing else went wrong: the error of the timed forms of the
/// operations that cannot fail otherwise ([`Event::wait_timeout`](crate::Event::wait_timeout),
/// [`Semaphore::acquire_timeout`](crate::Semaphore::acquire_timeout),
/// [`JoinableQueue::join_timeout`](crate::JoinableQueue::join_timeout)).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let event = multiprocess::Event::new()?;
/// assert_eq!(event.wait_timeout(Duration::from_millis(1)), Err(multiprocess::Timeout));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[error("timed out")]
pub struct Timeout;

/// Why a message could not be sent on a [`Connection`](crate::Connection).
///
/// When sending fails before any byte is written (`WrongDirection`, `Encode`, `Range`,
/// `TooManyDescriptors`), the connection is untouched and can be used again. After `Disconnected` or
/// `Io` the peer may have received part of the message; the connection should be dropped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// This end of a one-way pipe can only receive.
    #[error("this end of a one-way pipe is read-only")]
    WrongDirection,
    /// The value could not be serialized; nothing was written.
    #[error("failed to serialize the value (nothing was sent): {0}")]
    Encode(String),
    /// `offset`/`size` do not lie inside the buffer given to `send_bytes_range`; nothing was written.
    #[error("offset {offset} + size {size} is outside a buffer of {len} bytes")]
    Range {
        /// The offset asked for.
        offset: usize,
        /// The size asked for.
        size: usize,
        /// The buffer's length.
        len: usize,
    },
    /// The value holds more descriptor-carrying objects than one message can carry (253; a child's
    /// argument can carry 252, as its bootstrap message also carries the child's lifeline).
    #[error("a message can carry at most 253 connections or other OS objects, this one has {0}")]
    TooManyDescriptors(usize),
    /// The peer closed its end or died (`EPIPE` / `ECONNRESET`).
    #[error("the peer has disconnected")]
    Disconnected,
    /// Any other operating-system error.
    #[error("I/O error while sending: {0}")]
    Io(#[source] io::Error),
}

/// Why a message could not be received from a [`Connection`](crate::Connection).
///
/// A blocking receive cannot time out; only [`recv_timeout`](crate::Connection::recv_timeout)'s
/// error has a timeout ([`RecvTimeoutError::Timeout`]):
/// ```compile_fail,E0599
/// use multiprocess::{RecvError, pipe};
/// let (a, _b) = pipe().unwrap();
/// let _ = matches!(a.recv::<u8>(), Err(RecvError::Timeout));
/// ```
///
/// After `Truncated`, `TooLong` and `Protocol` the stream can no longer be trusted to be at a message
/// boundary, so the receiving side of the connection becomes unusable: later receives return
/// `Protocol` again. After every other error the connection stays usable and nothing else was lost.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// End of file at a message boundary: the peer closed its end, or exited, or died.
    #[error("end of file: the peer closed the connection")]
    Eof,
    /// End of file in the middle of a message: the peer died or closed while sending.
    #[error("end of file inside a message: got {received} of {expected} bytes")]
    Truncated {
        /// Bytes of the message (header included) received before the end.
        received: u64,
        /// Bytes the message should have had (header included), when known.
        expected: u64,
    },
    /// The incoming message is longer than the maximum given to
    /// [`recv_bytes_max`](crate::Connection::recv_bytes_max). The message was not read; the receiving
    /// side is unusable afterwards (as in Python).
    #[error(
        "message of {len} bytes is longer than the maximum of {max}; the connection can no longer be read"
    )]
    TooLong {
        /// Length announced by the message.
        len: u64,
        /// The maximum that was asked for.
        max: u64,
    },
    /// The buffer given to [`recv_bytes_into`](crate::Connection::recv_bytes_into) is too short. The
    /// message has been consumed and is returned here whole.
    #[error("buffer too short for a message of {} bytes", .0.len())]
    BufferTooShort(Vec<u8>),
    /// The peer broke the framing protocol (for example a forged negative length).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A typed message arrived whole but could not be deserialized as the requested type. The message is
    /// consumed; the connection stays usable.
    #[error("failed to deserialize the message: {0}")]
    Decode(String),
    /// A message arrived without the connections or other OS objects it carried, because this
    /// process has as many descriptors open as it may (`RLIMIT_NOFILE`): the kernel dropped them. The
    /// message is consumed and the connection stays usable; close descriptors or raise the limit.
    #[error(
        "a message arrived without the connections or OS objects it carried: this process has \
         reached its open-file limit (RLIMIT_NOFILE)"
    )]
    DescriptorsLost,
    /// This end of a one-way pipe can only send.
    #[error("this end of a one-way pipe is write-only")]
    WrongDirection,
    /// Any other operating-system error.
    #[error("I/O error while receiving: {0}")]
    Io(#[source] io::Error),
}

impl RecvError {
    /// Whether the peer is gone (end of file, before or inside a message).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, RecvError::Eof | RecvError::Truncated { .. })
    }
}

/// Why [`Connection::recv_timeout`](crate::Connection::recv_timeout) (and
/// [`recv_bytes_timeout`](crate::Connection::recv_bytes_timeout)) gave no message.
#[derive(Debug, Error)]
pub enum RecvTimeoutError {
    /// No message arrived within the timeout. Nothing was lost: a message that was partly received
    /// is kept, and the next receive completes it.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The receive failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

/// Why [`Connection::try_recv`](crate::Connection::try_recv) (and
/// [`try_recv_bytes`](crate::Connection::try_recv_bytes)) gave no message.
#[derive(Debug, Error)]
pub enum TryRecvError {
    /// No message is there right now (a message whose start arrived is waited for: see `try_recv`).
    #[error("no message is waiting")]
    Empty,
    /// The receive failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

impl From<RecvError> for io::Error {
    fn from(e: RecvError) -> io::Error {
        let kind = match &e {
            RecvError::Eof | RecvError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            RecvError::DescriptorsLost => io::ErrorKind::QuotaExceeded,
            RecvError::Io(err) => err.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

impl From<RecvTimeoutError> for io::Error {
    fn from(e: RecvTimeoutError) -> io::Error {
        match e {
            RecvTimeoutError::Timeout => io::Error::new(io::ErrorKind::TimedOut, e),
            RecvTimeoutError::Failed(e) => e.into(),
        }
    }
}

impl From<TryRecvError> for io::Error {
    fn from(e: TryRecvError) -> io::Error {
        match e {
            TryRecvError::Empty => io::Error::new(io::ErrorKind::WouldBlock, e),
            TryRecvError::Failed(e) => e.into(),
        }
    }
}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> io::Error {
        let kind = match &e {
            SendError::Disconnected => io::ErrorKind::BrokenPipe,
            SendError::Io(err) => err.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Why an item could not be put on a [`Queue`](crate::Queue). Every variant hands the item back
/// ([`into_inner`](Self::into_inner)); nothing was put.
///
/// A blocking `put` waits for room, so "full" is not among them ([`TryPutError::Full`] and
/// [`PutTimeoutError::Timeout`] are):
/// ```compile_fail,E0599
/// use multiprocess::{PutError, Queue};
/// let q = Queue::bounded(1).unwrap();
/// let _ = matches!(q.put(1u8), Err(PutError::Full(_)));
/// ```
#[derive(Error)]
#[non_exhaustive]
pub enum PutError<T> {
    /// This handle was closed with [`close`](crate::Queue::close).
    #[error("the queue is closed")]
    Closed(T),
    /// The item could not be serialized.
    #[error("failed to serialize the item (nothing was put): {reason}")]
    Encode {
        /// The item.
        item: T,
        /// What the serializer said.
        reason: String,
    },
    /// The queue's shared state contradicts itself (memory written by something other than this
    /// crate); the queue cannot be trusted any more.
    #[error("the queue's shared state is corrupt: {reason}")]
    Corrupt {
        /// The item.
        item: T,
        /// What was found.
        reason: String,
    },
    /// The operating system refused to store the item (out of memory for a large item, or, for an
    /// item carrying descriptors, too many descriptors in flight).
    #[error("I/O error while putting an item: {error}")]
    Io {
        /// The item.
        item: T,
        /// The error.
        #[source]
        error: io::Error,
    },
    /// (A queue on a broker.) The broker could not be reached for a while, or refused the item.
    #[error("the broker did not take the item: {reason}")]
    Broker {
        /// The item.
        item: T,
        /// What went wrong.
        reason: String,
    },
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Closed(item) => item,
            PutError::Encode { item, .. }
            | PutError::Corrupt { item, .. }
            | PutError::Io { item, .. }
            | PutError::Broker { item, .. } => item,
        }
    }
}

impl<T> std::fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode { reason, .. } => f
                .debug_struct("Encode")
                .field("reason", reason)
                .finish_non_exhaustive(),
            PutError::Corrupt { reason, .. } => f
                .debug_struct("Corrupt")
                .field("reason", reason)
                .finish_non_exhaustive(),
            PutError::Io { error, .. } => f
                .debug_struct("Io")
                .field("error", error)
                .finish_non_exhaustive(),
            PutError::Broker { reason, .. } => f
                .debug_struct("Broker")
                .field("reason", reason)
                .finish_non_exhaustive(),
        }
    }
}

/// Why [`Queue::try_put`](crate::Queue::try_put) put nothing. Hands the item back.
#[derive(Error)]
pub enum TryPutError<T> {
    /// There is no room right now (the queue is bounded and full, or another producer is in the
    /// middle of a put). Python's `queue.Full`.
    #[error("the queue is full")]
    Full(T),
    /// The put failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] PutError<T>),
}

/// Why [`Queue::put_timeout`](crate::Queue::put_timeout) put nothing. Hands the item back.
#[derive(Error)]
pub enum PutTimeoutError<T> {
    /// No room came within the timeout. Python's `queue.Full`.
    #[error("timed out waiting for room in the queue")]
    Timeout(T),
    /// The put failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] PutError<T>),
}

impl<T> TryPutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            TryPutError::Full(item) => item,
            TryPutError::Failed(e) => e.into_inner(),
        }
    }

    /// Whether the queue had no room (the only error that waiting could cure).
    pub fn is_full(&self) -> bool {
        matches!(self, TryPutError::Full(_))
    }
}

impl<T> PutTimeoutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutTimeoutError::Timeout(item) => item,
            PutTimeoutError::Failed(e) => e.into_inner(),
        }
    }

    /// Whether the time ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PutTimeoutError::Timeout(_))
    }
}

impl<T> std::fmt::Debug for TryPutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TryPutError::Full(_) => f.write_str("Full(..)"),
            TryPutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> std::fmt::Debug for PutTimeoutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            PutTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// Why no item could be taken from a [`Queue`](crate::Queue).
///
/// A blocking `get` waits for an item, so it has no "empty" to report; only the non-blocking and
/// timed forms do ([`TryGetError::Empty`], [`GetTimeoutError::Timeout`]):
/// ```compile_fail,E0599
/// use multiprocess::{GetError, Queue};
/// let q = Queue::<u8>::new().unwrap();
/// let _ = matches!(q.get(), Err(GetError::Empty));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GetError {
    /// This handle was closed with [`close`](crate::Queue::close). Nothing was taken.
    #[error("the queue is closed")]
    Closed,
    /// The item was taken but could not be deserialized as the queue's item type; it is dropped and
    /// the next item is unaffected.
    #[error("failed to deserialize an item (it was taken and dropped): {0}")]
    Decode(String),
    /// The item was taken, but the connections or other OS objects it carried did not come with it
    /// (this process is at its open-file limit, or a consumer that was taking the item died and took
    /// them along); it is dropped and the next item is unaffected.
    #[error("an item arrived without the OS objects it carried (it was taken and dropped): {0}")]
    DescriptorsLost(String),
    /// The queue's shared state contradicts itself (memory written by something other than this
    /// crate): a length or header failed its checks. Nothing was taken or allocated.
    #[error("the queue's shared state is corrupt: {0}")]
    Corrupt(String),
    /// The operating system failed to read an item from the queue's overflow file. Nothing was taken.
    #[error("I/O error while taking an item: {0}")]
    Io(#[source] io::Error),
    /// (A queue on a broker.) The broker could not be reached for a while. Nothing was taken.
    #[error("the broker could not be reached: {0}")]
    Broker(String),
}

/// Why [`Queue::try_get`](crate::Queue::try_get) took nothing.
#[derive(Debug, Error)]
pub enum TryGetError {
    /// No item is there right now (or another consumer is in the middle of a get). Python's
    /// `queue.Empty`.
    #[error("the queue is empty")]
    Empty,
    /// The get failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] GetError),
}

/// Why [`Queue::get_timeout`](crate::Queue::get_timeout) took nothing.
#[derive(Debug, Error)]
pub enum GetTimeoutError {
    /// No item came within the timeout. Python's `queue.Empty`.
    #[error("timed out waiting for an item")]
    Timeout,
    /// The get failed as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] GetError),
}

/// [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) was called more times than items
/// were put (Python's `ValueError: task_done() called too many times`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[error("task_done() called more times than items were put")]
pub struct TaskDoneError;

/// Why a release without a guard or permit ([`Lock::release`](crate::Lock::release),
/// [`Semaphore::release`](crate::Semaphore::release)) changed nothing.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The lock is not held.
    #[error("release of an unlocked Lock")]
    NotLocked,
    /// The semaphore's value is already at its bound (its initial value for a `BoundedSemaphore`,
    /// `u32::MAX` for a `Semaphore`): one release too many.
    #[error("semaphore released too many times (its value is already its bound, {bound})")]
    AtBound {
        /// The bound.
        bound: u32,
    },
}

/// Why the authentication handshake of a [`Listener`](crate::Listener) or [`Client`](crate::Client)
/// failed. Nothing the peer sent was deserialized; the connection is dropped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer answered this side's challenge with the wrong digest: its key is not this side's.
    #[error("authentication failed: the digest received was wrong (the peer's key differs)")]
    DigestWrong,
    /// The peer rejected this side's answer to its challenge (`#FAILURE#`): this side's key is not
    /// the peer's.
    #[error("authentication failed: the digest sent was rejected (the peer's key differs)")]
    Rejected,
    /// The peer speaks the legacy HMAC-MD5 form (Python 3.11 and older), which this side refuses
    /// ([`AuthPolicy::legacy`](crate::auth::AuthPolicy::legacy)).
    #[error("authentication refused: the peer uses the legacy HMAC-MD5 handshake")]
    LegacyRefused,
    /// The peer broke the handshake's protocol (no challenge, an unknown digest, a frame too long or
    /// too short, or a peer that expects no handshake while this side does).
    #[error("authentication protocol error: {0}")]
    Protocol(String),
    /// The handshake did not finish by its deadline (a peer that connects and says nothing).
    #[error("the authentication handshake did not finish in time")]
    Timeout,
    /// Receiving a frame of the handshake failed (the peer closed the connection, for example when
    /// it rejected this side's key without saying so).
    #[error("authentication failed while receiving: {0}")]
    Recv(#[source] RecvError),
    /// Sending a frame of the handshake failed.
    #[error("authentication failed while sending: {0}")]
    Send(#[source] SendError),
    /// No random bytes for a challenge.
    #[error("no random bytes for a challenge: {0}")]
    Io(#[source] io::Error),
}
