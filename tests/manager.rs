//! The manager across real processes: concurrent updates (plain and in transactions) from children
//! under every start method, clients that are not the server's descendants over a Unix socket and
//! TCP, clients killed while holding a lock or in the middle of calls, a wrong key, a forged request,
//! objects freed with the client that held them.

mod common;

use multiprocess::manager::{Dict, Kind, List, Lock, Manager, ManagerError, RemoteError, Value};
use multiprocess::{Address, Client, Connection, StartMethod};
use std::time::{Duration, Instant};

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

/// A child's share of the work: `n` rounds of a list append, its own dict entry, a counter
/// incremented by compare-and-set, and a dict total incremented in a version-checked transaction.
fn worker(args: (Manager, Dict<String, u64>, List<u32>, Value<u64>, u32, u32)) -> u32 {
    let (m, d, l, counter, me, n) = args;
    let mut conflicts = 0;
    for i in 0..n {
        l.append(&(me * 1000 + i)).unwrap();
        d.set(&format!("worker-{me}"), &u64::from(i + 1)).unwrap();
        loop {
            let now = counter.get().unwrap();
            if counter.compare_and_set(&now, &(now + 1)).unwrap() {
                break;
            }
        }
        loop {
            let (version, items) = d.snapshot().unwrap();
            let total = items
                .iter()
                .find(|(k, _)| k == "total")
                .map_or(0, |(_, v)| *v);
            let mut tx = m.batch();
            tx.expect(&d, version);
            tx.dict_set(&d, &"total".to_string(), &(total + 1)).unwrap();
            match tx.commit() {
                Ok(()) => break,
                Err(ManagerError::Remote(RemoteError::Conflict { .. })) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    conflicts
}

#[test]
fn concurrent_updates_from_children_under_every_start_method() {
    for method in METHODS {
        let m = Manager::builder().start_method(method).start().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        let l = m.list::<u32>().unwrap();
        let counter = m.value(&0u64).unwrap();
        let n = 100;
        let children: Vec<_> = (0..4)
            .map(|me| {
                common::start(
                    method,
                    worker,
                    (m.clone(), d.clone(), l.clone(), counter.clone(), me, n),
                )
            })
            .collect();
        let conflicts: u32 = children.into_iter().map(|c| common::join(c).unwrap()).sum();
        assert_eq!(counter.get().unwrap(), 4 * u64::from(n), "{method:?}");
        assert_eq!(
            d.get(&"total".into()).unwrap(),
            Some(4 * u64::from(n)),
            "{method:?}"
        );
        for me in 0..4 {
            assert_eq!(d.get(&format!("worker-{me}")).unwrap(), Some(u64::from(n)));
        }
        let (_, items) = l.snapshot().unwrap();
        assert_eq!(items.len(), 4 * n as usize);
        for me in 0..4 {
            // Each child's appends keep their order.
            let mine: Vec<u32> = items.iter().copied().filter(|x| x / 1000 == me).collect();
            assert_eq!(mine, (0..n).map(|i| me * 1000 + i).collect::<Vec<_>>());
        }
        eprintln!("{method:?}: {conflicts} transaction conflicts retried");
    }
}

/// A client that is not a descendant of the manager: connects by address and key.
fn outsider(args: (Address, Vec<u8>, String)) -> Vec<String> {
    let (address, key, me) = args;
    let m = Manager::connect(&address, &key).unwrap();
    let names = m.named_list::<String>("visitors").unwrap();
    names.append(&me).unwrap();
    names.iter().map(|r| r.unwrap()).collect()
}

#[test]
fn clients_that_are_not_descendants_over_a_unix_socket_and_tcp() {
    for address in ["@multiprocess-test-manager-outsiders", "127.0.0.1:0"] {
        let key = b"outsiders' key".to_vec();
        let m = Manager::builder()
            .address(address)
            .unwrap()
            .authkey(&key)
            .start()
            .unwrap();
        let at = m.address().clone();
        if address.starts_with("127") {
            assert!(matches!(at, Address::Tcp(a) if a.port() != 0), "{at}");
        }
        for (i, method) in METHODS.into_iter().enumerate() {
            let seen = common::join(common::start(
                method,
                outsider,
                (at.clone(), key.clone(), format!("visitor {i}")),
            ))
            .unwrap();
            assert_eq!(seen.len(), i + 1, "{at}: {seen:?}");
        }
        let names = m.named_list::<String>("visitors").unwrap();
        assert_eq!(
            names.snapshot().unwrap().1,
            ["visitor 0", "visitor 1", "visitor 2"]
        );
        // A wrong key is refused.
        match Manager::connect(&at, b"not the key") {
            Err(ManagerError::Connect(multiprocess::ClientError::Auth(_))) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Takes the lock, says so, and waits to be killed.
fn hold_lock_and_wait(args: (Lock, Connection)) {
    let (lock, report) = args;
    lock.acquire().unwrap();
    report.send(&"held").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// Calls as fast as it can until killed.
fn keep_calling(args: (Dict<u64, Vec<u8>>, Connection)) {
    let (d, report) = args;
    report.send(&"calling").unwrap();
    for i in 0.. {
        d.set(&(i % 64), &vec![7u8; 4096]).unwrap();
        let _ = d.get(&(i % 64)).unwrap();
    }
}

#[test]
fn a_client_killed_holding_a_lock_or_mid_call_leaves_nothing_stuck() {
    for method in METHODS {
        let m = Manager::builder().start_method(method).start().unwrap();
        let lock = m.lock().unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let holder = common::start(method, hold_lock_and_wait, (lock.clone(), there));
        assert_eq!(here.recv::<String>().unwrap(), "held");
        assert!(!lock.try_acquire().unwrap(), "the child holds it");
        let started = Instant::now();
        assert!(!lock.acquire_timeout(Duration::from_millis(100)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(100));
        holder.kill().unwrap();
        let _ = common::join(holder);
        // Released by the server when the child's connection ended.
        assert!(
            lock.acquire_timeout(common::DEADLINE).unwrap(),
            "{method:?}"
        );
        lock.release().unwrap();

        let d = m.dict::<u64, Vec<u8>>().unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let caller = common::start(method, keep_calling, (d.clone(), there));
        assert_eq!(here.recv::<String>().unwrap(), "calling");
        std::thread::sleep(Duration::from_millis(50));
        caller.kill().unwrap();
        let _ = common::join(caller);
        // The server goes on.
        d.set(&1, &vec![1]).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(vec![1]));
    }
}

/// Makes an unnamed and a named dict, then exits.
fn make_and_leave(m: Manager) -> (u64, u64) {
    let unnamed = m.dict::<u8, u8>().unwrap();
    let named = m.named_dict::<u8, u8>("stays").unwrap();
    named.set(&1, &2).unwrap();
    (unnamed.id(), named.id())
}

/// Whether the manager still holds object `id`.
fn has_object(m: &Manager, id: u64) -> bool {
    m.status().unwrap().objects.iter().any(|o| o.id == id)
}

#[test]
fn objects_only_a_dead_client_held_are_freed_named_ones_stay() {
    let m = Manager::builder()
        .free_after(Duration::from_millis(100))
        .start()
        .unwrap();
    let (unnamed, named) =
        common::join(common::start(StartMethod::Fork, make_and_leave, m.clone())).unwrap();
    // The child's connection ends as it exits; the server notices at once, but the status call
    // may come first.
    assert!(common::eventually(|| {
        let s = m.status().unwrap();
        !s.objects.iter().any(|o| o.id == unnamed)
    }));
    let s = m.status().unwrap();
    let kept = s
        .objects
        .iter()
        .find(|o| o.id == named)
        .expect("the named dict");
    assert_eq!(
        (kept.kind, kept.name.as_deref(), kept.len),
        (Kind::Dict, Some("stays"), 1)
    );
    assert_eq!(
        m.named_dict::<u8, u8>("stays").unwrap().get(&1).unwrap(),
        Some(2)
    );
    // A proxy's drop lets go of its hold: an unnamed object nobody holds is gone.
    let d = m.dict::<u8, u8>().unwrap();
    let id = d.id();
    drop(d);
    assert!(common::eventually(|| !has_object(&m, id)));
}

#[test]
fn remote_errors_are_typed_and_the_connection_goes_on() {
    let m = Manager::start().unwrap();
    let l = m.list::<i32>().unwrap();
    l.extend(&[1, 2, 3]).unwrap();
    assert_eq!(l.get(-1).unwrap(), 3);
    assert!(matches!(
        l.get(3),
        Err(ManagerError::Remote(RemoteError::IndexError {
            index: 3,
            len: 3
        }))
    ));
    assert!(matches!(
        l.remove(&9),
        Err(ManagerError::Remote(RemoteError::NotFound))
    ));
    assert_eq!(l.pop(None).unwrap(), 3);
    l.insert(-100, &0).unwrap();
    assert_eq!(l.snapshot().unwrap().1, [0, 1, 2]);
    let d = m.dict::<String, i32>().unwrap();
    assert_eq!(d.get(&"missing".into()).unwrap(), None);
    assert_eq!(d.set_default(&"k".into(), &5).unwrap(), 5);
    assert_eq!(d.set_default(&"k".into(), &6).unwrap(), 5);
    // A value of the wrong type is a decode error on this side; the call itself succeeded.
    let same: Dict<String, String> = m.named_dict("typed").unwrap();
    same.set(&"x".into(), &"text".into()).unwrap();
    let other: Dict<String, u8> = m.named_dict("typed").unwrap();
    assert!(matches!(
        other.get(&"x".into()),
        Err(ManagerError::Decode(_))
    ));
    // A name is one kind.
    assert!(matches!(
        m.named_list::<u8>("typed"),
        Err(ManagerError::Remote(RemoteError::WrongKind { .. }))
    ));
    // An RLock: its holder may take it again; another thread may not release it.
    let r = m.rlock().unwrap();
    r.acquire().unwrap();
    r.acquire().unwrap();
    let r2 = r.clone();
    let refused = std::thread::spawn(move || r2.release()).join().unwrap();
    assert!(matches!(
        refused,
        Err(ManagerError::Remote(RemoteError::NotHeld))
    ));
    r.release().unwrap();
    r.release().unwrap();
    assert!(matches!(
        r.release(),
        Err(ManagerError::Remote(RemoteError::NotHeld))
    ));
    assert_eq!(d.get(&"k".into()).unwrap(), Some(5));
}

#[test]
fn a_forged_request_ends_only_that_connection() {
    let key = b"forgery".to_vec();
    let m = Manager::builder()
        .address("@multiprocess-test-manager-forged")
        .unwrap()
        .authkey(&key)
        .start()
        .unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    // A client that knows the key but sends garbage: the server answers with a protocol error
    // and hangs up on it.
    let raw = Client::builder(m.address())
        .authkey(&key)
        .connect()
        .unwrap();
    raw.send_bytes(&[0xff; 64]).unwrap();
    let _ = raw.recv_bytes();
    assert!(matches!(
        raw.recv_bytes(),
        Err(multiprocess::RecvError::Eof)
    ));
    // One announcing a gigabyte and sending a few bytes, then hanging up: nothing is allocated for
    // the announcement, and its thread ends with the connection.
    let forger = Client::builder(m.address())
        .authkey(&key)
        .connect()
        .unwrap();
    let mut forged = (-1i32).to_be_bytes().to_vec();
    forged.extend((1u64 << 30).to_be_bytes());
    forged.extend(b"short");
    forger.send_bytes(&forged).unwrap();
    drop(forger);
    d.set(&1, &1).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
    // Only this test's own connection is left.
    assert!(common::eventually(|| m.status().unwrap().clients.len() == 1));
}

#[test]
fn many_threads_share_one_connection_with_calls_in_flight() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    d.set(&(t * 1000 + i), &i).unwrap();
                    assert_eq!(d.get(&(t * 1000 + i)).unwrap(), Some(i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(d.len().unwrap(), 1600);
    // One client: all those threads used this process's one connection.
    assert_eq!(m.status().unwrap().clients.len(), 1);
}

/// Whether the thread ends within the tests' deadline.
fn within<T>(t: &std::thread::JoinHandle<T>) -> bool {
    common::eventually(|| t.is_finished())
}

/// Reads the dict it was handed (which nobody else holds while it travels).
fn read_handed(d: Dict<u32, u32>) -> Option<u32> {
    d.get(&7).unwrap()
}

#[test]
fn a_proxy_handed_to_a_child_survives_its_sender_letting_go() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let d = m.dict::<u32, u32>().unwrap();
        d.set(&7, &49).unwrap();
        // Moved into the child's argument: the parent keeps no handle on the dict.
        let child = common::start(method, read_handed, d);
        assert_eq!(common::join(child).unwrap(), Some(49), "{method:?}");
    }
}

#[test]
fn a_batch_refuses_another_managers_proxy() {
    let (m1, m2) = (Manager::start().unwrap(), Manager::start().unwrap());
    let (d1, d2) = (
        m1.dict::<String, u8>().unwrap(),
        m2.dict::<String, u8>().unwrap(),
    );
    assert_eq!(
        d1.id(),
        d2.id(),
        "ids are per manager: the collision this guards against"
    );
    let mut b = m1.batch();
    b.dict_set(&d2, &"x".into(), &42).unwrap();
    assert!(matches!(b.commit(), Err(ManagerError::OtherManager)));
    assert!(d1.is_empty().unwrap() && d2.is_empty().unwrap());
}

/// Parks an acquire of `lock` on one thread and asks for snapshots of `big` on another, forever;
/// says "ready" once both are under way. Stopped by the test, it reads nothing any more.
fn never_reads(args: (Lock, Dict<u32, Vec<u8>>, Connection)) {
    let (lock, big, report) = args;
    let l = lock.clone();
    std::thread::spawn(move || {
        let _ = l.acquire();
    });
    let _ = big.snapshot().unwrap();
    report.send(&"ready").unwrap();
    loop {
        let _ = big.snapshot();
    }
}

#[test]
fn a_client_that_stops_reading_stalls_nobody_else() {
    let m = Manager::start().unwrap();
    let lock = m.lock().unwrap();
    lock.acquire().unwrap();
    let big = m.dict::<u32, Vec<u8>>().unwrap();
    let entries: Vec<(u32, Vec<u8>)> = (0..64).map(|i| (i, vec![i as u8; 64 << 10])).collect();
    big.update(entries.iter().map(|(k, v)| (k, v))).unwrap();
    let (here, there) = multiprocess::pipe().unwrap();
    let child = common::start(
        StartMethod::Fork,
        never_reads,
        (lock.clone(), big.clone(), there),
    );
    assert_eq!(here.recv::<String>().unwrap(), "ready");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.pid()).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // its socket fills
    // Another client's timed wait still ends, and a release that hands the lock to the stopped
    // client is still answered.
    let other = m.lock().unwrap();
    other.acquire().unwrap();
    let started = Instant::now();
    let o = other.clone();
    let timed = std::thread::spawn(move || o.acquire_timeout(Duration::from_millis(200)).unwrap());
    let released = std::thread::spawn(move || lock.release());
    assert!(
        within(&timed),
        "a timed acquire stalled behind a client that does not read"
    );
    assert!(!timed.join().unwrap());
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        within(&released),
        "a release stalled behind a client that does not read"
    );
    released.join().unwrap().unwrap();
    assert_eq!(big.len().unwrap(), 64);
    child.kill().unwrap();
    let _ = common::join(child);
}

#[test]
fn a_transaction_that_fails_half_way_leaves_everything_as_it_was() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u32>().unwrap();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        d.set(&k.into(), &v).unwrap();
    }
    let l = m.list::<u32>().unwrap();
    l.extend(&[10, 20]).unwrap();
    let v = m.value(&"before".to_string()).unwrap();
    let ns = m.namespace().unwrap();
    ns.set("x", &1u8).unwrap();
    let versions =
        |d: &Dict<String, u32>, l: &List<u32>| (d.version().unwrap(), l.version().unwrap());
    let before = (
        d.snapshot().unwrap(),
        l.snapshot().unwrap(),
        versions(&d, &l),
    );
    let mut tx = m.batch();
    tx.dict_set(&d, &"new".into(), &9).unwrap();
    tx.dict_set(&d, &"b".into(), &20).unwrap();
    tx.dict_remove(&d, &"a".into()).unwrap();
    tx.list_append(&l, &30).unwrap();
    tx.list_set(&l, 0, &11).unwrap();
    tx.value_set(&v, &"after".into()).unwrap();
    tx.namespace_set(&ns, "x", &2u8).unwrap();
    tx.namespace_set(&ns, "y", &3u8).unwrap();
    tx.list_set(&l, 99, &0).unwrap(); // fails: nothing of the above may remain
    assert!(matches!(
        tx.commit(),
        Err(ManagerError::Remote(RemoteError::IndexError {
            index: 99,
            ..
        }))
    ));
    let after = (
        d.snapshot().unwrap(),
        l.snapshot().unwrap(),
        versions(&d, &l),
    );
    assert_eq!(after, before, "dict order, list and versions as they were");
    assert_eq!(v.get().unwrap(), "before");
    assert_eq!(ns.get::<u8>("x").unwrap(), Some(1));
    assert_eq!(ns.get::<u8>("y").unwrap(), None);
    // The same calls without the failing one all happen.
    let mut tx = m.batch();
    tx.dict_remove(&d, &"a".into()).unwrap();
    tx.list_set(&l, -1, &21).unwrap();
    tx.commit().unwrap();
    assert_eq!(d.keys().unwrap(), ["b", "c"]);
    assert_eq!(l.snapshot().unwrap().1, [10, 21]);
}

#[test]
fn a_message_past_the_limit_ends_that_connection_with_a_clear_error() {
    let m = Manager::builder()
        .address("127.0.0.1:0")
        .unwrap()
        .max_message(Some(64 << 10))
        .start()
        .unwrap();
    let d = m.dict::<u8, Vec<u8>>().unwrap();
    d.set(&1, &vec![1; 1000]).unwrap();
    match d.set(&2, &vec![2; 100 << 10]) {
        Err(ManagerError::Disconnected(why)) => eprintln!("as expected: {why}"),
        other => panic!("{other:?}"),
    }
    // The server goes on: a new connection sees the first entry (the dict is kept for the grace
    // period, and this test's new connection is a new client).
    let again = Manager::connect(m.address(), Vec::<u8>::new());
    assert!(again.is_err(), "the key is still required");
}

/// One load process: `threads` threads, each making `ops` sets of its own keys and a get of each,
/// timing every call; returns the latencies in microseconds.
/// A load client's keys: (process, thread, call).
type LoadDict = Dict<(u32, u32, u32), u32>;

fn load_client(args: (LoadDict, u32, u32, u32)) -> Vec<u32> {
    let (d, me, threads, ops) = args;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(ops as usize);
                for i in 0..ops {
                    let t0 = Instant::now();
                    if i % 2 == 0 {
                        d.set(&(me, t, i), &i).unwrap();
                    } else {
                        d.set(&(me, t, i), &i).unwrap();
                        assert_eq!(d.get(&(me, t, i - 1)).unwrap(), Some(i - 1));
                    }
                    lat.push(t0.elapsed().as_micros() as u32);
                }
                lat
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

#[test]
fn two_hundred_clients_a_thousand_calls_each_nothing_lost() {
    let m = Manager::start().unwrap();
    let d = m.dict::<(u32, u32, u32), u32>().unwrap();
    let (processes, threads, ops) = (8u32, 25u32, 1000u32);
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            common::start(
                METHODS[p as usize % 3],
                load_client,
                (d.clone(), p, threads, ops),
            )
        })
        .collect();
    let mut lat: Vec<u32> = children
        .into_iter()
        .flat_map(|c| common::join(c).unwrap())
        .collect();
    let took = started.elapsed();
    assert_eq!(lat.len(), (processes * threads * ops) as usize);
    assert_eq!(
        d.len().unwrap(),
        (processes * threads * ops) as usize,
        "nothing lost"
    );
    let (_, items) = d.snapshot().unwrap();
    assert!(items.iter().all(|((_, _, i), v)| i == v));
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "load: {} clients ({processes} processes x {threads} threads), {} calls in {took:?}; \
         latency per call p50 {} us, p99 {} us, max {} us",
        processes * threads,
        lat.len(),
        at(0.5),
        at(0.99),
        lat[lat.len() - 1]
    );
}

/// Takes `n` slots, says so, and waits to be killed.
fn hold_slots(args: (multiprocess::manager::Semaphore, u32, Connection)) {
    let (sem, n, report) = args;
    for _ in 0..n {
        sem.acquire().unwrap();
    }
    report.send(&"held").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// Waits for the event, then says how long it waited.
fn wait_for(args: (multiprocess::manager::Event, Connection)) -> bool {
    let (ev, report) = args;
    report.send(&"waiting").unwrap();
    ev.wait_timeout(common::DEADLINE).unwrap()
}

#[test]
fn semaphores_give_a_dead_holders_slots_back_and_events_wake_other_processes() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let sem = m.semaphore(3).unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let holder = common::start(method, hold_slots, (sem.clone(), 2, there));
        assert_eq!(here.recv::<String>().unwrap(), "held");
        assert_eq!(sem.value().unwrap(), 1);
        sem.acquire().unwrap();
        let started = Instant::now();
        assert!(!sem.acquire_timeout(Duration::from_millis(100)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(100));
        holder.kill().unwrap();
        let _ = common::join(holder);
        // Its two slots came back: one goes to this waiter, one stays free.
        assert!(sem.acquire_timeout(common::DEADLINE).unwrap(), "{method:?}");
        assert!(common::eventually(|| sem.value().unwrap() == 1));
        sem.release().unwrap();
        sem.release().unwrap();
        assert_eq!(sem.value().unwrap(), 3);

        let ev = m.event().unwrap();
        assert!(!ev.is_set().unwrap());
        let (here, there) = multiprocess::pipe().unwrap();
        let waiter = common::start(method, wait_for, (ev.clone(), there));
        assert_eq!(here.recv::<String>().unwrap(), "waiting");
        std::thread::sleep(Duration::from_millis(20));
        ev.set().unwrap();
        assert!(common::join(waiter).unwrap(), "{method:?}");
        assert!(ev.is_set().unwrap());
        ev.clear().unwrap();
        let started = Instant::now();
        assert!(!ev.wait_timeout(Duration::from_millis(50)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
    // A bounded semaphore refuses a release past its value.
    let m = Manager::start().unwrap();
    let b = m.bounded_semaphore(1).unwrap();
    assert!(matches!(
        b.release(),
        Err(ManagerError::Remote(RemoteError::TooManyReleases))
    ));
    b.acquire().unwrap();
    b.release().unwrap();
    assert!(b.try_acquire().unwrap());
}

/// Puts `n` numbers starting at `from`.
fn produce(args: (multiprocess::manager::Queue<u32>, u32, u32)) {
    let (q, from, n) = args;
    for i in from..from + n {
        q.put(&i).unwrap();
    }
}

/// Takes items until it gets `u32::MAX`, marking each done; returns their sum.
fn consume(q: multiprocess::manager::Queue<u32>) -> u64 {
    let mut sum = 0;
    loop {
        let x = q.get().unwrap();
        q.task_done().unwrap();
        if x == u32::MAX {
            return sum;
        }
        sum += u64::from(x);
    }
}

#[test]
fn a_queue_between_producers_and_consumers_loses_nothing() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let q = m.queue::<u32>(16).unwrap(); // bounded: producers wait for room
        let producers: Vec<_> = (0..3)
            .map(|p| common::start(method, produce, (q.clone(), p * 1000, 500)))
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| common::start(method, consume, q.clone()))
            .collect();
        for p in producers {
            common::join(p).unwrap();
        }
        for _ in 0..2 {
            q.put(&u32::MAX).unwrap();
        }
        let total: u64 = consumers
            .into_iter()
            .map(|c| common::join(c).unwrap())
            .sum();
        let want: u64 = (0..3u64)
            .map(|p| (p * 1000..p * 1000 + 500).sum::<u64>())
            .sum();
        assert_eq!(total, want, "{method:?}");
        assert!(q.join_timeout(common::DEADLINE).unwrap(), "every item done");
        assert!(q.is_empty().unwrap());
    }
    let m = Manager::start().unwrap();
    let q = m.queue::<u8>(1).unwrap();
    let started = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(ManagerError::Remote(RemoteError::Empty))
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
    q.put(&1).unwrap();
    assert!(matches!(
        q.try_put(&2),
        Err(ManagerError::Remote(RemoteError::Full))
    ));
    let started = Instant::now();
    assert!(matches!(
        q.put_timeout(&2, Duration::from_millis(50)),
        Err(ManagerError::Remote(RemoteError::Full))
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(!q.join_timeout(Duration::from_millis(10)).unwrap());
    assert_eq!(q.try_get().unwrap(), 1);
    q.task_done().unwrap();
    assert!(matches!(
        q.task_done(),
        Err(ManagerError::Remote(RemoteError::TooManyTaskDone))
    ));
    assert!(q.join_timeout(Duration::ZERO).unwrap());
}

/// Watches `d` from `since` and reports the version it saw, twice.
fn watcher(args: (Dict<String, u32>, u64, Connection)) -> (u64, u64) {
    let (d, since, report) = args;
    report.send(&"watching").unwrap();
    let first = d.watch(since).unwrap();
    report.send(&first).unwrap();
    let second = d.watch(first).unwrap();
    (first, second)
}

#[test]
fn a_watch_wakes_on_a_change_from_another_process_and_resumes_from_a_version() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u32>().unwrap();
    d.set(&"a".into(), &1).unwrap();
    let (v0, _) = d.snapshot().unwrap();
    for method in METHODS {
        let since = d.version().unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let child = common::start(method, watcher, (d.clone(), since, there));
        assert_eq!(here.recv::<String>().unwrap(), "watching");
        std::thread::sleep(Duration::from_millis(20));
        d.set(&"b".into(), &2).unwrap();
        // The second change after the first watch was answered (else both could answer it).
        let _first: u64 = here.recv().unwrap();
        d.remove(&"b".into()).unwrap();
        let (first, second) = common::join(child).unwrap();
        assert!(
            first > since && second > first,
            "{method:?}: {since} {first} {second}"
        );
    }
    // Resumable: changes made while nobody watched answer a watch from an old version at once.
    assert!(d.watch(v0).unwrap() > v0);
    let now = d.version().unwrap();
    let started = Instant::now();
    assert_eq!(
        d.watch_timeout(now, Duration::from_millis(50)).unwrap(),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
}

/// Waits at the barrier and returns its index.
fn at_barrier(b: multiprocess::manager::Barrier) -> usize {
    b.wait_timeout(common::DEADLINE).unwrap()
}

/// Waits at the barrier, having said so: killed while waiting.
fn die_at_barrier(args: (multiprocess::manager::Barrier, Connection)) {
    let (b, report) = args;
    report.send(&"waiting").unwrap();
    let _ = b.wait();
}

/// Doubles every item of the array in place.
fn double_all(a: multiprocess::manager::Array<i64>) {
    for i in 0..a.len().unwrap() as i64 {
        let x = a.get(i).unwrap();
        a.set(i, &(2 * x)).unwrap();
    }
}

#[test]
fn barriers_and_arrays_across_processes() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let b = m.barrier(3).unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| common::start(method, at_barrier, b.clone()))
            .collect();
        let mine = b.wait_timeout(common::DEADLINE).unwrap();
        let mut all: Vec<usize> = children
            .into_iter()
            .map(|c| common::join(c).unwrap())
            .chain([mine])
            .collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2], "{method:?}");

        // A party killed while waiting breaks the barrier for the others.
        let b = m.barrier(3).unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let doomed = common::start(method, die_at_barrier, (b.clone(), there));
        assert_eq!(here.recv::<String>().unwrap(), "waiting");
        std::thread::sleep(Duration::from_millis(20));
        let b2 = b.clone();
        let waiting = std::thread::spawn(move || b2.wait());
        std::thread::sleep(Duration::from_millis(20));
        doomed.kill().unwrap();
        let _ = common::join(doomed);
        assert!(within(&waiting));
        assert!(matches!(
            waiting.join().unwrap(),
            Err(ManagerError::Remote(RemoteError::BrokenBarrier))
        ));

        let a = m.array(&[1i64, 2, 3]).unwrap();
        common::join(common::start(method, double_all, a.clone())).unwrap();
        assert_eq!(a.snapshot().unwrap().1, [2, 4, 6]);
        assert_eq!(a.get(-1).unwrap(), 6);
        assert!(matches!(
            a.get(3),
            Err(ManagerError::Remote(RemoteError::IndexError { .. }))
        ));
    }
    // A timeout breaks it too (having waited at least that long).
    let m = Manager::start().unwrap();
    let b = m.barrier(2).unwrap();
    let started = Instant::now();
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(50)),
        Err(ManagerError::Remote(RemoteError::BrokenBarrier))
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(matches!(
        b.wait(),
        Err(ManagerError::Remote(RemoteError::BrokenBarrier))
    ));
    let a = m.array(&[0u8; 4]).unwrap();
    assert_eq!(a.len().unwrap(), 4);
}

/// Waits on the condition until the namespace says "go"; returns how many waits it took.
fn wait_for_go(
    args: (
        multiprocess::manager::Condition,
        multiprocess::manager::Namespace,
        Connection,
    ),
) -> u32 {
    let (cond, ns, report) = args;
    let _held = cond.lock().lock().unwrap();
    report.send(&"waiting").unwrap();
    let mut waits = 0;
    while ns.get::<bool>("go").unwrap() != Some(true) {
        assert!(cond.wait_timeout(common::DEADLINE).unwrap(), "notified");
        waits += 1;
    }
    waits
}

#[test]
fn conditions_wait_and_notify_across_processes() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let cond = m.condition().unwrap();
        let ns = m.namespace().unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (here, there) = multiprocess::pipe().unwrap();
                let c = common::start(method, wait_for_go, (cond.clone(), ns.clone(), there));
                assert_eq!(here.recv::<String>().unwrap(), "waiting");
                c
            })
            .collect();
        {
            // Both children wait with the lock released (or this acquire would not return).
            let _held = cond.lock().lock().unwrap();
            ns.set("go", &true).unwrap();
            cond.notify_all().unwrap();
        }
        for w in waiters {
            assert!(common::join(w).unwrap() >= 1, "{method:?}");
        }
    }
    let m = Manager::start().unwrap();
    let cond = m.condition().unwrap();
    assert!(matches!(
        cond.wait(),
        Err(ManagerError::Remote(RemoteError::NotHeld))
    ));
    cond.lock().acquire().unwrap();
    cond.lock().acquire().unwrap(); // reentrant
    let started = Instant::now();
    assert!(!cond.wait_timeout(Duration::from_millis(50)).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(50));
    // The lock came back with its count: two releases.
    cond.lock().release().unwrap();
    cond.lock().release().unwrap();
    assert!(matches!(
        cond.lock().release(),
        Err(ManagerError::Remote(RemoteError::NotHeld))
    ));
    cond.notify(1).unwrap_err();
}

/// A type of this test's own, served by the manager.
struct Tally {
    total: u64,
    calls: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum TallyCall {
    Add(u64),
    Read,
    Boom,
}

impl multiprocess::manager::Serve for Tally {
    const NAME: &'static str = "tests.Tally";
    type Init = u64;
    type Request = TallyCall;
    type Response = (u64, u64);
    fn new(start: u64) -> Tally {
        Tally {
            total: start,
            calls: 0,
        }
    }
    fn call(&mut self, call: TallyCall) -> (u64, u64) {
        self.calls += 1;
        match call {
            TallyCall::Add(n) => self.total += n,
            TallyCall::Read => {}
            TallyCall::Boom => panic!("asked to explode"),
        }
        (self.total, self.calls)
    }
}

/// The same name with other requests: what a mismatched client sends.
struct Impostor;

impl multiprocess::manager::Serve for Impostor {
    const NAME: &'static str = "tests.Tally";
    type Init = u64;
    type Request = String;
    type Response = String;
    fn new(_: u64) -> Impostor {
        Impostor
    }
    fn call(&mut self, s: String) -> String {
        s
    }
}

/// A served type with nothing in it: `()` in, `()` out.
macro_rules! unit_served {
    ($(#[$doc:meta])* $name:ident, $wire:literal) => {
        $(#[$doc])*
        struct $name;

        impl multiprocess::manager::Serve for $name {
            const NAME: &'static str = $wire;
            type Init = ();
            type Request = ();
            type Response = ();
            fn new(_: ()) -> $name {
                $name
            }
            fn call(&mut self, _: ()) {}
        }
    };
}

unit_served!(
    /// A type no server here serves.
    Unserved,
    "tests.Unserved"
);

/// A gate in the server process: `WaitOpen` blocks its caller (at most `DEADLINE / 2`) until some
/// gate's `Open`; `Waiting` says how many callers are blocked.
struct Gate;

static GATE: (std::sync::Mutex<(bool, usize)>, std::sync::Condvar) =
    (std::sync::Mutex::new((false, 0)), std::sync::Condvar::new());

#[derive(serde::Serialize, serde::Deserialize)]
enum GateCall {
    WaitOpen,
    Waiting,
    Open,
}

impl multiprocess::manager::Serve for Gate {
    const NAME: &'static str = "tests.Gate";
    type Init = ();
    type Request = GateCall;
    type Response = (bool, usize);
    fn new(_: ()) -> Gate {
        Gate
    }
    fn call(&mut self, call: GateCall) -> (bool, usize) {
        let mut g = GATE.0.lock().unwrap();
        match call {
            GateCall::WaitOpen => {
                g.1 += 1;
                let end = Instant::now() + common::DEADLINE / 2;
                while !g.0 && Instant::now() < end {
                    g = GATE
                        .1
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
                g.1 -= 1;
            }
            GateCall::Waiting => {}
            GateCall::Open => {
                g.0 = true;
                GATE.1.notify_all();
            }
        }
        *g
    }
}

unit_served!(
    /// Its `Drop` panics.
    Grumpy,
    "tests.Grumpy"
);

impl Drop for Grumpy {
    fn drop(&mut self) {
        panic!("a grumpy drop");
    }
}

struct TestTypes;

impl multiprocess::manager::Registrations for TestTypes {
    fn register(r: &mut multiprocess::manager::Registry) {
        r.register::<Tally>()
            .register::<Gate>()
            .register::<Grumpy>();
    }
}

/// A manager serving the test's types, its server started under `method` (the server child runs
/// the registrations under every start method).
fn with_types(method: StartMethod) -> Manager {
    Manager::builder()
        .start_method(method)
        .serving::<TestTypes>()
        .start()
        .unwrap()
}

/// Adds 1 to the tally `n` times.
fn add_to_tally(args: (multiprocess::manager::Served<Tally>, u64)) {
    let (t, n) = args;
    for _ in 0..n {
        t.call(&TallyCall::Add(1)).unwrap();
    }
}

#[test]
fn types_of_your_own_are_served_and_called_from_other_processes() {
    for method in METHODS {
        let m = with_types(method);
        let t = m.served::<Tally>(&100).unwrap();
        let children: Vec<_> = (0..3)
            .map(|_| common::start(method, add_to_tally, (t.clone(), 50)))
            .collect();
        for c in children {
            common::join(c).unwrap();
        }
        assert_eq!(t.call(&TallyCall::Read).unwrap(), (250, 151), "{method:?}");
        // A panicking method is a typed error; the object and the server go on.
        match t.call(&TallyCall::Boom) {
            Err(ManagerError::Remote(RemoteError::Served(why))) => {
                assert!(why.contains("asked to explode"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.call(&TallyCall::Read).unwrap(), (250, 153));
        // A request of another type under the same name changes nothing (not even the version).
        let wrong = m.served::<Impostor>(&0).unwrap();
        let v = wrong.version().unwrap();
        assert!(matches!(
            wrong.call(&"not a tally call".to_string()),
            Err(ManagerError::Remote(RemoteError::Served(_)))
        ));
        assert_eq!(wrong.version().unwrap(), v);
        // A type the server does not serve.
        assert!(matches!(
            m.served::<Unserved>(&()),
            Err(ManagerError::Remote(RemoteError::UnknownType(_)))
        ));
        // The status names the type.
        let s = m.status().unwrap();
        let me = s.objects.iter().find(|o| o.id == t.id()).unwrap();
        assert_eq!(me.served.as_deref(), Some("tests.Tally"));
        // A watch sees the calls.
        let v = t.version().unwrap();
        t.call(&TallyCall::Add(1)).unwrap();
        assert!(t.watch(v).unwrap() > v);
    }
}

/// Receives a dict proxy through a connection and writes into it.
fn receive_and_write(conn: Connection) {
    let d: Dict<String, u32> = conn.recv().unwrap();
    d.set(&"from the child".into(), &7).unwrap();
    conn.send(&d.len().unwrap()).unwrap();
}

#[test]
fn a_proxy_sent_through_a_connection_reconnects_on_the_other_side() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let d = m.dict::<String, u32>().unwrap();
        d.set(&"from the parent".into(), &1).unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let child = common::start(method, receive_and_write, there);
        here.send(&d).unwrap();
        assert_eq!(here.recv::<usize>().unwrap(), 2, "{method:?}");
        common::join(child).unwrap();
        assert_eq!(d.get(&"from the child".into()).unwrap(), Some(7));
    }
}

/// Serves a manager (with the test's types) at `address` with `key` until stopped: a process the
/// test can freeze or look into.
fn serve_standalone(args: (String, Vec<u8>)) {
    let (address, key) = args;
    let listener = multiprocess::Listener::builder(address.as_str())
        .authkey(&key)
        .bind()
        .unwrap();
    multiprocess::manager::Server::new(listener)
        .unwrap()
        .serving(<TestTypes as multiprocess::manager::Registrations>::register)
        .serve()
        .unwrap();
}

/// A standalone server in a forked child at a fresh abstract address (`tag` names it), and this
/// process connected to it with `key`.
fn standalone(tag: &str, key: &[u8]) -> (multiprocess::Process<()>, Manager, String) {
    let address = format!("@mp-test-{tag}-{}", std::process::id());
    let server = common::start(
        StartMethod::Fork,
        serve_standalone,
        (address.clone(), key.to_vec()),
    );
    let m = common::eventually(|| Manager::connect(address.as_str(), key).is_ok())
        .then(|| Manager::connect(address.as_str(), key).unwrap())
        .expect("the server came up");
    (server, m, address)
}

/// Whether every thread of process `pid` is stopped (state `T` in its `/proc` stat).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                == Some("T")
        })
    })
}

#[test]
fn a_call_timeout_ends_calls_to_a_stuck_manager_and_drops_their_late_answers() {
    let (server, m, _) = standalone("call-timeout", b"timeout key");
    let d = m.dict::<u8, u8>().unwrap();
    d.set(&1, &1).unwrap();
    m.set_call_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pid = rustix::process::Pid::from_raw(server.pid()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The stop takes each thread at its next trip through the kernel: wait until all are stopped
    // (else a thread still running could answer the next call).
    assert!(common::eventually(|| all_threads_stopped(server.pid())));
    let started = Instant::now();
    let late = d.set(&2, &2);
    assert!(matches!(late, Err(ManagerError::Timeout)), "{late:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    // The late answer of the abandoned call is dropped: the next call gets its own.
    m.set_call_timeout(None).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
    assert_eq!(d.get(&2).unwrap(), Some(2), "the abandoned set did happen");
    m.shutdown().unwrap();
    common::join(server).unwrap();
}

/// Blocks on `gate` in the server; whether it was opened (not timed out).
fn wait_at_gate(gate: multiprocess::manager::Served<Gate>) -> bool {
    gate.call(&GateCall::WaitOpen).unwrap().0
}

#[test]
fn a_served_call_that_blocks_does_not_hold_up_its_process_s_other_calls() {
    for method in METHODS {
        let m = with_types(method);
        m.set_call_timeout(Some(common::DEADLINE)).unwrap();
        let (shut, opener) = (
            m.served::<Gate>(&()).unwrap(),
            m.served::<Gate>(&()).unwrap(),
        );
        let d = m.dict::<u32, u32>().unwrap();
        // One thread of this process blocks in a served call; the others share its connection.
        let blocked = std::thread::spawn(move || wait_at_gate(shut));
        // Answered only while the blocked call runs: nothing but a fresh reader can read it.
        assert!(common::eventually(|| opener
            .call(&GateCall::Waiting)
            .unwrap()
            .1
            == 1));
        for i in 0..100 {
            d.set(&i, &(i * i)).unwrap();
        }
        assert_eq!(d.len().unwrap(), 100);
        let t = m.served::<Tally>(&0).unwrap();
        assert_eq!(t.call(&TallyCall::Add(5)).unwrap(), (5, 1));
        opener.call(&GateCall::Open).unwrap();
        assert!(
            blocked.join().unwrap(),
            "{method:?}: the gate opened, no timeout"
        );
        // The connection stays in step after the hand-off.
        assert_eq!(d.get(&7).unwrap(), Some(49));
        assert_eq!(m.status().unwrap().clients.len(), 1);
    }
}

#[test]
fn a_proxy_is_checked_against_the_object_it_arrives_for() {
    let m = Manager::builder().serving::<TestTypes>().start().unwrap();
    let t = m.served::<Tally>(&1).unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let (here, there) = multiprocess::pipe().unwrap();
    // As what it is: attaches.
    here.send(&t).unwrap();
    let back: multiprocess::manager::Served<Tally> = there.recv().unwrap();
    assert_eq!(back.call(&TallyCall::Read).unwrap(), (1, 1));
    // As another served type, or another kind: refused before any call.
    here.send(&t).unwrap();
    let err = there
        .recv::<multiprocess::manager::Served<Gate>>()
        .unwrap_err();
    assert!(err.to_string().contains("tests.Tally"), "{err}");
    here.send(&t).unwrap();
    assert!(there.recv::<Dict<u32, u32>>().is_err());
    here.send(&d).unwrap();
    assert!(there.recv::<Lock>().is_err());
    here.send(&d).unwrap();
    assert!(
        there
            .recv::<multiprocess::manager::Served<Tally>>()
            .is_err()
    );
    here.send(&d).unwrap();
    let d2: Dict<u32, u32> = there.recv().unwrap();
    d2.set(&1, &2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(2));
    // The refused ones took no hold: the tally is held by `t` and `back` only.
    let holds = |id| {
        m.status()
            .unwrap()
            .objects
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.holds)
    };
    assert_eq!(holds(t.id()), Some(2));
}

#[test]
fn a_served_object_whose_drop_panics_leaves_the_server_working() {
    let m = Manager::builder()
        .serving::<TestTypes>()
        .free_after(Duration::from_millis(20))
        .start()
        .unwrap();
    m.set_call_timeout(Some(common::DEADLINE)).unwrap();
    let g = m.served::<Grumpy>(&()).unwrap();
    g.call(&()).unwrap();
    let id = g.id();
    drop(g);
    // The timer frees it (its drop panics, outside the server's lock, caught)...
    assert!(common::eventually(|| !has_object(&m, id)));
    // ... and goes on timing out waits.
    let lock = m.lock().unwrap();
    lock.acquire().unwrap();
    let other = lock.clone();
    let started = Instant::now();
    let timed = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(50)));
    assert!(!timed.join().unwrap().unwrap());
    assert!(started.elapsed() >= Duration::from_millis(50));
    lock.release().unwrap();
}

/// Waits at the barrier; what the wait answered.
fn wait_at(b: multiprocess::manager::Barrier) -> Result<usize, String> {
    b.wait_timeout(common::DEADLINE).map_err(|e| e.to_string())
}

#[test]
fn barriers_abort_reset_and_say_how_they_stand() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        assert!(matches!(
            m.barrier(0),
            Err(ManagerError::Remote(RemoteError::NoParties))
        ));
        m.named("b").barrier(2).unwrap();
        assert!(matches!(
            m.named("b").barrier(0),
            Err(ManagerError::Remote(RemoteError::NoParties))
        ));
        let b = m.barrier(2).unwrap();
        assert_eq!((b.parties().unwrap(), b.n_waiting().unwrap()), (2, 0));
        assert!(!b.broken().unwrap());
        // A reset fails the party waiting now; the barrier works again after it.
        let child = common::start(method, wait_at, b.clone());
        assert!(common::eventually(|| b.n_waiting().unwrap() == 1));
        b.reset().unwrap();
        let failed = common::join(child).unwrap().unwrap_err();
        assert!(failed.contains("broken"), "{method:?}: {failed}");
        assert!(!b.broken().unwrap());
        let child = common::start(method, wait_at, b.clone());
        let mine = b.wait_timeout(common::DEADLINE).unwrap();
        let theirs = common::join(child).unwrap().unwrap();
        assert_eq!(mine + theirs, 1, "{method:?}: indices 0 and 1");
        // An abort fails the waiting party and every later wait, until a reset.
        let child = common::start(method, wait_at, b.clone());
        assert!(common::eventually(|| b.n_waiting().unwrap() == 1));
        b.abort().unwrap();
        assert!(common::join(child).unwrap().is_err());
        assert!(b.broken().unwrap());
        assert!(matches!(
            b.wait(),
            Err(ManagerError::Remote(RemoteError::BrokenBarrier))
        ));
        b.reset().unwrap();
        assert!(!b.broken().unwrap());
    }
    // A wait that times out breaks the barrier in the timer: a watch sees its version move.
    let m = Manager::start().unwrap();
    let b = m.barrier(2).unwrap();
    let v = b.version().unwrap();
    let watching = {
        let b = b.clone();
        std::thread::spawn(move || b.watch_timeout(v, common::DEADLINE))
    };
    assert!(b.wait_timeout(Duration::from_millis(30)).is_err());
    assert!(
        watching
            .join()
            .unwrap()
            .unwrap()
            .is_some_and(|seen| seen > v)
    );
}

/// Finds the named objects the parent made (or makes them), and uses them.
fn use_named(m: Manager) -> (u32, u64, Vec<u8>) {
    let jobs = m.named("jobs").queue::<u32>(0).unwrap();
    let counter = m.named("counter").value(&1000u64).unwrap();
    let gate = m.named("gate").event().unwrap();
    let cells = m.named("cells").array(&[9u8, 9, 9]).unwrap();
    cells.set(0, &1).unwrap();
    gate.set().unwrap();
    (
        jobs.get().unwrap(),
        counter.get().unwrap(),
        cells.snapshot().unwrap().1,
    )
}

#[test]
fn objects_of_every_kind_can_be_named_and_found_by_other_processes() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let jobs = m.named("jobs").queue::<u32>(0).unwrap();
        jobs.put(&7).unwrap();
        let counter = m.named("counter").value(&5u64).unwrap();
        let gate = m.named("gate").event().unwrap();
        let cells = m.named("cells").array(&[0u8, 0, 0]).unwrap();
        // The child's `init` and `items` are ignored: the objects are there already.
        let (job, count, seen) = common::join(common::start(method, use_named, m.clone())).unwrap();
        assert_eq!((job, count, seen), (7, 5, vec![1, 0, 0]), "{method:?}");
        assert!(gate.is_set().unwrap());
        assert_eq!(cells.get(0).unwrap(), 1);
        // Another kind, or the same kind with other parameters, under a taken name.
        for wrong in [
            m.named("jobs").lock().map(drop),
            m.named("jobs").queue::<u32>(5).map(drop),
            m.named("counter").dict::<u8, u8>().map(drop),
        ] {
            assert!(matches!(
                wrong,
                Err(ManagerError::Remote(RemoteError::WrongKind { .. }))
            ));
        }
        // Named ones stay when nobody holds them.
        let id = counter.id();
        drop((jobs, counter, gate, cells));
        assert_eq!(m.named("counter").value(&0u64).unwrap().id(), id);
    }
}

/// How many threads process `pid` has.
fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn abandoned_calls_to_a_stuck_method_cannot_grow_the_server_s_threads_without_end() {
    let key = b"stuck key";
    let (server, m, address) = standalone("stuck", key);
    let gate = m.served::<Gate>(&()).unwrap();
    let before = threads_of(server.pid());
    // Every call waits at the gate and is abandoned after 20 ms; the next one is sent at once.
    m.set_call_timeout(Some(Duration::from_millis(20))).unwrap();
    for _ in 0..100 {
        assert!(matches!(
            gate.call(&GateCall::WaitOpen),
            Err(ManagerError::Timeout)
        ));
    }
    std::thread::sleep(Duration::from_millis(50));
    let during = threads_of(server.pid());
    // At most 16 stuck readers that handed the connection on, and the one stuck now.
    assert!(during <= before + 18, "{before} threads, then {during}");
    // This connection is stuck behind them now; another one opens the gate.
    let other = Manager::connect_with(Client::builder(address.as_str()).authkey(key)).unwrap();
    let opener = other.served::<Gate>(&()).unwrap();
    opener.call(&GateCall::Open).unwrap();
    m.set_call_timeout(Some(common::DEADLINE)).unwrap();
    assert!(gate.call(&GateCall::WaitOpen).unwrap().0);
    assert!(common::eventually(|| threads_of(server.pid()) <= before + 3));
    other.shutdown().unwrap();
    common::join(server).unwrap();
}

/// Receives a lock proxy; whether it attached.
fn recv_lock(conn: Connection) -> Result<(), String> {
    let lock: Lock = conn.recv().map_err(|e| e.to_string())?;
    lock.acquire().map_err(|e| e.to_string())?;
    lock.release().map_err(|e| e.to_string())
}

#[test]
fn a_condition_s_lock_travels_as_a_lock() {
    for method in METHODS {
        let m = Manager::start().unwrap();
        let c = m.condition().unwrap();
        let (here, there) = multiprocess::pipe().unwrap();
        let child = common::start(method, recv_lock, there);
        here.send(c.lock()).unwrap();
        assert_eq!(common::join(child).unwrap(), Ok(()), "{method:?}");
    }
}
