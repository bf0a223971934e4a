//! The manager: a server process that holds shared objects (dicts, lists, namespaces, values,
//! arrays, locks, conditions, semaphores, events, barriers, queues), and the proxies other
//! processes use them through, on this machine or across the network (Python's
//! `multiprocessing.Manager()`).
//!
//! ```
//! use multiprocess::manager::Manager;
//! use multiprocess::Process;
//!
//! fn square_into(args: (multiprocess::manager::Dict<u32, u64>, u32)) {
//!     let (squares, i) = args;
//!     squares.set(&i, &(u64::from(i) * u64::from(i))).unwrap();
//! }
//!
//! let m = Manager::start()?;                  // the server, in a child process
//! let squares = m.dict::<u32, u64>()?;
//! let children: Vec<_> = (0..4)
//!     .map(|i| Process::spawn(square_into, (squares.clone(), i)))
//!     .collect::<Result<_, _>>()?;
//! for c in children {
//!     c.join()?;
//! }
//! assert_eq!(squares.get(&3)?, Some(9));
//! assert_eq!(squares.len()?, 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What it does that Python's does not
//! - **One connection per client process**, carrying every proxy's calls from every thread, with
//!   many in flight at once (Python opens a connection per proxy and thread, and several per
//!   proxy's life).
//! - **Batches and transactions**: many calls in one round trip; atomically (all or none, nothing
//!   of another client's in between), only if the objects are still at the versions you read.
//! - **Snapshots** of a whole container with its version, in one round trip (Python: one per item),
//!   and **watches**: `watch(version)` waits until the object changes past a version, and answers
//!   at once if it already has (so a watcher that was away loses no change).
//! - **Clients die cleanly**: a client's locks and semaphore slots are released when its
//!   connection ends (it exited or was killed), and the unnamed objects only it held are freed (after a grace period, for
//!   proxies in transit). Named objects of every kind ([`Manager::named`]: made by the first
//!   client to ask, found by the others) stay until the server stops.
//! - **Typed**: keys and values are your serde types, encoded with the crate's codec; the server
//!   stores them as bytes and never runs your code (keys compare by their encoding) unless you
//!   ask it to: types of your own ([`Serve`]) live in the server and answer typed calls.
//!
//! A server fails a call it cannot do with a typed [`RemoteError`] (a missing key, an index out of
//! range, a version conflict) and goes on; a request it cannot decode ends that client's connection
//! only.

mod client;
mod proto;
pub mod python;
mod serve;
mod server;

pub use proto::Kind;
pub use serve::{Registrations, Registry, Serve};
pub use server::{Server, Stopper};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use server::fuzz_requests;

use crate::codec;
use crate::{Address, Connection, Process, StartMethod, ToAddress};
use client::Core;
use proto::{Bytes, Call, Expect, ObjectId, Op, Reply, Values};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use thiserror::Error;

/// Why a call on a manager's object failed on the server (the server goes on).
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, ManagerError, RemoteError};
///
/// let m = Manager::start()?;
/// let l = m.list::<u8>()?;
/// match l.get(5) {
///     Err(ManagerError::Remote(RemoteError::IndexError { index, len })) => {
///         assert_eq!((index, len), (5, 0))
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteError {
    /// An index past the end (Python's `IndexError`).
    #[error("index {index} is out of range for a list of {len}")]
    IndexError {
        /// The index asked for.
        index: i64,
        /// The list's length.
        len: u64,
    },
    /// The item to remove is not in the list (Python's `ValueError`).
    #[error("no such item in the list")]
    NotFound,
    /// The object was freed (nobody held it) or never existed.
    #[error("the manager has no object {0} (freed, or never made)")]
    NoSuchObject(u64),
    /// No object has this name.
    #[error("the manager has no object named {0:?}")]
    NoSuchName(String),
    /// Another object has this name.
    #[error("the name {0:?} is taken")]
    NameTaken(String),
    /// The object is of another kind than the call needs.
    #[error("object {object} is a {kind}, not a {wanted}")]
    WrongKind {
        /// The object.
        object: u64,
        /// What it is.
        kind: String,
        /// What the call needs.
        wanted: String,
    },
    /// A transaction's object changed since the version it expected: nothing was done.
    #[error("object {object} is at version {found}, not {expected}: the transaction did nothing")]
    Conflict {
        /// The object.
        object: u64,
        /// The version the transaction expected.
        expected: u64,
        /// The version it found.
        found: u64,
    },
    /// The barrier is broken: a wait timed out, or a waiting party died (Python's
    /// `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// No item came in time (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// No room came in time (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// `task_done` called more times than items were put (Python's `ValueError`).
    #[error("task_done called more times than items were put")]
    TooManyTaskDone,
    /// A bounded semaphore released past its starting value (Python's `ValueError`).
    #[error("the bounded semaphore was released too many times")]
    TooManyReleases,
    /// A barrier for no parties (Python's `ValueError`).
    #[error("a barrier needs at least one party")]
    NoParties,
    /// A release of a lock that is not held (an RLock: not by this thread).
    #[error("the lock is not held (by this thread, for an RLock)")]
    NotHeld,
    /// The server does not serve a type of this name ([`Registry::register`]).
    #[error("the manager serves no type named {0:?}")]
    UnknownType(String),
    /// A served object's call failed: its request did not decode, or its method panicked.
    #[error("the served object failed: {0}")]
    Served(String),
    /// A call this object or this context does not take.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The server could not make sense of the request.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A server for Python clients ([`python::PythonServer`]) raised this Python exception
    /// (`"TypeError: unhashable type: 'list'"`), where no other variant says what went wrong.
    #[error("the server raised {0}")]
    Exception(String),
}

/// Why a manager operation failed.
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, ManagerError};
///
/// // Nobody serves there.
/// let err = Manager::connect("@multiprocess-doc-nobody-here", b"key").unwrap_err();
/// assert!(matches!(err, ManagerError::Connect(_)));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The call failed on the server (see [`RemoteError`]).
    #[error("the manager refused: {0}")]
    Remote(#[from] RemoteError),
    /// Connecting to the manager failed (nobody there, a wrong key, TLS refused).
    #[error("could not connect to the manager: {0}")]
    Connect(#[from] crate::ClientError),
    /// The connection to the manager ended (it stopped or died); every later call fails too.
    #[error("the connection to the manager is gone: {0}")]
    Disconnected(String),
    /// A key or value could not be encoded (or holds OS objects, which cannot be shared this way).
    #[error("a value could not be encoded for the manager: {0}")]
    Encode(String),
    /// A value from the manager is not of the proxy's type.
    #[error("a value from the manager is not of the expected type: {0}")]
    Decode(String),
    /// The manager's connection was made in another process (this one is a forked copy): use
    /// [`Manager::connect`] here, or hand proxies to children as arguments (they reconnect).
    #[error("this manager connection belongs to another process; connect again in this one")]
    WrongProcess,
    /// Starting the server failed.
    #[error("could not start the manager: {0}")]
    Start(String),
    /// No answer within the call timeout ([`Manager::set_call_timeout`]): the manager (or the
    /// network) is stuck, or the call waits longer than the timeout allows. Whether the call took
    /// effect is unknown; its answer, if it comes, is dropped.
    #[error("the manager did not answer in time")]
    Timeout,
    /// A batch names a proxy of another manager than its own: nothing was sent.
    #[error("a batch can only name objects of its own manager")]
    OtherManager,
}

/// What a manager holds and who is connected ([`Manager::status`]).
///
/// # Examples
/// ```
/// use multiprocess::manager::{Kind, Manager};
///
/// let m = Manager::start()?;
/// let _jobs = m.named("jobs").queue::<u32>(0)?;
/// let s = m.status()?;
/// assert_eq!(s.clients.len(), 1);
/// assert!(s.objects.iter().any(|o| o.name.as_deref() == Some("jobs")
///     && o.kind == Kind::Queue { maxsize: 0 }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Every object, by id.
    pub objects: Vec<ObjectStatus>,
    /// Every connected client.
    pub clients: Vec<ClientStatus>,
}

/// One object in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// Its id.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// How many holds clients have on it: one per proxy made or received (clones share one), and
    /// one per forked child that used a copy.
    pub holds: u64,
    /// Its version (one more per change).
    pub version: u64,
    /// Entries or items (a lock: 1 when held).
    pub len: u64,
    /// For a value of a type of your own: the type's [`Serve::NAME`].
    pub served: Option<String>,
}

/// One client in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Its id on the server.
    pub id: u64,
    /// Where it connected from.
    pub peer: String,
    /// How many holds it has on objects.
    pub holds: u64,
    /// Requests it made.
    pub requests: u64,
}

/// A connection to a manager (cheap to clone: clones share the connection), and the server process
/// itself when [`start`](Manager::start) made it.
///
/// A `Manager` (and every proxy) can be handed to a child process as (part of) its argument, or
/// sent through a [`Connection`]: it travels as the manager's address and key, and the receiving
/// process connects on its own (once, for all it receives). The key travels with it: send managers
/// and proxies only to processes that may have it.
///
/// # Examples
/// ```
/// use multiprocess::Process;
/// use multiprocess::manager::{Dict, Manager};
///
/// fn square(args: (Dict<u32, u32>, u32)) {
///     let (d, i) = args;
///     d.set(&i, &(i * i)).unwrap();
/// }
///
/// let m = Manager::start()?;
/// let d = m.dict()?;
/// let children: Vec<_> = (0..4)
///     .map(|i| Process::spawn(square, (d.clone(), i)))
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// assert_eq!(d.len()?, 4);
/// assert_eq!(d.get(&3)?, Some(9));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Manager {
    /// The server process, when this manager started it: stopped when the last clone drops
    /// (first of the fields: it stops the server through `core`).
    server: Option<Arc<ServerProcess>>,
    core: Arc<Core>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.core.address)
            .field("started_here", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

/// The server child of [`Manager::start`].
struct ServerProcess {
    process: Process<Result<(), String>>,
    core: Weak<Core>,
    /// To ask again on a fresh connection if this one is gone.
    address: Address,
    key: Vec<u8>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let asked = self
            .core
            .upgrade()
            .is_some_and(|core| core.call(Op::Shutdown).is_ok());
        if !asked && let Ok(core) = connect_core(&self.address, &self.key, Some(None)) {
            let _ = core.call(Op::Shutdown);
        }
        if self.process.join_timeout(Duration::from_secs(5)).is_err() {
            let _ = self.process.kill();
            let _ = self.process.join_timeout(Duration::from_secs(5));
        }
    }
}

/// Options for [`Manager::start`]: from [`Manager::builder`].
///
/// # Examples
/// ```
/// use multiprocess::StartMethod;
/// use multiprocess::manager::Manager;
/// use std::time::Duration;
///
/// let m = Manager::builder()
///     .start_method(StartMethod::Spawn)
///     .authkey(b"a key of our own")
///     .free_after(Duration::from_secs(30))
///     .start()?;
/// let d = m.dict::<u8, u8>()?;
/// d.set(&1, &2)?;
/// // Another program reaches it by address and key.
/// let other = Manager::connect(m.address(), b"a key of our own")?;
/// assert_eq!(other.named_dict::<u8, u8>("absent")?.len()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    method: Option<StartMethod>,
    free_after: Option<Duration>,
    max_message: Option<Option<u64>>,
    /// The server child's function: `serve_child::<R>` for the registrations `R`.
    child: Option<ServeChild>,
}

/// The function a started server runs, for one set of registrations.
type ServeChild = fn((Address, Vec<u8>, ServeOptions, Connection)) -> Result<(), String>;

impl ManagerBuilder {
    /// Serves the types of your own that `R` registers (see [`Serve`]); every process that starts
    /// this manager's server must be this program (the server child runs `R::register`).
    pub fn serving<R: Registrations>(mut self) -> Self {
        self.child = Some(serve_child::<R>);
        self
    }

    /// Where the server listens (default: a fresh Linux abstract name, reachable from this
    /// machine only). A TCP address serves other machines; the key is then mandatory.
    pub fn address(mut self, address: impl ToAddress) -> Result<Self, ManagerError> {
        self.address = Some(
            address
                .to_address()
                .map_err(|e| ManagerError::Connect(crate::ClientError::Io(e)))?,
        );
        Ok(self)
    }

    /// The key clients must prove (default: 32 random bytes, which the manager's proxies carry to
    /// the processes they are sent to).
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(key.as_ref().to_vec());
        self
    }

    /// How long an unnamed object nobody holds is kept before it is freed (default 10 s; see
    /// [`Server::free_after`]).
    pub fn free_after(mut self, grace: Duration) -> Self {
        self.free_after = Some(grace);
        self
    }

    /// The longest message (request or answer) the server and this connection take (`None`: no
    /// limit). Default: [`DEFAULT_MAX_MESSAGE`](crate::DEFAULT_MAX_MESSAGE) over TCP, none over a
    /// Unix socket. A message past it ends the connection that carried it (the server then lets go
    /// of that client's holds and locks): raise it for snapshots of huge containers.
    pub fn max_message(mut self, max: Option<u64>) -> Self {
        self.max_message = Some(max);
        self
    }

    /// How the server process starts (default: [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts the server in a child process and connects to it.
    ///
    /// # Errors
    /// The child could not start, or its listener could not bind ([`ManagerError::Start`]), or
    /// connecting to it failed.
    pub fn start(self) -> Result<Manager, ManagerError> {
        let key = match self.authkey {
            Some(k) => k,
            None => {
                let mut k = vec![0u8; 32];
                crate::sys::random_bytes(&mut k).map_err(|e| ManagerError::Start(e.to_string()))?;
                k
            }
        };
        let address = match self.address {
            Some(a) => a,
            None => {
                let mut tag = [0u8; 8];
                crate::sys::random_bytes(&mut tag)
                    .map_err(|e| ManagerError::Start(e.to_string()))?;
                Address::Abstract(
                    format!(
                        "multiprocess-manager-{}-{:016x}",
                        std::process::id(),
                        u64::from_ne_bytes(tag)
                    )
                    .into_bytes(),
                )
            }
        };
        let (here, there) = crate::pipe().map_err(|e| ManagerError::Start(e.to_string()))?;
        let mut b = Process::builder().name("manager").daemon(true);
        if let Some(m) = self.method {
            b = b.start_method(m);
        }
        let process = b
            .spawn(
                self.child.unwrap_or(serve_child::<serve::Nothing>),
                (
                    address,
                    key.clone(),
                    (self.free_after, self.max_message),
                    there,
                ),
            )
            .map_err(|e| ManagerError::Start(e.to_string()))?;
        let bound: Result<Address, String> = match here.recv() {
            Ok(r) => r,
            Err(e) => Err(format!("the server process did not report: {e}")),
        };
        let address = match bound {
            Ok(a) => a,
            Err(why) => {
                let _ = process.kill();
                let _ = process.join_timeout(Duration::from_secs(5));
                return Err(ManagerError::Start(why));
            }
        };
        let core = Arc::new(connect_core(&address, &key, self.max_message)?);
        // This process's connection to that manager (proxies received back share it).
        with_connections(|all| all.insert((address.clone(), key.clone()), Arc::downgrade(&core)));
        Ok(Manager {
            server: Some(Arc::new(ServerProcess {
                process,
                core: Arc::downgrade(&core),
                address: address.clone(),
                key: key.clone(),
            })),
            core,
        })
    }
}

/// The server child: binds, reports the address it got, serves until shut down.
/// The server's options: free_after, max_message.
type ServeOptions = (Option<Duration>, Option<Option<u64>>);

fn serve_child<R: Registrations>(
    args: (Address, Vec<u8>, ServeOptions, Connection),
) -> Result<(), String> {
    let (address, key, (free_after, max_message), report) = args;
    let mut b = crate::Listener::builder(&address).authkey(&key);
    if let Some(max) = max_message {
        b = b.max_message(max);
    }
    let listener = match b.bind() {
        Ok(l) => l,
        Err(e) => {
            let _ = report.send(&Err::<Address, String>(format!("bind {address}: {e}")));
            return Err(e.to_string());
        }
    };
    let _ = report.send(&Ok::<Address, String>(listener.address().clone()));
    drop(report);
    Server::new(listener)
        .map(|s| match free_after {
            Some(grace) => s.free_after(grace),
            None => s,
        })
        .map(|s| s.serving(R::register))
        .and_then(Server::serve)
        .map_err(|e| e.to_string())
}

fn connect_core(
    address: &Address,
    key: &[u8],
    max_message: Option<Option<u64>>,
) -> Result<Core, ManagerError> {
    let mut b = crate::Client::builder(address).authkey(key);
    if let Some(max) = max_message {
        b = b.max_message(max);
    }
    let conn = b.connect()?;
    Core::open(conn, address.clone(), key.to_vec())
}

/// This process's connections, by manager address and key: a process receiving proxies connects
/// once per manager, however many it receives.
fn connections() -> &'static Mutex<Connections> {
    static CONNECTIONS: std::sync::OnceLock<Mutex<Connections>> = std::sync::OnceLock::new();
    CONNECTIONS.get_or_init(Default::default)
}

/// A process's connections, by manager address and key.
type Connections = HashMap<(Address, Vec<u8>), Weak<Core>>;

impl Manager {
    /// Starts a manager server in a child process (with the defaults of [`Manager::builder`]) and
    /// connects to it. The server stops when the last clone of the returned `Manager` (and of
    /// the proxies made through it) is dropped in this process, or when this process dies.
    pub fn start() -> Result<Manager, ManagerError> {
        ManagerBuilder::default().start()
    }

    /// Options for the started server: address, key, start method.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Connects to a running manager (one that another process started, a standalone
    /// [`Server`], or a server for Python clients, [`python::PythonServer`], whose objects
    /// Python programs share), proving `key`. The connection is this process's for that manager: a second
    /// `connect`, a proxy received from elsewhere, and the connection of a manager this process
    /// [`start`](Self::start)ed all share it.
    pub fn connect(
        address: impl ToAddress,
        key: impl AsRef<[u8]>,
    ) -> Result<Manager, ManagerError> {
        let address = address
            .to_address()
            .map_err(|e| ManagerError::Connect(crate::ClientError::Io(e)))?;
        let key = key.as_ref().to_vec();
        Ok(Manager {
            core: shared_core(&address, &key)?,
            server: None,
        })
    }

    /// Connects with a client builder of your own: TLS, a timeout, a message limit; it must
    /// carry the manager's key. This connection becomes the process's connection to that manager:
    /// [`connect`](Self::connect) with the same address and key, and proxies of it that arrive in
    /// this process (through a `Connection`, a queue, a child's argument), use it too. A process
    /// that receives proxies without having connected connects with the address and key only
    /// (so, not over TLS): a process that must reach the manager over TLS calls `connect_with`
    /// before it receives them.
    ///
    /// # Errors
    /// The builder has no key, or connecting failed.
    pub fn connect_with(builder: crate::ClientBuilder) -> Result<Manager, ManagerError> {
        let (address, key) = builder.target();
        let address = address.map_err(|e| ManagerError::Connect(crate::ClientError::Io(e)))?;
        let Some(key) = key else {
            return Err(ManagerError::Connect(crate::ClientError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a manager needs its key: give the builder an authkey",
                ),
            )));
        };
        let conn = builder.connect()?;
        let core = Arc::new(Core::open(conn, address.clone(), key.clone())?);
        with_connections(|all| all.insert((address, key), Arc::downgrade(&core)));
        Ok(Manager { core, server: None })
    }

    /// Bounds how long any call through this process's connection to the manager waits for its
    /// answer (`None`, the default: as long as it takes), waits included: a lock acquire that may
    /// wait 10 s needs a call timeout above 10 s. A manager whose host vanished then fails calls
    /// with [`ManagerError::Timeout`] instead of hanging them.
    pub fn set_call_timeout(&self, timeout: Option<Duration>) -> Result<(), ManagerError> {
        self.core()?.set_timeout(timeout);
        Ok(())
    }

    /// Where the manager listens.
    pub fn address(&self) -> &Address {
        &self.core.address
    }

    fn call(&self, op: Op) -> Result<Reply, ManagerError> {
        self.core()?.call(op)
    }

    /// The connection of this process: the one this handle was made with, or, in a child forked
    /// with a copy of it, the child's own (made on first use).
    fn core(&self) -> Result<Arc<Core>, ManagerError> {
        if self.core.in_this_process() {
            return Ok(self.core.clone());
        }
        // Nothing else in this process holds that connection: it is kept for the process's life
        // (the holds it takes for inherited proxies are the process's).
        static KEPT: Mutex<Vec<Arc<Core>>> = Mutex::new(Vec::new());
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|c| c.in_this_process());
        if let Some(c) = kept
            .iter()
            .find(|c| c.address == self.core.address && c.key == self.core.key)
        {
            return Ok(c.clone());
        }
        let core = shared_core(&self.core.address, &self.core.key)?;
        kept.push(core.clone());
        Ok(core)
    }

    /// Runs a request that makes (or finds) an object: a handle on it.
    fn create_op(&self, op: Op) -> Result<Handle, ManagerError> {
        match self.call(op)? {
            Reply::Object { id, .. } => Ok(self.handle(id)),
            other => Err(unexpected(&other)),
        }
    }

    fn handle(&self, id: ObjectId) -> Handle {
        Handle(Arc::new(HandleInner {
            manager: self.local(),
            id,
        }))
    }

    /// This manager as this process sees it: itself, or in a child forked with a copy of it, the
    /// same manager through the child's own connection (so that the child's proxies let go of
    /// their holds when dropped).
    fn local(&self) -> Manager {
        if self.core.in_this_process() {
            return self.clone();
        }
        match self.core() {
            Ok(core) => Manager { core, server: None },
            Err(_) => self.clone(),
        }
    }

    /// Whether `other` is this manager (the same address and key).
    fn same_as(&self, other: &Manager) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
            || (self.core.address == other.core.address && self.core.key == other.core.key)
    }

    /// The objects called `name`: each of [`Manager`]'s constructors, as get-or-create by name
    /// (see [`Named`]).
    pub fn named<'a>(&'a self, name: &'a str) -> Named<'a> {
        Named {
            manager: self,
            name,
        }
    }

    /// The dict called `name`, made empty if there is none yet (`named(name).dict()`).
    pub fn named_dict<K, V>(&self, name: &str) -> Result<Dict<K, V>, ManagerError> {
        self.named(name).dict()
    }

    /// The list called `name`, made empty if there is none yet (`named(name).list()`).
    pub fn named_list<T>(&self, name: &str) -> Result<List<T>, ManagerError> {
        self.named(name).list()
    }

    /// A new value of a type of your own, made in the server from `init` (the server must serve
    /// `T`: [`ManagerBuilder::serving`], or [`Server::serving`]).
    pub fn served<T: Serve>(&self, init: &T::Init) -> Result<Served<T>, ManagerError> {
        Ok(Served::wrap(self.create_op(Op::CreateServed {
            type_name: T::NAME.to_string(),
            init: self.enc(init)?,
        })?))
    }

    /// Calls in one round trip, each on its own (see [`Batch`]).
    pub fn batch(&self) -> Batch {
        Batch {
            manager: self.clone(),
            calls: Vec::new(),
            expect: Vec::new(),
            holds: Vec::new(),
            foreign: false,
        }
    }

    /// What the server holds and who is connected.
    pub fn status(&self) -> Result<Status, ManagerError> {
        match self.call(Op::Status)? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the server (every client's connection ends). A manager started here also stops when
    /// its last handle drops.
    pub fn shutdown(&self) -> Result<(), ManagerError> {
        self.call(Op::Shutdown).map(drop)
    }
}

/// Objects by name, from [`Manager::named`]: each constructor returns the object called that name
/// if there is one (held by this proxy too; an `init` or `items` given is then ignored), and makes
/// it so if there is none. Named objects stay on the server until it stops, whoever holds them,
/// and any client can reach them by name. One of another kind, or of the same kind with other
/// parameters (a queue of another `maxsize`), is [`RemoteError::WrongKind`].
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let jobs = m.named("jobs").queue::<u32>(0)?;
/// jobs.put(&7)?;
/// // Any client, with the same name: the same queue.
/// let again = m.named("jobs").queue::<u32>(0)?;
/// assert_eq!(again.get()?, 7);
/// assert!(m.named("jobs").lock().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    manager: &'a Manager,
    name: &'a str,
}

/// Makes an object, named or not.
struct Maker<'a> {
    manager: &'a Manager,
    name: Option<&'a str>,
}

impl Maker<'_> {
    fn make(
        &self,
        kind: Kind,
        init: Option<Bytes>,
        items: Vec<Bytes>,
    ) -> Result<Handle, ManagerError> {
        self.manager.create_op(Op::Create {
            kind,
            name: self.name.map(str::to_string),
            existing: self.name.is_some(),
            init,
            items,
        })
    }

    fn kind(&self, kind: Kind) -> Result<Handle, ManagerError> {
        self.make(kind, None, Vec::new())
    }
}

/// The constructors of [`Manager`] (new objects) and of [`Named`] (get-or-create by name), from
/// one list: `fn name[generics](args) -> Proxy => |maker| body;`.
macro_rules! constructors {
    ($(
        $(#[doc = $doc:expr])*
        fn $f:ident $([$($g:tt)*])? ($($a:ident: $t:ty),*) -> $r:ty => |$mk:ident| $body:expr;
    )*) => {
        impl Manager {$(
            $(#[doc = $doc])*
            pub fn $f $(<$($g)*>)? (&self, $($a: $t),*) -> Result<$r, ManagerError> {
                let $mk = Maker { manager: self, name: None };
                $body
            }
        )*}

        impl Named<'_> {$(
            $(#[doc = $doc])*
            ///
            /// By name: the one called so, made if there is none.
            pub fn $f $(<$($g)*>)? (&self, $($a: $t),*) -> Result<$r, ManagerError> {
                let $mk = Maker { manager: self.manager, name: Some(self.name) };
                $body
            }
        )*}
    };
}

constructors! {
    /// A new, empty dict.
    fn dict[K, V]() -> Dict<K, V> => |mk| Ok(Dict::wrap(mk.kind(Kind::Dict)?));

    /// A new, empty list.
    fn list[T]() -> List<T> => |mk| Ok(List::wrap(mk.kind(Kind::List)?));

    /// A new, empty namespace (named values of any types, Python's `Namespace`).
    fn namespace() -> Namespace => |mk| Ok(Namespace(mk.kind(Kind::Namespace)?));

    /// A new value, set to `init`.
    fn value[T: Serialize](init: &T) -> Value<T> => |mk| {
        Ok(Value::wrap(mk.make(Kind::Value, Some(mk.manager.enc(init)?), Vec::new())?))
    };

    /// A new lock (Python's `Manager().Lock()`): held by a thread of a client, released if that
    /// client dies.
    fn lock() -> Lock => |mk| Ok(Lock(mk.kind(Kind::Lock { reentrant: false })?));

    /// A new reentrant lock (Python's `RLock`): its holder may take it again.
    fn rlock() -> Lock => |mk| Ok(Lock(mk.kind(Kind::Lock { reentrant: true })?));

    /// A new semaphore with `value` slots (Python's `Manager().Semaphore(value)`): the slots a
    /// client holds are given back if it dies.
    fn semaphore(value: u64) -> Semaphore => |mk| {
        Ok(Semaphore(mk.kind(Kind::Semaphore { value, bounded: false })?))
    };

    /// A new bounded semaphore (Python's `BoundedSemaphore`): a release past `value` is
    /// [`RemoteError::TooManyReleases`].
    fn bounded_semaphore(value: u64) -> Semaphore => |mk| {
        Ok(Semaphore(mk.kind(Kind::Semaphore { value, bounded: true })?))
    };

    /// A new queue holding at most `maxsize` items (0: no limit), Python's `Manager().Queue()`
    /// (and `JoinableQueue()`: it counts what is done with [`Queue::task_done`]).
    fn queue[T](maxsize: usize) -> Queue<T> => |mk| {
        Ok(Queue::wrap(mk.kind(Kind::Queue { maxsize: maxsize as u64 })?))
    };

    /// A new array holding `items` (Python's `Manager().Array()`): a list whose length never
    /// changes (`get`, `set`, `len`, `snapshot`, `iter`).
    fn array[T: Serialize](items: &[T]) -> Array<T> => |mk| {
        let items = items.iter().map(|x| mk.manager.enc(x)).collect::<Result<_, _>>()?;
        Ok(Array::wrap(mk.make(Kind::Array, None, items)?))
    };

    /// A new barrier for `parties` parties (Python's `Manager().Barrier()`): a party that dies
    /// waiting breaks it for the others. No parties is [`RemoteError::NoParties`].
    fn barrier(parties: usize) -> Barrier => |mk| {
        Ok(Barrier(mk.kind(Kind::Barrier { parties: parties as u64 })?))
    };

    /// A new condition with its own reentrant lock (Python's `Manager().Condition()`).
    fn condition() -> Condition => |mk| Ok(Condition(Lock(mk.kind(Kind::Condition)?)));

    /// A new event, not set (Python's `Manager().Event()`).
    fn event() -> Event => |mk| Ok(Event(mk.kind(Kind::Event)?));
}

fn shared_core(address: &Address, key: &[u8]) -> Result<Arc<Core>, ManagerError> {
    let tag = (address.clone(), key.to_vec());
    let live = |all: &Connections| {
        all.get(&tag)
            .and_then(Weak::upgrade)
            .filter(|core| core.in_this_process())
    };
    if let Some(core) = with_connections(|all| live(all)) {
        return Ok(core);
    }
    // Connected outside the table's lock (a fork waits for it: see `forkgate`); a thread that
    // connected meanwhile wins, and this connection closes unused.
    let core = Arc::new(connect_core(address, key, None)?);
    Ok(with_connections(|all| match live(all) {
        Some(theirs) => theirs,
        None => {
            all.insert(tag.clone(), Arc::downgrade(&core));
            core
        }
    }))
}

/// Runs `f` on this process's connections, inside a section of the fork gate (so that a forked
/// child finds the table unlocked).
fn with_connections<T>(f: impl FnOnce(&mut Connections) -> T) -> T {
    let _section = crate::forkgate::section();
    f(&mut connections().lock().unwrap_or_else(|p| p.into_inner()))
}

/// Reads a [`Reply::Raw`]: its count, then its parts one by one, each checked against what is
/// there (a forged count or length is an error, never an allocation).
struct RawParts<'a> {
    rest: &'a [u8],
    count: usize,
}

impl<'a> RawParts<'a> {
    /// `per`: parts per entry (2 for a dict's key and value).
    fn new(raw: &'a [u8], per: usize) -> Result<RawParts<'a>, ManagerError> {
        let bad = || ManagerError::Decode("a malformed container from the manager".into());
        let (n, rest) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
        let count = usize::try_from(u64::from_le_bytes(*n)).map_err(|_| bad())?;
        // Each part takes at least its 8-byte length.
        if count
            .checked_mul(per * 8)
            .is_none_or(|min| min > rest.len())
        {
            return Err(bad());
        }
        Ok(RawParts { rest, count })
    }

    fn next(&mut self) -> Result<&'a [u8], ManagerError> {
        let bad = || ManagerError::Decode("a malformed container from the manager".into());
        let (n, rest) = self.rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let n = usize::try_from(u64::from_le_bytes(*n)).map_err(|_| bad())?;
        if n > rest.len() {
            return Err(bad());
        }
        let (part, rest) = rest.split_at(n);
        self.rest = rest;
        Ok(part)
    }
}

fn unexpected(reply: &Reply) -> ManagerError {
    ManagerError::Decode(format!("an answer of the wrong shape: {reply:?}"))
}

/// A key or value as the server stores them: in the crate's codec, or pickled for a server of
/// Python clients (which then holds it as the Python value it is: see `python`).
fn encode<T: Serialize + ?Sized>(values: Values, value: &T) -> Result<Bytes, ManagerError> {
    let bytes = match values {
        Values::Crate => {
            let (bytes, fds) = codec::encode(value).map_err(ManagerError::Encode)?;
            if !fds.is_empty() {
                return Err(ManagerError::Encode(
                    "OS objects (connections, locks, queues) cannot be stored in a manager".into(),
                ));
            }
            bytes
        }
        Values::Pickle => {
            crate::pickle::to_vec(value).map_err(|e| ManagerError::Encode(e.to_string()))?
        }
    };
    Ok(Bytes::from(bytes))
}

fn decode<T: DeserializeOwned>(values: Values, bytes: &[u8]) -> Result<T, ManagerError> {
    match values {
        Values::Crate => codec::decode(bytes, Vec::new()).map_err(ManagerError::Decode),
        Values::Pickle => {
            crate::pickle::from_slice(bytes).map_err(|e| ManagerError::Decode(e.to_string()))
        }
    }
}

impl Manager {
    fn enc<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, ManagerError> {
        encode(self.core.values, value)
    }
}

/// A Manager travels as its address and key (see the type's notes).
impl Serialize for Manager {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if codec::leaves_machine() {
            return Err(serde::ser::Error::custom(format!(
                "a Manager (or proxy) {}",
                codec::KEY_WOULD_LEAVE
            )));
        }
        (&self.core.address, serde_bytes::Bytes::new(&self.core.key)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Manager {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (address, key): (Address, serde_bytes::ByteBuf) = Deserialize::deserialize(d)?;
        let core = shared_core(&address, &key).map_err(serde::de::Error::custom)?;
        Ok(Manager { core, server: None })
    }
}

/// One hold on one object: let go of when the last clone of its proxy drops.
#[derive(Clone)]
struct Handle(Arc<HandleInner>);

struct HandleInner {
    manager: Manager,
    id: ObjectId,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.manager.core.tell(Op::Release { object: self.id });
    }
}

impl Handle {
    fn id(&self) -> ObjectId {
        self.0.id
    }

    fn enc<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, ManagerError> {
        self.0.manager.enc(value)
    }

    fn dec<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ManagerError> {
        decode(self.0.manager.core.values, bytes)
    }

    /// Calls on a batch go by object id: this process must hold the object (see `call`).
    fn ensure_held(&self) -> Result<(), ManagerError> {
        let manager = &self.0.manager;
        if !manager.core.in_this_process() {
            manager.core()?.attach_once(self.0.id)?;
        }
        Ok(())
    }

    fn call(&self, call: Call) -> Result<Reply, ManagerError> {
        let manager = &self.0.manager;
        let core = manager.core()?;
        if !manager.core.in_this_process() {
            // A proxy this process has as a forked copy: its hold is the parent's, so this
            // process takes one of its own first (kept until this process's connection ends).
            core.attach_once(self.0.id)?;
        }
        core.call(Op::Call {
            object: self.0.id,
            call,
        })
    }

    fn version(&self) -> Result<u64, ManagerError> {
        match self.call(Call::Version)? {
            Reply::Version(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn watch(&self, since: u64, timeout: Option<Duration>) -> Result<Option<u64>, ManagerError> {
        match self.call(Call::Watch {
            since,
            timeout_us: micros(timeout),
        })? {
            Reply::Version(v) => Ok(Some(v)),
            Reply::Bool(false) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    fn len(&self) -> Result<usize, ManagerError> {
        match self.call(Call::Len)? {
            Reply::Len(n) => Ok(n as usize),
            other => Err(unexpected(&other)),
        }
    }

    fn unit(&self, call: Call) -> Result<(), ManagerError> {
        match self.call(call)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object {} at {}", self.0.id, self.0.manager.core.address)
    }
}

/// A proxy travels as its manager and object id; the receiving process takes a hold of its own.
impl Serialize for Handle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.0.manager, self.0.id).serialize(s)
    }
}

impl Handle {
    /// A proxy arriving in this process: takes a hold, if the object is what the proxy is for
    /// (else [`RemoteError::WrongKind`], as a deserialization error).
    fn attach<'de, D: serde::Deserializer<'de>>(d: D, expect: Expect) -> Result<Self, D::Error> {
        let (manager, id): (Manager, ObjectId) = Deserialize::deserialize(d)?;
        match manager.call(Op::Attach { object: id, expect }) {
            Ok(Reply::Object { .. }) => Ok(manager.handle(id)),
            Ok(other) => Err(serde::de::Error::custom(unexpected(&other))),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// Deserialize for the proxies that are a bare handle: attach as `$expect`.
macro_rules! attach_as {
    ($($name:ident => $expect:expr),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name(Handle::attach(d, $expect)?))
            }
        }
    )*};
}

attach_as!(
    Namespace => Expect::Namespace,
    Lock => Expect::Lock,
    Semaphore => Expect::Semaphore,
    Barrier => Expect::Barrier,
    Event => Expect::Event,
);

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Condition(Lock(Handle::attach(d, Expect::Condition)?)))
    }
}

macro_rules! proxy_common {
    ($name:ident < $($t:ident),* >, $expect:expr) => {
        impl<'de, $($t),*> Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name::wrap(Handle::attach(d, $expect)?))
            }
        }

        proxy_common!($name<$($t),*>);
    };
    ($name:ident < $($t:ident),* >) => {
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { h: self.h.clone(), _t: PhantomData }
            }
        }

        impl<$($t),*> fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.h)
            }
        }

        impl<$($t),*> Serialize for $name<$($t),*> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }

        impl<$($t),*> $name<$($t),*> {
            fn wrap(h: Handle) -> Self {
                $name { h, _t: PhantomData }
            }
        }

        impl<$($t),*> sealed::Sealed for $name<$($t),*> {}

        #[allow(private_interfaces)]
        impl<$($t),*> Proxy for $name<$($t),*> {
            fn handle(&self) -> &Handle {
                &self.h
            }
        }

        watchable!($name<$($t),*>);
    };
}

/// Every proxy's `version`, `watch`, `watch_timeout` and `id`.
macro_rules! watchable {
    ($name:ident $(< $($t:ident),* >)?) => {
        impl$(<$($t),*>)? $name$(<$($t),*>)? {
            /// The object's version: one more for each change (of its content, or of its state:
            /// a lock taken or released, an event set, a barrier broken).
            pub fn version(&self) -> Result<u64, ManagerError> {
                self.handle().version()
            }

            /// Waits until the object changes past version `since` (from `version()` or
            /// `snapshot()`, or the last `watch`); returns its version then. A watch is
            /// resumable: changes made while nobody watched answer it at once.
            pub fn watch(&self, since: u64) -> Result<u64, ManagerError> {
                self.handle().watch(since, None)?.ok_or_else(|| {
                    ManagerError::Decode("a watch without a timeout answered a timeout".into())
                })
            }

            /// [`watch`](Self::watch), waiting at most `timeout` (`None` then).
            pub fn watch_timeout(
                &self,
                since: u64,
                timeout: Duration,
            ) -> Result<Option<u64>, ManagerError> {
                self.handle().watch(since, Some(timeout))
            }

            /// The object's id on its manager.
            pub fn id(&self) -> u64 {
                self.handle().id()
            }
        }
    };
}

/// The proxies that are a bare handle: sealed, a [`Proxy`], watchable.
macro_rules! bare_proxy {
    ($($name:ident),*) => {$(
        impl sealed::Sealed for $name {}

        #[allow(private_interfaces)]
        impl Proxy for $name {
            fn handle(&self) -> &Handle {
                &self.0
            }
        }

        watchable!($name);
    )*};
}

bare_proxy!(Namespace, Lock, Semaphore, Event, Barrier);

impl sealed::Sealed for Condition {}

#[allow(private_interfaces)]
impl Proxy for Condition {
    fn handle(&self) -> &Handle {
        &(self.0).0
    }
}

watchable!(Condition);

/// A dict on a manager, of `K` to `V` (Python's `Manager().dict()`), in insertion order. Keys
/// compare by their encoding.
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let d = m.dict::<String, u32>()?;
/// d.set(&"a".into(), &1)?;
/// assert_eq!(d.set_default(&"a".into(), &5)?, 1);
/// assert_eq!(d.get_or(&"b".into(), 0)?, 0);
/// let (version, items) = d.snapshot()?;
/// assert_eq!(items, [("a".to_string(), 1)]);
/// assert!(version > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Dict<K, V> {
    h: Handle,
    _t: PhantomData<fn() -> (K, V)>,
}

proxy_common!(Dict<K, V>, Expect::Dict);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// The value of `key`, if it has one.
    pub fn get(&self, key: &K) -> Result<Option<V>, ManagerError> {
        match self.h.call(Call::DictGet(self.h.enc(key)?))? {
            Reply::Maybe(v) => v.map(|b| self.h.dec(&b)).transpose(),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key`, or `default` (Python's `get(key, default)`).
    pub fn get_or(&self, key: &K, default: V) -> Result<V, ManagerError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &K, value: &V) -> Result<(), ManagerError> {
        self.h
            .unit(Call::DictSet(self.h.enc(key)?, self.h.enc(value)?))
    }

    /// Sets `key` to `value` if it has no value; returns the value it has then (Python's
    /// `setdefault`), in one round trip and atomically.
    pub fn set_default(&self, key: &K, value: &V) -> Result<V, ManagerError> {
        match self
            .h
            .call(Call::DictSetDefault(self.h.enc(key)?, self.h.enc(value)?))?
        {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes `key`; its value, if it had one.
    pub fn remove(&self, key: &K) -> Result<Option<V>, ManagerError> {
        match self.h.call(Call::DictRemove(self.h.enc(key)?))? {
            Reply::Maybe(v) => v.map(|b| self.h.dec(&b)).transpose(),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether `key` has a value.
    pub fn contains(&self, key: &K) -> Result<bool, ManagerError> {
        match self.h.call(Call::DictContains(self.h.enc(key)?))? {
            Reply::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// How many entries.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.h.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        match self.h.call(Call::DictKeys)? {
            Reply::Many(v) => v.iter().map(|b| self.h.dec(b)).collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>, ManagerError> {
        match self.h.call(Call::DictValues)? {
            Reply::Many(v) => v.iter().map(|b| self.h.dec(b)).collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// The entries, in insertion order (one round trip; see [`snapshot`](Self::snapshot)).
    pub fn items(&self) -> Result<Vec<(K, V)>, ManagerError> {
        Ok(self.snapshot()?.1)
    }

    /// The entries and the version they are at, in one round trip.
    pub fn snapshot(&self) -> Result<(u64, Vec<(K, V)>), ManagerError> {
        match self.h.call(Call::Snapshot)? {
            Reply::Snapshot(version, items) => match *items {
                Reply::Raw(raw) => {
                    let mut parts = RawParts::new(&raw, 2)?;
                    let mut out = Vec::with_capacity(parts.count);
                    for _ in 0..parts.count {
                        out.push((self.h.dec(parts.next()?)?, self.h.dec(parts.next()?)?));
                    }
                    Ok((version, out))
                }
                other => Err(unexpected(&other)),
            },
            other => Err(unexpected(&other)),
        }
    }

    /// Sets every entry of `entries`, in one round trip.
    pub fn update<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    ) -> Result<(), ManagerError>
    where
        K: 'a,
        V: 'a,
    {
        let kv = entries
            .into_iter()
            .map(|(k, v)| Ok((self.h.enc(k)?, self.h.enc(v)?)))
            .collect::<Result<_, ManagerError>>()?;
        self.h.unit(Call::DictUpdate(kv))
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.h.unit(Call::Clear)
    }
}

/// A list on a manager (Python's `Manager().list()`). Indices are Python's: `-1` is the last item.
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let l = m.list::<i32>()?;
/// l.extend(&[1, 2, 3])?;
/// l.insert(0, &0)?;
/// assert_eq!(l.get(-1)?, 3);
/// assert_eq!(l.pop(None)?, 3);
/// let all: Vec<i32> = l.iter().collect::<Result<_, _>>()?;
/// assert_eq!(all, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct List<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(List<T>, Expect::List);

/// Items a [`List::iter`] fetches per round trip.
const LIST_CHUNK: u64 = 256;

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Adds `item` at the end.
    pub fn append(&self, item: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ListAppend(self.h.enc(item)?))
    }

    /// Adds `items` at the end, in one round trip.
    pub fn extend<'a>(&self, items: impl IntoIterator<Item = &'a T>) -> Result<(), ManagerError>
    where
        T: 'a,
    {
        let v = items
            .into_iter()
            .map(|x| self.h.enc(x))
            .collect::<Result<_, _>>()?;
        self.h.unit(Call::ListExtend(v))
    }

    /// Inserts `item` before `index` (clamped to the list, as Python's `insert`).
    pub fn insert(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ListInsert(index, self.h.enc(item)?))
    }

    /// The item at `index` ([`RemoteError::IndexError`] past the end).
    pub fn get(&self, index: i64) -> Result<T, ManagerError> {
        match self.h.call(Call::ListGet(index))? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces the item at `index`.
    pub fn set(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ListSet(index, self.h.enc(item)?))
    }

    /// Removes and returns the item at `index` (`None`: the last).
    pub fn pop(&self, index: Option<i64>) -> Result<T, ManagerError> {
        match self.h.call(Call::ListPop(index))? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes the first item equal to `item` (by encoding; [`RemoteError::NotFound`] if none).
    pub fn remove(&self, item: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ListRemove(self.h.enc(item)?))
    }

    /// How many items.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.h.len()
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.h.unit(Call::Clear)
    }

    /// The items and the version they are at, in one round trip.
    pub fn snapshot(&self) -> Result<(u64, Vec<T>), ManagerError> {
        match self.h.call(Call::Snapshot)? {
            Reply::Snapshot(version, items) => match *items {
                Reply::Raw(raw) => {
                    let mut parts = RawParts::new(&raw, 1)?;
                    let mut out = Vec::with_capacity(parts.count);
                    for _ in 0..parts.count {
                        out.push(self.h.dec(parts.next()?)?);
                    }
                    Ok((version, out))
                }
                other => Err(unexpected(&other)),
            },
            other => Err(unexpected(&other)),
        }
    }

    /// The items, fetched 256 per round trip as the iteration goes (Python's proxy fetches one
    /// per round trip). Items added or removed meanwhile may be seen or skipped; use
    /// [`snapshot`](Self::snapshot) for one consistent view.
    pub fn iter(&self) -> ListIter<'_, T> {
        ListIter {
            list: self,
            next: 0,
            buffer: Vec::new().into_iter(),
            done: false,
        }
    }
}

/// The iterator of [`List::iter`].
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let l = m.list::<u64>()?;
/// l.extend(&(0..1000).collect::<Vec<_>>())?;
/// // 256 items per round trip.
/// let sum: u64 = l.iter().map(|x| x.unwrap()).sum();
/// assert_eq!(sum, 499_500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ListIter<'a, T> {
    list: &'a List<T>,
    next: u64,
    buffer: std::vec::IntoIter<Bytes>,
    done: bool,
}

impl<T: Serialize + DeserializeOwned> Iterator for ListIter<'_, T> {
    type Item = Result<T, ManagerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(b) = self.buffer.next() {
            return Some(self.list.h.dec(&b));
        }
        if self.done {
            return None;
        }
        let start = self.next;
        match self.list.h.call(Call::ListRange(start, start + LIST_CHUNK)) {
            Ok(Reply::Many(v)) => {
                self.next += v.len() as u64;
                self.done = (v.len() as u64) < LIST_CHUNK;
                self.buffer = v.into_iter();
                self.buffer.next().map(|b| self.list.h.dec(&b))
            }
            Ok(other) => {
                self.done = true;
                Some(Err(unexpected(&other)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A namespace on a manager: named values of any serde types (Python's `Manager().Namespace()`).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let ns = m.namespace()?;
/// ns.set("name", "worker")?;
/// ns.set("count", &3u32)?;
/// assert_eq!(ns.get::<String>("name")?.as_deref(), Some("worker"));
/// assert_eq!(ns.names()?, ["count", "name"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Namespace(Handle);

impl Namespace {
    /// The value called `name`, if set.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ManagerError> {
        match self.0.call(Call::NsGet(name.to_string()))? {
            Reply::Maybe(v) => v.map(|b| self.0.dec(&b)).transpose(),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the value called `name`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ManagerError> {
        self.0
            .unit(Call::NsSet(name.to_string(), self.0.enc(value)?))
    }

    /// Removes the value called `name`; whether it was set.
    pub fn remove(&self, name: &str) -> Result<bool, ManagerError> {
        match self.0.call(Call::NsRemove(name.to_string()))? {
            Reply::Maybe(v) => Ok(v.is_some()),
            other => Err(unexpected(&other)),
        }
    }

    /// The names that are set, in order.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        match self.0.call(Call::Snapshot)? {
            Reply::Snapshot(_, named) => match *named {
                Reply::Named(v) => Ok(v.into_iter().map(|(k, _)| k).collect()),
                other => Err(unexpected(&other)),
            },
            other => Err(unexpected(&other)),
        }
    }
}

/// One value on a manager (Python's `Manager().Value()`).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let v = m.value(&10u64)?;
/// assert!(v.compare_and_set(&10, &11)?);
/// assert!(!v.compare_and_set(&10, &12)?);
/// assert_eq!(v.get()?, 11);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(Value<T>, Expect::Value);

impl<T: Serialize + DeserializeOwned> Value<T> {
    /// The value.
    pub fn get(&self) -> Result<T, ManagerError> {
        match self.h.call(Call::ValueGet)? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the value.
    pub fn set(&self, value: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ValueSet(self.h.enc(value)?))
    }

    /// Sets the value to `new` if it is `current` (by encoding); whether it did. A
    /// read-modify-write loop on it loses no update from any client.
    pub fn compare_and_set(&self, current: &T, new: &T) -> Result<bool, ManagerError> {
        match self.h.call(Call::ValueCompareSet(
            self.h.enc(current)?,
            self.h.enc(new)?,
        ))? {
            Reply::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }
}

/// A lock on a manager (Python's `Manager().Lock()`, or `RLock()`): held by one thread of one
/// client at a time, and released by the server if that client dies holding it.
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
/// use std::time::Duration;
///
/// let m = Manager::start()?;
/// let lock = m.lock()?;
/// {
///     let _held = lock.lock()?; // released when the guard drops
///     let other = lock.clone();
///     let waited = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(10)));
///     assert!(!waited.join().unwrap()?);
/// }
/// assert!(lock.try_acquire()?);
/// lock.release()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Lock(Handle);

/// This thread's token for locks: distinct for every thread of the process.
fn thread_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

impl Lock {
    fn acquire_for(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        // Rounded up: a timeout never waits less than asked.
        let timeout_us =
            timeout.map(|t| u64::try_from(t.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX));
        match self.0.call(Call::LockAcquire {
            timeout_us,
            thread: thread_token(),
        })? {
            Reply::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        self.acquire_for(None).map(drop)
    }

    /// Takes the lock if it is free now; whether it did.
    pub fn try_acquire(&self) -> Result<bool, ManagerError> {
        self.acquire_for(Some(Duration::ZERO))
    }

    /// Takes the lock, waiting at most `timeout`; whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.acquire_for(Some(timeout))
    }

    /// Releases the lock ([`RemoteError::NotHeld`] if it is not held; an RLock only by the thread
    /// that holds it).
    pub fn release(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::LockRelease {
            thread: thread_token(),
        })
    }

    /// Takes the lock and returns a guard that releases it when dropped.
    pub fn lock(&self) -> Result<LockGuard<'_>, ManagerError> {
        self.acquire()?;
        Ok(LockGuard(self))
    }
}

/// A semaphore on a manager (Python's `Manager().Semaphore()` / `BoundedSemaphore()`): the slots
/// a client holds are given back by the server if that client dies.
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, ManagerError, RemoteError};
///
/// let m = Manager::start()?;
/// let s = m.bounded_semaphore(2)?;
/// assert!(s.try_acquire()?);
/// assert_eq!(s.value()?, 1);
/// s.release()?;
/// assert!(matches!(
///     s.release(),
///     Err(ManagerError::Remote(RemoteError::TooManyReleases))
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Semaphore(Handle);

/// A microsecond timeout for the wire, rounded up (never waits less than asked).
fn micros(timeout: Option<Duration>) -> Option<u64> {
    timeout.map(|t| u64::try_from(t.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX))
}

fn bool_reply(reply: Reply) -> Result<bool, ManagerError> {
    match reply {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

impl Semaphore {
    /// Takes a slot, waiting as long as it takes.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        self.acquire_for(None).map(drop)
    }

    /// Takes a slot if one is free now; whether it did.
    pub fn try_acquire(&self) -> Result<bool, ManagerError> {
        self.acquire_for(Some(Duration::ZERO))
    }

    /// Takes a slot, waiting at most `timeout`; whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.acquire_for(Some(timeout))
    }

    fn acquire_for(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        bool_reply(self.0.call(Call::SemAcquire {
            timeout_us: micros(timeout),
        })?)
    }

    /// Gives a slot back (to a waiter, if one waits).
    pub fn release(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::SemRelease)
    }

    /// The free slots now.
    pub fn value(&self) -> Result<u64, ManagerError> {
        self.0.len().map(|n| n as u64)
    }
}

/// A queue on a manager (Python's `Manager().Queue()` and `JoinableQueue()`): any client puts and
/// gets; a get that waits is answered by the put that feeds it.
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
/// use std::time::Duration;
///
/// let m = Manager::start()?;
/// let q = m.queue::<String>(0)?;
/// q.put(&"job".to_string())?;
/// assert_eq!(q.get()?, "job");
/// q.task_done()?;
/// q.join()?; // everything put is done
/// assert!(q.get_timeout(Duration::from_millis(10)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(Queue<T>, Expect::Queue);

impl<T: Serialize + DeserializeOwned> Queue<T> {
    fn put_for(&self, item: &T, timeout: Option<Duration>) -> Result<(), ManagerError> {
        self.h.unit(Call::QueuePut {
            item: self.h.enc(item)?,
            timeout_us: micros(timeout),
        })
    }

    fn get_for(&self, timeout: Option<Duration>) -> Result<T, ManagerError> {
        match self.h.call(Call::QueueGet {
            timeout_us: micros(timeout),
        })? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Puts `item`, waiting as long as it takes for room.
    pub fn put(&self, item: &T) -> Result<(), ManagerError> {
        self.put_for(item, None)
    }

    /// Puts `item` if there is room now ([`RemoteError::Full`] if not).
    pub fn try_put(&self, item: &T) -> Result<(), ManagerError> {
        self.put_for(item, Some(Duration::ZERO))
    }

    /// Puts `item`, waiting at most `timeout` for room ([`RemoteError::Full`] then).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), ManagerError> {
        self.put_for(item, Some(timeout))
    }

    /// Takes the oldest item, waiting as long as it takes.
    pub fn get(&self) -> Result<T, ManagerError> {
        self.get_for(None)
    }

    /// Takes the oldest item if there is one now ([`RemoteError::Empty`] if not).
    pub fn try_get(&self) -> Result<T, ManagerError> {
        self.get_for(Some(Duration::ZERO))
    }

    /// Takes the oldest item, waiting at most `timeout` ([`RemoteError::Empty`] then).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, ManagerError> {
        self.get_for(Some(timeout))
    }

    /// How many items it holds now.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.h.len()
    }

    /// Whether it holds no item now.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// One item taken earlier is done ([`RemoteError::TooManyTaskDone`] past the items put).
    pub fn task_done(&self) -> Result<(), ManagerError> {
        self.h.unit(Call::QueueTaskDone)
    }

    /// Waits until every item put is done.
    pub fn join(&self) -> Result<(), ManagerError> {
        bool_reply(self.h.call(Call::QueueJoin { timeout_us: None })?).map(drop)
    }

    /// Waits at most `timeout` until every item put is done; whether they are.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        bool_reply(self.h.call(Call::QueueJoin {
            timeout_us: micros(Some(timeout)),
        })?)
    }
}

/// A fixed-length array on a manager (Python's `Manager().Array()`).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let a = m.array(&[0.0f64; 3])?;
/// a.set(-1, &2.5)?;
/// assert_eq!(a.len()?, 3);
/// assert_eq!(a.snapshot()?.1, [0.0, 0.0, 2.5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(Array<T>, Expect::Array);

impl<T: Serialize + DeserializeOwned> Array<T> {
    /// The item at `index` (Python's: `-1` is the last; [`RemoteError::IndexError`] past it).
    pub fn get(&self, index: i64) -> Result<T, ManagerError> {
        match self.h.call(Call::ListGet(index))? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces the item at `index`.
    pub fn set(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.h.unit(Call::ListSet(index, self.h.enc(item)?))
    }

    /// How many items (fixed).
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.h.len()
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// The items and the version they are at, in one round trip.
    pub fn snapshot(&self) -> Result<(u64, Vec<T>), ManagerError> {
        List::<T>::wrap(self.h.clone()).snapshot()
    }
}

/// A condition on a manager (Python's `Manager().Condition()`): its lock is taken and released
/// as a [`Lock`]'s (it is reentrant, and released by the server if its holder dies); `wait` and
/// `notify` need it held by the calling thread.
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
/// use std::time::Duration;
///
/// let m = Manager::start()?;
/// let c = m.condition()?;
/// let ready = m.value(&false)?;
/// let (c2, ready2) = (c.clone(), ready.clone());
/// let waiter = std::thread::spawn(move || -> Result<bool, multiprocess::manager::ManagerError> {
///     let _held = c2.lock().lock()?;
///     while !ready2.get()? {
///         c2.wait_timeout(Duration::from_secs(10))?;
///     }
///     Ok(true)
/// });
/// {
///     let _held = c.lock().lock()?;
///     ready.set(&true)?;
///     c.notify_all()?;
/// }
/// assert!(waiter.join().unwrap()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Condition(Lock);

impl Condition {
    /// Its lock (acquire, release, `lock()` guard).
    pub fn lock(&self) -> &Lock {
        &self.0
    }

    /// Releases the lock, waits for a notify, takes the lock back ([`RemoteError::NotHeld`] if
    /// this thread does not hold it).
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.wait_for(None).map(drop)
    }

    /// [`wait`](Self::wait), waiting at most `timeout` for the notify (the lock is taken back
    /// either way); whether it was notified.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.wait_for(Some(timeout))
    }

    fn wait_for(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        bool_reply((self.0).0.call(Call::CondWait {
            timeout_us: micros(timeout),
            thread: thread_token(),
        })?)
    }

    /// Wakes at most `n` waiters (they run once this thread releases the lock).
    pub fn notify(&self, n: usize) -> Result<(), ManagerError> {
        (self.0).0.unit(Call::CondNotify {
            n: n as u64,
            thread: thread_token(),
        })
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<(), ManagerError> {
        self.notify(usize::MAX)
    }
}

/// A value of a type of your own on a manager (see [`Serve`]): calls take `T::Request` and
/// answer `T::Response`, so a call that does not fit the type does not compile.
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, Registrations, Registry, Serve};
///
/// /// A stack that lives in the manager.
/// struct Stack(Vec<String>);
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum StackCall {
///     Push(String),
///     Pop,
/// }
///
/// impl Serve for Stack {
///     const NAME: &'static str = "example.Stack";
///     type Init = ();
///     type Request = StackCall;
///     type Response = Option<String>;
///     fn new(_: ()) -> Stack {
///         Stack(Vec::new())
///     }
///     fn call(&mut self, call: StackCall) -> Option<String> {
///         match call {
///             StackCall::Push(s) => {
///                 self.0.push(s);
///                 None
///             }
///             StackCall::Pop => self.0.pop(),
///         }
///     }
/// }
///
/// struct Types;
/// impl Registrations for Types {
///     fn register(r: &mut Registry) {
///         r.register::<Stack>();
///     }
/// }
///
/// let m = Manager::builder().serving::<Types>().start()?;
/// let stack = m.served::<Stack>(&())?;
/// stack.call(&StackCall::Push("a".into()))?;
/// assert_eq!(stack.call(&StackCall::Pop)?.as_deref(), Some("a"));
/// assert_eq!(stack.call(&StackCall::Pop)?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Served<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(Served<T>);

/// A served proxy attaches only to a value of its own type.
impl<'de, T: Serve> Deserialize<'de> for Served<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Served::wrap(Handle::attach(
            d,
            Expect::Served(T::NAME.to_string()),
        )?))
    }
}

impl<T: Serve> Served<T> {
    /// Runs `request` on the object, in the server.
    pub fn call(&self, request: &T::Request) -> Result<T::Response, ManagerError> {
        match self.h.call(Call::Served(self.h.enc(request)?))? {
            Reply::Bytes(b) => self.h.dec(&b),
            other => Err(unexpected(&other)),
        }
    }
}

/// A barrier on a manager (Python's `Manager().Barrier()`).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let b = m.barrier(2)?;
/// let other = b.clone();
/// let party = std::thread::spawn(move || other.wait());
/// let mine = b.wait()?;
/// let theirs = party.join().unwrap()?;
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// assert_eq!((b.parties()?, b.n_waiting()?, b.broken()?), (2, 0, false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Barrier(Handle);

impl Barrier {
    /// Waits until every party waits; this party's index (0 to parties - 1).
    pub fn wait(&self) -> Result<usize, ManagerError> {
        self.wait_for(None)
    }

    /// Waits at most `timeout`: past it the barrier breaks ([`RemoteError::BrokenBarrier`], for
    /// every party). As in Python, a zero timeout does not poll: unless this party is the last,
    /// it breaks the barrier at once.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.wait_for(Some(timeout))
    }

    /// Breaks the barrier (Python's `abort`): waiting parties and every later wait fail with
    /// [`RemoteError::BrokenBarrier`], until a [`reset`](Self::reset).
    pub fn abort(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::BarrierAbort)
    }

    /// Mends the barrier (Python's `reset`): parties waiting now fail with
    /// [`RemoteError::BrokenBarrier`]; later waits work again.
    pub fn reset(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::BarrierReset)
    }

    /// How many parties it waits for (Python's `parties`).
    pub fn parties(&self) -> Result<usize, ManagerError> {
        Ok(self.state()?.0)
    }

    /// How many parties wait now (Python's `n_waiting`).
    pub fn n_waiting(&self) -> Result<usize, ManagerError> {
        Ok(self.state()?.1)
    }

    /// Whether it is broken (Python's `broken`).
    pub fn broken(&self) -> Result<bool, ManagerError> {
        Ok(self.state()?.2)
    }

    fn state(&self) -> Result<(usize, usize, bool), ManagerError> {
        match self.0.call(Call::BarrierState)? {
            Reply::Barrier {
                parties,
                waiting,
                broken,
            } => Ok((parties as usize, waiting as usize, broken)),
            other => Err(unexpected(&other)),
        }
    }

    fn wait_for(&self, timeout: Option<Duration>) -> Result<usize, ManagerError> {
        match self.0.call(Call::BarrierWait {
            timeout_us: micros(timeout),
        })? {
            Reply::Len(i) => Ok(i as usize),
            other => Err(unexpected(&other)),
        }
    }
}

/// An event on a manager (Python's `Manager().Event()`).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
/// use std::time::Duration;
///
/// let m = Manager::start()?;
/// let e = m.event()?;
/// assert!(!e.wait_timeout(Duration::from_millis(10))?);
/// e.set()?;
/// assert!(e.is_set()?);
/// e.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Event(Handle);

impl Event {
    /// Sets it, waking every waiter.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::EventSet)
    }

    /// Clears it.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.0.unit(Call::EventClear)
    }

    /// Whether it is set.
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        bool_reply(self.0.call(Call::EventIsSet)?)
    }

    /// Waits until it is set.
    pub fn wait(&self) -> Result<(), ManagerError> {
        bool_reply(self.0.call(Call::EventWait { timeout_us: None })?).map(drop)
    }

    /// Waits at most `timeout` for it to be set; whether it is.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        bool_reply(self.0.call(Call::EventWait {
            timeout_us: micros(Some(timeout)),
        })?)
    }
}

/// Holds a manager [`Lock`]; releases it when dropped (a failed release, such as the manager being
/// gone, is ignored: the server releases the locks of a client whose connection ends).
///
/// # Examples
/// ```
/// use multiprocess::manager::Manager;
///
/// let m = Manager::start()?;
/// let lock = m.lock()?;
/// let guard = lock.lock()?;
/// assert!(!lock.clone().try_acquire()?); // a Lock is not reentrant, even for this thread
/// drop(guard);
/// assert!(lock.try_acquire()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "the lock is released at once if the guard is not kept"]
pub struct LockGuard<'a>(&'a Lock);

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.release();
    }
}

/// Calls on a manager's objects sent together (from [`Manager::batch`]): in one round trip with
/// [`send`](Self::send), each call on its own; or with [`commit`](Self::commit) as one transaction:
/// all of them or none, with no other client's call in between, and only if every object named by
/// [`expect`](Self::expect) is still at that version.
///
/// ```
/// use multiprocess::manager::{Manager, ManagerError, RemoteError};
///
/// let m = Manager::start()?;
/// let balances = m.dict::<String, i64>()?;
/// balances.set(&"alice".into(), &100)?;
/// // Move 30 from alice to bob, unless someone changed the dict since we read it.
/// let (version, _) = balances.snapshot()?;
/// let mut tx = m.batch();
/// tx.expect(&balances, version);
/// tx.dict_set(&balances, &"alice".into(), &70)?;
/// tx.dict_set(&balances, &"bob".into(), &30)?;
/// tx.commit()?;
/// assert_eq!(balances.get(&"bob".into())?, Some(30));
/// // The same version again is stale now: nothing happens.
/// let mut stale = m.batch();
/// stale.expect(&balances, version);
/// stale.dict_set(&balances, &"bob".into(), &0)?;
/// assert!(matches!(stale.commit(), Err(ManagerError::Remote(RemoteError::Conflict { .. }))));
/// assert_eq!(balances.get(&"bob".into())?, Some(30));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until `send` or `commit`"]
pub struct Batch {
    manager: Manager,
    calls: Vec<(ObjectId, Call)>,
    expect: Vec<(ObjectId, u64)>,
    /// The proxies the calls name: held until the batch has run.
    holds: Vec<Handle>,
    /// A call names a proxy of another manager.
    foreign: bool,
}

impl Batch {
    /// Requires `object` to be at `version` (from its `version()` or `snapshot()`) when the batch
    /// runs. A proxy of another manager makes the batch fail ([`ManagerError::OtherManager`]).
    pub fn expect<P: Proxy>(&mut self, object: &P, version: u64) -> &mut Self {
        let h = object.handle();
        self.check(h);
        self.expect.push((h.id(), version));
        self.hold(h);
        self
    }

    /// Adds `call` on `h`'s object.
    fn push(&mut self, h: &Handle, call: Call) -> &mut Self {
        self.calls.push((h.id(), call));
        self.check(h);
        self.hold(h);
        self
    }

    /// Keeps `h` until the batch has run (once for a run of calls on one object).
    fn hold(&mut self, h: &Handle) {
        if self
            .holds
            .last()
            .is_none_or(|last| !Arc::ptr_eq(&last.0, &h.0))
        {
            self.holds.push(h.clone());
        }
    }

    /// Notes a proxy of another manager: the batch then fails as a whole when run (ids are only
    /// unique within one manager).
    fn check(&mut self, h: &Handle) {
        if !self.manager.same_as(&h.0.manager) {
            self.foreign = true;
        }
    }

    /// Adds `dict[key] = value`.
    pub fn dict_set<K: Serialize, V: Serialize>(
        &mut self,
        dict: &Dict<K, V>,
        key: &K,
        value: &V,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(&dict.h, Call::DictSet(dict.h.enc(key)?, dict.h.enc(value)?)))
    }

    /// Adds removing `key` from `dict`.
    pub fn dict_remove<K: Serialize, V>(
        &mut self,
        dict: &Dict<K, V>,
        key: &K,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(&dict.h, Call::DictRemove(dict.h.enc(key)?)))
    }

    /// Adds appending `item` to `list`.
    pub fn list_append<T: Serialize>(
        &mut self,
        list: &List<T>,
        item: &T,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(&list.h, Call::ListAppend(list.h.enc(item)?)))
    }

    /// Adds `list[index] = item` ([`RemoteError::IndexError`] past the end, which fails a
    /// transaction as a whole).
    pub fn list_set<T: Serialize>(
        &mut self,
        list: &List<T>,
        index: i64,
        item: &T,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(&list.h, Call::ListSet(index, list.h.enc(item)?)))
    }

    /// Adds setting `value`.
    pub fn value_set<T: Serialize>(
        &mut self,
        value: &Value<T>,
        new: &T,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(&value.h, Call::ValueSet(value.h.enc(new)?)))
    }

    /// Adds setting `name` in `namespace`.
    pub fn namespace_set<T: Serialize + ?Sized>(
        &mut self,
        namespace: &Namespace,
        name: &str,
        value: &T,
    ) -> Result<&mut Self, ManagerError> {
        Ok(self.push(
            &namespace.0,
            Call::NsSet(name.to_string(), namespace.0.enc(value)?),
        ))
    }

    /// How many calls so far.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether it has no calls.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Runs the calls in one round trip, each on its own: the result of each, in order. The
    /// expected versions are checked first ([`RemoteError::Conflict`] and nothing done).
    pub fn send(self) -> Result<Vec<Result<(), RemoteError>>, ManagerError> {
        self.run(false)
    }

    /// Runs the calls as one transaction: all of them or, if one fails or an expected version
    /// does not match, none.
    pub fn commit(self) -> Result<(), ManagerError> {
        self.run(true).map(drop)
    }

    fn run(self, atomic: bool) -> Result<Vec<Result<(), RemoteError>>, ManagerError> {
        if self.foreign {
            return Err(ManagerError::OtherManager);
        }
        for h in &self.holds {
            h.ensure_held()?;
        }
        match self.manager.call(Op::Batch {
            calls: self.calls,
            atomic,
            expect: self.expect,
        })? {
            Reply::Batch(results) => Ok(results.into_iter().map(|r| r.map(drop)).collect()),
            other => Err(unexpected(&other)),
        }
    }
}

/// A proxy of a manager's object (for [`Batch::expect`], and the `version`, `watch` and `id`
/// every proxy has). Sealed: implemented by this module's proxies only.
///
/// # Examples
/// ```
/// use multiprocess::manager::{Manager, Proxy};
///
/// let m = Manager::start()?;
/// let d = m.dict::<u8, u8>()?;
/// let lock = m.lock()?;
/// assert_ne!(d.object_id(), lock.object_id());
/// // A transaction may expect any proxy's version.
/// let mut tx = m.batch();
/// tx.expect(&lock, lock.version()?).dict_set(&d, &1, &1)?;
/// tx.commit()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[allow(private_interfaces)]
pub trait Proxy: sealed::Sealed {
    /// The object's id on its manager.
    fn object_id(&self) -> u64 {
        self.handle().id()
    }

    #[doc(hidden)]
    fn handle(&self) -> &Handle;
}

mod sealed {
    pub trait Sealed {}
}
