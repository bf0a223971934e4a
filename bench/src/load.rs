//! Group `load`: round trips and short timeouts while every CPU is busy.
//!
//! One CPU burner per CPU this process may use (a forked child spinning without system calls) runs
//! for the whole group, Python's side included, and nothing is pinned: this is the oversubscribed
//! machine on which an adaptive spin must not cost more than a plain blocking wait. Medians:
//! - `busy CPUs: pipe round trip 8 B`, `queue put→get round trip`, `event ping-pong round trip`
//!   (µs): the shapes of groups `pipe`, `queue` and `sync`, unpinned. Python: the same figures of
//!   `bench_mp.py`, without `--cpus`.
//! - `busy CPUs: raw socketpair round trip 8 B` (µs): the blocking floor, measured beside them.
//! - `busy CPUs: Event wait_timeout(1 ms)`, `Lock lock_timeout(1 ms)` (held), `Queue get_timeout(1 ms)`
//!   (empty), `Event wait_timeout(0)` (ms): one wait that times out per operation. Python:
//!   `Event.wait(0.001)`, `Lock.acquire(timeout=0.001)`, `Queue.get(timeout=0.001)`, `Event.wait(0)`.
//!   Target: within 2 ms of the duration (≤ 3 ms, and ≤ 2 ms for the zero timeout).
//! - `busy CPUs: std Condvar wait_timeout(1 ms)` (ms): a thread-only timed wait, for scale.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use multiprocess::{Event, Lock, Queue};

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::table::{Row, Table, Target, Unit};
use crate::{pipe, queue, raw, sync};

const TIMEOUT: Duration = Duration::from_millis(1);

/// Times `wait` (one wait that times out) per operation, checking that each waited at least `at_least`
/// and timed out.
fn timed_out(
    plan: Plan,
    at_least: Duration,
    mut wait: impl FnMut() -> bool,
) -> Result<f64, String> {
    plan.run(|ops| {
        for _ in 0..ops {
            let t = Instant::now();
            if wait() {
                return Err("the wait did not time out".to_string());
            }
            if t.elapsed() < at_least {
                return Err(format!(
                    "a {at_least:?} wait returned after {:?}",
                    t.elapsed()
                ));
            }
        }
        Ok(())
    })
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let cpus = raw::allowed_cpus().map(|c| c.len()).unwrap_or(2).max(1);
    let burners: Result<Vec<_>, _> = (0..cpus).map(|_| raw::spawn_burner()).collect();
    let burners = match burners {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot start the CPU burners: {e}");
            return;
        }
    };
    eprintln!("   {cpus} CPU burner(s) running");
    let pin = Pinning::none();
    let rt_plan = Plan {
        warmup: 1,
        samples: ctx.pick(9, 25),
        ops: ctx.pick(50, 200),
    };
    let py = |figure: &str, extra: &[String], plan: Plan, unit: Unit| {
        ctx.python.measure(figure, extra, plan, unit)
    };
    let floor = Row::baseline(
        "busy CPUs: raw socketpair round trip 8 B",
        Unit::Micros,
        pipe::raw_round_trip(&pin, rt_plan),
    );
    table.push(Row::compare(
        "busy CPUs: pipe round trip 8 B",
        Unit::Micros,
        pipe::round_trip(&pin, rt_plan),
        py("pipe-rt", &[], rt_plan, Unit::Micros),
    ));
    table.push(Row::compare(
        "busy CPUs: queue put→get round trip",
        Unit::Micros,
        queue::round_trip(&pin, rt_plan),
        py("queue-rt", &[], rt_plan, Unit::Micros),
    ));
    table.push(Row::compare(
        "busy CPUs: event ping-pong round trip",
        Unit::Micros,
        sync::ping_pong(&pin, rt_plan),
        py("event-rt", &[], rt_plan, Unit::Micros),
    ));
    table.push(floor);

    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(31, 101),
        ops: 1,
    };
    let ms = |d: Duration| vec!["--timeout-ms".to_string(), d.as_millis().to_string()];
    let event = Event::new().map_err(|e| format!("Event::new failed: {e}"));
    let ours = event
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|e| timed_out(plan, TIMEOUT, || e.wait_timeout(TIMEOUT).is_ok()));
    table.push(
        Row::compare(
            "busy CPUs: Event wait_timeout(1 ms)",
            Unit::Millis,
            ours,
            py("event-timeout", &ms(TIMEOUT), plan, Unit::Millis),
        )
        .target(Target::AtMost(3.0)),
    );
    let ours = event.as_ref().map_err(Clone::clone).and_then(|e| {
        timed_out(plan, Duration::ZERO, || {
            e.wait_timeout(Duration::ZERO).is_ok()
        })
    });
    table.push(
        Row::compare(
            "busy CPUs: Event wait_timeout(0)",
            Unit::Millis,
            ours,
            py("event-timeout", &ms(Duration::ZERO), plan, Unit::Millis),
        )
        .target(Target::AtMost(2.0)),
    );
    let ours = Lock::new()
        .map_err(|e| format!("Lock::new failed: {e}"))
        .and_then(|lock| {
            let _held = lock.lock();
            timed_out(plan, TIMEOUT, || lock.lock_timeout(TIMEOUT).is_ok())
        });
    table.push(
        Row::compare(
            "busy CPUs: Lock lock_timeout(1 ms)",
            Unit::Millis,
            ours,
            py("lock-timeout", &ms(TIMEOUT), plan, Unit::Millis),
        )
        .target(Target::AtMost(3.0)),
    );
    let ours = Queue::<u64>::new()
        .map_err(|e| format!("Queue::new failed: {e}"))
        .and_then(|q| timed_out(plan, TIMEOUT, || q.get_timeout(TIMEOUT).is_ok()));
    table.push(
        Row::compare(
            "busy CPUs: Queue get_timeout(1 ms)",
            Unit::Millis,
            ours,
            py("queue-timeout", &ms(TIMEOUT), plan, Unit::Millis),
        )
        .target(Target::AtMost(3.0)),
    );
    let pair = (Mutex::new(()), Condvar::new());
    let ours = timed_out(plan, TIMEOUT, || {
        let g = pair.0.lock().unwrap_or_else(|p| p.into_inner());
        let (_g, r) = pair
            .1
            .wait_timeout(g, TIMEOUT)
            .unwrap_or_else(|p| p.into_inner());
        !r.timed_out()
    });
    table.push(Row::baseline(
        "busy CPUs: std Condvar wait_timeout(1 ms)",
        Unit::Millis,
        ours,
    ));
    drop(burners);
}
