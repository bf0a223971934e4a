//! Unit tests of the shared state: both stores, death in the middle of an operation (simulated by
//! leaving the state exactly as a killed process would, with a dead pid holding the lock), and
//! corrupt memory.

use super::ring::*;
use super::*;
use crate::error::{GetError, PutTimeoutError, TryGetError, TryPutError};

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn small<T>() -> Queue<T> {
    Queue::<T>::builder().ring_bytes(4096).build().unwrap()
}

#[test]
fn items_go_through_the_ring_the_log_and_back_in_order() {
    let q = small::<Vec<u8>>();
    let sizes = [
        1usize,
        100,
        3000,
        10,
        5000,
        7,
        1 << 20,
        0,
        2000,
        2000,
        2000,
        9,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        q.put(vec![i as u8; n]).unwrap();
    }
    assert_eq!(q.len(), sizes.len());
    for (i, &n) in sizes.iter().enumerate() {
        assert_eq!(q.get().unwrap(), vec![i as u8; n], "item {i}");
    }
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    // The log emptied: puts use the ring again, and wrap around it many times.
    for round in 0..2000u32 {
        q.put(vec![round as u8; (round % 300) as usize]).unwrap();
        assert_eq!(q.get().unwrap().len(), (round % 300) as usize);
    }
    assert!(q.shared().peek_u64(O_LOG_HEAD) > 0, "the log was used");
}

#[test]
fn the_log_gives_its_pages_back() {
    let q = small::<Vec<u8>>();
    for _ in 0..8 {
        q.put(vec![1; 1 << 20]).unwrap();
        q.get().unwrap();
    }
    let log = q.shared().log_file().metadata().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(log.len() >= 8 << 20, "the file's size grows");
    assert!(
        log.blocks() * 512 < 2 << 20,
        "but only {} bytes stay allocated",
        log.blocks() * 512
    );
}

/// A second handle on `q`, as another process has: its own view of the other side's words.
fn second_handle<T>(q: &Queue<T>) -> Queue<T> {
    let (tx, rx) = crate::pipe().unwrap();
    tx.send(q).unwrap();
    rx.recv().unwrap()
}

/// Leaves `q` as a producer killed between publishing its last record and committing it.
fn uncommit_last_put<T>(q: &Queue<T>, tail_before: u64, log_tail_before: u64) {
    let s = q.shared();
    let count = s.peek_u64(O_PUT_COUNT);
    s.poke_u64(O_PJ_TAIL, tail_before);
    s.poke_u64(O_PJ_LOG_TAIL, log_tail_before);
    s.poke_u64(O_PJ_COUNT, count);
    s.poke_u64(O_PUT_COUNT, count - 1);
    s.poke_u32(O_PUT_LOCK, dead_pid());
}

#[test]
fn a_producer_dead_before_publishing_loses_only_its_item() {
    let q = small::<u64>();
    q.put(1).unwrap();
    let s = q.shared();
    let (tail, count) = (s.peek_u64(O_TAIL), s.peek_u64(O_PUT_COUNT));
    // The dead producer journaled and wrote half a record, but did not publish its tail.
    s.poke_u64(O_PJ_TAIL, tail);
    s.poke_u64(O_PJ_LOG_TAIL, s.peek_u64(O_LOG_TAIL));
    s.poke_u64(O_PJ_COUNT, count + 1);
    s.region()
        .write_at(HEADER + tail as usize, &[0xff; 16])
        .unwrap();
    s.poke_u32(O_PUT_LOCK, dead_pid());
    assert_eq!(q.len(), 1);
    q.put(2).unwrap();
    assert_eq!((q.get().unwrap(), q.get().unwrap()), (1, 2));
    assert!(q.is_empty());
}

#[test]
fn a_producer_dead_after_publishing_has_its_item_committed_for_it() {
    let p = small::<u64>();
    let c = second_handle(&p);
    p.put(1).unwrap();
    let (t, lt) = (p.shared().peek_u64(O_TAIL), p.shared().peek_u64(O_LOG_TAIL));
    p.put(2).unwrap();
    uncommit_last_put(&p, t, lt);
    assert_eq!(c.len(), 1);
    // The consumer's view now includes the published, uncommitted record: it must stay valid.
    assert_eq!(c.get().unwrap(), 1);
    assert!(matches!(c.try_get(), Err(TryGetError::Empty)));
    p.put(3).unwrap(); // recovery commits 2 first
    let got: Vec<u64> = (0..2).map(|_| c.get().unwrap()).collect();
    assert_eq!(got, [2, 3]);
    assert!(c.is_empty());
}

#[test]
fn a_producer_dead_after_publishing_to_the_log_has_its_item_committed_for_it() {
    let p = small::<Vec<u8>>();
    let c = second_handle(&p);
    p.put(vec![1; 8]).unwrap();
    let (t, lt) = (p.shared().peek_u64(O_TAIL), p.shared().peek_u64(O_LOG_TAIL));
    p.put(vec![2; 3000]).unwrap(); // to the log
    uncommit_last_put(&p, t, lt);
    assert_eq!(c.get().unwrap(), vec![1; 8]);
    p.put(vec![3; 8]).unwrap();
    assert_eq!(c.get().unwrap(), vec![2; 3000]);
    assert_eq!(c.get().unwrap(), vec![3; 8]);
    assert!(c.is_empty());
}

#[test]
fn a_producer_dead_after_its_commit_loses_nothing() {
    let q = small::<u64>();
    q.put(1).unwrap();
    q.put(2).unwrap();
    // It committed, then died before unlocking.
    q.shared().poke_u32(O_PUT_LOCK, dead_pid());
    q.put(3).unwrap();
    let got: Vec<u64> = (0..3).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, [1, 2, 3]);
}

#[test]
fn a_consumer_dead_before_its_commit_leaves_the_item() {
    let q = small::<u64>();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let s = q.shared();
    let (head, got) = (s.peek_u64(O_HEAD), s.peek_u64(O_GOT_COUNT));
    s.poke_u64(O_GJ_COUNT, got + 1);
    s.poke_u64(O_GJ_HEAD, head + 16);
    s.poke_u32(O_GET_LOCK, dead_pid());
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.get().unwrap(), 2);
}

#[test]
fn a_consumer_dead_after_its_commit_took_exactly_one_item() {
    let q = small::<u64>();
    for i in 1..=3 {
        q.put(i).unwrap();
    }
    let s = q.shared();
    let (head, got) = (s.peek_u64(O_HEAD), s.peek_u64(O_GOT_COUNT));
    s.poke_u64(O_GJ_COUNT, got + 1);
    s.poke_u64(O_GJ_HEAD, head + 16);
    s.poke_u64(O_GJ_LOG_HEAD, s.peek_u64(O_LOG_HEAD));
    s.poke_u64(O_GOT_COUNT, got + 1); // committed; the head was never published
    s.poke_u32(O_GET_LOCK, dead_pid());
    assert_eq!(q.len(), 2);
    assert_eq!(q.get().unwrap(), 2);
    assert_eq!(q.get().unwrap(), 3);
    assert!(q.is_empty());
}

#[test]
fn a_corrupt_ring_header_is_an_error_not_an_allocation() {
    let q = small::<Vec<u8>>();
    q.put(vec![7; 10]).unwrap();
    let s = q.shared();
    let head = s.peek_u64(O_HEAD) as usize;
    // A length of 3 GiB with a matching check word.
    let len = 3u32 << 30;
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&(!len).to_le_bytes());
    s.region().write_at(HEADER + head, &h).unwrap();
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Corrupt(_)))
    ));
    // A broken check word.
    s.region()
        .write_at(HEADER + head, &[10, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let err = q.try_get().unwrap_err();
    assert!(err.to_string().contains("fails its check"), "{err}");
    // Nothing was taken.
    assert_eq!(q.len(), 1);
}

#[test]
fn contradictory_positions_are_errors() {
    let q = small::<u64>();
    q.put(1).unwrap();
    let s = q.shared();
    s.poke_u64(O_TAIL, s.peek_u64(O_HEAD) + (1 << 20));
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Corrupt(_)))
    ));
    assert!(matches!(q.put(2), Err(PutError::Corrupt { item: 2, .. })));
    // More taken than put.
    let q = small::<u64>();
    q.shared().poke_u64(O_GOT_COUNT, 5);
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Corrupt(_)))
    ));
}

#[test]
fn a_corrupt_log_is_an_error_not_an_allocation() {
    use std::os::unix::fs::FileExt;
    let q = small::<Vec<u8>>();
    q.put(vec![1; 3000]).unwrap();
    let s = q.shared();
    let forged = 1u64 << 40;
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&forged.to_le_bytes());
    h[8..].copy_from_slice(&(!forged).to_le_bytes());
    s.log_file().write_all_at(&h, 0).unwrap();
    // The record claims more than is published.
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Corrupt(_)))
    ));
    // Published, but not in the file.
    s.poke_u64(O_LOG_TAIL, 1 << 50);
    let err = q.try_get().unwrap_err();
    assert!(err.to_string().contains("in the file"), "{err}");
    // A head past the tail.
    s.poke_u64(O_LOG_HEAD, 1 << 51);
    assert!(matches!(
        q.try_get(),
        Err(TryGetError::Failed(GetError::Corrupt(_)))
    ));
    assert_eq!(q.len(), 1);
}

#[test]
fn bounded_queues_count_items_not_bytes() {
    let q = Queue::<Vec<u8>>::builder()
        .maxsize(2)
        .ring_bytes(4096)
        .build()
        .unwrap();
    q.put(vec![0; 10_000]).unwrap();
    q.put(vec![0; 1]).unwrap();
    assert!(q.is_full());
    assert!(q.try_put(vec![]).unwrap_err().is_full());
    q.get().unwrap();
    q.try_put(vec![]).unwrap();
}

#[test]
fn a_queue_of_another_type_is_refused() {
    let q = Queue::<u32>::new().unwrap();
    let (a, b) = crate::pipe().unwrap();
    a.send(&q).unwrap();
    assert!(b.recv::<Queue<u32>>().is_ok());
    a.send(&q).unwrap();
    let err = b.recv::<Queue<String>>().unwrap_err();
    assert!(err.to_string().contains("different item type"), "{err}");
}

#[test]
fn a_handle_whose_view_is_stale_looks_again() {
    // Two handles on one queue, as two processes have: each keeps its own view of the other side.
    let a = small::<u64>();
    let b = second_handle(&a);
    for i in 0..3 {
        a.put(i).unwrap();
    }
    assert_eq!(b.get().unwrap(), 0); // b's view: 3 put
    for i in 3..400 {
        a.put(i).unwrap(); // wraps the 4 KiB ring
    }
    for i in 1..400 {
        assert_eq!(a.get().unwrap(), i); // a takes everything, far past b's view
    }
    assert!(
        matches!(b.try_get(), Err(TryGetError::Empty)),
        "not corrupt"
    );
    b.put(7).unwrap(); // b's view of the head is stale too
    assert_eq!(b.get().unwrap(), 7);
    for i in 0..300 {
        b.put(i).unwrap();
        assert_eq!(a.get().unwrap(), i);
    }
}

/// Leaves `q` as billions of 16-byte items through it would: every count and position moved by `n`.
fn after_traffic<T>(q: &Queue<T>, n: u64) {
    let s = q.shared();
    let pos = n * 16;
    for (at, v) in [
        (O_PUT_COUNT, n),
        (O_GOT_COUNT, n),
        (O_PJ_COUNT, n),
        (O_GJ_COUNT, n),
        (O_HEAD, pos),
        (O_TAIL, pos),
        (O_GJ_HEAD, pos),
        (O_PJ_TAIL, pos - 16),
    ] {
        s.poke_u64(at, v);
    }
}

#[test]
fn views_stale_by_billions_of_items_are_still_lower_bounds() {
    // Past 2^31 items and 2^32 bytes, where 32-bit counts and positions would wrap.
    for n in [(1u64 << 31) + 100, (1 << 28) - 253, (1 << 32) + 7] {
        let a = small::<u64>();
        let b = second_handle(&a); // b's view: nothing put, nothing taken
        after_traffic(&a, n);
        assert!(matches!(b.try_get(), Err(TryGetError::Empty)), "n = {n}");
        // The ring fills up (256 records of 16 bytes) with nobody taking; b's stale view of the head
        // must not let it overwrite them.
        for i in 0..256u64 {
            a.put(i).unwrap();
        }
        b.put(999).unwrap();
        let got: Vec<u64> = (0..257).map(|_| a.get().unwrap()).collect();
        assert_eq!(got[..256], (0..256).collect::<Vec<_>>()[..], "n = {n}");
        assert_eq!(got[256], 999);
        assert!(a.is_empty() && b.is_empty());
    }
}

#[test]
fn a_log_record_longer_than_the_memory_behind_the_file_is_refused() {
    use std::os::unix::fs::FileExt;
    let q = small::<Vec<u8>>();
    q.put(vec![1; 3000]).unwrap();
    let s = q.shared();
    // A hostile process makes the sparse file huge for free, then forges a matching length.
    let forged = 1u64 << 40;
    s.log_file().write_all_at(&[0], forged + 64).unwrap();
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&forged.to_le_bytes());
    h[8..].copy_from_slice(&(!forged).to_le_bytes());
    s.log_file().write_all_at(&h, 0).unwrap();
    s.poke_u64(O_LOG_TAIL, forged + 16);
    let err = q.try_get().unwrap_err();
    assert!(err.to_string().contains("allocated"), "{err}");
}

// ---- Items that carry descriptors (the side channel) ----------------------------------------

#[test]
fn items_with_descriptors_keep_their_order_with_plain_ones_through_both_stores() {
    use crate::Connection;
    let q = small::<(u32, Option<Connection>, Vec<u8>)>();
    let mut keep = Vec::new();
    for i in 0..12u32 {
        let conn = (i % 3 == 0).then(|| {
            let (a, b) = crate::pipe().unwrap();
            keep.push(a);
            b
        });
        // Some large enough for the log.
        let pad = vec![i as u8; if i % 4 == 1 { 3000 } else { 10 }];
        q.put((i, conn, pad)).unwrap();
    }
    let mut k = keep.iter();
    for i in 0..12u32 {
        let (n, conn, pad) = q.get().unwrap();
        assert_eq!(n, i);
        assert_eq!(pad.len(), if i % 4 == 1 { 3000 } else { 10 });
        assert_eq!(conn.is_some(), i % 3 == 0, "item {i}");
        if let Some(c) = conn {
            k.next().unwrap().send(&i).unwrap();
            assert_eq!(
                c.recv::<u32>().unwrap(),
                i,
                "item {i} got its own connection"
            );
        }
    }
}

#[test]
fn a_message_no_record_names_is_passed_over() {
    // A producer that died after sending its descriptors but before committing its record.
    let q = small::<crate::Connection>();
    let (a, b) = crate::pipe().unwrap();
    {
        use std::os::fd::AsRawFd;
        let stray = crate::pipe().unwrap().0;
        let s = q.shared();
        let token = s.peek_u64(O_FD_TOKEN) + 1;
        s.poke_u64(O_FD_TOKEN, token);
        let bytes = token.to_le_bytes();
        let iov = [std::io::IoSlice::new(&bytes)];
        crate::sys::send_with(
            s.side().0,
            &iov,
            &[std::os::fd::AsFd::as_fd(&stray).as_raw_fd()],
            false,
        )
        .unwrap();
    }
    q.put(b).unwrap();
    let got = q.get().unwrap();
    a.send(&7u8).unwrap();
    assert_eq!(got.recv::<u8>().unwrap(), 7);
}

#[test]
fn a_record_whose_message_is_gone_is_an_error_and_the_next_item_is_fine() {
    // A consumer that died after receiving the descriptors but before committing.
    let q = small::<crate::Connection>();
    let (a, b) = crate::pipe().unwrap();
    let (c, d) = crate::pipe().unwrap();
    q.put(b).unwrap();
    q.put(d).unwrap();
    {
        let s = q.shared();
        let mut word = [0u8; 8];
        let mut inbox = crate::sys::Inbox::default();
        crate::sys::recv_into_slice(s.side().1, &mut word, &mut inbox, true, true).unwrap();
        assert_eq!(inbox.fds.len(), 1);
    }
    assert!(matches!(q.get(), Err(GetError::DescriptorsLost(_))));
    assert_eq!(q.len(), 1, "the item was taken all the same");
    let got = q.get().unwrap();
    c.send(&1u8).unwrap();
    assert_eq!(got.recv::<u8>().unwrap(), 1);
    drop(a);
}

#[test]
fn a_full_side_channel_is_full_for_try_put_and_waits_for_put() {
    let q = small::<crate::Connection>();
    let (_a, b) = crate::pipe().unwrap();
    let mut n = 0;
    loop {
        match q.try_put(b.try_clone().unwrap()) {
            Ok(()) => n += 1,
            Err(TryPutError::Full(_)) => break,
            Err(e) => panic!("after {n}: {e}"),
        }
        assert!(n < 100_000, "the side channel never filled");
    }
    assert!(n >= 100, "only {n} items with descriptors fit");
    let t = std::time::Instant::now();
    let timed = q.put_timeout(b.try_clone().unwrap(), std::time::Duration::from_millis(30));
    assert!(matches!(timed, Err(PutTimeoutError::Timeout(_))));
    assert!(t.elapsed() >= std::time::Duration::from_millis(30));
    // A consumer frees room for a waiting put.
    let q2 = q.clone();
    let taker = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        q2.get().unwrap()
    });
    q.put(b.try_clone().unwrap()).unwrap();
    drop(taker.join().unwrap());
    assert_eq!(q.len(), n);
}

/// One round of the scenario below; how many of the later items went to the log.
fn items_logged_after_a_slow_start(early: u64, more: u64) -> u64 {
    // No consumer yet: the ring fills and the rest goes to the log.
    let q = small::<u64>();
    for i in 0..early {
        q.put(i).unwrap();
    }
    let s = q.shared();
    let log_before = s.peek_u64(O_LOG_TAIL);
    assert!(log_before > 0, "the early items overflowed into the log");
    // Now a consumer takes everything, a little slower than the producer puts (a microsecond of
    // work per item), so that the log would never empty on its own.
    let consumer = {
        let q = second_handle(&q);
        std::thread::spawn(move || {
            for i in 0..early + more {
                assert_eq!(q.get().unwrap(), i);
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_micros(1) {
                    std::hint::spin_loop();
                }
            }
        })
    };
    for i in early..early + more {
        q.put(i).unwrap();
    }
    consumer.join().unwrap();
    // Each u64 item takes a 32-byte log record.
    (s.peek_u64(O_LOG_TAIL) - log_before) / 32
}

#[test]
fn a_queue_leaves_its_log_once_a_consumer_catches_up() {
    // Had the queue stayed in the log, about three quarters of the later items would be there in
    // every round (37 500 of 50 000 without the drain wait). A consumer thread descheduled for
    // longer than the producer's 200 µs look (the other tests share two CPUs) sends some items to
    // the log legitimately, so the round may be repeated: the old behaviour fails every round.
    let more = 50_000u64;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let logged = items_logged_after_a_slow_start(2_000, more);
        rounds.push(logged);
        if logged < more / 2 {
            return;
        }
    }
    panic!("items of the {more} later ones that went to the log, by round: {rounds:?}");
}

/// The fuzz targets' entry points, on a few inputs each: they are compiled and run with every test
/// run, not only under `cargo fuzz`.
#[test]
fn the_fuzzing_entry_points_answer_without_panicking() {
    use super::fuzzing;
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0; 7], vec![0xff; 200], vec![1; 6000]];
    // A consistent state: one 8-byte item in the ring.
    let mut good = Vec::new();
    for w in [1u64, 0, 0, 24, 0, 0] {
        good.extend(w.to_le_bytes());
    }
    let item = crate::codec::encode(&(7u64, String::from("x"), vec![1u8]))
        .unwrap()
        .0;
    let len = item.len() as u32;
    good.extend(len.to_le_bytes());
    good.extend((!len).to_le_bytes());
    good.extend(&item);
    inputs.push(good);
    let mut answers = Vec::new();
    for data in &inputs {
        answers.push(fuzzing::get_from_forged_queue(data).map_err(|e| e.to_string()));
        let _ = fuzzing::boot_prelude(data);
        #[cfg(feature = "cluster")]
        let _ = fuzzing::broker_entry(data);
    }
    assert!(
        answers.iter().any(|a| a.is_err()),
        "forged states are refused: {answers:?}"
    );
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&8u32.to_le_bytes());
    h[4..].copy_from_slice(&(!8u32).to_le_bytes());
    assert_eq!(fuzzing::ring_record_len(h, 16, 2048), Ok(8));
    assert!(fuzzing::ring_record_len(h, 15, 2048).is_err());
    let mut l = [0u8; 16];
    l[..8].copy_from_slice(&8u64.to_le_bytes());
    l[8..].copy_from_slice(&(!8u64).to_le_bytes());
    assert_eq!(fuzzing::log_record_len(l, 24), Ok(8));
    assert!(fuzzing::log_record_len(l, 23).is_err());
}

/// Sends `bytes` (no descriptors) on `q`'s side channel, as a hostile holder of the queue could.
fn send_stray(q: &Queue<crate::Connection>, bytes: &[u8]) {
    let iov = [std::io::IoSlice::new(bytes)];
    crate::sys::send_with(q.shared().side().0, &iov, &[], false).unwrap();
}

#[test]
fn stray_messages_on_the_side_channel_are_passed_over() {
    // A message of the wrong length, or with a token never issued, used to stay at the head of
    // the channel: every later item lost its descriptors, and once the channel filled behind it
    // a put blocked on an empty queue.
    for stray in [&[0xffu8; 9][..], &[0x7f][..], &u64::MAX.to_le_bytes()[..]] {
        let q = small::<crate::Connection>();
        send_stray(&q, stray);
        let (a, b) = crate::pipe().unwrap();
        for i in 0..3000u32 {
            q.try_put(b.try_clone().unwrap())
                .unwrap_or_else(|e| panic!("stray {stray:?}, put {i}: {e}"));
            let got = q
                .get()
                .unwrap_or_else(|e| panic!("stray {stray:?}, get {i}: {e}"));
            if i % 500 == 0 {
                got.send(&i).unwrap();
                assert_eq!(a.recv::<u32>().unwrap(), i, "the descriptor is the pipe's");
            }
        }
        assert!(q.is_empty());
    }
}
