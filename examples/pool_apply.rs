//! A pool of three workers runs four tasks one after the other: `apply` blocks until each is done.
//!
//! From seed `000_4d02b37691011441.txt` ("Pool", the blocking example):
//!
//! ```python
//! def func(msg):
//!     print "msg:", msg
//!     time.sleep(3)
//!     print "end"
//!
//! if __name__ == "__main__":
//!     pool = multiprocessing.Pool(processes = 3)
//!     for i in xrange(4):
//!         msg = "hello %d" %(i)
//!         pool.apply(func, (msg, ))
//!
//!     pool.close()
//!     pool.join()
//!     print "Sub-process(es) done."
//! ```
//!
//! The output alternates `msg` and `end`, as in the seed's. The seed's three-second sleep is 100 ms
//! here.
//!
//! Run with `cargo run --example pool_apply`.

use multiprocess::Pool;
use std::time::Duration;

fn func(msg: String) {
    println!("msg: {msg}");
    std::thread::sleep(Duration::from_millis(100));
    println!("end");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(3)?;
    for i in 0..4 {
        pool.apply(func, format!("hello {i}"))?;
    }
    pool.close();
    pool.join()?;
    println!("Sub-process(es) done.");
    Ok(())
}
