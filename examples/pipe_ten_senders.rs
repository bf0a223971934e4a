//! Ten children send to the same end of one pipe; the parent receives all ten messages.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("2- Pipe 管道"):
//!
//! ```python
//! def f(conn, name):
//!     time.sleep(1)
//!     conn.send(['hello'+str(name)])
//!     print os.getppid(), '-----------', os.getpid()
//!
//! parent_conn, child_conn = Pipe()
//! for i in range(10):
//!     p = Process(target=f, args=(child_conn, i))
//!     p.start()
//! for j in process_list:
//!     j.join()
//! for p in range(10):
//!     print parent_conn.recv()
//! ```
//!
//! Python gives every child its own copy of `child_conn` behind the scenes. In Rust an end is moved
//! into one child, so each child gets a duplicate of the descriptor made with `Connection::try_clone`.
//! Each message goes out in one `sendmsg`, so concurrent senders never interleave their messages
//! (the seed warns that Python's pipes may "corrupt" under concurrent writers).
//!
//! Run with `cargo run --example pipe_ten_senders`.

use multiprocess::{Connection, Process, current_process, parent_process, pipe};
use std::time::Duration;

fn f((conn, name): (Connection, u32)) {
    std::thread::sleep(Duration::from_millis(100)); // the seed sleeps 1 s
    conn.send(&vec![format!("hello{name}")]).expect("send");
    let ppid = parent_process().map_or(0, |p| p.pid);
    println!("{ppid} ----------- {}", current_process().pid);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (parent_conn, child_conn) = pipe()?;
    let mut process_list = Vec::new();
    for i in 0..10 {
        // A second handle on the same end of the pipe, for this child to own.
        let copy = child_conn.try_clone()?;
        process_list.push(Process::spawn(f, (copy, i))?);
    }
    for p in process_list {
        p.join()?;
    }
    let mut all = Vec::new();
    for _ in 0..10 {
        let msg: Vec<String> = parent_conn.recv()?;
        println!("{msg:?}");
        all.extend(msg);
    }
    all.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("hello{i}")).collect();
    expected.sort();
    assert_eq!(all, expected);
    Ok(())
}
