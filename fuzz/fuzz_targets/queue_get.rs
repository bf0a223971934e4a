//! Fuzzes a consumer reading a queue whose shared state was forged: the counts, positions, ring bytes
//! and overflow file all come from the input.
//!
//! Another process (or a stray write) can leave anything in a queue's shared memory. A `get` must
//! then return an item or an error: never panic, never read outside the ring, never allocate more
//! than the published bytes hold. The header checks are also driven on their own, where their
//! verdict can be checked exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::fuzzing::{get_from_forged_queue, log_record_len, ring_record_len};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 24 {
        let mut h = [0u8; 8];
        h.copy_from_slice(&data[..8]);
        let available = u64::from_le_bytes(data[8..16].try_into().unwrap());
        if let Ok(len) = ring_record_len(h, available, 2048) {
            // A record accepted fits what was published and the per-record limit.
            assert!(8 + u64::from(len) <= available && 8 + u64::from(len) <= 2048);
        }
        let mut l = [0u8; 16];
        l.copy_from_slice(&data[..16]);
        let available = u64::from_le_bytes(data[16..24].try_into().unwrap());
        if let Ok(len) = log_record_len(l, available) {
            assert!(len + 16 <= available);
        }
    }
    // Whatever the state, one bounded answer.
    let _ = get_from_forged_queue(data).map_err(|e| e.to_string());
});
