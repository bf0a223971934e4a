//! Group `pool`: `Pool` against Python's `multiprocessing.Pool`, both with two workers started by
//! `fork` unless a figure says otherwise.
//!
//! Figures (medians):
//! - `pool(2) map, default chunks` (M items/s): `map` of a trivial function (`u64 -> u64`) over
//!   100 000 items (quick: 20 000), the chunk size Python's rule gives. DESIGN.md: ≥ 3× Python.
//! - `pool(2) map, chunksize 1` (M items/s): the same with one item per task (10 000 items; quick:
//!   2 000). DESIGN.md: ≥ 10× Python.
//! - `pool(2) imap_unordered, chunksize 1` (M items/s): as above through `imap_unordered`.
//! - `pool apply round trip` (µs): one `apply` of the trivial function at a time. DESIGN.md: ≤ 25 µs
//!   and ≥ 5× Python.
//! - `Pool(2) start + close + join` (ms): a pool of two fork workers started, closed and joined.
//!   DESIGN.md: ≤ 3 ms.
//! - `pool CPU-bound 1 ms tasks, 1 worker` / `2 workers` (ms per task): `map` over tasks that each
//!   spin 1 ms (1 000 tasks; quick: 200), and `rayon 2 threads, same tasks` beside them; the ratio
//!   rows give the speed-up on 2 cores and the pool's overhead over rayon (target: within 5 %).
//! - `pool: worker SIGKILL to a task run by its replacement` (ms): a pool of one worker whose worker
//!   is killed; then one `apply`, which the replacement runs.

use multiprocess::{Pool, StartMethod};
use rayon::prelude::*;
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::measure::Plan;
use crate::table::{Row, Table, Target, Unit};

pub(crate) fn ident(x: u64) -> u64 {
    x
}

/// Spins for `us` microseconds of wall time (the same work on every side: time, not iterations).
pub(crate) fn spin_us(us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(us);
    let mut x = us;
    while Instant::now() < end {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
    us
}

pub(crate) fn fork_pool(n: usize) -> Result<Pool, String> {
    Pool::builder()
        .processes(n)
        .start_method(StartMethod::Fork)
        .build()
        .map_err(|e| format!("pool start failed: {e}"))
}

/// `map` of `ident` over a batch of `ops` items, `chunksize` items per task (`None`: Python's rule).
fn map_figure(plan: Plan, chunksize: Option<usize>) -> Result<f64, String> {
    let pool = fork_pool(2)?;
    plan.run(|ops| {
        let got: Vec<u64> = match chunksize {
            None => pool.map(ident, 0..ops as u64).map_err(|e| e.to_string())?,
            Some(c) => pool
                .imap(ident, 0..ops as u64)
                .chunksize(c)
                .in_flight(64)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        check_len(got.len(), ops)
    })
}

pub(crate) fn check_len(got: usize, want: usize) -> Result<(), String> {
    (got == want)
        .then_some(())
        .ok_or_else(|| format!("{got} results for {want} items"))
}

fn imap_unordered_figure(plan: Plan) -> Result<f64, String> {
    let pool = fork_pool(2)?;
    plan.run(|ops| {
        let mut n = 0;
        for (_, r) in pool.imap_unordered(ident, 0..ops as u64).in_flight(64) {
            r.map_err(|e| e.to_string())?;
            n += 1;
        }
        check_len(n, ops)
    })
}

fn apply_figure(plan: Plan) -> Result<f64, String> {
    let pool = fork_pool(2)?;
    plan.run(|ops| {
        for i in 0..ops as u64 {
            if pool.apply(ident, i).map_err(|e| e.to_string())? != i {
                return Err("a wrong result".to_string());
            }
        }
        Ok(())
    })
}

fn start_figure(plan: Plan) -> Result<f64, String> {
    plan.run(|ops| {
        for _ in 0..ops {
            let pool = fork_pool(2)?;
            pool.close();
            pool.join().map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })
}

fn cpu_figure(plan: Plan, workers: usize) -> Result<f64, String> {
    let pool = fork_pool(workers)?;
    plan.run(|ops| {
        let got = pool
            .map(spin_us, std::iter::repeat_n(1000, ops))
            .map_err(|e| e.to_string())?;
        check_len(got.len(), ops)
    })
}

fn rayon_figure(plan: Plan) -> Result<f64, String> {
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .map_err(|e| e.to_string())?;
    plan.run(|ops| {
        let got: Vec<u64> =
            threads.install(|| (0..ops).into_par_iter().map(|_| spin_us(1000)).collect());
        check_len(got.len(), ops)
    })
}

fn respawn_figure(plan: Plan) -> Result<f64, String> {
    let pool = fork_pool(1)?;
    plan.run(|ops| {
        for _ in 0..ops {
            let pid = *pool.worker_pids().first().ok_or("no worker")?;
            // Wait for the worker to be up (its predecessor's replacement) before the clock runs
            // again: the first apply below is timed from the kill.
            pool.apply(ident, 0).map_err(|e| e.to_string())?;
            let pid = rustix::process::Pid::from_raw(pid).ok_or("bad pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                .map_err(|e| e.to_string())?;
            pool.apply(ident, 1).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })
}

pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let items = Unit::MegaItemsPerSec;
    let big = Plan {
        warmup: 1,
        samples: ctx.pick(5, 11),
        ops: ctx.pick(20_000, 100_000),
    };
    let py = |figure: &str, extra: &[&str], plan: Plan, unit: Unit| {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ctx.python.measure(figure, &extra, plan, unit)
    };
    table.push(Row::compare(
        "pool(2) map, default chunks",
        items,
        map_figure(big, None),
        py("pool-map", &[], big, items),
    ));
    let one = Plan {
        warmup: 1,
        samples: ctx.pick(5, 11),
        ops: ctx.pick(2_000, 10_000),
    };
    table.push(Row::compare(
        "pool(2) map, chunksize 1",
        items,
        map_figure(one, Some(1)),
        py("pool-map", &["--chunksize", "1"], one, items),
    ));
    table.push(Row::compare(
        "pool(2) imap_unordered, chunksize 1",
        items,
        imap_unordered_figure(one),
        py("pool-imap-unordered", &[], one, items),
    ));
    let rt = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: ctx.pick(200, 1_000),
    };
    table.push(
        Row::compare(
            "pool apply round trip",
            Unit::Micros,
            apply_figure(rt),
            py("pool-apply", &[], rt, Unit::Micros),
        )
        .target(Target::AtMost(25.0)),
    );
    let start = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: 1,
    };
    table.push(
        Row::compare(
            "Pool(2) start + close + join",
            Unit::Millis,
            start_figure(start),
            py("pool-start", &[], start, Unit::Millis),
        )
        .target(Target::AtMost(3.0)),
    );
    let cpu = Plan {
        warmup: 0,
        samples: ctx.pick(3, 5),
        ops: ctx.pick(200, 1_000),
    };
    let one_worker = Row::compare(
        "pool CPU-bound 1 ms tasks, 1 worker",
        Unit::Millis,
        cpu_figure(cpu, 1),
        py("pool-cpu", &["--workers", "1"], cpu, Unit::Millis),
    );
    let two_workers = Row::compare(
        "pool CPU-bound 1 ms tasks, 2 workers",
        Unit::Millis,
        cpu_figure(cpu, 2),
        py("pool-cpu", &["--workers", "2"], cpu, Unit::Millis),
    );
    let rayon = Row::baseline(
        "rayon 2 threads, same tasks",
        Unit::Millis,
        rayon_figure(cpu),
    );
    let speedup = Row::ratio_each("pool speed-up, 2 workers over 1", &one_worker, &two_workers);
    let overhead = Row::ratio("pool(2) / rayon(2)", &two_workers, &two_workers, &rayon)
        .target(Target::AtMost(1.05));
    table.push(one_worker);
    table.push(two_workers);
    table.push(rayon);
    table.push(speedup);
    table.push(overhead);
    let respawn = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: 1,
    };
    table.push(Row::compare(
        "pool: worker SIGKILL to a task run by its replacement",
        Unit::Millis,
        respawn_figure(respawn),
        py("pool-respawn", &[], respawn, Unit::Millis),
    ));
}
