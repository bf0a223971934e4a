//! Python's pickle format, for values exchanged with Python processes: a decoder with hard limits
//! and an encoder, both written here.
//!
//! # Why a codec of our own
//! A pickle is a program for a small stack machine, and the machine CPython runs imports and calls
//! whatever the program names. The existing Rust crate refuses calls but has no limits: an 80 KB
//! pickle that references one memoized list 20 000 times expands to gigabytes and aborts the process,
//! two million `MARK`s do the same, and 100 000 nested lists overflow the stack (see
//! `shared/research/pool-manager-pickle.md`). So this decoder:
//!
//! - builds containers in an arena, so that memo references share, as in Python (a list memoized
//!   when empty and filled later is seen filled through every reference), and turns the arena into
//!   a [`Value`] tree at the end, counting every node it writes: a shared value referenced many
//!   times counts every time, so a memo bomb hits [`Limits::max_nodes`] instead of memory;
//! - bounds the mark stack, the value stack, the memo, the nesting depth, and every length prefix by
//!   the bytes that are actually left, each a typed [`PickleError`];
//! - never imports or calls: `GLOBAL`/`STACK_GLOBAL` give a [`Value::Global`] naming the object,
//!   and `REDUCE`, `NEWOBJ` and `BUILD` give a [`Value::Object`] with the callable, its arguments and
//!   its state, for the caller to interpret (or not) — except the few globals CPython itself uses for
//!   plain values (`builtins.set`, `frozenset`, `bytearray`, `_codecs.encode` for protocol 2's bytes,
//!   `copyreg._reconstructor` is left as an object);
//! - refuses what has no meaning outside one Python process: persistent ids, the extension
//!   registry, out-of-band buffers.
//!
//! The encoder writes protocol 4 (read by every Python 3.4 and later, so every supported Python),
//! from a [`Value`] or from any serde value ([`to_vec`]); [`from_slice`] reads any serde type back.

mod de;
mod ser;
mod serde_de;
mod serde_ser;

pub use de::{decode, decode_with};
pub use ser::encode;
pub use serde_de::{SERDE_MAX_DEPTH, from_slice, from_slice_with};
pub use serde_ser::to_vec;

use num_bigint::BigInt;
use thiserror::Error;

/// A Python value, as a pickle carries it.
///
/// Dict entries keep their order (a `Vec` of pairs: Python's dicts are ordered and may have keys of
/// any type); tuples, lists, sets and frozensets stay apart, and so do `bytes` and `bytearray`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An `int` that fits 64 bits.
    Int(i64),
    /// A larger `int`.
    BigInt(BigInt),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `bytearray`.
    ByteArray(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, in its order.
    Dict(Vec<(Value, Value)>),
    /// A `set`.
    Set(Vec<Value>),
    /// A `frozenset`.
    FrozenSet(Vec<Value>),
    /// A global the pickle names (a class or a function), never imported.
    Global {
        /// Its module, such as `builtins`.
        module: String,
        /// Its name, such as `KeyError`.
        name: String,
    },
    /// What `callable(*args)` (`REDUCE`), `cls.__new__(cls, *args)` (`NEWOBJ`) or a `BUILD` on it
    /// would make, not made (boxed: objects are rare, and every other value stays small).
    Object(Box<Object>),
}

/// A Python object a pickle describes: the callable that would make it, its arguments, and what
/// the pickle then did to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Usually a [`Value::Global`].
    pub callable: Value,
    /// Usually a [`Value::Tuple`].
    pub args: Value,
    /// Keyword arguments (`NEWOBJ_EX`), if any.
    pub kwargs: Option<Value>,
    /// The state of `BUILD`s, in order, if any.
    pub state: Vec<Value>,
    /// Items `APPEND`ed to it (a list subclass's), in order.
    pub items: Vec<Value>,
    /// Entries `SETITEM`ed on it (a dict subclass's, such as `OrderedDict`), in order.
    pub entries: Vec<(Value, Value)>,
    /// Whether it was made with `NEWOBJ` (`cls.__new__`) rather than called.
    pub new: bool,
}

impl Value {
    /// A global, as `Value::Global`.
    pub fn global(module: &str, name: &str) -> Value {
        Value::Global {
            module: module.into(),
            name: name.into(),
        }
    }
}

/// How much a decoder accepts (each past its limit is a [`PickleError::Limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nodes in the decoded value, every reference to a shared value counted again (default
    /// 10 000 000).
    pub max_nodes: u64,
    /// Nesting depth of the decoded value (default 1 000, CPython's own recursion limit).
    pub max_depth: usize,
    /// Open `MARK`s at once (default 10 000).
    pub max_marks: usize,
    /// Values on the machine's stack at once (default 1 000 000).
    pub max_stack: usize,
    /// Memo entries (default 1 000 000).
    pub max_memo: usize,
    /// Bytes the decoder may use: text and binary data in the decoded value (every reference to
    /// a shared one counted again), copies made while decoding, and the decoder's own nodes (about
    /// 100 bytes each). Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 10_000_000,
            max_depth: 1_000,
            max_marks: 10_000,
            max_stack: 1_000_000,
            max_memo: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Why a pickle could not be read or written.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum PickleError {
    /// The input ended inside an opcode or before `STOP`.
    #[error("the pickle ends early (at byte {0})")]
    Truncated(usize),
    /// An opcode this decoder does not know (or does not take).
    #[error("unknown or refused opcode 0x{op:02x} at byte {at}{}", if .why.is_empty() { String::new() } else { format!(": {}", .why) })]
    Opcode {
        /// The opcode.
        op: u8,
        /// Where.
        at: usize,
        /// Why it is refused, if known.
        why: &'static str,
    },
    /// A well-formed opcode used where it makes no sense (an empty stack, a missing mark, a memo
    /// key never stored, a `SETITEM` on a non-dict, a bad text literal, ...).
    #[error("malformed pickle at byte {at}: {why}")]
    Malformed {
        /// Where.
        at: usize,
        /// What.
        why: String,
    },
    /// A limit of [`Limits`] was reached.
    #[error("the pickle exceeds the decoder's limit on {what} ({limit})")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The value refers to itself (a list that contains itself): a tree cannot hold it.
    #[error("the pickle holds a value that contains itself")]
    Recursive,
    /// The bytes were a value, but not of the type asked for ([`from_slice`]).
    #[error("the pickled value does not fit the type: {0}")]
    Type(String),
    /// A value that pickle cannot carry ([`to_vec`]: for example a map key that is not hashable
    /// in Python is fine, but a `u128` past 2^127 is).
    #[error("cannot pickle the value: {0}")]
    Unsupported(String),
}

impl serde::de::Error for PickleError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PickleError::Type(msg.to_string())
    }

    // serde's own forms quote the whole value: a peer's gigabyte string would become a gigabyte
    // message. These quote its start.
    fn invalid_type(unexp: serde::de::Unexpected<'_>, exp: &dyn serde::de::Expected) -> Self {
        PickleError::Type(format!("invalid type: {}, expected {exp}", Quoted(unexp)))
    }

    fn invalid_value(unexp: serde::de::Unexpected<'_>, exp: &dyn serde::de::Expected) -> Self {
        PickleError::Type(format!("invalid value: {}, expected {exp}", Quoted(unexp)))
    }
}

/// An unexpected value in an error message, a long str or bytes cut to its first 64 bytes.
struct Quoted<'a>(serde::de::Unexpected<'a>);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use serde::de::Unexpected;
        const KEEP: usize = 64;
        match self.0 {
            Unexpected::Str(s) if s.len() > KEEP => {
                let cut = (0..=KEEP)
                    .rev()
                    .find(|&i| s.is_char_boundary(i))
                    .unwrap_or(0);
                write!(f, "{}... ({} bytes)", Unexpected::Str(&s[..cut]), s.len())
            }
            Unexpected::Bytes(b) if b.len() > KEEP => {
                write!(
                    f,
                    "{}... ({} bytes)",
                    Unexpected::Bytes(&b[..KEEP]),
                    b.len()
                )
            }
            other => write!(f, "{other}"),
        }
    }
}

impl serde::ser::Error for PickleError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PickleError::Unsupported(msg.to_string())
    }
}

#[cfg(test)]
mod tests;
