//! The decoder: the pickle machine over an arena, then the arena into a [`Value`] tree.

use super::{Limits, PickleError, Value};
use num_bigint::BigInt;
use std::collections::HashMap;

/// Decodes one pickle with the default [`Limits`]. Bytes after `STOP` are refused (Python's
/// `loads` ignores them, but no pickler writes them: in a framed message they are a forgery).
///
/// ```
/// use multiprocess::pickle::{decode, Value};
/// // pickle.dumps((1, 'a', [None]), protocol=2)
/// let v = decode(b"\x80\x02K\x01X\x01\x00\x00\x00aq\x00]q\x01Na\x87q\x02.")?;
/// let want = [Value::Int(1), Value::Str("a".into()), Value::List(vec![Value::None])];
/// assert_eq!(v, Value::Tuple(want.to_vec()));
/// # Ok::<(), multiprocess::pickle::PickleError>(())
/// ```
pub fn decode(bytes: &[u8]) -> Result<Value, PickleError> {
    decode_with(bytes, &Limits::default())
}

/// [`decode`] with the given limits.
pub fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Value, PickleError> {
    with_arena(bytes, limits, |nodes, root| {
        Expand {
            nodes,
            visiting: vec![false; nodes.len()],
            written: 0,
            bytes: 0,
            limits,
        }
        .value(root)
    })
}

/// The machine's working vectors, kept per thread between decodes: most messages are small, and
/// for them allocating and freeing the arena, the stack and the memo each time is most of the
/// work. Only vectors that stayed modest in size are kept (a huge pickle's arena goes back to the
/// allocator), and a decode while another is running on the thread (a `Deserialize` impl that
/// decodes a pickle inside a pickle) gets fresh ones.
#[derive(Default)]
struct Scratch {
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    marks: Vec<usize>,
    dense: Vec<Option<Slot>>,
}

/// Vectors past this many elements are not kept for the next decode.
const KEEP: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Scratch>> = const { std::cell::Cell::new(None) };
}

/// Runs the machine over a whole pickle and hands the arena and its root to `f`.
pub(super) fn with_arena<R>(
    bytes: &[u8],
    limits: &Limits,
    f: impl FnOnce(&[Node], Slot) -> Result<R, PickleError>,
) -> Result<R, PickleError> {
    let scratch = SCRATCH.take().unwrap_or_default();
    let mut m = Machine {
        input: bytes,
        at: 0,
        nodes: scratch.nodes,
        stack: scratch.stack,
        marks: scratch.marks,
        memo: Memo {
            dense: scratch.dense,
            ..Memo::default()
        },
        limits,
        copied: 0,
        made: 0,
    };
    let result = m.run().and_then(|root| {
        if m.at != bytes.len() {
            return Err(PickleError::Malformed {
                at: m.at,
                why: format!("{} bytes after STOP", bytes.len() - m.at),
            });
        }
        f(&m.nodes, root)
    });
    SCRATCH.set(Some(Scratch {
        nodes: reuse(m.nodes),
        stack: reuse(m.stack),
        marks: reuse(m.marks),
        dense: reuse(m.memo.dense),
    }));
    result
}

/// `v` emptied for the next decode, or a new vector if it grew too big to keep.
fn reuse<T>(mut v: Vec<T>) -> Vec<T> {
    if v.capacity() > KEEP {
        return Vec::new();
    }
    v.clear();
    v
}

pub(super) type Id = usize;

/// A value on the machine's stack or in a container: a scalar held right here (most of a
/// pickle's values: copying one is what a memo reference to it means anyway), or a node of the
/// arena, which memo references share.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Node(Id),
}

/// A value under construction in the arena: containers hold slots, so that memo references
/// share them.
#[derive(Debug)]
pub(super) enum Node {
    /// A str, bytes, bytearray, big int or global (never a scalar a slot holds).
    Leaf(Value),
    List(Vec<Slot>),
    Tuple(Vec<Slot>),
    Dict(Vec<(Slot, Slot)>),
    Set(Vec<Slot>),
    FrozenSet(Vec<Slot>),
    Object(Box<ObjNode>),
}

/// An object under construction (see [`super::Object`]).
#[derive(Debug)]
pub(super) struct ObjNode {
    pub(super) callable: Slot,
    args: Slot,
    kwargs: Option<Slot>,
    state: Vec<Slot>,
    new: bool,
    items: Vec<Slot>,
    entries: Vec<(Slot, Slot)>,
}

/// The memo: picklers number entries 0, 1, 2, … (`MEMOIZE` always, `PUT` in practice), which a
/// vector holds without hashing; a key past the end of that run (only a hand-made pickle writes
/// one) goes to a map, so a forged key never sizes the vector.
#[derive(Default)]
struct Memo {
    dense: Vec<Option<Slot>>,
    sparse: HashMap<u64, Slot>,
    len: usize,
}

impl Memo {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: u64) -> Option<Slot> {
        match usize::try_from(key).ok().and_then(|k| self.dense.get(k)) {
            Some(slot) => *slot,
            None => self.sparse.get(&key).copied(),
        }
    }

    fn insert(&mut self, key: u64, slot: Slot) {
        let new = match usize::try_from(key) {
            Ok(k) if k < self.dense.len() => self.dense[k].replace(slot).is_none(),
            Ok(k) if k == self.dense.len() && !self.sparse.contains_key(&key) => {
                self.dense.push(Some(slot));
                true
            }
            _ => self.sparse.insert(key, slot).is_none(),
        };
        if new {
            self.len += 1;
        }
    }
}

struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: Memo,
    limits: &'a Limits,
    /// Bytes copied while running (globals, builtin calls), charged to `max_bytes`.
    copied: u64,
    /// Values made (arena nodes and scalars), against `max_nodes`.
    made: u64,
}

/// The few globals that only make plain values (Python 2 names too, as protocol 2 writes them).
fn builtin(module: &str, name: &str) -> Option<&'static str> {
    match (module, name) {
        ("builtins" | "__builtin__", "set") => Some("set"),
        ("builtins" | "__builtin__", "frozenset") => Some("frozenset"),
        ("builtins" | "__builtin__", "bytearray") => Some("bytearray"),
        ("builtins" | "__builtin__", "bytes") => Some("bytes"),
        ("_codecs", "encode") => Some("encode"),
        _ => None,
    }
}

impl Machine<'_> {
    fn malformed(&self, why: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.at,
            why: why.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        // A length prefix is checked against what is left before anything is allocated.
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or(PickleError::Truncated(self.input.len()))?;
        let s = &self.input[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn len64(&mut self) -> Result<usize, PickleError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| PickleError::Truncated(self.input.len()))
    }

    /// A text line (protocol 0), without its newline.
    fn line(&mut self) -> Result<&[u8], PickleError> {
        let rest = &self.input[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.input.len()))?;
        let s = &self.input[self.at..self.at + n];
        self.at += n + 1;
        Ok(s)
    }

    fn line_str(&mut self) -> Result<String, PickleError> {
        let l = self.line()?.to_vec();
        String::from_utf8(l).map_err(|_| self.malformed("a text line that is not UTF-8"))
    }

    /// Counts a value made, of `size` bytes (its memory counts against the byte budget too).
    fn made(&mut self, size: usize) -> Result<(), PickleError> {
        if self.made >= self.limits.max_nodes {
            return Err(PickleError::Limit {
                what: "nodes",
                limit: self.limits.max_nodes,
            });
        }
        self.made += 1;
        self.charge(size as u64)
    }

    fn node(&mut self, n: Node) -> Result<Slot, PickleError> {
        self.made(std::mem::size_of::<Node>())?;
        self.nodes.push(n);
        Ok(Slot::Node(self.nodes.len() - 1))
    }

    fn push(&mut self, slot: Slot) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(PickleError::Limit {
                what: "stack size",
                limit: self.limits.max_stack as u64,
            });
        }
        self.stack.push(slot);
        Ok(())
    }

    fn push_new(&mut self, n: Node) -> Result<(), PickleError> {
        let slot = self.node(n)?;
        self.push(slot)
    }

    /// Pushes a scalar.
    fn scalar(&mut self, slot: Slot) -> Result<(), PickleError> {
        self.made(std::mem::size_of::<Slot>())?;
        self.push(slot)
    }

    fn leaf(&mut self, v: Value) -> Result<(), PickleError> {
        match v {
            Value::None => self.scalar(Slot::None),
            Value::Bool(b) => self.scalar(Slot::Bool(b)),
            Value::Int(i) => self.scalar(Slot::Int(i)),
            Value::Float(f) => self.scalar(Slot::Float(f)),
            v => self.push_new(Node::Leaf(v)),
        }
    }

    /// The arena node a slot names (`None` for a scalar).
    fn get(&self, slot: Slot) -> Option<&Node> {
        match slot {
            Slot::Node(id) => Some(&self.nodes[id]),
            _ => None,
        }
    }

    /// The arena node a slot names, to change (`None` for a scalar).
    fn get_mut(&mut self, slot: Slot) -> Option<&mut Node> {
        match slot {
            Slot::Node(id) => Some(&mut self.nodes[id]),
            _ => None,
        }
    }

    fn pop(&mut self) -> Result<Slot, PickleError> {
        match self.stack.pop() {
            Some(id) if self.marks.last().is_none_or(|&m| self.stack.len() >= m) => Ok(id),
            Some(_) => Err(self.malformed("an opcode took a value from below a mark")),
            None => Err(self.malformed("an opcode took a value from an empty stack")),
        }
    }

    fn top(&self) -> Result<Slot, PickleError> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(self.malformed("an opcode used a value from below a mark"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.malformed("an empty stack"))
    }

    /// Everything above the last mark, and the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<Slot>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no mark to pop to"))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let slot = self.top()?;
        if self.memo.len() >= self.limits.max_memo && self.memo.get(key).is_none() {
            return Err(PickleError::Limit {
                what: "memo entries",
                limit: self.limits.max_memo as u64,
            });
        }
        self.memo.insert(key, slot);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let slot = self
            .memo
            .get(key)
            .ok_or_else(|| self.malformed(format!("memo key {key} was never stored")))?;
        self.push(slot)
    }

    fn text_int(&self, s: &[u8]) -> Result<Value, PickleError> {
        let s = std::str::from_utf8(s).map_err(|_| self.malformed("an INT that is not text"))?;
        let s = s.trim().trim_end_matches('L');
        // CPython's own cap on decimal digits (parsing is quadratic in them).
        if s.len() > 4300 {
            return Err(self.malformed("an integer of more than 4300 digits"));
        }
        // Digits with an optional sign, nothing else (no pickler writes `_` separators, which
        // the big-int parser would take).
        let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.malformed(format!("{s:?} is not an integer")));
        }
        if let Ok(i) = s.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        s.parse::<BigInt>()
            .map(Value::BigInt)
            .map_err(|_| self.malformed(format!("{s:?} is not an integer")))
    }

    /// `APPENDS` (into a list, or an object's items) and `SETITEMS` (`pairs`: into a dict, or an
    /// object's entries): what is above the last mark, moved straight from the stack into what is
    /// below it.
    fn extend_from_mark(&mut self, pairs: bool) -> Result<(), PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no mark to pop to"))?;
        if self.marks.last().is_some_and(|&below| below >= m) || m == 0 {
            return Err(self.malformed("APPENDS or SETITEMS with nothing below its mark"));
        }
        let Slot::Node(target) = self.stack[m - 1] else {
            return Err(self.malformed("APPENDS or SETITEMS on a scalar"));
        };
        if pairs && !(self.stack.len() - m).is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of values"));
        }
        let Machine { stack, nodes, .. } = self;
        let items = stack.drain(m..);
        match (&mut nodes[target], pairs) {
            (Node::List(v), false) => v.extend(items),
            (Node::Object(o), false) => o.items.extend(items),
            (Node::Dict(v), true) => v.extend(Pairs(items)),
            (Node::Object(o), true) => o.entries.extend(Pairs(items)),
            (_, false) => {
                drop(items);
                return Err(self.malformed("APPEND to something that is not a list"));
            }
            (_, true) => {
                drop(items);
                return Err(self.malformed("SETITEM on something that is not a dict"));
            }
        }
        Ok(())
    }

    fn append_items(&mut self, target: Slot, items: Vec<Slot>) -> Result<(), PickleError> {
        match self.get_mut(target) {
            Some(Node::List(v)) => v.extend(items),
            Some(Node::Object(o)) => o.items.extend(items),
            _ => return Err(self.malformed("APPEND to something that is not a list")),
        }
        Ok(())
    }

    fn set_items(&mut self, target: Slot, kv: Vec<Slot>) -> Result<(), PickleError> {
        if !kv.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of values"));
        }
        let pairs = kv.chunks(2).map(|p| (p[0], p[1]));
        match self.get_mut(target) {
            Some(Node::Dict(v)) => v.extend(pairs),
            Some(Node::Object(o)) => o.entries.extend(pairs),
            _ => return Err(self.malformed("SETITEM on something that is not a dict")),
        }
        Ok(())
    }

    /// A plain value for the few builtin calls that make one (see [`builtin`]); the copy it
    /// makes is charged to the byte budget.
    fn plain(&mut self, callable: Slot, args: Slot) -> Result<Option<Node>, PickleError> {
        let (Some(Node::Leaf(Value::Global { module, name })), Some(Node::Tuple(a))) =
            (self.get(callable), self.get(args))
        else {
            return Ok(None);
        };
        let Some(b) = builtin(module, name) else {
            return Ok(None);
        };
        let get = |slot: &Slot| self.get(*slot);
        let latin1 = |slot: &Slot| matches!(get(slot), Some(Node::Leaf(Value::Str(e))) if e == "latin1" || e == "latin-1");
        let plain = match (b, a.as_slice()) {
            ("set", []) => Some(Node::Set(Vec::new())),
            ("frozenset", []) => Some(Node::FrozenSet(Vec::new())),
            ("set" | "frozenset", [items]) => match get(items) {
                Some(Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v)) => {
                    let v = v.clone();
                    Some(if b == "set" {
                        Node::Set(v)
                    } else {
                        Node::FrozenSet(v)
                    })
                }
                _ => None,
            },
            ("bytearray" | "bytes", []) => Some(Node::Leaf(if b == "bytes" {
                Value::Bytes(Vec::new())
            } else {
                Value::ByteArray(Vec::new())
            })),
            // Protocol 2 writes bytes as `_codecs.encode(text, 'latin1')`, and bytearray as
            // `bytearray(text, 'latin-1')` or `bytearray(bytes)`.
            ("encode" | "bytearray" | "bytes", [text, enc]) if latin1(enc) => match get(text) {
                Some(Node::Leaf(Value::Str(s))) => s
                    .chars()
                    .map(|c| u8::try_from(c as u32).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(|r| bytes_node(b, r)),
                _ => None,
            },
            ("bytearray" | "bytes", [data]) => match get(data) {
                Some(Node::Leaf(Value::Bytes(d))) => Some(bytes_node(b, d.clone())),
                _ => None,
            },
            _ => None,
        };
        if let Some(n) = &plain {
            let copied = match n {
                Node::Set(v) | Node::FrozenSet(v) => (size_of::<Slot>() * v.len()) as u64,
                Node::Leaf(v) => leaf_bytes(v),
                _ => 0,
            };
            self.charge(copied)?;
        }
        Ok(plain)
    }

    /// Charges bytes copied while the machine runs to the budget of [`Limits::max_bytes`].
    fn charge(&mut self, n: u64) -> Result<(), PickleError> {
        self.copied = self.copied.saturating_add(n);
        if self.copied > self.limits.max_bytes {
            return Err(PickleError::Limit {
                what: "bytes of the decoded value",
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// `callable(*args)`: a plain value for the few builtins that make one, else an object.
    fn reduce(&mut self, callable: Slot, args: Slot, new: bool) -> Result<Slot, PickleError> {
        // Only calls (`REDUCE`), not `cls.__new__` (which would make an empty one), and only
        // with the arguments CPython's own pickler writes.
        if !new && let Some(n) = self.plain(callable, args)? {
            return self.node(n);
        }
        self.node(Node::Object(Box::new(ObjNode {
            callable,
            args,
            kwargs: None,
            state: Vec::new(),
            new,
            items: Vec::new(),
            entries: Vec::new(),
        })))
    }

    fn run(&mut self) -> Result<Slot, PickleError> {
        loop {
            let at = self.at;
            let op = self.byte()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.byte()?;
                    if p > 5 {
                        return Err(self.malformed(format!("protocol {p} is newer than 5")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the opcodes follow inline.
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return Err(PickleError::Limit {
                            what: "open marks",
                            limit: self.limits.max_marks as u64,
                        });
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.push(t)?;
                }
                b'N' => self.scalar(Slot::None)?,
                0x88 => self.scalar(Slot::Bool(true))?,
                0x89 => self.scalar(Slot::Bool(false))?,
                b'I' => {
                    let l = self.line()?.to_vec();
                    let v = match l.as_slice() {
                        b"01" => Value::Bool(true),
                        b"00" => Value::Bool(false),
                        _ => self.text_int(&l)?,
                    };
                    self.leaf(v)?;
                }
                b'L' => {
                    let l = self.line()?.to_vec();
                    let v = self.text_int(&l)?;
                    self.leaf(v)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                    self.scalar(Slot::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.scalar(Slot::Int(v.into()))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.scalar(Slot::Int(v.into()))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.byte()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                        usize::try_from(n).map_err(|_| self.malformed("a negative LONG4 length"))?
                    };
                    let b = self.take(n)?;
                    match small_long(b) {
                        Some(i) => self.scalar(Slot::Int(i))?,
                        None => {
                            let big = BigInt::from_signed_bytes_le(b);
                            let v = i64::try_from(&big).map_or(Value::BigInt(big), Value::Int);
                            self.leaf(v)?;
                        }
                    }
                }
                b'F' => {
                    let l = self.line()?;
                    let v = std::str::from_utf8(l)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| self.malformed("a FLOAT that is not a number"))?;
                    self.leaf(Value::Float(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                    self.scalar(Slot::Float(v))?;
                }
                b'S' => {
                    let l = self.line()?.to_vec();
                    let raw = unquote(&l).ok_or_else(|| self.malformed("a bad STRING literal"))?;
                    self.leaf(py2_str(raw))?;
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                        usize::try_from(n).map_err(|_| self.malformed("a negative length"))?
                    } else {
                        self.byte()? as usize
                    };
                    let raw = self.take(n)?.to_vec();
                    self.leaf(py2_str(raw))?;
                }
                b'V' => {
                    let l = self.line()?.to_vec();
                    let s = raw_unicode_escape(&l)
                        .ok_or_else(|| self.malformed("a bad UNICODE literal"))?;
                    self.leaf(Value::Str(s))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.byte()? as usize,
                        _ => self.len64()?,
                    };
                    let raw = self.take(n)?;
                    let s = String::from_utf8(raw.to_vec())
                        .map_err(|_| self.malformed("a str that is not UTF-8"))?;
                    self.leaf(Value::Str(s))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.byte()? as usize,
                        _ => self.len64()?,
                    };
                    let raw = self.take(n)?.to_vec();
                    self.leaf(if op == 0x96 {
                        Value::ByteArray(raw)
                    } else {
                        Value::Bytes(raw)
                    })?;
                }
                b']' => self.push_new(Node::List(Vec::new()))?,
                b')' => self.push_new(Node::Tuple(Vec::new()))?,
                b'}' => self.push_new(Node::Dict(Vec::new()))?,
                0x8f => self.push_new(Node::Set(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::List(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::Tuple(items))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::FrozenSet(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_new(Node::Tuple(items))?;
                }
                b'd' => {
                    let kv = self.pop_mark()?;
                    let id = self.node(Node::Dict(Vec::new()))?;
                    self.set_items(id, kv)?;
                    self.push(id)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let t = self.top()?;
                    self.append_items(t, vec![v])?;
                }
                b'e' => self.extend_from_mark(false)?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let t = self.top()?;
                    self.set_items(t, vec![k, v])?;
                }
                b'u' => self.extend_from_mark(true)?,
                0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    match self.get_mut(t) {
                        Some(Node::Set(v)) => v.extend(items),
                        _ => return Err(self.malformed("ADDITEMS to something that is not a set")),
                    }
                }
                b'p' => {
                    let l = self.line()?.to_vec();
                    let key = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| self.malformed("a bad PUT key"))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let k = self.byte()?;
                    self.memo_put(k.into())?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k.into())?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?.to_vec();
                    let key = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| self.malformed("a bad GET key"))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let k = self.byte()?;
                    self.memo_get(k.into())?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k.into())?;
                }
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    self.leaf(Value::Global { module, name })?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(Node::Leaf(Value::Str(m))), Some(Node::Leaf(Value::Str(n)))) =
                        (self.get(module), self.get(name))
                    else {
                        return Err(self.malformed("STACK_GLOBAL of values that are not str"));
                    };
                    let g = Value::global(m, n);
                    self.charge(leaf_bytes(&g))?;
                    self.leaf(g)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let id = self.reduce(callable, args, false)?;
                    self.push(id)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let id = self.reduce(cls, args, true)?;
                    self.push(id)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let id = self.reduce(cls, args, true)?;
                    if let Some(Node::Object(o)) = self.get_mut(id) {
                        o.kwargs = Some(kwargs);
                    }
                    self.push(id)?;
                }
                b'i' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let items = self.pop_mark()?;
                    let cls = self.node(Node::Leaf(Value::Global { module, name }))?;
                    let args = self.node(Node::Tuple(items))?;
                    let id = self.reduce(cls, args, false)?;
                    self.push(id)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let args = self.node(Node::Tuple(items))?;
                    let id = self.reduce(cls, args, false)?;
                    self.push(id)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let t = self.top()?;
                    match self.get_mut(t) {
                        Some(Node::Object(o)) => o.state.push(state),
                        _ => return Err(self.malformed("BUILD on something that is not an object")),
                    }
                }
                b'P' | b'Q' => {
                    return Err(PickleError::Opcode {
                        op,
                        at,
                        why: "persistent ids belong to one Python program",
                    });
                }
                0x82..=0x84 => {
                    return Err(PickleError::Opcode {
                        op,
                        at,
                        why: "the extension registry is not carried",
                    });
                }
                0x97 | 0x98 => {
                    return Err(PickleError::Opcode {
                        op,
                        at,
                        why: "out-of-band buffers are not carried",
                    });
                }
                _ => return Err(PickleError::Opcode { op, at, why: "" }),
            }
        }
    }
}

/// Consecutive values as (key, value) pairs (the caller made sure they are even in number).
struct Pairs<I>(I);

impl<I: Iterator<Item = Slot>> Iterator for Pairs<I> {
    type Item = (Slot, Slot);

    fn next(&mut self) -> Option<(Slot, Slot)> {
        Some((self.0.next()?, self.0.next()?))
    }
}

/// A `LONG1`/`LONG4` payload (little-endian two's complement) of at most 8 bytes, as an `i64`
/// without a big int; `None` past 8 bytes.
fn small_long(b: &[u8]) -> Option<i64> {
    if b.len() > 8 {
        return None;
    }
    let fill = if b.last().is_some_and(|&top| top & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut le = [fill; 8];
    le[..b.len()].copy_from_slice(b);
    Some(i64::from_le_bytes(le))
}

fn bytes_node(kind: &str, raw: Vec<u8>) -> Node {
    Node::Leaf(if kind == "bytearray" {
        Value::ByteArray(raw)
    } else {
        Value::Bytes(raw)
    })
}

/// A Python 2 `str`: text when it is UTF-8 (as `encoding='utf-8'` would read it), else bytes.
fn py2_str(raw: Vec<u8>) -> Value {
    match String::from_utf8(raw) {
        Ok(s) => Value::Str(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    }
}

/// A protocol 0 `STRING` literal: a quoted Python 2 repr with backslash escapes.
fn unquote(l: &[u8]) -> Option<Vec<u8>> {
    let q = *l.first()?;
    if l.len() < 2 || !(q == b'\'' || q == b'"') || *l.last()? != q {
        return None;
    }
    let body = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *body.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v).ok()?);
            }
            b'x' => {
                let h = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            b'\\' | b'\'' | b'"' => out.push(e),
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// A protocol 0 `UNICODE` line: `raw-unicode-escape` (latin-1 bytes, `\uXXXX`, `\UXXXXXXXX`).
fn raw_unicode_escape(l: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        if l[i] == b'\\' && matches!(l.get(i + 1), Some(b'u' | b'U')) {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            let h = std::str::from_utf8(l.get(i + 2..i + 2 + n)?).ok()?;
            out.push(char::from_u32(u32::from_str_radix(h, 16).ok()?)?);
            i += 2 + n;
        } else {
            out.push(char::from(l[i]));
            i += 1;
        }
    }
    Some(out)
}

/// The arena into a tree, counting what it writes.
struct Expand<'a> {
    nodes: &'a [Node],
    visiting: Vec<bool>,
    written: u64,
    bytes: u64,
    limits: &'a Limits,
}

/// Bytes a leaf adds to the expanded value (what a memo reference copies).
pub(super) fn leaf_bytes(v: &Value) -> u64 {
    match v {
        Value::Str(s) => s.len() as u64,
        Value::Bytes(b) | Value::ByteArray(b) => b.len() as u64,
        Value::Global { module, name } => (module.len() + name.len()) as u64,
        Value::BigInt(b) => b.bits().div_ceil(8),
        _ => 0,
    }
}

/// What a container's children rebuild into (see [`Expand::value`]).
enum Kind {
    List,
    Tuple,
    Set,
    FrozenSet,
    Dict,
    /// With how many states, items and entries follow the callable and args (and kwargs).
    Object {
        kwargs: bool,
        states: usize,
        items: usize,
        entries: usize,
        new: bool,
    },
}

/// A container being expanded: its children in order, and those done.
struct Frame {
    id: Id,
    kind: Kind,
    children: Vec<Slot>,
    next: usize,
    done: Vec<Value>,
}

impl Expand<'_> {
    /// The value of `root`, expanded with an explicit stack (no recursion: `max_depth` levels cost
    /// heap, never the thread's stack).
    fn value(&mut self, root: Slot) -> Result<Value, PickleError> {
        let mut stack: Vec<Frame> = Vec::new();
        if let Some(v) = self.enter(root, &mut stack)? {
            return Ok(v);
        }
        loop {
            let top = stack.last_mut().expect("a frame while expanding");
            if top.next < top.children.len() {
                let child = top.children[top.next];
                top.next += 1;
                if let Some(v) = self.enter(child, &mut stack)? {
                    stack.last_mut().expect("the parent").done.push(v);
                }
                continue;
            }
            let f = stack.pop().expect("the top");
            self.visiting[f.id] = false;
            let v = build(f);
            match stack.last_mut() {
                Some(parent) => parent.done.push(v),
                None => return Ok(v),
            }
        }
    }

    /// Counts `id`; a leaf's value, or `None` after pushing its frame.
    fn enter(&mut self, slot: Slot, stack: &mut Vec<Frame>) -> Result<Option<Value>, PickleError> {
        self.written += 1;
        if self.written > self.limits.max_nodes {
            return Err(PickleError::Limit {
                what: "nodes",
                limit: self.limits.max_nodes,
            });
        }
        let id = match slot {
            Slot::None => return Ok(Some(Value::None)),
            Slot::Bool(b) => return Ok(Some(Value::Bool(b))),
            Slot::Int(i) => return Ok(Some(Value::Int(i))),
            Slot::Float(f) => return Ok(Some(Value::Float(f))),
            Slot::Node(id) => id,
        };
        let nodes = self.nodes;
        let (kind, children) = match &nodes[id] {
            Node::Leaf(v) => {
                self.bytes += leaf_bytes(v);
                if self.bytes > self.limits.max_bytes {
                    return Err(PickleError::Limit {
                        what: "bytes of the decoded value",
                        limit: self.limits.max_bytes,
                    });
                }
                return Ok(Some(v.clone()));
            }
            Node::List(v) => (Kind::List, v.clone()),
            Node::Tuple(v) => (Kind::Tuple, v.clone()),
            Node::Set(v) => (Kind::Set, v.clone()),
            Node::FrozenSet(v) => (Kind::FrozenSet, v.clone()),
            Node::Dict(kv) => (Kind::Dict, kv.iter().flat_map(|&(k, v)| [k, v]).collect()),
            Node::Object(o) => {
                let mut c = vec![o.callable, o.args];
                c.extend(o.kwargs);
                c.extend(&o.state);
                c.extend(&o.items);
                c.extend(o.entries.iter().flat_map(|&(k, v)| [k, v]));
                let kind = Kind::Object {
                    kwargs: o.kwargs.is_some(),
                    states: o.state.len(),
                    items: o.items.len(),
                    entries: o.entries.len(),
                    new: o.new,
                };
                (kind, c)
            }
        };
        if stack.len() >= self.limits.max_depth {
            return Err(PickleError::Limit {
                what: "nesting depth",
                limit: self.limits.max_depth as u64,
            });
        }
        if std::mem::replace(&mut self.visiting[id], true) {
            return Err(PickleError::Recursive);
        }
        stack.push(Frame {
            id,
            kind,
            done: Vec::with_capacity(children.len()),
            children,
            next: 0,
        });
        Ok(None)
    }
}

fn pairs(flat: Vec<Value>) -> Vec<(Value, Value)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

/// A finished frame into its value.
fn build(f: Frame) -> Value {
    match f.kind {
        Kind::List => Value::List(f.done),
        Kind::Tuple => Value::Tuple(f.done),
        Kind::Set => Value::Set(f.done),
        Kind::FrozenSet => Value::FrozenSet(f.done),
        Kind::Dict => Value::Dict(pairs(f.done)),
        Kind::Object {
            kwargs,
            states,
            items,
            entries,
            new,
        } => {
            let mut it = f.done.into_iter();
            let callable = it.next().unwrap_or(Value::None);
            let args = it.next().unwrap_or(Value::None);
            let kwargs = if kwargs { it.next() } else { None };
            let state: Vec<Value> = it.by_ref().take(states).collect();
            let items: Vec<Value> = it.by_ref().take(items).collect();
            let entries = pairs(it.take(2 * entries).collect());
            Value::Object(Box::new(super::Object {
                callable,
                args,
                kwargs,
                state,
                items,
                entries,
                new,
            }))
        }
    }
}
