//! The parent sends ten numbers and closes its end; the child receives until end-of-file.
//!
//! From seed `002_91837ab9186c4282.txt` ("多进程下的管道"):
//!
//! ```python
//! def func(c):
//!     c1, c2 = c
//!     c1.close()            # the child talks through c2
//!     while 1:
//!         try:
//!             print(c2.recv())
//!         except EOFError:  # the parent closed c1 and everything was read
//!             c2.close()
//!             break
//!
//! c1, c2 = Pipe()
//! p = Process(target=func, args=((c1, c2),))
//! p.start()
//! c2.close()                # the parent talks through c1
//! for i in range(10):
//!     c1.send(i)
//! c1.close()
//! ```
//!
//! The seed's closing dance exists because Python hands both ends to the child and keeps both in the
//! parent: the child only sees `EOFError` once *every* copy of `c1` is closed, and a forgotten one
//! leaves it blocked in `recv` forever. In Rust the dance is ownership: `c2` moves into the child (the
//! parent no longer has it), `c1` is never given to the child, and dropping `c1` in the parent closes
//! the last copy. The child then gets [`RecvError::Eof`], a distinct error rather than a hang.
//!
//! Run with `cargo run --example pipe_eof`.

use multiprocess::{Connection, Process, RecvError, pipe};

/// Prints what arrives until end-of-file; returns what it received.
fn func(c2: Connection) -> Vec<i32> {
    let mut got = Vec::new();
    loop {
        match c2.recv::<i32>() {
            Ok(i) => {
                println!("{i}");
                got.push(i);
            }
            Err(RecvError::Eof) => {
                println!("EOF: the parent closed its end");
                return got; // `c2` is dropped (closed) here
            }
            Err(e) => panic!("unexpected receive error: {e}"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (c1, c2) = pipe()?;
    let p = Process::spawn(func, c2)?; // `c2` moves into the child
    for i in 0..10 {
        c1.send(&i)?;
    }
    drop(c1); // the seed's c1.close()
    let got = p.join()?;
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    Ok(())
}
