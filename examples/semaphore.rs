//! A semaphore caps how many processes run a section at once.
//!
//! From seed `004_450fec6b1a3417ef.txt` ("信号量"):
//!
//! ```python
//! from multiprocessing import Semaphore
//! # num代表并发数量
//! sem = Semaphore(num)
//! # 将信号量减1 当信号量为0时阻塞
//! sem.acquire()
//! # 将信号量加1
//! sem.release()
//! # 获取信号量数量
//! sem.get_value()
//! ```
//!
//! The seed only lists the calls; here six processes share a `Semaphore(2)`, each holds a slot for
//! 100 ms, and a shared counter records how many were inside at once: never more than two.
//!
//! Run with `cargo run --example semaphore`.

use multiprocess::{AtomicValue, Process, Semaphore, Value};
use std::time::Duration;

fn work(args: (Semaphore, AtomicValue<i32>, Value<i32>, u32)) {
    let (sem, inside, most, n) = args;
    let _slot = sem.acquire(); // given back when it drops, at the end of this function
    let now = inside.fetch_add(1) + 1;
    let mut g = most.lock().unwrap_or_else(|died| died.into_inner());
    *g = (*g).max(now);
    drop(g);
    println!(
        "process {n} in ({now} inside, {} slot(s) free)",
        sem.get_value()
    );
    std::thread::sleep(Duration::from_millis(100));
    inside.fetch_add(-1);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sem = Semaphore::new(2)?;
    let (inside, most) = (AtomicValue::new(0i32)?, Value::new(0i32)?);
    let procs = (0..6)
        .map(|n| Process::spawn(work, (sem.clone(), inside.clone(), most.clone(), n)))
        .collect::<Result<Vec<_>, _>>()?;
    for p in procs {
        p.join()?;
    }
    println!(
        "at most {} inside at once; get_value() = {}",
        most.get(),
        sem.get_value()
    );
    assert!(most.get() <= 2);
    Ok(())
}
