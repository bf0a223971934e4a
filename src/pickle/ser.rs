//! The encoder: protocol 4 opcodes, from a [`Value`] (here) or a serde value (`serde_ser`).

use super::{PickleError, Value};
use num_bigint::BigInt;

/// Items per `APPENDS`/`SETITEMS`/`ADDITEMS` batch, as CPython's pickler.
pub(super) const BATCH: usize = 1000;

/// Encodes `value` as a protocol 4 pickle, which every supported Python reads.
///
/// ```
/// use multiprocess::pickle::{decode, encode, Value};
/// let v = Value::Dict(vec![(Value::Str("k".into()), Value::Tuple(vec![Value::Int(1), Value::None]))]);
/// assert_eq!(decode(&encode(&v)?)?, v);
/// # Ok::<(), multiprocess::pickle::PickleError>(())
/// ```
pub fn encode(value: &Value) -> Result<Vec<u8>, PickleError> {
    let mut w = Writer::new();
    w.value(value);
    Ok(w.finish())
}

/// Opcodes into a buffer.
pub(super) struct Writer {
    pub(super) out: Vec<u8>,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer { out: vec![0x80, 4] }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }

    pub(super) fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    pub(super) fn none(&mut self) {
        self.op(b'N');
    }

    pub(super) fn bool(&mut self, b: bool) {
        self.op(if b { 0x88 } else { 0x89 });
    }

    pub(super) fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.op(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.op(b'J');
            self.out.extend(v.to_le_bytes());
        } else {
            // LONG1 with the fewest two's complement bytes (as Python's `encode_long`), no big
            // int on the way.
            let le = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let (top, next) = (le[n - 1], le[n - 2]);
                if (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.out.extend([0x8a, n as u8]);
            self.out.extend(&le[..n]);
        }
    }

    pub(super) fn bigint(&mut self, v: &BigInt) {
        let b = v.to_signed_bytes_le();
        if b.len() < 256 {
            self.out.extend([0x8a, b.len() as u8]);
        } else {
            self.op(0x8b);
            self.out.extend((b.len() as u32).to_le_bytes());
        }
        self.out.extend(b);
    }

    pub(super) fn float(&mut self, v: f64) {
        self.op(b'G');
        self.out.extend(v.to_be_bytes());
    }

    pub(super) fn str(&mut self, s: &str) {
        let n = s.len();
        if n < 256 {
            self.out.extend([0x8c, n as u8]);
        } else if let Ok(n) = u32::try_from(n) {
            self.op(b'X');
            self.out.extend(n.to_le_bytes());
        } else {
            self.op(0x8d);
            self.out.extend((n as u64).to_le_bytes());
        }
        self.out.extend(s.as_bytes());
    }

    pub(super) fn bytes(&mut self, b: &[u8]) {
        let n = b.len();
        if n < 256 {
            self.out.extend([b'C', n as u8]);
        } else if let Ok(n) = u32::try_from(n) {
            self.op(b'B');
            self.out.extend(n.to_le_bytes());
        } else {
            self.op(0x8e);
            self.out.extend((n as u64).to_le_bytes());
        }
        self.out.extend(b);
    }

    /// `bytearray(b'...')` (protocol 4 has no opcode of its own for it).
    pub(super) fn bytearray(&mut self, b: &[u8]) {
        self.global("builtins", "bytearray");
        self.bytes(b);
        self.op(0x85);
        self.op(b'R');
    }

    pub(super) fn global(&mut self, module: &str, name: &str) {
        self.str(module);
        self.str(name);
        self.op(0x93);
    }

    fn seq(&mut self, items: &[Value], each: u8) {
        for chunk in items.chunks(BATCH) {
            self.op(b'(');
            for v in chunk {
                self.value(v);
            }
            self.op(each);
        }
    }

    pub(super) fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.none(),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::BigInt(b) => self.bigint(b),
            Value::Float(f) => self.float(*f),
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => self.bytes(b),
            Value::ByteArray(b) => self.bytearray(b),
            Value::List(items) => {
                self.op(b']');
                self.seq(items, b'e');
            }
            Value::Tuple(items) => match items.len() {
                0 => self.op(b')'),
                n @ 1..=3 => {
                    for v in items {
                        self.value(v);
                    }
                    self.op(0x84 + n as u8);
                }
                _ => {
                    self.op(b'(');
                    for v in items {
                        self.value(v);
                    }
                    self.op(b't');
                }
            },
            Value::Dict(kv) => {
                self.op(b'}');
                for chunk in kv.chunks(BATCH) {
                    self.op(b'(');
                    for (k, v) in chunk {
                        self.value(k);
                        self.value(v);
                    }
                    self.op(b'u');
                }
            }
            Value::Set(items) => {
                self.op(0x8f);
                self.seq(items, 0x90);
            }
            Value::FrozenSet(items) => {
                self.op(b'(');
                for v in items {
                    self.value(v);
                }
                self.op(0x91);
            }
            Value::Global { module, name } => self.global(module, name),
            Value::Object(o) => {
                let super::Object {
                    callable,
                    args,
                    kwargs,
                    state,
                    items,
                    entries,
                    new,
                } = &**o;
                self.value(callable);
                self.value(args);
                match (new, kwargs) {
                    (true, Some(k)) => {
                        self.value(k);
                        self.op(0x92);
                    }
                    (true, None) => self.op(0x81),
                    (false, _) => self.op(b'R'),
                }
                // As CPython's `save_reduce`: list items, dict items, then the state.
                self.seq(items, b'e');
                for chunk in entries.chunks(BATCH) {
                    self.op(b'(');
                    for (k, v) in chunk {
                        self.value(k);
                        self.value(v);
                    }
                    self.op(b'u');
                }
                for s in state {
                    self.value(s);
                    self.op(b'b');
                }
            }
        }
    }
}
