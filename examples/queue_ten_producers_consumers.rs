//! Ten producer and ten consumer processes on a `Queue(3)`, printing under a lock.
//!
//! From seed `001_2ca4a0fd69a57e43.txt` ("Queue"):
//!
//! ```python
//! def inputQ(queue):
//!     info = str(os.getpid()) + '(put):' + str(time.time())
//!     queue.put(info)
//!
//! def outputQ(queue, lock):
//!     info = queue.get()
//!     lock.acquire()
//!     print(str(os.getpid()) + '(get):' + info)
//!     lock.release()
//!
//! record1 = []   # producers
//! record2 = []   # consumers
//! lock = multiprocessing.Lock()   # keeps the terminal output from mixing
//! queue = multiprocessing.Queue(3)
//! for i in range(10):
//!     process = multiprocessing.Process(target=inputQ, args=(queue,))
//!     process.start()
//!     record1.append(process)
//! for i in range(10):
//!     process = multiprocessing.Process(target=outputQ, args=(queue, lock))
//!     process.start()
//!     record2.append(process)
//! for p in record1:
//!     p.join
//! queue.close()
//! for p in record2:
//!     p.join
//! ```
//!
//! At most three items are in the queue at once: the other producers wait in `put` until a consumer
//! makes room. (The seed forgets the parentheses of `p.join`; here every process is joined.)
//!
//! Run with `cargo run --example queue_ten_producers_consumers`.

use multiprocess::{Lock, Process, Queue};
use std::time::{SystemTime, UNIX_EPOCH};

fn input_q(queue: Queue<String>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let info = format!("{}(put):{:.6}", std::process::id(), now.as_secs_f64());
    queue.put(info).expect("put");
}

fn output_q(args: (Queue<String>, Lock)) {
    let (queue, lock) = args;
    let info = queue.get().expect("get");
    let _guard = lock.lock().unwrap_or_else(|died| died.into_inner());
    println!("{}(get):{info}", std::process::id());
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lock = Lock::new()?;
    let queue = Queue::bounded(3)?;
    let record1 = (0..10)
        .map(|_| Process::spawn(input_q, queue.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let record2 = (0..10)
        .map(|_| Process::spawn(output_q, (queue.clone(), lock.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    for p in record1 {
        p.join()?;
    }
    queue.close();
    for p in record2 {
        p.join()?;
    }
    Ok(())
}
