//! Fuzzes the manager's request decoder and the server behind it: a sequence of requests from one
//! client, each arbitrary bytes, run against a fresh server state (the objects the early requests
//! create are what the later ones act on), then the client's departure.
//!
//! Anyone who knows the key can send a manager anything. No request may panic the server, loop,
//! or make it allocate past what the request holds; one that does not decode ends that client's
//! connection only.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::fuzzing::manager_requests;

fuzz_target!(|data: &[u8]| {
    let _ = manager_requests(data);
});
