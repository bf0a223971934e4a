//! Group `sync`: `Lock`, `Value`, `Event`, `Barrier`, `SharedMemory` and `Array`.
//!
//! Figures (medians):
//! - `lock acquire+release uncontended` (M ops/s): `drop(lock.lock())` in a loop, one process. Python:
//!   `multiprocessing.Lock()` `acquire()` + `release()`. DESIGN.md: ≥ 75 M/s.
//! - `Value increment under its lock, 2 processes` (M ops/s): the parent and a forked child (on two
//!   CPUs, see [`Pinning`]) each add 1 to a `Value<u64>` half the batch's times, through its lock's
//!   guard; the figure is total increments / wall time, and the final count is checked. Python:
//!   `Value('q', 0)` with `with v.get_lock(): v.value += 1`. DESIGN.md: ≥ 10 M/s.
//! - `Value increment by atomic add, 2 processes` (M ops/s): the same with `fetch_add(1)` on a raw
//!   `Value<u64>`. Python has no atomic add; its column repeats its locked figure, the only way it has.
//!   DESIGN.md: ≥ 50 M/s.
//! - `event ping-pong round trip` (µs): the parent and a forked child (on two CPUs) hand a turn back
//!   and forth with two `Event`s: the parent sets `ping` and waits on `pong`, the child waits on
//!   `ping`, clears it and sets `pong`, the parent clears `pong`. Python: `multiprocessing.Event()`
//!   with the same calls. DESIGN.md: ≤ 5 µs.
//! - `barrier round, 2 processes` (µs): the parent and a forked child (on two CPUs) pass a two-party
//!   `Barrier` in a loop; one round per operation. Python: `multiprocessing.Barrier(2)`.
//! - `SharedMemory bulk write 64 MiB` / `read` (GB/s): `SharedMemory::write` / `read` of a 64 MiB
//!   buffer into / out of a region already written once (no page faults in the timing). Python:
//!   `shared_memory.SharedMemory` with `shm.buf[:] = data` / `bytes(shm.buf)` (which allocates its
//!   result each time: Python has no read into an existing buffer that plain code would use).
//! - `RawArray<u64> bulk write 64 MiB` / `read` (GB/s): `copy_from_slice` / `copy_to_slice` of a
//!   `RawArray<u64>` (an array without a lock). Python: a raw `Array('Q', ...)` through `memoryview(arr).cast('B')`, with the same
//!   two statements as for `SharedMemory` (item-wise `arr[:] = ...` would be far slower).
//! - `raw memcpy 64 MiB` (GB/s): `copy_from_slice` between two touched `Vec`s, sampled in alternation
//!   with the figures above it, and the ratios to it (DESIGN.md: ≥ 0.8).

use std::cell::RefCell;
use std::hint::black_box;

use multiprocess::{
    AtomicValue, Barrier, Connection, Event, Lock, Process, RawArray, SharedMemory, StartMethod,
    Value, pipe,
};

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::table::{Row, Table, Target, Unit};

/// The size of the bulk figures.
const BULK: usize = 64 << 20;

/// The bytes written by the bulk figures.
const FILL: u8 = 0x5a;

/// `lock acquire+release uncontended`: seconds per acquire + release.
fn uncontended(plan: Plan) -> Result<f64, String> {
    let lock = Lock::new().map_err(|e| format!("Lock::new failed: {e}"))?;
    plan.run(|ops| {
        for _ in 0..ops {
            drop(lock.lock());
        }
        Ok::<(), String>(())
    })
}

/// The shared counter of the increment figures: a `Value` (incremented under its lock) or an
/// `AtomicValue` (incremented with an atomic add).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Counter {
    Locked(Value<u64>),
    Atomic(AtomicValue<u64>),
}

impl Counter {
    fn new(atomic: bool) -> std::io::Result<Counter> {
        Ok(if atomic {
            Counter::Atomic(AtomicValue::new(0)?)
        } else {
            Counter::Locked(Value::new(0)?)
        })
    }

    fn get(&self) -> u64 {
        match self {
            Counter::Locked(v) => v.get(),
            Counter::Atomic(v) => v.load(),
        }
    }
}

/// Adds 1 to `v` `n` times.
fn increment(v: &Counter, n: u64) -> Result<(), String> {
    match v {
        Counter::Atomic(v) => {
            for _ in 0..n {
                v.fetch_add(1);
            }
        }
        Counter::Locked(v) => {
            for _ in 0..n {
                let mut guard = v
                    .lock()
                    .map_err(|_| "the lock's previous holder died".to_string())?;
                *guard += 1;
            }
        }
    }
    Ok(())
}

/// Child of the increment figures: for each 8-byte little-endian count `n` it receives, does `n`
/// increments and answers with one byte; an empty message ends it. Returns how many it did.
fn incrementer((conn, v): (Connection, Counter)) -> Result<u64, String> {
    let mut done = 0;
    loop {
        let cmd = conn
            .recv_bytes()
            .map_err(|e| format!("incrementer: recv: {e}"))?;
        if cmd.is_empty() {
            return Ok(done);
        }
        let n = u64::from_le_bytes(
            cmd.try_into()
                .map_err(|c: Vec<u8>| format!("incrementer: a {}-byte command", c.len()))?,
        );
        increment(&v, n).map_err(|e| format!("incrementer: {e}"))?;
        conn.send_bytes(b"k")
            .map_err(|e| format!("incrementer: send: {e}"))?;
        done += n;
    }
}

/// `Value increment under its lock` / `by atomic add, 2 processes`: seconds per increment, over both
/// processes. A batch of `ops` increments is split between the child (`ops / 2`) and the parent (the
/// rest), run at once; the final count is checked.
fn contended(pin: &Pinning, plan: Plan, atomic: bool) -> Result<f64, String> {
    let v = Counter::new(atomic).map_err(|e| format!("Value::new failed: {e}"))?;
    let (here, there) = pipe().map_err(|e| format!("pipe failed: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(incrementer, (there, v.clone()))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let mut expected = 0u64;
    let result = plan.run(|ops| {
        let theirs = (ops / 2) as u64;
        here.send_bytes(&theirs.to_le_bytes())
            .map_err(|e| format!("send: {e}"))?;
        increment(&v, ops as u64 - theirs)?;
        here.recv_bytes().map_err(|e| format!("recv: {e}"))?;
        expected += ops as u64;
        Ok::<(), String>(())
    });
    let _ = here.send_bytes(b"");
    drop(here);
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("the child failed: {e}")),
        Err(e) => return Err(format!("join failed: {e}")),
    }
    let count = v.get();
    if count != expected {
        return Err(format!(
            "the counter reads {count} after {expected} increments"
        ));
    }
    Ok(secs)
}

/// Child of the barrier figure: passes the barrier until it is aborted. Returns how many rounds.
fn barrier_party(barrier: Barrier) -> u64 {
    let mut rounds = 0;
    while barrier.wait().is_ok() {
        rounds += 1;
    }
    rounds
}

/// `barrier round, 2 processes`: seconds per round of a two-party barrier.
fn barrier_rounds(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    let barrier = Barrier::new(2).map_err(|e| format!("Barrier::new failed: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(barrier_party, barrier.clone())
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let mut rounds = 0u64;
    let result = plan.run(|ops| {
        for _ in 0..ops {
            barrier.wait().map_err(|e| format!("wait: {e}"))?;
        }
        rounds += ops as u64;
        Ok::<(), String>(())
    });
    // The child is in (or about to enter) its next wait: abort releases it.
    barrier.abort();
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(n) if n == rounds => Ok(secs),
        Ok(n) => Err(format!("the child passed {n} of {rounds} rounds")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

/// Child of the ping-pong figure: answers every `ping` with a `pong` until it finds `stop` set after
/// a `ping`. Returns how many it answered.
fn ponger((ping, pong, stop): (Event, Event, Event)) -> Result<u64, String> {
    let mut answered = 0;
    loop {
        ping.wait();
        if stop.is_set() {
            return Ok(answered);
        }
        ping.clear();
        pong.set();
        answered += 1;
    }
}

/// `event ping-pong round trip`: seconds per round trip (`ping` set, `pong` seen and cleared).
pub(crate) fn ping_pong(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    let new = || Event::new().map_err(|e| format!("Event::new failed: {e}"));
    let (ping, pong, stop) = (new()?, new()?, new()?);
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(ponger, (ping.clone(), pong.clone(), stop.clone()))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let mut rounds = 0u64;
    let result = plan.run(|ops| {
        for _ in 0..ops {
            ping.set();
            pong.wait();
            pong.clear();
        }
        rounds += ops as u64;
        Ok::<(), String>(())
    });
    stop.set();
    ping.set();
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(Ok(n)) if n == rounds => Ok(secs),
        Ok(Ok(n)) => Err(format!("the child answered {n} of {rounds} pings")),
        Ok(Err(e)) => Err(format!("the child failed: {e}")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

/// A region of [`BULK`] bytes holding `src`, every page touched and the contents checked.
fn bulk_region(src: &[u8], dst: &mut [u8]) -> Result<SharedMemory, String> {
    let shm = SharedMemory::new(BULK).map_err(|e| format!("SharedMemory::new failed: {e}"))?;
    shm.write(0, src)
        .map_err(|e| format!("first write failed: {e}"))?;
    shm.read(0, dst)
        .map_err(|e| format!("first read failed: {e}"))?;
    if dst != src {
        return Err("read back other bytes than were written".to_string());
    }
    Ok(shm)
}

/// The bulk figures, sampled in alternation: seconds per 64 MiB for (shm write, shm read, memcpy).
fn bulk(plan: Plan) -> [Result<f64, String>; 3] {
    // Nonzero fills, so that every page of both buffers is touched before timing (as is the region's,
    // by its first write).
    let src = vec![FILL; BULK];
    let dst = RefCell::new(vec![!FILL; BULK]);
    let shm = bulk_region(&src, &mut dst.borrow_mut());
    let mut memcpy = |_| {
        let mut dst = dst.borrow_mut();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut *dst);
        Ok(())
    };
    let shm = match shm {
        Ok(shm) => shm,
        Err(e) => {
            let memcpy = plan.run(memcpy);
            return [Err(e.clone()), Err(e), memcpy];
        }
    };
    let mut write = |_| {
        shm.write(0, black_box(&src))
            .map_err(|e| format!("write: {e}"))
    };
    let mut read = |_| {
        let mut dst = dst.borrow_mut();
        shm.read(0, &mut dst).map_err(|e| format!("read: {e}"))?;
        black_box(&mut *dst);
        Ok(())
    };
    let mut results = plan
        .run_interleaved(&mut [&mut write, &mut read, &mut memcpy])
        .into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or_else(|| Err("no result".to_string()))
    };
    [next(), next(), next()]
}

/// The RawArray bulk figures, sampled in alternation: seconds per 64 MiB for (write, read, memcpy),
/// through `RawArray<u64>::copy_from_slice` / `copy_to_slice` (an array without a lock).
fn array_bulk(plan: Plan) -> [Result<f64, String>; 3] {
    let words = BULK / 8;
    let src = vec![u64::from_ne_bytes([FILL; 8]); words];
    let dst = RefCell::new(vec![!src[0]; words]);
    let mut memcpy = |_| {
        let mut dst = dst.borrow_mut();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut *dst);
        Ok(())
    };
    let arr = RawArray::<u64>::new(words)
        .map_err(|e| format!("RawArray::new failed: {e}"))
        .and_then(|a| {
            a.copy_from_slice(&src)
                .map_err(|e| format!("first write failed: {e}"))?;
            a.copy_to_slice(&mut dst.borrow_mut())
                .map_err(|e| format!("first read failed: {e}"))?;
            if *dst.borrow() != src {
                return Err("read back other values than were written".to_string());
            }
            Ok(a)
        });
    let arr = match arr {
        Ok(a) => a,
        Err(e) => {
            let memcpy = plan.run(memcpy);
            return [Err(e.clone()), Err(e), memcpy];
        }
    };
    let mut write = |_| {
        arr.copy_from_slice(black_box(&src))
            .map_err(|e| format!("write: {e}"))
    };
    let mut read = |_| {
        let mut dst = dst.borrow_mut();
        arr.copy_to_slice(&mut dst)
            .map_err(|e| format!("read: {e}"))?;
        black_box(&mut *dst);
        Ok(())
    };
    let mut results = plan
        .run_interleaved(&mut [&mut write, &mut read, &mut memcpy])
        .into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or_else(|| Err("no result".to_string()))
    };
    [next(), next(), next()]
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let unit = Unit::MegaOpsPerSec;
    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: 200_000,
    };
    table.push(
        Row::compare(
            "lock acquire+release uncontended",
            unit,
            uncontended(plan),
            ctx.python.measure("lock", &[], plan, unit),
        )
        .target(Target::AtLeast(75.0)),
    );

    let pin = Pinning::new("sync");
    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(7, 21),
        ops: ctx.pick(40_000, 100_000),
    };
    let python_incr = ctx
        .python
        .measure("lock-incr", &pin.python_args(&[]), plan, unit);
    table.push(
        Row::compare(
            "Value increment under its lock, 2 processes",
            unit,
            contended(&pin, plan, false),
            python_incr.clone(),
        )
        .target(Target::AtLeast(10.0)),
    );
    // Python has no atomic add on a shared value: its way to add from two processes is the locked
    // increment above, which is its column here too.
    table.push(
        Row::compare(
            "Value increment by atomic add, 2 processes",
            unit,
            contended(&pin, plan, true),
            python_incr,
        )
        .target(Target::AtLeast(50.0)),
    );

    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(15, 51),
        ops: ctx.pick(300, 1_000),
    };
    table.push(
        Row::compare(
            "event ping-pong round trip",
            Unit::Micros,
            ping_pong(&pin, plan),
            ctx.python
                .measure("event-rt", &pin.python_args(&[]), plan, Unit::Micros),
        )
        .target(Target::AtMost(5.0)),
    );
    table.push(Row::compare(
        "barrier round, 2 processes",
        Unit::Micros,
        barrier_rounds(&pin, plan),
        ctx.python
            .measure("barrier-rt", &pin.python_args(&[]), plan, Unit::Micros),
    ));
    drop(pin);

    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: 1,
    };
    let size_arg = ["--size".to_string(), BULK.to_string()];
    let labels = [
        "SharedMemory",
        "raw memcpy 64 MiB",
        "shm",
        "shm-write",
        "shm-read",
    ];
    push_bulk(ctx, table, plan, &size_arg, labels, bulk(plan));
    let labels = [
        "RawArray<u64>",
        "raw memcpy 64 MiB (again)",
        "RawArray",
        "array-write",
        "array-read",
    ];
    push_bulk(ctx, table, plan, &size_arg, labels, array_bulk(plan));
}

/// The five rows of one bulk comparison: write and read beside Python's, the memcpy sampled with them,
/// and the two ratios to it. `labels`: the figures' subject, the memcpy row, the ratios' subject, and
/// Python's two figure names.
fn push_bulk(
    ctx: &Ctx,
    table: &mut Table,
    plan: Plan,
    size_arg: &[String],
    [what, memcpy_label, short, py_write, py_read]: [&str; 5],
    [write, read, memcpy]: [Result<f64, String>; 3],
) {
    let unit = Unit::GigabytesPerSec(BULK as f64);
    let write = Row::compare(
        format!("{what} bulk write 64 MiB"),
        unit,
        write,
        ctx.python.measure(py_write, size_arg, plan, unit),
    );
    let read = Row::compare(
        format!("{what} bulk read 64 MiB"),
        unit,
        read,
        ctx.python.measure(py_read, size_arg, plan, unit),
    );
    let memcpy = Row::baseline(memcpy_label, unit, memcpy);
    let write_ratio = Row::ratio(format!("{short} write / memcpy"), &write, &write, &memcpy)
        .target(Target::AtLeast(0.8));
    let read_ratio = Row::ratio(format!("{short} read / memcpy"), &read, &read, &memcpy)
        .target(Target::AtLeast(0.8));
    for row in [write, read, memcpy, write_ratio, read_ratio] {
        table.push(row);
    }
}
