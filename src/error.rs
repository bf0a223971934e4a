//! Error types, one per family of operations, in the shape of crossbeam's and tokio's.

use std::io;
use thiserror::Error;

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
/// After `Truncated`, `TooLong` and `Protocol` the stream can no longer be trusted to be at a message
/// boundary, so the receiving side of the connection becomes unusable: later receives return
/// `Protocol` again. After every other error the connection stays usable and nothing was lost: in
/// particular `Timeout` keeps any partly received message and the next receive continues it.
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
    /// No message arrived within the timeout. Nothing was lost.
    #[error("timed out waiting for a message")]
    Timeout,
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

impl From<RecvError> for io::Error {
    fn from(e: RecvError) -> io::Error {
        let kind = match &e {
            RecvError::Eof | RecvError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            RecvError::Timeout => io::ErrorKind::TimedOut,
            RecvError::Io(err) => err.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
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
#[derive(Error)]
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue is bounded and full: right now ([`try_put`](crate::Queue::try_put)) or until the
    /// timeout ran out ([`put_timeout`](crate::Queue::put_timeout)). Python's `queue.Full`.
    #[error("the queue is full")]
    Full(T),
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
    /// The operating system refused to store the item (out of memory for a large item).
    #[error("I/O error while putting an item: {error}")]
    Io {
        /// The item.
        item: T,
        /// The error.
        #[source]
        error: io::Error,
    },
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(item) | PutError::Closed(item) => item,
            PutError::Encode { item, .. }
            | PutError::Corrupt { item, .. }
            | PutError::Io { item, .. } => item,
        }
    }

    /// Whether the queue was full (the only error that waiting could cure).
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

impl<T> std::fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
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
        }
    }
}

/// Why no item could be taken from a [`Queue`](crate::Queue).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue is empty: right now ([`try_get`](crate::Queue::try_get)) or until the timeout ran
    /// out ([`get_timeout`](crate::Queue::get_timeout)). Python's `queue.Empty`. Nothing was taken.
    #[error("the queue is empty")]
    Empty,
    /// This handle was closed with [`close`](crate::Queue::close). Nothing was taken.
    #[error("the queue is closed")]
    Closed,
    /// The item was taken but could not be deserialized as the queue's item type; it is dropped and
    /// the next item is unaffected.
    #[error("failed to deserialize an item (it was taken and dropped): {0}")]
    Decode(String),
    /// The queue's shared state contradicts itself (memory written by something other than this
    /// crate): a length or header failed its checks. Nothing was taken or allocated.
    #[error("the queue's shared state is corrupt: {0}")]
    Corrupt(String),
    /// The operating system failed to read an item from the queue's overflow file. Nothing was taken.
    #[error("I/O error while taking an item: {0}")]
    Io(#[source] io::Error),
}

/// [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) was called more times than items
/// were put (Python's `ValueError: task_done() called too many times`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[error("task_done() called more times than items were put")]
pub struct TaskDoneError;
