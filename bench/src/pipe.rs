//! Group `pipe`: latency and throughput of a `multiprocess::pipe()` between two processes.
//!
//! Every figure runs the parent on one CPU and the child on another (see [`Pinning`]); the child is
//! started with `fork` on both sides (the start method does not affect these figures). Medians:
//! - `pipe round trip 8 B` (µs): the parent `send_bytes` 8 bytes, the child `recv_bytes` them and
//!   `send_bytes` them back, the parent `recv_bytes` them. Python: `Pipe()` with the same calls.
//! - `raw socketpair round trip 8 B` (µs): the same over `UnixStream::pair()`, the child echoing with
//!   plain `read`/`write`: the floor for a blocking design.
//! - `pipe / raw socketpair round trip ratio`: DESIGN.md wants ≤ 1 (no slower than the raw socket).
//! - `pipe one-way 64 B` (M msg/s), `pipe one-way 4 KiB` and `pipe one-way 1 MiB` (GB/s, 10⁹ B/s): the
//!   child `send_bytes` N messages of that size, the parent `recv_bytes` each. DESIGN.md wants ≥ 5 GB/s
//!   for 1 MiB.
//! - `raw socketpair one-way 1 MiB` (GB/s): the same with plain `write`/`read` into a reused buffer,
//!   over a socket pair with the same buffer sizes `pipe()` asks for.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use multiprocess::{Connection, Process, StartMethod, pipe};

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::raw;
use crate::table::{Row, Table, Target, Unit};

/// The socket buffer size `multiprocess::pipe()` asks for, used for the raw pair too.
const SOCKET_BUFFER: usize = 4 << 20;

/// The round-trip message size.
const ROUND_TRIP_BYTES: usize = 8;

/// Child of the round-trip figure: echoes every message until an empty one; returns how many.
pub(crate) fn echo(conn: Connection) -> Result<u64, String> {
    let mut echoed = 0;
    loop {
        let msg = conn.recv_bytes().map_err(|e| format!("echo: recv: {e}"))?;
        if msg.is_empty() {
            return Ok(echoed);
        }
        conn.send_bytes(&msg)
            .map_err(|e| format!("echo: send: {e}"))?;
        echoed += 1;
    }
}

/// Child of the throughput figures: for each 8-byte little-endian count `n` it receives, sends `n`
/// messages of `size` bytes; an empty message ends it. Returns how many it sent.
pub(crate) fn sender((conn, size): (Connection, usize)) -> Result<u64, String> {
    let msg = vec![0x5a; size];
    let mut sent = 0;
    loop {
        let cmd = conn
            .recv_bytes()
            .map_err(|e| format!("sender: recv: {e}"))?;
        if cmd.is_empty() {
            return Ok(sent);
        }
        let n = u64::from_le_bytes(
            cmd.try_into()
                .map_err(|c: Vec<u8>| format!("sender: a {}-byte command", c.len()))?,
        );
        for _ in 0..n {
            conn.send_bytes(&msg)
                .map_err(|e| format!("sender: send: {e}"))?;
        }
        sent += n;
    }
}

/// Starts `f(arg)` in a forked child (placed by `pin`), runs `measure` with `here`, then stops the
/// child (an empty message, then end of file) and joins it. A failure of the child is reported when
/// `measure` itself succeeded.
fn with_child<A>(
    pin: &Pinning,
    f: fn(A) -> Result<u64, String>,
    arg: impl FnOnce(Connection) -> A,
    measure: impl FnOnce(&Connection) -> Result<f64, String>,
) -> Result<f64, String>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    let (here, there) = pipe().map_err(|e| format!("pipe failed: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(f, arg(there))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let result = measure(&here);
    let _ = here.send_bytes(b"");
    drop(here);
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(Ok(_)) => Ok(secs),
        Ok(Err(e)) => Err(format!("the child failed: {e}")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

/// `pipe round trip 8 B` on our side.
pub(crate) fn round_trip(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    with_child(pin, echo, |c| c, |here| timed_round_trips(here, plan))
}

/// The timed batches of a round-trip figure over `here`, whose peer runs [`echo`].
pub(crate) fn timed_round_trips(here: &Connection, plan: Plan) -> Result<f64, String> {
    let msg = [7u8; ROUND_TRIP_BYTES];
    plan.run(|ops| {
        for _ in 0..ops {
            here.send_bytes(&msg).map_err(|e| format!("send: {e}"))?;
            let back = here.recv_bytes().map_err(|e| format!("recv: {e}"))?;
            if back.len() != ROUND_TRIP_BYTES {
                return Err(format!("echo came back with {} bytes", back.len()));
            }
        }
        Ok(())
    })
}

/// One-way throughput on our side: seconds per message of `size` bytes.
fn one_way(pin: &Pinning, plan: Plan, size: usize) -> Result<f64, String> {
    with_child(
        pin,
        sender,
        |c| (c, size),
        |here| timed_one_way(here, plan, size),
    )
}

/// The timed batches of a one-way figure over `here`, whose peer runs [`sender`] with `size`.
pub(crate) fn timed_one_way(here: &Connection, plan: Plan, size: usize) -> Result<f64, String> {
    plan.run(|ops| {
        here.send_bytes(&(ops as u64).to_le_bytes())
            .map_err(|e| format!("send: {e}"))?;
        for _ in 0..ops {
            let msg = here.recv_bytes().map_err(|e| format!("recv: {e}"))?;
            if msg.len() != size {
                return Err(format!("a {}-byte message, expected {size}", msg.len()));
            }
        }
        Ok(())
    })
}

/// A raw socket pair: (the parent's end, the child's end), with `pipe()`'s buffer sizes.
fn raw_pair() -> Result<(UnixStream, UnixStream), String> {
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair failed: {e}"))?;
    for s in [&a, &b] {
        raw::set_socket_buffers(s, SOCKET_BUFFER).map_err(|e| format!("setsockopt failed: {e}"))?;
    }
    Ok((a, b))
}

/// `raw socketpair round trip 8 B`.
pub(crate) fn raw_round_trip(pin: &Pinning, plan: Plan) -> Result<f64, String> {
    let (mut here, there) = raw_pair()?;
    let child = pin
        .start(|| raw::spawn_echo(&here, there))
        .map_err(|e| format!("fork failed: {e}"))?;
    let mut buf = [7u8; ROUND_TRIP_BYTES];
    let result = plan.run(|ops| {
        for _ in 0..ops {
            here.write_all(&buf)?;
            here.read_exact(&mut buf)?;
        }
        Ok::<(), std::io::Error>(())
    });
    drop(here);
    let secs = result?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(secs)
}

/// `raw socketpair one-way`: seconds per message of `size` bytes.
fn raw_one_way(pin: &Pinning, plan: Plan, size: usize) -> Result<f64, String> {
    let (mut here, there) = raw_pair()?;
    let msg = vec![0x5a; size];
    let child = pin
        .start(|| raw::spawn_writer(&here, there, &msg))
        .map_err(|e| format!("fork failed: {e}"))?;
    let mut buf = vec![0; size];
    let result = plan.run(|ops| {
        here.write_all(&(ops as u64).to_le_bytes())?;
        for _ in 0..ops {
            here.read_exact(&mut buf)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let _ = here.write_all(&0u64.to_le_bytes());
    drop(here);
    let secs = result?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(secs)
}

/// A one-way throughput figure.
struct Shape {
    /// Message size in bytes.
    size: usize,
    label: &'static str,
    unit: Unit,
    /// Messages per timed batch: (quick, full).
    ops: (usize, usize),
    /// The DESIGN.md target, if any.
    target: Option<Target>,
    /// Whether to measure the raw socket pair on this shape too.
    raw_baseline: bool,
}

const SHAPES: [Shape; 3] = [
    Shape {
        size: 64,
        label: "64 B",
        unit: Unit::MegaMsgsPerSec,
        ops: (20_000, 50_000),
        target: None,
        raw_baseline: false,
    },
    Shape {
        size: 4 << 10,
        label: "4 KiB",
        unit: Unit::GigabytesPerSec((4 << 10) as f64),
        ops: (5_000, 20_000),
        target: None,
        raw_baseline: false,
    },
    Shape {
        size: 1 << 20,
        label: "1 MiB",
        unit: Unit::GigabytesPerSec((1 << 20) as f64),
        ops: (64, 256),
        target: Some(Target::AtLeast(5.0)),
        raw_baseline: true,
    },
];

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let pin = Pinning::new("pipe");
    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(15, 51),
        ops: ctx.pick(200, 1000),
    };
    let floor = Row::baseline(
        "raw socketpair round trip 8 B",
        Unit::Micros,
        raw_round_trip(&pin, plan),
    );
    let rt = Row::compare(
        "pipe round trip 8 B",
        Unit::Micros,
        round_trip(&pin, plan),
        ctx.python
            .measure("pipe-rt", &pin.python_args(&[]), plan, Unit::Micros),
    );
    let ratio = Row::ratio("pipe / raw socketpair round trip ratio", &rt, &rt, &floor)
        .target(Target::AtMost(1.0));
    table.push(rt);
    table.push(floor);
    table.push(ratio);

    for shape in &SHAPES {
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(7, 21),
            ops: ctx.pick(shape.ops.0, shape.ops.1),
        };
        let size_arg = ["--size".to_string(), shape.size.to_string()];
        let mut row = Row::compare(
            format!("pipe one-way {}", shape.label),
            shape.unit,
            one_way(&pin, plan, shape.size),
            ctx.python
                .measure("pipe-oneway", &pin.python_args(&size_arg), plan, shape.unit),
        );
        if let Some(target) = shape.target {
            row = row.target(target);
        }
        table.push(row);
        if shape.raw_baseline {
            table.push(Row::baseline(
                format!("raw socketpair one-way {}", shape.label),
                shape.unit,
                raw_one_way(&pin, plan, shape.size),
            ));
        }
    }
}
