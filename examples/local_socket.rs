//! A server and a client over a local (Unix) socket: the client sends lines, the server prints each
//! and answers `copy! <time>`.
//!
//! From seed `004_450fec6b1a3417ef.txt` ("本地套接字", local sockets):
//!
//! ```python
//! # server
//! file = './msg.sock'
//! if os.path.exists(file):
//!     os.remove(file)
//! socketfd = socket(AF_UNIX, SOCK_STREAM)
//! socketfd.bind(file)
//! socketfd.listen(5)
//! while True:
//!     connfd, addr = socketfd.accept()
//!     while True:
//!         data = connfd.recv(1024)
//!         if not data:
//!             break
//!         print(data.decode())
//!         connfd.send('copy! {}'.format(ctime()).encode())
//!     connfd.close()
//!
//! # client
//! clientfd = socket(AF_UNIX, SOCK_STREAM)
//! clientfd.connect(file)
//! while True:
//!     msg = input('>>>')
//!     if not msg:
//!         break
//!     clientfd.send(msg.encode())
//!     data = clientfd.recv(1024)
//!     print(data.decode())
//! clientfd.close()
//! ```
//!
//! The port uses [`Listener`] and [`Client`]: whole messages instead of `recv(1024)` (a raw socket
//! may split or merge what was sent), no `os.remove` before binding (a stale socket file is
//! replaced, a live listener's is not), and the file is removed when the listener is dropped. The
//! server runs in a child process and serves one client; the client sends three lines instead of
//! reading the terminal.
//!
//! Run with `cargo run --example local_socket`.

use multiprocess::{Client, Listener, Process, RecvError};
use std::path::PathBuf;
use std::time::SystemTime;

fn server(listener: PathBuf) -> usize {
    // Bound in the child: the file is the child's, removed when it returns.
    let listener = Listener::bind(&listener).expect("bind");
    println!("server: listening at {}", listener.address());
    let conn = listener.accept().expect("accept");
    let mut served = 0;
    loop {
        match conn.recv_bytes() {
            Ok(data) => {
                println!("server: {}", String::from_utf8_lossy(&data));
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                conn.send_bytes(format!("copy! {now}").as_bytes())
                    .expect("reply");
                served += 1;
            }
            Err(RecvError::Eof) => return served, // the client closed its end
            Err(e) => panic!("server: {e}"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("local-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("msg.sock");
    let child = Process::spawn(server, file.clone())?;
    // Wait for the server's socket to appear, then connect.
    let conn = loop {
        match Client::connect(&file) {
            Ok(c) => break c,
            Err(_) if child.is_alive() => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(e.into()),
        }
    };
    for msg in ["hello", "how are you", "bye"] {
        println!(">>>{msg}");
        conn.send_bytes(msg.as_bytes())?;
        println!("{}", String::from_utf8_lossy(&conn.recv_bytes()?));
    }
    drop(conn);
    let served = child.join()?;
    println!(
        "the server answered {served} messages; socket file left: {}",
        file.exists()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
