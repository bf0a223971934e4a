//! A Rust client with a Python server: Python's own `multiprocessing.connection.Listener` on a Unix
//! socket with an authentication key, and a Rust [`Client`] connecting to it.
//!
//! Run with `cargo run --example python_server` (`PYTHON=/path/to/python3.12` to pick the interpreter).

use multiprocess::Client;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const SERVER: &str = r#"
import sys
from multiprocessing.connection import Listener
with Listener(sys.argv[1], authkey=b'shared secret') as l:
    print(l.address, flush=True)
    with l.accept() as c:
        msg = c.recv_bytes()
        print('python got:', msg.decode(), flush=True)
        c.send_bytes(msg.upper())
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("python-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("py.sock");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .args(["-c", SERVER])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {python}: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?; // the server is listening
    println!("python: listening at {}", line.trim());
    let conn = Client::builder(&path).authkey(b"shared secret").connect()?;
    conn.send_bytes(b"hello from rust")?;
    println!("rust got: {}", String::from_utf8_lossy(&conn.recv_bytes()?));
    line.clear();
    out.read_line(&mut line)?;
    print!("{line}");
    child.wait()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
