//! The objects a Python client can make on the server, and their methods, with the behaviour and
//! the exceptions of the CPython types that `SyncManager` serves (`dict`, `list`, `queue.Queue`,
//! `threading.Lock` and the rest).
//!
//! Blocking methods (a `get` on an empty queue, an `acquire`, a `wait`) block the thread of the
//! connection that called them, as in CPython, where every proxy connection has a server thread
//! of its own. They wake every [`LOOK`] to see whether the client hung up or the server stops:
//! a client that died while waiting gives up its place at once rather than taking the lock (or
//! the item) when its turn comes.
//!
//! Locks remember the connection and the process that took them: an RLock whose connection ends
//! is given back ([`Referent::connection_ended`]), a Lock whose process is gone too
//! ([`Referent::process_died`]): a client killed while holding a lock does not leave it locked
//! forever (CPython's server does).

use super::value::{
    self, Fail, Key, Res, index_error, key_error, raise, raised, repr, type_error, type_name,
    value_error,
};
use crate::pickle::Value;
use indexmap::IndexMap;
use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a blocked method looks whether its client is still there.
pub(crate) const LOOK: Duration = Duration::from_millis(100);

/// One connection of a client (a proxy's, in one thread of one process).
pub(crate) type ConnId = u64;

/// What a method is called with, and how it learns that its caller is gone.
pub(crate) struct Call<'a> {
    pub(crate) conn: ConnId,
    pub(crate) args: &'a [Value],
    pub(crate) kwds: &'a [(String, Value)],
    /// The client's process, when the server can tell it (a Unix-socket peer): its pid and
    /// start time.
    pub(crate) process: Option<(i32, u64)>,
    /// The client hung up, or the server stops: a blocked method gives up.
    pub(crate) gone: &'a dyn Fn() -> bool,
}

impl<'a> Call<'a> {
    /// Argument `i`, or keyword `name`.
    pub(crate) fn arg(&self, i: usize, name: &str) -> Option<&'a Value> {
        self.args
            .get(i)
            .or_else(|| self.kwds.iter().find(|(k, _)| k == name).map(|(_, v)| v))
    }

    pub(crate) fn need(&self, i: usize, name: &str, method: &str) -> Res<&'a Value> {
        self.arg(i, name).ok_or_else(|| {
            type_error(format!(
                "{method}() missing required argument: '{name}' (pos {})",
                i + 1
            ))
        })
    }

    fn at_most(&self, n: usize, method: &str) -> Res<()> {
        if self.args.len() > n {
            return Err(type_error(format!(
                "{method}() takes at most {n} arguments ({} given)",
                self.args.len()
            )));
        }
        Ok(())
    }
}

/// A method's result: a value, or a new object to hand back as a proxy (`#PROXY`).
pub(crate) enum Outcome {
    Return(Value),
    Proxy(&'static str, Referent),
}

fn ret(v: Value) -> Res<Outcome> {
    Ok(Outcome::Return(v))
}

fn none() -> Res<Outcome> {
    ret(Value::None)
}

/// A value behind a lock, with a condition variable for those who wait on it.
pub(crate) struct Blocking<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T> Blocking<T> {
    fn new(t: T) -> Blocking<T> {
        Blocking {
            state: Mutex::new(t),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.changed.notify_all();
    }

    /// Waits until `ready` holds, the deadline passes or the caller is gone; true if ready.
    fn wait_until<'g>(
        &'g self,
        mut g: MutexGuard<'g, T>,
        deadline: Option<Instant>,
        call: &Call<'_>,
        mut ready: impl FnMut(&mut T) -> bool,
    ) -> (MutexGuard<'g, T>, bool) {
        let mut waited = false;
        loop {
            if ready(&mut g) {
                // A caller that hung up while it waited does not take what came.
                return if waited && (call.gone)() {
                    (g, false)
                } else {
                    (g, true)
                };
            }
            waited = true;
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => return (g, false),
                Some(d) => (d - now).min(LOOK),
                None => LOOK,
            };
            if (call.gone)() {
                return (g, false);
            }
            g = self
                .changed
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// The deadline of a call that blocks (for `timeout`) or not (now: `wait_until` then looks once,
/// and never waits).
fn until(block: bool, timeout: Option<Duration>) -> Option<Instant> {
    if block {
        deadline(timeout)
    } else {
        Some(Instant::now())
    }
}

/// A dict in insertion order whose keys are Python's equal keys, keeping the first key object
/// stored for each (as Python's: `d[1] = 'a'; d[1.0] = 'b'` leaves the key `1`).
#[derive(Default)]
pub(crate) struct Dict(IndexMap<Key, (Value, Value)>);

impl Dict {
    fn from_entries(entries: impl IntoIterator<Item = (Value, Value)>) -> Res<Dict> {
        let mut d = Dict::default();
        for (k, v) in entries {
            d.set(k, v)?;
        }
        Ok(d)
    }

    fn set(&mut self, k: Value, v: Value) -> Res<()> {
        match self.0.entry(Key::of(&k)?) {
            indexmap::map::Entry::Occupied(mut e) => e.get_mut().1 = v,
            indexmap::map::Entry::Vacant(e) => {
                e.insert((k, v));
            }
        }
        Ok(())
    }

    fn value(&self) -> Value {
        Value::Dict(self.0.values().cloned().collect())
    }

    /// `dict.update(other, **kwds)`'s entries: a dict, or an iterable of pairs.
    fn pairs_of(v: &Value) -> Res<Vec<(Value, Value)>> {
        match v {
            Value::Dict(e) => Ok(e.clone()),
            other => value::iterate(other)?
                .into_iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                        let mut kv = kv.into_iter();
                        Ok((kv.next().expect("2"), kv.next().expect("2")))
                    }
                    other => Err(value_error(format!(
                        "dictionary update sequence element #{i} has length {}; 2 is required",
                        value::iterate(&other).map(|x| x.len()).unwrap_or(0)
                    ))),
                })
                .collect(),
        }
    }
}

/// `array.array`'s item types, by typecode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TypeCode(u8);

impl TypeCode {
    fn of(v: &Value) -> Res<TypeCode> {
        match v {
            Value::Str(s) if s.len() == 1 && b"bBhHiIlLqQfdu".contains(&s.as_bytes()[0]) => {
                Ok(TypeCode(s.as_bytes()[0]))
            }
            _ => Err(value_error(
                "bad typecode (must be b, B, u, h, H, i, I, l, L, q, Q, f or d)",
            )),
        }
    }

    fn size(self) -> usize {
        match self.0 {
            b'b' | b'B' => 1,
            b'h' | b'H' => 2,
            b'i' | b'I' | b'f' | b'u' => 4,
            _ => 8,
        }
    }

    fn range(self) -> (i128, i128) {
        let bits = self.size() as u32 * 8;
        if self.0.is_ascii_lowercase() {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        }
    }

    /// An item as this typecode stores it, or Python's error for a wrong one.
    fn item(self, v: &Value) -> Res<Value> {
        match self.0 {
            b'f' | b'd' => match v {
                Value::Float(f) => Ok(Value::Float(if self.0 == b'f' {
                    f64::from(*f as f32)
                } else {
                    *f
                })),
                Value::Int(i) => Ok(Value::Float(*i as f64)),
                Value::BigInt(b) => match value::big_to_f64(b) {
                    f if f.is_finite() => Ok(Value::Float(f)),
                    _ => Err(raise("OverflowError", "int too large to convert to float")),
                },
                Value::Bool(b) => Ok(Value::Float(f64::from(u8::from(*b)))),
                other => Err(type_error(format!(
                    "must be real number, not {}",
                    type_name(other)
                ))),
            },
            b'u' => match v {
                Value::Str(s) if s.chars().count() == 1 => Ok(v.clone()),
                other => Err(type_error(format!(
                    "array item must be unicode character, not {}",
                    type_name(other)
                ))),
            },
            _ => {
                let i: i128 = match v {
                    Value::Int(i) => i128::from(*i),
                    Value::Bool(b) => i128::from(*b),
                    Value::BigInt(b) => i128::try_from(b).unwrap_or(i128::MAX),
                    other => {
                        return Err(type_error(format!(
                            "'{}' object cannot be interpreted as an integer",
                            type_name(other)
                        )));
                    }
                };
                let (lo, hi) = self.range();
                if i < lo || i > hi {
                    return Err(raise("OverflowError", "array item out of range"));
                }
                // An unsigned 64-bit item past i64 (2^63 and up) stays a big int.
                Ok(match i64::try_from(i) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::BigInt(i.into()),
                })
            }
        }
    }

    fn encode_items(self, items: &[Value]) -> Vec<u8> {
        let mut out = Vec::with_capacity(items.len() * self.size());
        for v in items {
            match (self.0, v) {
                (b'f', Value::Float(f)) => out.extend((*f as f32).to_le_bytes()),
                (b'd', Value::Float(f)) => out.extend(f.to_le_bytes()),
                (b'u', Value::Str(s)) => {
                    out.extend(u32::from(s.chars().next().unwrap_or('\0')).to_le_bytes());
                }
                (_, Value::Int(i)) => out.extend(&i.to_le_bytes()[..self.size()]),
                (_, Value::BigInt(b)) => {
                    out.extend(&u64::try_from(b).unwrap_or(0).to_le_bytes()[..self.size()]);
                }
                _ => out.extend(std::iter::repeat_n(0, self.size())),
            }
        }
        out
    }

    fn decode_items(self, b: &[u8]) -> Res<Vec<Value>> {
        let n = self.size();
        if !b.len().is_multiple_of(n) {
            return Err(value_error("bytes length not a multiple of item size"));
        }
        Ok(b.chunks_exact(n)
            .map(|c| match self.0 {
                b'f' => Value::Float(f64::from(f32::from_le_bytes(c.try_into().expect("4")))),
                b'd' => Value::Float(f64::from_le_bytes(c.try_into().expect("8"))),
                b'u' => Value::Str(
                    char::from_u32(u32::from_le_bytes(c.try_into().expect("4")))
                        .unwrap_or('\u{fffd}')
                        .to_string(),
                ),
                code => {
                    let mut w = [0u8; 8];
                    w[..n].copy_from_slice(c);
                    let mut i = i64::from_le_bytes(w);
                    if code.is_ascii_lowercase() && n < 8 {
                        let shift = 64 - 8 * n as u32;
                        i = (i << shift) >> shift;
                    }
                    if !code.is_ascii_lowercase() && i < 0 {
                        // 'L' and 'Q': unsigned, 2^63 and up.
                        Value::BigInt(u64::from_le_bytes(w).into())
                    } else {
                        Value::Int(i)
                    }
                }
            })
            .collect())
    }
}

/// An `array.array` as pickled between the server and its clients: `array.array(code, bytes)`.
fn array_value(code: TypeCode, items: &[Value]) -> Value {
    value::reduce(
        "array",
        "array",
        vec![
            Value::Str((code.0 as char).to_string()),
            Value::Bytes(code.encode_items(items)),
        ],
    )
}

/// The typecode and items of an `array.array` a client sent, in either pickled form.
fn array_of(v: &Value) -> Option<(TypeCode, Vec<Value>)> {
    let Value::Object(o) = v else { return None };
    let Value::Global { module, name } = &o.callable else {
        return None;
    };
    let Value::Tuple(a) = &o.args else {
        return None;
    };
    match (module.as_str(), name.as_str(), a.as_slice()) {
        ("array", "array", [code, Value::Bytes(b)]) => {
            let code = TypeCode::of(code).ok()?;
            Some((code, code.decode_items(b).ok()?))
        }
        ("array", "array", [code, Value::List(items)]) => {
            let code = TypeCode::of(code).ok()?;
            Some((
                code,
                items
                    .iter()
                    .map(|x| code.item(x))
                    .collect::<Res<_>>()
                    .ok()?,
            ))
        }
        // array.__reduce_ex__: _array_reconstructor(array, code, machine format, bytes), for
        // the little-endian formats of this machine's types.
        ("array", "_array_reconstructor", [_, code, Value::Int(_), Value::Bytes(b)]) => {
            let code = TypeCode::of(code).ok()?;
            Some((code, code.decode_items(b).ok()?))
        }
        _ => None,
    }
}

pub(crate) struct LockState {
    /// Times acquired (more than one only for an RLock).
    count: u64,
    owner: Option<ConnId>,
    /// The process that took it, when the server can tell (see `Referent::process_died`).
    owner_process: Option<(i32, u64)>,
}

pub(crate) struct SemState {
    value: u64,
    /// The value it was made with.
    initial: u64,
    bound: Option<u64>,
    /// Slots each client process took and has not itself given back: returned when it is gone,
    /// if the server was told to ([`PythonServer::give_back_slots`](super::PythonServer::give_back_slots)).
    taken: HashMap<(i32, u64), u64>,
}

pub(crate) struct QueueState {
    items: VecDeque<Value>,
    /// None: unbounded.
    maxsize: Option<usize>,
    unfinished: u64,
    /// `shutdown()` was called (Python 3.13's queues): puts fail, and gets once it is empty.
    shut: bool,
}

#[derive(Default)]
pub(crate) struct CondState {
    next: u64,
    waiting: VecDeque<u64>,
    notified: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct BarrierState {
    parties: u64,
    timeout: Option<Duration>,
    broken: bool,
    next: u64,
    /// The waiters of the current round, by ticket.
    waiting: Vec<u64>,
    /// How the rounds ended for waiters that have not yet seen it: their index, or broken.
    ended: HashMap<u64, Option<u64>>,
}

/// An object a Python client made on the server.
pub(crate) enum Referent {
    Dict(Mutex<Dict>),
    List(Mutex<Vec<Value>>),
    /// `managers.Namespace`: attributes in the order set.
    Namespace(Mutex<IndexMap<String, Value>>),
    /// `managers.Value(typecode, value)`.
    Value(Mutex<(Value, Value)>),
    Array(Mutex<(TypeCode, Vec<Value>)>),
    Queue(Blocking<QueueState>),
    /// `threading.Lock`, or `RLock` when reentrant.
    Lock {
        reentrant: bool,
        state: Blocking<LockState>,
    },
    Semaphore(Blocking<SemState>),
    Event(Blocking<bool>),
    Condition {
        lock: std::sync::Arc<Referent>,
        state: Blocking<CondState>,
    },
    Barrier(Blocking<BarrierState>),
    /// A dict's keys, handed out one at a time (`__iter__`), with the dict and its size then:
    /// a dict whose size changed fails the next step, as Python's iterators do.
    Iterator {
        keys: Mutex<std::vec::IntoIter<Value>>,
        dict: std::sync::Weak<Referent>,
        len: usize,
    },
}

/// The methods each type answers (CPython's `_exposed_` for its proxy type, which a Python
/// client also reads to build an `AutoProxy`).
pub(crate) fn exposed(typeid: &str) -> &'static [&'static str] {
    match typeid {
        "dict" => &[
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__iter__",
            "__len__",
            "__setitem__",
            "clear",
            "copy",
            "get",
            "items",
            "keys",
            "pop",
            "popitem",
            "setdefault",
            "update",
            "values",
        ],
        "list" => &[
            "__add__",
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__len__",
            "__mul__",
            "__reversed__",
            "__rmul__",
            "__setitem__",
            "append",
            "count",
            "extend",
            "index",
            "insert",
            "pop",
            "remove",
            "reverse",
            "sort",
            "__imul__",
        ],
        "Namespace" => &["__getattribute__", "__setattr__", "__delattr__"],
        "Value" => &["get", "set"],
        "Array" => &["__len__", "__getitem__", "__setitem__"],
        "Queue" | "JoinableQueue" => &[
            "empty",
            "full",
            "get",
            "get_nowait",
            "join",
            "put",
            "put_nowait",
            "qsize",
            "shutdown",
            "task_done",
        ],
        "Lock" | "RLock" | "Semaphore" | "BoundedSemaphore" => &["acquire", "release"],
        "Event" => &["is_set", "set", "clear", "wait"],
        "Condition" => &["acquire", "release", "wait", "notify", "notify_all"],
        "Barrier" => &["__getattribute__", "wait", "abort", "reset"],
        "Iterator" => &["__next__", "send", "throw", "close"],
        _ => &[],
    }
}

/// The type ids a client may create.
pub(crate) const CREATABLE: &[&str] = &[
    "dict",
    "list",
    "Namespace",
    "Value",
    "Array",
    "Queue",
    "JoinableQueue",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
];

fn new_lock(reentrant: bool) -> Referent {
    Referent::Lock {
        reentrant,
        state: Blocking::new(LockState {
            count: 0,
            owner: None,
            owner_process: None,
        }),
    }
}

impl Referent {
    /// `typeid(*args, **kwds)`. `lookup` finds an object of this server a client names by a
    /// proxy (a condition's lock).
    pub(crate) fn create(
        typeid: &str,
        call: &Call<'_>,
        lookup: &dyn Fn(&Value) -> Option<std::sync::Arc<Referent>>,
    ) -> Res<Referent> {
        Ok(match typeid {
            "dict" => {
                let mut d = match call.arg(0, "\0") {
                    Some(v) => Dict::from_entries(Dict::pairs_of(v)?)?,
                    None => Dict::default(),
                };
                for (k, v) in call.kwds {
                    d.set(Value::Str(k.clone()), v.clone())?;
                }
                Referent::Dict(Mutex::new(d))
            }
            "list" => Referent::List(Mutex::new(match call.arg(0, "\0") {
                Some(v) => value::iterate(v)?,
                None => Vec::new(),
            })),
            "Namespace" => Referent::Namespace(Mutex::new(call.kwds.iter().cloned().collect())),
            "Value" => {
                let code = call.need(0, "typecode", "Value")?.clone();
                let v = call.need(1, "value", "Value")?.clone();
                Referent::Value(Mutex::new((code, v)))
            }
            "Array" => {
                let code = TypeCode::of(call.need(0, "typecode", "Array")?)?;
                let seq = call.need(1, "sequence", "Array")?;
                let items = match seq {
                    Value::Int(n) => {
                        // array.array(code, n) is not valid Python either, but
                        // multiprocessing.Array(code, n) is: n zeros.
                        let n =
                            usize::try_from(*n).map_err(|_| value_error("negative array size"))?;
                        vec![code.item(&Value::Int(0))?; n.min(1 << 24)]
                    }
                    other => value::iterate(other)?
                        .iter()
                        .map(|x| code.item(x))
                        .collect::<Res<_>>()?,
                };
                Referent::Array(Mutex::new((code, items)))
            }
            "Queue" | "JoinableQueue" => {
                let maxsize = match call.arg(0, "maxsize") {
                    None => 0,
                    Some(v) => value::index(v)?,
                };
                Referent::Queue(Blocking::new(QueueState {
                    items: VecDeque::new(),
                    maxsize: usize::try_from(maxsize).ok().filter(|&m| m > 0),
                    unfinished: 0,
                    shut: false,
                }))
            }
            "Lock" => new_lock(false),
            "RLock" => new_lock(true),
            "Semaphore" | "BoundedSemaphore" => {
                let v = match call.arg(0, "value") {
                    None => 1,
                    Some(v) => value::index(v)?,
                };
                let v = u64::try_from(v)
                    .map_err(|_| value_error("semaphore initial value must be >= 0"))?;
                Referent::Semaphore(Blocking::new(SemState {
                    value: v,
                    initial: v,
                    bound: (typeid == "BoundedSemaphore").then_some(v),
                    taken: HashMap::new(),
                }))
            }
            "Event" => Referent::Event(Blocking::new(false)),
            "Condition" => {
                let lock = match call.arg(0, "lock") {
                    None | Some(Value::None) => std::sync::Arc::new(new_lock(true)),
                    Some(v) => match lookup(v) {
                        Some(l) if matches!(*l, Referent::Lock { .. }) => l,
                        _ => {
                            return Err(type_error(
                                "a Condition's lock must be a Lock or RLock of this manager",
                            ));
                        }
                    },
                };
                Referent::Condition {
                    lock,
                    state: Blocking::new(CondState::default()),
                }
            }
            "Barrier" => {
                let parties = value::index(call.need(0, "parties", "Barrier")?)?;
                if parties < 1 {
                    return Err(value_error("parties must be >= 1"));
                }
                if call.arg(1, "action").is_some_and(|a| *a != Value::None) {
                    return Err(type_error(
                        "a Barrier's action cannot run on this server (it runs no Python)",
                    ));
                }
                let timeout = match call.arg(2, "timeout") {
                    None => None,
                    Some(t) => value::timeout(t)?,
                };
                Referent::Barrier(Blocking::new(BarrierState {
                    parties: parties as u64,
                    timeout,
                    ..BarrierState::default()
                }))
            }
            other => {
                return Err(Fail::Traceback(format!(
                    "KeyError: {}: no such type on this server",
                    repr(&Value::Str(other.into()))
                )));
            }
        })
    }

    /// What `#GETVALUE` (a proxy's `_getvalue()`) returns: a copy of the object, as CPython
    /// pickles it.
    pub(crate) fn getvalue(&self) -> Res {
        Ok(match self {
            Referent::Dict(d) => lock(d).value(),
            Referent::List(l) => Value::List(lock(l).clone()),
            Referent::Namespace(ns) => plain_object(
                "Namespace",
                lock(ns)
                    .iter()
                    .map(|(k, v)| (Value::Str(k.clone()), v.clone()))
                    .collect(),
            ),
            Referent::Value(v) => {
                let (code, value) = lock(v).clone();
                plain_object(
                    "Value",
                    vec![
                        (Value::Str("_typecode".into()), code),
                        (Value::Str("_value".into()), value),
                    ],
                )
            }
            Referent::Array(a) => {
                let a = lock(a);
                array_value(a.0, &a.1)
            }
            _ => {
                return Err(Fail::Traceback(
                    "TypeError: this object cannot be copied to a client".into(),
                ));
            }
        })
    }

    /// `repr(obj)` on the server (`__repr__`, and `__str__`, of a proxy).
    pub(crate) fn repr(&self) -> String {
        match self {
            Referent::Dict(d) => repr(&lock(d).value()),
            Referent::List(l) => repr(&Value::List(lock(l).clone())),
            Referent::Namespace(ns) => {
                let mut parts: Vec<String> = lock(ns)
                    .iter()
                    .filter(|(k, _)| !k.starts_with('_'))
                    .map(|(k, v)| format!("{k}={}", repr(v)))
                    .collect();
                parts.sort();
                format!("Namespace({})", parts.join(", "))
            }
            Referent::Value(v) => {
                let v = lock(v);
                format!("Value({}, {})", repr(&v.0), repr(&v.1))
            }
            Referent::Array(a) => {
                let a = lock(a);
                format!(
                    "array('{}', {})",
                    a.0.0 as char,
                    repr(&Value::List(a.1.clone()))
                )
            }
            Referent::Queue(_) => "<queue.Queue object>".into(),
            Referent::Lock { reentrant, state } => {
                let s = state.lock();
                let what = if *reentrant {
                    "_thread.RLock"
                } else {
                    "_thread.lock"
                };
                let locked = if s.count > 0 { "locked" } else { "unlocked" };
                format!("<{locked} {what} object>")
            }
            Referent::Semaphore(s) => format!("<threading.Semaphore: value={}>", s.lock().value),
            Referent::Event(e) => {
                format!(
                    "<threading.Event: {}>",
                    if *e.lock() { "set" } else { "unset" }
                )
            }
            Referent::Condition { .. } => "<Condition>".into(),
            Referent::Barrier(b) => {
                let b = b.lock();
                format!(
                    "<threading.Barrier: waiters={}/{}>",
                    b.waiting.len(),
                    b.parties
                )
            }
            Referent::Iterator { .. } => "<dict_keyiterator object>".into(),
        }
    }

    /// Runs `method`.
    pub(crate) fn call(self: &std::sync::Arc<Self>, method: &str, call: &Call<'_>) -> Res<Outcome> {
        match &**self {
            Referent::Dict(d) => dict_method(d, method, call, self),
            Referent::List(l) => list_method(l, method, call),
            Referent::Namespace(ns) => namespace_method(ns, method, call),
            Referent::Value(v) => match method {
                "get" => ret(lock(v).1.clone()),
                // The Rust clients' compare-and-set (not exposed to Python clients).
                "native_compare_set" => {
                    let (old, new) = (call.need(0, "old", method)?, call.need(1, "new", method)?);
                    let mut g = lock(v);
                    let same = value::eq(&g.1, old);
                    if same {
                        g.1 = new.clone();
                    }
                    ret(Value::Bool(same))
                }
                "set" => {
                    lock(v).1 = call.need(0, "value", "set")?.clone();
                    none()
                }
                _ => Err(no_method(method)),
            },
            Referent::Array(a) => array_method(a, method, call),
            Referent::Queue(q) => queue_method(q, method, call),
            Referent::Lock { reentrant, state } => match method {
                "acquire" => acquire_lock(*reentrant, state, call)
                    .map(Value::Bool)
                    .map(Outcome::Return),
                "release" => release_lock(*reentrant, state, call.conn).and_then(|_| none()),
                _ => Err(no_method(method)),
            },
            Referent::Semaphore(s) => semaphore_method(s, method, call),
            Referent::Event(e) => match method {
                "is_set" => ret(Value::Bool(*e.lock())),
                "set" => {
                    *e.lock() = true;
                    e.wake();
                    none()
                }
                "clear" => {
                    *e.lock() = false;
                    none()
                }
                "wait" => {
                    let t = match call.arg(0, "timeout") {
                        None => None,
                        Some(t) => value::timeout_or_poll(t)?,
                    };
                    let g = e.lock();
                    let (g, _) = e.wait_until(g, deadline(t), call, |set| *set);
                    ret(Value::Bool(*g))
                }
                _ => Err(no_method(method)),
            },
            Referent::Condition { lock, state } => condition_method(lock, state, method, call),
            Referent::Barrier(b) => barrier_method(b, method, call),
            Referent::Iterator { keys, dict, len } => match method {
                "__next__" => {
                    let mut keys = lock(keys);
                    if let Some(d) = dict.upgrade()
                        && let Referent::Dict(d) = &*d
                        && lock(d).0.len() != *len
                    {
                        // Emptied too, so that it stays failed (as Python's).
                        keys.by_ref().for_each(drop);
                        return Err(raise(
                            "RuntimeError",
                            "dictionary changed size during iteration",
                        ));
                    }
                    match keys.next() {
                        Some(v) => ret(v),
                        None => Err(raised("builtins", "StopIteration", vec![])),
                    }
                }
                _ => Err(no_method(method)),
            },
        }
    }

    /// Connection `conn` ended: an RLock it holds is given back (nobody else could release
    /// it: an RLock belongs to its thread, and a Python client's thread has a connection of its
    /// own).
    pub(crate) fn connection_ended(&self, conn: ConnId) {
        self.free_lock(conn, true);
    }

    /// A Lock or RLock (or a Condition's) held under `conn` is given back, however many times
    /// it was taken: a Rust client's connection ended (a Rust client has one connection per
    /// process, and its locks go with it, as with the Rust manager).
    pub(crate) fn give_back(&self, conn: ConnId) {
        self.free_lock(conn, false);
    }

    /// Frees this lock (or a Condition's) if `conn` holds it (only an RLock when `only_rlock`).
    fn free_lock(&self, conn: ConnId, only_rlock: bool) {
        match self {
            Referent::Lock { reentrant, state } if *reentrant || !only_rlock => {
                let mut s = state.lock();
                if s.owner == Some(conn) && s.count > 0 {
                    s.count = 0;
                    s.owner = None;
                    s.owner_process = None;
                    drop(s);
                    state.wake();
                }
            }
            Referent::Condition { lock, .. } => lock.free_lock(conn, only_rlock),
            _ => {}
        }
    }

    /// What a Rust client's proxy calls this object (`None`: a kind it has no proxy for, an
    /// iterator).
    pub(crate) fn native_kind(&self) -> Option<crate::manager::Kind> {
        use crate::manager::Kind;
        Some(match self {
            Referent::Dict(_) => Kind::Dict,
            Referent::List(_) => Kind::List,
            Referent::Namespace(_) => Kind::Namespace,
            Referent::Value(_) => Kind::Value,
            Referent::Array(_) => Kind::Array,
            Referent::Queue(q) => Kind::Queue {
                maxsize: q.lock().maxsize.map_or(0, |m| m as u64),
            },
            Referent::Lock { reentrant, .. } => Kind::Lock {
                reentrant: *reentrant,
            },
            Referent::Semaphore(s) => {
                let s = s.lock();
                Kind::Semaphore {
                    value: s.initial,
                    bounded: s.bound.is_some(),
                }
            }
            Referent::Event(_) => Kind::Event,
            Referent::Condition { .. } => Kind::Condition,
            Referent::Barrier(b) => Kind::Barrier {
                parties: b.lock().parties,
            },
            Referent::Iterator { .. } => return None,
        })
    }

    /// A copy of what a container holds, for a Rust client's snapshot: a dict's entries
    /// (`Value::Dict`), a list's or an array's items (`Value::List`), a namespace's
    /// (`Value::Dict` of names), a value's value.
    pub(crate) fn contents(&self) -> Option<Value> {
        Some(match self {
            Referent::Dict(d) => lock(d).value(),
            Referent::List(l) => Value::List(lock(l).clone()),
            Referent::Array(a) => Value::List(lock(a).1.clone()),
            Referent::Namespace(ns) => Value::Dict(
                lock(ns)
                    .iter()
                    .map(|(k, v)| (Value::Str(k.clone()), v.clone()))
                    .collect(),
            ),
            Referent::Value(v) => lock(v).1.clone(),
            _ => return None,
        })
    }

    /// A list's or an array's items `start..end` (clamped), for a Rust client's iteration.
    pub(crate) fn items_in(&self, start: u64, end: u64) -> Option<Vec<Value>> {
        let cut = |items: &[Value]| {
            let end = end.min(items.len() as u64) as usize;
            let start = (start.min(end as u64)) as usize;
            items[start..end].to_vec()
        };
        match self {
            Referent::List(l) => Some(cut(&lock(l))),
            Referent::Array(a) => Some(cut(&lock(a).1)),
            _ => None,
        }
    }

    /// A semaphore's slots free now (for the Rust clients' `len`).
    pub(crate) fn slots(&self) -> Option<u64> {
        match self {
            Referent::Semaphore(s) => Some(s.lock().value),
            _ => None,
        }
    }

    /// Whether this Lock (or a Condition's) is held by `process`.
    pub(crate) fn held_by(&self, process: (i32, u64)) -> bool {
        match self {
            Referent::Lock { state, .. } => {
                let s = state.lock();
                s.count > 0 && s.owner_process == Some(process)
            }
            Referent::Condition { lock, .. } => lock.held_by(process),
            Referent::Semaphore(sem) => sem.lock().taken.contains_key(&process),
            _ => false,
        }
    }

    /// `process` is gone: a Lock it took and nobody released is given back. (Not on a
    /// connection's end: a plain Lock may be taken by one thread and released by another, or
    /// by another process, and a Python thread that ends closes its connections.) Semaphore
    /// slots it took and did not give back itself are returned only when `slots` is set: a slot
    /// has no owner, and one process taking while another gives back is a common use (a bounded
    /// buffer), which returning them would break.
    pub(crate) fn process_died(&self, process: (i32, u64), slots: bool) {
        match self {
            Referent::Lock { state, .. } => {
                let mut s = state.lock();
                if s.count > 0 && s.owner_process == Some(process) {
                    s.count = 0;
                    s.owner = None;
                    s.owner_process = None;
                    drop(s);
                    state.wake();
                }
            }
            Referent::Condition { lock, .. } => lock.process_died(process, slots),
            Referent::Semaphore(sem) => {
                let mut s = sem.lock();
                let n = s.taken.remove(&process).unwrap_or(0);
                if slots && n > 0 {
                    let room = s.bound.map_or(u64::MAX, |b| b.saturating_sub(s.value));
                    s.value = s.value.saturating_add(n.min(room));
                    drop(s);
                    sem.wake();
                }
            }
            _ => {}
        }
    }

    /// Every value this object stores (for the proxies of this server they may hold).
    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Value)) {
        match self {
            Referent::Dict(d) => lock(d).0.values().for_each(|(k, v)| {
                f(k);
                f(v);
            }),
            Referent::List(l) => lock(l).iter().for_each(f),
            Referent::Namespace(ns) => lock(ns).values().for_each(f),
            Referent::Value(v) => f(&lock(v).1),
            Referent::Queue(q) => q.lock().items.iter().for_each(f),
            Referent::Iterator { keys, .. } => lock(keys).as_slice().iter().for_each(f),
            _ => {}
        }
    }

    /// Whether calling `method` may leave this connection holding a lock.
    pub(crate) fn takes(&self, method: &str) -> bool {
        matches!(method, "acquire" | "wait")
            && matches!(
                self,
                Referent::Lock { .. } | Referent::Condition { .. } | Referent::Semaphore(_)
            )
    }
}

/// Whether `method` only reads `obj` (its version stays: see `Entry::version`). Every other
/// call moves the version, whether or not it changed anything.
pub(crate) fn reads_only(obj: &Referent, method: &str) -> bool {
    let read =
        |names: &[&str]| names.contains(&method) || method == "__repr__" || method == "__str__";
    match obj {
        Referent::Dict(_) => read(&[
            "__contains__",
            "__getitem__",
            "__len__",
            "__iter__",
            "copy",
            "get",
            "items",
            "keys",
            "values",
        ]),
        Referent::List(_) => read(&["__contains__", "__getitem__", "__len__", "count", "index"]),
        Referent::Array(_) => read(&["__len__", "__getitem__"]),
        Referent::Namespace(_) => read(&["__getattribute__", "native_len"]),
        Referent::Value(_) => read(&["get"]),
        Referent::Queue(_) => read(&["qsize", "empty", "full"]),
        Referent::Event(_) => read(&["is_set"]),
        Referent::Barrier(_) => read(&["__getattribute__"]),
        Referent::Iterator { .. } => true,
        _ => false,
    }
}

/// A mutex's guard, also after a panic elsewhere poisoned it (the state is always whole: no
/// method leaves it half changed across a panic point).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `managers.<class>` object made by `__new__` with `state` as its `__dict__` (how pickle
/// carries `Namespace` and `Value`).
fn plain_object(class: &str, state: Vec<(Value, Value)>) -> Value {
    value::built("multiprocessing.managers", class, Value::Dict(state))
}

fn no_method(method: &str) -> Fail {
    Fail::Traceback(format!(
        "AttributeError: the object has no method {}",
        repr(&Value::Str(method.into()))
    ))
}

fn dict_method(
    d: &Mutex<Dict>,
    method: &str,
    call: &Call<'_>,
    this: &std::sync::Arc<Referent>,
) -> Res<Outcome> {
    let key = |name: &str| call.need(0, "key", name);
    let mut d = lock(d);
    match method {
        "__contains__" => ret(Value::Bool(d.0.contains_key(&Key::of(key(method)?)?))),
        "__getitem__" => {
            let k = key(method)?;
            match d.0.get(&Key::of(k)?) {
                Some((_, v)) => ret(v.clone()),
                None => Err(key_error(k)),
            }
        }
        "__setitem__" => {
            let v = call.need(1, "value", method)?;
            d.set(key(method)?.clone(), v.clone())?;
            none()
        }
        "__delitem__" => {
            let k = key(method)?;
            match d.0.shift_remove(&Key::of(k)?) {
                Some(_) => none(),
                None => Err(key_error(k)),
            }
        }
        "__len__" => ret(Value::Int(d.0.len() as i64)),
        "__iter__" => Ok(Outcome::Proxy(
            "Iterator",
            Referent::Iterator {
                keys: Mutex::new(
                    d.0.values()
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                        .into_iter(),
                ),
                dict: std::sync::Arc::downgrade(this),
                len: d.0.len(),
            },
        )),
        "clear" => {
            d.0.clear();
            none()
        }
        "copy" => ret(d.value()),
        "get" => {
            let k = key(method)?;
            let default = call.arg(1, "default").cloned().unwrap_or(Value::None);
            ret(d.0.get(&Key::of(k)?).map_or(default, |(_, v)| v.clone()))
        }
        "items" => ret(Value::List(
            d.0.values()
                .map(|(k, v)| Value::Tuple(vec![k.clone(), v.clone()]))
                .collect(),
        )),
        "keys" => ret(Value::List(d.0.values().map(|(k, _)| k.clone()).collect())),
        "values" => ret(Value::List(d.0.values().map(|(_, v)| v.clone()).collect())),
        "pop" => {
            let k = key(method)?;
            match d.0.shift_remove(&Key::of(k)?) {
                Some((_, v)) => ret(v),
                None => match call.arg(1, "default") {
                    Some(default) => ret(default.clone()),
                    None => Err(key_error(k)),
                },
            }
        }
        "popitem" => match d.0.pop() {
            Some((_, (k, v))) => ret(Value::Tuple(vec![k, v])),
            None => Err(key_error(&Value::Str(
                "popitem(): dictionary is empty".into(),
            ))),
        },
        "setdefault" => {
            let k = key(method)?;
            let default = call.arg(1, "default").cloned().unwrap_or(Value::None);
            let nk = Key::of(k)?;
            if let Some((_, v)) = d.0.get(&nk) {
                return ret(v.clone());
            }
            d.0.insert(nk, (k.clone(), default.clone()));
            ret(default)
        }
        "update" => {
            call.at_most(1, method)?;
            let mut pairs = match call.args.first() {
                Some(v) => Dict::pairs_of(v)?,
                None => Vec::new(),
            };
            pairs.extend(
                call.kwds
                    .iter()
                    .map(|(k, v)| (Value::Str(k.clone()), v.clone())),
            );
            for (k, v) in pairs {
                d.set(k, v)?;
            }
            none()
        }
        _ => Err(no_method(method)),
    }
}

fn list_method(l: &Mutex<Vec<Value>>, method: &str, call: &Call<'_>) -> Res<Outcome> {
    let mut l = lock(l);
    match method {
        "__len__" => ret(Value::Int(l.len() as i64)),
        "__contains__" => {
            let v = call.need(0, "value", method)?;
            ret(Value::Bool(l.iter().any(|x| value::eq(x, v))))
        }
        "__getitem__" => {
            let i = call.need(0, "index", method)?;
            if let Some(s) = value::as_slice(i) {
                let picked = value::slice_positions(s, l.len())?;
                return ret(Value::List(
                    picked.into_iter().map(|p| l[p].clone()).collect(),
                ));
            }
            let p = value::position(value::index(i)?, l.len(), "list")?;
            ret(l[p].clone())
        }
        "__setitem__" => {
            let i = call.need(0, "index", method)?;
            let v = call.need(1, "value", method)?;
            if let Some(s) = value::as_slice(i) {
                let items = value::iterate(v)
                    .map_err(|_| type_error("must assign iterable to extended slice"))?;
                let step_one = matches!(s[2], Value::None) || value::index(s[2])? == 1;
                if step_one {
                    // A plain slice may change the list's length: replace [start, stop).
                    let picked = value::slice_positions(s, l.len())?;
                    let start = match picked.first() {
                        Some(&p) => p,
                        None => {
                            let all = value::slice_positions(
                                [s[0], &Value::None, &Value::None],
                                l.len(),
                            )?;
                            all.first().copied().unwrap_or(l.len())
                        }
                    };
                    let end = start + picked.len();
                    l.splice(start..end, items);
                } else {
                    let picked = value::slice_positions(s, l.len())?;
                    if picked.len() != items.len() {
                        return Err(value_error(format!(
                            "attempt to assign sequence of size {} to extended slice of size {}",
                            items.len(),
                            picked.len()
                        )));
                    }
                    for (p, x) in picked.into_iter().zip(items) {
                        l[p] = x;
                    }
                }
                return none();
            }
            let p = value::position(value::index(i)?, l.len(), "list assignment")?;
            l[p] = v.clone();
            none()
        }
        "__delitem__" => {
            let i = call.need(0, "index", method)?;
            if let Some(s) = value::as_slice(i) {
                let picked: std::collections::HashSet<usize> =
                    value::slice_positions(s, l.len())?.into_iter().collect();
                let mut at = 0;
                l.retain(|_| {
                    at += 1;
                    !picked.contains(&(at - 1))
                });
                return none();
            }
            let p = value::position(value::index(i)?, l.len(), "list assignment")?;
            l.remove(p);
            none()
        }
        "__add__" => {
            let Value::List(other) = call.need(0, "value", method)? else {
                return Err(type_error(
                    "can only concatenate list (not another type) to list",
                ));
            };
            let mut out = l.clone();
            out.extend(other.iter().cloned());
            ret(Value::List(out))
        }
        "__mul__" | "__rmul__" | "__imul__" => {
            let n = value::index(call.need(0, "value", method)?)
                .map_err(|_| type_error("can't multiply sequence by non-int"))?;
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 || l.is_empty() {
                if method == "__imul__" {
                    l.clear();
                }
                return ret(Value::List(if method == "__imul__" || n == 0 {
                    Vec::new()
                } else {
                    l.clone()
                }));
            }
            // Bounded by what the result would take, not only its length (an item may be big).
            let item_bytes: usize = l.iter().map(value::size_hint).sum();
            if l.len().saturating_mul(n) > 1 << 26 || item_bytes.saturating_mul(n) > 256 << 20 {
                return Err(raise("MemoryError", "the list would be too big"));
            }
            let out: Vec<Value> = std::iter::repeat_n(l.iter().cloned(), n)
                .flatten()
                .collect();
            if method == "__imul__" {
                *l = out;
                ret(Value::List(l.clone()))
            } else {
                ret(Value::List(out))
            }
        }
        "__reversed__" => ret(value::reduce(
            "builtins",
            "reversed",
            vec![Value::List(l.clone())],
        )),
        "append" => {
            l.push(call.need(0, "object", method)?.clone());
            none()
        }
        "extend" => {
            let items = value::iterate(call.need(0, "iterable", method)?)?;
            l.extend(items);
            none()
        }
        "insert" => {
            let i = value::index(call.need(0, "index", method)?)?;
            let v = call.need(1, "object", method)?.clone();
            let len = l.len() as i64;
            let p = if i < 0 {
                (i.saturating_add(len)).max(0)
            } else {
                i.min(len)
            };
            l.insert(p as usize, v);
            none()
        }
        "count" => {
            let v = call.need(0, "value", method)?;
            ret(Value::Int(
                l.iter().filter(|x| value::eq(x, v)).count() as i64
            ))
        }
        "index" => {
            let v = call.need(0, "value", method)?;
            let len = l.len() as i64;
            let bound = |x: Option<&Value>, default: i64| -> Res<usize> {
                let i = match x {
                    None => default,
                    Some(x) => value::index(x)?,
                };
                let j = if i < 0 {
                    i.saturating_add(len).max(0)
                } else {
                    i.min(len)
                };
                Ok(j as usize)
            };
            let start = bound(call.arg(1, "start"), 0)?;
            let stop = bound(call.arg(2, "stop"), len)?;
            match (start..stop.max(start)).find(|&p| value::eq(&l[p], v)) {
                Some(p) => ret(Value::Int(p as i64)),
                None => Err(value_error(format!("{} is not in list", repr(v)))),
            }
        }
        "pop" => {
            if l.is_empty() {
                return Err(index_error("pop from empty list"));
            }
            let i = match call.arg(0, "index") {
                None => -1,
                Some(v) => value::index(v)?,
            };
            let p = value::position(i, l.len(), "pop")?;
            ret(l.remove(p))
        }
        "remove" => {
            let v = call.need(0, "value", method)?;
            match l.iter().position(|x| value::eq(x, v)) {
                Some(p) => {
                    l.remove(p);
                    none()
                }
                None => Err(value_error("list.remove(x): x not in list")),
            }
        }
        "reverse" => {
            l.reverse();
            none()
        }
        "sort" => {
            if !call.args.is_empty() {
                return Err(type_error("sort() takes no positional arguments"));
            }
            if call
                .arg(usize::MAX, "key")
                .is_some_and(|k| *k != Value::None)
            {
                return Err(type_error(
                    "sort(key=...) cannot run on this server (it runs no Python)",
                ));
            }
            let reverse = call.arg(usize::MAX, "reverse").is_some_and(value::truthy);
            value::sort(&mut l, reverse)?;
            none()
        }
        _ => Err(no_method(method)),
    }
}

fn namespace_method(
    ns: &Mutex<IndexMap<String, Value>>,
    method: &str,
    call: &Call<'_>,
) -> Res<Outcome> {
    let name = match call.need(0, "name", method)? {
        Value::Str(s) => s.clone(),
        other => {
            return Err(type_error(format!(
                "attribute name must be string, not '{}'",
                type_name(other)
            )));
        }
    };
    let missing = || {
        raise(
            "AttributeError",
            format!(
                "'Namespace' object has no attribute {}",
                repr(&Value::Str(name.clone()))
            ),
        )
    };
    let mut ns = lock(ns);
    match method {
        // The Rust clients' length and clear (not exposed to Python clients; `name` unused).
        "native_len" => ret(Value::Int(ns.len() as i64)),
        "native_clear" => {
            ns.clear();
            none()
        }
        // The Rust clients' remove, in one step: a 1-tuple of the value taken out, or `()`.
        "native_pop" => ret(match ns.shift_remove(&name) {
            Some(v) => Value::Tuple(vec![v]),
            None => Value::Tuple(vec![]),
        }),
        "__getattribute__" => ns
            .get(&name)
            .cloned()
            .map(Outcome::Return)
            .ok_or_else(missing),
        "__setattr__" => {
            let v = call.need(1, "value", method)?.clone();
            ns.insert(name, v);
            none()
        }
        "__delattr__" => match ns.shift_remove(&name) {
            Some(_) => none(),
            None => Err(missing()),
        },
        _ => Err(no_method(method)),
    }
}

fn array_method(a: &Mutex<(TypeCode, Vec<Value>)>, method: &str, call: &Call<'_>) -> Res<Outcome> {
    let mut a = lock(a);
    let code = a.0;
    match method {
        "__len__" => ret(Value::Int(a.1.len() as i64)),
        "__getitem__" => {
            let i = call.need(0, "index", method)?;
            if let Some(s) = value::as_slice(i) {
                let picked = value::slice_positions(s, a.1.len())?;
                let items: Vec<Value> = picked.into_iter().map(|p| a.1[p].clone()).collect();
                return ret(array_value(code, &items));
            }
            let p = value::position(value::index(i)?, a.1.len(), "array")?;
            ret(a.1[p].clone())
        }
        "__setitem__" => {
            let i = call.need(0, "index", method)?;
            let v = call.need(1, "value", method)?;
            if let Some(s) = value::as_slice(i) {
                let Some((their_code, items)) = array_of(v) else {
                    return Err(type_error(format!(
                        "can only assign array (not \"{}\") to array slice",
                        type_name(v)
                    )));
                };
                if their_code != code {
                    return Err(type_error("bad argument type for built-in operation"));
                }
                let picked = value::slice_positions(s, a.1.len())?;
                if picked.len() != items.len() {
                    // A Python array can grow or shrink by a plain slice; a shared one cannot
                    // (multiprocessing's fixed-size arrays refuse it too).
                    return Err(value_error("can only assign a slice of the same length"));
                }
                for (p, x) in picked.into_iter().zip(items) {
                    a.1[p] = x;
                }
                return none();
            }
            let p = value::position(value::index(i)?, a.1.len(), "array assignment")?;
            a.1[p] = code.item(v)?;
            none()
        }
        _ => Err(no_method(method)),
    }
}

fn empty() -> Fail {
    raised("_queue", "Empty", vec![])
}

fn full() -> Fail {
    raised("queue", "Full", vec![])
}

/// `queue.ShutDown` (Python 3.13 and later: only their clients shut queues down).
fn shut_down() -> Fail {
    raised("queue", "ShutDown", vec![])
}

fn queue_method(q: &Blocking<QueueState>, method: &str, call: &Call<'_>) -> Res<Outcome> {
    match method {
        "put" | "put_nowait" => {
            let item = call.need(0, "item", method)?.clone();
            let (block, t) = if method == "put" {
                block_timeout(call, 1, Rule::Queue)?
            } else {
                (false, None)
            };
            let g = q.lock();
            if g.shut {
                return Err(shut_down());
            }
            let room = |s: &mut QueueState| s.shut || s.maxsize.is_none_or(|m| s.items.len() < m);
            let (mut g, ok) = q.wait_until(g, until(block, t), call, room);
            if g.shut {
                return Err(shut_down());
            }
            if !ok {
                return Err(full());
            }
            g.items.push_back(item);
            g.unfinished += 1;
            drop(g);
            q.wake();
            none()
        }
        "get" | "get_nowait" => {
            let (block, t) = if method == "get" {
                block_timeout(call, 0, Rule::Queue)?
            } else {
                (false, None)
            };
            let g = q.lock();
            let (mut g, ok) =
                q.wait_until(g, until(block, t), call, |s| s.shut || !s.items.is_empty());
            if g.shut && g.items.is_empty() {
                return Err(shut_down());
            }
            if !ok {
                return Err(empty());
            }
            let item = g.items.pop_front().expect("not empty");
            drop(g);
            q.wake();
            ret(item)
        }
        "qsize" => ret(Value::Int(q.lock().items.len() as i64)),
        "empty" => ret(Value::Bool(q.lock().items.is_empty())),
        "full" => {
            let g = q.lock();
            ret(Value::Bool(g.maxsize.is_some_and(|m| g.items.len() >= m)))
        }
        "task_done" => {
            let mut g = q.lock();
            if g.unfinished == 0 {
                return Err(value_error("task_done() called too many times"));
            }
            g.unfinished -= 1;
            drop(g);
            q.wake();
            none()
        }
        "join" => {
            let g = q.lock();
            let (_g, _) = q.wait_until(g, None, call, |s| s.unfinished == 0);
            none()
        }
        // The Rust clients' join, with a timeout (not exposed to Python clients): whether every
        // item put is done.
        "native_join" => {
            let t = match call.arg(0, "timeout") {
                None => None,
                Some(t) => value::timeout(t)?,
            };
            let g = q.lock();
            let (_g, done) = q.wait_until(g, deadline(t), call, |s| s.unfinished == 0);
            ret(Value::Bool(done))
        }
        "shutdown" => {
            let immediate = call.arg(0, "immediate").is_some_and(value::truthy);
            let mut g = q.lock();
            g.shut = true;
            if immediate {
                let n = g.items.len() as u64;
                g.items.clear();
                g.unfinished = g.unfinished.saturating_sub(n);
            }
            drop(g);
            q.wake();
            none()
        }
        _ => Err(no_method(method)),
    }
}

/// How a method reads its timeout, as the CPython type it stands for does.
#[derive(Clone, Copy)]
enum Rule {
    /// `queue.Queue`: negative is `ValueError`.
    Queue,
    /// `_thread.lock`: -1 is no deadline, other negatives are `ValueError`.
    Lock,
    /// `threading.Semaphore`: negative (or NaN) means do not wait.
    Poll,
}

/// `(block=True, timeout=None)` from argument `first` on.
fn block_timeout(call: &Call<'_>, first: usize, rule: Rule) -> Res<(bool, Option<Duration>)> {
    let block = call.arg(first, "block").is_none_or(value::truthy);
    let timeout = match call.arg(first + 1, "timeout") {
        None => None,
        Some(t) => match rule {
            Rule::Queue => value::timeout(t)?,
            Rule::Poll => value::timeout_or_poll(t)?,
            Rule::Lock => match t {
                Value::Int(-1) => None,
                Value::Float(f) if *f == -1.0 => None,
                t => {
                    value::timeout(t).map_err(|_| value_error("timeout value must be positive"))?
                }
            },
        },
    };
    Ok((block, timeout))
}

fn acquire_lock(reentrant: bool, state: &Blocking<LockState>, call: &Call<'_>) -> Res<bool> {
    let (block, t) = block_timeout(call, 0, Rule::Lock)?;
    if !block && t.is_some() {
        return Err(value_error(
            "can't specify a timeout for a non-blocking call",
        ));
    }
    let g = state.lock();
    let conn = call.conn;
    let free = |s: &mut LockState| s.count == 0 || (reentrant && s.owner == Some(conn));
    let (mut g, ok) = state.wait_until(g, until(block, t), call, free);
    if ok {
        g.count += 1;
        g.owner = Some(conn);
        g.owner_process = call.process;
    }
    Ok(ok)
}

fn release_lock(reentrant: bool, state: &Blocking<LockState>, conn: ConnId) -> Res<()> {
    let mut g = state.lock();
    if g.count == 0 || (reentrant && g.owner != Some(conn)) {
        return Err(raise(
            "RuntimeError",
            if reentrant {
                "cannot release un-acquired lock"
            } else {
                "release unlocked lock"
            },
        ));
    }
    g.count -= 1;
    if g.count == 0 {
        g.owner = None;
        g.owner_process = None;
        drop(g);
        state.wake();
    }
    Ok(())
}

fn semaphore_method(s: &Blocking<SemState>, method: &str, call: &Call<'_>) -> Res<Outcome> {
    match method {
        "acquire" => {
            let (block, t) = block_timeout(call, 0, Rule::Poll)?;
            if !block && t.is_some() {
                return Err(value_error(
                    "can't specify timeout for non-blocking acquire",
                ));
            }
            let g = s.lock();
            let (mut g, ok) = s.wait_until(g, until(block, t), call, |st| st.value > 0);
            if ok {
                g.value -= 1;
                if let Some(p) = call.process {
                    *g.taken.entry(p).or_insert(0) += 1;
                }
            }
            ret(Value::Bool(ok))
        }
        "release" => {
            let n = match call.arg(0, "n") {
                None => 1,
                Some(v) => value::index(v)?,
            };
            let n = u64::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| value_error("n must be one or more"))?;
            let mut g = s.lock();
            let Some(value) = g.value.checked_add(n) else {
                return Err(raise(
                    "OverflowError",
                    "the semaphore's value would overflow",
                ));
            };
            if g.bound.is_some_and(|b| value > b) {
                return Err(value_error("Semaphore released too many times"));
            }
            g.value = value;
            // What this process gives back counts against what it took (never another's).
            if let Some(p) = call.process
                && let Some(t) = g.taken.get_mut(&p)
            {
                *t = t.saturating_sub(n);
                if *t == 0 {
                    g.taken.remove(&p);
                }
            }
            drop(g);
            s.wake();
            none()
        }
        _ => Err(no_method(method)),
    }
}

/// Whether `conn` holds `lock` (a Condition's), as Python's `Condition._is_owned`.
fn owns(lock: &Referent, conn: ConnId) -> bool {
    match lock {
        Referent::Lock {
            reentrant: true,
            state,
        } => state.lock().owner == Some(conn),
        Referent::Lock { state, .. } => state.lock().count > 0,
        _ => false,
    }
}

fn condition_method(
    lock_obj: &std::sync::Arc<Referent>,
    state: &Blocking<CondState>,
    method: &str,
    call: &Call<'_>,
) -> Res<Outcome> {
    let Referent::Lock {
        reentrant,
        state: lock_state,
    } = &**lock_obj
    else {
        return Err(Fail::Traceback("a Condition without a lock".into()));
    };
    match method {
        "acquire" => {
            acquire_lock(*reentrant, lock_state, call).map(|b| Outcome::Return(Value::Bool(b)))
        }
        "release" => release_lock(*reentrant, lock_state, call.conn).and_then(|_| none()),
        "wait" => {
            if !owns(lock_obj, call.conn) {
                return Err(raise("RuntimeError", "cannot wait on un-acquired lock"));
            }
            let t = match call.arg(0, "timeout") {
                None => None,
                Some(t) => value::timeout_or_poll(t)?,
            };
            // Join the waiters, then let go of the lock wholly (an RLock's every level).
            let ticket = {
                let mut s = state.lock();
                s.next += 1;
                let t = s.next;
                s.waiting.push_back(t);
                t
            };
            let saved = {
                let mut l = lock_state.lock();
                let saved = l.count;
                l.count = 0;
                l.owner = None;
                l.owner_process = None;
                saved
            };
            lock_state.wake();
            let g = state.lock();
            let (mut g, notified) =
                state.wait_until(g, deadline(t), call, |s| s.notified.contains(&ticket));
            g.notified.retain(|&x| x != ticket);
            g.waiting.retain(|&x| x != ticket);
            drop(g);
            // Take the lock back (as Python's, however long that takes), unless the client is
            // gone: then it is not taken at all.
            let l = lock_state.lock();
            let conn = call.conn;
            let (mut l, got) = lock_state.wait_until(l, None, call, |s| s.count == 0);
            if got {
                l.count = saved;
                l.owner = Some(conn);
                l.owner_process = call.process;
            }
            ret(Value::Bool(notified))
        }
        "notify" | "notify_all" => {
            if !owns(lock_obj, call.conn) {
                return Err(raise("RuntimeError", "cannot notify on un-acquired lock"));
            }
            let n = if method == "notify_all" {
                usize::MAX
            } else {
                match call.arg(0, "n") {
                    None => 1,
                    Some(v) => usize::try_from(value::index(v)?).unwrap_or(0),
                }
            };
            let mut s = state.lock();
            for _ in 0..n {
                match s.waiting.pop_front() {
                    Some(t) => s.notified.push(t),
                    None => break,
                }
            }
            drop(s);
            state.wake();
            none()
        }
        _ => Err(no_method(method)),
    }
}

fn broken_barrier() -> Fail {
    raised("threading", "BrokenBarrierError", vec![])
}

fn barrier_method(b: &Blocking<BarrierState>, method: &str, call: &Call<'_>) -> Res<Outcome> {
    match method {
        "__getattribute__" => {
            let g = b.lock();
            match call.need(0, "name", method)? {
                Value::Str(s) if s == "parties" => ret(Value::Int(g.parties as i64)),
                Value::Str(s) if s == "n_waiting" => ret(Value::Int(g.waiting.len() as i64)),
                Value::Str(s) if s == "broken" => ret(Value::Bool(g.broken)),
                other => Err(raise(
                    "AttributeError",
                    format!("'Barrier' object has no attribute {}", repr(other)),
                )),
            }
        }
        "wait" => {
            let t = match call.arg(0, "timeout") {
                None | Some(Value::None) => None,
                Some(t) => value::timeout_or_poll(t)?,
            };
            let mut g = b.lock();
            let t = t.or(g.timeout);
            if g.broken {
                return Err(broken_barrier());
            }
            g.next += 1;
            let ticket = g.next;
            let index = g.waiting.len() as u64;
            g.waiting.push(ticket);
            if g.waiting.len() as u64 == g.parties {
                // The last party: the round passes, each waiter with its index.
                let round = std::mem::take(&mut g.waiting);
                for (i, w) in round.into_iter().enumerate() {
                    if w != ticket {
                        g.ended.insert(w, Some(i as u64));
                    }
                }
                drop(g);
                b.wake();
                return ret(Value::Int(index as i64));
            }
            let (mut g, done) =
                b.wait_until(g, deadline(t), call, |s| s.ended.contains_key(&ticket));
            if !done {
                // Timed out (or the client went): the barrier breaks for everyone waiting.
                g.broken = true;
                for w in std::mem::take(&mut g.waiting) {
                    if w != ticket {
                        g.ended.insert(w, None);
                    }
                }
                drop(g);
                b.wake();
                return Err(broken_barrier());
            }
            match g.ended.remove(&ticket).flatten() {
                Some(i) => ret(Value::Int(i as i64)),
                None => Err(broken_barrier()),
            }
        }
        "abort" | "reset" => {
            let mut g = b.lock();
            for w in std::mem::take(&mut g.waiting) {
                g.ended.insert(w, None);
            }
            g.broken = method == "abort";
            drop(g);
            b.wake();
            none()
        }
        _ => Err(no_method(method)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(args: &'a [Value], kwds: &'a [(String, Value)]) -> Call<'a> {
        Call {
            conn: 1,
            args,
            kwds,
            process: Some((1, 1)),
            gone: &|| false,
        }
    }

    fn run(r: &std::sync::Arc<Referent>, method: &str, args: &[Value]) -> Res<Value> {
        match r.call(method, &call(args, &[]))? {
            Outcome::Return(v) => Ok(v),
            Outcome::Proxy(..) => Ok(Value::Str("proxy".into())),
        }
    }

    #[test]
    fn arrays_pack_as_python_packs() {
        let c = TypeCode(b'i');
        let items = vec![Value::Int(-1), Value::Int(2)];
        let b = c.encode_items(&items);
        assert_eq!(b, [0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0]);
        assert_eq!(c.decode_items(&b).unwrap(), items);
        assert!(TypeCode(b'B').item(&Value::Int(256)).is_err());
        let q = TypeCode(b'Q');
        let top = Value::BigInt(num_bigint::BigInt::from(u64::MAX));
        assert_eq!(q.item(&top).unwrap(), top);
        assert_eq!(
            q.decode_items(&q.encode_items(std::slice::from_ref(&top)))
                .unwrap(),
            vec![top]
        );
        assert!(
            q.item(&Value::BigInt(num_bigint::BigInt::from(u64::MAX) + 1))
                .is_err()
        );
        assert!(TypeCode(b'i').item(&Value::Float(1.5)).is_err());
    }

    #[test]
    fn a_list_does_what_python_lists_do() {
        let l = std::sync::Arc::new(
            Referent::create(
                "list",
                &call(&[Value::List(vec![Value::Int(3), Value::Int(1)])], &[]),
                &|_| None,
            )
            .unwrap(),
        );
        run(&l, "append", &[Value::Int(2)]).unwrap();
        assert_eq!(
            run(&l, "__getitem__", &[Value::Int(-1)]).unwrap(),
            Value::Int(2)
        );
        assert!(run(&l, "__getitem__", &[Value::Int(3)]).is_err());
        run(&l, "sort", &[]).unwrap();
        assert_eq!(
            run(&l, "index", &[Value::Float(2.0)]).unwrap(),
            Value::Int(1)
        );
        assert_eq!(run(&l, "pop", &[]).unwrap(), Value::Int(3));
        assert_eq!(run(&l, "__len__", &[]).unwrap(), Value::Int(2));
    }

    #[test]
    fn a_lock_is_given_back_when_the_process_that_took_it_dies() {
        let l = std::sync::Arc::new(new_lock(false));
        assert_eq!(run(&l, "acquire", &[]).unwrap(), Value::Bool(true));
        assert_eq!(
            run(&l, "acquire", &[Value::Bool(false)]).unwrap(),
            Value::Bool(false)
        );
        l.connection_ended(1); // a plain Lock outlives its connection
        l.process_died((2, 2), true); // and another process's death
        assert_eq!(
            run(&l, "acquire", &[Value::Bool(false)]).unwrap(),
            Value::Bool(false)
        );
        l.process_died((1, 1), false);
        assert_eq!(
            run(&l, "acquire", &[Value::Bool(false)]).unwrap(),
            Value::Bool(true)
        );
    }
}
