//! Rust clients of the server for Python clients: the crate's own manager protocol
//! ([`proto`](crate::manager::proto)), answered from the objects the Python clients use.
//!
//! # One store, two protocols
//! A Rust [`Manager`](crate::manager::Manager) opens every connection with `Hello`, whose bytes
//! are fixed and start with a zero byte (a pickle starts with `0x80`), so this server tells a Rust
//! client from a Python one by its first message. It answers that it stores pickles
//! ([`Values::Pickle`]), and from then on the Rust proxies pickle what they store through serde
//! (structs and maps become dicts, sequences lists, integers ints: `pickle::to_vec`), which is
//! what a Python client reads back. The values stay Python values here, with Python's semantics,
//! so a Rust `Dict<i64, _>` and a Python client share the key `1` (and `1.0`, and `True`).
//!
//! Each request is answered by the very methods the Python clients call (`Referent::call`, by
//! Python method name), so both kinds of client see one behaviour, exceptions included; the few
//! calls a Python proxy has no method for (a compare-and-set, a join with a timeout, a namespace's
//! length) are methods of their own that Python clients cannot reach (they are not exposed).
//!
//! # Threads, holds and locks
//! One Rust connection carries every thread of its process, so a call that may wait (a lock, a
//! queue's get, a barrier) runs on a thread of its own, and the connection goes on; answers go
//! out as they are ready, each under the connection's send lock. Each client thread's token names
//! the owner of the locks it takes (one server-side owner per thread). The connection's holds on
//! objects are its own (counted per connection, not per process: a Rust process has one), and
//! when it ends they are dropped and the locks its threads still hold are given back, as the
//! Rust manager does when its client dies.
//!
//! Not served here: types of your own ([`Serve`](crate::manager::Serve)), transactions (atomic
//! batches) and `status`; each is refused with [`RemoteError::Unsupported`].

use super::objects::{self, ConnId, Outcome, Referent, lock};
use super::value::{self, Fail};
use super::{ProcessId, Shared, exception_text};
use crate::Connection;
use crate::manager::RemoteError;
use crate::manager::proto::{
    Bytes, Call, Expect, Kind, ObjectId, Op, Reply, Request, Response, Values,
};
use crate::pickle::{self, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Answer = Result<Reply, RemoteError>;

/// One Rust client's connection.
struct Client {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    process: Option<ProcessId>,
    /// Holds on objects taken through this connection, by object.
    holds: Mutex<HashMap<String, u64>>,
    /// The server-side owner of each client thread's locks, by the thread's token.
    threads: Mutex<HashMap<u64, ConnId>>,
    /// Locks, conditions and semaphores taken through this connection: given back when it
    /// ends (a semaphore's slots when its process is gone, and only if the server says so).
    locks: Mutex<Vec<Arc<Referent>>>,
    /// The connection ended, or the server stops: calls waiting give up.
    gone: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Shared {
    /// Serves a Rust client whose `Hello` has just arrived, until it hangs up or the server
    /// stops.
    pub(super) fn serve_native(
        self: &Arc<Self>,
        conn: &Arc<Connection>,
        id: ConnId,
        process: Option<ProcessId>,
    ) {
        let ended = Arc::new(AtomicBool::new(false));
        let gone = {
            let (ended, shared) = (ended.clone(), self.clone());
            Box::new(move || ended.load(Ordering::Acquire) || shared.stopping())
        };
        let client = Arc::new(Client::new(self.clone(), conn.clone(), process, id, gone));
        client.answer(0, Ok(Reply::Values(Values::Pickle)));
        let mut waiting: Vec<std::thread::JoinHandle<()>> = Vec::new();
        while !self.stopping() {
            let Ok(bytes) = conn.recv_bytes() else {
                break;
            };
            // A request that is not one ends this connection (as on the Rust server).
            let request = match crate::codec::decode::<Request>(&bytes, Vec::new()) {
                Ok(r) => r,
                Err(e) => {
                    client.answer(
                        0,
                        Err(RemoteError::Protocol(format!(
                            "a request that does not decode: {e}"
                        ))),
                    );
                    break;
                }
            };
            if matches!(request.op, Op::Shutdown) {
                self.stopping.store(true, Ordering::Release);
            }
            if may_wait(&request.op) {
                waiting.retain(|t| !t.is_finished());
                if waiting.len() >= MAX_WAITING {
                    client.answer(
                        request.id,
                        Err(RemoteError::Unsupported(format!(
                            "{MAX_WAITING} calls of this client wait already"
                        ))),
                    );
                    continue;
                }
                let c = client.clone();
                let rid = request.id;
                let spawned = std::thread::Builder::new()
                    .name(format!("pymanager-{id}-call"))
                    .spawn(move || c.run(request));
                match spawned {
                    Ok(t) => waiting.push(t),
                    Err(e) => client.answer(
                        rid,
                        Err(RemoteError::Unsupported(format!(
                            "the server has no thread for a call that waits: {e}"
                        ))),
                    ),
                }
            } else {
                client.run(request);
            }
        }
        ended.store(true, Ordering::Release);
        // Waiting calls give up within `objects::LOOK` of seeing the connection end.
        for t in waiting {
            let _ = t.join();
        }
        client.end();
    }
}

/// The most calls of one Rust client that may wait at once (each has a thread).
const MAX_WAITING: usize = 256;

/// The most client threads of one connection that may take locks (past that, an acquire by a
/// new thread fails: see `Client::owner`).
const MAX_THREADS: usize = 4096;

/// The owner of nothing: the calls of a client thread that never took a lock.
const NOBODY: ConnId = ConnId::MAX;

/// Whether a request may wait on other clients (and so runs on a thread of its own).
fn may_wait(op: &Op) -> bool {
    match op {
        Op::Call { call, .. } => waits(call),
        _ => false,
    }
}

/// Whether a call may wait on other clients.
fn waits(c: &Call) -> bool {
    {
        matches!(
            c,
            Call::LockAcquire { .. }
                | Call::CondWait { .. }
                | Call::SemAcquire { .. }
                | Call::QueuePut { .. }
                | Call::QueueGet { .. }
                | Call::QueueJoin { .. }
                | Call::BarrierWait { .. }
                | Call::EventWait { .. }
                | Call::Watch { .. }
        )
    }
}

/// The server's name for object `id` (the hex of its number, as it names them to Python).
fn ident(id: ObjectId) -> String {
    format!("{id:x}")
}

fn object_id(ident: &str) -> ObjectId {
    u64::from_str_radix(ident, 16).unwrap_or(u64::MAX)
}

/// The type id a Rust client's kind is made as.
fn typeid(kind: Kind) -> Result<&'static str, RemoteError> {
    Ok(match kind {
        Kind::Dict => "dict",
        Kind::List => "list",
        Kind::Namespace => "Namespace",
        Kind::Value => "Value",
        Kind::Array => "Array",
        // A Rust queue is joinable.
        Kind::Queue { .. } => "JoinableQueue",
        Kind::Lock { reentrant: false } => "Lock",
        Kind::Lock { reentrant: true } => "RLock",
        Kind::Semaphore { bounded: false, .. } => "Semaphore",
        Kind::Semaphore { bounded: true, .. } => "BoundedSemaphore",
        Kind::Event => "Event",
        Kind::Condition => "Condition",
        Kind::Barrier { .. } => "Barrier",
        Kind::Served => return Err(served_here()),
    })
}

fn served_here() -> RemoteError {
    RemoteError::Unsupported(
        "types of your own are served by the Rust manager (manager::Server), not by the server \
         for Python clients"
            .into(),
    )
}

/// Whether a proxy of `expect` may stand for an object of `kind`.
fn fits(expect: &Expect, kind: Kind) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Dict => kind == Kind::Dict,
        Expect::List => kind == Kind::List,
        Expect::Namespace => kind == Kind::Namespace,
        Expect::Value => kind == Kind::Value,
        Expect::Lock => matches!(kind, Kind::Lock { .. } | Kind::Condition),
        Expect::Semaphore => matches!(kind, Kind::Semaphore { .. }),
        Expect::Event => kind == Kind::Event,
        Expect::Condition => kind == Kind::Condition,
        Expect::Array => kind == Kind::Array,
        Expect::Barrier => matches!(kind, Kind::Barrier { .. }),
        Expect::Queue => matches!(kind, Kind::Queue { .. }),
        Expect::Served(_) => false,
    }
}

/// A key or value a Rust client sent, as the Python value it pickled.
fn value_of(shared: &Shared, b: &[u8]) -> Result<Value, RemoteError> {
    pickle::decode_with(b, &shared.limits)
        .map_err(|e| RemoteError::Protocol(format!("a value that is not a pickle: {e}")))
}

fn bytes_of(v: &Value) -> Result<Bytes, RemoteError> {
    pickle::encode(v)
        .map(Bytes::from)
        .map_err(|e| RemoteError::Protocol(format!("a value that does not pickle: {e}")))
}

/// The name of the exception a method raised (`KeyError`), if it raised one.
fn raised(f: &Fail) -> Option<&str> {
    match f {
        Fail::Raise(Value::Object(o)) => match &o.callable {
            Value::Global { name, .. } => Some(name),
            _ => None,
        },
        _ => None,
    }
}

/// A method's failure as a Rust client's error: Python's exception, in words.
fn remote(f: Fail) -> RemoteError {
    match f {
        Fail::Raise(e) => RemoteError::Exception(exception_text(&e)),
        Fail::Traceback(t) => RemoteError::Exception(t),
    }
}

fn seconds(us: Option<u64>) -> Value {
    us.map_or(Value::None, |us| Value::Float(us as f64 / 1e6))
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Int(n.try_into().unwrap_or(i64::MAX))
}

impl Client {
    /// A client on `conn`, whose thread 0 owns its locks as `first` (the connection's id).
    fn new(
        shared: Arc<Shared>,
        conn: Arc<Connection>,
        process: Option<ProcessId>,
        first: ConnId,
        gone: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Client {
        Client {
            shared,
            conn,
            process,
            holds: Mutex::new(HashMap::new()),
            threads: Mutex::new(HashMap::from([(0, first)])),
            locks: Mutex::new(Vec::new()),
            gone,
        }
    }

    fn answer(&self, id: u64, result: Answer) {
        // A client that is gone is noticed by the reader.
        let _ = self.conn.send(&Response { id, result });
    }

    fn run(&self, request: Request) {
        // A release is told, never answered (as on the Rust server).
        let silent = matches!(request.op, Op::Release { .. });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.op(request.op)))
            .unwrap_or_else(|_| {
                Err(RemoteError::Protocol(
                    "the server failed this request".into(),
                ))
            });
        if !silent {
            self.answer(request.id, result);
        }
    }

    fn op(&self, op: Op) -> Answer {
        match op {
            Op::Hello => Ok(Reply::Values(Values::Pickle)),
            Op::Create {
                kind,
                name,
                existing,
                init,
                items,
            } => self.create(kind, name, existing, init, items),
            Op::CreateServed { .. } => Err(served_here()),
            Op::Lookup { name } => {
                let mut t = self.shared.table();
                let ident = t
                    .shared
                    .get(&name)
                    .cloned()
                    .ok_or(RemoteError::NoSuchName(name))?;
                let kind = t
                    .objects
                    .get(&ident)
                    .and_then(|e| e.obj.native_kind())
                    .ok_or(RemoteError::NoSuchObject(object_id(&ident)))?;
                self.hold(&mut t, &ident);
                Ok(Reply::Object {
                    id: object_id(&ident),
                    kind,
                })
            }
            Op::Attach { object, expect } => {
                let ident = ident(object);
                let mut t = self.shared.table();
                let e = t
                    .objects
                    .get(&ident)
                    .ok_or(RemoteError::NoSuchObject(object))?;
                let kind = e.obj.native_kind();
                match kind {
                    Some(k) if fits(&expect, k) => {}
                    _ => {
                        return Err(RemoteError::WrongKind {
                            object,
                            kind: e.typeid.to_string(),
                            wanted: format!("{expect:?}"),
                        });
                    }
                }
                self.hold(&mut t, &ident);
                Ok(Reply::Object {
                    id: object,
                    kind: kind.expect("fits"),
                })
            }
            Op::Release { object } => {
                let ident = ident(object);
                let held = {
                    let mut h = lock(&self.holds);
                    match h.get_mut(&ident) {
                        Some(n) => {
                            *n -= 1;
                            if *n == 0 {
                                h.remove(&ident);
                            }
                            true
                        }
                        None => false,
                    }
                };
                if held {
                    let _ = self.shared.decref(&ident, None);
                }
                Ok(Reply::Unit)
            }
            Op::Call { object, call } => self.call(object, call),
            Op::Batch {
                calls,
                atomic,
                expect,
            } => {
                if calls.iter().any(|(_, c)| !c.goes_in_a_batch()) {
                    return Err(RemoteError::Unsupported(
                        "locks, semaphores, events and queues cannot be waited on inside a batch"
                            .into(),
                    ));
                }
                if atomic || !expect.is_empty() {
                    return Err(RemoteError::Unsupported(
                        "transactions are the Rust manager's (the server for Python clients \
                         runs each call on its own)"
                            .into(),
                    ));
                }
                Ok(Reply::Batch(
                    calls
                        .into_iter()
                        .map(|(object, call)| self.call(object, call))
                        .collect(),
                ))
            }
            Op::Status => Err(RemoteError::Unsupported(
                "status is the Rust manager's (Python's debug_info answers Python clients)".into(),
            )),
            Op::Shutdown => Ok(Reply::Unit),
        }
    }

    /// One more hold of this connection on `ident`.
    fn hold(&self, t: &mut super::Table, ident: &str) {
        if let Some(e) = t.objects.get_mut(ident) {
            e.refs += 1;
            *lock(&self.holds).entry(ident.to_string()).or_insert(0) += 1;
        }
    }

    fn create(
        &self,
        kind: Kind,
        name: Option<String>,
        existing: bool,
        init: Option<Bytes>,
        items: Vec<Bytes>,
    ) -> Answer {
        let typeid = typeid(kind)?;
        if let Some(n) = &name {
            if objects::CREATABLE.contains(&n.as_str()) || n.is_empty() {
                return Err(RemoteError::Unsupported(format!(
                    "{n:?} is a type id of this server, not a name for an object"
                )));
            }
            // An object of that name is the answer, whatever `init` and `items` say.
            if let Some(answer) = self.named(&mut self.shared.table(), n, existing, kind) {
                return answer;
            }
        }
        let args = match kind {
            Kind::Value => {
                let init =
                    init.ok_or_else(|| RemoteError::Protocol("a value without one".into()))?;
                // `managers.Value(typecode, value)`: the type code is only kept, never used.
                vec![Value::None, value_of(&self.shared, &init)?]
            }
            Kind::Array => {
                let items: Vec<Value> = items
                    .iter()
                    .map(|b| value_of(&self.shared, b))
                    .collect::<Result<_, _>>()?;
                vec![array_code(&items)?, Value::List(items)]
            }
            Kind::Queue { maxsize } => vec![int(maxsize)],
            Kind::Semaphore { value, .. } => vec![int(value)],
            Kind::Barrier { parties: 0 } => return Err(RemoteError::NoParties),
            Kind::Barrier { parties } => vec![int(parties)],
            _ => Vec::new(),
        };

        let call = self.py_call(0, false, &args).map_err(remote)?;
        let obj = Referent::create(typeid, &call, &|_| None).map_err(remote)?;
        let mut t = self.shared.table();
        // The name again, under the same guard as the insert: another client may have taken
        // it since the look above (the object made for nothing is dropped).
        if let Some(n) = &name
            && let Some(answer) = self.named(&mut t, n, existing, kind)
        {
            return answer;
        }
        let ident = super::insert_in(&mut t, typeid, obj, None);
        *lock(&self.holds).entry(ident.clone()).or_insert(0) += 1;
        if let Some(n) = name {
            // Named: found by every client (a Python one through `register(name)`), for good.
            if let Some(e) = t.objects.get_mut(&ident) {
                e.pinned = true;
            }
            t.shared.insert(n, ident.clone());
        }
        Ok(Reply::Object {
            id: object_id(&ident),
            kind,
        })
    }

    /// The answer to a create of `kind` called `n` when an object has that name already (held
    /// once more for this connection when `existing` allows it and it is of that kind), or
    /// `None` when the name is free.
    fn named(&self, t: &mut super::Table, n: &str, existing: bool, kind: Kind) -> Option<Answer> {
        let ident = t.shared.get(n).cloned()?;
        let found = t.objects.get(&ident).and_then(|e| e.obj.native_kind());
        Some(match found {
            Some(k) if existing && same_kind(k, kind) => {
                self.hold(t, &ident);
                Ok(Reply::Object {
                    id: object_id(&ident),
                    kind: k,
                })
            }
            Some(k) if existing => Err(RemoteError::WrongKind {
                object: object_id(&ident),
                kind: format!("{k:?}"),
                wanted: format!("{kind:?}"),
            }),
            _ => Err(RemoteError::NameTaken(n.to_string())),
        })
    }

    /// A Python call of `args`, by the client thread `thread` (an acquire when `taking`).
    fn py_call<'a>(
        &'a self,
        thread: u64,
        taking: bool,
        args: &'a [Value],
    ) -> Result<objects::Call<'a>, Fail> {
        Ok(objects::Call {
            conn: self.owner(thread, taking)?,
            args,
            kwds: &[],
            process: self.process,
            gone: &*self.gone,
        })
    }

    /// The server-side owner of the locks client thread `thread` takes: made by an acquire
    /// only (`taking`); a thread that never took a lock has none, and its releases, waits and
    /// notifies go under an owner that holds nothing (so that a client sending thread numbers
    /// at random grows nothing).
    fn owner(&self, thread: u64, taking: bool) -> Result<ConnId, Fail> {
        let mut t = lock(&self.threads);
        match t.get(&thread) {
            Some(&o) => Ok(o),
            None if !taking => Ok(NOBODY),
            None if t.len() < MAX_THREADS => {
                let o = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
                t.insert(thread, o);
                Ok(o)
            }
            None => Err(Fail::Traceback(format!(
                "RuntimeError: {MAX_THREADS} threads of this client took locks already"
            ))),
        }
    }

    /// `method(*args)` on `obj` by client thread `thread`.
    fn py(
        &self,
        obj: &Arc<Referent>,
        version: &AtomicU64,
        thread: u64,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Value, Fail> {
        let call = self.py_call(thread, method == "acquire", &args)?;
        let out = obj.call(method, &call);
        if !objects::reads_only(obj, method) {
            self.shared.changed(version);
        }
        match out? {
            Outcome::Return(v) => Ok(v),
            Outcome::Proxy(..) => Err(Fail::Traceback(format!(
                "{method} makes a new shared object, which a Rust client has no proxy for"
            ))),
        }
    }

    fn call(&self, object: ObjectId, call: Call) -> Answer {
        let (obj, version) = {
            let t = self.shared.table();
            let e = t
                .objects
                .get(&ident(object))
                .ok_or(RemoteError::NoSuchObject(object))?;
            (e.obj.clone(), e.version.clone())
        };
        let kind = obj.native_kind().ok_or_else(|| RemoteError::WrongKind {
            object,
            kind: "iterator".into(),
            wanted: "an object a Rust proxy stands for".into(),
        })?;
        let v = |b: &[u8]| value_of(&self.shared, b);
        let py = |method: &str, args: Vec<Value>| self.py(&obj, &version, 0, method, args);
        let unsupported = |call: &Call| {
            RemoteError::Unsupported(format!("{call:?} on object {object}, a {kind:?}"))
        };
        let len = || -> Result<u64, RemoteError> {
            let n = match kind {
                Kind::Queue { .. } => py("qsize", vec![]),
                Kind::Namespace => py("native_len", vec![Value::None]),
                Kind::Semaphore { .. } => return Ok(obj.slots().unwrap_or(0)),
                Kind::Dict | Kind::List | Kind::Array => py("__len__", vec![]),
                _ => return Err(unsupported(&Call::Len)),
            }
            .map_err(remote)?;
            Ok(u64::try_from(value::index(&n).map_err(remote)?).unwrap_or(0))
        };
        let index_error = |i: i64| RemoteError::IndexError {
            index: i,
            len: len().unwrap_or(0),
        };
        let reply = match (kind, call) {
            (_, Call::Version) => Reply::Version(version.load(Ordering::Acquire)),
            (_, Call::Watch { since, timeout_us }) => {
                match self.shared.watch(&version, since, timeout_us, &*self.gone) {
                    Some(now) => Reply::Version(now),
                    None => Reply::Bool(false),
                }
            }
            (_, Call::Served(_)) => return Err(served_here()),
            (_, Call::Len) => Reply::Len(len()?),
            (Kind::Dict | Kind::List, Call::Clear) => {
                py("clear", vec![]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Namespace, Call::Clear) => {
                py("native_clear", vec![Value::None]).map_err(remote)?;
                Reply::Unit
            }
            (_, Call::Snapshot) => {
                // The version first: a change racing the copy shows as a later version.
                let at = version.load(Ordering::Acquire);
                let whole = obj.contents().ok_or_else(|| unsupported(&Call::Snapshot))?;
                Reply::Snapshot(at, Box::new(snapshot(kind, whole)?))
            }
            (Kind::Dict, Call::DictGet(k)) => match py("__getitem__", vec![v(&k)?]) {
                Ok(x) => Reply::Maybe(Some(bytes_of(&x)?)),
                Err(f) if raised(&f) == Some("KeyError") => Reply::Maybe(None),
                Err(f) => return Err(remote(f)),
            },
            (Kind::Dict, Call::DictSet(k, x)) => {
                py("__setitem__", vec![v(&k)?, v(&x)?]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Dict, Call::DictSetDefault(k, x)) => Reply::Bytes(bytes_of(
                &py("setdefault", vec![v(&k)?, v(&x)?]).map_err(remote)?,
            )?),
            (Kind::Dict, Call::DictRemove(k)) => match py("pop", vec![v(&k)?]) {
                Ok(x) => Reply::Maybe(Some(bytes_of(&x)?)),
                Err(f) if raised(&f) == Some("KeyError") => Reply::Maybe(None),
                Err(f) => return Err(remote(f)),
            },
            (Kind::Dict, Call::DictContains(k)) => Reply::Bool(value::truthy(
                &py("__contains__", vec![v(&k)?]).map_err(remote)?,
            )),
            (Kind::Dict, Call::DictKeys) => Reply::Many(many(py("keys", vec![]).map_err(remote)?)?),
            (Kind::Dict, Call::DictValues) => {
                Reply::Many(many(py("values", vec![]).map_err(remote)?)?)
            }
            (Kind::Dict, Call::DictUpdate(kv)) => {
                let pairs = kv
                    .iter()
                    .map(|(k, x)| Ok(Value::Tuple(vec![v(k)?, v(x)?])))
                    .collect::<Result<_, RemoteError>>()?;
                py("update", vec![Value::List(pairs)]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::List, Call::ListAppend(x)) => {
                py("append", vec![v(&x)?]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::List, Call::ListExtend(xs)) => {
                let xs = xs.iter().map(|x| v(x)).collect::<Result<_, _>>()?;
                py("extend", vec![Value::List(xs)]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::List, Call::ListInsert(i, x)) => {
                py("insert", vec![Value::Int(i), v(&x)?]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::List | Kind::Array, Call::ListGet(i)) => {
                match py("__getitem__", vec![Value::Int(i)]) {
                    Ok(x) => Reply::Bytes(bytes_of(&x)?),
                    Err(f) if raised(&f) == Some("IndexError") => return Err(index_error(i)),
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::List | Kind::Array, Call::ListSet(i, x)) => {
                match py("__setitem__", vec![Value::Int(i), v(&x)?]) {
                    Ok(_) => Reply::Unit,
                    Err(f) if raised(&f) == Some("IndexError") => return Err(index_error(i)),
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::List, Call::ListPop(i)) => {
                let args = i.map(|i| vec![Value::Int(i)]).unwrap_or_default();
                match py("pop", args) {
                    Ok(x) => Reply::Bytes(bytes_of(&x)?),
                    Err(f) if raised(&f) == Some("IndexError") => {
                        return Err(index_error(i.unwrap_or(-1)));
                    }
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::List, Call::ListRemove(x)) => match py("remove", vec![v(&x)?]) {
                Ok(_) => Reply::Unit,
                Err(f) if raised(&f) == Some("ValueError") => return Err(RemoteError::NotFound),
                Err(f) => return Err(remote(f)),
            },
            (Kind::List | Kind::Array, Call::ListRange(start, end)) => {
                let items = obj
                    .items_in(start, end)
                    .ok_or_else(|| unsupported(&Call::ListRange(start, end)))?;
                Reply::Many(items.iter().map(bytes_of).collect::<Result<_, _>>()?)
            }
            (Kind::Namespace, Call::NsGet(name)) => {
                match py("__getattribute__", vec![Value::Str(name)]) {
                    Ok(x) => Reply::Maybe(Some(bytes_of(&x)?)),
                    Err(f) if raised(&f) == Some("AttributeError") => Reply::Maybe(None),
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Namespace, Call::NsSet(name, x)) => {
                py("__setattr__", vec![Value::Str(name), v(&x)?]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Namespace, Call::NsRemove(name)) => {
                match py("native_pop", vec![Value::Str(name)]).map_err(remote)? {
                    Value::Tuple(mut old) if old.len() == 1 => {
                        Reply::Maybe(Some(bytes_of(&old.remove(0))?))
                    }
                    _ => Reply::Maybe(None),
                }
            }
            (Kind::Value, Call::ValueGet) => {
                Reply::Bytes(bytes_of(&py("get", vec![]).map_err(remote)?)?)
            }
            (Kind::Value, Call::ValueSet(x)) => {
                py("set", vec![v(&x)?]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Value, Call::ValueCompareSet(old, new)) => Reply::Bool(value::truthy(
                &py("native_compare_set", vec![v(&old)?, v(&new)?]).map_err(remote)?,
            )),
            (Kind::Lock { .. } | Kind::Condition, Call::LockAcquire { timeout_us, thread }) => {
                let mut args = vec![Value::Bool(true)];
                if let Some(us) = timeout_us {
                    args.push(seconds(Some(us)));
                }
                let got = self
                    .py(&obj, &version, thread, "acquire", args)
                    .map_err(remote)?;
                self.took(&obj);
                Reply::Bool(value::truthy(&got))
            }
            (Kind::Lock { .. } | Kind::Condition, Call::LockRelease { thread }) => {
                match self.py(&obj, &version, thread, "release", vec![]) {
                    Ok(_) => Reply::Unit,
                    Err(f) if raised(&f) == Some("RuntimeError") => {
                        return Err(RemoteError::NotHeld);
                    }
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Condition, Call::CondWait { timeout_us, thread }) => {
                match self.py(&obj, &version, thread, "wait", vec![seconds(timeout_us)]) {
                    Ok(x) => Reply::Bool(value::truthy(&x)),
                    Err(f) if raised(&f) == Some("RuntimeError") => {
                        return Err(RemoteError::NotHeld);
                    }
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Condition, Call::CondNotify { n, thread }) => {
                match self.py(&obj, &version, thread, "notify", vec![int(n)]) {
                    Ok(_) => Reply::Unit,
                    Err(f) if raised(&f) == Some("RuntimeError") => {
                        return Err(RemoteError::NotHeld);
                    }
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Semaphore { .. }, Call::SemAcquire { timeout_us }) => {
                let got =
                    py("acquire", vec![Value::Bool(true), seconds(timeout_us)]).map_err(remote)?;
                self.took(&obj);
                Reply::Bool(value::truthy(&got))
            }
            (Kind::Semaphore { .. }, Call::SemRelease) => match py("release", vec![]) {
                Ok(_) => Reply::Unit,
                Err(f) if raised(&f) == Some("ValueError") => {
                    return Err(RemoteError::TooManyReleases);
                }
                Err(f) => return Err(remote(f)),
            },
            (Kind::Queue { .. }, Call::QueuePut { item, timeout_us }) => {
                match py(
                    "put",
                    vec![v(&item)?, Value::Bool(true), seconds(timeout_us)],
                ) {
                    Ok(_) => Reply::Unit,
                    Err(f) if raised(&f) == Some("Full") => return Err(RemoteError::Full),
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Queue { .. }, Call::QueueGet { timeout_us }) => {
                match py("get", vec![Value::Bool(true), seconds(timeout_us)]) {
                    Ok(x) => Reply::Bytes(bytes_of(&x)?),
                    Err(f) if raised(&f) == Some("Empty") => return Err(RemoteError::Empty),
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Queue { .. }, Call::QueueTaskDone) => match py("task_done", vec![]) {
                Ok(_) => Reply::Unit,
                Err(f) if raised(&f) == Some("ValueError") => {
                    return Err(RemoteError::TooManyTaskDone);
                }
                Err(f) => return Err(remote(f)),
            },
            (Kind::Queue { .. }, Call::QueueJoin { timeout_us }) => Reply::Bool(value::truthy(
                &py("native_join", vec![seconds(timeout_us)]).map_err(remote)?,
            )),
            (Kind::Barrier { .. }, Call::BarrierWait { timeout_us }) => {
                match py("wait", vec![seconds(timeout_us)]) {
                    Ok(x) => {
                        Reply::Len(u64::try_from(value::index(&x).map_err(remote)?).unwrap_or(0))
                    }
                    Err(f) if raised(&f) == Some("BrokenBarrierError") => {
                        return Err(RemoteError::BrokenBarrier);
                    }
                    Err(f) => return Err(remote(f)),
                }
            }
            (Kind::Barrier { .. }, Call::BarrierAbort) => {
                py("abort", vec![]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Barrier { .. }, Call::BarrierReset) => {
                py("reset", vec![]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Barrier { .. }, Call::BarrierState) => {
                let attr = |name: &str| {
                    py("__getattribute__", vec![Value::Str(name.into())]).map_err(remote)
                };
                let count = |x: Value| {
                    u64::try_from(value::index(&x).map_err(remote)?)
                        .map_err(|_| RemoteError::Protocol("a negative count".into()))
                };
                Reply::Barrier {
                    parties: count(attr("parties")?)?,
                    waiting: count(attr("n_waiting")?)?,
                    broken: value::truthy(&attr("broken")?),
                }
            }
            (Kind::Event, Call::EventSet) => {
                py("set", vec![]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Event, Call::EventClear) => {
                py("clear", vec![]).map_err(remote)?;
                Reply::Unit
            }
            (Kind::Event, Call::EventIsSet) => {
                Reply::Bool(value::truthy(&py("is_set", vec![]).map_err(remote)?))
            }
            (Kind::Event, Call::EventWait { timeout_us }) => Reply::Bool(value::truthy(
                &py("wait", vec![seconds(timeout_us)]).map_err(remote)?,
            )),
            (_, call) => return Err(unsupported(&call)),
        };
        Ok(reply)
    }

    /// Notes that this connection took `obj` (a lock, a condition's, a semaphore's slot), to
    /// give it back at the end if it still holds it.
    fn took(&self, obj: &Arc<Referent>) {
        let mut l = lock(&self.locks);
        if !l.iter().any(|h| Arc::ptr_eq(h, obj)) {
            l.push(obj.clone());
        }
    }

    /// The connection ended: its locks are given back and its holds dropped.
    fn end(&self) {
        let owners: Vec<ConnId> = lock(&self.threads).values().copied().collect();
        let slots = self.shared.slots.load(Ordering::Relaxed);
        for obj in std::mem::take(&mut *lock(&self.locks)) {
            for &o in &owners {
                obj.give_back(o);
            }
            // Semaphore slots this process took and did not give back: as for a Python client,
            // they come back when the process is gone, if the server was told to
            // (`PythonServer::give_back_slots`).
            if let Some(p) = self.process
                && obj.held_by(p)
            {
                if crate::sys::process_started(p.0) == Some(p.1) {
                    lock(&self.shared.orphans).push((p, obj));
                } else {
                    obj.process_died(p, slots);
                }
            }
        }
        for (ident, n) in std::mem::take(&mut *lock(&self.holds)) {
            for _ in 0..n {
                let _ = self.shared.decref(&ident, None);
            }
        }
    }
}

/// A container's copy as a snapshot's content: `Raw` entries or items, `Named` values, or one
/// value (`Many`).
fn snapshot(kind: Kind, whole: Value) -> Answer {
    Ok(match (kind, whole) {
        (Kind::Dict, Value::Dict(pairs)) => {
            let mut parts = Vec::with_capacity(pairs.len() * 2);
            for (k, v) in &pairs {
                parts.push(bytes_of(k)?);
                parts.push(bytes_of(v)?);
            }
            Reply::Raw(raw(pairs.len(), &parts))
        }
        (Kind::List | Kind::Array, Value::List(items)) => {
            let parts = items.iter().map(bytes_of).collect::<Result<Vec<_>, _>>()?;
            Reply::Raw(raw(items.len(), &parts))
        }
        (Kind::Namespace, Value::Dict(named)) => Reply::Named(
            named
                .iter()
                .map(|(k, v)| {
                    let Value::Str(k) = k else {
                        return Err(RemoteError::Protocol(
                            "a namespace name that is not a str".into(),
                        ));
                    };
                    Ok((k.clone(), bytes_of(v)?))
                })
                .collect::<Result<_, _>>()?,
        ),
        (Kind::Value, v) => Reply::Many(vec![bytes_of(&v)?]),
        (kind, _) => {
            return Err(RemoteError::Unsupported(format!(
                "a snapshot of a {kind:?}"
            )));
        }
    })
}

/// `Reply::Raw`'s form: a u64 count, then each part as a u64 length and its bytes (LE).
fn raw(count: usize, parts: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(8 + parts.iter().map(|p| 8 + p.len()).sum::<usize>());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

/// What a list-valued answer holds, each item pickled.
fn many(v: Value) -> Result<Vec<Bytes>, RemoteError> {
    match v {
        Value::List(items) | Value::Tuple(items) => items.iter().map(bytes_of).collect(),
        other => Err(RemoteError::Protocol(format!(
            "a list was expected, not {}",
            value::repr(&other)
        ))),
    }
}

/// The `array.array` type code a Rust client's items fit: `q` for integers, `d` for numbers
/// with a float among them.
fn array_code(items: &[Value]) -> Result<Value, RemoteError> {
    // Not bools: an array stores them as ints, which a Rust `bool` would not read back.
    let int = |v: &Value| matches!(v, Value::Int(_));
    if items.iter().all(int) {
        return Ok(Value::Str("q".into()));
    }
    if items.iter().all(|v| int(v) || matches!(v, Value::Float(_))) {
        return Ok(Value::Str("d".into()));
    }
    Err(RemoteError::Unsupported(
        "an Array of this server holds numbers of one array type code (integers that fit 64 \
         bits, or floats): use a List for other items"
            .into(),
    ))
}

/// Whether an existing named object of `found` answers a request for `wanted` (a semaphore's
/// starting value is not compared when unbounded).
fn same_kind(found: Kind, wanted: Kind) -> bool {
    match (found, wanted) {
        (Kind::Semaphore { bounded: false, .. }, Kind::Semaphore { bounded: false, .. }) => true,
        (a, b) => a == b,
    }
}

/// Runs the Rust-protocol requests encoded in `data` (chunks of a 2-byte little-endian length and
/// one request in the crate's codec) against a fresh server state, as one Rust client whose calls
/// never wait (a waiting call gives up at once); how many it answered. Every answer must encode.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_requests(data: &[u8]) -> usize {
    let shared = Arc::new(Shared::new(Value::Str("/fuzz".into())));
    let (conn, _peer) = crate::pipe().expect("a pipe");
    let client = Client::new(shared, Arc::new(conn), None, 1, Box::new(|| true));
    let mut answered = 0;
    for chunk in crate::manager::proto::fuzz_chunks(data) {
        let Ok(request) = crate::codec::decode::<Request>(chunk, Vec::new()) else {
            continue;
        };
        if matches!(request.op, Op::Shutdown) {
            continue;
        }
        let response = Response {
            id: request.id,
            result: client.op(request.op),
        };
        assert!(
            crate::codec::encode(&response).is_ok(),
            "an answer that does not encode"
        );
        answered += 1;
    }
    client.end();
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::proto::Call;

    fn chunk(out: &mut Vec<u8>, op: Op) {
        let (b, _) = crate::codec::encode(&Request { id: 1, op }).unwrap();
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(&b);
    }

    /// A session of every kind of object and call, answered without a panic (and written out as
    /// the fuzz target's seed when `MP_WRITE_FUZZ_SEEDS` names a directory).
    #[test]
    fn a_rust_session_on_the_python_server_runs_through() {
        let mut data = Vec::new();
        let p = |v: &Value| Bytes::from(pickle::encode(v).unwrap());
        let kinds = [
            Kind::Dict,
            Kind::List,
            Kind::Namespace,
            Kind::Value,
            Kind::Array,
            Kind::Queue { maxsize: 1 },
            Kind::Lock { reentrant: true },
            Kind::Semaphore {
                value: 1,
                bounded: true,
            },
            Kind::Event,
            Kind::Condition,
            Kind::Barrier { parties: 1 },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            chunk(
                &mut data,
                Op::Create {
                    kind,
                    name: (i % 2 == 0).then(|| format!("n{i}")),
                    existing: true,
                    init: Some(p(&Value::Int(1))),
                    items: vec![p(&Value::Int(2)), p(&Value::Float(0.5))],
                },
            );
        }
        let k = p(&Value::Int(1));
        let calls = [
            Call::DictSet(k.clone(), k.clone()),
            Call::DictGet(k.clone()),
            Call::Snapshot,
            Call::ListAppend(k.clone()),
            Call::ListGet(-1),
            Call::ListRange(0, 9),
            Call::NsSet("a".into(), k.clone()),
            Call::NsRemove("a".into()),
            Call::ValueCompareSet(k.clone(), k.clone()),
            Call::QueuePut {
                item: k.clone(),
                timeout_us: Some(0),
            },
            Call::QueueGet { timeout_us: None },
            Call::QueueJoin {
                timeout_us: Some(0),
            },
            Call::LockAcquire {
                timeout_us: None,
                thread: 3,
            },
            Call::CondNotify { n: 1, thread: 3 },
            Call::CondWait {
                timeout_us: Some(0),
                thread: 3,
            },
            Call::SemAcquire {
                timeout_us: Some(0),
            },
            Call::SemRelease,
            Call::BarrierWait { timeout_us: None },
            Call::BarrierState,
            Call::EventSet,
            Call::EventWait { timeout_us: None },
            Call::Watch {
                since: 0,
                timeout_us: Some(0),
            },
            Call::Len,
            Call::Version,
        ];
        for object in 1..=11 {
            for call in &calls {
                chunk(
                    &mut data,
                    Op::Call {
                        object,
                        call: call.clone(),
                    },
                );
            }
        }
        chunk(&mut data, Op::Lookup { name: "n0".into() });
        chunk(
            &mut data,
            Op::Attach {
                object: 2,
                expect: Expect::Lock,
            },
        );
        chunk(&mut data, Op::Release { object: 1 });
        chunk(&mut data, Op::Status);
        let answered = crate::queue::fuzzing::python_manager_native_requests(&data);
        assert_eq!(answered, 11 + 11 * calls.len() + 4);
        if let Some(dir) = std::env::var_os("MP_WRITE_FUZZ_SEEDS") {
            std::fs::write(
                std::path::Path::new(&dir).join("python_native_session"),
                &data,
            )
            .unwrap();
        }
    }
}
