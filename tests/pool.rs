//! `Pool` across real worker processes, under every start method: every call form, failures that
//! stay with their item (panics, values that do not serialize, workers killed mid-task, timeouts,
//! cancellation), workers replaced at their task limit without a false death, lazy input, and
//! closing, terminating and dropping a pool. CPython's `_TestPool`, `_TestPoolWorkerLifetime` and
//! `_TestPoolWorkerErrors` scenarios that apply are ported under `cpython_` names.
#![cfg(not(miri))]

mod common;

use common::{DEADLINE, eventually, pid_alive};
use multiprocess::{
    MapError, Pool, PoolError, ResultTimeoutError, StartMethod, TaskError, current_process,
};
use serde::{Serialize, Serializer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

fn pool(method: StartMethod, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(method)
        .build()
        .expect("pool")
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u64) -> i32 {
    std::process::id() as i32
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn panics_on_3(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

fn dies_on_3(x: u64) -> u64 {
    if x == 3 {
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
            .unwrap();
    }
    x
}

fn aborts(_: u64) -> u64 {
    std::process::abort()
}

fn exits_7(_: u64) -> u64 {
    std::process::exit(7)
}

#[test]
fn apply_map_and_imap_forms() {
    for method in METHODS {
        let p = pool(method, 2);
        assert_eq!(p.apply(square, 9), Ok(81), "{method:?}");
        let r = p.apply_async(square, 5);
        assert_eq!(r.get(), Ok(25));
        assert_eq!(r.get(), Ok(25), "a result can be read again");
        assert!(r.ready());
        assert_eq!(r.successful(), Some(true));
        assert_eq!(
            p.map(square, 0..100).unwrap(),
            (0..100).map(|x| x * x).collect::<Vec<_>>()
        );
        let v: Vec<u64> = p.imap(square, 0..50).map(Result::unwrap).collect();
        assert_eq!(v, (0..50).map(|x| x * x).collect::<Vec<_>>());
        let v: Vec<u64> = p
            .imap(square, 0..50)
            .chunksize(7)
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, (0..50).map(|x| x * x).collect::<Vec<_>>());
        let mut un: Vec<(usize, u64)> = p
            .imap_unordered(square, 0..50)
            .map(|(i, r)| (i, r.unwrap()))
            .collect();
        un.sort();
        assert_eq!(un, (0..50).map(|x| (x as usize, x * x)).collect::<Vec<_>>());
        let m = p.map_async(square, 0..1000);
        assert_eq!(m.get().unwrap().len(), 1000);
        assert_eq!(m.progress().done, 1000);
        assert_eq!(p.map(square, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
        // Functions of several arguments take a tuple.
        fn add(args: (u64, u64)) -> u64 {
            args.0 + args.1
        }
        assert_eq!(p.map(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
        p.close();
        p.join().unwrap();
    }
}

#[test]
fn work_is_spread_over_the_workers() {
    for method in METHODS {
        let p = pool(method, 2);
        let pids: std::collections::HashSet<i32> = p
            .imap(sleep_then_pid, std::iter::repeat_n(20, 8))
            .map(Result::unwrap)
            .collect();
        assert_eq!(pids.len(), 2, "{method:?}: {pids:?}");
        assert!(!pids.contains(&(std::process::id() as i32)));
    }
}

fn sleep_then_pid(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id() as i32
}

#[test]
fn a_panicking_item_fails_alone_even_inside_a_chunk() {
    for method in METHODS {
        let p = pool(method, 2);
        for chunksize in [1, 4, 10] {
            let results: Vec<_> = p.imap(panics_on_3, 0..10).chunksize(chunksize).collect();
            for (i, r) in results.iter().enumerate() {
                if i == 3 {
                    assert_eq!(
                        r,
                        &Err(TaskError::Panicked {
                            message: "three is not allowed".into()
                        }),
                        "{method:?} chunk {chunksize}"
                    );
                } else {
                    assert_eq!(r, &Ok(i as u64), "{method:?} chunk {chunksize}");
                }
            }
        }
        let failed = p.apply_async(panics_on_3, 3);
        assert!(failed.get().is_err());
        assert_eq!(failed.successful(), Some(false));
        let err = p.map(panics_on_3, 0..10).unwrap_err();
        assert_eq!(err.index, 3);
        assert_eq!(p.apply(square, 4), Ok(16), "the pool goes on");
    }
}

/// A value whose serialization fails for odd numbers.
#[derive(serde::Deserialize)]
struct Picky(u64);

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 2 == 1 {
            return Err(serde::ser::Error::custom(format!("{} is odd", self.0)));
        }
        s.serialize_u64(self.0)
    }
}

fn picky_identity(x: Picky) -> u64 {
    x.0
}

fn picky_result(x: u64) -> Picky {
    Picky(x)
}

#[test]
fn values_that_fail_to_serialize_fail_their_item_alone() {
    for method in METHODS {
        let p = pool(method, 2);
        let r = p.map_results(picky_identity, (0..6).map(Picky));
        for (i, r) in r.iter().enumerate() {
            match i % 2 {
                0 => assert_eq!(r, &Ok(i as u64)),
                _ => assert!(
                    matches!(r, Err(TaskError::Encode(m)) if m.contains("is odd")),
                    "{method:?} {i}: {r:?}"
                ),
            }
        }
        // Inside one chunk: the odd items fail alone, the others keep their order.
        let r: Vec<_> = p
            .imap(picky_identity, (0..9).map(Picky))
            .chunksize(9)
            .collect();
        for (i, r) in r.iter().enumerate() {
            match i % 2 {
                0 => assert_eq!(r, &Ok(i as u64), "{method:?} {i}"),
                _ => assert!(
                    matches!(r, Err(TaskError::Encode(_))),
                    "{method:?} {i}: {r:?}"
                ),
            }
        }
        // A result that fails to serialize in the worker.
        let r: Vec<Result<u64, _>> = p
            .imap(picky_result, 0..4)
            .chunksize(4)
            .map(|r| r.map(|p| p.0))
            .collect();
        assert_eq!(r[0], Ok(0));
        assert!(
            matches!(&r[1], Err(TaskError::Child(m)) if m.contains("is odd")),
            "{r:?}"
        );
        assert_eq!(r[2], Ok(2));
        assert_eq!(p.apply(square, 3), Ok(9));
    }
}

#[test]
fn a_worker_that_dies_fails_exactly_its_task_and_is_replaced() {
    for method in METHODS {
        let p = pool(method, 2);
        let before = p.worker_pids();
        let results: Vec<_> = p.imap(dies_on_3, 0..20).collect();
        for (i, r) in results.iter().enumerate() {
            if i == 3 {
                assert!(
                    matches!(
                        r,
                        Err(TaskError::WorkerDied {
                            signal: Some(9),
                            ..
                        })
                    ),
                    "{method:?}: {r:?}"
                );
            } else {
                assert_eq!(r, &Ok(i as u64), "{method:?} item {i}");
            }
        }
        assert!(eventually(|| p.worker_pids().len() == 2));
        assert_ne!(p.worker_pids(), before, "a worker was replaced");
        for f in [aborts as fn(u64) -> u64, exits_7] {
            let r = p.apply(f, 0);
            assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}");
        }
        assert!(matches!(
            p.apply(exits_7, 0),
            Err(TaskError::WorkerDied {
                code: Some(7),
                signal: None,
                ..
            })
        ));
        assert_eq!(p.apply(square, 6), Ok(36), "{method:?}: the pool goes on");
    }
}

#[test]
fn workers_killed_at_random_moments_during_a_map() {
    // 100 rounds in all (spread over the start methods): a map of 200 items, and a worker SIGKILLed
    // at a random moment; every item is either its right result or WorkerDied.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut died = 0;
    for round in 0..100 {
        let method = METHODS[round % 3];
        let p = pool(method, 2);
        let delay = Duration::from_micros(rand() % 3000);
        let victim_at = rand() as usize;
        let m = p.map_async(spin_us, std::iter::repeat_n(50, 200));
        std::thread::sleep(delay);
        let pids = p.worker_pids();
        if !pids.is_empty() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pids[victim_at % pids.len()]).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let results = m.results();
        assert_eq!(results.len(), 200);
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, 50, "round {round} item {i}"),
                Err(TaskError::WorkerDied {
                    signal: Some(9), ..
                }) => died += 1,
                Err(e) => panic!("round {round} item {i}: {e:?}"),
            }
        }
        assert!(started.elapsed() < DEADLINE * 4, "too slow");
    }
    // Most rounds kill a worker mid-map; each such kill fails its chunk (at most one chunk).
    assert!(died > 0, "no worker died mid-task in 100 rounds");
}

fn spin_us(us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {}
    us
}

#[test]
fn cpython_worker_lifetime_at_the_task_limit_loses_nothing() {
    // _TestPoolWorkerLifetime.test_pool_worker_lifetime and gh-66587: workers leave at their task
    // limit and are replaced, and no finished task is reported as failed.
    for method in METHODS {
        let p = Pool::builder()
            .processes(2)
            .start_method(method)
            .max_tasks_per_worker(3)
            .build()
            .unwrap();
        let results: Vec<i32> = p.imap(pid_of, 0..60).map(Result::unwrap).collect();
        let distinct: std::collections::HashSet<_> = results.iter().collect();
        // 60 tasks at 3 per worker: 20 workers in all.
        assert!(
            distinct.len() >= 15,
            "{method:?}: {} workers",
            distinct.len()
        );
        p.close();
        p.join().unwrap();
    }
}

static INIT_VALUE: AtomicUsize = AtomicUsize::new(0);

fn init(v: usize) {
    INIT_VALUE.store(v, Ordering::SeqCst);
}

fn read_init(_: u64) -> usize {
    INIT_VALUE.load(Ordering::SeqCst)
}

fn bad_init(_: usize) {
    panic!("no initialisation today");
}

#[test]
fn cpython_initializer_runs_in_each_worker_and_a_failing_one_breaks_the_pool() {
    for method in METHODS {
        let p = Pool::builder()
            .processes(2)
            .start_method(method)
            .initializer(init, 42)
            .build()
            .unwrap();
        assert!(p.map(read_init, 0..20).unwrap().iter().all(|&v| v == 42));
        let p = Pool::builder()
            .processes(2)
            .start_method(method)
            .initializer(bad_init, 0)
            .build()
            .unwrap();
        let t = Instant::now();
        let r = p.apply(square, 2);
        assert!(
            matches!(&r, Err(TaskError::Initializer(m)) if m.contains("no initialisation today")),
            "{method:?}: {r:?}"
        );
        assert!(t.elapsed() < DEADLINE);
        assert!(matches!(p.apply(square, 2), Err(TaskError::Initializer(_))));
    }
}

#[test]
fn a_task_past_its_timeout_fails_and_its_worker_is_replaced() {
    for method in METHODS {
        let p = Pool::builder()
            .processes(2)
            .start_method(method)
            .task_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let t = Instant::now();
        let slow = p.apply_async(sleep_ms, 10_000);
        let fast = p.map(sleep_ms, [1, 2, 3]).unwrap();
        assert_eq!(fast, [1, 2, 3]);
        assert_eq!(
            slow.get(),
            Err(TaskError::Timeout(Duration::from_millis(200)))
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(p.apply(square, 5), Ok(25), "{method:?}");
    }
}

#[test]
fn waiting_with_a_timeout_kills_nothing() {
    for method in METHODS {
        let p = pool(method, 1);
        let r = p.apply_async(sleep_ms, 300);
        let t = Instant::now();
        assert_eq!(
            r.get_timeout(Duration::from_millis(50)),
            Err(ResultTimeoutError::Timeout)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(r.wait_timeout(Duration::from_millis(10)).is_err());
        assert_eq!(r.successful(), None);
        assert_eq!(r.get(), Ok(300), "{method:?}");
    }
}

#[test]
fn cancel_skips_a_waiting_task_and_kills_a_running_one() {
    for method in METHODS {
        let p = pool(method, 1);
        let running = p.apply_async(sleep_ms, 10_000);
        let queued = p.apply_async(square, 3);
        let waiting = p.apply_async(square, 4);
        assert!(eventually(|| p.worker_pids().len() == 1));
        std::thread::sleep(Duration::from_millis(100)); // the worker is in the sleep
        assert!(waiting.cancel());
        assert_eq!(waiting.get(), Err(TaskError::Cancelled));
        let worker = p.worker_pids()[0];
        assert!(running.cancel());
        assert_eq!(running.get(), Err(TaskError::Cancelled), "{method:?}");
        assert!(eventually(|| !pid_alive(worker)));
        // The task queued behind the killed one runs on the replacement.
        assert_eq!(queued.get(), Ok(9), "{method:?}");
        // A task waiting in a worker's own queue (handed out ahead) is skipped, not run.
        let mark =
            std::env::temp_dir().join(format!("mp-pool-skip-{}-{method}", std::process::id()));
        let _ = std::fs::remove_file(&mark);
        let busy = p.apply_async(sleep_ms, 300);
        let ahead = p.apply_async(touch, mark.to_string_lossy().into_owned());
        std::thread::sleep(Duration::from_millis(50));
        assert!(ahead.cancel());
        assert_eq!(ahead.get(), Err(TaskError::Cancelled));
        assert_eq!(
            busy.get(),
            Ok(300),
            "{method:?}: the running task was left alone"
        );
        assert_eq!(p.apply(square, 2), Ok(4));
        assert!(!mark.exists(), "{method:?}: the cancelled task ran");
        let _ = std::fs::remove_file(&mark);
        assert!(!queued.cancel(), "an ended task cannot be cancelled");
    }
}

fn touch(path: String) {
    std::fs::write(path, b"ran").unwrap();
}

#[test]
fn imap_reads_its_input_lazily() {
    for method in METHODS {
        let p = pool(method, 2);
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let input = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let first: Vec<u64> = p
            .imap(square, input)
            .in_flight(4)
            .take(10)
            .map(Result::unwrap)
            .collect();
        assert_eq!(first, (0..10).map(|x| x * x).collect::<Vec<_>>());
        // At most the in-flight window beyond what was taken.
        assert!(
            read.load(Ordering::SeqCst) <= 10 + 4,
            "{}",
            read.load(Ordering::SeqCst)
        );
    }
}

#[test]
fn close_join_terminate_and_drop() {
    for method in METHODS {
        let p = pool(method, 2);
        assert!(matches!(p.join(), Err(PoolError::StillRunning)));
        let pending = p.map_async(sleep_ms, [50, 50, 50]);
        p.close();
        assert_eq!(p.apply(square, 1), Err(TaskError::Closed));
        p.join().unwrap();
        assert_eq!(
            pending.get().unwrap(),
            [50, 50, 50],
            "close lets submitted work finish"
        );
        assert!(p.worker_pids().is_empty());

        let p = pool(method, 2);
        let slow = p.apply_async(sleep_ms, 10_000);
        let pids = p.worker_pids();
        p.terminate();
        assert_eq!(slow.get(), Err(TaskError::Terminated));
        p.join().unwrap();
        assert!(pids.iter().all(|&pid| !pid_alive(pid)));

        let p = pool(method, 2);
        let slow = p.apply_async(sleep_ms, 10_000);
        let pids = p.worker_pids();
        drop(p);
        assert_eq!(
            slow.get(),
            Err(TaskError::Terminated),
            "dropping a pool terminates it"
        );
        assert!(pids.iter().all(|&pid| !pid_alive(pid)));
    }
}

#[test]
fn a_pool_serves_several_threads_at_once() {
    let p = Arc::new(pool(StartMethod::ForkServer, 2));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || p.map(square, t * 100..t * 100 + 100).unwrap())
        })
        .collect();
    for (t, h) in threads.into_iter().enumerate() {
        let t = t as u64;
        assert_eq!(
            h.join().unwrap(),
            (t * 100..t * 100 + 100).map(square).collect::<Vec<_>>()
        );
    }
}

#[test]
fn callbacks_run_in_the_parent() {
    let p = pool(StartMethod::ForkServer, 2);
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let _ = p.apply_async_then(square, 8, move |r| {
        tx.send((r, current_process().pid)).unwrap()
    });
    let _ = p.apply_async_then(panics_on_3, 3, move |r| {
        tx2.send((r, current_process().pid)).unwrap()
    });
    let mut got: Vec<_> = (0..2).map(|_| rx.recv_timeout(DEADLINE).unwrap()).collect();
    got.sort_by_key(|(r, _)| r.is_err());
    assert_eq!(got[0].0, Ok(64));
    assert!(matches!(&got[1].0, Err(TaskError::Panicked { .. })));
    assert!(got.iter().all(|(_, pid)| *pid == std::process::id() as i32));
}

fn dies_first_time(path: String) -> u64 {
    if std::fs::metadata(&path).is_err() {
        std::fs::write(&path, b"1").unwrap();
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
            .unwrap();
    }
    7
}

#[test]
fn retries_run_a_task_again_when_its_worker_died() {
    for method in METHODS {
        let path = std::env::temp_dir().join(format!(
            "mp-pool-retry-{}-{}",
            std::process::id(),
            method.name()
        ));
        let _ = std::fs::remove_file(&path);
        let p = Pool::builder()
            .processes(1)
            .start_method(method)
            .retries(1)
            .build()
            .unwrap();
        let r = p.apply(dies_first_time, path.to_string_lossy().into_owned());
        let _ = std::fs::remove_file(&path);
        assert_eq!(r, Ok(7), "{method:?}");
        // Without retries the death is the task's result.
        let p = pool(method, 1);
        let r = p.apply(dies_first_time, path.to_string_lossy().into_owned());
        let _ = std::fs::remove_file(&path);
        assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}");
    }
}

#[test]
fn map_reports_the_first_failed_item_with_its_index() {
    let p = pool(StartMethod::ForkServer, 2);
    let e: MapError = p.map(panics_on_3, [5, 3, 3, 1]).unwrap_err();
    assert_eq!(e.index, 1);
    assert!(e.to_string().contains("item 1 failed"), "{e}");
}

#[test]
fn map_keeps_input_order_over_many_tasks_and_reports_the_earliest_failure() {
    for method in METHODS {
        let p = pool(method, 2);
        let n = 20_000u64;
        let want: Vec<u64> = (0..n).map(square).collect();
        assert_eq!(p.map(square, 0..n).unwrap(), want, "{method:?}");
        assert_eq!(
            p.starmap(u64::wrapping_add, (0..n).map(|i| (i, i)))
                .unwrap()
                .len(),
            n as usize
        );
        // A panic late in the input, and an item that fails to serialize earlier, inside a task (a
        // gap in that task's indices): the earlier one is the error, and every item still ran.
        let items = (0..1000u64).map(|i| if i == 900 { 3 } else { 5 });
        let e = p.map(panics_on_3, items).unwrap_err();
        assert_eq!(e.index, 900, "{method:?}: {e}");
        let picky = (0..100).map(|i| Picky(if i == 37 { 1 } else { 2 * i })); // tasks of 13
        let e = p.map(picky_identity, picky).unwrap_err();
        assert_eq!(e.index, 37, "{method:?}: {e}");
        assert!(matches!(e.error, TaskError::Encode(_)), "{e}");
        // The pool goes on after both.
        assert_eq!(p.map(square, [4, 5]).unwrap(), [16, 25]);
    }
}

#[test]
#[ignore = "run by an_interrupted_or_killed_parent_leaves_no_worker_behind"]
fn helper_a_long_map() {
    let p = pool(StartMethod::ForkServer, 2);
    assert!(eventually(|| p.worker_pids().len() == 2));
    println!("workers {:?}", p.worker_pids());
    let _ = p.map(sleep_ms, std::iter::repeat_n(1000, 1000)); // 500 s of work
}

#[test]
fn an_interrupted_or_killed_parent_leaves_no_worker_behind() {
    use std::io::{BufRead, BufReader};
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::KILL] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "helper_a_long_map", "--nocapture"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let workers: Vec<i32> = loop {
            let line = lines.next().expect("the helper's output").unwrap();
            if let Some(list) = line.strip_prefix("workers [") {
                break list
                    .trim_end_matches(']')
                    .split(", ")
                    .map(|p| p.parse().unwrap())
                    .collect();
            }
        };
        std::thread::sleep(Duration::from_millis(100)); // inside the map
        let sent = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            signal,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let took = sent.elapsed();
        assert!(!status.success(), "{signal:?}: {status:?}");
        assert!(
            took < Duration::from_secs(5),
            "{signal:?}: the parent took {took:?} to end"
        );
        for pid in workers {
            assert!(
                eventually(|| !pid_alive(pid)),
                "{signal:?}: worker {pid} outlived its parent"
            );
        }
    }
}

fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

#[test]
fn starmap_takes_pairs() {
    for method in METHODS {
        let p = pool(method, 2);
        let pairs: Vec<(u64, u32)> = (0..50).map(|i| (i, 2)).collect();
        assert_eq!(
            p.starmap(power, pairs).unwrap(),
            (0..50).map(|i| i * i).collect::<Vec<_>>(),
            "{method:?}"
        );
    }
}

#[test]
fn a_pool_needs_a_worker() {
    let e = Pool::new(0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

fn new_seen() -> Vec<u64> {
    Vec::new()
}

fn remember(seen: &mut Vec<u64>, item: u64) -> (i32, usize) {
    seen.push(item);
    (std::process::id() as i32, seen.len())
}

fn init_panics() -> u64 {
    panic!("no state today")
}

fn with_state(state: &mut u64, item: u64) -> u64 {
    *state + item
}

#[test]
fn map_init_keeps_a_state_per_worker() {
    for method in METHODS {
        let p = pool(method, 2);
        let out = p.map_init(new_seen, remember, 0..40).unwrap();
        // Each worker's counts go 1, 2, 3, ... across its tasks: one state per worker.
        let mut per_worker: std::collections::HashMap<i32, Vec<usize>> = Default::default();
        for (pid, n) in out {
            per_worker.entry(pid).or_default().push(n);
        }
        for (pid, counts) in &per_worker {
            let mut sorted = counts.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                (1..=counts.len()).collect::<Vec<_>>(),
                "{method:?} {pid}"
            );
        }
        let e = p.map_init(init_panics, with_state, [1, 2]).unwrap_err();
        assert!(
            matches!(&e.error, TaskError::Child(m) if m.contains("no state today")),
            "{e}"
        );
        assert_eq!(p.apply(square, 3), Ok(9), "{method:?}: the pool goes on");
    }
}

fn segfaults(_: u64) -> u64 {
    // As a real fault would: std's SIGSEGV handler (stack-overflow detection) finds no guard-page
    // hit, restores the default action and returns; the fault then happens again, and kills.
    for _ in 0..2 {
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::SEGV)
            .unwrap();
    }
    0
}

#[test]
fn a_segfaulting_worker_fails_its_task_with_the_signal() {
    for method in METHODS {
        let p = pool(method, 2);
        let r = p.apply(segfaults, 0);
        assert!(
            matches!(
                r,
                Err(TaskError::WorkerDied {
                    signal: Some(11),
                    ..
                })
            ),
            "{method:?}: {r:?}"
        );
        assert_eq!(p.apply(square, 2), Ok(4));
    }
}

fn leak_mib(mib: u64) -> u64 {
    let v = vec![1u8; (mib as usize) << 20];
    std::mem::forget(v);
    std::process::id() as u64
}

#[test]
fn a_worker_past_its_memory_ceiling_is_replaced_after_its_task() {
    for method in METHODS {
        let p = Pool::builder()
            .processes(1)
            .start_method(method)
            .max_memory_per_worker(64 << 20)
            .build()
            .unwrap();
        let first = p.apply(leak_mib, 1).unwrap();
        assert_eq!(
            p.apply(leak_mib, 1).unwrap(),
            first,
            "{method:?}: under the ceiling, kept"
        );
        let heavy = p.apply(leak_mib, 100).unwrap();
        assert_eq!(
            heavy, first,
            "the task that passed the ceiling still finishes"
        );
        let next = p.apply(leak_mib, 1).unwrap();
        assert_ne!(
            next, first,
            "{method:?}: the worker was replaced after its task"
        );
    }
}

#[test]
fn dropping_an_imap_cancels_what_has_not_started() {
    let p = pool(StartMethod::ForkServer, 2);
    let started = Instant::now();
    let first: Vec<u64> = p
        .imap(sleep_ms, std::iter::repeat_n(100, 1000))
        .in_flight(1000)
        .take(2)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, [100, 100]);
    // 998 tasks were submitted and not started: dropping the iterator cancelled them, so the
    // next call waits only for what the workers had in hand.
    assert_eq!(p.apply(square, 3), Ok(9));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
