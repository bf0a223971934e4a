//! Ten children that each print two lines which must stay together.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("进程间同步"):
//!
//! ```python
//! def f(name):
//!     lock.acquire()
//!     time.sleep(1)
//!     print 'hello--'+str(name)
//!     print os.getppid(),'-----------',os.getpid()
//!     lock.release()
//!
//! lock = Lock()
//! for i in range(10):
//!     p = Process(target=f, args=(i,))
//!     p.start()
//! ```
//!
//! This ports the process part. The version with a cross-process `Lock` comes with the sync issue.
//! Until then, the two lines stay together without one: each child formats both lines first and hands
//! them to the terminal in a single `write`, which POSIX makes atomic on a pipe for up to `PIPE_BUF`
//! (4096) bytes. The children also run side by side instead of one after the other, so the run takes
//! one sleep rather than ten.
//!
//! Run with `cargo run --example process_lock_print`.

use multiprocess::{Process, current_process, parent_process};
use std::io::Write;
use std::time::Duration;

/// Returns the write error as text: `io::Error` is not a serde type.
fn f(name: u32) -> Result<(), String> {
    std::thread::sleep(Duration::from_millis(100)); // the seed sleeps 1 s, holding the lock
    let ppid = parent_process().map_or(0, |p| p.pid);
    let text = format!(
        "hello--{name}\n{ppid} ----------- {}\n",
        current_process().pid
    );
    // One write for both lines (stdout is line-buffered; a buffer ending in '\n' goes out at once).
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let process_list = (0..10)
        .map(|i| Process::spawn(f, i))
        .collect::<Result<Vec<_>, _>>()?;
    for p in process_list {
        p.join()??; // outer: the process failed; inner: its write failed
    }
    Ok(())
}
