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
//! This port keeps the process part and leaves the lock out: the seed takes it only so that two
//! workers do not print at the same time. Here each worker prints its line with a single `println!`,
//! which reaches the terminal as one `write`, so lines cannot interleave. The version with a
//! cross-process `Lock` comes with the sync issue.
//!
//! Run with `cargo run --example process_vs_thread`.

use multiprocess::Process;
use std::thread;

/// Runs in a thread or in a child process alike: a plain function.
fn worker(sign: String) -> u32 {
    println!("{sign} {}", std::process::id());
    std::process::id()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("main {}", std::process::id());

    let threads: Vec<_> = (0..5)
        .map(|_| thread::spawn(|| worker("thread".to_string())))
        .collect();
    let thread_pids: Vec<u32> = threads
        .into_iter()
        .map(|t| t.join().expect("worker thread panicked"))
        .collect();

    let processes = (0..5)
        .map(|i| {
            Process::builder()
                .name(format!("worker-{i}"))
                .spawn(worker, "process".to_string())
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
