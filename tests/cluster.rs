//! A pool on a real broker (the Redis server `.ci/with-redis` starts, or a private one a test
//! kills and restarts), with workers that are this test binary started in worker mode
//! (`MULTIPROCESS_WORKER`), each running its tasks on a local pool of its own processes.
// Workers are this binary in worker mode: without `worker-env` a "worker" would run the tests
// again (and start workers of its own).
#![cfg(feature = "worker-env")]

mod common;

use common::redis::{RedisServer, connect, shared_url};
use multiprocess::cluster::{self, Broker};
use multiprocess::{Pool, TaskError};
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "cluster tests";

/// Set for every worker this file starts (see [`watchdog`]).
const NOT_A_TEST_RUN: &str = "MP_CLUSTER_TESTS_WORKER";

/// Worker processes of one pool: this test binary in worker mode. Killed (SIGKILL) and reaped
/// when dropped; their local pools' processes go with them (each holds a lifeline to its worker).
/// Each one's stdin is a pipe from this process (`MULTIPROCESS_WORKER_EXIT_ON_EOF`): should the
/// test binary die without dropping them, they end too.
struct Workers {
    url: String,
    pool: String,
    env: Vec<(String, String)>,
    children: Vec<Child>,
}

impl Workers {
    fn new(url: &str, pool: &str) -> Workers {
        Workers {
            url: url.into(),
            pool: pool.into(),
            env: Vec::new(),
            children: Vec::new(),
        }
    }

    fn env(mut self, k: &str, v: impl ToString) -> Workers {
        self.env.push((k.into(), v.to_string()));
        self
    }

    /// Starts one more worker with `processes` local processes; its pid.
    fn start(&mut self, processes: usize) -> u32 {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(cluster::ENV_WORKER, &self.pool)
            .env(cluster::ENV_BROKER, &self.url)
            .env(cluster::ENV_AUTHKEY, KEY)
            .env(cluster::ENV_PROCESSES, processes.to_string())
            .env(cluster::ENV_EXIT_ON_EOF, "1")
            .env(NOT_A_TEST_RUN, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start a worker");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Waits until `n` workers of the pool are alive.
    fn wait_live(&self, n: usize) {
        let end = Instant::now() + common::DEADLINE;
        loop {
            let live = cluster::status(&self.url, &self.pool)
                .map(|s| s.workers.iter().filter(|w| w.alive).count())
                .unwrap_or(0);
            if live >= n {
                return;
            }
            assert!(Instant::now() < end, "{n} workers did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, pid: u32, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The pool's keys go too, so that the shared broker holds nothing of this test.
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            let pattern = format!("mp:{{{}}}:*", self.pool);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut c)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut c);
            }
        }
    }
}

/// Ends the test binary if the test runs past twice [`common::DEADLINE`] (a wait on the broker
/// that never ends would otherwise hang the suite): the workers follow through their stdin.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

fn watchdog(test: &'static str) -> Watchdog {
    // A worker that ran the tests instead of serving (worker mode not built in) stops here, before
    // it starts workers of its own.
    if std::env::var_os(NOT_A_TEST_RUN).is_some() {
        eprintln!("{test}: this process was started as a worker, not to run tests");
        std::process::exit(3);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + 2 * common::DEADLINE;
        while Instant::now() < end {
            if d.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{test}: past its deadline of {:?}; aborting",
            2 * common::DEADLINE
        );
        std::process::abort();
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A pool name unique to this test run.
fn pool_name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn broker(url: &str, pool: &str) -> Broker {
    Broker::redis(url, pool).authkey(KEY)
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    std::process::id()
}

fn checked(x: i32) -> i32 {
    assert!(x != 13, "thirteen");
    x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn the_pool_api_works_through_the_broker() {
    let _deadline = watchdog("the_pool_api_works_through_the_broker");
    let url = shared_url();
    let pool = pool_name("api");
    let mut w = Workers::new(&url, &pool);
    w.start(2);
    w.start(2);
    w.wait_live(2);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    assert_eq!(p.processes(), 4, "the live workers' processes");
    assert_eq!(p.apply(square, 12), Ok(144));
    let items: Vec<u64> = (0..2000).collect();
    let want: Vec<u64> = items.iter().map(|x| x * x).collect();
    assert_eq!(p.map(square, items.clone()).unwrap(), want);
    let got: Vec<u64> = p
        .imap(square, items.clone())
        .chunksize(7)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
    let mut unordered: Vec<(usize, u64)> = p
        .imap_unordered(square, items.clone())
        .chunksize(50)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    assert_eq!(
        unordered,
        want.iter().copied().enumerate().collect::<Vec<_>>()
    );
    assert_eq!(p.starmap(add, [(1, 2), (30, 40)]).unwrap(), [3, 70]);
    // A failing item fails alone, with its index.
    let r = p.map_results(checked, 10..16);
    assert!(
        matches!(&r[3], Err(TaskError::Panicked { message }) if message == "thirteen"),
        "{r:?}"
    );
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 5);
    let e = p.map(checked, 10..16).unwrap_err();
    assert_eq!(e.index, 3);
    // Callbacks, and tasks on the workers' processes, not here.
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = p.apply_async_then(square, 9, move |r| tx.send(r).unwrap());
    assert_eq!(rx.recv_timeout(common::DEADLINE).unwrap(), Ok(81));
    let pids: HashSet<u32> = p.map(pid_of, 0..40).unwrap().into_iter().collect();
    assert!(!pids.contains(&std::process::id()));
    assert!(pids.len() >= 2, "{pids:?}");
    let async_map = p.map_async(square, 0..100u64);
    assert_eq!(
        async_map.get().unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    p.close();
    p.join().unwrap();
}

/// The test's seed: `MP_SEED`, or the clock; printed, so that a failing run can be repeated.
fn seed(test: &str) -> u64 {
    let s = std::env::var("MP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {s} (MP_SEED={s} repeats it)");
    s
}

/// xorshift64*: the choices a seed makes.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A task that records each run of item `x` (one byte appended to `dir/x`), sleeps `ms`, and
/// returns `x * x`.
fn logged_square((dir, x, ms): (String, u64, u64)) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/{x}"))
        .unwrap();
    f.write_all(b".").unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// A directory for run logs, removed when dropped.
struct RunLog(std::path::PathBuf);

impl RunLog {
    fn new(test: &str) -> RunLog {
        let d = std::env::temp_dir().join(format!("mp-cluster-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        RunLog(d)
    }

    fn dir(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn runs(&self, x: u64) -> usize {
        std::fs::read(self.0.join(x.to_string())).map_or(0, |b| b.len())
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The history check: every item ended in exactly one outcome, each a value equal to `f(item)`
/// or a typed error allowed here; no phantom results; runs within the deliveries allowed.
fn check_history(
    items: &[u64],
    outcomes: &[(usize, Result<u64, TaskError>)],
    log: &RunLog,
    max_deliveries: usize,
    allowed_error: impl Fn(&TaskError) -> bool,
) {
    let mut seen: BTreeMap<usize, &Result<u64, TaskError>> = BTreeMap::new();
    for (i, r) in outcomes {
        assert!(*i < items.len(), "a phantom result for index {i}");
        assert!(seen.insert(*i, r).is_none(), "two outcomes for item {i}");
    }
    assert_eq!(seen.len(), items.len(), "items without an outcome");
    for (i, r) in seen {
        let x = items[i];
        match r {
            Ok(v) => assert_eq!(*v, x * x, "item {i}"),
            Err(e) => assert!(allowed_error(e), "item {i}: {e}"),
        }
        let runs = log.runs(x);
        assert!(runs <= max_deliveries, "item {i} ran {runs} times");
        if r.is_ok() {
            assert!(runs >= 1, "item {i} has a result but never ran");
        }
    }
}

#[test]
fn workers_killed_mid_task_have_their_tasks_run_elsewhere() {
    let _deadline = watchdog("workers_killed_mid_task_have_their_tasks_run_elsewhere");
    let mut rng = seed("sigkill");
    let url = shared_url();
    let pool = pool_name("sigkill");
    let log = RunLog::new("sigkill");
    let mut w = Workers::new(&url, &pool)
        .env(cluster::ENV_LEASE_MS, 500)
        .env(cluster::ENV_MAX_DELIVERIES, 3);
    let pids: Vec<u32> = (0..3).map(|_| w.start(1)).collect();
    w.wait_live(3);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let items: Vec<u64> = (0..24).collect();
    let args: Vec<(String, u64, u64)> = items.iter().map(|&x| (log.dir(), x, 60)).collect();
    let run = p.imap_unordered(logged_square, args).chunksize(1);
    // Two of the three workers are killed while they run tasks, at moments the seed picks.
    let victims = {
        let first = (next(&mut rng) % 3) as usize;
        [
            pids[first],
            pids[(first + 1 + (next(&mut rng) % 2) as usize) % 3],
        ]
    };
    let delays = [100 + next(&mut rng) % 200, 100 + next(&mut rng) % 200];
    let killer = {
        let url = url.clone();
        let pool = pool.clone();
        std::thread::spawn(move || {
            for (pid, ms) in victims.into_iter().zip(delays) {
                std::thread::sleep(Duration::from_millis(ms));
                // Killed while holding a task (its pending count says so).
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end {
                    let holds = cluster::status(&url, &pool)
                        .is_ok_and(|s| s.workers.iter().any(|w| w.pid == pid && w.pending > 0));
                    if holds {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        })
    };
    let outcomes: Vec<(usize, Result<u64, TaskError>)> = run.collect();
    killer.join().unwrap();
    check_history(&items, &outcomes, &log, 3, |_| false);
    let s = cluster::status(&url, &pool).unwrap();
    assert!(s.reclaimed >= 1, "{s:?}");
    assert_eq!(s.queued + s.in_flight, 0, "{s:?}");
}

/// A task that kills the worker process that took it (its local pool's parent).
fn kill_my_worker(_: u32) -> u32 {
    let parent = std::os::unix::process::parent_id();
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(parent.to_string())
        .status();
    std::thread::sleep(Duration::from_secs(5));
    0
}

#[test]
fn a_task_that_loses_every_worker_fails_as_worker_lost_after_the_most_deliveries() {
    let _deadline =
        watchdog("a_task_that_loses_every_worker_fails_as_worker_lost_after_the_most_deliveries");
    let url = shared_url();
    let pool = pool_name("lost");
    let mut w = Workers::new(&url, &pool)
        .env(cluster::ENV_LEASE_MS, 300)
        .env(cluster::ENV_MAX_DELIVERIES, 2);
    for _ in 0..3 {
        w.start(1);
    }
    w.wait_live(3);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let r = p
        .apply_async(kill_my_worker, 0)
        .get_timeout(common::DEADLINE);
    assert!(
        matches!(
            r,
            Err(multiprocess::ResultTimeoutError::Failed(
                TaskError::WorkerLost { deliveries: 2 }
            ))
        ),
        "{r:?}"
    );
    // Two deliveries killed two workers; the third answered for the task without running it.
    let alive = w
        .children
        .iter_mut()
        .filter_map(|c| c.try_wait().unwrap().is_none().then_some(()))
        .count();
    assert_eq!(alive, 1);
    let s = cluster::status(&url, &pool).unwrap();
    assert_eq!((s.lost, s.queued, s.in_flight), (1, 0, 0), "{s:?}");
    // The pool goes on with the worker left.
    assert_eq!(p.apply(square, 3), Ok(9));
}

#[test]
fn a_worker_paused_past_its_lease_runs_again_but_its_result_is_delivered_once() {
    let _deadline =
        watchdog("a_worker_paused_past_its_lease_runs_again_but_its_result_is_delivered_once");
    let mut rng = seed("sigstop");
    let url = shared_url();
    let pool = pool_name("sigstop");
    let log = RunLog::new("sigstop");
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_LEASE_MS, 400);
    let paused = w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let items: Vec<u64> = (0..6).collect();
    let args: Vec<(String, u64, u64)> = items.iter().map(|&x| (log.dir(), x, 150)).collect();
    let pending = p.map_async(logged_square, args);
    // The first worker takes tasks, then stops (its local process keeps running the one it has).
    assert!(common::eventually(|| items
        .iter()
        .any(|&x| log.runs(x) > 0)));
    w.signal(paused, "STOP");
    let second = w.start(1);
    assert!(common::eventually(|| cluster::status(&url, &pool)
        .is_ok_and(|s| s
            .workers
            .iter()
            .any(|w| w.pid == second && w.alive))));
    let pause = Duration::from_millis(1200 + next(&mut rng) % 600);
    std::thread::sleep(pause);
    w.signal(paused, "CONT");
    let results = pending.get_timeout(common::DEADLINE).unwrap();
    let outcomes: Vec<_> = results.into_iter().map(Ok).enumerate().collect();
    check_history(&items, &outcomes, &log, 3, |_| false);
    // The resumed worker answers what it ran: a duplicate, dropped (the map saw each once).
    assert!(common::eventually(
        || p.broker_stats().unwrap().duplicates >= 1
    ));
    assert!(items.iter().any(|&x| log.runs(x) == 2), "a task ran twice");
    assert_eq!(p.broker_stats().unwrap().outstanding, 0);
}

#[test]
fn a_caller_with_no_live_worker_gets_an_error_after_the_timeout() {
    let _deadline = watchdog("a_caller_with_no_live_worker_gets_an_error_after_the_timeout");
    let url = shared_url();
    let pool = pool_name("noworker");
    let _w = Workers::new(&url, &pool);
    let wait = Duration::from_millis(800);
    let p = Pool::builder()
        .broker(broker(&url, &pool).no_worker_timeout(wait))
        .build()
        .unwrap();
    let t = Instant::now();
    let r = p.apply_async(square, 2).get_timeout(common::DEADLINE);
    assert!(t.elapsed() >= wait);
    let r = r.map_err(|e| match e {
        multiprocess::ResultTimeoutError::Failed(e) => e,
        e => panic!("{e}"),
    });
    assert!(
        matches!(&r, Err(TaskError::NoWorkers(m)) if m.contains("no worker is alive")),
        "{r:?}"
    );
    // Withdrawn: nothing is left on the stream for a worker that comes later.
    let s = cluster::status(&url, &pool).unwrap();
    assert_eq!(s.queued + s.in_flight, 0, "{s:?}");
}

#[test]
fn a_worker_of_another_build_refuses_the_task_naming_both_builds() {
    let _deadline = watchdog("a_worker_of_another_build_refuses_the_task_naming_both_builds");
    let url = shared_url();
    let pool = pool_name("build");
    // A copy of this test binary whose build ID differs in one byte: the same code, another build.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mine = cluster::this_build();
    let id: Vec<u8> = (0..mine.len() / 2)
        .map(|i| u8::from_str_radix(&mine[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let at = exe
        .windows(id.len())
        .position(|w| w == id)
        .expect("the build ID is in the file");
    let mut other = exe.clone();
    other[at] ^= 0xff;
    let path = std::env::temp_dir().join(format!("mp-other-build-{}", std::process::id()));
    let _copy = RemoveOnDrop(path.clone());
    std::fs::write(&path, &other).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    drop((exe, other));
    let mut w = Workers::new(&url, &pool);
    let child = Command::new(&path)
        .env(cluster::ENV_WORKER, &pool)
        .env(cluster::ENV_BROKER, &url)
        .env(cluster::ENV_AUTHKEY, KEY)
        .env(cluster::ENV_PROCESSES, "1")
        .env(cluster::ENV_EXIT_ON_EOF, "1")
        .env(NOT_A_TEST_RUN, "1")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    w.children.push(child);
    w.wait_live(1);
    let _ = std::fs::remove_file(&path);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    match p.apply(square, 5) {
        Err(TaskError::Build { caller, worker }) => {
            assert_eq!(caller, mine);
            assert_ne!(worker, mine);
            assert_eq!(worker.len(), mine.len());
            let msg = TaskError::Build {
                caller: caller.clone(),
                worker: worker.clone(),
            }
            .to_string();
            assert!(msg.contains(&caller) && msg.contains(&worker), "{msg}");
        }
        r => panic!("{r:?}"),
    }
}

/// A file removed when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn size_of(v: Vec<u8>) -> (usize, u64) {
    (v.len(), v.iter().map(|&b| u64::from(b)).sum())
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_arguments_and_results_go_beside_the_stream() {
    let _deadline = watchdog("large_arguments_and_results_go_beside_the_stream");
    let url = shared_url();
    let pool = pool_name("blobs");
    let mut w = Workers::new(&url, &pool);
    w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let arg = big(3 << 20);
    let want = (arg.len(), arg.iter().map(|&b| u64::from(b)).sum());
    assert_eq!(p.apply(size_of, arg), Ok(want));
    let out = p.apply(big, 2 << 20).unwrap();
    assert_eq!(out, big(2 << 20));
    // Every payload key is gone once answered.
    let mut c = connect(&url);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("mp:{{{pool}}}:b:*"))
        .query(&mut c)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cancel_withdraws_a_task_not_taken_and_terminate_fails_the_rest() {
    let _deadline = watchdog("cancel_withdraws_a_task_not_taken_and_terminate_fails_the_rest");
    let url = shared_url();
    let pool = pool_name("cancel");
    let log = RunLog::new("cancel");
    let mut w = Workers::new(&url, &pool);
    w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    // The worker takes two at a time (twice its processes); the rest wait on the stream.
    let tasks: Vec<_> = (0..6)
        .map(|x| p.apply_async(logged_square, (log.dir(), x, 300)))
        .collect();
    assert!(common::eventually(|| log.runs(0) > 0));
    assert!(tasks[5].cancel());
    assert_eq!(tasks[5].get(), Err(TaskError::Cancelled));
    assert!(!tasks[5].cancel(), "cancelled once");
    assert_eq!(tasks[0].get(), Ok(0));
    p.terminate();
    for t in &tasks[1..5] {
        let r = t.get();
        assert!(matches!(r, Ok(_) | Err(TaskError::Terminated)), "{r:?}");
    }
    assert_eq!(log.runs(5), 0, "a cancelled task never ran");
    assert_eq!(p.apply(square, 1), Err(TaskError::Terminated));
    // Withdrawn from the stream: only what the worker had taken can still be there.
    let s = cluster::status(&url, &pool).unwrap();
    assert_eq!(s.queued, 0, "{s:?}");
}

/// A map across a broker that is killed with SIGKILL and restarted.
fn map_across_a_broker_restart(keep_data: bool) {
    let tag = if keep_data {
        "restart-data"
    } else {
        "restart-empty"
    };
    let mut rng = seed(tag);
    let mut server = RedisServer::start(tag, "always");
    let url = server.url();
    let pool = pool_name(tag);
    let log = RunLog::new(tag);
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_LEASE_MS, 1000);
    w.start(2);
    w.start(2);
    w.wait_live(2);
    let p = Pool::builder()
        .broker(broker(&url, &pool).no_worker_timeout(Duration::from_secs(30)))
        .build()
        .unwrap();
    // A second of work (16 tasks of 13 items of 20 ms on 4 processes, which hold at most 8 of
    // them): when the broker dies, at most 200 ms in, tasks are still waiting on its stream.
    let items: Vec<u64> = (0..200).collect();
    let args: Vec<(String, u64, u64)> = items.iter().map(|&x| (log.dir(), x, 20)).collect();
    let pending = p.map_async(logged_square, args);
    std::thread::sleep(Duration::from_millis(50 + next(&mut rng) % 150));
    server.kill9();
    std::thread::sleep(Duration::from_millis(300 + next(&mut rng) % 400));
    server.restart(keep_data);
    let results = pending.get_timeout(common::DEADLINE).unwrap();
    let outcomes: Vec<_> = results.into_iter().map(Ok).enumerate().collect();
    // Runs: a task the broker lost is run again, so more than the deliveries here; at most a few.
    check_history(&items, &outcomes, &log, 4, |_| false);
    let stats = p.broker_stats().unwrap();
    if !keep_data {
        assert!(stats.resent > 0, "{stats:?}");
    }
    assert_eq!(stats.outstanding, 0);
    // The workers survived it: the pool goes on.
    assert_eq!(
        p.map(square, 0..50).unwrap(),
        (0..50).map(|x| x * x).collect::<Vec<_>>()
    );
    drop(w);
}

#[test]
fn a_map_completes_across_a_broker_killed_and_restarted_with_its_data() {
    let _deadline = watchdog("a_map_completes_across_a_broker_killed_and_restarted_with_its_data");
    map_across_a_broker_restart(true);
}

#[test]
fn a_map_completes_across_a_broker_killed_and_restarted_without_its_data() {
    let _deadline =
        watchdog("a_map_completes_across_a_broker_killed_and_restarted_without_its_data");
    map_across_a_broker_restart(false);
}

// ---- Queue and JoinableQueue on the broker ----

use multiprocess::{GetError, GetTimeoutError, JoinableQueue, Queue, StartMethod, TryGetError};

fn queue_broker(url: &str, name: &str) -> Broker {
    Broker::redis(url, name).authkey(KEY)
}

/// Removes a queue's keys when dropped.
struct QueueKeys(String, String);

impl Drop for QueueKeys {
    fn drop(&mut self) {
        let mut c = connect(&self.0);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("mq:{{{}}}:*", self.1))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut c);
        }
    }
}

fn produce((q, from): (Queue<(u32, String)>, u32)) {
    for i in from..from + 50 {
        q.put((i, format!("item {i}"))).unwrap();
    }
}

fn consume_and_mark(q: JoinableQueue<u64>) -> u64 {
    let mut sum = 0;
    loop {
        let x = q.get().unwrap();
        q.task_done().unwrap();
        if x == u64::MAX {
            return sum;
        }
        sum += x;
    }
}

#[test]
fn a_queue_on_the_broker_carries_items_between_processes_under_every_start_method() {
    let _deadline =
        watchdog("a_queue_on_the_broker_carries_items_between_processes_under_every_start_method");
    let url = shared_url();
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ] {
        let name = pool_name(&format!("queue-{method:?}"));
        let _keys = QueueKeys(url.clone(), name.clone());
        let q: Queue<(u32, String)> = Queue::builder()
            .broker(queue_broker(&url, &name))
            .build()
            .unwrap();
        // Two producers, each a process that received the handle.
        let kids: Vec<_> = [0, 1000]
            .into_iter()
            .map(|from| common::start(method, produce, (q.clone(), from)))
            .collect();
        for k in kids {
            common::join(k).unwrap();
        }
        assert_eq!(q.len(), 100);
        let mut got: Vec<(u32, String)> = (0..100)
            .map(|_| q.get_timeout(common::DEADLINE).unwrap())
            .collect();
        assert!(q.is_empty());
        // Each producer's items in its order.
        let firsts: Vec<u32> = got.iter().map(|(i, _)| *i).filter(|i| *i < 1000).collect();
        assert_eq!(firsts, (0..50).collect::<Vec<_>>());
        got.sort();
        assert_eq!(got[99], (1049, "item 1049".into()));
        // JoinableQueue: a consumer process marks items done; join waits for them.
        let jq: JoinableQueue<u64> = Queue::builder()
            .broker(queue_broker(&url, &format!("{name}-j")))
            .build_joinable()
            .unwrap();
        let _jkeys = QueueKeys(url.clone(), format!("{name}-j"));
        let consumer = common::start(method, consume_and_mark, jq.clone());
        for x in 1..=100 {
            jq.put(x).unwrap();
        }
        jq.put(u64::MAX).unwrap();
        jq.join_timeout(common::DEADLINE).unwrap();
        assert_eq!(jq.unfinished(), 0);
        assert_eq!(common::join(consumer).unwrap(), 5050);
        assert!(jq.task_done().is_err(), "one too many");
    }
}

#[test]
fn a_broker_queue_keeps_its_bound_and_its_deadlines() {
    let _deadline = watchdog("a_broker_queue_keeps_its_bound_and_its_deadlines");
    let url = shared_url();
    let name = pool_name("queue-bound");
    let _keys = QueueKeys(url.clone(), name.clone());
    let q: Queue<u8> = Queue::builder()
        .maxsize(2)
        .broker(queue_broker(&url, &name))
        .build()
        .unwrap();
    assert_eq!(q.maxsize(), Some(2));
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(150)),
        Err(GetTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(150));
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(q.is_full());
    assert!(q.try_put(3).unwrap_err().is_full());
    let t = Instant::now();
    let e = q.put_timeout(3, Duration::from_millis(150)).unwrap_err();
    assert!(e.is_timeout() && t.elapsed() >= Duration::from_millis(150));
    // A second handle (another process would do the same) sees the bound the first one set.
    let other: Queue<u8> = Queue::builder()
        .broker(queue_broker(&url, &name))
        .build()
        .unwrap();
    assert_eq!(other.maxsize(), Some(2));
    assert_eq!(other.get().unwrap(), 1);
    q.put(3).unwrap();
    assert_eq!(q.try_iter().collect::<Result<Vec<_>, _>>().unwrap(), [2, 3]);
    // Another item type is refused.
    let wrong = Queue::<String>::builder()
        .broker(queue_broker(&url, &name))
        .build();
    assert!(wrong.unwrap_err().to_string().contains("another item type"));
}

#[test]
fn a_broker_queue_refuses_items_put_under_another_key_and_redelivers_orphans() {
    let _deadline =
        watchdog("a_broker_queue_refuses_items_put_under_another_key_and_redelivers_orphans");
    let url = shared_url();
    let name = pool_name("queue-key");
    let _keys = QueueKeys(url.clone(), name.clone());
    let q: Queue<u32> = Queue::builder()
        .broker(queue_broker(&url, &name).lease(Duration::from_millis(300)))
        .build()
        .unwrap();
    let stranger: Queue<u32> = Queue::builder()
        .broker(Broker::redis(&url, &name).authkey("another key"))
        .build()
        .unwrap();
    stranger.put(666).unwrap();
    q.put(7).unwrap();
    assert!(matches!(q.get(), Err(GetError::Decode(m)) if m.contains("authentication")));
    assert_eq!(q.get().unwrap(), 7, "the next item is unaffected");
    // A consumer that read an item and died before acknowledging it: the item is delivered again
    // once idle past the lease.
    q.put(8).unwrap();
    let mut c = connect(&url);
    let stream = format!("mq:{{{name}}}:q");
    let taken: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut c)
        .unwrap();
    assert!(!matches!(taken, redis::Value::Nil));
    let t = Instant::now();
    assert_eq!(q.get_timeout(common::DEADLINE).unwrap(), 8);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert!(q.is_empty());
}

#[test]
fn a_broker_queue_survives_a_broker_killed_and_restarted_with_its_data() {
    let _deadline = watchdog("a_broker_queue_survives_a_broker_killed_and_restarted_with_its_data");
    let mut server = RedisServer::start("queue-restart", "always");
    let url = server.url();
    let q: Queue<u32> = Queue::builder()
        .broker(queue_broker(&url, "restart"))
        .build()
        .unwrap();
    for i in 0..10 {
        q.put(i).unwrap();
    }
    server.kill9();
    let getter = {
        let q = q.clone();
        std::thread::spawn(move || {
            (0..10)
                .map(|_| q.get_timeout(common::DEADLINE))
                .collect::<Vec<_>>()
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    server.restart(true);
    let got: Vec<u32> = getter
        .join()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    q.put(10).unwrap();
    assert_eq!(q.get().unwrap(), 10);
}

// ---- A worker cut off from the broker (a network namespace and an nft drop rule) ----

/// Runs a command, failing the test with its output if it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{} (this test needs root, iproute2 and nftables; .ci/run installs nftables)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to this one by a veth pair: 10.77.N.1 here, 10.77.N.2 there.
/// Removed (with its veth pair) when dropped.
struct Netns {
    name: String,
    here: String,
    there: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let n = id % 250 + 1;
        let ns = Netns {
            name: format!("mp-{id}"),
            here: format!("10.77.{n}.1"),
            there: format!("10.77.{n}.2"),
        };
        let (vh, vw) = (format!("vh{id}"), format!("vw{id}"));
        sh(&["ip", "netns", "add", &ns.name]);
        sh(&[
            "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vw,
        ]);
        sh(&["ip", "link", "set", &vw, "netns", &ns.name]);
        sh(&["ip", "addr", "add", &format!("{}/30", ns.here), "dev", &vh]);
        sh(&["ip", "link", "set", &vh, "up"]);
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns.name];
            v.extend_from_slice(args);
            sh(&v);
        };
        inside(&["ip", "addr", "add", &format!("{}/30", ns.there), "dev", &vw]);
        inside(&["ip", "link", "set", &vw, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Drops every packet between the namespace and the broker's address (both ways).
    fn cut(&self) {
        let nft = |rule: &str| sh(&["ip", "netns", "exec", &self.name, "nft", rule]);
        nft("add table inet mpcut");
        nft("add chain inet mpcut out { type filter hook output priority 0 ; }");
        nft("add chain inet mpcut in { type filter hook input priority 0 ; }");
        nft(&format!(
            "add rule inet mpcut out ip daddr {} drop",
            self.here
        ));
        nft(&format!(
            "add rule inet mpcut in ip saddr {} drop",
            self.here
        ));
    }

    fn heal(&self) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "nft",
            "delete table inet mpcut",
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // (Gone with the namespace once its peer was moved there; not, if setting up failed
        // before that.)
        let _ = Command::new("ip")
            .args(["link", "del", &format!("vh{}", std::process::id())])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_worker_cut_off_from_the_broker_has_its_tasks_reclaimed_and_its_late_results_dropped() {
    let _deadline = watchdog(
        "a_worker_cut_off_from_the_broker_has_its_tasks_reclaimed_and_its_late_results_dropped",
    );
    let mut rng = seed("partition");
    let ns = Netns::new();
    let server = RedisServer::start_on("partition", "everysec", Some(&ns.here));
    let url = server.url();
    let pool = pool_name("partition");
    let log = RunLog::new("partition");
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_LEASE_MS, 600);
    // The worker in the namespace reaches the broker at the veth address.
    let cut_off = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::env::current_exe().unwrap())
        .env(cluster::ENV_WORKER, &pool)
        .env(
            cluster::ENV_BROKER,
            format!("redis://{}:{}/", ns.here, server.port()),
        )
        .env(cluster::ENV_AUTHKEY, KEY)
        .env(cluster::ENV_PROCESSES, "2")
        .env(cluster::ENV_LEASE_MS, "600")
        .env(cluster::ENV_EXIT_ON_EOF, "1")
        .env(NOT_A_TEST_RUN, "1")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let cut_pid = cut_off.id();
    w.children.push(cut_off);
    w.wait_live(1);
    w.start(1);
    w.wait_live(2);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let items: Vec<u64> = (0..16).collect();
    let args: Vec<(String, u64, u64)> = items.iter().map(|&x| (log.dir(), x, 200)).collect();
    let pending = p.map_async(logged_square, args);
    // Cut while the namespace's worker holds tasks.
    assert!(common::eventually(|| cluster::status(&url, &pool)
        .is_ok_and(|s| s
            .workers
            .iter()
            .any(|w| w.pid == cut_pid && w.pending > 0))));
    std::thread::sleep(Duration::from_millis(next(&mut rng) % 100));
    ns.cut();
    let results = pending.get_timeout(common::DEADLINE).unwrap();
    let outcomes: Vec<_> = results.into_iter().map(Ok).enumerate().collect();
    check_history(&items, &outcomes, &log, 3, |_| false);
    let s = cluster::status(&url, &pool).unwrap();
    assert!(s.reclaimed >= 1, "{s:?}");
    // Healed: the cut-off worker delivers what it ran; each is a duplicate, and dropped.
    ns.heal();
    assert!(common::eventually(
        || p.broker_stats().unwrap().duplicates >= 1
    ));
    assert_eq!(p.map(square, 0..20).unwrap().len(), 20);
    drop(w);
    drop(server);
}

#[test]
fn a_task_longer_than_its_lease_is_renewed_not_reclaimed() {
    let _deadline = watchdog("renewed");
    let url = shared_url();
    let pool = pool_name("renew");
    let log = RunLog::new("renew");
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_LEASE_MS, 300);
    w.start(1);
    w.start(1);
    w.wait_live(2);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    // Five leases long, on two healthy workers: renewed every third of the lease, never idle past
    // it, so never taken by the other worker.
    let tasks: Vec<_> = (0..2)
        .map(|x| p.apply_async(logged_square, (log.dir(), x, 1500)))
        .collect();
    for (x, t) in tasks.iter().enumerate() {
        assert_eq!(t.get_timeout(common::DEADLINE).unwrap(), (x * x) as u64);
    }
    assert_eq!((log.runs(0), log.runs(1)), (1, 1));
    let s = cluster::status(&url, &pool).unwrap();
    assert_eq!(s.reclaimed, 0, "{s:?}");
    assert_eq!(p.broker_stats().unwrap().duplicates, 0);
}

#[test]
fn a_worker_tied_to_its_stdin_ends_with_it_and_leaves_the_pool() {
    let _deadline = watchdog("stdin");
    let url = shared_url();
    let pool = pool_name("stdin");
    let mut w = Workers::new(&url, &pool);
    w.start(2);
    w.wait_live(1);
    let child = &mut w.children[0];
    drop(child.stdin.take());
    let end = Instant::now() + common::DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the worker did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.try_wait().unwrap().unwrap().success());
    // Its local pool's processes went with it.
    let pid = child.id() as i32;
    assert!(common::eventually(|| !std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                st.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    == Some(&pid.to_string())
            })
        })));
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_workers_task_timeout_fails_the_task_at_its_caller() {
    let _deadline = watchdog("timeout");
    let url = shared_url();
    let pool = pool_name("timeout");
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_TASK_TIMEOUT_MS, 200);
    w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let r = p.apply_async(sleep_ms, 5_000).get_timeout(common::DEADLINE);
    assert!(
        matches!(r, Err(multiprocess::ResultTimeoutError::Failed(TaskError::Timeout(t))) if t == Duration::from_millis(200)),
        "{r:?}"
    );
    // The worker replaced its local process and goes on.
    assert_eq!(
        p.apply_async(sleep_ms, 1).get_timeout(common::DEADLINE),
        Ok(1)
    );
}

// ---- What the review of this backend found ----

fn queue_len(q: Queue<u32>) -> usize {
    q.len()
}

#[test]
fn a_broker_queue_or_its_key_never_travels_through_the_broker() {
    let _deadline = watchdog("key-leak");
    let url = shared_url();
    let pool = pool_name("keyleak");
    let mut w = Workers::new(&url, &pool);
    w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let qname = pool_name("keyleak-q");
    let _qkeys = QueueKeys(url.clone(), qname.clone());
    let q: Queue<u32> = Queue::builder()
        .broker(Broker::redis(&url, &qname).authkey("the queue's secret"))
        .build()
        .unwrap();
    // As a task's argument: refused here, before anything is sent.
    let r = p
        .apply_async(queue_len, q.clone())
        .get_timeout(common::DEADLINE);
    assert!(
        matches!(&r, Err(multiprocess::ResultTimeoutError::Failed(TaskError::Encode(m))) if m.contains("in clear")),
        "{r:?}"
    );
    // As an item of another broker queue: refused too.
    let carrier: Queue<Queue<u32>> = Queue::builder()
        .broker(Broker::redis(&url, &format!("{qname}-c")).authkey(KEY))
        .build()
        .unwrap();
    let _ckeys = QueueKeys(url.clone(), format!("{qname}-c"));
    assert!(matches!(
        carrier.put(q.clone()),
        Err(multiprocess::PutError::Encode { .. })
    ));
    // Nothing on the broker holds the key.
    let mut c = connect(&url);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    for k in keys
        .iter()
        .filter(|k| k.contains(&pool) || k.contains(&qname))
    {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(k).query(&mut c).unwrap();
        let dump = dump.unwrap_or_default();
        assert!(
            !dump.windows(18).any(|w| w == b"the queue's secret"),
            "{k} holds the key"
        );
    }
}

#[test]
fn a_worker_with_another_key_leaves_tasks_alone_and_the_caller_is_told() {
    let _deadline = watchdog("wrong-key");
    let url = shared_url();
    let pool = pool_name("wrongkey");
    let mut w = Workers::new(&url, &pool).env(cluster::ENV_LEASE_MS, 300);
    // (The workers' key: the Workers' own env is the test KEY; this one overrides it.)
    w.env
        .push((cluster::ENV_AUTHKEY.into(), "not the callers' key".into()));
    w.start(1);
    w.wait_live(1);
    let wait = Duration::from_millis(1500);
    let p = Pool::builder()
        .broker(broker(&url, &pool).no_worker_timeout(wait))
        .build()
        .unwrap();
    let t = Instant::now();
    let r = p.apply_async(square, 3).get_timeout(common::DEADLINE);
    assert!(t.elapsed() >= wait);
    assert!(
        matches!(&r, Err(multiprocess::ResultTimeoutError::Failed(TaskError::NoWorkers(m))) if m.contains("another pool key")),
        "{r:?}"
    );
    // A worker with the right key joins: the pool works (what the other left alone was not lost).
    let mut right = Workers::new(&url, &pool);
    right.start(1);
    assert!(common::eventually(|| cluster::status(&url, &pool)
        .is_ok_and(
            |s| s.workers.iter().filter(|w| w.alive).count() >= 2
        )));
    assert_eq!(
        p.apply_async(square, 4).get_timeout(common::DEADLINE),
        Ok(16)
    );
}

/// Writes to a pipe whose reading end is closed; what the write said.
fn write_to_closed_pipe(_: u32) -> String {
    let (r, mut wr) = std::io::pipe().unwrap();
    drop(r);
    format!(
        "{:?}",
        std::io::Write::write_all(&mut wr, b"x").map_err(|e| e.kind())
    )
}

#[test]
fn a_task_writing_to_a_closed_pipe_gets_an_error_not_sigpipe() {
    let _deadline = watchdog("sigpipe");
    let url = shared_url();
    let pool = pool_name("sigpipe");
    let mut w = Workers::new(&url, &pool);
    w.start(1);
    w.wait_live(1);
    let p = Pool::builder().broker(broker(&url, &pool)).build().unwrap();
    let r = p
        .apply_async(write_to_closed_pipe, 0)
        .get_timeout(common::DEADLINE);
    assert_eq!(r, Ok("Err(BrokenPipe)".to_string()));
}
