//! Fuzzes the Rust clients' side of the server for Python clients (`manager::python`, its
//! `native.rs`): a sequence of requests in the crate's manager protocol from one client, each
//! arbitrary bytes, run against a fresh server state (the objects the early requests create are
//! what the later ones act on).
//!
//! Any program with the key can send the server anything: requests of any shape, values that are
//! not pickles, calls on objects of another kind. No request may panic the server; every answer
//! encodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::fuzzing::python_manager_native_requests;

fuzz_target!(|data: &[u8]| {
    let _ = python_manager_native_requests(data);
});
