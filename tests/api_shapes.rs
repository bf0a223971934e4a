//! The shapes of the API: errors per operation (a timed or non-blocking form fails with its own
//! error, which hands back what it must), iterators, permits, and joins that leave the handle.
//! Across real processes, under every start method where a process is involved.
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{
    Condition, Connection, Event, GetError, GetTimeoutError, JoinTimeoutError, JoinableQueue, Lock,
    LockTimeoutError, Process, ProcessError, PutError, PutTimeoutError, Queue, QueueBuilder,
    RecvError, RecvTimeoutError, ReleaseError, Semaphore, StartMethod, Timeout, TryGetError,
    TryLockError, TryPutError, TryRecvError, WaitTimeoutError, pipe,
};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

// ---- Connections ----------------------------------------------------------------------------

fn send_then_close(args: (Connection, Vec<u32>)) {
    let (conn, items) = args;
    for i in items {
        conn.send(&i).unwrap();
    }
}

#[test]
fn a_connections_iterator_ends_when_the_peer_closes() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let child = start(m, send_then_close, (there, vec![5, 6, 7]));
        let got: Vec<u32> = here.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, [5, 6, 7], "{m}");
        assert!(
            here.iter::<u32>().next().is_none(),
            "{m}: still at end of file"
        );
        join(child).unwrap();
    }
}

#[test]
fn a_message_that_does_not_decode_is_an_item_and_the_iteration_goes_on() {
    let (a, b) = pipe().unwrap();
    a.send(&1u32).unwrap();
    a.send(&"not a number, and longer than one").unwrap();
    a.send(&3u32).unwrap();
    drop(a);
    let items: Vec<Result<u32, RecvError>> = b.iter().collect();
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap(), &1);
    assert!(matches!(items[1], Err(RecvError::Decode(_))));
    assert_eq!(items[2].as_ref().unwrap(), &3);
}

#[test]
fn a_torn_message_is_the_last_item() {
    let (a, b) = UnixStream::pair().unwrap();
    let conn = Connection::from_fd(a.into());
    let mut peer = b;
    peer.write_all(&[0, 0, 0, 10, 1, 2]).unwrap(); // 10 bytes announced, 2 sent
    drop(peer);
    let items: Vec<Result<Vec<u8>, RecvError>> = conn.iter().collect();
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(RecvError::Truncated { .. })));
}

#[test]
fn try_recv_is_empty_until_a_whole_message_is_there_and_keeps_a_partial_one() {
    let (a, b) = UnixStream::pair().unwrap();
    let conn = Connection::from_fd(a.into());
    let mut peer = b;
    assert!(matches!(conn.try_recv_bytes(), Err(TryRecvError::Empty)));
    peer.write_all(&[0, 0, 0, 5, b'h', b'e']).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(conn.try_recv_bytes(), Err(TryRecvError::Empty)));
    peer.write_all(b"llo").unwrap();
    assert!(conn.poll(common::DEADLINE).unwrap());
    assert_eq!(conn.try_recv_bytes().unwrap(), b"hello");
    drop(peer);
    assert!(matches!(
        conn.try_recv_bytes(),
        Err(TryRecvError::Failed(RecvError::Eof))
    ));
}

#[test]
fn a_timed_receive_tells_a_timeout_from_the_end() {
    let (a, b) = pipe().unwrap();
    let t = Instant::now();
    assert!(matches!(
        a.recv_timeout::<u8>(Duration::from_millis(30)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    drop(b);
    assert!(matches!(
        a.recv_timeout::<u8>(Duration::from_millis(30)),
        Err(RecvTimeoutError::Failed(RecvError::Eof))
    ));
    let io: std::io::Error = RecvTimeoutError::Timeout.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
}

// ---- Queues ---------------------------------------------------------------------------------

fn produce_with_sentinel(args: (Queue<Option<u32>>, u32)) {
    let (q, n) = args;
    for i in 0..n {
        q.put(Some(i)).unwrap();
    }
    q.put(None).unwrap();
}

#[test]
fn a_queues_iterator_takes_items_as_they_come() {
    for m in StartMethod::ALL {
        let q = Queue::new().unwrap();
        let child = start(m, produce_with_sentinel, (q.clone(), 100));
        let mut got = Vec::new();
        for item in &q {
            match item.unwrap() {
                Some(i) => got.push(i),
                None => break,
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "{m}");
        join(child).unwrap();
    }
}

#[test]
fn iterators_end_when_the_handle_is_closed_and_try_iter_when_empty() {
    let q: Queue<u32> = Queue::new().unwrap();
    for i in 0..5 {
        q.put(i).unwrap();
    }
    let first_two: Vec<u32> = q.try_iter().take(2).map(Result::unwrap).collect();
    assert_eq!(first_two, [0, 1]);
    let rest: Vec<u32> = q.try_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(rest, [2, 3, 4]);
    assert!(q.try_iter().next().is_none(), "empty: the iteration ends");
    q.put(9).unwrap();
    q.close();
    assert!(q.iter().next().is_none(), "closed: the iteration ends");
    assert!(q.try_iter().next().is_none());
}

/// A number that serializes whatever it holds but deserializes only when even: an item that a
/// consumer cannot take as its type.
#[derive(Debug, PartialEq, serde::Serialize)]
struct Even(u32);

impl<'de> serde::Deserialize<'de> for Even {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n % 2 == 0 {
            Ok(Even(n))
        } else {
            Err(serde::de::Error::custom(format!("{n} is odd")))
        }
    }
}

#[test]
fn an_item_that_does_not_decode_is_an_item_and_the_iteration_goes_on() {
    let q: Queue<Even> = Queue::new().unwrap();
    for n in [2, 3, 4] {
        q.put(Even(n)).unwrap();
    }
    let items: Vec<Result<Even, GetError>> = q.try_iter().collect();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(&items[1], Err(GetError::Decode(why)) if why.contains("3 is odd")));
    assert_eq!(items[2].as_ref().unwrap(), &Even(4));
}

#[test]
fn timed_and_non_blocking_puts_hand_the_item_back() {
    let q = Queue::bounded(1).unwrap();
    q.put("kept".to_string()).unwrap();
    match q.try_put("back".to_string()) {
        Err(TryPutError::Full(item)) => assert_eq!(item, "back"),
        other => panic!("{other:?}"),
    }
    let t = Instant::now();
    match q.put_timeout("later".to_string(), Duration::from_millis(30)) {
        Err(PutTimeoutError::Timeout(item)) => assert_eq!(item, "later"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(30));
    q.close();
    match q.try_put("closed".to_string()) {
        Err(TryPutError::Failed(PutError::Closed(item))) => assert_eq!(item, "closed"),
        other => panic!("{other:?}"),
    }
    match q.put_timeout("closed too".to_string(), Duration::ZERO) {
        Err(e) => {
            assert!(!e.is_timeout());
            assert_eq!(e.into_inner(), "closed too");
        }
        Ok(()) => panic!("put on a closed handle"),
    }
}

#[test]
fn timed_and_non_blocking_gets_tell_empty_from_closed() {
    let q: Queue<u8> = Queue::new().unwrap();
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(10)),
        Err(GetTimeoutError::Timeout)
    ));
    q.close();
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Closed))
    ));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(10)),
        Err(GetTimeoutError::Failed(GetError::Closed))
    ));
    assert!(matches!(q.get(), Err(GetError::Closed)));
}

fn work_and_mark_done(q: JoinableQueue<u32>) -> u32 {
    let mut sum = 0;
    for item in q.iter() {
        let n = item.unwrap();
        sum += n;
        q.task_done().unwrap();
        if n == 0 {
            break;
        }
    }
    sum
}

#[test]
fn a_joinable_queue_has_its_own_operations_and_a_timed_join() {
    for m in StartMethod::ALL {
        let q: JoinableQueue<u32> = QueueBuilder::default().maxsize(4).build_joinable().unwrap();
        assert_eq!(q.maxsize(), Some(4));
        q.put(5).unwrap();
        assert_eq!(q.join_timeout(Duration::from_millis(10)), Err(Timeout));
        let child = start(m, work_and_mark_done, q.clone());
        for n in [3, 2, 0] {
            q.put(n).unwrap();
        }
        assert_eq!(q.join_timeout(common::DEADLINE), Ok(()), "{m}");
        assert_eq!(join(child).unwrap(), 10, "{m}");
        assert_eq!((q.len(), q.unfinished()), (0, 0));
    }
}

// ---- Locks, semaphores, conditions, events ---------------------------------------------------

fn take_a_slot_and(args: (Semaphore, bool)) {
    let (sem, die) = args;
    let _slot = sem.acquire();
    if die {
        std::process::exit(7); // no destructor runs: the permit is never dropped
    }
}

#[test]
fn a_permit_gives_its_slot_back_when_dropped_in_another_process() {
    for m in StartMethod::ALL {
        let sem = Semaphore::new(1).unwrap();
        join(start(m, take_a_slot_and, (sem.clone(), false))).unwrap();
        assert_eq!(sem.get_value(), 1, "{m}: returned by the permit's drop");
        // A process that ends without dropping its permit (killed, or `exit`) takes the slot with
        // it, as documented, until a release on its behalf.
        assert!(join(start(m, take_a_slot_and, (sem.clone(), true))).is_err());
        assert_eq!(sem.get_value(), 0, "{m}");
        sem.release().unwrap();
        let permit = sem.try_acquire().expect("a slot");
        permit.forget();
        assert_eq!(sem.get_value(), 0);
        sem.release().unwrap();
    }
}

fn hold_and_die(args: (Lock, Connection)) {
    let (lock, conn) = args;
    lock.lock().unwrap().leak();
    conn.send(&()).unwrap();
    std::thread::sleep(common::DEADLINE);
}

#[test]
fn try_lock_and_lock_timeout_tell_a_held_lock_from_a_dead_holder() {
    for m in StartMethod::ALL {
        let lock = Lock::new().unwrap();
        let held = lock.lock().unwrap();
        assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        assert!(matches!(
            lock.lock_timeout(Duration::from_millis(10)),
            Err(LockTimeoutError::Timeout)
        ));
        drop(held);
        let (here, there) = pipe().unwrap();
        let holder = start(m, hold_and_die, (lock.clone(), there));
        here.recv_timeout::<()>(common::DEADLINE).unwrap();
        holder.kill().unwrap();
        let _ = join(holder);
        match lock.try_lock() {
            Err(TryLockError::OwnerDied(died)) => drop(died.into_inner()),
            other => panic!("{m}: {other:?}"),
        }
        assert!(lock.lock_timeout(Duration::from_millis(10)).is_ok(), "{m}");
        assert_eq!(Lock::new().unwrap().release(), Err(ReleaseError::NotLocked));
    }
}

#[test]
fn a_timed_condition_wait_hands_the_guard_back_holding_the_lock() {
    let cond = Condition::new().unwrap();
    let guard = cond.lock().unwrap();
    match cond.wait_timeout(guard, Duration::from_millis(10)) {
        Err(WaitTimeoutError::Timeout(guard)) => {
            assert!(cond.get_lock().is_locked(), "the guard holds the lock");
            drop(guard);
        }
        other => panic!("{other:?}"),
    }
    assert!(!cond.get_lock().is_locked());
}

#[test]
fn an_event_timeout_is_the_timeout_error() {
    let event = Event::new().unwrap();
    assert_eq!(event.wait_timeout(Duration::ZERO), Err(Timeout));
    event.set();
    assert_eq!(event.wait_timeout(Duration::ZERO), Ok(()));
}

// ---- Processes ------------------------------------------------------------------------------

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn one_thread_joins_while_another_terminates_and_the_handle_stays() {
    for m in StartMethod::ALL {
        let p = start(m, nap, 60_000);
        std::thread::scope(|s| {
            let joiner = s.spawn(|| p.join());
            std::thread::sleep(Duration::from_millis(50));
            p.terminate().unwrap();
            let r = joiner.join().unwrap();
            assert!(
                matches!(r, Err(ProcessError::Signaled { signal: 15 })),
                "{m}: {r:?}"
            );
        });
        assert_eq!(p.exitcode(), Some(-15), "{m}: readable after join");
        assert!(matches!(p.join(), Err(ProcessError::AlreadyJoined)));
    }
}

#[test]
fn a_timed_join_is_a_timeout_until_the_child_ends() {
    for m in StartMethod::ALL {
        let p = Process::builder().start_method(m).spawn(nap, 200).unwrap();
        assert!(matches!(
            p.join_timeout(Duration::from_millis(10)),
            Err(JoinTimeoutError::Timeout)
        ));
        assert_eq!(p.join_timeout(common::DEADLINE).unwrap(), 200, "{m}");
        assert_eq!(p.exitcode(), Some(0));
        assert!(matches!(
            p.join_timeout(Duration::ZERO),
            Err(JoinTimeoutError::Failed(ProcessError::AlreadyJoined))
        ));
    }
}
