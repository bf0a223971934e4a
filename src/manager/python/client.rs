//! A Rust client of managers that speak Python's protocol: CPython's own `SyncManager` server (a
//! Python program's `multiprocessing.Manager()` or `SyncManager(address, authkey).start()`), and
//! this crate's [`PythonServer`](super::PythonServer).
//!
//! It talks as a Python client does: a fresh connection for each control request (`create`,
//! `decref`), and one connection per proxy for its method calls (`accept_connection`). Values
//! cross as pickles; the typed proxies convert with serde ([`pickle::to_vec`] and
//! [`pickle::from_slice`]), and each has a `call` for raw [`Value`]s. An exception the server
//! raises comes back as a typed [`PyException`].

use crate::pickle::{self, Object, PickleError, Value};
use crate::{Address, Client, ClientError, Connection, ToAddress};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Why a call to a Python-protocol manager failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PyError {
    /// The manager could not be reached, or refused the key.
    #[error("cannot connect to the manager: {0}")]
    Connect(#[from] ClientError),
    /// The connection failed during a call.
    #[error("the connection to the manager failed: {0}")]
    Io(String),
    /// The method raised a Python exception (`#ERROR`).
    #[error("the manager raised {0}")]
    Raised(PyException),
    /// The server failed the request itself (`#TRACEBACK`, `#UNSERIALIZABLE`): an unknown object
    /// or method, or a value it could not pickle. The text is the server's traceback.
    #[error("the manager failed the request: {0}")]
    Remote(String),
    /// A value could not be pickled for the server.
    #[error("a value could not be pickled: {0}")]
    Encode(PickleError),
    /// The server's answer could not be read, or not as the type asked for.
    #[error("the manager's answer could not be read: {0}")]
    Decode(PickleError),
    /// The server answered something that is not this protocol.
    #[error("the manager broke the protocol: {0}")]
    Protocol(String),
}

/// A Python exception raised by a manager's object, for the ones a client catches by type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PyException {
    /// `KeyError(key)`.
    KeyError(Value),
    /// `IndexError(message)`.
    IndexError(String),
    /// `ValueError(message)`.
    ValueError(String),
    /// `TypeError(message)`.
    TypeError(String),
    /// `AttributeError(message)`.
    AttributeError(String),
    /// `RuntimeError(message)`.
    RuntimeError(String),
    /// `queue.Empty`: nothing to get (in time).
    Empty,
    /// `queue.Full`: no room to put (in time).
    Full,
    /// `queue.ShutDown`: the queue was shut down (Python 3.13's `Queue.shutdown`).
    ShutDown,
    /// `threading.BrokenBarrierError`.
    BrokenBarrier,
    /// Any other exception: its class and arguments.
    Other {
        /// The class's module, such as `builtins`.
        module: String,
        /// The class's name.
        name: String,
        /// Its arguments.
        args: Vec<Value>,
    },
}

impl std::fmt::Display for PyException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PyException::KeyError(k) => write!(f, "KeyError({})", super::value::repr(k)),
            PyException::IndexError(m) => write!(f, "IndexError: {m}"),
            PyException::ValueError(m) => write!(f, "ValueError: {m}"),
            PyException::TypeError(m) => write!(f, "TypeError: {m}"),
            PyException::AttributeError(m) => write!(f, "AttributeError: {m}"),
            PyException::RuntimeError(m) => write!(f, "RuntimeError: {m}"),
            PyException::Empty => f.write_str("queue.Empty"),
            PyException::Full => f.write_str("queue.Full"),
            PyException::ShutDown => f.write_str("queue.ShutDown"),
            PyException::BrokenBarrier => f.write_str("threading.BrokenBarrierError"),
            PyException::Other { module, name, args } => {
                write!(
                    f,
                    "{module}.{name}{}",
                    super::value::repr(&Value::Tuple(args.clone()))
                )
            }
        }
    }
}

impl PyException {
    fn from_value(v: Value) -> PyException {
        let (module, name, args) = match v {
            Value::Object(o) => {
                let Object { callable, args, .. } = *o;
                match (callable, args) {
                    (Value::Global { module, name }, Value::Tuple(a)) => (module, name, a),
                    (Value::Global { module, name }, _) => (module, name, Vec::new()),
                    (other, _) => ("?".into(), super::value::repr(&other), Vec::new()),
                }
            }
            other => ("?".into(), super::value::repr(&other), Vec::new()),
        };
        let message = || match args.first() {
            Some(Value::Str(s)) => s.clone(),
            Some(other) => super::value::repr(other),
            None => String::new(),
        };
        match (module.as_str(), name.as_str()) {
            ("builtins" | "exceptions", "KeyError") => {
                PyException::KeyError(args.first().cloned().unwrap_or(Value::None))
            }
            ("builtins", "IndexError") => PyException::IndexError(message()),
            ("builtins", "ValueError") => PyException::ValueError(message()),
            ("builtins", "TypeError") => PyException::TypeError(message()),
            ("builtins", "AttributeError") => PyException::AttributeError(message()),
            ("builtins", "RuntimeError") => PyException::RuntimeError(message()),
            ("_queue" | "queue", "Empty") => PyException::Empty,
            ("queue", "Full") => PyException::Full,
            ("queue", "ShutDown") => PyException::ShutDown,
            ("threading", "BrokenBarrierError") => PyException::BrokenBarrier,
            _ => PyException::Other { module, name, args },
        }
    }
}

impl PyError {
    /// The Python exception, if the method raised one.
    pub fn exception(&self) -> Option<&PyException> {
        match self {
            PyError::Raised(e) => Some(e),
            _ => None,
        }
    }
}

/// A value as pickle carries it, from a serde value.
fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, PyError> {
    let bytes = pickle::to_vec(v).map_err(PyError::Encode)?;
    pickle::decode(&bytes).map_err(PyError::Encode)
}

/// A serde value from a pickled one.
fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, PyError> {
    let bytes = pickle::encode(&plain(v.clone())).map_err(PyError::Decode)?;
    pickle::from_slice(&bytes).map_err(PyError::Decode)
}

/// `v` with CPython's `list(items)` (how its server pickles a dict's `items()`, `keys()` and
/// `values()` views) as the list it makes.
fn plain(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let is_list = super::value::is_global(&o.callable, "builtins", "list");
            match (is_list, o.args) {
                (true, Value::Tuple(mut a)) if a.len() == 1 && o.state.is_empty() => {
                    match a.pop().expect("1") {
                        Value::List(x) | Value::Tuple(x) => {
                            Value::List(x.into_iter().map(plain).collect())
                        }
                        other => other,
                    }
                }
                (_, args) => Value::Object(Box::new(Object { args, ..*o })),
            }
        }
        Value::List(x) => Value::List(x.into_iter().map(plain).collect()),
        Value::Tuple(x) => Value::Tuple(x.into_iter().map(plain).collect()),
        Value::Dict(e) => Value::Dict(e.into_iter().map(|(k, v)| (plain(k), plain(v))).collect()),
        other => other,
    }
}

struct Inner {
    address: Address,
    key: Vec<u8>,
    timeout: Duration,
}

impl Inner {
    fn connect(&self) -> Result<Connection, PyError> {
        Ok(Client::builder(self.address.clone())
            .authkey(&self.key)
            .timeout(self.timeout)
            .connect()?)
    }

    /// `dispatch(conn, ident, method, args, kwds)`: one request, its answer.
    fn dispatch(
        conn: &Connection,
        ident: Value,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Reply, PyError> {
        let request = Value::Tuple(vec![
            ident,
            Value::Str(method.into()),
            Value::Tuple(args),
            Value::Dict(kwds),
        ]);
        let bytes = pickle::encode(&request).map_err(PyError::Encode)?;
        conn.send_bytes(&bytes)
            .map_err(|e| PyError::Io(e.to_string()))?;
        let answer = conn.recv_bytes().map_err(|e| PyError::Io(e.to_string()))?;
        let Value::Tuple(mut kv) = pickle::decode(&answer).map_err(PyError::Decode)? else {
            return Err(PyError::Protocol(
                "an answer is a (kind, value) tuple".into(),
            ));
        };
        if kv.len() != 2 {
            return Err(PyError::Protocol(
                "an answer is a (kind, value) tuple".into(),
            ));
        }
        let value = kv.pop().expect("2");
        let Value::Str(kind) = kv.pop().expect("1") else {
            return Err(PyError::Protocol("an answer's kind is a str".into()));
        };
        match kind.as_str() {
            "#RETURN" => Ok(Reply::Value(value)),
            "#PROXY" => Ok(Reply::Proxy(value)),
            "#ERROR" => Err(PyError::Raised(PyException::from_value(value))),
            "#TRACEBACK" | "#UNSERIALIZABLE" => Err(PyError::Remote(match value {
                Value::Str(s) => s,
                other => super::value::repr(&other),
            })),
            other => Err(PyError::Protocol(format!("an answer of kind {other:?}"))),
        }
    }

    /// A control request on a connection of its own, as Python's clients make them.
    fn control(
        &self,
        verb: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Value, PyError> {
        let conn = self.connect()?;
        match Self::dispatch(&conn, Value::None, verb, args, kwds)? {
            Reply::Value(v) => Ok(v),
            Reply::Proxy(_) => Err(PyError::Protocol(
                "a control request answered a proxy".into(),
            )),
        }
    }
}

enum Reply {
    Value(Value),
    Proxy(Value),
}

/// A client of a manager server that speaks Python's protocol: CPython's `SyncManager` server,
/// or this crate's [`PythonServer`](super::PythonServer).
///
/// # Examples
/// ```
/// use multiprocess::Listener;
/// use multiprocess::manager::python::{PythonManager, PythonServer, PyException};
///
/// let listener = Listener::builder("127.0.0.1:0").authkey(b"key").bind()?;
/// let server = PythonServer::new(listener)?;
/// let (address, stop) = (server.address().clone(), server.stopper());
/// let serving = std::thread::spawn(move || server.serve());
///
/// let m = PythonManager::connect(address, b"key")?;
/// let d = m.dict::<String, Vec<i64>>()?;
/// d.set(&"primes".to_string(), &vec![2, 3, 5])?;
/// assert_eq!(d.get(&"primes".to_string())?, Some(vec![2, 3, 5]));
/// let q = m.queue::<String>()?;
/// let e = q.get_timeout(std::time::Duration::from_millis(10)).unwrap_err();
/// assert_eq!(e.exception(), Some(&PyException::Empty));
/// drop((d, q));
/// stop.stop();
/// serving.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PythonManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PythonManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonManager")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

impl PythonManager {
    /// Connects to the manager at `address` with its key, and checks that it answers (Python's
    /// `connect()`, which sends `dummy`).
    ///
    /// # Errors
    /// Nobody listens there, the key is refused, or the server does not speak the protocol.
    pub fn connect(
        address: impl ToAddress,
        authkey: impl AsRef<[u8]>,
    ) -> Result<PythonManager, PyError> {
        let address = address
            .to_address()
            .map_err(|e| PyError::Connect(ClientError::Io(e)))?;
        let m = PythonManager {
            inner: Arc::new(Inner {
                address,
                key: authkey.as_ref().to_vec(),
                timeout: Duration::from_secs(10),
            }),
        };
        m.inner.control("dummy", vec![], vec![])?;
        Ok(m)
    }

    /// `create(typeid, *args, **kwds)`: a new object, held by the handle returned.
    fn create(
        &self,
        typeid: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Handle, PyError> {
        let mut all = vec![Value::Str(typeid.into())];
        all.extend(args);
        match self.inner.control("create", all, kwds)? {
            Value::Tuple(t) if t.len() == 2 => match &t[0] {
                Value::Str(id) => Ok(Handle::new(self.inner.clone(), id.clone())),
                other => Err(PyError::Protocol(format!("create gave the id {other:?}"))),
            },
            other => Err(PyError::Protocol(format!("create gave {other:?}"))),
        }
    }

    /// An object another client made, by its id (a Python proxy's `_token.id`): a reference is
    /// taken on it (`incref`), and given back when the proxy is dropped.
    fn attach_handle(&self, id: &str) -> Result<Handle, PyError> {
        self.inner
            .control("incref", vec![Value::Str(id.into())], vec![])?;
        Ok(Handle::new(self.inner.clone(), id.into()))
    }

    /// A new dict (`manager.dict()`).
    pub fn dict<K, V>(&self) -> Result<PyDict<K, V>, PyError> {
        Ok(PyDict(self.create("dict", vec![], vec![])?, PhantomData))
    }

    /// The dict another client made, by its id (`proxy._token.id` in Python).
    pub fn attach_dict<K, V>(&self, id: &str) -> Result<PyDict<K, V>, PyError> {
        Ok(PyDict(self.attach_handle(id)?, PhantomData))
    }

    /// A new list.
    pub fn list<T>(&self) -> Result<PyList<T>, PyError> {
        Ok(PyList(self.create("list", vec![], vec![])?, PhantomData))
    }

    /// A new `Namespace`.
    pub fn namespace(&self) -> Result<PyNamespace, PyError> {
        Ok(PyNamespace(self.create("Namespace", vec![], vec![])?))
    }

    /// A new `Value(typecode, value)` (`typecode` as `array`'s: `"i"`, `"d"`, ...).
    pub fn value<T: Serialize>(&self, typecode: &str, value: &T) -> Result<PyValue<T>, PyError> {
        let args = vec![Value::Str(typecode.into()), to_value(value)?];
        Ok(PyValue(self.create("Value", args, vec![])?, PhantomData))
    }

    /// A new unbounded `Queue`.
    pub fn queue<T>(&self) -> Result<PyQueue<T>, PyError> {
        Ok(PyQueue(self.create("Queue", vec![], vec![])?, PhantomData))
    }

    /// A new `Queue` that holds at most `maxsize` items.
    pub fn queue_bounded<T>(&self, maxsize: usize) -> Result<PyQueue<T>, PyError> {
        let args = vec![Value::Int(maxsize.min(i64::MAX as usize) as i64)];
        Ok(PyQueue(self.create("Queue", args, vec![])?, PhantomData))
    }

    /// A new object of any type the server makes (`typeid(*args)`: `"Lock"`, `"Event"`,
    /// `"Barrier"`, ...), used through raw calls.
    pub fn object(&self, typeid: &str, args: Vec<Value>) -> Result<PyObject, PyError> {
        Ok(PyObject(self.create(typeid, args, vec![])?))
    }

    /// An object another client made, by its id, used through raw calls.
    pub fn attach(&self, id: &str) -> Result<PyObject, PyError> {
        Ok(PyObject(self.attach_handle(id)?))
    }

    /// The queue another client made, by its id.
    pub fn attach_queue<T>(&self, id: &str) -> Result<PyQueue<T>, PyError> {
        Ok(PyQueue(self.attach_handle(id)?, PhantomData))
    }

    /// How many objects the server holds (`number_of_objects`).
    pub fn number_of_objects(&self) -> Result<usize, PyError> {
        match self.inner.control("number_of_objects", vec![], vec![])? {
            Value::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            other => Err(PyError::Protocol(format!(
                "number_of_objects gave {other:?}"
            ))),
        }
    }
}

/// One object on the server: its id, the reference this handle holds, and its method
/// connection (opened at the first call).
struct Handle {
    inner: Arc<Inner>,
    id: String,
    conn: Mutex<Option<Connection>>,
}

impl Handle {
    fn new(inner: Arc<Inner>, id: String) -> Handle {
        Handle {
            inner,
            id,
            conn: Mutex::new(None),
        }
    }

    fn call(
        &self,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Value, PyError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let conn = self.inner.connect()?;
            let name = Value::Str(format!("rust-{}", std::process::id()));
            Inner::dispatch(&conn, Value::None, "accept_connection", vec![name], vec![])?;
            *slot = Some(conn);
        }
        let conn = slot.as_ref().expect("connected");
        let r = Inner::dispatch(conn, Value::Str(self.id.clone()), method, args, kwds);
        if let Err(PyError::Io(_)) = r {
            // A broken connection is not used again: the next call opens a new one.
            *slot = None;
        }
        match r? {
            Reply::Value(v) => Ok(v),
            // A new object the caller does not keep: its reference is given back at once.
            Reply::Proxy(answer) => {
                // (exposed, Token)
                let token = match &answer {
                    Value::Tuple(t) if t.len() == 2 => Some(&t[1]),
                    _ => None,
                };
                if let Some(id) = token.and_then(super::token_id) {
                    let _ = self.inner.control("decref", vec![Value::Str(id)], vec![]);
                }
                Err(PyError::Protocol(format!(
                    "{method} answered a proxy, which this client does not take"
                )))
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // As a Python proxy's finalizer: the reference is given back on a connection of its own.
        let _ = self
            .inner
            .control("decref", vec![Value::Str(self.id.clone())], vec![]);
    }
}

macro_rules! proxy_common {
    ($t:ident $(<$($g:ident),*>)?) => {
        impl$(<$($g),*>)? $t$(<$($g),*>)? {
            /// The object's id on the server (`proxy._token.id` for a Python client).
            pub fn id(&self) -> &str {
                &self.handle().id
            }

            /// Calls `method` with raw values (any method the object exposes), and returns its raw
            /// result.
            pub fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, PyError> {
                self.handle().call(method, args, vec![])
            }
        }

        impl$(<$($g),*>)? std::fmt::Debug for $t$(<$($g),*>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("id", &self.handle().id).finish()
            }
        }
    };
}

/// Any object on a Python-protocol manager (a `Lock`, an `Event`, ...), used through raw calls:
/// [`call`](Self::call) with [`Value`] arguments.
///
/// ```no_run
/// # use multiprocess::manager::python::PythonManager;
/// # use multiprocess::pickle::Value;
/// # let m = PythonManager::connect("127.0.0.1:50000", b"key")?;
/// let lock = m.object("Lock", vec![])?;
/// // acquire(blocking=True, timeout=5)
/// assert_eq!(lock.call("acquire", vec![Value::Bool(true), Value::Int(5)])?, Value::Bool(true));
/// lock.call("release", vec![])?;
/// # Ok::<(), multiprocess::manager::python::PyError>(())
/// ```
pub struct PyObject(Handle);

impl PyObject {
    fn handle(&self) -> &Handle {
        &self.0
    }
}
proxy_common!(PyObject);

/// A `dict` on a Python-protocol manager, with keys `K` and values `V` (converted with serde).
pub struct PyDict<K, V>(Handle, PhantomData<fn(K, V)>);

impl<K, V> PyDict<K, V> {
    fn handle(&self) -> &Handle {
        &self.0
    }
}
proxy_common!(PyDict<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> PyDict<K, V> {
    /// `d[key] = value`.
    pub fn set(&self, key: &K, value: &V) -> Result<(), PyError> {
        self.0.call(
            "__setitem__",
            vec![to_value(key)?, to_value(value)?],
            vec![],
        )?;
        Ok(())
    }

    /// `d[key]`, `None` for a missing key (`KeyError`).
    pub fn get(&self, key: &K) -> Result<Option<V>, PyError> {
        match self.0.call("__getitem__", vec![to_value(key)?], vec![]) {
            Ok(v) => from_value(&v).map(Some),
            Err(PyError::Raised(PyException::KeyError(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `d.pop(key)`, `None` for a missing key.
    pub fn remove(&self, key: &K) -> Result<Option<V>, PyError> {
        match self.0.call("pop", vec![to_value(key)?], vec![]) {
            Ok(v) => from_value(&v).map(Some),
            Err(PyError::Raised(PyException::KeyError(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `key in d`.
    pub fn contains(&self, key: &K) -> Result<bool, PyError> {
        from_value(&self.0.call("__contains__", vec![to_value(key)?], vec![])?)
    }

    /// `len(d)`.
    pub fn len(&self) -> Result<usize, PyError> {
        from_value(&self.0.call("__len__", vec![], vec![])?)
    }

    /// `len(d) == 0`.
    pub fn is_empty(&self) -> Result<bool, PyError> {
        Ok(self.len()? == 0)
    }

    /// `d.items()`, in the dict's order.
    pub fn items(&self) -> Result<Vec<(K, V)>, PyError> {
        from_value(&self.0.call("items", vec![], vec![])?)
    }

    /// `d.clear()`.
    pub fn clear(&self) -> Result<(), PyError> {
        self.0.call("clear", vec![], vec![])?;
        Ok(())
    }
}

/// A `list` on a Python-protocol manager, of items `T`.
pub struct PyList<T>(Handle, PhantomData<fn(T)>);

impl<T> PyList<T> {
    fn handle(&self) -> &Handle {
        &self.0
    }
}
proxy_common!(PyList<T>);

impl<T: Serialize + DeserializeOwned> PyList<T> {
    /// `l.append(item)`.
    pub fn push(&self, item: &T) -> Result<(), PyError> {
        self.0.call("append", vec![to_value(item)?], vec![])?;
        Ok(())
    }

    /// `l[index]`, negative from the end; out of range is `IndexError`.
    pub fn get(&self, index: i64) -> Result<T, PyError> {
        from_value(
            &self
                .0
                .call("__getitem__", vec![Value::Int(index)], vec![])?,
        )
    }

    /// `l[index] = item`.
    pub fn set(&self, index: i64, item: &T) -> Result<(), PyError> {
        self.0.call(
            "__setitem__",
            vec![Value::Int(index), to_value(item)?],
            vec![],
        )?;
        Ok(())
    }

    /// `l.pop()`: the last item; `IndexError` when empty.
    pub fn pop(&self) -> Result<T, PyError> {
        from_value(&self.0.call("pop", vec![], vec![])?)
    }

    /// `len(l)`.
    pub fn len(&self) -> Result<usize, PyError> {
        from_value(&self.0.call("__len__", vec![], vec![])?)
    }

    /// `len(l) == 0`.
    pub fn is_empty(&self) -> Result<bool, PyError> {
        Ok(self.len()? == 0)
    }

    /// A copy of the whole list (`l[:]`).
    pub fn to_vec(&self) -> Result<Vec<T>, PyError> {
        let all = super::value::reduce("builtins", "slice", vec![Value::None; 3]);
        from_value(&self.0.call("__getitem__", vec![all], vec![])?)
    }
}

/// A `Namespace` on a Python-protocol manager: attributes of any serde type.
pub struct PyNamespace(Handle);

impl PyNamespace {
    fn handle(&self) -> &Handle {
        &self.0
    }

    /// `ns.name`; a missing one is `AttributeError`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, PyError> {
        from_value(
            &self
                .0
                .call("__getattribute__", vec![Value::Str(name.into())], vec![])?,
        )
    }

    /// `ns.name = value`.
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<(), PyError> {
        self.0.call(
            "__setattr__",
            vec![Value::Str(name.into()), to_value(value)?],
            vec![],
        )?;
        Ok(())
    }
}
proxy_common!(PyNamespace);

/// A `Value` on a Python-protocol manager.
pub struct PyValue<T>(Handle, PhantomData<fn(T)>);

impl<T> PyValue<T> {
    fn handle(&self) -> &Handle {
        &self.0
    }
}
proxy_common!(PyValue<T>);

impl<T: Serialize + DeserializeOwned> PyValue<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T, PyError> {
        from_value(&self.0.call("get", vec![], vec![])?)
    }

    /// `v.value = value`.
    pub fn set(&self, value: &T) -> Result<(), PyError> {
        self.0.call("set", vec![to_value(value)?], vec![])?;
        Ok(())
    }
}

/// A `Queue` (or `JoinableQueue`) on a Python-protocol manager, of items `T`.
pub struct PyQueue<T>(Handle, PhantomData<fn(T)>);

impl<T> PyQueue<T> {
    fn handle(&self) -> &Handle {
        &self.0
    }
}
proxy_common!(PyQueue<T>);

impl<T: Serialize> PyQueue<T> {
    /// `q.put(item)`: waits for room in a bounded queue.
    pub fn put(&self, item: &T) -> Result<(), PyError> {
        self.0.call("put", vec![to_value(item)?], vec![])?;
        Ok(())
    }

    /// `q.put(item, timeout=...)`: `Full` if there is no room in time.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), PyError> {
        let args = vec![
            to_value(item)?,
            Value::Bool(true),
            Value::Float(timeout.as_secs_f64()),
        ];
        self.0.call("put", args, vec![])?;
        Ok(())
    }
}

impl<T: DeserializeOwned> PyQueue<T> {
    /// `q.get()`: waits for an item.
    pub fn get(&self) -> Result<T, PyError> {
        from_value(&self.0.call("get", vec![], vec![])?)
    }

    /// `q.get(timeout=...)`: `Empty` if none comes in time.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, PyError> {
        let args = vec![Value::Bool(true), Value::Float(timeout.as_secs_f64())];
        from_value(&self.0.call("get", args, vec![])?)
    }
}

impl<T> PyQueue<T> {
    /// `q.qsize()`.
    pub fn len(&self) -> Result<usize, PyError> {
        from_value(&self.0.call("qsize", vec![], vec![])?)
    }

    /// `q.empty()`.
    pub fn is_empty(&self) -> Result<bool, PyError> {
        from_value(&self.0.call("empty", vec![], vec![])?)
    }

    /// `q.task_done()` (a `JoinableQueue`'s).
    pub fn task_done(&self) -> Result<(), PyError> {
        self.0.call("task_done", vec![], vec![])?;
        Ok(())
    }
}
