//! Fuzzes a receiving `Connection` with an arbitrary byte stream from a hostile peer.
//!
//! The bytes are written raw into one end of a Unix socket pair whose other end is wrapped as a
//! `Connection`; the writer then hangs up. Receiving (raw and typed, alternately) must end in an error
//! (end-of-file, truncation, protocol or decode error) without panicking, hanging or allocating what a
//! forged length announces.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::{Connection, RecvError};
use std::io::Write;
use std::os::unix::net::UnixStream;

/// Socket buffers hold at least this much, so writing it all before reading cannot block.
const MAX_INPUT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (mut peer, ours) = UnixStream::pair().expect("socketpair");
    let conn = Connection::from_fd(ours.into());
    // The writer must not block while nobody reads: write from a thread.
    let bytes = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = peer.write_all(&bytes);
        // `peer` drops here: the connection sees end-of-file after the bytes.
    });
    let mut typed = data.first().is_some_and(|b| b & 1 == 1);
    let mut messages = 0usize;
    loop {
        let result = if typed {
            conn.recv::<(u32, String, Vec<u8>)>().map(drop)
        } else {
            conn.recv_bytes().map(drop)
        };
        match result {
            Ok(()) => messages += 1,
            // A message that does not decode as the type is consumed; the stream stays usable.
            Err(RecvError::Decode(_)) => messages += 1,
            Err(_) => break,
        }
        // Each message consumes at least a 4-byte header.
        assert!(messages <= data.len() / 4);
        typed = !typed;
    }
    writer.join().expect("writer thread");
    // After the error every later receive fails too; none may panic.
    assert!(conn.recv_bytes().is_err());
});
