//! Ten processes write a shared `Value` and a shared `Array`.
//!
//! From seed `003_cb098ad870f8e37a.txt` ("进程间共享状态 / 共享内存"):
//!
//! ```python
//! def f(n, a, name):
//!     time.sleep(1)
//!     n.value = name * name
//!     for i in range(len(a)):
//!         a[i] = -i
//!
//! num = Value('d', 0.0)
//! arr = Array('i', range(10))
//! for i in range(10):
//!     p = Process(target=f, args=(num, arr, i))
//!     ...
//! print num.value   # 81.0 in the seed's run: whichever child wrote last
//! print arr[:]      # [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]
//! ```
//!
//! `'d'` becomes `f64` and `'i'` becomes `i32`: `Value<T>` and `Array<T>` take any plain-old-data
//! type. Both carry a lock by default, as in Python. The seed sleeps 1 s; here 100 ms.
//!
//! Run with `cargo run --example value_array`.

use multiprocess::{Array, Process, Value};
use std::time::Duration;

fn f(args: (Value<f64>, Array<i32>, i64)) {
    let (n, a, name) = args;
    std::thread::sleep(Duration::from_millis(100));
    n.set((name * name) as f64);
    for i in 0..a.len() {
        a.set(i, -(i as i32)).expect("in bounds");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let num = Value::new(0.0f64)?;
    let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    let process_list = (0..10)
        .map(|i| Process::spawn(f, (num.clone(), arr.clone(), i)))
        .collect::<Result<Vec<_>, _>>()?;
    for p in process_list {
        p.join()?;
    }
    println!("{:?}", num.get());
    println!("{:?}", arr.to_vec());
    Ok(())
}
