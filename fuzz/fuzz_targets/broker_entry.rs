//! Fuzzes the checks of a broker entry: what a pool's worker reads off the task stream and a caller
//! off its result stream, and what a queue's consumer reads.
//!
//! Anyone who can write to the broker can write any bytes there. The checker must then refuse the
//! entry (bad frame, unknown kind, a MAC that does not verify) or, for a holder of the key, decode
//! its body or refuse it: never panic, never allocate beyond what the entry holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::fuzzing::broker_entry;

fuzz_target!(|data: &[u8]| {
    let _ = broker_entry(data);
});
