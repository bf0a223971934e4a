//! Fuzzes the pickle decoder with arbitrary bytes (what a Python peer, or anyone who knows the key,
//! may send).
//!
//! No input may panic, abort, recurse past the stack or allocate past the limits: the answer is a
//! `Value` or a typed `PickleError`. Tight limits make the fuzzer reach them often; a value that
//! decodes must encode, and decode again to itself (NaN aside).

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::pickle::{Limits, Value, decode, decode_with, encode};

fn has_nan(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.is_nan(),
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => x.iter().any(has_nan),
        Value::Dict(kv) => kv.iter().any(|(k, v)| has_nan(k) || has_nan(v)),
        Value::Object(o) => {
            has_nan(&o.callable)
                || has_nan(&o.args)
                || o.kwargs.as_ref().is_some_and(has_nan)
                || o.state.iter().any(has_nan)
                || o.items.iter().any(has_nan)
                || o.entries.iter().any(|(k, v)| has_nan(k) || has_nan(v))
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let tight = Limits {
        max_nodes: 10_000,
        max_depth: 50,
        max_marks: 100,
        max_stack: 1_000,
        max_memo: 100,
        max_bytes: 1 << 20,
    };
    let _ = decode_with(data, &tight);
    if let Ok(v) = decode(data) {
        let again = decode(&encode(&v).expect("a decoded value encodes")).expect("and decodes");
        if !has_nan(&v) {
            assert_eq!(again, v);
        }
    }
});
