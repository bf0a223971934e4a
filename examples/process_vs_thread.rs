//! The same worker run in five threads and in five processes: the threads share one pid, the
//! processes each have their own.
//!
//! From seed `001_2ca4a0fd69a57e43.txt` ("0x00 多进程初步"):
//!
//! ```python
//! def worker(sign, lock):
//!     lock.acquire()
//!     print(sign, os.getpid())
//!     lock.release()
//!
//! print('main', os.getpid())
//! lock = threading.Lock()
//! for i in range(5):
//!     thread = threading.Thread(target=worker, args=('thread', lock))
//!     ...
//! lock = multiprocessing.Lock()
//! for i in range(5):
//!     process = multiprocessing.Process(target=worker, args=('process', lock))
//!     ...
//! ```
//!
//! One `multiprocess::Lock` serves both halves: it works between threads of one process as well as
//! between processes, so the same `worker` runs in either.
//!
//! Run with `cargo run --example process_vs_thread`.

use multiprocess::{Lock, Process};
use std::thread;

/// Runs in a thread or in a child process alike: a plain function.
fn worker(args: (String, Lock)) -> u32 {
    let (sign, lock) = args;
    let _guard = lock.lock().unwrap_or_else(|died| died.into_inner());
    println!("{sign} {}", std::process::id());
    std::process::id()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("main {}", std::process::id());
    let lock = Lock::new()?;

    let threads: Vec<_> = (0..5)
        .map(|_| {
            let lock = lock.clone();
            thread::spawn(move || worker(("thread".to_string(), lock)))
        })
        .collect();
    let thread_pids: Vec<u32> = threads
        .into_iter()
        .map(|t| t.join().expect("worker thread panicked"))
        .collect();

    let processes = (0..5)
        .map(|i| {
            Process::builder()
                .name(format!("worker-{i}"))
                .spawn(worker, ("process".to_string(), lock.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut process_pids = Vec::new();
    for p in processes {
        process_pids.push(p.join()?);
    }

    // What the printout shows, checked.
    assert!(thread_pids.iter().all(|&pid| pid == std::process::id()));
    process_pids.sort();
    process_pids.dedup();
    assert_eq!(process_pids.len(), 5, "every process has its own pid");
    Ok(())
}
