//! A Rust server with a Python client: a [`Listener`] on TCP with an authentication key, and
//! Python's own `multiprocessing.connection.Client` connecting to it.
//!
//! Python checks the key with the same handshake as a Python listener (the current `{sha256}` form
//! from Python 3.12, the HMAC-MD5 one from older versions; this listener speaks both), then the two
//! exchange raw messages in Python's framing.
//!
//! Run with `cargo run --example python_client` (`PYTHON=/path/to/python3.12` to pick the interpreter).

use multiprocess::Listener;
use std::process::Command;

const CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
host, port = sys.argv[1].rsplit(':', 1)
with Client((host, int(port)), authkey=b'shared secret') as c:
    c.send_bytes(b'hello from Python %d.%d' % sys.version_info[:2])
    print('python got:', c.recv_bytes().decode())
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = Listener::builder("127.0.0.1:0")
        .authkey(b"shared secret")
        .bind()?;
    println!("rust: listening at {}", listener.address());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .args(["-c", CLIENT, &listener.address().to_string()])
        .spawn()
        .map_err(|e| format!("could not start {python}: {e}"))?;
    let conn = listener.accept()?; // authenticated both ways
    let msg = conn.recv_bytes()?;
    println!("rust got: {}", String::from_utf8_lossy(&msg));
    conn.send_bytes(b"hello from Rust")?;
    let status = child.wait()?;
    println!("python exited: {status}");
    Ok(())
}
