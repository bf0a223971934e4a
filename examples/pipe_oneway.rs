//! A one-way pipe: the first child writes, exits, and a second child, started later, reads.
//!
//! From seed `004_450fec6b1a3417ef.txt` ("管道"):
//!
//! ```python
//! def fun1():
//!     time.sleep(2)
//!     fd2.send("msg")      # 向管道写入内容
//!
//! def fun2():
//!     print(fd1.recv())    # 阻塞形式接收
//!
//! # Pipe() 参数默认为True，双向管道均可读写
//! # False表示是单向管道，fd1只读，fd2只写
//! fd1, fd2 = Pipe()
//! p1 = Process(target=fun1); p1.start(); p1.join()
//! p2 = Process(target=fun2); p2.start(); p2.join()
//! ```
//!
//! The seed's functions reach the pipe through globals inherited by `fork`; here each end is the
//! child's argument, which works under every start method. [`pipe_oneway`] is `Pipe(duplex=False)`:
//! `fd1` only receives and `fd2` only sends; using an end the wrong way is an error
//! (`WrongDirection`), not a silent misuse. The message outlives its sender: it waits in the pipe
//! until the second child reads it.
//!
//! Run with `cargo run --example pipe_oneway`.

use multiprocess::{Connection, Process, pipe_oneway};
use std::time::Duration;

fn fun1(fd2: Connection) {
    std::thread::sleep(Duration::from_millis(200)); // the seed sleeps 2 s
    fd2.send("msg").expect("send");
}

fn fun2(fd1: Connection) -> String {
    let msg: String = fd1.recv().expect("recv");
    println!("{msg}");
    msg
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (fd1, fd2) = pipe_oneway()?; // (read end, write end)
    assert!(fd1.readable() && !fd1.writable());
    assert!(fd2.writable() && !fd2.readable());

    let p1 = Process::spawn(fun1, fd2)?;
    p1.join()?;

    let p2 = Process::spawn(fun2, fd1)?;
    assert_eq!(p2.join()?, "msg");
    Ok(())
}
