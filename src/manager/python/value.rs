//! Python's semantics for the values a Python client sends: which keys are the same key, which
//! values are equal, how they order, how an index or a slice picks items, what `repr` shows, and
//! the exceptions a method raises.
//!
//! The server never runs Python, so these are written out here for the values a pickle can carry
//! ([`Value`]). Objects of the client's own classes ([`Value::Object`]) are kept as they came and
//! compare by their pickled form; that is Python's default identity semantics, seen from outside.

use crate::pickle::{self, Object, Value};
use num_bigint::BigInt;
use std::cmp::Ordering;
use std::fmt::Write;

/// Why a method failed: a Python exception for the client to raise (`#ERROR`), or a server-side
/// fault it reports as a `RemoteError` (`#TRACEBACK`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fail {
    Raise(Value),
    Traceback(String),
}

pub(crate) type Res<T = Value> = Result<T, Fail>;

/// `module.name(*args)` as pickle carries it (`REDUCE`): an exception, an `array.array`, a
/// `slice`.
pub(crate) fn reduce(module: &str, name: &str, args: Vec<Value>) -> Value {
    Value::Object(Box::new(Object {
        callable: Value::global(module, name),
        args: Value::Tuple(args),
        kwargs: None,
        state: Vec::new(),
        items: Vec::new(),
        entries: Vec::new(),
        new: false,
    }))
}

/// An object of `module.name` made by `__new__` and given `state` (`NEWOBJ`, then `BUILD`): a
/// `Token`, a `Namespace`.
pub(crate) fn built(module: &str, name: &str, state: Value) -> Value {
    Value::Object(Box::new(Object {
        callable: Value::global(module, name),
        args: Value::Tuple(vec![]),
        kwargs: None,
        state: vec![state],
        items: Vec::new(),
        entries: Vec::new(),
        new: true,
    }))
}

/// Raises `module.name(*args)` (an `#ERROR` for the client).
pub(crate) fn raised(module: &str, name: &str, args: Vec<Value>) -> Fail {
    Fail::Raise(reduce(module, name, args))
}

/// A builtin exception with one message.
pub(crate) fn raise(name: &str, message: impl Into<String>) -> Fail {
    raised("builtins", name, vec![Value::Str(message.into())])
}

pub(crate) fn type_error(message: impl Into<String>) -> Fail {
    raise("TypeError", message)
}

pub(crate) fn value_error(message: impl Into<String>) -> Fail {
    raise("ValueError", message)
}

pub(crate) fn index_error(message: impl Into<String>) -> Fail {
    raise("IndexError", message)
}

/// `KeyError(key)`: the key itself is the argument, as Python's.
pub(crate) fn key_error(key: &Value) -> Fail {
    raised("builtins", "KeyError", vec![key.clone()])
}

/// Python's name of a value's type, for messages.
pub(crate) fn type_name(v: &Value) -> String {
    match v {
        Value::None => "NoneType".into(),
        Value::Bool(_) => "bool".into(),
        Value::Int(_) | Value::BigInt(_) => "int".into(),
        Value::Float(_) => "float".into(),
        Value::Str(_) => "str".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::ByteArray(_) => "bytearray".into(),
        Value::List(_) => "list".into(),
        Value::Tuple(_) => "tuple".into(),
        Value::Dict(_) => "dict".into(),
        Value::Set(_) => "set".into(),
        Value::FrozenSet(_) => "frozenset".into(),
        Value::Global { .. } => "type".into(),
        Value::Object(o) => match &o.callable {
            Value::Global { name, .. } => name.clone(),
            _ => "object".into(),
        },
    }
}

/// A hashable value in the form that makes Python's equal keys equal: `1`, `1.0` and `True` are
/// one key; `-0.0` and `0` too; a tuple's items are normalized in turn, a frozenset's are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    None,
    Int(i64),
    Big(Vec<u8>),
    /// A float that is not a whole number, by its bits.
    Float(u64),
    /// A NaN: each one a key of its own.
    Nan(u64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Key>),
    FrozenSet(Vec<Key>),
    Global(String, String),
    /// A value of the client's own class: by its pickle.
    Other(Vec<u8>),
}

impl Key {
    /// The key of `v`, or Python's `TypeError` for an unhashable value.
    pub(crate) fn of(v: &Value) -> Res<Key> {
        Ok(match v {
            Value::None => Key::None,
            Value::Bool(b) => Key::Int(i64::from(*b)),
            Value::Int(i) => Key::Int(*i),
            Value::BigInt(b) => match i64::try_from(b) {
                Ok(i) => Key::Int(i),
                Err(_) => Key::Big(b.to_signed_bytes_le()),
            },
            Value::Float(f) => match (float_as_int(*f), float_as_big(*f)) {
                (Some(i), _) => Key::Int(i),
                // A whole float past i64 is the big int it equals (2.0**64 and 2**64).
                (None, Some(b)) => Key::Big(b.to_signed_bytes_le()),
                // Every NaN a client sends is an object of its own, equal to nothing: a key
                // no other lookup finds, as in CPython's server.
                (None, None) if f.is_nan() => {
                    static NANS: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    Key::Nan(NANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                }
                (None, None) => Key::Float(f.to_bits()),
            },
            Value::Str(s) => Key::Str(s.clone()),
            Value::Bytes(b) => Key::Bytes(b.clone()),
            Value::Tuple(items) => Key::Tuple(items.iter().map(Key::of).collect::<Res<_>>()?),
            Value::FrozenSet(items) => {
                let mut keys = items.iter().map(Key::of).collect::<Res<Vec<_>>>()?;
                keys.sort();
                keys.dedup();
                Key::FrozenSet(keys)
            }
            Value::Global { module, name } => Key::Global(module.clone(), name.clone()),
            Value::Object(_) => Key::Other(pickle::encode(v).unwrap_or_default()),
            Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::ByteArray(_) => {
                return Err(type_error(format!("unhashable type: '{}'", type_name(v))));
            }
        })
    }
}

/// A float that equals a whole number in `i64`'s range.
fn float_as_int(f: f64) -> Option<i64> {
    const TWO_63: f64 = (1u64 << 63) as f64;
    if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
        Some(f as i64)
    } else {
        None
    }
}

/// The big int a whole, finite float equals, when it is past `i64` (|f| >= 2^63: every such
/// float is whole).
fn float_as_big(f: f64) -> Option<BigInt> {
    if !f.is_finite() || float_as_int(f).is_some() || f.fract() != 0.0 {
        return None;
    }
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    if exp < 0 {
        return None;
    }
    let magnitude = BigInt::from(mantissa) << exp as usize;
    Some(if f < 0.0 { -magnitude } else { magnitude })
}

/// A number, for comparing across `bool`, `int` and `float` as Python does.
enum Num<'a> {
    Int(i64),
    Big(&'a BigInt),
    Float(f64),
}

fn num(v: &Value) -> Option<Num<'_>> {
    match v {
        Value::Bool(b) => Some(Num::Int(i64::from(*b))),
        Value::Int(i) => Some(Num::Int(*i)),
        Value::BigInt(b) => Some(Num::Big(b)),
        Value::Float(f) => Some(Num::Float(*f)),
        _ => None,
    }
}

pub(crate) fn big_to_f64(b: &BigInt) -> f64 {
    // Past 1024 bits it is beyond every finite float; below, its decimal text (at most 309
    // digits) parses to the nearest float, enough to order it against one.
    if b.bits() > 1024 {
        return if b.sign() == num_bigint::Sign::Minus {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    b.to_string().parse().unwrap_or(f64::NAN)
}

/// `a < b`-style comparison of two numbers; `None` when they are unordered (a NaN).
fn num_cmp(a: &Num<'_>, b: &Num<'_>) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(y)),
        (Num::Big(x), Num::Big(y)) => Some(x.cmp(y)),
        (Num::Int(x), Num::Big(y)) => Some(BigInt::from(*x).cmp(y)),
        (Num::Big(x), Num::Int(y)) => Some((*x).cmp(&BigInt::from(*y))),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(y),
        (Num::Int(x), Num::Float(y)) => int_float_cmp(*x, *y),
        (Num::Float(x), Num::Int(y)) => int_float_cmp(*y, *x).map(Ordering::reverse),
        // A whole float against a big int exactly; otherwise the float is small (under 2^53)
        // or infinite or NaN, and the big int's nearest float orders them.
        (Num::Big(x), Num::Float(y)) => match float_as_big(*y) {
            Some(b) => Some((*x).cmp(&b)),
            None => big_to_f64(x).partial_cmp(y),
        },
        (Num::Float(x), Num::Big(y)) => match float_as_big(*x) {
            Some(b) => Some(b.cmp(y)),
            None => x.partial_cmp(&big_to_f64(y)),
        },
    }
}

/// An int against a float, exactly (an `i64` past 2^53 is not a float).
fn int_float_cmp(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    match float_as_int(f) {
        Some(j) => Some(i.cmp(&j)),
        None if f.is_infinite() || f.abs() >= 9.2e18 => Some(if f > 0.0 {
            Ordering::Less
        } else {
            Ordering::Greater
        }),
        None => {
            // A fraction: compare with its floor.
            let fl = f.floor() as i64;
            Some(if i <= fl {
                Ordering::Less
            } else {
                Ordering::Greater
            })
        }
    }
}

/// Python's `a == b`.
pub(crate) fn eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return num_cmp(&x, &y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::None, Value::None) => true,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bytes(x) | Value::ByteArray(x), Value::Bytes(y) | Value::ByteArray(y)) => x == y,
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            if x.len() != y.len() {
                return false;
            }
            // One side indexed by key: linear, not quadratic, in the dicts' sizes.
            let Ok(index) = y
                .iter()
                .map(|(k, v)| Key::of(k).map(|k| (k, v)))
                .collect::<Res<std::collections::HashMap<Key, &Value>>>()
            else {
                return false;
            };
            x.iter().all(|(k, v)| {
                Key::of(k)
                    .ok()
                    .and_then(|k| index.get(&k))
                    .is_some_and(|v2| eq(v, v2))
            })
        }
        (Value::Set(x) | Value::FrozenSet(x), Value::Set(y) | Value::FrozenSet(y)) => {
            let set = |s: &[Value]| {
                let mut k: Vec<Key> = s.iter().filter_map(|v| Key::of(v).ok()).collect();
                k.sort();
                k.dedup();
                k
            };
            set(x) == set(y)
        }
        (Value::Global { .. }, Value::Global { .. }) | (Value::Object(_), Value::Object(_)) => {
            a == b
        }
        _ => false,
    }
}

/// Python's ordering for `sort` and `<`: numbers with numbers, text with text, bytes with
/// bytes, and sequences of one kind item by item; anything else is `TypeError`, as Python's.
pub(crate) fn cmp(a: &Value, b: &Value) -> Res<Ordering> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        // A NaN orders as neither: Python's sort then keeps the order it found.
        return Ok(num_cmp(&x, &y).unwrap_or(Ordering::Equal));
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Bytes(x) | Value::ByteArray(x), Value::Bytes(y) | Value::ByteArray(y)) => {
            Ok(x.cmp(y))
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            for (p, q) in x.iter().zip(y) {
                if !eq(p, q) {
                    return cmp(p, q);
                }
            }
            Ok(x.len().cmp(&y.len()))
        }
        _ => Err(type_error(format!(
            "'<' not supported between instances of '{}' and '{}'",
            type_name(a),
            type_name(b)
        ))),
    }
}

/// A stable merge sort whose comparison may fail (the standard sorts may panic on an order that is
/// not total, which a client's values can make).
pub(crate) fn sort(items: &mut Vec<Value>, reverse: bool) -> Res<()> {
    fn merge_sort(v: Vec<Value>, reverse: bool) -> Res<Vec<Value>> {
        if v.len() <= 1 {
            return Ok(v);
        }
        let mut left = v;
        let right = left.split_off(left.len() / 2);
        let (left, right) = (merge_sort(left, reverse)?, merge_sort(right, reverse)?);
        let mut out = Vec::with_capacity(left.len() + right.len());
        let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
        while let (Some(a), Some(b)) = (l.peek(), r.peek()) {
            // Stable: the right one goes first only if strictly before.
            let before = if reverse {
                cmp(a, b)? == Ordering::Less
            } else {
                cmp(b, a)? == Ordering::Less
            };
            out.push(if before { r.next() } else { l.next() }.expect("peeked"));
        }
        out.extend(l);
        out.extend(r);
        Ok(out)
    }
    // Sorted aside: a comparison that fails leaves the list as it was (as Python's).
    *items = merge_sort(items.clone(), reverse)?;
    Ok(())
}

/// An index as Python takes it: an int (or a bool), possibly negative.
pub(crate) fn index(v: &Value) -> Res<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::BigInt(b) => Ok(if b.sign() == num_bigint::Sign::Minus {
            i64::MIN
        } else {
            i64::MAX
        }),
        _ => Err(type_error(format!(
            "indices must be integers or slices, not {}",
            type_name(v)
        ))),
    }
}

/// A position in a sequence of `len` items from an index, negative counting from the end.
pub(crate) fn position(i: i64, len: usize, what: &str) -> Res<usize> {
    let len = len as i64;
    let j = if i < 0 { i.saturating_add(len) } else { i };
    if (0..len).contains(&j) {
        Ok(j as usize)
    } else {
        Err(index_error(format!("{what} index out of range")))
    }
}

/// A `slice(start, stop, step)` the client sent, if `v` is one.
pub(crate) fn as_slice(v: &Value) -> Option<[&Value; 3]> {
    let Value::Object(o) = v else { return None };
    let Value::Global { module, name } = &o.callable else {
        return None;
    };
    if module != "builtins" || name != "slice" {
        return None;
    }
    match &o.args {
        Value::Tuple(a) if a.len() == 3 => Some([&a[0], &a[1], &a[2]]),
        _ => None,
    }
}

/// The positions a slice picks from `len` items (`slice.indices` then `range`).
pub(crate) fn slice_positions(parts: [&Value; 3], len: usize) -> Res<Vec<usize>> {
    let bound = |v: &Value| -> Res<Option<i64>> {
        match v {
            Value::None => Ok(None),
            other => index(other)
                .map(Some)
                .map_err(|_| type_error("slice indices must be integers or None")),
        }
    };
    let step = bound(parts[2])?.unwrap_or(1);
    if step == 0 {
        return Err(value_error("slice step cannot be zero"));
    }
    let len = len as i64;
    let clamp = |v: Option<i64>, default: i64| -> i64 {
        match v {
            None => default,
            Some(i) if i < 0 => {
                let j = i.saturating_add(len);
                if j < 0 {
                    if step < 0 { -1 } else { 0 }
                } else {
                    j
                }
            }
            Some(i) => {
                if i >= len {
                    if step < 0 { len - 1 } else { len }
                } else {
                    i
                }
            }
        }
    };
    let (start, stop) = if step > 0 {
        (clamp(bound(parts[0])?, 0), clamp(bound(parts[1])?, len))
    } else {
        (
            clamp(bound(parts[0])?, len - 1),
            clamp(bound(parts[1])?, -1),
        )
    };
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(i as usize);
        i = match i.checked_add(step) {
            Some(n) => n,
            None => break,
        };
    }
    Ok(out)
}

/// Python's `repr` of a value, for `__repr__` and `__str__` of served objects and for messages.
pub(crate) fn repr(v: &Value) -> String {
    let mut s = String::new();
    write_repr(&mut s, v, 0);
    s
}

fn write_repr(s: &mut String, v: &Value, depth: usize) {
    if depth > 64 {
        s.push_str("...");
        return;
    }
    let seq = |s: &mut String, items: &[Value], open: &str, close: &str| {
        s.push_str(open);
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            write_repr(s, x, depth + 1);
        }
        s.push_str(close);
    };
    match v {
        Value::None => s.push_str("None"),
        Value::Bool(true) => s.push_str("True"),
        Value::Bool(false) => s.push_str("False"),
        Value::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Value::BigInt(b) => {
            let _ = write!(s, "{b}");
        }
        Value::Float(f) => s.push_str(&float_repr(*f)),
        Value::Str(t) => str_repr(s, t),
        Value::Bytes(b) => bytes_repr(s, b),
        Value::ByteArray(b) => {
            s.push_str("bytearray(");
            bytes_repr(s, b);
            s.push(')');
        }
        Value::List(items) => seq(s, items, "[", "]"),
        Value::Tuple(items) if items.len() == 1 => seq(s, items, "(", ",)"),
        Value::Tuple(items) => seq(s, items, "(", ")"),
        Value::Set(items) if items.is_empty() => s.push_str("set()"),
        Value::Set(items) => seq(s, items, "{", "}"),
        Value::FrozenSet(items) if items.is_empty() => s.push_str("frozenset()"),
        Value::FrozenSet(items) => seq(s, items, "frozenset({", "})"),
        Value::Dict(entries) => {
            s.push('{');
            for (i, (k, x)) in entries.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_repr(s, k, depth + 1);
                s.push_str(": ");
                write_repr(s, x, depth + 1);
            }
            s.push('}');
        }
        Value::Global { module, name } => {
            let _ = write!(s, "<class '{module}.{name}'>");
        }
        Value::Object(o) => {
            let _ = write!(s, "<{} object>", type_name(&Value::Object(o.clone())));
        }
    }
}

/// `repr(float)`: the shortest text that reads back, in Python's spelling.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Scientific: Rust's `{:e}` gives the shortest digits; Python writes the exponent signed,
        // with two digits at least.
        let t = format!("{f:e}");
        let (mant, exp) = t.split_once('e').unwrap_or((&t, "0"));
        let e: i32 = exp.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", e.abs());
    }
    let t = format!("{f}");
    if t.contains('.') { t } else { format!("{t}.0") }
}

fn str_repr(s: &mut String, t: &str) {
    let quote = if t.contains('\'') && !t.contains('"') {
        '"'
    } else {
        '\''
    };
    s.push(quote);
    for c in t.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push(quote);
}

fn bytes_repr(s: &mut String, b: &[u8]) {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    s.push('b');
    s.push(quote as char);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(c as char);
            }
            0x20..=0x7e => s.push(c as char),
            c => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s.push(quote as char);
}

/// The items of an iterable value a client sent (`extend`, `update`, slice assignment): a list,
/// a tuple, a set, a dict's keys, the bytes of a bytes; anything else is `TypeError`.
pub(crate) fn iterate(v: &Value) -> Res<Vec<Value>> {
    Ok(match v {
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => x.clone(),
        Value::Dict(e) => e.iter().map(|(k, _)| k.clone()).collect(),
        Value::Bytes(b) | Value::ByteArray(b) => {
            b.iter().map(|&c| Value::Int(i64::from(c))).collect()
        }
        Value::Str(t) => t.chars().map(|c| Value::Str(c.to_string())).collect(),
        Value::Object(o) if is_global(&o.callable, "builtins", "range") => {
            let Value::Tuple(a) = &o.args else {
                return Err(type_error("a range without arguments"));
            };
            let n = |v: &Value| index(v);
            let (start, stop, step) = match a.as_slice() {
                [stop] => (0, n(stop)?, 1),
                [start, stop] => (n(start)?, n(stop)?, 1),
                [start, stop, step] => (n(start)?, n(stop)?, n(step)?),
                _ => return Err(type_error("range expected at most 3 arguments")),
            };
            if step == 0 {
                return Err(value_error("range() arg 3 must not be zero"));
            }
            let len = if step > 0 {
                (i128::from(stop) - i128::from(start) + i128::from(step) - 1) / i128::from(step)
            } else {
                (i128::from(start) - i128::from(stop) - i128::from(step) - 1) / -i128::from(step)
            }
            .max(0);
            if len > 1 << 24 {
                return Err(raise("MemoryError", "the range is too long to store"));
            }
            // In i128: start + i * step stays within i64 for every i < len, but not the way there.
            (0..len)
                .map(|i| Value::Int((i128::from(start) + i * i128::from(step)) as i64))
                .collect()
        }
        other => {
            return Err(type_error(format!(
                "'{}' object is not iterable",
                type_name(other)
            )));
        }
    })
}

/// About how many bytes `v` takes (its text and binary data, and a few per node), to bound what a
/// request may make the server build.
pub(crate) fn size_hint(v: &Value) -> usize {
    fn walk(v: &Value, depth: usize) -> usize {
        if depth > 256 {
            return 16;
        }
        16 + match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) | Value::ByteArray(b) => b.len(),
            Value::BigInt(b) => (b.bits() / 8) as usize,
            Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => {
                x.iter().map(|i| walk(i, depth + 1)).sum()
            }
            Value::Dict(e) => e
                .iter()
                .map(|(k, i)| walk(k, depth + 1) + walk(i, depth + 1))
                .sum(),
            Value::Object(o) => {
                walk(&o.args, depth + 1)
                    + o.state.iter().map(|i| walk(i, depth + 1)).sum::<usize>()
                    + o.items.iter().map(|i| walk(i, depth + 1)).sum::<usize>()
                    + o.entries
                        .iter()
                        .map(|(k, i)| walk(k, depth + 1) + walk(i, depth + 1))
                        .sum::<usize>()
            }
            _ => 0,
        }
    }
    walk(v, 0)
}

/// Whether `v` is the global `module.name`.
pub(crate) fn is_global(v: &Value, module: &str, name: &str) -> bool {
    matches!(v, Value::Global { module: m, name: n } if m == module && n == name)
}

/// Python's truth of a value (`bool(v)`), for flags such as `block`.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::None => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::BigInt(_) => true,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Bytes(b) | Value::ByteArray(b) => !b.is_empty(),
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => !x.is_empty(),
        Value::Dict(e) => !e.is_empty(),
        _ => true,
    }
}

/// A timeout in seconds (`None`: none), refusing a negative one as Python's.
pub(crate) fn timeout(v: &Value) -> Res<Option<std::time::Duration>> {
    let secs = match v {
        Value::None => return Ok(None),
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Int(i) => *i as f64,
        Value::BigInt(_) => f64::MAX,
        Value::Float(f) => *f,
        other => {
            return Err(type_error(format!(
                "'{}' object cannot be interpreted as a timeout",
                type_name(other)
            )));
        }
    };
    if secs.is_nan() {
        return Err(value_error("Invalid value NaN (not a number)"));
    }
    if secs < 0.0 {
        return Err(value_error("'timeout' must be a non-negative number"));
    }
    Ok(Some(
        std::time::Duration::try_from_secs_f64(secs).unwrap_or(std::time::Duration::MAX),
    ))
}

/// A timeout as `threading`'s `Event`, `Condition`, `Semaphore` and `Barrier` take it: a
/// negative or NaN one means do not wait.
pub(crate) fn timeout_or_poll(v: &Value) -> Res<Option<std::time::Duration>> {
    match v {
        Value::Float(f) if f.is_nan() || *f < 0.0 => Ok(Some(std::time::Duration::ZERO)),
        Value::Int(i) if *i < 0 => Ok(Some(std::time::Duration::ZERO)),
        Value::BigInt(b) if b.sign() == num_bigint::Sign::Minus => {
            Ok(Some(std::time::Duration::ZERO))
        }
        other => timeout(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Vec<Value> {
        v.iter().map(|&i| Value::Int(i)).collect()
    }

    #[test]
    fn one_true_and_one_point_zero_are_one_key() {
        let k = Key::of(&Value::Int(1)).unwrap();
        assert_eq!(Key::of(&Value::Bool(true)).unwrap(), k);
        assert_eq!(Key::of(&Value::Float(1.0)).unwrap(), k);
        assert_eq!(Key::of(&Value::BigInt(BigInt::from(1))).unwrap(), k);
        assert_ne!(Key::of(&Value::Float(1.5)).unwrap(), k);
        assert_eq!(
            Key::of(&Value::Float(-0.0)).unwrap(),
            Key::of(&Value::Int(0)).unwrap()
        );
        assert_eq!(
            Key::of(&Value::Tuple(vec![Value::Bool(true)])).unwrap(),
            Key::of(&Value::Tuple(vec![Value::Float(1.0)])).unwrap()
        );
        assert!(matches!(Key::of(&Value::List(vec![])), Err(Fail::Raise(_))));
        // 2.0**64 is the key 2**64; two NaNs are two keys.
        let two64 = BigInt::from(1u8) << 64usize;
        assert_eq!(
            Key::of(&Value::Float(18446744073709551616.0)).unwrap(),
            Key::of(&Value::BigInt(two64.clone())).unwrap()
        );
        assert_ne!(
            Key::of(&Value::Float(f64::NAN)).unwrap(),
            Key::of(&Value::Float(f64::NAN)).unwrap()
        );
        // 2**63 + 1 is not 2.0**63 (a float rounding would say it is).
        let big = Value::BigInt((BigInt::from(1u8) << 63usize) + 1);
        assert!(!eq(&big, &Value::Float(9223372036854775808.0)));
        assert!(eq(
            &Value::BigInt(two64),
            &Value::Float(18446744073709551616.0)
        ));
    }

    #[test]
    fn equality_and_order_follow_python() {
        assert!(eq(&Value::Int(1), &Value::Float(1.0)));
        assert!(!eq(&Value::List(vec![]), &Value::Tuple(vec![])));
        assert!(eq(
            &Value::Bytes(b"a".to_vec()),
            &Value::ByteArray(b"a".to_vec())
        ));
        assert_eq!(
            cmp(&Value::Int(i64::MAX), &Value::Float(9.3e18)).unwrap(),
            Ordering::Less
        );
        assert_eq!(
            cmp(&Value::Int(2), &Value::Float(1.5)).unwrap(),
            Ordering::Greater
        );
        assert_eq!(
            cmp(&Value::Int(1), &Value::Float(1.5)).unwrap(),
            Ordering::Less
        );
        assert!(cmp(&Value::Int(1), &Value::Str("a".into())).is_err());
        let mut v = ints(&[3, 1, 2]);
        sort(&mut v, false).unwrap();
        assert_eq!(v, ints(&[1, 2, 3]));
        sort(&mut v, true).unwrap();
        assert_eq!(v, ints(&[3, 2, 1]));
        let mut mixed = vec![Value::Int(3), Value::Str("a".into()), Value::Int(1)];
        assert!(sort(&mut mixed, false).is_err());
        // A failed sort leaves the list as it was.
        assert_eq!(
            mixed,
            vec![Value::Int(3), Value::Str("a".into()), Value::Int(1)]
        );
        // Stable: equal keys keep their order.
        let mut pairs = vec![Value::Float(1.0), Value::Int(1), Value::Bool(true)];
        sort(&mut pairs, false).unwrap();
        assert_eq!(
            pairs,
            vec![Value::Float(1.0), Value::Int(1), Value::Bool(true)]
        );
    }

    #[test]
    fn slices_pick_what_python_picks() {
        let s = |a: Value, b: Value, c: Value, n: usize| slice_positions([&a, &b, &c], n).unwrap();
        assert_eq!(
            s(Value::None, Value::None, Value::None, 4),
            vec![0, 1, 2, 3]
        );
        assert_eq!(s(Value::Int(1), Value::Int(-1), Value::None, 4), vec![1, 2]);
        assert_eq!(
            s(Value::None, Value::None, Value::Int(-1), 4),
            vec![3, 2, 1, 0]
        );
        assert_eq!(
            s(Value::Int(-10), Value::Int(10), Value::Int(2), 5),
            vec![0, 2, 4]
        );
        assert_eq!(s(Value::Int(5), Value::None, Value::Int(-2), 4), vec![3, 1]);
        assert!(slice_positions([&Value::None, &Value::None, &Value::Int(0)], 3).is_err());
        assert_eq!(position(-1, 3, "list").unwrap(), 2);
        assert!(position(3, 3, "list").is_err());
        assert!(position(i64::MIN, 3, "list").is_err());
    }

    #[test]
    fn ranges_iterate_as_python_ranges() {
        let range = |args: Vec<i64>| {
            iterate(&reduce(
                "builtins",
                "range",
                args.into_iter().map(Value::Int).collect(),
            ))
        };
        assert_eq!(range(vec![3]).unwrap(), ints(&[0, 1, 2]));
        assert_eq!(range(vec![5, 0, -2]).unwrap(), ints(&[5, 3, 1]));
        assert_eq!(range(vec![2, 2]).unwrap(), ints(&[]));
        assert!(range(vec![0, 1, 0]).is_err());
        assert!(range(vec![0, i64::MAX]).is_err());
    }

    #[test]
    fn repr_reads_as_python_writes() {
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
        assert_eq!(repr(&Value::Str("it's".into())), "\"it's\"");
        assert_eq!(repr(&Value::Tuple(vec![Value::Int(1)])), "(1,)");
        assert_eq!(
            repr(&Value::Dict(vec![(
                Value::Str("a".into()),
                Value::Bytes(b"\x00".to_vec())
            )])),
            "{'a': b'\\x00'}"
        );
    }
}
