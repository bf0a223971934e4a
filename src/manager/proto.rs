//! The manager's wire: what a client asks and what the server answers, in the crate's codec
//! (bincode) inside the connection's frames, after the key handshake.
//!
//! Every request carries an id the client chose; the answer carries it back. A client sends
//! requests without waiting for answers (many threads of one process share one connection), and a
//! request that has to wait on the server (a lock held by another client) is answered when it can
//! be, so answers may come in any order. Keys and values of the containers travel already encoded
//! (`Bytes`): the server stores and compares them as bytes and never decodes a user's type.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// An encoded key or value.
pub(crate) type Bytes = ByteBuf;

/// A shared object, as the server numbers them.
pub(crate) type ObjectId = u64;

/// One request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: u64,
    pub(crate) op: Op,
}

/// What a request asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    /// A new object of `kind`, named (any client may look it up) or not (freed when its last
    /// holder lets go or dies). A name already taken is an error, unless `existing` allows the
    /// object of that name (of the same kind) to be returned instead.
    Create {
        kind: Kind,
        name: Option<String>,
        existing: bool,
        /// A value's first value.
        init: Option<Bytes>,
        /// An array's items (its length for good).
        items: Vec<Bytes>,
    },
    /// A new value of the served type called `type_name`, made from `init`.
    CreateServed { type_name: String, init: Bytes },
    /// The object called `name`.
    Lookup { name: String },
    /// This client takes a hold on `object` (a proxy it received from another process), which
    /// must be what the proxy is for.
    Attach { object: ObjectId, expect: Expect },
    /// This client lets go of one hold on `object`.
    Release { object: ObjectId },
    /// One call on one object.
    Call { object: ObjectId, call: Call },
    /// Calls in order, in one round trip. `atomic`: all of them or none, with no other client's
    /// call in between, and only if each object in `expect` is still at its version.
    Batch {
        calls: Vec<(ObjectId, Call)>,
        atomic: bool,
        expect: Vec<(ObjectId, u64)>,
    },
    /// The server's objects and clients.
    Status,
    /// Stop the server (its clients' connections end).
    Shutdown,
    /// A connection's first request: how the server stores keys and values (`Reply::Values`).
    /// It always goes out with id 0, so that its bytes are fixed: a server that also speaks
    /// Python's protocol tells it from a pickle (which never starts with a zero byte).
    Hello,
}

/// How a server stores the keys and values of its objects, and so how a client encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Values {
    /// The crate's codec (the Rust server: it compares them as bytes).
    Crate,
    /// Pickles (the server for Python clients, which holds them as Python values, with
    /// Python's equality).
    Pickle,
}

/// The kinds of object a manager serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A dict ([`Dict`](super::Dict)).
    Dict,
    /// A list ([`List`](super::List)).
    List,
    /// A namespace of named values ([`Namespace`](super::Namespace)).
    Namespace,
    /// One value ([`Value`](super::Value)).
    Value,
    /// A lock ([`Lock`](super::Lock)); `reentrant`: an RLock.
    Lock {
        /// Whether its holder may acquire it again (Python's `RLock`).
        reentrant: bool,
    },
    /// A semaphore ([`Semaphore`](super::Semaphore)).
    Semaphore {
        /// Its starting value.
        value: u64,
        /// Whether a release past the starting value is an error (Python's `BoundedSemaphore`).
        bounded: bool,
    },
    /// An event ([`Event`](super::Event)).
    Event,
    /// A condition ([`Condition`](super::Condition)) with its own reentrant lock.
    Condition,
    /// A fixed-length array ([`Array`](super::Array)): a list whose length never changes.
    Array,
    /// A barrier ([`Barrier`](super::Barrier)) for this many parties.
    Barrier {
        /// How many must wait before all go on.
        parties: u64,
    },
    /// A value of a type of your own ([`Served`](super::Served)).
    Served,
    /// A queue ([`Queue`](super::Queue)).
    Queue {
        /// Items it holds at most (0: no limit).
        maxsize: u64,
    },
}

/// What a proxy that attaches is a proxy of: the object must be one (a `Lock` proxy fits a lock,
/// an RLock and a condition's lock; a `Served` proxy only a value of its type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Expect {
    /// Anything (a forked child's copy of a proxy its parent made).
    Any,
    Dict,
    List,
    Namespace,
    Value,
    Lock,
    Semaphore,
    Event,
    Condition,
    Array,
    Barrier,
    Queue,
    /// A value of the served type of this name.
    Served(String),
}

/// A call on one object. Indices are Python's: negative ones count from the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Call {
    /// How many entries or items.
    Len,
    /// Removes every entry or item.
    Clear,
    /// The whole content and its version, in one answer.
    Snapshot,
    /// The object's version (each change adds one).
    Version,
    /// One call of a served object (its type's encoded request).
    Served(Bytes),
    /// Waits until the object's version is past `since`, at most `timeout_us`: answers the
    /// version then (or `Bool(false)` at the deadline).
    Watch {
        since: u64,
        timeout_us: Option<u64>,
    },

    DictGet(Bytes),
    DictSet(Bytes, Bytes),
    /// Sets `key` to `value` only if it has none; answers the value it has afterwards.
    DictSetDefault(Bytes, Bytes),
    DictRemove(Bytes),
    DictContains(Bytes),
    DictKeys,
    DictValues,
    DictUpdate(Vec<(Bytes, Bytes)>),

    ListAppend(Bytes),
    ListExtend(Vec<Bytes>),
    ListInsert(i64, Bytes),
    ListGet(i64),
    ListSet(i64, Bytes),
    ListPop(Option<i64>),
    /// Removes the first item equal to this one.
    ListRemove(Bytes),
    /// Items `start..end` (clamped), for iteration in chunks.
    ListRange(u64, u64),

    NsGet(String),
    NsSet(String, Bytes),
    NsRemove(String),

    ValueGet,
    ValueSet(Bytes),
    /// Sets the value to the second if it is the first; answers whether it did.
    ValueCompareSet(Bytes, Bytes),

    /// Takes the lock for `thread` (the client's token for its calling thread), waiting at most
    /// `timeout_us` microseconds (`None`: as long as it takes); answers whether it got it.
    LockAcquire {
        timeout_us: Option<u64>,
        thread: u64,
    },
    /// Releases the lock (an RLock only for the thread that holds it).
    LockRelease {
        thread: u64,
    },

    /// Waits on a condition whose lock `thread` holds: releases it, waits for a notify (at most
    /// `timeout_us`), takes it back; answers whether it was notified.
    CondWait {
        timeout_us: Option<u64>,
        thread: u64,
    },
    /// Wakes at most `n` waiters of a condition whose lock `thread` holds.
    CondNotify {
        n: u64,
        thread: u64,
    },

    /// Takes a slot, waiting at most `timeout_us` (`None`: as long as it takes); whether it did.
    SemAcquire {
        timeout_us: Option<u64>,
    },
    /// Gives a slot back (to the first waiter, if one waits).
    SemRelease,

    /// Puts an item, waiting at most `timeout_us` for room (`None`: as long as it takes).
    QueuePut {
        item: Bytes,
        timeout_us: Option<u64>,
    },
    /// Takes the oldest item, waiting at most `timeout_us` for one.
    QueueGet {
        timeout_us: Option<u64>,
    },
    /// Waits until the barrier's parties all wait, at most `timeout_us`; answers this party's
    /// index (`Len`), or breaks the barrier at the deadline.
    BarrierWait {
        timeout_us: Option<u64>,
    },
    /// Breaks the barrier: waiting parties and later waits fail until a reset.
    BarrierAbort,
    /// Mends the barrier: parties waiting fail (as Python's), later waits work.
    BarrierReset,
    /// Its parties, the parties waiting now, and whether it is broken (`Reply::Barrier`).
    BarrierState,
    /// One item taken earlier is done (`JoinableQueue.task_done`).
    QueueTaskDone,
    /// Waits until every item put is done, at most `timeout_us`; whether they are.
    QueueJoin {
        timeout_us: Option<u64>,
    },

    EventSet,
    EventClear,
    EventIsSet,
    /// Waits until the event is set, at most `timeout_us`; whether it is set.
    EventWait {
        timeout_us: Option<u64>,
    },
}

impl Call {
    /// Whether this call may go in a batch: not one that waits, hands a lock or slot on, or
    /// wakes waiters (a batch runs in one go, with no other client's call between).
    pub(crate) fn goes_in_a_batch(&self) -> bool {
        !matches!(
            self,
            Call::LockAcquire { .. }
                | Call::LockRelease { .. }
                | Call::SemAcquire { .. }
                | Call::SemRelease
                | Call::EventSet
                | Call::EventWait { .. }
                | Call::QueuePut { .. }
                | Call::QueueGet { .. }
                | Call::QueueTaskDone
                | Call::QueueJoin { .. }
                | Call::Watch { .. }
                | Call::BarrierWait { .. }
                | Call::BarrierAbort
                | Call::BarrierReset
                | Call::CondWait { .. }
                | Call::CondNotify { .. }
                | Call::Served(_)
        )
    }
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Unit,
    Bool(bool),
    Len(u64),
    Object {
        id: ObjectId,
        kind: Kind,
    },
    Bytes(Bytes),
    Maybe(Option<Bytes>),
    Many(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    Named(Vec<(String, Bytes)>),
    Version(u64),
    /// A snapshot: the version and the content (`Raw` of a list or dict, `Many` of a value,
    /// `Named` of a namespace).
    Snapshot(u64, Box<Reply>),
    /// A container's content as the server wrote it from its own storage without copying each
    /// entry: a u64 count, then each item (a list's) or key and value (a dict's) as a u64 length
    /// and that many bytes, all little-endian. The client reads its types straight from it.
    Raw(Bytes),
    Batch(Vec<Result<Reply, super::RemoteError>>),
    Barrier {
        parties: u64,
        waiting: u64,
        broken: bool,
    },
    Status(super::Status),
    /// The answer to `Hello`.
    Values(Values),
}

/// The bytes of a `Hello` request, as a client sends it (encoded once: the server for Python
/// clients compares every connection's first message with them).
pub(crate) fn hello() -> &'static [u8] {
    static HELLO: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HELLO.get_or_init(|| {
        crate::codec::encode(&Request {
            id: 0,
            op: Op::Hello,
        })
        .map(|(bytes, _)| bytes)
        .unwrap_or_default()
    })
}

/// The chunks of a fuzz input: each a 2-byte little-endian length and that many bytes (cut short
/// at the end of the input).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_chunks(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (chunk, tail) = rest[2..].split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// One answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) id: u64,
    pub(crate) result: Result<Reply, super::RemoteError>,
}
