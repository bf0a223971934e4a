//! Fuzzes the bootstrap prelude: the first bytes a re-executed child reads from whoever started it
//! (`sys::entry::accept_boot`), which name the entry and function to run by token and type name.
//!
//! Decoding must never panic, must refuse anything but a well-formed prelude (announced length equal
//! to what follows, at most 16 KiB, two UTF-8 type names), and what it accepts must be exactly what
//! the parent's encoder would have written for those tokens and names.

#![no_main]

use libfuzzer_sys::fuzz_target;

fn encode(entry: i64, entry_name: &str, func: i64, func_name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(entry.to_le_bytes());
    body.extend(func.to_le_bytes());
    for name in [entry_name, func_name] {
        body.extend((name.len() as u16).to_le_bytes());
        body.extend(name.as_bytes());
    }
    let mut out = b"mpB1".to_vec();
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some((entry, entry_name, func, func_name)) = multiprocess::fuzzing::boot_prelude(data) {
        assert!(data.len() <= 8 + (16 << 10));
        assert_eq!(encode(entry, &entry_name, func, &func_name), data);
    }
});
