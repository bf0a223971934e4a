//! Fuzzes the pickle decoder with arbitrary bytes (what a Python peer, or anyone who knows the key,
//! may send).
//!
//! No input may panic, abort, recurse past the stack or allocate past the limits: the answer is a
//! `Value` or a typed `PickleError`. Tight limits make the fuzzer reach them often; a value that
//! decodes must encode, and decode again to itself (NaN aside). The same bytes also go straight
//! into serde types (`from_slice`, which walks the machine's arena without a `Value` tree): a
//! recursive one (any depth of lists and dicts) and a fixed one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::pickle::{
    Limits, Value, decode, decode_with, encode, from_slice, from_slice_with,
};
use std::collections::BTreeMap;

/// Any plain Python value, as a recursive serde type.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Any {
    Nil(()),
    Bool(bool),
    Int(i64),
    Big(u64),
    Float(f64),
    Str(String),
    List(Vec<Any>),
    Map(BTreeMap<String, Any>),
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Fixed {
    id: u64,
    name: String,
    values: Vec<u32>,
    nested: Option<Vec<(i32, String)>>,
}

fn has_nan(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.is_nan(),
        Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => {
            x.iter().any(has_nan)
        }
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
    let _ = from_slice_with::<Any>(data, &tight);
    let _ = from_slice::<Any>(data);
    let _ = from_slice::<Fixed>(data);
    let _ = from_slice::<(u32, String, Vec<u8>)>(data);
    if let Ok(v) = decode(data) {
        let again = decode(&encode(&v).expect("a decoded value encodes")).expect("and decodes");
        if !has_nan(&v) {
            assert_eq!(again, v);
        }
    }
});
