//! A pipe used inside one process: what one end sends, the other end receives.
//!
//! From seed `002_91837ab9186c4282.txt` ("单进程下的管道"):
//!
//! ```python
//! from multiprocessing import Pipe
//! c1, c2 = Pipe()
//! c1.send('abc')
//! print(c2.recv())
//! c2.send(111)
//! print(c1.recv())
//! ```
//!
//! Any serde value can be sent; the receiver names the type it expects.
//!
//! Run with `cargo run --example pipe_single_process`.

use multiprocess::pipe;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (c1, c2) = pipe()?;
    c1.send("abc")?;
    let s: String = c2.recv()?;
    println!("{s}");
    c2.send(&111)?;
    let n: i32 = c1.recv()?;
    println!("{n}");
    assert_eq!((s.as_str(), n), ("abc", 111));
    Ok(())
}
