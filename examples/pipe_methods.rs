//! Every method of a connection that the seed lists, one after another, against a child that sends.
//!
//! From seed `002_91837ab9186c4282.txt` (the reference of `Pipe`'s methods):
//!
//! ```python
//! conn1.recv()                                  # EOFError once the other end is closed
//! conn1.send(obj)
//! conn1.close()
//! conn1.fileno()
//! conn1.poll([timeout])
//! conn1.recv_bytes([maxlength])                 # IOError if longer; no further reads possible
//! conn.send_bytes(buffer [, offset [, size]])
//! conn1.recv_bytes_into(buffer [, offset])      # BufferTooShort if it does not fit
//! ```
//!
//! | Python | here |
//! |---|---|
//! | `send_bytes(buf, offset, size)` | `send_bytes_range(buf, offset, Some(size))` |
//! | `recv_bytes(maxlength)` raising `IOError` | `recv_bytes_max(maxlength)` returning `RecvError::TooLong` |
//! | `recv_bytes_into(buf, offset)` raising `BufferTooShort` | `recv_bytes_into_at(buf, offset)` returning `RecvError::BufferTooShort(message)` |
//! | `poll(timeout)` | `poll(Duration)` |
//! | `fileno()` | `as_raw_fd()` |
//! | `close()` | `close()` or drop |
//! | `EOFError` | `RecvError::Eof` |
//!
//! Run with `cargo run --example pipe_methods`.

use multiprocess::{Connection, Process, RecvError, pipe};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Sends four raw messages, then waits for the parent to close its end. Returns whether it saw EOF.
fn sender(conn: Connection) -> bool {
    std::thread::sleep(Duration::from_millis(50));
    let text = b"hello world";
    conn.send_bytes_range(text, 6, None).unwrap(); // "world"
    conn.send_bytes_range(text, 0, Some(5)).unwrap(); // "hello"
    conn.send_bytes(b"0123456789").unwrap();
    conn.send_bytes(b"too long for four bytes").unwrap();
    matches!(conn.recv_bytes(), Err(RecvError::Eof))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (conn, there) = pipe()?;
    println!("fileno: {}", conn.as_raw_fd());
    let child = Process::spawn(sender, there)?;

    println!("poll(10 ms) -> {}", conn.poll(Duration::from_millis(10))?);
    let t = Instant::now();
    let ready = conn.poll(Duration::from_secs(5))?;
    println!("poll(5 s)   -> {ready} after {:.0?}", t.elapsed());

    let world = conn.recv_bytes()?;
    let hello = conn.recv_bytes()?;
    println!(
        "send_bytes_range / recv_bytes: {:?} {:?}",
        String::from_utf8_lossy(&world),
        String::from_utf8_lossy(&hello)
    );

    let mut buf = [b'.'; 16];
    let n = conn.recv_bytes_into_at(&mut buf, 4)?;
    println!(
        "recv_bytes_into_at(buf, 4): {n} bytes, buf = {:?}",
        String::from_utf8_lossy(&buf)
    );

    match conn.recv_bytes_into(&mut [0; 4]) {
        Err(RecvError::BufferTooShort(msg)) => println!(
            "recv_bytes_into(4-byte buf): BufferTooShort, message handed back: {:?}",
            String::from_utf8_lossy(&msg)
        ),
        other => panic!("expected BufferTooShort, got {other:?}"),
    }

    conn.close(); // consumes `conn`: Python's later `conn.recv()` raising OSError cannot be written
    let saw_eof = child.join()?;
    println!("the child's recv after our close(): EOF = {saw_eof}");
    assert!(saw_eof);

    // maxlength: a message over the limit is refused, and the end can no longer be read (as in Python).
    let (a, b) = pipe()?;
    a.send_bytes(&[7; 100])?;
    match b.recv_bytes_max(10) {
        Err(e @ RecvError::TooLong { .. }) => println!("recv_bytes_max(10): {e}"),
        other => panic!("expected TooLong, got {other:?}"),
    }
    println!("recv_bytes afterwards: {}", b.recv_bytes().unwrap_err());
    Ok(())
}
