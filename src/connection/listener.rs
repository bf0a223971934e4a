//! `Listener` and `Client`: connections between unrelated processes, over a Unix socket (a path or
//! a Linux abstract name) or TCP, wire-compatible with Python's `multiprocessing.connection`.
//!
//! # Handshakes that cannot hold the door
//! CPython's `Listener.accept` runs the authentication handshake inline, with no deadline: one
//! client that connects and says nothing blocks every later client forever. Here the listening
//! socket is non-blocking and `accept` polls it together with every handshake in progress: a new
//! connection gets its challenge at once and joins the list; whichever handshake completes first is
//! returned; one that passes its deadline (or fails) is dropped and reported as that `accept`'s
//! error, so the caller sees it and the others go on. Handshakes in progress stay with the listener
//! between calls.
//!
//! # Stale socket files
//! A listener that crashed leaves its socket file behind, and binding the path then fails with
//! `EADDRINUSE`. A new listener tries to connect to it: refused means nobody listens, so the file
//! (only if it is a socket) is removed and the bind retried; a live listener keeps its path and the
//! new one fails. A listener removes its own file when it is dropped, only if the path still names
//! the socket it made (not a successor's).

use super::Connection;
use super::auth::{self, AuthPolicy};
use super::tls::{self, TlsError};
use crate::error::{AuthError, RecvTimeoutError};
use crate::sync::futex::Wait;
use crate::sys;
use crate::sys::net::{Peer, UnixName};
use crate::tracked::{self, TrackedFd};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The longest message a connection made by a TCP [`Listener`] or [`Client`] accepts unless told
/// otherwise (64 MiB): a peer across the network cannot make this process hold more for one message.
/// Unix-socket connections have no limit (their peers are local), and a forged length never
/// allocates either way. Change it with `max_message` on the builders, or
/// [`Connection::with_max_message`].
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;

/// How long a handshake may take unless told otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a [`Listener`] listens and a [`Client`] connects.
///
/// As text ([`FromStr`], and every `&str` given to [`Listener::bind`] or [`Client::connect`]): a
/// string with a `/` is a socket file (`./name` for one in the current directory), `@name` a Linux
/// abstract name (Python writes it `'\0name'`), anything else a TCP address: `127.0.0.1:5000`,
/// `[::1]:0`, or `localhost:5000` (resolved; the first address is used).
///
/// ```
/// use multiprocess::Address;
/// assert_eq!("/tmp/x.sock".parse::<Address>()?, Address::Unix("/tmp/x.sock".into()));
/// assert_eq!("@name".parse::<Address>()?, Address::Abstract(b"name".to_vec()));
/// assert_eq!("127.0.0.1:80".parse::<Address>()?, Address::Tcp("127.0.0.1:80".parse()?));
/// assert_eq!(Address::Abstract(b"name".to_vec()).to_string(), "@name");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket file.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name: no file, gone with the listener.
    Abstract(Vec<u8>),
    /// A TCP address, IPv4 or IPv6.
    Tcp(SocketAddr),
}

impl Address {
    fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp(_))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl FromStr for Address {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Address> {
        if let Some(name) = s.strip_prefix('@') {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        match s.to_socket_addrs() {
            Ok(mut addrs) => addrs.next().map(Address::Tcp).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{s:?} resolves to no address"),
                )
            }),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?} is not an address (a path with a '/', '@name', or host:port): {e}"),
            )),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Address {
        Address::Unix(p)
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_path_buf())
    }
}

/// What [`Listener::bind`] and [`Client::connect`] take: an [`Address`], its text, a path, or a
/// socket address.
pub trait ToAddress {
    /// The address.
    fn to_address(&self) -> io::Result<Address>;
}

impl<T: ToAddress + ?Sized> ToAddress for &T {
    fn to_address(&self) -> io::Result<Address> {
        (**self).to_address()
    }
}

impl ToAddress for Address {
    fn to_address(&self) -> io::Result<Address> {
        Ok(self.clone())
    }
}

impl ToAddress for str {
    fn to_address(&self) -> io::Result<Address> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(&self) -> io::Result<Address> {
        self.parse()
    }
}

impl ToAddress for Path {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.to_path_buf()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> io::Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

/// Why [`Listener::accept`] returned no connection. The listener stays usable after each.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// A client's authentication handshake failed or timed out; that connection was dropped.
    #[error("a client from {peer} failed to authenticate: {error}")]
    Auth {
        /// Where the client connected from (its TCP address, or "a local process" over a Unix
        /// socket).
        peer: String,
        /// What went wrong.
        #[source]
        error: AuthError,
    },
    /// [`Listener::accept_timeout`] ran out of time.
    #[error("no client connected and authenticated in time")]
    Timeout,
    /// A client's TLS handshake failed or timed out; that connection was dropped.
    #[cfg(feature = "tls")]
    #[error("a client from {peer} failed its TLS handshake: {error}")]
    Tls {
        /// Where the client connected from.
        peer: String,
        /// What went wrong.
        #[source]
        error: TlsError,
    },
    /// The operating system refused (for example: this process is out of descriptors).
    #[error("accept failed: {0}")]
    Io(#[from] io::Error),
}

impl AcceptError {
    /// Whether the error concerns one client only (its handshake failed or timed out, and it was
    /// dropped): a server loop goes on to the next client. Otherwise the listener itself could
    /// not accept ([`Io`](Self::Io), such as out of descriptors) or the time ran out
    /// ([`Timeout`](Self::Timeout)).
    pub fn is_per_client(&self) -> bool {
        match self {
            AcceptError::Auth { .. } => true,
            #[cfg(feature = "tls")]
            AcceptError::Tls { .. } => true,
            AcceptError::Timeout | AcceptError::Io(_) => false,
        }
    }
}

#[cfg(feature = "tls")]
fn tls_failed(peer: String, error: TlsError) -> AcceptError {
    AcceptError::Tls { peer, error }
}

#[cfg(not(feature = "tls"))]
fn tls_failed(_: String, error: TlsError) -> AcceptError {
    match error {}
}

/// A handshake that passed its deadline at `step`.
fn timed_out(peer: String, step: Step) -> AcceptError {
    #[cfg(feature = "tls")]
    if step == Step::Tls {
        return AcceptError::Tls {
            peer,
            error: TlsError::Timeout,
        };
    }
    let _ = step; // without the feature no handshake is ever at its TLS step
    AcceptError::Auth {
        peer,
        error: AuthError::Timeout,
    }
}

/// What listeners and clients share: the key, how to run the handshake, limits.
#[derive(Clone)]
struct Auth {
    key: Option<Vec<u8>>,
    policy: AuthPolicy,
    timeout: Duration,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            key: None,
            policy: AuthPolicy::default(),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A server socket that accepts [`Connection`]s (Python's `multiprocessing.connection.Listener`).
///
/// With an authentication key, every client must prove it holds the same key (and the listener
/// proves it to the client) before `accept` returns the connection: the handshake of Python's
/// `multiprocessing.connection`, so Python clients connect too (see [`auth`](crate::auth)).
///
/// # Examples
/// ```
/// use multiprocess::{Client, Listener};
///
/// let listener = Listener::builder("127.0.0.1:0").authkey(b"secret").bind()?;
/// let address = listener.address().clone(); // the port the kernel chose
/// let client = std::thread::spawn(move || -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
///     let conn = Client::builder(&address).authkey(b"secret").connect()?;
///     conn.send_bytes(b"hello")?;
///     Ok(conn.recv_bytes()?)
/// });
/// let conn = listener.accept()?;
/// let got = conn.recv_bytes()?;
/// conn.send_bytes(&got)?;
/// assert_eq!(client.join().unwrap().unwrap(), b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Listener {
    fd: TrackedFd,
    address: Address,
    auth: Auth,
    max_message: Option<u64>,
    /// TLS for every accepted connection, first of all (see `tls`).
    tls: Option<tls::ServerTls>,
    /// Handshakes in progress (see the module notes).
    pending: Mutex<Vec<Pending>>,
    /// At most this many handshakes run at once; more clients wait in the kernel's backlog.
    max_pending: usize,
    /// The socket file this listener made, its identity (device, inode), and the process that made
    /// it: removed on drop by that process only (a forked child's copy leaves it alone).
    file: Option<(PathBuf, (u64, u64), u32)>,
}

/// A handshake in progress on the listener's side.
struct Pending {
    conn: Connection,
    peer: String,
    /// `None`: no deadline (a timeout too large to be an instant).
    deadline: Option<Instant>,
    /// Our challenge's message, while we wait for the answer to it.
    message: Vec<u8>,
    step: Step,
    /// Bytes may be waiting (the last poll said so, or a step just took a frame): only these are
    /// read, so that an accept costs a receive per handshake that moved, not per handshake.
    ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The TLS handshake runs.
    Tls,
    /// Our challenge is sent; the client's answer is awaited.
    Answer,
    /// We welcomed the client; its challenge to us is awaited.
    PeerChallenge,
    /// We answered its challenge; its verdict is awaited.
    Verdict,
}

/// Options for a [`Listener`]: from [`Listener::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `bind` is called"]
pub struct ListenerBuilder {
    address: io::Result<Address>,
    auth: Auth,
    backlog: i32,
    max_pending: usize,
    max_message: Option<Option<u64>>,
    tls: Option<tls::ServerTls>,
}

impl Clone for ListenerBuilder {
    fn clone(&self) -> Self {
        ListenerBuilder {
            address: clone_result(&self.address),
            auth: self.auth.clone(),
            backlog: self.backlog,
            max_pending: self.max_pending,
            max_message: self.max_message,
            tls: self.tls.clone(),
        }
    }
}

/// `io::Error` is not `Clone`: a copy keeps its kind and text.
fn clone_result(r: &io::Result<Address>) -> io::Result<Address> {
    match r {
        Ok(a) => Ok(a.clone()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

impl ListenerBuilder {
    /// Requires clients to authenticate with `key` (and proves it to them).
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.auth.key = Some(key.as_ref().to_vec());
        self
    }

    /// How the handshake runs: the digest to challenge with, whether the legacy MD5 form (Python
    /// 3.11 and older) is accepted.
    pub fn auth_policy(mut self, policy: AuthPolicy) -> Self {
        self.auth.policy = policy;
        self
    }

    /// How long a client's handshake may take (default 10 s): a client that connects and stays
    /// silent is dropped after it, and never holds up the others.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.auth.timeout = timeout;
        self
    }

    /// Connections waiting to be accepted before the kernel refuses more (default 128).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog.min(i32::MAX as u32) as i32;
        self
    }

    /// The longest message an accepted connection receives (`None`: no limit). Default:
    /// [`DEFAULT_MAX_MESSAGE`] over TCP, none over a Unix socket.
    pub fn max_message(mut self, max: Option<u64>) -> Self {
        self.max_message = Some(max);
        self
    }

    /// Handshakes run side by side at most (default 128): past it, further clients wait in the
    /// kernel's backlog until a handshake ends, so a flood of silent connections costs at most
    /// this many descriptors for at most the handshake timeout.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// Runs TLS on every accepted connection, before the authentication handshake (which then
    /// runs inside it) and within the same deadline. Clients must connect with
    /// [`ClientBuilder::tls`]; Python's, which have no TLS, cannot. See [`tls`](crate::tls) for
    /// how to make a configuration and an example.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<tls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds and listens.
    ///
    /// # Errors
    /// The address does not parse or resolve, is taken (a socket file with a live listener, or a
    /// file that is not a socket), or the system refuses.
    pub fn bind(self) -> io::Result<Listener> {
        let address = clone_result(&self.address)?;
        let (fd, address, file) = match &address {
            Address::Tcp(a) => {
                let fd = tracked::made_one(|| sys::net::listen_tcp(*a, self.backlog))?;
                let bound = sys::net::tcp_local_addr(fd.as_fd())?;
                (fd, Address::Tcp(bound), None)
            }
            Address::Abstract(n) => {
                let fd = tracked::made_one(|| {
                    sys::net::listen_unix(UnixName::Abstract(n), self.backlog)
                })?;
                (fd, address.clone(), None)
            }
            Address::Unix(p) => {
                let fd = bind_path(p, self.backlog)?;
                let meta = std::fs::symlink_metadata(p)?;
                (
                    fd,
                    address.clone(),
                    Some((p.clone(), (meta.dev(), meta.ino()), std::process::id())),
                )
            }
        };
        let max_message = self
            .max_message
            .unwrap_or(address.is_tcp().then_some(DEFAULT_MAX_MESSAGE));
        Ok(Listener {
            fd,
            address,
            auth: self.auth,
            max_message,
            tls: self.tls,
            pending: Mutex::new(Vec::new()),
            max_pending: self.max_pending,
            file,
        })
    }
}

/// Binds a socket file, replacing a stale one (see the module notes).
fn bind_path(path: &Path, backlog: i32) -> io::Result<TrackedFd> {
    let attempt = || tracked::made_one(|| sys::net::listen_unix(UnixName::Path(path), backlog));
    match attempt() {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            // The file's identity now, so that only this very file is removed.
            let seen = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))?;
            if sys::net::unix_listener_is_live(path)? {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a listener is live at {}", path.display()),
                ));
            }
            let now = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()));
            if now.is_ok_and(|id| id == seen) {
                crate::trace::event!(info, "removing a stale socket file {}", path.display());
                std::fs::remove_file(path)?;
            }
            attempt()
        }
        other => other,
    }
}

impl Listener {
    /// Listens at `address` with no authentication (a path, `@name`, or a TCP address: see
    /// [`Address`]).
    ///
    /// # Examples
    /// ```
    /// let dir = std::env::temp_dir().join(format!("mp-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("socket");
    /// let listener = multiprocess::Listener::bind(&path)?;
    /// assert!(path.exists());
    /// drop(listener);
    /// assert!(!path.exists()); // removed with its listener
    /// # std::fs::remove_dir(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(address: impl ToAddress) -> io::Result<Listener> {
        Listener::builder(address).bind()
    }

    /// A builder for a listener at `address`, for a key, a handshake timeout, a backlog, a message
    /// limit.
    pub fn builder(address: impl ToAddress) -> ListenerBuilder {
        ListenerBuilder {
            address: address.to_address(),
            auth: Auth::default(),
            backlog: 128,
            max_pending: 128,
            max_message: None,
            tls: None,
        }
    }

    /// The address it listens at (for TCP port 0: the port the kernel chose).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a client and returns its connection, authenticated when the listener has a key.
    ///
    /// One thread accepts at a time: a second caller waits until the first returns (handshakes in
    /// progress belong to the listener, whichever call advances them). A server loop goes on after
    /// an error that concerns one client only ([`AcceptError::is_per_client`]: a failed key or TLS
    /// handshake, a port scanner that connects and hangs up):
    ///
    /// ```no_run
    /// # let listener = multiprocess::Listener::builder("127.0.0.1:5000").authkey(b"k").bind()?;
    /// for conn in listener.incoming() {
    ///     match conn {
    ///         Ok(conn) => { std::thread::spawn(move || { let _ = conn.recv_bytes(); }); }
    ///         Err(e) if e.is_per_client() => eprintln!("{e}"),
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A client that failed its handshake ([`AcceptError::Auth`], or `AcceptError::Tls` with the
    /// `tls` feature: that client is dropped; call again for the next one), or a system error.
    pub fn accept(&self) -> Result<Connection, AcceptError> {
        self.accept_until(None)
    }

    /// [`accept`](Self::accept), waiting at most `timeout` ([`AcceptError::Timeout`]).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, AcceptError> {
        self.accept_until(Instant::now().checked_add(timeout))
    }

    /// An iterator over accepted connections (each `accept`'s result; it never ends by itself).
    pub fn incoming(&self) -> impl Iterator<Item = Result<Connection, AcceptError>> + '_ {
        std::iter::repeat_with(move || self.accept())
    }

    /// Whether clients must prove a key.
    pub(crate) fn has_authkey(&self) -> bool {
        self.auth.key.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    // Without the `tls` feature the TLS branches hold values of empty types.
    #[cfg_attr(not(feature = "tls"), allow(unreachable_code, unused_mut))]
    fn accept_until(&self, deadline: Option<Instant>) -> Result<Connection, AcceptError> {
        let mut pending = self.lock();
        // Bytes may have come for handshakes left by an earlier call.
        for p in pending.iter_mut() {
            p.ready = true;
        }
        loop {
            let now = Instant::now();
            if let Some(at) = pending
                .iter()
                .position(|p| p.deadline.is_some_and(|d| d <= now))
            {
                let p = pending.swap_remove(at);
                return Err(timed_out(p.peer, p.step));
            }
            // New clients: without a key each is ready at once; with one it gets its challenge.
            while pending.len() < self.max_pending {
                let fd = match tracked::made_one(|| sys::net::accept(self.fd.as_fd())) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The client gave up before we took it: not this listener's problem.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                    Err(e) => return Err(AcceptError::Io(e)),
                };
                let mut conn = self.wrap(fd);
                let peer = peer_of(&conn, &self.address);
                let step = match &self.tls {
                    Some(config) => match tls::Transport::server(config) {
                        Ok(transport) => {
                            conn = conn.with_tls(transport);
                            Step::Tls
                        }
                        Err(error) => return Err(tls_failed(peer, error)),
                    },
                    None if self.auth.key.is_none() => return Ok(conn),
                    None => Step::Answer,
                };
                let mut p = Pending {
                    conn,
                    peer,
                    deadline: now.checked_add(self.auth.timeout),
                    message: Vec::new(),
                    step,
                    // A TLS client speaks first: its hello may be in already.
                    ready: step == Step::Tls,
                };
                if step == Step::Answer
                    && let Err(error) = self.challenge(&mut p)
                {
                    return Err(AcceptError::Auth {
                        peer: p.peer,
                        error,
                    });
                }
                pending.push(p);
            }
            // Handshakes with a frame in: one step each (a step may leave the next frame ready,
            // so look again before sleeping).
            let mut stepped = false;
            let mut i = 0;
            while i < pending.len() {
                if !pending[i].ready {
                    i += 1;
                    continue;
                }
                if pending[i].step == Step::Tls {
                    match pending[i].conn.tls_handshake_step() {
                        Ok(false) => {
                            pending[i].ready = false;
                            i += 1;
                        }
                        Ok(true) if self.auth.key.is_none() => {
                            return Ok(pending.swap_remove(i).conn);
                        }
                        Ok(true) => {
                            pending[i].step = Step::Answer;
                            if let Err(error) = self.challenge(&mut pending[i]) {
                                let p = pending.swap_remove(i);
                                return Err(AcceptError::Auth {
                                    peer: p.peer,
                                    error,
                                });
                            }
                            // The client's answer may have come with the handshake's end.
                            stepped = true;
                            i += 1;
                        }
                        Err(error) => {
                            let p = pending.swap_remove(i);
                            return Err(tls_failed(p.peer, error));
                        }
                    }
                    continue;
                }
                match pending[i]
                    .conn
                    .recv_frame(Wait::Never, Some(auth::MAX_FRAME))
                {
                    Err(RecvTimeoutError::Timeout) => {
                        pending[i].ready = false;
                        i += 1;
                    }
                    Err(RecvTimeoutError::Failed(e)) => {
                        let p = pending.swap_remove(i);
                        return Err(AcceptError::Auth {
                            peer: p.peer,
                            error: AuthError::Recv(e),
                        });
                    }
                    Ok(frame) => match self.step(&mut pending[i], &frame.bytes) {
                        Ok(false) => {
                            stepped = true;
                            i += 1;
                        }
                        Ok(true) => return Ok(pending.swap_remove(i).conn),
                        Err(error) => {
                            let p = pending.swap_remove(i);
                            return Err(AcceptError::Auth {
                                peer: p.peer,
                                error,
                            });
                        }
                    },
                }
            }
            if stepped {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(AcceptError::Timeout);
            }
            let wake = pending
                .iter()
                .filter_map(|p| p.deadline)
                .chain(deadline)
                .min();
            // The listening socket only while there is room for another handshake.
            let room = pending.len() < self.max_pending;
            let fds: Vec<BorrowedFd<'_>> = room
                .then(|| self.fd.as_fd())
                .into_iter()
                .chain(pending.iter().map(|p| p.conn.as_fd()))
                .collect();
            let ready = sys::poll_readable(&fds, wake)?;
            let first = usize::from(room);
            for (p, &r) in pending.iter_mut().zip(&ready[first..]) {
                p.ready = r;
            }
        }
    }

    /// Sends the client our challenge: the authentication handshake's first step.
    fn challenge(&self, p: &mut Pending) -> Result<(), AuthError> {
        p.message = auth::new_message(self.auth.policy.digest)?;
        p.conn
            .send_bytes(&auth::challenge_frame(&p.message))
            .map_err(AuthError::Send)
    }

    /// One step of a handshake on a frame from the client: whether it is complete.
    fn step(&self, p: &mut Pending, frame: &[u8]) -> Result<bool, AuthError> {
        let key = self.auth.key.as_deref().unwrap_or_default();
        match p.step {
            Step::Tls => Err(AuthError::Protocol(
                "a frame before the TLS handshake ended".into(),
            )),
            Step::Answer => {
                auth::judge(&p.conn, key, &p.message, frame, &self.auth.policy)?;
                p.step = Step::PeerChallenge;
                Ok(false)
            }
            Step::PeerChallenge => {
                auth::respond(&p.conn, key, frame, &self.auth.policy)?;
                p.step = Step::Verdict;
                Ok(false)
            }
            Step::Verdict => auth::verdict(frame).map(|()| true),
        }
    }

    fn wrap(&self, fd: TrackedFd) -> Connection {
        if self.address.is_tcp()
            && let Err(e) = sys::net::set_nodelay(fd.as_fd())
        {
            crate::trace::event!(debug, "TCP_NODELAY refused on an accepted connection: {e}");
        }
        Connection::from_tracked_socket(fd).with_max_message(self.max_message)
    }
}

fn peer_of(conn: &Connection, address: &Address) -> String {
    match address {
        Address::Tcp(_) => sys::net::tcp_peer_addr(conn.as_fd())
            .map_or_else(|_| "an unknown TCP peer".into(), |a| a.to_string()),
        _ => "a local process".into(),
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, id, owner)) = &self.file {
            // Only the file this listener made (a successor may have replaced it), and only in the
            // process that made it.
            if *owner == std::process::id()
                && std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id)
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("auth", &self.auth)
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

/// Connects to a [`Listener`] (or a Python `multiprocessing.connection.Listener`): Python's
/// `Client(address, authkey=...)`.
///
/// # Examples
/// ```
/// use multiprocess::{Client, Listener};
///
/// let listener = Listener::bind("@multiprocess-doc-client")?;
/// let conn = Client::connect("@multiprocess-doc-client")?;
/// conn.send(&(1u8, "two"))?;
/// assert_eq!(listener.accept()?.recv::<(u8, String)>()?, (1, "two".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Connects to `address`, with no authentication.
    pub fn connect(address: impl ToAddress) -> Result<Connection, ClientError> {
        Client::builder(address).connect()
    }

    /// A builder, for a key, a timeout, a message limit.
    pub fn builder(address: impl ToAddress) -> ClientBuilder {
        ClientBuilder {
            address: address.to_address(),
            auth: Auth::default(),
            max_message: None,
            tls: None,
            #[cfg(feature = "tls")]
            server_name: None,
        }
    }
}

/// Options for a client connection: from [`Client::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct ClientBuilder {
    address: io::Result<Address>,
    auth: Auth,
    max_message: Option<Option<u64>>,
    tls: Option<tls::ClientTls>,
    #[cfg(feature = "tls")]
    server_name: Option<String>,
}

/// Why [`Client::connect`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address did not parse or resolve, or nobody listens there, or the system refused.
    #[error("could not connect: {0}")]
    Io(#[from] io::Error),
    /// The authentication handshake failed (a different key, a listener that wants none, or none
    /// in time).
    #[error("could not authenticate: {0}")]
    Auth(#[from] AuthError),
    /// The TLS handshake failed (a certificate not trusted or not for this name, a listener
    /// without TLS, or none in time).
    #[cfg(feature = "tls")]
    #[error("could not set up TLS: {0}")]
    Tls(#[from] TlsError),
}

impl ClientBuilder {
    /// Authenticates with `key` (and requires the listener to prove it holds it too).
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.auth.key = Some(key.as_ref().to_vec());
        self
    }

    /// How the handshake runs (see [`AuthPolicy`]).
    pub fn auth_policy(mut self, policy: AuthPolicy) -> Self {
        self.auth.policy = policy;
        self
    }

    /// How long connecting and the handshake may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.auth.timeout = timeout;
        self
    }

    /// The longest message the connection receives (`None`: no limit). Default:
    /// [`DEFAULT_MAX_MESSAGE`] over TCP, none over a Unix socket.
    pub fn max_message(mut self, max: Option<u64>) -> Self {
        self.max_message = Some(max);
        self
    }

    /// Runs TLS over the connection, checking the listener's certificate with `config` (see
    /// [`tls`](crate::tls)) against the address's IP (or `localhost` for a Unix socket) unless
    /// [`server_name`](Self::server_name) names another. The TLS handshake comes first, within
    /// the builder's timeout; the authentication handshake, with a key, runs inside it.
    ///
    /// With TLS 1.3 a listener that requires a client certificate judges the client's only after
    /// the client's side of the handshake is done: a refused client certificate (or none) then
    /// shows as the first receive's error, or, with a key, as [`ClientError::Auth`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<tls::ClientConfig>) -> Self {
        let name = self.server_name.clone();
        self.tls = Some(tls::ClientTls { config, name });
        self
    }

    /// The name the listener's certificate must carry (a DNS name or an IP address), for
    /// [`tls`](Self::tls) (before or after it).
    #[cfg(feature = "tls")]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if let Some(t) = &mut self.tls {
            t.name = Some(name.clone());
        }
        self.server_name = Some(name);
        self
    }

    /// The address to connect to, and the key (for the manager, which hands both to the processes
    /// it sends proxies to).
    pub(crate) fn target(&self) -> (io::Result<Address>, Option<Vec<u8>>) {
        (clone_result(&self.address), self.auth.key.clone())
    }

    /// Connects (and authenticates, with a key).
    #[cfg_attr(not(feature = "tls"), allow(unreachable_code, unused_mut))]
    pub fn connect(self) -> Result<Connection, ClientError> {
        let address = clone_result(&self.address)?;
        let deadline = Instant::now().checked_add(self.auth.timeout);
        let (peer, tcp) = match &address {
            Address::Tcp(a) => (Peer::Tcp(*a), Some(*a)),
            Address::Unix(p) => (Peer::Unix(UnixName::Path(p)), None),
            Address::Abstract(n) => (Peer::Unix(UnixName::Abstract(n)), None),
        };
        // Made under the descriptor set's lock (a fork sees it tracked), connected outside it.
        let fd = tracked::made_one(|| sys::net::client_socket(tcp))?;
        sys::net::connect(fd.as_fd(), peer, deadline)?;
        let conn = Connection::from_tracked_socket(fd);
        let max = self
            .max_message
            .unwrap_or(address.is_tcp().then_some(DEFAULT_MAX_MESSAGE));
        let mut conn = conn.with_max_message(max);
        if let Some(setup) = &self.tls {
            conn = conn.with_tls(tls::Transport::client(setup, &address).map_err(tls_error)?);
            conn.tls_handshake(deadline).map_err(tls_error)?;
        }
        if let Some(key) = &self.auth.key {
            let policy = &self.auth.policy;
            auth::answer_challenge(&conn, key, policy, deadline)?;
            auth::deliver_challenge(&conn, key, policy, deadline)?;
        }
        Ok(conn)
    }
}

impl Clone for ClientBuilder {
    fn clone(&self) -> Self {
        ClientBuilder {
            address: clone_result(&self.address),
            auth: self.auth.clone(),
            max_message: self.max_message,
            tls: self.tls.clone(),
            #[cfg(feature = "tls")]
            server_name: self.server_name.clone(),
        }
    }
}

#[cfg(feature = "tls")]
fn tls_error(e: TlsError) -> ClientError {
    ClientError::Tls(e)
}

#[cfg(not(feature = "tls"))]
fn tls_error(e: TlsError) -> ClientError {
    match e {}
}
