//! Ten processes fill a dict that lives in a manager's server process.
//!
//! From seed `001_2ca4a0fd69a57e43.txt` ("Server process"):
//!
//! ```python
//! def f(d, name):
//!     time.sleep(1)
//!     d[name] = name * name
//!     print d
//!
//! manager = Manager()
//! d = manager.dict()
//! for i in range(10):
//!     p = Process(target=f, args=(d, i))
//!     p.start()
//!     ...
//! print d   # {0: 0, 1: 1, 2: 4, ..., 9: 81}
//! ```
//!
//! The dict is typed (`Dict<u32, u32>`); each child gets the proxy as its argument and connects to
//! the manager on its own. `items()` is one round trip (Python's proxy prints with one). The seed
//! sleeps 1 s; here 100 ms. Each child's print shows the dict as that child saw it, so the lines
//! grow in whatever order the children ran.
//!
//! Run with `cargo run --example manager_dict`.

use multiprocess::Process;
use multiprocess::manager::{Dict, Manager};
use std::time::Duration;

fn f(args: (Dict<u32, u32>, u32)) {
    let (d, name) = args;
    std::thread::sleep(Duration::from_millis(100));
    d.set(&name, &(name * name)).expect("set");
    println!("{:?}", d.items().expect("items"));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::start()?;
    let d = manager.dict::<u32, u32>()?;
    let children: Vec<_> = (0..10)
        .map(|i| Process::spawn(f, (d.clone(), i)))
        .collect::<Result<_, _>>()?;
    for child in children {
        child.join()?;
    }
    let mut all = d.items()?;
    all.sort();
    println!("{all:?}");
    assert_eq!(all, (0..10).map(|i| (i, i * i)).collect::<Vec<_>>());
    Ok(())
}
