//! Connections: message-framed, duplex or one-way byte streams between processes.

pub mod auth;
pub mod frame;
mod listener;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
mod tls;
mod wait;

pub use listener::{
    AcceptError, Address, Client, ClientBuilder, ClientError, DEFAULT_MAX_MESSAGE, Listener,
    ListenerBuilder, ToAddress,
};
pub use wait::{Waitable, wait};

use crate::codec;
use crate::error::{RecvError, RecvTimeoutError, SendError, TryRecvError};
use crate::sync::futex::{Spin, Wait};
use crate::sys;
use crate::tracked::TrackedFd;
use frame::{Header, MAX_HEADER_LEN, decode_header, encode_header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Socket buffer size asked for on new pipes: big enough that a 1 MiB message needs few wake-ups.
const SOCKET_BUFFER: usize = 4 << 20;

/// The spin budget a new connection starts with: on these machines a process blocked in the kernel
/// takes about 25 µs to wake on the other CPU, so a reply that comes within a few tens of
/// microseconds is cheaper to wait for awake.
const SPIN_START: Duration = Duration::from_micros(32);

/// Up to this many payload bytes are allocated up front on the strength of the header alone; beyond
/// it the buffer grows only as bytes actually arrive, so a forged length cannot allocate memory.
const TRUSTED_PREALLOC: u64 = 16 << 20;

/// Creates a duplex pipe: two connected [`Connection`]s, each of which can send and receive.
///
/// Like Python's `multiprocessing.Pipe()`, it is a Unix socket pair. Either end can be handed to a
/// child process (as or inside its argument) or sent through another connection.
///
/// # Examples
/// ```
/// let (a, b) = multiprocess::pipe()?;
/// a.send(&"ping")?;
/// assert_eq!(b.recv::<String>()?, "ping");
/// b.send_bytes(b"pong")?;
/// assert_eq!(a.recv_bytes()?, b"pong");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe() -> io::Result<(Connection, Connection)> {
    // Tracked from the moment they exist (see `tracked::made`).
    let (a, b) = crate::tracked::made(sys::socketpair)?;
    let (a, b) = (
        Connection::from_tracked_socket(a),
        Connection::from_tracked_socket(b),
    );
    for conn in [&a, &b] {
        // Best effort: the kernel caps the size at net.core.wmem_max; a smaller buffer only costs speed.
        if let Err(e) = sys::set_socket_buffers(conn.as_fd(), SOCKET_BUFFER) {
            crate::trace::event!(debug, "a pipe keeps its default socket buffers: {e}");
        }
    }
    Ok((a, b))
}

/// Creates a one-way pipe: `(reader, writer)`, as Python's `Pipe(duplex=False)`.
///
/// Sending on the reader or receiving on the writer is an error
/// ([`SendError::WrongDirection`], [`RecvError::WrongDirection`]). The ends are a socket pair shut down
/// in one direction (not an OS pipe), so they too can carry connections and other OS objects.
///
/// # Examples
/// ```
/// let (rx, tx) = multiprocess::pipe_oneway()?;
/// tx.send(&[1u8, 2, 3])?;
/// assert_eq!(rx.recv::<[u8; 3]>()?, [1, 2, 3]);
/// assert!(rx.send(&0).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe_oneway() -> io::Result<(Connection, Connection)> {
    let (r, w) = pipe()?;
    sys::shutdown(r.fd(), sys::Shutdown::Write)?;
    sys::shutdown(w.fd(), sys::Shutdown::Read)?;
    Ok((r.with_direction(true, false), w.with_direction(false, true)))
}

/// One end of a pipe or socket that carries whole messages.
///
/// Messages are framed as in Python's `multiprocessing.connection` (a 32-bit big-endian length, or `-1`
/// and a 64-bit length for messages over 2 GiB), so raw byte messages interoperate with Python. Typed
/// messages ([`send`](Self::send)/[`recv`](Self::recv)) carry any serde value encoded with bincode, and
/// may contain other connections (and later locks, queues, shared memory), whose descriptors travel
/// beside the bytes (`SCM_RIGHTS`).
///
/// Typed messages are encoded with bincode, which is not self-describing: the receiver must ask for the
/// type that was sent (or one with the same encoding). A mismatch is usually caught as
/// [`RecvError::Decode`], but not always (for example `[T; 2]` and `(T, T)` encode alike).
///
/// `send*` and `recv*` take `&self`: one thread may send while another receives, and concurrent
/// senders never interleave their messages.
///
/// # Blocking
/// `send` blocks while the socket buffer (4 MiB when the kernel allows) is full and the peer is not
/// reading. `recv` blocks until a whole message has arrived; `recv_timeout`/`recv_bytes_timeout` and
/// [`poll`](Self::poll) bound the wait. End-of-file (the peer closed its end or died) is reported as
/// [`RecvError::Eof`], never as a hang, provided no other process still holds a copy of the peer's
/// end.
///
/// # Examples
/// ```
/// use multiprocess::{pipe, Process};
///
/// fn child(conn: multiprocess::Connection) -> u64 {
///     let n: u64 = conn.recv().unwrap();
///     conn.send(&(n * 2)).unwrap();
///     n
/// }
///
/// let (here, there) = pipe()?;
/// let p = Process::spawn(child, there)?;
/// here.send(&21u64)?;
/// assert_eq!(here.recv::<u64>()?, 42);
/// assert_eq!(p.join()?, 21);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection {
    fd: TrackedFd,
    readable: bool,
    writable: bool,
    socket: bool,
    /// How long a receive stays awake for a message before it blocks (see `spin_for_message`).
    spin: Budget,
    /// The longest message this end receives (see [`Connection::with_max_message`]).
    max_message: Option<u64>,
    rx: Mutex<Rx>,
    tx: Mutex<()>,
    /// TLS under the framing, when the connection was made with it (see `tls`); `None`: the
    /// socket's bytes are the frames.
    tls: Option<Arc<tls::Transport>>,
}

/// A partly received message, kept across timeouts so that no byte is lost.
#[derive(Default)]
struct Rx {
    header: [u8; MAX_HEADER_LEN],
    header_got: usize,
    /// Set once the header is complete: (payload length, payload so far).
    payload: Option<(u64, Vec<u8>)>,
    /// Descriptors that arrived with the current message, as the kernel delivered them.
    fds: sys::Inbox,
    /// The same, tracked at once (see `tracked::owned_fds`): a message may stay partly received across
    /// timeouts, and a concurrent fork must not keep copies of what it carries.
    tracked: Vec<TrackedFd>,
    /// Set when the stream can no longer be trusted to sit at a message boundary.
    broken: Option<String>,
}

/// What the receive path produced: payload bytes and the descriptors that came with them.
pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Connection {
    /// Wraps a descriptor of unknown kind (socket or not, asks the kernel).
    pub(crate) fn from_parts(fd: OwnedFd, readable: bool, writable: bool) -> Connection {
        let socket = sys::is_socket(fd.as_fd());
        Connection::new(fd, socket, readable, writable)
    }

    /// Wraps a Unix socket this crate created.
    pub(crate) fn from_socket(fd: OwnedFd) -> Connection {
        Connection::new(fd, true, true, true)
    }

    /// Wraps a Unix socket this crate created, whose waits for a message share `spin` with other
    /// connections of the same use (a parent's connections to its children: each is used for one
    /// report, too few waits for a budget of its own to learn anything).
    pub(crate) fn from_socket_sharing(fd: TrackedFd, spin: &'static Spin) -> Connection {
        let mut conn = Connection::from_tracked_socket(fd);
        conn.spin = Budget::Shared(spin);
        conn
    }

    /// Wraps a Unix socket this crate created and tracks already (see `tracked::made`; also a
    /// forked child's end, which it takes as it is: re-tracking would write the tracked set's
    /// pages).
    pub(crate) fn from_tracked_socket(fd: TrackedFd) -> Connection {
        Connection {
            fd,
            readable: true,
            writable: true,
            socket: true,
            spin: Budget::Own(Spin::new(SPIN_START)),
            max_message: None,
            rx: Mutex::default(),
            tx: Mutex::new(()),
            tls: None,
        }
    }

    fn new(fd: OwnedFd, socket: bool, readable: bool, writable: bool) -> Connection {
        Connection {
            fd: TrackedFd::new(fd),
            readable,
            writable,
            socket,
            spin: Budget::Own(Spin::new(SPIN_START)),
            max_message: None,
            rx: Mutex::default(),
            tx: Mutex::new(()),
            tls: None,
        }
    }

    fn with_direction(mut self, readable: bool, writable: bool) -> Connection {
        self.readable = readable;
        self.writable = writable;
        self
    }

    /// Wraps an open descriptor (a socket, pipe end, or any stream) as a duplex connection. A pipe's read
    /// end only receives and its write end only sends; the OS reports the wrong direction as an error.
    ///
    /// # Examples
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// let (a, b) = UnixStream::pair()?;
    /// let (a, b) = (multiprocess::Connection::from_fd(a.into()), multiprocess::Connection::from_fd(b.into()));
    /// a.send_bytes(b"raw")?;
    /// assert_eq!(b.recv_bytes()?, b"raw");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Connection {
        Connection::from_parts(fd, true, true)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second handle on the same end (a `dup` of its descriptor), with the same direction. Messages
    /// sent through either handle go to the same peer; hand one to each of several children.
    ///
    /// Each handle frames its own messages, so two handles may send concurrently without interleaving
    /// bytes only if each message is sent in one piece (the kernel does not promise that for large
    /// messages); receive through one handle at a time.
    ///
    /// A connection over TLS has one TLS state, which a second handle cannot share: share the
    /// connection itself instead (an `Arc<Connection>`; it sends and receives through `&self`).
    ///
    /// # Errors
    /// The descriptor could not be duplicated, or the connection runs over TLS
    /// ([`io::ErrorKind::Unsupported`]).
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// let a2 = a.try_clone()?;
    /// a.send(&1u8)?;
    /// a2.send(&2u8)?;
    /// assert_eq!((b.recv::<u8>()?, b.recv::<u8>()?), (1, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_clone(&self) -> io::Result<Connection> {
        if self.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS connection has one TLS state and cannot be cloned: share it in an Arc",
            ));
        }
        let fd = sys::dup_cloexec(self.fd(), 0)?;
        Ok(
            Connection::new(fd, self.socket, self.readable, self.writable)
                .with_max_message(self.max_message),
        )
    }

    /// Sets the longest message this end accepts (`None`: no limit, the default for pipes): a longer
    /// one fails with [`RecvError::TooLong`] before any of it is read (the receiving side is then
    /// unusable, as in Python). Connections from a TCP [`Listener`](crate::Listener) or
    /// [`Client`](crate::Client) start with a limit (see [`DEFAULT_MAX_MESSAGE`]). However large
    /// the limit, a forged length never allocates: a buffer grows only as bytes arrive.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// let b = b.with_max_message(Some(8));
    /// a.send_bytes(&[0; 9])?;
    /// assert!(matches!(b.recv_bytes(), Err(multiprocess::RecvError::TooLong { len: 9, max: 8 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_max_message(mut self, max: Option<u64>) -> Connection {
        self.max_message = max;
        self
    }

    /// The longest message this end accepts (`None`: no limit).
    pub fn max_message(&self) -> Option<u64> {
        self.max_message
    }

    /// Whether this end can receive (false for the write end of a one-way pipe).
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (false for the read end of a one-way pipe).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Closes this end now, as dropping it does (Python's `close()`). The peer sees end-of-file once
    /// every copy of this end (in this and other processes) is closed. The connection is consumed, so
    /// nothing can use a closed end:
    /// ```compile_fail,E0382
    /// let (a, _b) = multiprocess::pipe()?;
    /// a.close();
    /// a.send(&1)?; // use of a moved value
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(self) {
        drop(self);
    }

    // ---------------------------------------------------------------------------------------------
    // Sending

    /// Sends a value of any serde type as one message.
    ///
    /// The value is serialized first; if that fails nothing is written ([`SendError::Encode`]).
    /// Connections inside the value travel as descriptors: the receiver gets its own handle to the same
    /// channel and this process keeps its own.
    ///
    /// # Errors
    /// `WrongDirection`, `Encode`, `TooManyDescriptors`, `Disconnected` (the peer is gone),
    /// `Io`.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.check_send()?;
        let (bytes, fds) = codec::encode(value).map_err(SendError::Encode)?;
        self.send_frame(&bytes, &fds)
    }

    /// Sends `buf` as one raw message (no serialization), readable by Python's `recv_bytes`.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// a.send_bytes(b"")?; // empty messages are messages too
    /// assert_eq!(b.recv_bytes()?, b"");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes(&self, buf: &[u8]) -> Result<(), SendError> {
        self.check_send()?;
        self.send_frame(buf, &[])
    }

    /// Sends `size` bytes of `buf` starting at `offset` (all the rest when `size` is `None`), as Python's
    /// `send_bytes(buffer, offset, size)`.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// a.send_bytes_range(b"hello world", 6, None)?;
    /// a.send_bytes_range(b"hello world", 0, Some(4))?;
    /// assert_eq!(b.recv_bytes()?, b"world");
    /// assert_eq!(b.recv_bytes()?, b"hell");
    /// assert!(a.send_bytes_range(b"abc", 2, Some(5)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_range(
        &self,
        buf: &[u8],
        offset: usize,
        size: Option<usize>,
    ) -> Result<(), SendError> {
        let len = buf.len();
        let size = size.unwrap_or(len.saturating_sub(offset));
        let range_err = SendError::Range { offset, size, len };
        let end = offset
            .checked_add(size)
            .ok_or(SendError::Range { offset, size, len })?;
        let part = buf.get(offset..end).ok_or(range_err)?;
        self.send_bytes(part)
    }

    fn check_send(&self) -> Result<(), SendError> {
        if !self.writable {
            Err(SendError::WrongDirection)
        } else {
            Ok(())
        }
    }

    pub(crate) fn send_frame(&self, payload: &[u8], fds: &[RawFd]) -> Result<(), SendError> {
        self.send_frame_parts(&[payload], fds)
    }

    /// Sends one frame whose payload is the concatenation of `parts`, with `fds` attached to its first
    /// byte. One `sendmsg` per attempt; partial writes continue where they stopped.
    pub(crate) fn send_frame_parts(&self, parts: &[&[u8]], fds: &[RawFd]) -> Result<(), SendError> {
        if fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(SendError::TooManyDescriptors(fds.len()));
        }
        let fd = self.fd();
        if !fds.is_empty() && !self.socket {
            return Err(SendError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "connections and other OS objects can only travel over a socket, not a pipe",
            )));
        }
        if !fds.is_empty() && self.tls.is_some() {
            return Err(SendError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "connections and other OS objects cannot travel over TLS",
            )));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let header = encode_header(len as u64, &mut hbuf);
        let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        slices.push(header);
        slices.extend(parts.iter().copied().filter(|p| !p.is_empty()));
        self.write_all(fd, &slices, fds)
    }

    /// Sends `bytes` as they are, without a frame header (the child bootstrap's prelude).
    pub(crate) fn send_unframed(&self, bytes: &[u8]) -> Result<(), SendError> {
        let fd = self.fd();
        self.write_all(fd, &[bytes], &[])
    }

    /// Writes the concatenation of `slices`, with `fds` attached to its first byte, under the send
    /// lock. One `sendmsg` per attempt; partial writes continue where they stopped.
    fn write_all(
        &self,
        fd: BorrowedFd<'_>,
        slices: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<(), SendError> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let _guard = lock(&self.tx);
        if let Some(tls) = &self.tls {
            return tls.write(fd, slices).map_err(send_error);
        }
        let mut sent = 0usize;
        while sent < total {
            // Skip what is already sent.
            let mut skip = sent;
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(slices.len());
            for s in slices {
                if skip >= s.len() {
                    skip -= s.len();
                } else {
                    iov.push(IoSlice::new(&s[skip..]));
                    skip = 0;
                }
            }
            let res = if self.socket {
                sys::send_vectored(fd, &iov, if sent == 0 { fds } else { &[] })
            } else {
                sys::write(fd, &iov[0])
            };
            match res {
                Ok(n) => sent += n,
                Err(e) => return Err(send_error(e)),
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------------
    // Receiving

    /// Receives one message and deserializes it as a `T`. Blocks until a whole message arrives.
    ///
    /// # Errors
    /// [`RecvError::Eof`] when the peer has closed its end (or died) and no message is left;
    /// [`RecvError::Decode`] when the message is not a valid `T` (it is consumed); see [`RecvError`].
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let frame = blocking(self.recv_frame(Wait::Forever, None))?;
        codec::decode(&frame.bytes, frame.fds).map_err(RecvError::Decode)
    }

    /// Like [`recv`](Self::recv), but gives up with [`RecvTimeoutError::Timeout`] after `timeout`. A
    /// message that was partly received when the time ran out is kept and completed by the next
    /// receive.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiprocess::RecvTimeoutError;
    /// let (a, b) = multiprocess::pipe()?;
    /// let err = a.recv_timeout::<u32>(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, RecvTimeoutError::Timeout));
    /// b.send(&7u32)?;
    /// assert_eq!(a.recv_timeout::<u32>(Duration::from_secs(5))?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        let frame = self.recv_frame(Wait::timeout(timeout), None)?;
        codec::decode(&frame.bytes, frame.fds).map_err(|e| RecvError::Decode(e).into())
    }

    /// Like [`recv`](Self::recv) without waiting: [`TryRecvError::Empty`] unless a whole message is
    /// there already. A message whose start arrived but not its end is kept (still `Empty`), and the
    /// next receive completes it.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::TryRecvError;
    /// let (a, b) = multiprocess::pipe()?;
    /// assert!(matches!(a.try_recv::<u8>(), Err(TryRecvError::Empty)));
    /// b.send(&1u8)?;
    /// # a.poll(std::time::Duration::from_secs(5))?;
    /// assert_eq!(a.try_recv::<u8>()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        let frame = self.try_recv_frame()?;
        codec::decode(&frame.bytes, frame.fds).map_err(|e| RecvError::Decode(e).into())
    }

    /// Sends `value` pickled, as Python's `Connection.send` does: for a Python peer (a Rust peer
    /// reads it with [`recv_pickle`](Self::recv_pickle)). The codec is chosen by the method, per
    /// message: `send`/`recv` carry bincode (Rust to Rust, with descriptors), `send_pickle`/
    /// `recv_pickle` carry Python's values (see [`pickle`](crate::pickle) for the mapping).
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// a.send_pickle(&("key", vec![1u32, 2]))?;
    /// let v = b.recv_pickle_value()?; // what Python's `recv()` would give, as a Value
    /// assert_eq!(format!("{v:?}"), r#"Tuple([Str("key"), List([Int(1), Int(2)])])"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_pickle<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let bytes = crate::pickle::to_vec(value).map_err(|e| SendError::Encode(e.to_string()))?;
        self.send_bytes(&bytes)
    }

    /// Sends a [`Value`](crate::pickle::Value) pickled.
    pub fn send_pickle_value(&self, value: &crate::pickle::Value) -> Result<(), SendError> {
        let bytes = crate::pickle::encode(value).map_err(|e| SendError::Encode(e.to_string()))?;
        self.send_bytes(&bytes)
    }

    /// Receives one pickled message (what Python's `Connection.send` writes) as a `T`. Nothing is
    /// imported or called; the decoder's limits hold (see [`pickle`](crate::pickle)). A message
    /// that does not decode is [`RecvError::Decode`] and the connection stays usable.
    pub fn recv_pickle<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let bytes = self.recv_bytes()?;
        crate::pickle::from_slice(&bytes).map_err(|e| RecvError::Decode(e.to_string()))
    }

    /// Receives one pickled message as a [`Value`](crate::pickle::Value).
    pub fn recv_pickle_value(&self) -> Result<crate::pickle::Value, RecvError> {
        let bytes = self.recv_bytes()?;
        crate::pickle::decode(&bytes).map_err(|e| RecvError::Decode(e.to_string()))
    }

    /// Receives one raw message.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        Ok(blocking(self.recv_frame(Wait::Forever, None))?.bytes)
    }

    /// Receives one raw message, failing with [`RecvError::TooLong`] if it is longer than `maxlength`
    /// (the message is then left unread and the receiving side becomes unusable, as in Python).
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// a.send_bytes(&[0; 100])?;
    /// assert!(matches!(b.recv_bytes_max(10), Err(multiprocess::RecvError::TooLong { len: 100, max: 10 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_max(&self, maxlength: usize) -> Result<Vec<u8>, RecvError> {
        Ok(blocking(self.recv_frame(Wait::Forever, Some(maxlength as u64)))?.bytes)
    }

    /// Like [`recv_bytes`](Self::recv_bytes), with a timeout (lossless, see
    /// [`recv_timeout`](Self::recv_timeout)).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        Ok(self.recv_frame(Wait::timeout(timeout), None)?.bytes)
    }

    /// Like [`recv_bytes`](Self::recv_bytes) without waiting (see [`try_recv`](Self::try_recv)).
    pub fn try_recv_bytes(&self) -> Result<Vec<u8>, TryRecvError> {
        Ok(self.try_recv_frame()?.bytes)
    }

    fn try_recv_frame(&self) -> Result<Frame, TryRecvError> {
        self.recv_frame(Wait::Never, None).map_err(|e| match e {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Failed(e) => TryRecvError::Failed(e),
        })
    }

    /// An iterator that receives messages as `T` until the peer closes its end: each item is what
    /// [`recv`](Self::recv) gives, and the iterator ends at [`RecvError::Eof`]. A message that does
    /// not decode is an `Err` item and the iteration goes on; an error after which the connection
    /// cannot be read any more (a torn message, a protocol error, an operating-system error) is the
    /// last item.
    ///
    /// # Examples
    /// ```
    /// use multiprocess::{pipe, Connection, Process};
    ///
    /// fn count_to(args: (Connection, u32)) {
    ///     let (conn, n) = args;
    ///     for i in 1..=n {
    ///         conn.send(&i).unwrap();
    ///     }
    /// } // `conn` is closed here: the parent's iteration ends
    ///
    /// let (here, there) = pipe()?;
    /// let child = Process::spawn(count_to, (there, 3))?;
    /// let got: Vec<u32> = here.iter().collect::<Result<_, _>>()?;
    /// assert_eq!(got, [1, 2, 3]);
    /// child.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter<T: DeserializeOwned>(&self) -> ConnectionIter<'_, T> {
        ConnectionIter {
            conn: self,
            done: false,
            _items: std::marker::PhantomData,
        }
    }

    /// Receives one raw message into `buf`, returning its length.
    ///
    /// # Errors
    /// [`RecvError::BufferTooShort`] if the message does not fit; the message is consumed and handed back
    /// inside the error.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.recv_bytes_into_at(buf, 0)
    }

    /// Receives one raw message into `buf[offset..]`, as Python's `recv_bytes_into(buffer, offset)`.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = multiprocess::pipe()?;
    /// a.send_bytes(b"abc")?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.recv_bytes_into_at(&mut buf, 2)?, 3);
    /// assert_eq!(&buf[..5], b"\0\0abc");
    /// a.send_bytes(b"too long for it")?;
    /// match b.recv_bytes_into(&mut buf) {
    ///     Err(multiprocess::RecvError::BufferTooShort(msg)) => assert_eq!(msg, b"too long for it"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_into_at(&self, buf: &mut [u8], offset: usize) -> Result<usize, RecvError> {
        if offset > buf.len() {
            return Err(RecvError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} is past the end of a {}-byte buffer",
                    buf.len()
                ),
            )));
        }
        let bytes = blocking(self.recv_frame(Wait::Forever, None))?.bytes;
        match buf.get_mut(offset..offset + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            None => Err(RecvError::BufferTooShort(bytes)),
        }
    }

    /// Whether a message (or end-of-file) is waiting, waiting up to `timeout` for one.
    /// `Duration::ZERO` checks without blocking; `Duration::MAX` waits forever.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = multiprocess::pipe()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(&1)?;
    /// assert!(b.poll(Duration::from_secs(5))?);
    /// drop(a);
    /// let _ = b.recv::<i32>()?;
    /// assert!(b.poll(Duration::ZERO)?); // end-of-file is "ready" too
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool, RecvError> {
        self.check_recv()?;
        let fd = self.fd();
        let Some(tls) = &self.tls else {
            return sys::wait_readable(fd, Some(timeout)).map_err(RecvError::Io);
        };
        // Readable bytes may be a record that carries no message (a session ticket): ready only
        // once plaintext (or the end) is in.
        let deadline = Wait::timeout(timeout).deadline();
        loop {
            if tls.buffered() {
                return Ok(true);
            }
            if !sys::poll_readable(&[fd], deadline).map_err(RecvError::Io)?[0] {
                return Ok(false);
            }
            // Only while no receive runs: one that found nothing and polls the socket must find
            // there the bytes it polls for (taken in here, they would wake nobody). With a
            // receive under way, readable is ready, as on a plain socket.
            let Ok(_receiving) = self.rx.try_lock() else {
                return Ok(true);
            };
            tls.pump(fd).map_err(RecvError::Io)?;
        }
    }

    /// Ends both directions of the socket now (for every process that holds it): a receive blocked
    /// on it returns end-of-file, sends fail.
    pub(crate) fn shutdown(&self) {
        let _ = sys::shutdown(self.fd(), sys::Shutdown::Both);
    }

    /// Puts TLS under the framing (before any byte of the connection was read or written).
    pub(crate) fn with_tls(mut self, transport: tls::Transport) -> Connection {
        self.tls = Some(Arc::new(transport));
        self
    }

    /// One step of this connection's TLS handshake (see `tls::Transport::handshake_step`);
    /// complete at once without TLS.
    pub(crate) fn tls_handshake_step(&self) -> Result<bool, tls::TlsError> {
        match &self.tls {
            None => Ok(true),
            Some(t) => t.handshake_step(self.fd()),
        }
    }

    /// Runs this connection's TLS handshake to its end, or to `deadline`.
    pub(crate) fn tls_handshake(&self, deadline: Option<Instant>) -> Result<(), tls::TlsError> {
        match &self.tls {
            None => Ok(()),
            Some(t) => t.handshake(self.fd(), deadline),
        }
    }

    /// Whether a receive would find input without reading the socket (TLS plaintext already
    /// decrypted, or the end of its stream): `wait` reports such a connection at once.
    pub(crate) fn input_buffered(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.buffered())
    }

    /// After the socket polled readable: whether that readiness is input (a TLS record may carry
    /// none; an error is input too, for the receive to report).
    pub(crate) fn confirm_readable(&self) -> bool {
        match &self.tls {
            None => true,
            // As in `poll`: only while no receive runs.
            Some(tls) => match self.rx.try_lock() {
                Ok(_receiving) => tls.pump(self.fd()).is_err() || tls.buffered(),
                Err(_) => true,
            },
        }
    }

    fn check_recv(&self) -> Result<(), RecvError> {
        if !self.readable {
            Err(RecvError::WrongDirection)
        } else {
            Ok(())
        }
    }

    /// The receive state machine. Reads exactly one frame: first exactly the header, then exactly the
    /// payload, so descriptors attached to a message can only arrive while that message is being read.
    /// `watch`, when given, is a descriptor (a child's pidfd) whose readiness also ends a blocking wait,
    /// reported as `Timeout`.
    pub(crate) fn recv_frame_watching(
        &self,
        wait: Wait,
        max: Option<u64>,
        watch: Option<BorrowedFd<'_>>,
    ) -> Result<Frame, RecvTimeoutError> {
        let (frame, complete) = self.recv_frame_inner(wait, max, watch)?;
        if !complete {
            // The message is consumed and the stream is still in step; only this message is lost.
            crate::trace::event!(
                warn,
                "a message arrived without its descriptors (RLIMIT_NOFILE)"
            );
            return Err(RecvError::DescriptorsLost.into());
        }
        Ok(frame)
    }

    /// Receives a frame even if the kernel had to drop some of its descriptors (our descriptor table
    /// is full); the flag says whether every descriptor arrived.
    pub(crate) fn recv_frame_keeping_bytes(&self) -> Result<(Frame, bool), RecvError> {
        blocking(self.recv_frame_inner(Wait::Forever, None, None))
    }

    fn recv_frame_inner(
        &self,
        wait: Wait,
        max: Option<u64>,
        watch: Option<BorrowedFd<'_>>,
    ) -> Result<(Frame, bool), RecvTimeoutError> {
        self.check_recv()?;
        let fd = self.fd();
        let mut guard = lock(&self.rx);
        let rx: &mut Rx = &mut guard;
        if let Some(why) = &rx.broken {
            return Err(RecvError::Protocol(format!(
                "connection unusable after an earlier error: {why}"
            ))
            .into());
        }
        let input = Input {
            conn: self,
            fd,
            wait,
            watch,
        };
        // Header: read exactly as many bytes as the decoder says are still missing.
        let len = loop {
            let need = match decode_header(&rx.header[..rx.header_got]) {
                Ok(Header::NeedMore(n)) => n,
                Ok(Header::Complete { len, .. }) => break len,
                Err(e) => return Err(rx.poison(RecvError::Protocol(e.to_string())).into()),
            };
            let spun = if rx.header_got == 0 {
                self.spin_for_message(fd, rx, wait)
            } else {
                None
            };
            let n = match spun {
                Some(n) => n.map_err(RecvError::Io)?,
                None => {
                    let (header, inbox) = (&mut rx.header[rx.header_got..need], &mut rx.fds);
                    input.read(false, |nonblocking| {
                        self.read_slice(fd, header, inbox, nonblocking)
                    })?
                }
            };
            if n == 0 {
                if rx.header_got == 0 {
                    return Err(RecvError::Eof.into());
                }
                let received = rx.header_got as u64;
                return Err(rx
                    .poison(RecvError::Truncated {
                        received,
                        expected: need as u64,
                    })
                    .into());
            }
            rx.header_got += n;
            // Descriptors come with a message's first bytes, which this loop reads.
            let arrived: Vec<_> = rx.fds.fds.drain(..).map(TrackedFd::new).collect();
            rx.tracked.extend(arrived);
        };
        let header_len = rx.header_got as u64;
        let max = match (max, self.max_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(max) = max
            && len > max
        {
            return Err(rx.poison(RecvError::TooLong { len, max }).into());
        }
        let (_, buf) = rx
            .payload
            .get_or_insert_with(|| (len, Vec::with_capacity(len.min(TRUSTED_PREALLOC) as usize)));
        // Payload: exactly `len` bytes.
        loop {
            let got = buf.len() as u64;
            if got == len {
                break;
            }
            let remaining = (len - got) as usize;
            if buf.capacity() == buf.len() {
                // Grow by what has already arrived (doubling), never by what is merely announced.
                buf.reserve(remaining.min(buf.capacity().max(64 << 10)));
            }
            // The rest of a message usually follows its header at once: try before waiting.
            let n = input.read(self.socket, |nonblocking| {
                self.read_vec(fd, buf, remaining, nonblocking)
            })?;
            if n == 0 {
                let received = header_len + got;
                return Err(rx
                    .poison(RecvError::Truncated {
                        received,
                        expected: header_len + len,
                    })
                    .into());
            }
        }
        let (_, bytes) = rx.payload.take().unwrap_or_default();
        rx.header_got = 0;
        let inbox = std::mem::take(&mut rx.fds);
        let mut fds: Vec<OwnedFd> = rx.tracked.drain(..).map(TrackedFd::into_owned).collect();
        fds.extend(inbox.fds);
        Ok((Frame { bytes, fds }, !inbox.truncated))
    }

    /// Waits for the start of a message awake for a short, adaptive time before the caller blocks in
    /// the kernel, reading the first header bytes if they come. Returns `None` if nothing came.
    ///
    /// The budget is this connection's (see `futex::Spin`): it grows while messages arrive during the
    /// spin and shrinks while they do not, never runs past the deadline, and gives up when this
    /// thread notices it was descheduled, so an idle or oversubscribed connection costs about what a
    /// plain blocking receive costs.
    fn spin_for_message(
        &self,
        fd: BorrowedFd<'_>,
        rx: &mut Rx,
        wait: Wait,
    ) -> Option<io::Result<usize>> {
        if !self.socket {
            return None;
        }
        self.spin.get().until(wait, || {
            match self.read_slice(fd, &mut rx.header[..4], &mut rx.fds, true) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                other => Some(other),
            }
        })
    }

    /// Reads into `buf` what the transport has: the socket's bytes (and the descriptors that come
    /// with them), or TLS plaintext (always without waiting).
    fn read_slice(
        &self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        inbox: &mut sys::Inbox,
        nonblocking: bool,
    ) -> io::Result<usize> {
        match &self.tls {
            None => sys::recv_into_slice(fd, buf, inbox, self.socket, nonblocking),
            Some(tls) => tls.read(fd, &self.tx, buf),
        }
    }

    /// Appends at most `max` bytes to `buf` from the transport (see `read_slice`); the socket's
    /// bytes go into capacity the caller reserved.
    fn read_vec(
        &self,
        fd: BorrowedFd<'_>,
        buf: &mut Vec<u8>,
        max: usize,
        nonblocking: bool,
    ) -> io::Result<usize> {
        match &self.tls {
            None => sys::recv_into_spare(fd, buf, max, self.socket, nonblocking),
            Some(tls) => tls.read_vec(fd, &self.tx, buf, max),
        }
    }

    pub(crate) fn recv_frame(
        &self,
        wait: Wait,
        max: Option<u64>,
    ) -> Result<Frame, RecvTimeoutError> {
        self.recv_frame_watching(wait, max, None)
    }
}

/// A failed write: a peer that is gone, or another error.
fn send_error(e: io::Error) -> SendError {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => SendError::Disconnected,
        _ => SendError::Io(e),
    }
}

/// How one receive waits for input: until its deadline, and for `watch` too.
struct Input<'a> {
    conn: &'a Connection,
    fd: BorrowedFd<'a>,
    wait: Wait,
    watch: Option<BorrowedFd<'a>>,
}

impl Input<'_> {
    /// Reads with `read` (told whether to read without waiting) once there is input. A plain
    /// socket is read at once without waiting first if `try_first`; a receive with no deadline and
    /// nothing to watch then simply blocks in the read, any other polls first. TLS input is read
    /// without waiting, and polled for until a read finds some: readable bytes are not always
    /// plaintext.
    fn read(
        &self,
        try_first: bool,
        mut read: impl FnMut(bool) -> io::Result<usize>,
    ) -> Result<usize, RecvTimeoutError> {
        let io = |r: io::Result<usize>| r.map_err(|e| RecvTimeoutError::from(RecvError::Io(e)));
        if self.conn.tls.is_some() {
            loop {
                match read(true) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.poll()?,
                    other => return io(other),
                }
            }
        }
        if try_first {
            match read(true) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return io(other),
            }
        }
        if self.wait != Wait::Forever || self.watch.is_some() {
            self.poll()?;
        }
        io(read(false))
    }

    /// Waits until the socket is readable: `Timeout` at the deadline or when `watch` is ready.
    fn poll(&self) -> Result<(), RecvTimeoutError> {
        let deadline = self.wait.deadline();
        let ready = match self.watch {
            Some(w) => sys::poll_readable(&[self.fd, w], deadline),
            None => sys::poll_readable(&[self.fd], deadline),
        }
        .map_err(RecvError::Io)?;
        if ready[0] {
            Ok(())
        } else {
            Err(RecvTimeoutError::Timeout)
        }
    }
}

/// A connection's spin budget: its own, or one shared by connections of the same use.
#[derive(Debug)]
enum Budget {
    Own(Spin),
    Shared(&'static Spin),
}

impl Budget {
    fn get(&self) -> &Spin {
        match self {
            Budget::Own(spin) => spin,
            Budget::Shared(spin) => spin,
        }
    }
}

/// The result of a receive that waits as long as it takes and watches nothing else: it cannot time
/// out.
fn blocking<T>(r: Result<T, RecvTimeoutError>) -> Result<T, RecvError> {
    r.map_err(|e| match e {
        RecvTimeoutError::Failed(e) => e,
        RecvTimeoutError::Timeout => unreachable!("a receive without a deadline timed out"),
    })
}

/// An iterator over the messages of a [`Connection`], from [`Connection::iter`].
pub struct ConnectionIter<'a, T> {
    conn: &'a Connection,
    done: bool,
    _items: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Iterator for ConnectionIter<'_, T> {
    type Item = Result<T, RecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.conn.recv() {
            Ok(v) => Some(Ok(v)),
            Err(RecvError::Eof) => {
                self.done = true;
                None
            }
            Err(
                e @ (RecvError::Decode(_)
                | RecvError::BufferTooShort(_)
                | RecvError::DescriptorsLost),
            ) => Some(Err(e)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<T> std::iter::FusedIterator for ConnectionIter<'_, T> where Self: Iterator {}

impl<T> fmt::Debug for ConnectionIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionIter")
            .field("conn", self.conn)
            .field("done", &self.done)
            .finish()
    }
}

impl Rx {
    fn poison(&mut self, err: RecvError) -> RecvError {
        self.broken = Some(err.to_string());
        self.payload = None;
        self.fds = sys::Inbox::default();
        self.tracked.clear();
        err
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the state half-written in a way we rely on
    // (partial frames are tracked explicitly), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The socket (or pipe) under the connection, for an event loop of your own. Over TLS its
/// readability is not a message's: bytes may be a record that carries none, and a message may sit
/// decrypted in memory with the socket empty; use [`poll`](Connection::poll) or [`wait`] for
/// readiness there.
impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd().as_raw_fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

/// A connection serializes as a reference to its descriptor, which travels beside the message, and
/// its direction. This only works inside [`Connection::send`] and the arguments of
/// [`Process`](crate::Process); anywhere else serialization fails with an error.
impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.tls.is_some() {
            return Err(serde::ser::Error::custom(
                "a TLS connection cannot travel to another process (its keys live in this one)",
            ));
        }
        let fd = codec::FdRef(self.fd(), "Connection");
        (fd, self.readable, self.writable).serialize(s)
    }
}

/// A received connection must be a socket or a pipe: a descriptor of another kind (a shared memory
/// file, say, sent as some other type of the same wire shape) is refused, so that `send_bytes` can
/// never write into memory another object hands out references to.
impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (fd, readable, writable) = <(codec::ReceivedFd, bool, bool)>::deserialize(d)?;
        let socket = match sys::stream_kind(fd.0.as_fd()) {
            Some(kind) => kind == sys::Stream::Socket,
            None => {
                return Err(serde::de::Error::custom(
                    "a received Connection is neither a socket nor a pipe",
                ));
            }
        };
        Ok(Connection::new(fd.0, socket, readable, writable))
    }
}
