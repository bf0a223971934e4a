//! Producers wait with `join()` until a daemon consumer has marked every product done.
//!
//! From seed `004_450fec6b1a3417ef.txt` ("消息队列", 使用JoinableQueue):
//!
//! ```python
//! def producer(name, queue):
//!     for value in ['A', 'B', 'C']:
//!         time.sleep(1)
//!         product = name + '的' + value
//!         queue.put(product)
//!         print('%s已被添加至队列中' % product)
//!     # 阻塞到queue中所有任务完成
//!     queue.join()
//!
//! def consumer(queue):
//!     while True:
//!         product = queue.get()
//!         time.sleep(1.2)
//!         print(product + '已被取出')
//!         # 标识当前任务完成，通知给消费者
//!         queue.task_done()
//!
//! if __name__ == '__main__':
//!     que = JoinableQueue(2)
//!     p1 = Process(target=producer, args=('p1', que))
//!     p2 = Process(target=producer, args=('p2', que,))
//!     c1 = Process(target=consumer, args=(que,))
//!     # 设置守护进程，主线程完成时消费者进程终止
//!     c1.daemon = True
//!     p1.start()
//!     p2.start()
//!     c1.start()
//!     # 主线程阻塞到生产者进程完成
//!     p1.join()
//!     p2.join()
//! ```
//!
//! No sentinel is needed: each producer returns once every item put so far is done, and the consumer
//! is a daemon, terminated when the main process ends. The sleeps are a tenth of the seed's.
//!
//! Run with `cargo run --example joinable_queue`.

use multiprocess::{JoinableQueue, Process};
use std::time::Duration;

fn producer(args: (String, JoinableQueue<String>)) {
    let (name, queue) = args;
    for value in ["A", "B", "C"] {
        std::thread::sleep(Duration::from_millis(100));
        let product = format!("{name}的{value}");
        queue.put(product.clone()).expect("put");
        println!("{product}已被添加至队列中");
    }
    queue.join();
}

fn consumer(queue: JoinableQueue<String>) {
    loop {
        let product = queue.get().expect("get");
        std::thread::sleep(Duration::from_millis(120));
        println!("{product}已被取出");
        queue.task_done().expect("one per product");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let que = JoinableQueue::bounded(2)?;
    let p1 = Process::spawn(producer, ("p1".to_string(), que.clone()))?;
    let p2 = Process::spawn(producer, ("p2".to_string(), que.clone()))?;
    let c1 = Process::builder()
        .daemon(true)
        .spawn(consumer, que.clone())?;
    p1.join()?;
    p2.join()?;
    println!(
        "both producers returned: {} unfinished; the daemon consumer (pid {}) ends with us",
        que.unfinished(),
        c1.pid()
    );
    Ok(())
}
