//! Ten children, each printing its parent's pid and its own.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("一个比较简单的例子"):
//!
//! ```python
//! def f(name):
//!     time.sleep(1)
//!     print 'hello ', name
//!     print os.getppid()  # 取得父进程ID
//!     print os.getpid()   # 取得进程ID
//!
//! for i in range(10):
//!     p = Process(target=f, args=(i,))
//!     p.start()
//!     process_list.append(p)
//! for j in process_list:
//!     j.join()
//! ```
//!
//! `Process::spawn` is `Process(...)` and `start()` in one call. The parent pid printed here is the
//! pid of the process that asked for the child (`parent_process()`): under the default `forkserver`
//! start method the OS-level parent is the fork server, so `getppid()` would name that helper instead.
//!
//! The seed's variant of this function that holds a `Lock` around its prints is ported in
//! `process_lock_print.rs`; the `Lock` itself comes with the sync issue.
//!
//! Run with `cargo run --example process_basic`.

use multiprocess::{Process, current_process, parent_process};
use std::time::Duration;

fn f(name: u32) {
    std::thread::sleep(Duration::from_millis(100)); // the seed sleeps 1 s
    let parent = parent_process().expect("started by multiprocess");
    println!("hello {name}");
    println!("{}", parent.pid);
    println!("{}", current_process().pid);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut process_list = Vec::new();
    for i in 0..10 {
        process_list.push(Process::spawn(f, i)?);
    }
    for p in process_list {
        p.join()?;
    }
    Ok(())
}
