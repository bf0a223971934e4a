//! One child sends numbers down a pipe, another prints them as they arrive.
//!
//! From seed `000_4d02b37691011441.txt` ("Pipe"):
//!
//! ```python
//! def proc1(pipe):
//!     while True:
//!         for i in xrange(10000):
//!             print "send: %s" %(i)
//!             pipe.send(i)
//!             time.sleep(1)
//!
//! def proc2(pipe):
//!     while True:
//!         print "proc2 rev:", pipe.recv()
//!         time.sleep(1)
//!
//! pipe = multiprocessing.Pipe()
//! p1 = multiprocessing.Process(target=proc1, args=(pipe[0],))
//! p2 = multiprocessing.Process(target=proc2, args=(pipe[1],))
//! ```
//!
//! The seed runs forever; this port sends five numbers 20 ms apart. The receiver needs no count:
//! when the sender returns, its end of the pipe closes and `recv` reports [`RecvError::Eof`], which
//! ends the loop. That works because each end was *moved* into its child: the parent kept no copy
//! that would hold the pipe open.
//!
//! Run with `cargo run --example pipe_ping`.

use multiprocess::{Connection, Process, RecvError, pipe};
use std::time::Duration;

const MESSAGES: u32 = 5;

fn proc1(pipe: Connection) {
    for i in 0..MESSAGES {
        println!("send: {i}");
        pipe.send(&i).expect("the receiver is alive");
        std::thread::sleep(Duration::from_millis(20)); // the seed sleeps 1 s
    }
}

/// Returns how many messages it received.
fn proc2(pipe: Connection) -> u32 {
    let mut received = 0;
    loop {
        match pipe.recv::<u32>() {
            Ok(i) => {
                println!("proc2 rev: {i}");
                received += 1;
            }
            Err(RecvError::Eof) => return received,
            Err(e) => panic!("unexpected receive error: {e}"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (end0, end1) = pipe()?;
    let p1 = Process::spawn(proc1, end0)?;
    let p2 = Process::spawn(proc2, end1)?;
    p1.join()?;
    let received = p2.join()?;
    println!("proc2 saw end-of-file after {received} messages");
    assert_eq!(received, MESSAGES);
    Ok(())
}
