//! Group `queue`: `Queue` and `JoinableQueue` between processes.
//!
//! Figures (medians; every child is started with `fork`, as Python's side is):
//! - `queue 1→1, small items` / `4 KiB items` (M items/s): a producer child (one CPU) puts a batch of
//!   items that the parent (the other CPU, see [`Pinning`]) takes. Small items are `u64`s; 4 KiB items
//!   are `serde_bytes::ByteBuf`s (Python: `bytes`), cloned for each put as a producer making fresh
//!   items would. Python: `multiprocessing.Queue()`, the same shape. DESIGN.md: ≥ 8 M/s small.
//! - `queue 2→2, small items` / `4 KiB items` (M items/s): two producer children each put half the
//!   batch, two consumer children each take half; four processes on the machine's CPUs, unpinned.
//!   The parent only hands out the batch and collects the acknowledgements. DESIGN.md: ≥ 6 M/s small,
//!   ≥ 1.5 M/s 4 KiB.
//! - `queue 1→1, 4 KiB items, fresh queue (slowest batch)` (M items/s): each batch a new queue, whose
//!   producer child puts the batch at once while the parent takes; the slowest batch, since the
//!   point is that none is slow (a queue used to stay in its overflow log, at a fraction of its
//!   speed, when its consumer fell behind at the start). Python: the same with a new
//!   `multiprocessing.Queue()` per batch.
//! - `queue 1→1, 1 MiB items` (GB/s): as the first figure with 1 MiB items.
//! - `queue put→get round trip` (µs): the parent puts an item on one queue, a child takes it and puts
//!   it on a second, the parent takes it back. DESIGN.md: ≤ 5 µs across CPUs.
//! - `JoinableQueue put + task_done + join, 1→1` (M items/s): the parent puts a batch of small items
//!   and `join`s; a consumer child takes each and marks it done. Python: `JoinableQueue`.

use multiprocess::{Connection, JoinableQueue, Process, Queue, StartMethod, pipe};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::table::{Row, Table, Target, Unit};

/// Ends a child's command loop.
const STOP: u64 = u64::MAX;

fn recv_count(conn: &Connection) -> Result<u64, String> {
    let cmd = conn.recv_bytes().map_err(|e| format!("recv: {e}"))?;
    let bytes: [u8; 8] = cmd
        .try_into()
        .map_err(|c: Vec<u8>| format!("a {}-byte command", c.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Producer child: for each count `n` received, puts `n` clones of `item`, then answers.
fn producer<T: Serialize + Clone>(
    (conn, (q, item)): (Connection, (Queue<T>, T)),
) -> Result<u64, String> {
    let mut done = 0;
    loop {
        let n = recv_count(&conn)?;
        if n == STOP {
            return Ok(done);
        }
        for _ in 0..n {
            q.put(item.clone()).map_err(|e| format!("put: {e}"))?;
        }
        conn.send_bytes(b"k").map_err(|e| format!("send: {e}"))?;
        done += n;
    }
}

/// Consumer child: for each count `n` received, takes `n` items, then answers.
fn consumer<T: DeserializeOwned>((conn, q): (Connection, Queue<T>)) -> Result<u64, String> {
    let mut done = 0;
    loop {
        let n = recv_count(&conn)?;
        if n == STOP {
            return Ok(done);
        }
        for _ in 0..n {
            q.get().map_err(|e| format!("get: {e}"))?;
        }
        conn.send_bytes(b"k").map_err(|e| format!("send: {e}"))?;
        done += n;
    }
}

/// A child with its command connection.
struct Child {
    conn: Connection,
    process: Process<Result<u64, String>>,
}

impl Child {
    fn order(&self, n: u64) -> Result<(), String> {
        self.conn
            .send_bytes(&n.to_le_bytes())
            .map_err(|e| format!("send: {e}"))
    }

    fn ack(&self) -> Result<(), String> {
        self.conn
            .recv_bytes()
            .map(drop)
            .map_err(|e| format!("the child did not answer: {e}"))
    }

    /// Stops the child; gives the number of items it handled.
    fn finish(self) -> Result<u64, String> {
        let _ = self.order(STOP);
        match self.process.join() {
            Ok(r) => r,
            Err(e) => Err(format!("join failed: {e}")),
        }
    }
}

fn start<A: Serialize>(
    f: fn((Connection, A)) -> Result<u64, String>,
    arg: A,
) -> Result<Child, String>
where
    (Connection, A): Serialize + DeserializeOwned,
{
    let (conn, there) = pipe().map_err(|e| format!("pipe failed: {e}"))?;
    let process = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(f, (there, arg))
        .map_err(|e| format!("start failed: {e}"))?;
    Ok(Child { conn, process })
}

/// `queue 1→1`: seconds per item, a pinned producer child and the parent taking.
fn one_to_one<T>(pin: &Pinning, plan: Plan, item: T) -> Result<f64, String>
where
    T: Serialize + DeserializeOwned + Clone,
{
    let q = Queue::<T>::new().map_err(|e| format!("Queue::new failed: {e}"))?;
    let (conn, there) = pipe().map_err(|e| format!("pipe failed: {e}"))?;
    let process = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(producer::<T>, (there, (q.clone(), item)))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let child = Child { conn, process };
    let mut total = 0u64;
    let result = plan.run(|ops| {
        child.order(ops as u64)?;
        for _ in 0..ops {
            q.get().map_err(|e| format!("get: {e}"))?;
        }
        child.ack()?;
        total += ops as u64;
        Ok::<(), String>(())
    });
    let produced = child.finish();
    let secs = result?;
    match produced? {
        n if n == total && q.is_empty() => Ok(secs),
        n => Err(format!("{n} items put, {total} taken")),
    }
}

/// Producer child of a fresh queue: puts `n` clones of `item` at once, and ends.
fn put_all<T: Serialize + Clone>((q, item, n): (Queue<T>, T, u64)) -> Result<u64, String> {
    for _ in 0..n {
        q.put(item.clone()).map_err(|e| format!("put: {e}"))?;
    }
    Ok(n)
}

/// `queue 1→1, fresh`: each batch a new queue, whose producer child starts putting at once while the
/// parent takes (the shape that used to leave a queue in its log for the rest of its life); seconds
/// per item of the slowest batch.
fn fresh_one_to_one<T>(pin: &Pinning, plan: Plan, item: T) -> Result<f64, String>
where
    T: Serialize + DeserializeOwned + Clone,
{
    plan.run_slowest(|ops| {
        let q = Queue::<T>::new().map_err(|e| format!("Queue::new failed: {e}"))?;
        let producer = pin
            .start(|| {
                Process::builder()
                    .start_method(StartMethod::Fork)
                    .spawn(put_all::<T>, (q.clone(), item.clone(), ops as u64))
            })
            .map_err(|e| format!("start failed: {e}"))?;
        for _ in 0..ops {
            q.get().map_err(|e| format!("get: {e}"))?;
        }
        match producer.join() {
            Ok(Ok(n)) if n == ops as u64 && q.is_empty() => Ok(()),
            other => Err(format!("the producer: {other:?}")),
        }
    })
}

/// `queue 2→2`: seconds per item, two producer and two consumer children, unpinned.
fn two_to_two<T>(plan: Plan, item: T) -> Result<f64, String>
where
    T: Serialize + DeserializeOwned + Clone,
{
    let q = Queue::<T>::new().map_err(|e| format!("Queue::new failed: {e}"))?;
    let mut children = Vec::new();
    for _ in 0..2 {
        children.push(start(producer::<T>, (q.clone(), item.clone()))?);
    }
    for _ in 0..2 {
        children.push(start(consumer::<T>, q.clone())?);
    }
    let result = plan.run(|ops| {
        let half = (ops / 2) as u64;
        for c in &children {
            c.order(half)?;
        }
        for c in &children {
            c.ack()?;
        }
        Ok::<(), String>(())
    });
    let counts: Vec<_> = children.into_iter().map(Child::finish).collect();
    let secs = result?;
    let counts = counts.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (put, got) = (counts[0] + counts[1], counts[2] + counts[3]);
    if put != got || !q.is_empty() {
        return Err(format!("{put} items put, {got} taken"));
    }
    // Each operation of the plan moved two halves: per item, the batch's time over `2 * (ops / 2)`.
    Ok(secs * plan.ops as f64 / (2 * (plan.ops / 2)) as f64)
}

/// Round-trip child: takes from `inq` and puts on `out` until it takes [`STOP`].
fn echo((inq, out): (Queue<u64>, Queue<u64>)) -> Result<u64, String> {
    let mut n = 0;
    loop {
        let v = inq.get().map_err(|e| format!("get: {e}"))?;
        if v == STOP {
            return Ok(n);
        }
        out.put(v).map_err(|e| format!("put: {e}"))?;
        n += 1;
    }
}

/// `queue put→get round trip`: seconds per round trip through two queues and a pinned child.
pub(crate) fn round_trip(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    let new = || Queue::<u64>::new().map_err(|e| format!("Queue::new failed: {e}"));
    let (there, back) = (new()?, new()?);
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(echo, (there.clone(), back.clone()))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let mut total = 0;
    let result = plan.run(|ops| {
        for i in 0..ops as u64 {
            there.put(i).map_err(|e| format!("put: {e}"))?;
            let v = back.get().map_err(|e| format!("get: {e}"))?;
            if v != i {
                return Err(format!("sent {i}, got {v} back"));
            }
        }
        total += ops as u64;
        Ok(())
    });
    let _ = there.put(STOP);
    counted(result, child, total, "echoed")
}

/// The figure's time if the child, stopped by now, handled all `total` items.
fn counted(
    result: Result<f64, String>,
    child: Process<Result<u64, String>>,
    total: u64,
    verb: &str,
) -> Result<f64, String> {
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(Ok(n)) if n == total => Ok(secs),
        Ok(Ok(n)) => Err(format!("the child {verb} {n} of {total}")),
        Ok(Err(e)) => Err(format!("the child failed: {e}")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

/// JoinableQueue child: takes items and marks each done until it takes [`STOP`].
fn worker(q: JoinableQueue<u64>) -> Result<u64, String> {
    let mut n = 0;
    loop {
        let v = q.get().map_err(|e| format!("get: {e}"))?;
        q.task_done().map_err(|e| format!("task_done: {e}"))?;
        if v == STOP {
            return Ok(n);
        }
        n += 1;
    }
}

/// `JoinableQueue put + task_done + join`: seconds per item, the parent putting a batch and joining.
fn joinable(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    let q = JoinableQueue::<u64>::new().map_err(|e| format!("JoinableQueue::new failed: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(worker, q.clone())
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let mut total = 0;
    let result = plan.run(|ops| {
        for i in 0..ops as u64 {
            q.put(i).map_err(|e| format!("put: {e}"))?;
        }
        q.join();
        total += ops as u64;
        Ok::<(), String>(())
    });
    let _ = q.put(STOP);
    counted(result, child, total, "took")
}

/// `bench_mp.py queue-flow`'s shape arguments.
fn flow(p: &'static str, c: &'static str, size: &'static str) -> [&'static str; 6] {
    ["--producers", p, "--consumers", c, "--size", size]
}

fn bytes(n: usize) -> ByteBuf {
    ByteBuf::from(vec![0x5a; n])
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let unit = Unit::MegaItemsPerSec;
    let pin = Pinning::new("queue");
    let small = Plan {
        warmup: 1,
        samples: ctx.pick(7, 21),
        ops: ctx.pick(50_000, 200_000),
    };
    let kib = Plan {
        ops: ctx.pick(20_000, 50_000),
        ..small
    };
    let py = |figure: &str, extra: &[&str], pinned: bool, plan: Plan, unit: Unit| {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = if pinned {
            pin.python_args(&extra)
        } else {
            extra
        };
        ctx.python.measure(figure, &args, plan, unit)
    };

    table.push(
        Row::compare(
            "queue 1→1, small items",
            unit,
            one_to_one(&pin, small, 7u64),
            py("queue-flow", &flow("1", "1", "0"), true, small, unit),
        )
        .target(Target::AtLeast(8.0)),
    );
    table.push(Row::compare(
        "queue 1→1, 4 KiB items",
        unit,
        one_to_one(&pin, kib, bytes(4096)),
        py("queue-flow", &flow("1", "1", "4096"), true, kib, unit),
    ));
    let fresh = Plan {
        warmup: 1,
        samples: ctx.pick(5, 9),
        ops: ctx.pick(50_000, 200_000),
    };
    table.push(Row::compare(
        "queue 1→1, 4 KiB items, fresh queue (slowest batch)",
        unit,
        fresh_one_to_one(&pin, fresh, bytes(4096)),
        {
            let extra: Vec<String> = pin.python_args(&["--size".to_string(), "4096".to_string()]);
            ctx.python
                .measure_slowest("queue-fresh", &extra, fresh, unit)
        },
    ));
    table.push(
        Row::compare(
            "queue 2→2, small items",
            unit,
            two_to_two(small, 7u64),
            py("queue-flow", &flow("2", "2", "0"), false, small, unit),
        )
        .target(Target::AtLeast(6.0)),
    );
    table.push(
        Row::compare(
            "queue 2→2, 4 KiB items",
            unit,
            two_to_two(kib, bytes(4096)),
            py("queue-flow", &flow("2", "2", "4096"), false, kib, unit),
        )
        .target(Target::AtLeast(1.5)),
    );

    let mib = Plan {
        warmup: 1,
        samples: ctx.pick(7, 21),
        ops: ctx.pick(50, 200),
    };
    let gb = Unit::GigabytesPerSec((1 << 20) as f64);
    table.push(Row::compare(
        "queue 1→1, 1 MiB items",
        gb,
        one_to_one(&pin, mib, bytes(1 << 20)),
        py("queue-flow", &flow("1", "1", "1048576"), true, mib, gb),
    ));

    let rt = Plan {
        warmup: 1,
        samples: ctx.pick(15, 51),
        ops: ctx.pick(300, 1_000),
    };
    table.push(
        Row::compare(
            "queue put→get round trip",
            Unit::Micros,
            round_trip(&pin, rt),
            py("queue-rt", &[], true, rt, Unit::Micros),
        )
        .target(Target::AtMost(5.0)),
    );
    table.push(Row::compare(
        "JoinableQueue put + task_done + join, 1→1",
        unit,
        joinable(&pin, small),
        py("joinable", &[], true, small, unit),
    ));
}
