//! Group `cluster`: a `Pool` on a broker (feature `cluster`, Redis Streams) against the local `Pool`
//! and against Python's Celery with the same Redis as its broker and result backend.
//!
//! The group starts its own `redis-server` (on 127.0.0.1 at a free port, in a temporary directory,
//! `--save '' --appendonly yes --appendfsync everysec`, as `.ci/with-redis` does) and its own
//! workers: this executable started with `MULTIPROCESS_WORKER` and friends, which makes it a
//! worker before `main`. Both are stopped, by pid, when the group ends. Without `redis-server` the
//! group's rows read `error` (and the python column `n/a`), said loudly on stderr.
//!
//! Figures (medians):
//! - `cluster apply round trip, 1 worker` (ms): one `apply` of a trivial function at a time, one
//!   worker process running a local pool of 1 process. DESIGN.md: ≤ 1 ms. Celery:
//!   `ident.delay(i).get()`, one worker `--pool=prefork --concurrency=1`.
//! - `cluster(2) map trivial, chunksize C` and `pool(2) map trivial, chunksize C` (M items/s), for
//!   C = 100 and 1 000: `imap(ident, 0..n).chunksize(C)` over 100 000 items (quick: 20 000) with
//!   two worker processes of 1 local process each, and on a local `Pool` of 2 fork workers, sampled
//!   in alternation. Celery: `ident.chunks(zip(range(n)), C).group()` on two workers of
//!   concurrency 1; Python's local figure: `multiprocessing.Pool(2).map(ident, range(n), C)`.
//! - `cluster(2) / pool(2) throughput, chunksize C`: the cluster's figure over the local pool's.
//!   DESIGN.md: ≥ 0.5 at chunk sizes ≥ 100.
//! - `cluster(2) CPU-bound 5 ms tasks` and `pool(2) CPU-bound 5 ms tasks` (ms per task): tasks
//!   that each spin 5 ms of wall time, one per task (400; quick: 100), sampled in alternation, and
//!   their ratio. Celery: a `group` of as many `spin_us.s(5000)` tasks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiprocess::Pool;
use multiprocess::cluster::{self, Broker};

use crate::Ctx;
use crate::measure::Plan;
use crate::pool::{check_len, fork_pool, ident, spin_us};
use crate::python::Python;
use crate::raw;
use crate::table::{Cell, Row, Table, Target, Unit};

/// The key the harness's callers and workers share.
const AUTHKEY: &str = "multiprocess-bench cluster";
/// How long a server or a worker may take to come up.
const STARTUP: Duration = Duration::from_secs(30);
/// The CPU-bound tasks' spin (µs).
const SPIN_US: u64 = 5_000;

/// The harness's own `redis-server`: a child process, stopped (SIGTERM, then SIGKILL) and its
/// directory removed when dropped.
struct Redis {
    url: String,
    dir: PathBuf,
    child: Child,
}

impl Redis {
    fn start() -> Result<Redis, String> {
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // A free port: bound by the kernel for a moment, then handed to the server.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        let log = dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        raw::kill_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    "redis-server is not installed (Debian: apt-get install redis-server)"
                        .to_string()
                } else {
                    format!("redis-server did not start: {e}")
                });
            }
        };
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}/"),
            dir,
            child,
        };
        let end = Instant::now() + STARTUP;
        loop {
            if ping(port) {
                return Ok(redis);
            }
            let exited = redis.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > end {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                return Err(format!(
                    "redis-server on port {port} did not come up ({}): {}",
                    exited.map_or_else(|| "no PONG".to_string(), |s| s.to_string()),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The server's directory: this prefix and the harness's pid, in the temporary directory.
const DIR_PREFIX: &str = "mp-bench-redis-";

/// Removes the directories of servers whose harness is gone (one killed by a signal cannot remove
/// its own).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a Redis server answers `PING` on 127.0.0.1:`port`.
fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n] == *b"+PONG\r\n")
}

impl Drop for Redis {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid
            && self.child.try_wait().ok().flatten().is_none()
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let end = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Worker processes of the harness's pool: this executable in worker mode. Killed (SIGKILL) and
/// reaped when dropped; their local pools' processes go with them (each holds a lifeline to its
/// worker).
struct Workers<'a> {
    url: &'a str,
    pool: String,
    children: Vec<Child>,
}

impl<'a> Workers<'a> {
    fn new(url: &'a str) -> Workers<'a> {
        Workers {
            url,
            pool: format!("bench-{}", std::process::id()),
            children: Vec::new(),
        }
    }

    /// Starts one more worker with `processes` local processes, and waits until all the workers
    /// started so far are live.
    fn add(&mut self, processes: usize) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.env(cluster::ENV_WORKER, &self.pool)
            .env(cluster::ENV_BROKER, self.url)
            .env(cluster::ENV_AUTHKEY, AUTHKEY)
            .env(cluster::ENV_PROCESSES, processes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        raw::kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("a worker did not start: {e}"))?;
        self.children.push(child);
        self.wait_live(self.children.len())
    }

    fn wait_live(&mut self, n: usize) -> Result<(), String> {
        let end = Instant::now() + STARTUP;
        loop {
            let live = cluster::status(self.url, &self.pool)
                .map(|s| s.workers.iter().filter(|w| w.alive).count())
                .unwrap_or(0);
            if live >= n {
                return Ok(());
            }
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("worker {} exited ({status})", c.id()));
                }
            }
            if Instant::now() > end {
                return Err(format!("{n} workers were not live after {STARTUP:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A caller of the pool (its `processes()` are the live workers' processes).
    fn caller(&self) -> Result<Pool, String> {
        Pool::builder()
            .broker(Broker::redis(self.url, &self.pool).authkey(AUTHKEY))
            .build()
            .map_err(|e| format!("the broker pool did not start: {e}"))
    }
}

impl Drop for Workers<'_> {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn apply_batch(pool: &Pool, ops: usize) -> Result<(), String> {
    for i in 0..ops as u64 {
        if pool.apply(ident, i).map_err(|e| e.to_string())? != i {
            return Err("a wrong result".to_string());
        }
    }
    Ok(())
}

/// `imap(ident, 0..ops).chunksize(chunk)`, collected, on either kind of pool (default window).
fn map_batch(pool: &Pool, ops: usize, chunk: usize) -> Result<(), String> {
    let got: Vec<u64> = pool
        .imap(ident, 0..ops as u64)
        .chunksize(chunk)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    check_len(got.len(), ops)
}

/// `ops` tasks of `SPIN_US` of spinning, one per task.
fn cpu_batch(pool: &Pool, ops: usize) -> Result<(), String> {
    let got: Vec<u64> = pool
        .imap(spin_us, std::iter::repeat_n(SPIN_US, ops))
        .chunksize(1)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    check_len(got.len(), ops)
}

/// The cluster's and the local pool's figure of one shape, sampled in alternation.
fn pair(
    cluster: &Result<Pool, String>,
    local: &Result<Pool, String>,
    plan: Plan,
    batch: impl Fn(&Pool, usize) -> Result<(), String>,
) -> (Result<f64, String>, Result<f64, String>) {
    match (cluster, local) {
        (Ok(c), Ok(l)) => plan.run_alternating(|ops| batch(c, ops), |ops| batch(l, ops)),
        (c, l) => (
            c.as_ref()
                .map_err(Clone::clone)
                .and_then(|c| plan.run(|ops| batch(c, ops))),
            l.as_ref()
                .map_err(Clone::clone)
                .and_then(|l| plan.run(|ops| batch(l, ops))),
        ),
    }
}

pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let started = Instant::now();
    let redis = Redis::start();
    let celery = match &redis {
        Ok(r) => {
            eprintln!("cluster: redis-server at {}", r.url);
            let celery = Python::celery();
            eprintln!("cluster: celery side: {}", celery.describe());
            Some(celery)
        }
        Err(e) => {
            eprintln!("WARNING: ==========================================================");
            eprintln!("WARNING: group cluster cannot run: {e}");
            eprintln!("WARNING: its rows read error (multiprocess) and n/a (python)");
            eprintln!("WARNING: ==========================================================");
            None
        }
    };
    let url = redis.as_ref().map(|r| r.url.clone()).unwrap_or_default();
    let mut workers = Workers::new(&url);
    let celery_py = |figure: &str, extra: &[&str], plan: Plan, unit: Unit| -> Cell {
        let Some(celery) = &celery else {
            return Cell::Unavailable(None);
        };
        let mut args = vec!["--redis".to_string(), url.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        celery.measure(figure, &args, plan, unit)
    };
    let mp_py = |figure: &str, extra: &[&str], plan: Plan, unit: Unit| -> Cell {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ctx.python.measure(figure, &extra, plan, unit)
    };

    // One worker of one process: the round trip.
    let one = match &redis {
        Ok(_) => workers.add(1),
        Err(e) => Err(e.clone()),
    };
    let rt = Plan {
        warmup: 1,
        samples: ctx.pick(9, 21),
        ops: ctx.pick(100, 500),
    };
    let apply = one
        .clone()
        .and_then(|()| workers.caller())
        .and_then(|pool| rt.run(|ops| apply_batch(&pool, ops)));
    table.push(
        Row::compare(
            "cluster apply round trip, 1 worker",
            Unit::Millis,
            apply,
            celery_py("celery-apply", &[], rt, Unit::Millis),
        )
        .target(Target::AtMost(1.0)),
    );

    // Two workers of one process each, beside a local pool of two.
    let caller = one
        .and_then(|()| workers.add(1))
        .and_then(|()| workers.caller());
    let local = fork_pool(2);
    let items = Unit::MegaItemsPerSec;
    let map = Plan {
        warmup: 1,
        samples: ctx.pick(5, 11),
        ops: ctx.pick(20_000, 100_000),
    };
    for chunk in [100, 1000] {
        let c = chunk.to_string();
        let (ours, theirs) = pair(&caller, &local, map, |p, ops| map_batch(p, ops, chunk));
        let cluster_row = Row::compare(
            format!("cluster(2) map trivial, chunksize {chunk}"),
            items,
            ours,
            celery_py("celery-map", &["--chunksize", &c], map, items),
        );
        let local_row = Row::compare(
            format!("pool(2) map trivial, chunksize {chunk}"),
            items,
            theirs,
            mp_py("pool-map", &["--chunksize", &c], map, items),
        );
        let ratio = Row::ratio_each(
            format!("cluster(2) / pool(2) throughput, chunksize {chunk}"),
            &cluster_row,
            &local_row,
        )
        .target(Target::AtLeast(0.5));
        table.push(cluster_row);
        table.push(local_row);
        table.push(ratio);
    }
    let cpu = Plan {
        warmup: 1,
        samples: ctx.pick(3, 5),
        ops: ctx.pick(100, 400),
    };
    let spin = SPIN_US.to_string();
    let (ours, theirs) = pair(&caller, &local, cpu, cpu_batch);
    let cluster_row = Row::compare(
        "cluster(2) CPU-bound 5 ms tasks",
        Unit::Millis,
        ours,
        celery_py("celery-cpu", &["--spin-us", &spin], cpu, Unit::Millis),
    );
    let local_row = Row::compare(
        "pool(2) CPU-bound 5 ms tasks",
        Unit::Millis,
        theirs,
        mp_py(
            "pool-cpu",
            &["--workers", "2", "--spin-us", &spin, "--chunksize", "1"],
            cpu,
            Unit::Millis,
        ),
    );
    let ratio = Row::ratio_each(
        "cluster(2) / pool(2) time, CPU-bound 5 ms tasks",
        &cluster_row,
        &local_row,
    );
    table.push(cluster_row);
    table.push(local_row);
    table.push(ratio);
    drop(caller);
    drop(local);
    drop(workers);
    drop(redis);
    eprintln!(
        "cluster: group done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
