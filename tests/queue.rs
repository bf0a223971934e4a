//! `Queue`, `SimpleQueue` and `JoinableQueue` across real processes, under every start method:
//! exactly-once delivery with many producers and consumers, items from a byte to 100 MiB, producers
//! that exit before their items are taken, processes killed in the middle of a put or a get, and the
//! queue scenarios of CPython's `_TestQueue` (ported names start with `cpython_`).
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{
    AtomicValue, Connection, Event, GetError, GetTimeoutError, JoinableQueue, PutError,
    PutTimeoutError, Queue, SimpleQueue, StartMethod, TaskDoneError, TryGetError, pipe,
};
use serde_bytes::ByteBuf;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Long enough that a queue operation that should succeed never hits it.
const PATIENCE: Duration = Duration::from_secs(30);

/// An item whose bytes can be checked: `id` followed by `len` bytes derived from it.
fn item(id: u64, len: usize) -> (u64, ByteBuf) {
    (
        id,
        ByteBuf::from(
            (0..len)
                .map(|i| (id as usize + i) as u8)
                .collect::<Vec<_>>(),
        ),
    )
}

fn check(item: &(u64, ByteBuf)) {
    let (id, bytes) = item;
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (*id as usize + i) as u8),
        "item {id} arrived corrupted"
    );
}

/// Sizes cycling through the ring (small), half a ring, and the overflow file (large).
fn size_of(id: u64) -> usize {
    match id % 7 {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => 4096,
        4 => 9000, // above half of the 16 KiB ring used below: the overflow file
        _ => 24,
    }
}

type Item = (u64, ByteBuf);

fn produce(args: (Queue<Item>, u64, u64)) {
    let (q, first, n) = args;
    for id in first..first + n {
        q.put(item(id, size_of(id))).unwrap();
    }
}

/// Takes items until a `u64::MAX` sentinel; gives back the ids in the order taken.
fn consume(q: Queue<Item>) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        let it = q.get().unwrap();
        if it.0 == u64::MAX {
            return ids;
        }
        check(&it);
        ids.push(it.0);
    }
}

#[test]
fn many_producers_and_consumers_deliver_every_item_exactly_once() {
    const PRODUCERS: u64 = 3;
    const CONSUMERS: usize = 3;
    const EACH: u64 = 700;
    for m in StartMethod::ALL {
        for maxsize in [0, 3] {
            let q: Queue<Item> = Queue::builder()
                .maxsize(maxsize)
                .ring_bytes(16 << 10)
                .build()
                .unwrap();
            let consumers: Vec<_> = (0..CONSUMERS)
                .map(|_| start(m, consume, q.clone()))
                .collect();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| start(m, produce, (q.clone(), p * 1_000_000, EACH)))
                .collect();
            for p in producers {
                join(p).unwrap();
            }
            for _ in 0..CONSUMERS {
                q.put((u64::MAX, ByteBuf::new())).unwrap();
            }
            let mut seen = HashSet::new();
            for c in consumers {
                let ids = join(c).unwrap();
                // FIFO: each consumer sees each producer's items in the order they were put.
                for p in 0..PRODUCERS {
                    let mine: Vec<_> = ids.iter().filter(|&&id| id / 1_000_000 == p).collect();
                    assert!(mine.windows(2).all(|w| w[0] < w[1]), "{m}: out of order");
                }
                for id in ids {
                    assert!(seen.insert(id), "{m}: item {id} delivered twice");
                }
            }
            assert_eq!(seen.len() as u64, PRODUCERS * EACH, "{m} maxsize {maxsize}");
            assert!(q.is_empty());
        }
    }
}

fn put_big_and_leave(args: (Queue<Item>, usize)) {
    let (q, big) = args;
    q.put(item(1, 10)).unwrap();
    q.put(item(2, big)).unwrap();
    q.put(item(3, 10)).unwrap();
}

#[test]
fn a_producer_exits_and_is_joined_at_once_and_its_50mib_item_is_still_delivered() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        let child = start(m, put_big_and_leave, (q.clone(), 50 << 20));
        let t = Instant::now();
        join(child).unwrap();
        // No feeder thread to wait for: the child finished on its own, nobody took anything.
        assert!(t.elapsed() < common::DEADLINE);
        assert_eq!(q.len(), 3, "{m}");
        for id in 1..=3 {
            let it = q.get_timeout(PATIENCE).unwrap();
            assert_eq!(it.0, id, "{m}");
            check(&it);
        }
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    }
}

#[test]
fn items_from_one_byte_to_100mib_cross_in_both_directions() {
    let q: Queue<Item> = Queue::new().unwrap();
    let back: Queue<Item> = Queue::new().unwrap();
    fn echo(args: (Queue<Item>, Queue<Item>)) {
        let (inq, out) = args;
        loop {
            let it = inq.get().unwrap();
            let last = it.0 == 0;
            out.put(it).unwrap();
            if last {
                return;
            }
        }
    }
    let child = start(StartMethod::Fork, echo, (q.clone(), back.clone()));
    let sizes = [1usize, 7, 4 << 10, 3 << 20, 100 << 20, 64, 0];
    for (i, &n) in sizes.iter().enumerate() {
        q.put(item((sizes.len() - 1 - i) as u64, n)).unwrap();
    }
    for (i, &n) in sizes.iter().enumerate() {
        let it = back.get_timeout(PATIENCE).unwrap();
        assert_eq!((it.0, it.1.len()), ((sizes.len() - 1 - i) as u64, n));
        check(&it);
    }
    join(child).unwrap();
}

/// Puts items 0, 1, 2, … (every fifth one large, for the overflow file) until killed.
fn put_forever(q: Queue<Item>) {
    for id in 0.. {
        q.put(item(id, if id % 5 == 4 { 300_000 } else { 2_000 }))
            .unwrap();
    }
}

#[test]
fn a_producer_killed_in_the_middle_of_a_put_loses_at_most_that_item() {
    for (round, m) in StartMethod::ALL.into_iter().cycle().take(6).enumerate() {
        let q: Queue<Item> = Queue::builder().ring_bytes(256 << 10).build().unwrap();
        let child = start(m, put_forever, q.clone());
        assert!(common::eventually(|| q.len() > 20));
        std::thread::sleep(Duration::from_millis(3 * round as u64));
        child.kill().unwrap();
        assert!(join(child).is_err());
        // Everything committed is there, in order, intact: ids 0..n with no gap.
        let mut n = 0;
        while let Ok(it) = q.try_get() {
            assert_eq!(it.0, n, "{m}: a gap");
            check(&it);
            n += 1;
        }
        assert!(n > 20);
        // Nobody hangs: the next put recovers the lock if the dead producer held it.
        q.put_timeout(item(7, 10), PATIENCE).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap().0, 7);
        assert!(q.is_empty());
    }
}

/// Takes items forever, reporting the last id taken (plus one) in `last`.
fn get_forever(args: (Queue<Item>, AtomicValue<u64>)) {
    let (q, last) = args;
    loop {
        let it = q.get().unwrap();
        last.store(it.0 + 1);
    }
}

#[test]
fn a_consumer_killed_in_the_middle_of_a_get_loses_at_most_that_item() {
    const N: u64 = 400;
    for (round, m) in StartMethod::ALL.into_iter().cycle().take(6).enumerate() {
        let q: Queue<Item> = Queue::builder().ring_bytes(256 << 10).build().unwrap();
        for id in 0..N {
            q.put(item(id, if id % 5 == 4 { 300_000 } else { 2_000 }))
                .unwrap();
        }
        let last = AtomicValue::new(0u64).unwrap();
        let child = start(m, get_forever, (q.clone(), last.clone()));
        assert!(common::eventually(|| last.load() > 5 || q.is_empty()));
        std::thread::sleep(Duration::from_millis(round as u64));
        child.kill().unwrap();
        assert!(join(child).is_err());
        let reported = last.load();
        let rest: Vec<u64> = std::iter::from_fn(|| q.try_get().ok())
            .map(|it| {
                check(&it);
                it.0
            })
            .collect();
        if let Some(&first) = rest.first() {
            assert!(
                first == reported || first == reported + 1,
                "{m}: consumer reported up to {reported}, queue resumes at {first}"
            );
            assert_eq!(rest, (first..N).collect::<Vec<_>>(), "{m}");
        }
        q.put_timeout(item(9, 1), PATIENCE).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap().0, 9);
    }
}

fn get_one(args: (Queue<u32>, Event)) -> u32 {
    let (q, started) = args;
    started.set();
    q.get().unwrap()
}

fn put_one(args: (Queue<u32>, Event)) {
    let (q, started) = args;
    started.set();
    q.put(2).unwrap();
}

#[test]
fn blocked_gets_and_puts_are_woken_by_other_processes() {
    for m in StartMethod::ALL {
        let q = Queue::bounded(1).unwrap();
        let started = Event::new().unwrap();
        let getter = start(m, get_one, (q.clone(), started.clone()));
        started.wait();
        std::thread::sleep(Duration::from_millis(20));
        q.put(1).unwrap();
        assert_eq!(join(getter).unwrap(), 1, "{m}");

        q.put(1).unwrap();
        started.clear();
        let putter = start(m, put_one, (q.clone(), started.clone()));
        started.wait();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.len(), 1, "{m}: the put waits for room");
        assert_eq!(q.get().unwrap(), 1);
        join(putter).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap(), 2);
    }
}

#[test]
fn timeouts_wait_at_least_their_duration() {
    let d = Duration::from_millis(50);
    let q = Queue::bounded(1).unwrap();
    let t = Instant::now();
    assert!(matches!(q.get_timeout(d), Err(GetTimeoutError::Timeout)));
    assert!(t.elapsed() >= d);
    q.put(1u8).unwrap();
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(2, d),
        Err(PutTimeoutError::Timeout(2))
    ));
    assert!(t.elapsed() >= d);
    let j = JoinableQueue::new().unwrap();
    j.put(1u8).unwrap();
    let t = Instant::now();
    assert!(j.join_timeout(d).is_err());
    assert!(t.elapsed() >= d);
}

fn put_through(conn: Connection) {
    let q: Queue<String> = conn.recv().unwrap();
    q.put("via a connection".into()).unwrap();
}

#[test]
fn queues_travel_through_connections_and_as_arguments() {
    for m in StartMethod::ALL {
        let (a, b) = pipe().unwrap();
        let child = start(m, put_through, b);
        let q = Queue::<String>::new().unwrap();
        a.send(&q).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap(), "via a connection");
        join(child).unwrap();
    }
}

fn put_and_get_there(q: Queue<u32>) -> (bool, u32) {
    (q.is_closed(), {
        q.put(5).unwrap();
        q.get().unwrap()
    })
}

#[test]
fn close_is_local_to_a_handle() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        q.put(4).unwrap();
        q.close();
        assert!(matches!(q.put(1), Err(PutError::Closed(1))));
        assert!(matches!(q.get(), Err(GetError::Closed)));
        assert_eq!(q.len(), 1, "{m}: len still answers");
        // A handle sent after the close is a fresh one, and the queue itself is untouched.
        let child = start(m, put_and_get_there, q.clone());
        assert_eq!(join(child).unwrap(), (false, 4), "{m}");
        assert_eq!(q.len(), 1);
    }
}

fn joinable_worker(q: JoinableQueue<Option<u32>>) -> u32 {
    let mut n = 0;
    while let Some(_job) = q.get().unwrap() {
        std::thread::sleep(Duration::from_millis(2));
        n += 1;
        q.task_done().unwrap();
    }
    q.task_done().unwrap();
    n
}

#[test]
fn cpython_test_task_done_join_waits_for_every_worker() {
    for m in StartMethod::ALL {
        let q = JoinableQueue::new().unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| start(m, joinable_worker, q.clone()))
            .collect();
        for i in 0..10 {
            q.put(Some(i)).unwrap();
        }
        q.join();
        assert_eq!(q.unfinished(), 0, "{m}");
        assert!(q.is_empty());
        for _ in &workers {
            q.put(None).unwrap();
        }
        let done: u32 = workers.into_iter().map(|w| join(w).unwrap()).sum();
        assert_eq!(done, 10, "{m}");
        assert!(q.join_timeout(PATIENCE).is_ok());
    }
}

fn one_task_done(q: JoinableQueue<u8>) -> Result<(), TaskDoneError> {
    q.task_done()
}

#[test]
fn one_task_done_too_many_is_an_error_in_any_process() {
    for m in StartMethod::ALL {
        let q = JoinableQueue::new().unwrap();
        q.put(1u8).unwrap();
        assert_eq!(join(start(m, one_task_done, q.clone())).unwrap(), Ok(()));
        assert_eq!(
            join(start(m, one_task_done, q.clone())).unwrap(),
            Err(TaskDoneError)
        );
        assert_eq!(q.unfinished(), 0);
        assert!(q.task_done().is_err());
    }
}

fn simple_echo(args: (SimpleQueue<String>, SimpleQueue<String>)) {
    let (inq, out) = args;
    let s = inq.get().unwrap();
    out.put(s.to_uppercase()).unwrap();
}

#[test]
fn simple_queues_work_across_processes() {
    for m in StartMethod::ALL {
        let (a, b) = (SimpleQueue::new().unwrap(), SimpleQueue::new().unwrap());
        assert!(a.is_empty());
        let child = start(m, simple_echo, (a.clone(), b.clone()));
        a.put("shout".to_string()).unwrap();
        assert_eq!(b.get().unwrap(), "SHOUT");
        join(child).unwrap();
        assert!(a.is_empty() && b.is_empty());
    }
}

fn take_six(args: (Queue<u32>, Event, Event)) {
    let (q, child_can_start, parent_can_continue) = args;
    child_can_start.wait();
    for _ in 0..6 {
        q.get().unwrap();
    }
    parent_can_continue.set();
}

#[test]
fn cpython_test_put() {
    for m in StartMethod::ALL {
        let q = Queue::bounded(6).unwrap();
        let (go, back) = (Event::new().unwrap(), Event::new().unwrap());
        let child = start(m, take_six, (q.clone(), go.clone(), back.clone()));
        assert!(q.is_empty() && !q.is_full());
        q.put(1).unwrap();
        q.put(2).unwrap();
        q.put_timeout(3, Duration::from_secs(1)).unwrap();
        q.try_put(4).unwrap();
        q.try_put(5).unwrap();
        q.try_put(6).unwrap();
        assert!(!q.is_empty() && q.is_full(), "{m}");
        assert!(q.try_put(7).unwrap_err().is_full());
        for timeout in [Duration::from_millis(100), Duration::from_millis(200)] {
            let t = Instant::now();
            assert!(q.put_timeout(7, timeout).unwrap_err().is_timeout());
            assert!(t.elapsed() >= timeout);
        }
        go.set();
        back.wait();
        assert!(q.is_empty() && !q.is_full(), "{m}");
        join(child).unwrap();
    }
}

fn put_four(args: (Queue<u32>, Event, Event)) {
    let (q, child_can_start, parent_can_continue) = args;
    child_can_start.wait();
    for i in 2..=5 {
        q.put(i).unwrap();
    }
    parent_can_continue.set();
}

#[test]
fn cpython_test_get() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        let (go, back) = (Event::new().unwrap(), Event::new().unwrap());
        let child = start(m, put_four, (q.clone(), go.clone(), back.clone()));
        assert!(q.is_empty());
        go.set();
        back.wait();
        assert!(
            !q.is_empty(),
            "{m}: no feeder thread, so no delay before the items are there"
        );
        assert_eq!(q.get().unwrap(), 2);
        assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 3);
        assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 4);
        assert_eq!(q.try_get().unwrap(), 5);
        assert!(q.is_empty());
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        for timeout in [Duration::from_millis(100), Duration::from_millis(200)] {
            let t = Instant::now();
            assert!(matches!(
                q.get_timeout(timeout),
                Err(GetTimeoutError::Timeout)
            ));
            assert!(t.elapsed() >= timeout);
        }
        join(child).unwrap();
    }
}

fn put_ten_to_twenty(q: Queue<u32>) {
    for i in 10..20 {
        q.put(i).unwrap();
    }
}

#[test]
fn cpython_test_fork() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        for i in 0..10 {
            q.put(i).unwrap();
        }
        let child = start(m, put_ten_to_twenty, q.clone());
        for i in 0..20 {
            assert_eq!(q.get_timeout(PATIENCE).unwrap(), i, "{m}");
        }
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        join(child).unwrap();
    }
}

#[test]
fn cpython_test_qsize() {
    let q = Queue::new().unwrap();
    assert_eq!(q.len(), 0);
    q.put(1).unwrap();
    assert_eq!(q.len(), 1);
    q.put(5).unwrap();
    assert_eq!(q.len(), 2);
    q.get().unwrap();
    assert_eq!(q.len(), 1);
    q.get().unwrap();
    assert_eq!(q.len(), 0);
}

/// Serializes only when `ok`: Python's `NotSerializable` of `test_queue_feeder_donot_stop_onexc`.
struct Picky {
    ok: bool,
}

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            s.serialize_bool(true)
        } else {
            Err(serde::ser::Error::custom("not serializable"))
        }
    }
}

#[test]
fn cpython_test_queue_feeder_donot_stop_onexc() {
    let q = Queue::<Picky>::new().unwrap();
    let err = q.put(Picky { ok: false }).unwrap_err();
    assert!(err.to_string().contains("not serializable"), "{err}");
    assert!(!err.into_inner().ok, "the item comes back");
    // The queue is unaffected: the next item goes through.
    q.put(Picky { ok: true }).unwrap();
    assert_eq!(q.len(), 1);
    let back = Queue::<bool>::builder().build().unwrap();
    back.put(true).unwrap();
    assert!(back.get().unwrap());
}

#[test]
fn cpython_test_closed_queue_put_get_exceptions() {
    for q in [Queue::new().unwrap(), Queue::bounded(3).unwrap()] {
        q.close();
        let err = q.put("foo".to_string()).unwrap_err();
        assert!(matches!(&err, PutError::Closed(s) if s == "foo"));
        assert!(matches!(q.get(), Err(GetError::Closed)));
    }
}

fn put_one_more(q: Queue<u32>) {
    q.put(1).unwrap();
}

#[test]
fn a_queue_survives_the_process_that_created_it() {
    fn create_and_return(conn: Connection) {
        let q = Queue::<u32>::new().unwrap();
        q.put(11).unwrap();
        conn.send(&q).unwrap();
    }
    for m in StartMethod::ALL {
        let (a, b) = pipe().unwrap();
        let child = start(m, create_and_return, b);
        let q: Queue<u32> = a.recv().unwrap();
        join(child).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap(), 11, "{m}");
        let again = start(m, put_one_more, q.clone());
        join(again).unwrap();
        assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);
    }
}
