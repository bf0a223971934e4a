//! Ten processes each put a greeting; the parent joins them all, then takes the ten greetings.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("进程间通信"):
//!
//! ```python
//! from multiprocessing import Process,Queue
//! import time
//! def f(name):
//!     time.sleep(1)
//!     q.put(['hello'+str(name)])
//! process_list = []
//! q = Queue()
//! if __name__ == '__main__':
//!     for i in range(10):
//!         p = Process(target=f,args=(i,))
//!         p.start()
//!         process_list.append(p)
//!     for j in process_list:
//!         j.join()
//!     for i in range(10):
//!         print q.get()
//! ```
//!
//! Joining the producers before taking their items is a known hang in CPython when the items are
//! large (the feeder thread cannot finish writing into a full pipe). Here `put` has stored the item in
//! shared memory when it returns, so joining first is always fine. The queue is passed to each child
//! instead of being a global (Rust has no module-level objects created on import). The seed's one-second
//! sleep is 100 ms here.
//!
//! Run with `cargo run --example queue_hello`.

use multiprocess::{Process, Queue};
use std::time::Duration;

fn f(args: (Queue<Vec<String>>, u32)) {
    let (q, name) = args;
    std::thread::sleep(Duration::from_millis(100));
    q.put(vec![format!("hello{name}")]).expect("put");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q = Queue::new()?;
    let process_list = (0..10)
        .map(|i| Process::spawn(f, (q.clone(), i)))
        .collect::<Result<Vec<_>, _>>()?;
    for j in process_list {
        j.join()?;
    }
    for _ in 0..10 {
        println!("{:?}", q.get()?);
    }
    Ok(())
}
