//! Two producers and a consumer on a `Queue(2)`; a `None` sentinel stops the consumer.
//!
//! From seed `004_450fec6b1a3417ef.txt` ("消息队列", 使用Queue):
//!
//! ```python
//! def producer(name, queue):
//!     for value in ['A', 'B', 'C']:
//!         time.sleep(1)
//!         product = name + '的' + value
//!         queue.put(product)
//!         print('%s已被添加至队列中' % product)
//!
//! def consumer(queue):
//!     while True:
//!         product = queue.get()
//!         # 检测到结束标志后跳出死循环
//!         if not product:
//!             break
//!         time.sleep(1.2)
//!         print(product + '已被取出')
//!
//! if __name__ == '__main__':
//!     que = Queue(2)
//!     p1 = Process(target=producer, args=('p1', que))
//!     p2 = Process(target=producer, args=('p2', que,))
//!     c1 = Process(target=consumer, args=(que,))
//!     p1.start()
//!     p2.start()
//!     c1.start()
//!     p1.join()
//!     p2.join()
//!     # 放入消费者结束标志
//!     que.put(None)
//! ```
//!
//! The items are `Option<String>`, so the sentinel is `None` and cannot be confused with an empty
//! product (the seed's `if not product` would also stop at `''`). The sleeps are a tenth of the seed's.
//! The seed never joins the consumer; here it is joined, and reports how many products it took.
//!
//! Run with `cargo run --example queue_sentinel`.

use multiprocess::{Process, Queue};
use std::time::Duration;

fn producer(args: (String, Queue<Option<String>>)) {
    let (name, queue) = args;
    for value in ["A", "B", "C"] {
        std::thread::sleep(Duration::from_millis(100));
        let product = format!("{name}的{value}");
        queue.put(Some(product.clone())).expect("put");
        println!("{product}已被添加至队列中");
    }
}

fn consumer(queue: Queue<Option<String>>) -> usize {
    let mut taken = 0;
    while let Some(product) = queue.get().expect("get") {
        std::thread::sleep(Duration::from_millis(120));
        println!("{product}已被取出");
        taken += 1;
    }
    taken
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let que = Queue::bounded(2)?;
    let p1 = Process::spawn(producer, ("p1".to_string(), que.clone()))?;
    let p2 = Process::spawn(producer, ("p2".to_string(), que.clone()))?;
    let c1 = Process::spawn(consumer, que.clone())?;
    p1.join()?;
    p2.join()?;
    que.put(None)?;
    println!("the consumer took {} products", c1.join()?);
    Ok(())
}
