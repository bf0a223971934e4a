//! One process puts without blocking, another gets without blocking.
//!
//! From seed `000_4d02b37691011441.txt` ("Queue"):
//!
//! ```python
//! def writer_proc(q):
//!     try:
//!         q.put(1, block = False)
//!     except:
//!         pass
//! def reader_proc(q):
//!     try:
//!         print q.get(block = False)
//!     except:
//!         pass
//! if __name__ == "__main__":
//!     q = multiprocessing.Queue()
//!     writer = multiprocessing.Process(target=writer_proc, args=(q,))
//!     writer.start()
//!     reader = multiprocessing.Process(target=reader_proc, args=(q,))
//!     reader.start()
//!     reader.join()
//!     writer.join()
//! ```
//!
//! `put(1, block=False)` is [`Queue::try_put`] and `get(block=False)` is [`Queue::try_get`]; instead of
//! a bare `except: pass`, the errors are typed (`Full` hands the item back, `Empty` says why). As in
//! the seed, the reader may run before the writer and find the queue empty; the parent then shows
//! where the item went.
//!
//! Run with `cargo run --example queue_nonblocking`.

use multiprocess::{Process, Queue, TryGetError};

fn writer_proc(q: Queue<i32>) {
    if let Err(e) = q.try_put(1) {
        println!("writer: {e}");
    }
}

fn reader_proc(q: Queue<i32>) -> Option<i32> {
    match q.try_get() {
        Ok(v) => {
            println!("{v}");
            Some(v)
        }
        Err(TryGetError::Empty) => {
            println!("reader: the queue was empty (the writer had not put yet)");
            None
        }
        Err(e) => panic!("reader: {e}"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q = Queue::new()?;
    let writer = Process::spawn(writer_proc, q.clone())?;
    let reader = Process::spawn(reader_proc, q.clone())?;
    let read = reader.join()?;
    writer.join()?;
    if read.is_none() {
        println!("parent: the item is still queued: {}", q.try_get()?);
    }
    Ok(())
}
