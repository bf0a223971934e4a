//! A manager server for Python clients: it speaks the protocol of CPython's
//! `multiprocessing.managers`, so that `SyncManager(address, authkey).connect()` in an unchanged
//! Python program gets its dicts, lists, queues and locks from a Rust process.
//!
//! ```no_run
//! use multiprocess::Listener;
//! use multiprocess::manager::python::PythonServer;
//!
//! let listener = Listener::builder("127.0.0.1:50000").authkey(b"secret").bind()?;
//! let server = PythonServer::new(listener)?;
//! println!("serving Python clients at {}", server.address());
//! server.serve()?; // until a client calls `shutdown`, or a `PythonStopper` stops it
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! and in Python:
//!
//! ```text
//! from multiprocessing.managers import SyncManager
//! m = SyncManager(address=('127.0.0.1', 50000), authkey=b'secret'); m.connect()
//! d = m.dict(); d['x'] = [1, 2]; q = m.Queue(); q.put('job')
//! ```
//!
//! # The protocol, and how this server keeps it
//! Every connection starts with the handshake of `multiprocessing.connection` (the [`Listener`]
//! runs it: the current `{sha256}` form and the legacy one of Python 3.11 and older), then
//! carries pickles. A fresh connection sends one control request `(None, verb, args, kwds)`:
//! `create`, `incref`, `decref`, `dummy`, `debug_info`, `number_of_objects`, `get_methods`,
//! `shutdown`, or `accept_connection`, after which the connection carries method calls
//! `(ident, method, args, kwds)` of one proxy in one client thread. Replies are `('#RETURN',
//! value)`, `('#ERROR', exception)` (raised as is by the client), `('#TRACEBACK', text)` (a
//! `RemoteError` there), and `('#PROXY', (exposed, Token))` for a method that returns a new
//! shared object (a dict's `__iter__`). A Python client opens a connection for every proxy it
//! makes and every reference it takes or drops, so the server is built for many short
//! connections: a thread per connection, started as soon as the listener has checked the key.
//!
//! The objects are values, not Python objects: the server runs no Python, and holds what clients
//! send as [`pickle::Value`]s. Python's semantics for them are written out in `value.rs` (which
//! keys are one key, equality, ordering, negative indices and slices, `repr`) and the types'
//! methods in `objects.rs`, with the exceptions CPython's types raise. What needs Python code to
//! run (a `sort(key=...)`, a `Barrier`'s `action`) is refused with a `TypeError` that says so.
//!
//! # Rust clients of the same objects
//! A Rust program connects with [`Manager::connect`](crate::manager::Manager::connect) and gets the
//! crate's typed proxies ([`Dict`](crate::manager::Dict), [`List`](crate::manager::List),
//! [`Queue`](crate::manager::Queue), [`Lock`](crate::manager::Lock), ...) of the objects Python
//! clients use: this server tells a Rust client by its first message and answers it in the crate's
//! own protocol (`native.rs`), from the same objects, with the same Python semantics. Keys and
//! values are pickled by serde (a struct is a dict to Python). A Rust client's
//! [`named`](crate::manager::Manager::named) object is what every Python client's
//! `register(name)` type id returns, and the other way round for [`PythonServer::share`]d ones.
//! What the Rust server alone has is refused with [`RemoteError::Unsupported`](crate::manager::RemoteError::Unsupported):
//! transactions, types of your own, `status`.
//!
//! ```no_run
//! use multiprocess::manager::Manager;
//!
//! // Served by `multiprocess manager serve --python --address 127.0.0.1:50000 ...`.
//! let m = Manager::connect("127.0.0.1:50000", b"secret")?;
//! let jobs = m.named("jobs").queue::<(u32, String)>(0)?; // Python: m.jobs().get() == (1, 'a')
//! jobs.put(&(1, "a".into()))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Better than CPython's server
//! - A Lock still held by a client process that is gone (it exited, or was killed) is given
//!   back, once the server sees that process end (a Unix-socket client: the kernel names its
//!   process); an RLock as soon as its holder's connection ends (nobody else may release it).
//!   With CPython's server both stay locked forever, and every later acquirer hangs.
//!   Semaphores keep CPython's rules unless told otherwise
//!   ([`PythonServer::give_back_slots`]): their slots have no owner (one process takes, another
//!   gives back), so nothing tells a slot that was lost from one handed on.
//! - Objects held by a client that died are freed: every reference a client takes over a Unix
//!   socket is counted against its process (the kernel says which), and when that process is gone
//!   its references go with it. (Over TCP the server cannot tell a client's process, and counts
//!   as CPython does.)
//! - A request that is not one (a bad pickle, a wrong shape, an unknown object) is answered with
//!   `#TRACEBACK` and the connection goes on; nothing a client sends can stop the server.
//! - A client waiting in a blocking call (`get`, `acquire`, `wait`) that hangs up gives up its
//!   place at once.

mod client;
mod native;
mod objects;
mod value;

pub use client::{
    PyDict, PyError, PyException, PyList, PyNamespace, PyObject, PyQueue, PyValue, PythonManager,
};

use crate::pickle::{self, Limits, Value};
use crate::{Address, Connection, Listener};
use objects::{Call, ConnId, Outcome, Referent, lock};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use value::{Fail, repr};

/// A manager server for Python clients (`multiprocessing.managers.SyncManager` and
/// `BaseManager`s with the same type ids); see the [module documentation](self).
#[derive(Debug)]
pub struct PythonServer {
    listener: Listener,
    shared: Arc<Shared>,
}

/// Stops a [`PythonServer`] from another thread: [`PythonServer::serve`] returns soon after.
#[derive(Debug, Clone)]
pub struct PythonStopper {
    shared: Arc<Shared>,
}

impl PythonStopper {
    /// Asks the server to stop: it stops accepting, and blocked calls give up.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }
}

/// A lock a client process took, kept until that process is gone (see `Shared::orphans`).
type Orphan = (ProcessId, Arc<Referent>);

/// A client process: its pid and its start time (so that a reused pid is another process).
type ProcessId = (i32, u64);

/// The shared objects, with their references.
#[derive(Default)]
struct Table {
    objects: HashMap<String, Entry>,
    next: u64,
    /// The objects every client's `typeid()` gets ([`PythonServer::share`]), by type id.
    shared: HashMap<String, String>,
}

struct Entry {
    obj: Arc<Referent>,
    typeid: &'static str,
    refs: u64,
    /// References taken by client processes the server can tell (over Unix sockets), with the
    /// process's start time (a pid can be reused).
    by_process: HashMap<(i32, u64), u64>,
    /// Held by the server itself ([`PythonServer::share`]): never freed.
    pinned: bool,
    /// Was sent a proxy of this server (to store): the sweep looks inside only these.
    holds_proxies: bool,
    /// Moves on every call that may change the object (`objects::reads_only` tells which do
    /// not), from either protocol: a Rust client's `version`, `watch` and snapshots read it.
    version: Arc<AtomicU64>,
}

struct Shared {
    table: Mutex<Table>,
    stopping: AtomicBool,
    next_conn: AtomicU64,
    /// The server's address as a Python client writes it (`('host', port)` or a path).
    address: Value,
    limits: Limits,
    /// The open connections, ended when the server stops (their threads block in a receive).
    conns: Mutex<HashMap<ConnId, Arc<Connection>>>,
    /// Locks held by client processes whose connection to them ended: given back when the
    /// process is gone (the reaper looks), forgotten once released.
    orphans: Mutex<Vec<Orphan>>,
    /// Semaphore slots a dead client process took are given back ([`PythonServer::give_back_slots`]).
    slots: AtomicBool,
    /// Objects that the last sweep found unreachable: freed if the next finds them so too.
    candidates: Mutex<std::collections::HashSet<String>>,
    /// An object lost its last reference since the last sweep (with proxies stored somewhere).
    dirty: AtomicBool,
    /// Objects whose proxies just left in an answer (taken out of a container) and that nothing
    /// else may hold until the receiver takes its reference: kept until then, or a while.
    in_flight: Mutex<HashMap<String, std::time::Instant>>,
    /// Some client stored a proxy of this server inside an object: from then on an object
    /// nobody references may still be reachable from one, and is freed only once it is not
    /// (`Shared::sweep`).
    nested: AtomicBool,
    /// Rust clients watching versions (`Shared::watch`), and how they are woken.
    watchers: AtomicU64,
    moved: (Mutex<()>, std::sync::Condvar),
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("objects", &self.table().objects.len())
            .field("stopping", &self.stopping)
            .finish()
    }
}

/// The most a request may make the decoder hold (a Python client's values are small; a hostile
/// one gets a `#TRACEBACK`, not the server's memory).
const REQUEST_LIMITS: Limits = Limits {
    max_nodes: 4_000_000,
    max_depth: 200,
    max_marks: 10_000,
    max_stack: 1_000_000,
    max_memo: 4_000_000,
    max_bytes: 256 << 20,
};

/// How long an object whose proxy left in an answer is kept for its receiver to take a
/// reference (a Python client does at once; a slow one has this long).
const IN_FLIGHT: Duration = Duration::from_secs(30);

/// How often the server looks for client processes that died holding references.
const REAP_EVERY: Duration = Duration::from_millis(500);

impl PythonServer {
    /// A server on `listener`, which must check a key when it is on TCP (Python clients always
    /// send one: give the listener the manager's `authkey`).
    ///
    /// # Errors
    /// A TCP listener without a key ([`io::ErrorKind::InvalidInput`]).
    pub fn new(listener: Listener) -> io::Result<PythonServer> {
        if matches!(listener.address(), Address::Tcp(_)) && !listener.has_authkey() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a manager on TCP needs a key: bind its listener with one",
            ));
        }
        let address = python_address(listener.address());
        Ok(PythonServer {
            listener,
            shared: Arc::new(Shared::new(address)),
        })
    }

    /// Serves one object of type `kind` (`"Queue"`, `"dict"`, ... : the type ids of
    /// `SyncManager`) that every client's `typeid()` returns: Python's
    /// `BaseManager.register(typeid, callable=lambda: the_queue)` on the server, which clients
    /// declare with `register(typeid)` (and a proxy type, for a dict or a list) and call.
    ///
    /// ```
    /// use multiprocess::Listener;
    /// use multiprocess::manager::python::PythonServer;
    ///
    /// let listener = Listener::builder("127.0.0.1:0").authkey(b"key").bind()?;
    /// let server = PythonServer::new(listener)?.share("get_queue", "Queue")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// `kind` is not a type this server makes, or `typeid` is one of them
    /// ([`io::ErrorKind::InvalidInput`]).
    pub fn share(self, typeid: &str, kind: &str) -> io::Result<PythonServer> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let Some(&kind) = objects::CREATABLE.iter().find(|k| **k == kind) else {
            return Err(invalid(format!(
                "{kind:?} is not a type this server makes ({})",
                objects::CREATABLE.join(", ")
            )));
        };
        if objects::CREATABLE.contains(&typeid) || typeid.is_empty() {
            return Err(invalid(format!("{typeid:?} cannot name a shared object")));
        }
        let call = Call {
            conn: 0,
            args: &[],
            kwds: &[],
            process: None,
            gone: &|| false,
        };
        let obj = Referent::create(kind, &call, &|_| None)
            .map_err(|f| invalid(format!("{kind} could not be made: {f:?}")))?;
        let ident = self.shared.insert(kind, obj, None);
        let mut t = self.shared.table();
        if let Some(e) = t.objects.get_mut(&ident) {
            e.pinned = true;
        }
        t.shared.insert(typeid.to_string(), ident);
        drop(t);
        Ok(self)
    }

    /// Also gives back the semaphore slots a client process took and had not given back itself
    /// when it is gone (a Unix-socket client), as a Lock's are; off by default, as in CPython.
    ///
    /// A slot has no owner: with this on, a bounded buffer whose producer process takes slots
    /// and exits before the consumer gives them back sees them returned twice (the consumer's
    /// `release` then raises `ValueError` on a `BoundedSemaphore`). Turn it on where each
    /// process gives back what it takes (a pool of resources), so that one killed holding a
    /// slot does not shrink the pool forever.
    pub fn give_back_slots(self, on: bool) -> PythonServer {
        self.shared.slots.store(on, Ordering::Relaxed);
        self
    }

    /// Where clients connect.
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&self) -> PythonStopper {
        PythonStopper {
            shared: self.shared.clone(),
        }
    }

    /// Serves until stopped (a client's `shutdown`, or a [`PythonStopper`]). A client that fails
    /// its handshake is dropped and the others go on.
    ///
    /// # Errors
    /// The listener failed for a reason other than one client's.
    pub fn serve(self) -> io::Result<()> {
        let reaper = {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("pymanager-reaper".into())
                .spawn(move || shared.reap_loop())?
        };
        let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
        let result: io::Result<()> = loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                break Ok(());
            }
            match self.listener.accept_timeout(Duration::from_millis(100)) {
                Ok(conn) => {
                    let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    // A request is held whole before it is decoded: never more than the decoder
                    // would take (Unix sockets have no limit of their own).
                    let conn = Arc::new(conn.with_max_message(Some(REQUEST_LIMITS.max_bytes)));
                    lock(&self.shared.conns).insert(id, conn.clone());
                    let shared = self.shared.clone();
                    threads.retain(|t| !t.is_finished());
                    match std::thread::Builder::new()
                        .name(format!("pymanager-{id}"))
                        .spawn(move || shared.handle(conn, id))
                    {
                        Ok(t) => threads.push(t),
                        Err(e) => {
                            crate::trace::event!(
                                warn,
                                "python manager: no thread for a client: {e}"
                            );
                        }
                    }
                }
                Err(crate::AcceptError::Timeout) => {}
                Err(e) if e.is_per_client() => {
                    crate::trace::event!(info, "python manager: a client was refused: {e}");
                }
                Err(e) => {
                    // Out of descriptors or the like: this client is refused, the others are
                    // served, and accepting resumes a little later.
                    crate::trace::event!(warn, "python manager: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        self.shared.stopping.store(true, Ordering::Release);
        // Threads waiting on a client's next request wake to end-of-file; blocked calls give up
        // within `objects::LOOK`.
        drop(self.listener);
        for conn in lock(&self.shared.conns).values() {
            conn.shutdown();
        }
        for t in threads {
            let _ = t.join();
        }
        let _ = reaper.join();
        result
    }
}

/// Stores a new object with one reference (the creator's) in `t`.
fn insert_in(
    t: &mut Table,
    typeid: &'static str,
    obj: Referent,
    process: Option<(i32, u64)>,
) -> String {
    t.next += 1;
    let ident = format!("{:x}", t.next);
    let mut by_process = HashMap::new();
    if let Some(p) = process {
        by_process.insert(p, 1);
    }
    t.objects.insert(
        ident.clone(),
        Entry {
            obj: Arc::new(obj),
            typeid,
            refs: 1,
            by_process,
            pinned: false,
            holds_proxies: false,
            version: Arc::new(AtomicU64::new(0)),
        },
    );
    ident
}

/// `Listener.address` as a Python client has it.
fn python_address(a: &Address) -> Value {
    match a {
        Address::Tcp(sa) => Value::Tuple(vec![
            Value::Str(sa.ip().to_string()),
            Value::Int(i64::from(sa.port())),
        ]),
        Address::Unix(p) => Value::Str(p.to_string_lossy().into_owned()),
        Address::Abstract(name) => Value::Str(format!("\0{}", String::from_utf8_lossy(name))),
    }
}

/// A request as the client sent it: `(ident, name, args, kwds)`.
struct Request {
    ident: Value,
    name: String,
    args: Vec<Value>,
    kwds: Vec<(String, Value)>,
}

fn parse(v: Value) -> Result<Request, String> {
    let Value::Tuple(mut parts) = v else {
        return Err("a request is a tuple (ident, method, args, kwds)".into());
    };
    if parts.len() != 4 {
        return Err(format!("a request has 4 items, not {}", parts.len()));
    }
    let kwds = parts.pop().expect("4");
    let args = parts.pop().expect("3");
    let name = parts.pop().expect("2");
    let ident = parts.pop().expect("1");
    let Value::Str(name) = name else {
        return Err("a method name is a str".into());
    };
    let args = match args {
        Value::Tuple(a) | Value::List(a) => a,
        _ => return Err("arguments are a tuple".into()),
    };
    let kwds = match kwds {
        Value::Dict(e) => e
            .into_iter()
            .map(|(k, v)| match k {
                Value::Str(k) => Ok((k, v)),
                _ => Err("keyword names are str".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Value::None => Vec::new(),
        _ => return Err("keywords are a dict".into()),
    };
    Ok(Request {
        ident,
        name,
        args,
        kwds,
    })
}

fn reply(kind: &str, v: Value) -> Value {
    Value::Tuple(vec![Value::Str(kind.into()), v])
}

fn traceback(text: &str) -> Value {
    reply(
        "#TRACEBACK",
        Value::Str(format!(
            "Traceback (most recent call last):\n  (in the multiprocess manager server, in Rust)\n{text}\n"
        )),
    )
}

fn fail_reply(f: Fail) -> Value {
    match f {
        Fail::Raise(e) => reply("#ERROR", e),
        Fail::Traceback(t) => traceback(&t),
    }
}

/// A `Token(typeid, address, id)` as pickle carries it.
fn token(typeid: &str, address: &Value, id: &str) -> Value {
    value::built(
        "multiprocessing.managers",
        "Token",
        Value::Tuple(vec![
            Value::Str(typeid.into()),
            address.clone(),
            Value::Str(id.into()),
        ]),
    )
}

/// The object id in a `Token`, or in a proxy a client sent (`RebuildProxy(func, token, ...)`).
fn token_id(v: &Value) -> Option<String> {
    let Value::Object(o) = v else { return None };
    match &o.callable {
        Value::Global { name, .. } if name == "Token" => match o.state.first() {
            Some(Value::Tuple(t)) if t.len() == 3 => match &t[2] {
                Value::Str(id) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        },
        Value::Global { name, .. } if name == "RebuildProxy" => match &o.args {
            Value::Tuple(a) if a.len() >= 2 => token_id(&a[1]),
            _ => None,
        },
        _ => None,
    }
}

fn ident_of(v: &Value) -> Result<String, Fail> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        other => Err(Fail::Traceback(format!("KeyError: {}", repr(other)))),
    }
}

impl Shared {
    /// A server's state with nothing in it; `address` as its clients write it.
    fn new(address: Value) -> Shared {
        Shared {
            table: Mutex::new(Table::default()),
            stopping: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            address,
            limits: REQUEST_LIMITS,
            nested: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
            candidates: Mutex::new(std::collections::HashSet::new()),
            dirty: AtomicBool::new(false),
            slots: AtomicBool::new(false),
            watchers: AtomicU64::new(0),
            moved: (Mutex::new(()), std::sync::Condvar::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn recv(&self, conn: &Connection) -> Option<Result<Value, String>> {
        let bytes = conn.recv_bytes().ok()?;
        Some(self.unpickle(&bytes))
    }

    fn unpickle(&self, bytes: &[u8]) -> Result<Value, String> {
        pickle::decode_with(bytes, &self.limits)
            .map_err(|e| format!("the request could not be read: {e}"))
    }

    /// Version `v` moved: Rust clients watching are woken.
    fn changed(&self, v: &AtomicU64) {
        // SeqCst with the watcher's count-then-look (`watch`): one of the two sees the other.
        v.fetch_add(1, Ordering::SeqCst);
        if self.watchers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&self.moved.0);
            self.moved.1.notify_all();
        }
    }

    /// Waits until version `v` is past `since`, at most `timeout_us` (or until `gone`): the
    /// version then, or `None` at the deadline.
    fn watch(
        &self,
        v: &AtomicU64,
        since: u64,
        timeout_us: Option<u64>,
        gone: &dyn Fn() -> bool,
    ) -> Option<u64> {
        let deadline = timeout_us
            .and_then(|us| std::time::Instant::now().checked_add(Duration::from_micros(us)));
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let mut g = lock(&self.moved.0);
        let out = loop {
            let now = v.load(Ordering::SeqCst);
            if now > since {
                break Some(now);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()),
                None => objects::LOOK,
            };
            if left.is_zero() || gone() {
                break None;
            }
            g = self
                .moved
                .1
                .wait_timeout(g, left.min(objects::LOOK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(g);
        self.watchers.fetch_sub(1, Ordering::AcqRel);
        out
    }

    fn send(&self, conn: &Connection, v: &Value) -> bool {
        let bytes = match pickle::encode(v) {
            Ok(b) => b,
            Err(e) => pickle::encode(&reply(
                "#UNSERIALIZABLE",
                Value::Str(format!("the reply could not be pickled: {e}")),
            ))
            .unwrap_or_default(),
        };
        conn.send_bytes(&bytes).is_ok()
    }

    /// A new connection: one control request, or, after `accept_connection`, a proxy's calls.
    fn handle(self: &Arc<Self>, conn: Arc<Connection>, id: ConnId) {
        // A server stopping between the accept and here: the connection is not served. A panic
        // of this server's own ends the connection (the client sees it close), never leaves it
        // open with nobody reading.
        if !self.stopping() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handle_one(&conn, id)
            }));
        }
        lock(&self.conns).remove(&id);
        conn.shutdown();
    }

    fn handle_one(self: &Arc<Self>, conn: &Arc<Connection>, id: ConnId) {
        let process = crate::sys::socket_peer(std::os::fd::AsFd::as_fd(conn))
            .ok()
            .map(|(pid, _)| pid)
            .filter(|&pid| pid > 0)
            .and_then(|pid| crate::sys::process_started(pid).map(|t| (pid, t)));
        let Ok(first) = conn.recv_bytes() else {
            return;
        };
        // A Rust client's `Hello`: the crate's own protocol from here on (see `native`).
        if first == crate::manager::proto::hello() {
            self.serve_native(conn, id, process);
            return;
        }
        let answer = match self.unpickle(&first).and_then(parse) {
            Err(e) => traceback(&e),
            Ok(r) if r.name == "accept_connection" => {
                if self.send(conn, &reply("#RETURN", Value::None)) {
                    self.serve_client(conn, id, process);
                }
                return;
            }
            Ok(r) => match self.control(&r, id, process) {
                Ok(v) => reply("#RETURN", v),
                Err(f) => fail_reply(f),
            },
        };
        self.send(conn, &answer);
    }

    /// The control verbs of CPython's `Server.public`.
    fn control(
        self: &Arc<Self>,
        r: &Request,
        id: ConnId,
        process: Option<(i32, u64)>,
    ) -> Result<Value, Fail> {
        match r.name.as_str() {
            "dummy" => Ok(Value::None),
            "create" => {
                let Some(Value::Str(typeid)) = r.args.first() else {
                    return Err(Fail::Traceback("TypeError: create() needs a typeid".into()));
                };
                if let Some(found) = self.take_shared(typeid, process) {
                    return Ok(found);
                }
                let carries = self.note_nested(r);
                let Some(&typeid) = objects::CREATABLE.iter().find(|t| **t == typeid) else {
                    return Err(Fail::Traceback(format!(
                        "KeyError: {} (this server makes {})",
                        repr(&Value::Str(typeid.clone())),
                        objects::CREATABLE.join(", ")
                    )));
                };
                let call = Call {
                    conn: id,
                    args: &r.args[1..],
                    kwds: &r.kwds,
                    process,
                    gone: &|| false,
                };
                // As CPython's `create`: what the constructor raises is the request's failure
                // (a `RemoteError` for the client), not an exception of a method.
                let obj =
                    Referent::create(typeid, &call, &|v| self.lookup(v)).map_err(|f| match f {
                        Fail::Raise(e) => Fail::Traceback(exception_text(&e)),
                        other => other,
                    })?;
                let ident = self.insert(typeid, obj, process);
                if carries {
                    self.may_hold_proxies(&ident);
                }
                Ok(Value::Tuple(vec![Value::Str(ident), exposed_value(typeid)]))
            }
            "incref" => {
                let ident = ident_of(r.args.first().unwrap_or(&Value::None))?;
                let mut t = self.table();
                let Some(e) = t.objects.get_mut(&ident) else {
                    return Err(Fail::Traceback(format!(
                        "KeyError: {}",
                        repr(&Value::Str(ident))
                    )));
                };
                e.refs += 1;
                if let Some(p) = process {
                    *e.by_process.entry(p).or_insert(0) += 1;
                }
                Ok(Value::None)
            }
            "decref" => {
                let ident = ident_of(r.args.first().unwrap_or(&Value::None))?;
                self.decref(&ident, process).map(|()| Value::None)
            }
            "number_of_objects" => Ok(Value::Int(self.table().objects.len() as i64)),
            "debug_info" => {
                let t = self.table();
                let mut ids: Vec<&String> = t.objects.keys().collect();
                ids.sort();
                let lines: Vec<String> = ids
                    .into_iter()
                    .map(|i| {
                        let e = &t.objects[i];
                        let text: String = e.obj.repr().chars().take(75).collect();
                        format!("  {i}:       refcount={}\n    {text}", e.refs)
                    })
                    .collect();
                Ok(Value::Str(lines.join("\n")))
            }
            "get_methods" => {
                let id = r.args.first().and_then(token_id).ok_or_else(|| {
                    Fail::Traceback("TypeError: get_methods() needs a Token".into())
                })?;
                let t = self.table();
                let e = t.objects.get(&id).ok_or_else(|| {
                    Fail::Traceback(format!("KeyError: {}", repr(&Value::Str(id.clone()))))
                })?;
                Ok(exposed_value(e.typeid))
            }
            "shutdown" => {
                self.stopping.store(true, Ordering::Release);
                Ok(Value::None)
            }
            other => Err(Fail::Traceback(format!(
                "AssertionError: {} unrecognized",
                repr(&Value::Str(other.into()))
            ))),
        }
    }

    /// Stores a new object with one reference (the creator's), as CPython's `create`.
    fn insert(&self, typeid: &'static str, obj: Referent, process: Option<(i32, u64)>) -> String {
        insert_in(&mut self.table(), typeid, obj, process)
    }

    /// A shared object's `(ident, exposed)`, with a reference taken for the caller, if
    /// `typeid` names one.
    fn take_shared(&self, typeid: &str, process: Option<(i32, u64)>) -> Option<Value> {
        let mut t = self.table();
        let ident = t.shared.get(typeid)?.clone();
        let e = t.objects.get_mut(&ident)?;
        e.refs += 1;
        if let Some(p) = process {
            *e.by_process.entry(p).or_insert(0) += 1;
        }
        Some(Value::Tuple(vec![
            Value::Str(ident),
            exposed_value(e.typeid),
        ]))
    }

    /// Keeps the objects whose proxies `v` carries until the receiver has taken its reference
    /// (it increfs at once) or `IN_FLIGHT` has passed.
    fn mark_in_flight(&self, v: &Value) {
        let mut ids = Vec::new();
        tokens_in(v, &mut ids, 0);
        if ids.is_empty() {
            return;
        }
        let until = std::time::Instant::now() + IN_FLIGHT;
        let mut f = lock(&self.in_flight);
        for id in ids {
            f.insert(id, until);
        }
    }

    /// Notes that a request carries a proxy of this server (to be stored, maybe).
    /// Whether the request carries proxies of this server (to store, maybe), noting it.
    fn note_nested(&self, r: &Request) -> bool {
        let carries = r.args.iter().any(holds_token) || r.kwds.iter().any(|(_, v)| holds_token(v));
        if carries {
            self.nested.store(true, Ordering::Relaxed);
        }
        carries
    }

    /// Marks object `ident` as one that may hold proxies: the sweep looks inside it.
    fn may_hold_proxies(&self, ident: &str) {
        if let Some(e) = self.table().objects.get_mut(ident) {
            e.holds_proxies = true;
        }
    }

    /// Frees the objects nobody references that no referenced object holds a proxy of (and so
    /// on, through proxies in proxies): a mark from the referenced ones through the stored
    /// values. An object is freed only when two sweeps in a row (the reaper's, half a second
    /// apart) found it so: a proxy taken out of a container is in neither the container nor
    /// the in-flight list for a moment, and the second look finds it in flight (or referenced
    /// by its receiver).
    fn sweep(&self) {
        let now = std::time::Instant::now();
        let in_flight: Vec<String> = {
            let mut f = lock(&self.in_flight);
            f.retain(|_, until| *until > now);
            f.keys().cloned().collect()
        };
        // The objects and their roots, taken under the table's lock; their contents visited
        // outside it (an object busy in a long call holds up the sweep, not the server).
        let (objects, mut todo): (HashMap<String, Arc<Referent>>, Vec<String>) = {
            let t = self.table();
            let objects = t
                .objects
                .iter()
                .filter(|(_, e)| e.holds_proxies)
                .map(|(k, e)| (k.clone(), e.obj.clone()))
                .collect();
            let mut roots: Vec<String> = t
                .objects
                .iter()
                .filter(|(_, e)| e.refs > 0 || e.pinned)
                .map(|(k, _)| k.clone())
                .collect();
            roots.extend(in_flight.into_iter().filter(|k| t.objects.contains_key(k)));
            (objects, roots)
        };
        let mut marked: std::collections::HashSet<String> = todo.iter().cloned().collect();
        while let Some(id) = todo.pop() {
            let Some(obj) = objects.get(&id) else {
                continue;
            };
            let mut found = Vec::new();
            obj.visit(&mut |v| tokens_in(v, &mut found, 0));
            for f in found {
                if marked.insert(f.clone()) {
                    todo.push(f);
                }
            }
        }
        drop(objects);
        let freed: Vec<Entry> = {
            let mut t = self.table();
            let in_flight = lock(&self.in_flight);
            // Unmarked, still unreferenced (an incref may have come meanwhile) and not in flight.
            let unreachable: std::collections::HashSet<String> = t
                .objects
                .iter()
                .filter(|(k, e)| {
                    !marked.contains(*k) && e.refs == 0 && !e.pinned && !in_flight.contains_key(*k)
                })
                .map(|(k, _)| k.clone())
                .collect();
            drop(in_flight);
            let mut candidates = lock(&self.candidates);
            let gone: Vec<String> = unreachable
                .iter()
                .filter(|k| candidates.contains(*k))
                .cloned()
                .collect();
            *candidates = unreachable;
            for k in &gone {
                candidates.remove(k);
            }
            gone.iter().filter_map(|k| t.objects.remove(k)).collect()
        };
        drop(freed);
    }

    fn decref(&self, ident: &str, process: Option<(i32, u64)>) -> Result<(), Fail> {
        let freed = {
            let mut t = self.table();
            let Some(e) = t.objects.get_mut(ident) else {
                return Err(Fail::Traceback(format!(
                    "KeyError: {}",
                    repr(&Value::Str(ident.into()))
                )));
            };
            e.refs = e.refs.saturating_sub(1);
            if let Some(p) = process
                && let Some(n) = e.by_process.get_mut(&p)
            {
                *n -= 1;
                if *n == 0 {
                    e.by_process.remove(&p);
                }
            }
            let unreferenced = e.refs == 0 && !e.pinned;
            if unreferenced && !self.nested.load(Ordering::Relaxed) {
                t.objects.remove(ident)
            } else {
                if unreferenced {
                    // Maybe still held inside another object: the reaper's sweeps tell.
                    self.dirty.store(true, Ordering::Relaxed);
                }
                None
            }
        };
        // Dropped outside the table's lock.
        drop(freed);
        Ok(())
    }

    /// An object of this server a client names by a proxy or a token.
    fn lookup(&self, v: &Value) -> Option<Arc<Referent>> {
        let id = token_id(v)?;
        self.table().objects.get(&id).map(|e| e.obj.clone())
    }

    /// A proxy's connection: method calls until the client hangs up or the server stops.
    fn serve_client(self: &Arc<Self>, conn: &Connection, id: ConnId, process: Option<(i32, u64)>) {
        // The locks this connection took and may still hold.
        let mut holds: Vec<Arc<Referent>> = Vec::new();
        let gone = || self.stopping() || conn.poll(Duration::ZERO).unwrap_or(true);
        while !self.stopping() {
            let Some(request) = self.recv(conn) else {
                break;
            };
            let answer = match request.and_then(parse) {
                Err(e) => traceback(&e),
                // A fault of this server's own (a panic) fails the request, not the connection:
                // the objects' locks recover from poisoning, and the client gets an answer.
                Ok(r) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.method(&r, id, process, &gone, &mut holds)
                }))
                .unwrap_or_else(|_| traceback("SystemError: the server failed this request")),
            };
            if !self.send(conn, &answer) {
                break;
            }
        }
        for h in holds {
            h.connection_ended(id);
            // A Lock still held by this client's process is given back once that process is
            // gone (it may still be exiting: the reaper looks again).
            if let Some(p) = process
                && h.held_by(p)
            {
                if crate::sys::process_started(p.0) == Some(p.1) {
                    lock(&self.orphans).push((p, h));
                } else {
                    h.process_died(p, self.slots.load(Ordering::Relaxed));
                }
            }
        }
    }

    fn method(
        self: &Arc<Self>,
        r: &Request,
        id: ConnId,
        process: Option<(i32, u64)>,
        gone: &dyn Fn() -> bool,
        holds: &mut Vec<Arc<Referent>>,
    ) -> Value {
        let ident = match ident_of(&r.ident) {
            Ok(i) => i,
            Err(f) => return fail_reply(f),
        };
        let Some((obj, typeid, version)) = self
            .table()
            .objects
            .get(&ident)
            .map(|e| (e.obj.clone(), e.typeid, e.version.clone()))
        else {
            return traceback(&format!("KeyError: {}", repr(&Value::Str(ident))));
        };
        match r.name.as_str() {
            "#GETVALUE" => {
                return match obj.getvalue() {
                    Ok(v) => reply("#RETURN", v),
                    Err(f) => fail_reply(f),
                };
            }
            "__repr__" | "__str__" if !objects::exposed(typeid).contains(&r.name.as_str()) => {
                return reply("#RETURN", Value::Str(obj.repr()));
            }
            name if !objects::exposed(typeid).contains(&name) => {
                return traceback(&format!(
                    "AttributeError: method {} of {typeid} object is not in exposed={}",
                    repr(&Value::Str(name.into())),
                    repr(&exposed_value(typeid))
                ));
            }
            _ => {}
        }
        let call = Call {
            conn: id,
            args: &r.args,
            kwds: &r.kwds,
            process,
            gone,
        };
        if self.note_nested(r) {
            self.may_hold_proxies(&ident);
        }
        if obj.takes(&r.name) && !holds.iter().any(|h| Arc::ptr_eq(h, &obj)) {
            holds.push(obj.clone());
        }
        let outcome = obj.call(&r.name, &call);
        if !objects::reads_only(&obj, &r.name) {
            self.changed(&version);
        }
        match outcome {
            Ok(Outcome::Return(v)) => {
                if self.nested.load(Ordering::Relaxed) {
                    self.mark_in_flight(&v);
                }
                reply("#RETURN", v)
            }
            Ok(Outcome::Proxy(typeid, made)) => {
                let rident = self.insert(typeid, made, process);
                reply(
                    "#PROXY",
                    Value::Tuple(vec![
                        exposed_value(typeid),
                        token(typeid, &self.address, &rident),
                    ]),
                )
            }
            Err(f) => fail_reply(f),
        }
    }

    /// Drops the references of client processes that are gone.
    fn reap_loop(self: Arc<Self>) {
        while !self.stopping() {
            std::thread::sleep(REAP_EVERY);
            // Locks of processes that have since gone; those released meanwhile are forgotten.
            let dead_holders: Vec<((i32, u64), Arc<Referent>)> = {
                let mut o = lock(&self.orphans);
                let (dead, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *o)
                    .into_iter()
                    .filter(|(p, h)| h.held_by(*p))
                    .partition(|(p, _)| crate::sys::process_started(p.0) != Some(p.1));
                *o = live;
                dead
            };
            for (p, h) in dead_holders {
                h.process_died(p, self.slots.load(Ordering::Relaxed));
            }
            let processes: Vec<(i32, u64)> = {
                let t = self.table();
                let mut p: Vec<(i32, u64)> = t
                    .objects
                    .values()
                    .flat_map(|e| e.by_process.keys().copied())
                    .collect();
                p.sort_unstable();
                p.dedup();
                p
            };
            let dead: Vec<(i32, u64)> = processes
                .into_iter()
                .filter(|&(pid, started)| crate::sys::process_started(pid) != Some(started))
                .collect();
            let before = {
                let mut t = self.table();
                for e in t.objects.values_mut() {
                    for p in &dead {
                        if let Some(n) = e.by_process.remove(p) {
                            e.refs = e.refs.saturating_sub(n);
                        }
                    }
                }
                t.objects.len()
            };
            if self.nested.load(Ordering::Relaxed) {
                // Only after something lost its last reference, or to confirm what the last
                // sweep found (a sweep visits what containers hold: not every tick for nothing).
                let pending = !lock(&self.candidates).is_empty();
                if self.dirty.swap(false, Ordering::Relaxed) || pending || !dead.is_empty() {
                    self.sweep();
                }
            } else if !dead.is_empty() {
                let freed: Vec<Entry> = {
                    let mut t = self.table();
                    let gone: Vec<String> = t
                        .objects
                        .iter()
                        .filter(|(_, e)| e.refs == 0 && !e.pinned)
                        .map(|(k, _)| k.clone())
                        .collect();
                    gone.iter().filter_map(|k| t.objects.remove(k)).collect()
                };
                drop(freed);
            }
            let after = self.table().objects.len();
            if after < before && !dead.is_empty() {
                crate::trace::event!(
                    info,
                    "python manager: freed {} objects after {} clients died",
                    before - after,
                    dead.len()
                );
            }
        }
    }
}

/// Whether `v` holds a proxy or a token anywhere inside.
fn holds_token(v: &Value) -> bool {
    let mut found = Vec::new();
    tokens_in(v, &mut found, 0);
    !found.is_empty()
}

/// The object ids of the proxies and tokens inside `v` (to a bounded depth: what is deeper
/// was refused by the request decoder anyway).
fn tokens_in(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 256 {
        return;
    }
    if let Some(id) = token_id(v) {
        out.push(id);
        return;
    }
    match v {
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => {
            x.iter().for_each(|i| tokens_in(i, out, depth + 1));
        }
        Value::Dict(e) => e.iter().for_each(|(k, i)| {
            tokens_in(k, out, depth + 1);
            tokens_in(i, out, depth + 1);
        }),
        Value::Object(o) => {
            tokens_in(&o.args, out, depth + 1);
            o.state.iter().for_each(|i| tokens_in(i, out, depth + 1));
            o.items.iter().for_each(|i| tokens_in(i, out, depth + 1));
            o.entries.iter().for_each(|(k, i)| {
                tokens_in(k, out, depth + 1);
                tokens_in(i, out, depth + 1);
            });
        }
        _ => {}
    }
}

/// `Name: message` of an exception value, for a traceback's last line.
fn exception_text(e: &Value) -> String {
    match e {
        Value::Object(o) => {
            let name = match &o.callable {
                Value::Global { name, .. } => name.clone(),
                other => repr(other),
            };
            match &o.args {
                Value::Tuple(a) if a.len() == 1 => match &a[0] {
                    Value::Str(m) => format!("{name}: {m}"),
                    other => format!("{name}: {}", repr(other)),
                },
                Value::Tuple(a) if a.is_empty() => name,
                other => format!("{name}{}", repr(other)),
            }
        }
        other => repr(other),
    }
}

fn exposed_value(typeid: &str) -> Value {
    Value::Tuple(
        objects::exposed(typeid)
            .iter()
            .map(|m| Value::Str((*m).into()))
            .collect(),
    )
}

/// Runs the Python-protocol requests encoded in `data` (chunks of a 2-byte little-endian length
/// and one pickled request) against a fresh server state, as one client whose connection never
/// waits (a blocking call gives up at once); how many it answered. Every answer must pickle.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use native::fuzz_requests as fuzz_native_requests;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_requests(data: &[u8]) -> usize {
    let shared = Arc::new(Shared::new(Value::Str("/fuzz".into())));
    let mut holds = Vec::new();
    let mut answered = 0;
    for chunk in crate::manager::proto::fuzz_chunks(data) {
        let answer = match pickle::decode_with(chunk, &shared.limits)
            .map_err(|e| e.to_string())
            .and_then(parse)
        {
            Err(e) => traceback(&e),
            Ok(r) if r.ident == Value::None => match r.name.as_str() {
                "accept_connection" | "shutdown" => continue,
                _ => match shared.control(&r, 1, None) {
                    Ok(v) => reply("#RETURN", v),
                    Err(f) => fail_reply(f),
                },
            },
            Ok(r) => shared.method(&r, 1, None, &|| true, &mut holds),
        };
        assert!(
            pickle::encode(&answer).is_ok(),
            "an answer that does not pickle"
        );
        answered += 1;
    }
    for h in holds {
        h.connection_ended(1);
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    // Through the public fuzzing entry, as the fuzz target calls it.
    use crate::queue::fuzzing::python_manager_requests as fuzz_requests;

    fn request(ident: Value, name: &str, args: Vec<Value>) -> Vec<u8> {
        let bytes = pickle::encode(&Value::Tuple(vec![
            ident,
            Value::Str(name.into()),
            Value::Tuple(args),
            Value::Dict(vec![]),
        ]))
        .unwrap();
        let mut out = (bytes.len() as u16).to_le_bytes().to_vec();
        out.extend(bytes);
        out
    }

    /// A session of well-formed requests in the fuzz entry's format (the corpus's seed: with
    /// `MP_WRITE_FUZZ_SEEDS=dir`, it is written there).
    fn session() -> Vec<u8> {
        let s = |t: &str| Value::Str(t.into());
        let mut out = Vec::new();
        for typeid in objects::CREATABLE {
            let args = match *typeid {
                "Value" => vec![s(typeid), s("i"), Value::Int(1)],
                "Array" => vec![s(typeid), s("i"), Value::List(vec![Value::Int(1)])],
                "Barrier" => vec![s(typeid), Value::Int(2)],
                _ => vec![s(typeid)],
            };
            out.extend(request(Value::None, "create", args));
        }
        // The ids are 1, 2, ... in creation order: a call on each.
        for (i, typeid) in objects::CREATABLE.iter().enumerate() {
            let ident = s(&format!("{:x}", i + 1));
            for method in objects::exposed(typeid) {
                out.extend(request(
                    ident.clone(),
                    method,
                    vec![Value::Int(0), Value::Int(1)],
                ));
            }
        }
        out.extend(request(Value::None, "number_of_objects", vec![]));
        out.extend(request(Value::None, "debug_info", vec![]));
        out.extend(request(Value::None, "decref", vec![s("1")]));
        out
    }

    #[test]
    fn the_fuzz_entry_answers_a_session_and_its_mutations() {
        let seed = session();
        if let Some(dir) = std::env::var_os("MP_WRITE_FUZZ_SEEDS") {
            std::fs::write(
                std::path::Path::new(&dir).join("python_manager_session"),
                &seed,
            )
            .unwrap();
        }
        assert!(fuzz_requests(&seed) > 80);
        // Bytes flipped at spread positions: answered or refused, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let rounds: usize = std::env::var("MP_FUZZ_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(200);
        for _ in 0..rounds {
            let mut m = seed.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % m.len();
                m[at] ^= (x >> 32) as u8 | 1;
            }
            fuzz_requests(&m);
        }
    }
}
