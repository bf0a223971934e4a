//! Fuzzes the Python-mode manager server (`manager::python`): a sequence of pickled requests from
//! one client, each arbitrary bytes, run against a fresh server state (the objects the early
//! requests create are what the later ones act on).
//!
//! Any program with the key can send the server anything: a pickle of any shape, calls with any
//! arguments on any object. No request may panic the server or make it allocate past its limits;
//! every answer is a reply that pickles (`#RETURN`, `#ERROR`, `#TRACEBACK`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::fuzzing::python_manager_requests;

fuzz_target!(|data: &[u8]| {
    let _ = python_manager_requests(data);
});
