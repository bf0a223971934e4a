//! Objects that travel as descriptors (connections, locks, shared memory, queues) put on a `Queue`,
//! across real processes under every start method.
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{
    Connection, Event, GetError, Lock, Queue, SharedMemory, StartMethod, TryLockError, pipe,
};
use std::time::Duration;

fn echo_through_a_queued_connection(q: Queue<Connection>) -> u32 {
    let conn = q.get().unwrap();
    let n: u32 = conn.recv().unwrap();
    conn.send(&(n + 1)).unwrap();
    n
}

#[test]
fn a_connection_put_on_a_queue_reaches_a_child() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        let child = start(m, echo_through_a_queued_connection, q.clone());
        let (here, there) = pipe().unwrap();
        q.put(there).unwrap();
        here.send(&41u32).unwrap();
        assert_eq!(
            here.recv_timeout::<u32>(common::DEADLINE).unwrap(),
            42,
            "{m}"
        );
        assert_eq!(join(child).unwrap(), 41, "{m}");
    }
}

type Parcel = (SharedMemory, Event, Lock, Queue<String>, Connection);

/// Puts objects it created on `q` and exits at once: the kernel keeps them alive in the queue's
/// side channel.
fn put_and_exit(args: (Queue<Parcel>, Connection)) {
    let (q, conn) = args;
    let shm = SharedMemory::new(5).unwrap();
    shm.write(0, b"hello").unwrap();
    let event = Event::new().unwrap();
    event.set();
    let lock = Lock::new().unwrap();
    lock.lock().unwrap().leak();
    let inner = Queue::new().unwrap();
    inner.put("inside".to_string()).unwrap();
    q.put((shm, event, lock, inner, conn)).unwrap();
}

#[test]
fn a_producer_that_exits_at_once_still_delivers_its_objects() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        let (here, there) = pipe().unwrap();
        join(start(m, put_and_exit, (q.clone(), there))).unwrap();
        let (shm, event, lock, inner, conn) = q.get_timeout(common::DEADLINE).unwrap();
        let mut bytes = [0u8; 5];
        shm.read(0, &mut bytes).unwrap();
        assert_eq!(&bytes, b"hello", "{m}");
        assert!(event.is_set(), "{m}");
        // Held by a process that is gone: the next acquirer is told.
        assert!(
            matches!(lock.try_lock(), Err(TryLockError::OwnerDied(_))),
            "{m}"
        );
        assert_eq!(inner.get().unwrap(), "inside", "{m}");
        conn.send(&"through the queue").unwrap();
        assert_eq!(here.recv::<String>().unwrap(), "through the queue", "{m}");
    }
}

fn produce_mixed(args: (Queue<(u32, Option<Connection>)>, Vec<Connection>)) {
    let (q, conns) = args;
    let mut conns = conns.into_iter();
    for i in 0..200u32 {
        let conn = if i % 10 == 0 { conns.next() } else { None };
        q.put((i, conn)).unwrap();
    }
}

#[test]
fn items_with_and_without_descriptors_keep_their_order_between_processes() {
    for m in StartMethod::ALL {
        let q = Queue::builder().ring_bytes(4096).build().unwrap();
        let (mine, theirs): (Vec<_>, Vec<_>) = (0..20).map(|_| pipe().unwrap()).unzip();
        let child = start(m, produce_mixed, (q.clone(), theirs));
        for i in 0..200u32 {
            let (n, conn) = q.get_timeout(common::DEADLINE).unwrap();
            assert_eq!(n, i, "{m}");
            assert_eq!(conn.is_some(), i % 10 == 0, "{m}: item {i}");
            if let Some(conn) = conn {
                conn.send(&i).unwrap();
                let k = (i / 10) as usize;
                assert_eq!(
                    mine[k].recv::<u32>().unwrap(),
                    i,
                    "{m}: item {i} got its own"
                );
            }
        }
        join(child).unwrap();
    }
}

/// In a child of its own (the limit is process-wide): with its descriptor table full, an item with
/// descriptors arrives without them; once there is room again, the next one is whole.
fn take_at_the_limit(q: Queue<Option<Connection>>) -> (String, bool) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    let highest = common::highest_open_fd();
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(highest + 1),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let first = match q.get() {
        Err(e @ GetError::DescriptorsLost(_)) => e.to_string(),
        other => format!("unexpected: {other:?}"),
    };
    drop(fillers);
    setrlimit(Resource::Nofile, old).unwrap();
    let second = matches!(q.get(), Ok(Some(_)));
    (first, second)
}

#[test]
fn a_consumer_at_its_descriptor_limit_loses_that_items_descriptors_only() {
    // The consumer is a forked child so that the limit it sets is its own; the start method plays
    // no part in what is tested.
    let q = Queue::new().unwrap();
    let (_a, b) = pipe().unwrap();
    let (_c, d) = pipe().unwrap();
    q.put(Some(b)).unwrap();
    q.put(Some(d)).unwrap();
    let (first, second) = join(start(StartMethod::Fork, take_at_the_limit, q.clone())).unwrap();
    assert!(first.contains("open-file limit"), "{first}");
    assert!(second, "the next item came whole");
    assert!(q.is_empty());
}

#[test]
fn a_full_side_channel_makes_a_timed_put_time_out() {
    let q = Queue::new().unwrap();
    let (_keep, end) = pipe().unwrap();
    let mut n = 0usize;
    while q.try_put(end.try_clone().unwrap()).is_ok() {
        n += 1;
        assert!(n < 1_000_000);
    }
    let err = q
        .put_timeout(end.try_clone().unwrap(), Duration::from_millis(20))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(q.len(), n);
    let drained = q.try_iter().count();
    assert_eq!(drained, n);
}
