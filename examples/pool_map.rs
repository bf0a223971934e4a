//! `Pool.map`, as the seeds' documents describe it ("a pool of worker processes ... tasks offloaded
//! in a few different ways"): squares of 0..10 from four workers, then the same with one item
//! failing, which fails alone.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("使用工作池 Using a pool of workers"), in the shape of
//! Python's documentation example:
//!
//! ```python
//! from multiprocessing import Pool
//! def f(x):
//!     return x*x
//! if __name__ == '__main__':
//!     with Pool(4) as p:
//!         print(p.map(f, range(10)))
//! ```
//!
//! Run with `cargo run --example pool_map`.

use multiprocess::Pool;

fn f(x: u64) -> u64 {
    x * x
}

fn no_sevens(x: u64) -> u64 {
    assert!(x != 7, "seven is not allowed");
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let p = Pool::new(4)?;
    println!("{:?}", p.map(f, 0..10)?);
    // Python loses the whole chunk when one item raises; here every other item still has its result.
    for (x, r) in (0..10).zip(p.map_results(no_sevens, 0..10)) {
        match r {
            Ok(v) => print!("{x}: {v}  "),
            Err(e) => print!("{x}: error ({e})  "),
        }
    }
    println!();
    Ok(())
}
