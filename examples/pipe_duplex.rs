//! Two children talk over a duplex pipe: each end both sends and receives.
//!
//! From seed `001_2ca4a0fd69a57e43.txt` ("Pipe"):
//!
//! ```python
//! def proc1(pipe):
//!     pipe.send('hello')
//!     print('proc1rec:', pipe.recv())
//!
//! def proc2(pipe):
//!     print('proc2rec:', pipe.recv())
//!     pipe.send('hello,too')
//!
//! pipe = mul.Pipe()
//! p1 = mul.Process(target=proc1, args=(pipe[0],))
//! p2 = mul.Process(target=proc2, args=(pipe[1],))
//! p1.start(); p2.start(); p1.join(); p2.join()
//! ```
//!
//! Run with `cargo run --example pipe_duplex`.

use multiprocess::{Connection, Process, pipe};

fn proc1(pipe: Connection) -> String {
    pipe.send("hello").expect("send");
    let reply: String = pipe.recv().expect("recv");
    println!("proc1rec: {reply}");
    reply
}

fn proc2(pipe: Connection) -> String {
    let greeting: String = pipe.recv().expect("recv");
    println!("proc2rec: {greeting}");
    pipe.send("hello,too").expect("send");
    greeting
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `pipe()` is `Pipe()`: a pair of connected ends, each able to send and receive.
    let (end0, end1) = pipe()?;
    let p1 = Process::spawn(proc1, end0)?;
    let p2 = Process::spawn(proc2, end1)?;
    // The children's return values come back through `join`.
    assert_eq!(p1.join()?, "hello,too");
    assert_eq!(p2.join()?, "hello");
    Ok(())
}
