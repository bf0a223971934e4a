//! A pool of three workers runs four tasks without blocking the parent, which closes the pool and
//! joins it.
//!
//! From seed `000_4d02b37691011441.txt` ("Pool", the non-blocking example):
//!
//! ```python
//! import multiprocessing
//! import time
//! def func(msg):
//!     print "msg:", msg
//!     time.sleep(3)
//!     print "end"
//!
//! if __name__ == "__main__":
//!     pool = multiprocessing.Pool(processes = 3)
//!     for i in xrange(4):
//!         msg = "hello %d" %(i)
//!         pool.apply_async(func, (msg, ))
//!
//!     pool.close()
//!     pool.join()
//!     print "Sub-process(es) done."
//! ```
//!
//! Three tasks start at once; the fourth waits for a free worker. `close` lets the submitted tasks
//! finish, `join` waits for the workers to leave. The seed's three-second sleep is 300 ms here.
//!
//! Run with `cargo run --example pool_apply_async`.

use multiprocess::Pool;
use std::time::{Duration, Instant};

fn func(msg: String) {
    println!("msg: {msg}");
    std::thread::sleep(Duration::from_millis(300));
    println!("end");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let pool = Pool::new(3)?;
    let pending: Vec<_> = (0..4)
        .map(|i| pool.apply_async(func, format!("hello {i}")))
        .collect();
    println!(
        "all four submitted after {:?}: the parent did not wait",
        start.elapsed()
    );
    pool.close();
    pool.join()?;
    for r in &pending {
        r.get()?; // each task's outcome: here, that it ran
    }
    println!(
        "Sub-process(es) done after {:?} (three at a time: two rounds of 300 ms)",
        start.elapsed()
    );
    Ok(())
}
