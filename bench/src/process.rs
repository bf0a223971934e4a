//! Group `process`: what it costs to start a child that runs an empty function and join it.
//!
//! Figures (ms per start + join, median):
//! - `process start+join <method>` for `fork`, `forkserver` and `spawn`: `multiprocess`'s
//!   `Process::builder().start_method(m).spawn(empty, ())?.join()` against Python's
//!   `get_context(m).Process(target=f).start(); .join()`. The fork server is started before timing on
//!   both sides (`multiprocess::init()`; Python starts one process first).
//! - `raw fork+waitpid`: `fork()` of a child that `_exit(0)`s at once, then `waitpid()`: the floor,
//!   measured in alternation with `multiprocess`'s fork figure.
//! - `fork / raw fork ratio`: `multiprocess`'s fork figure over that floor (DESIGN.md: ≤ 1.3; the python
//!   column shows Python's fork over the same floor).
//!
//! DESIGN.md also sets forkserver ≤ 1.5 ms and spawn ≤ 2 ms.

use multiprocess::{Process, StartMethod};

use crate::Ctx;
use crate::measure::Plan;
use crate::raw;
use crate::table::{Row, Table, Target, Unit};

/// The child's function: nothing, so that only the start and the join are measured.
fn empty(_: ()) {}

/// One start + join of `empty` with `method`.
fn start_join(method: StartMethod) -> Result<(), String> {
    Process::builder()
        .start_method(method)
        .spawn(empty, ())
        .map_err(|e| format!("start failed: {e}"))?
        .join()
        .map_err(|e| format!("join failed: {e}"))
}

/// The sampling plan for a start method (both sides).
fn plan(ctx: &Ctx, method: StartMethod) -> Plan {
    let samples = match method {
        StartMethod::Fork => ctx.pick(40, 200),
        StartMethod::ForkServer => ctx.pick(30, 150),
        StartMethod::Spawn => ctx.pick(12, 50),
    };
    Plan {
        warmup: 2,
        samples,
        ops: 1,
    }
}

/// `process start+join <method>` on both sides, from our median.
fn method_row(ctx: &Ctx, method: StartMethod, ours: Result<f64, String>) -> Row {
    let unit = Unit::Millis;
    let method_arg = ["--method".to_string(), method.name().to_string()];
    let python = ctx
        .python
        .measure("process", &method_arg, plan(ctx, method), unit);
    Row::compare(
        format!("process start+join {}", method.name()),
        unit,
        ours,
        python,
    )
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    // Fork and its floor alternate sample by sample, so that their ratio compares like with like.
    let (fork, floor) = plan(ctx, StartMethod::Fork)
        .run_alternating(|_| start_join(StartMethod::Fork), |_| raw::fork_exit_wait());
    let fork = method_row(ctx, StartMethod::Fork, fork);
    let floor = Row::baseline("raw fork+waitpid", Unit::Millis, floor);
    let ratio =
        Row::ratio("fork / raw fork ratio", &fork, &fork, &floor).target(Target::AtMost(1.3));
    table.push(fork);

    let forkserver = multiprocess::init()
        .map_err(|e| format!("cannot start the fork server: {e}"))
        .and_then(|()| {
            plan(ctx, StartMethod::ForkServer).run(|_| start_join(StartMethod::ForkServer))
        });
    table.push(method_row(ctx, StartMethod::ForkServer, forkserver).target(Target::AtMost(1.5)));

    let spawn = plan(ctx, StartMethod::Spawn).run(|_| start_join(StartMethod::Spawn));
    table.push(method_row(ctx, StartMethod::Spawn, spawn).target(Target::AtMost(2.0)));

    table.push(floor);
    table.push(ratio);
}
