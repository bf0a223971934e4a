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
//! The lock is a `multiprocess::Lock` handed to each child in its argument: while a child holds it,
//! no other child can print, so each pair of lines stays together. The seed sleeps 1 s with the lock
//! held; here 100 ms, so the ten children take about one second in all.
//!
//! Run with `cargo run --example process_lock_print`.

use multiprocess::{Lock, Process, current_process, parent_process};
use std::time::Duration;

fn f(args: (u32, Lock)) {
    let (name, lock) = args;
    // `unwrap_or_else(into_inner)`: if a previous holder died mid-print, print anyway.
    let _guard = lock.lock().unwrap_or_else(|died| died.into_inner());
    std::thread::sleep(Duration::from_millis(100));
    println!("hello--{name}");
    let ppid = parent_process().map_or(0, |p| p.pid);
    println!("{ppid} ----------- {}", current_process().pid);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lock = Lock::new()?;
    let process_list = (0..10)
        .map(|i| Process::spawn(f, (i, lock.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    for p in process_list {
        p.join()?;
    }
    Ok(())
}
