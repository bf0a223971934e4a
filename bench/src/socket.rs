//! Group `socket`: `Listener`/`Client` connections between two processes, over a Unix socket (an
//! abstract name) and TCP on loopback, against Python's `multiprocessing.connection` on the same
//! shapes. The parent listens, a forked child connects (pinned as in `pipe`). Medians:
//! - `socket round trip 8 B, unix` / `, tcp` (µs): the parent `send_bytes` 8 bytes, the child echoes
//!   them (Python: `Listener`/`Client` with the same calls).
//! - `socket one-way 1 MiB, unix` / `, tcp` (GB/s, 10⁹ B/s): the child sends 1 MiB messages, the
//!   parent receives each.
//! - `socket connect + handshake, unix` / `, tcp` (µs): the parent connects with a key to a
//!   listener in the child, both sides prove the key (6 frames), the parent hangs up; per connection.

use multiprocess::{Address, Client, Connection, Listener, Process, StartMethod};

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::pipe;
use crate::table::{Row, Table, Unit};

const KEY: &[u8] = b"bench key";

/// A fresh place to listen: an abstract name, or TCP loopback on a port the kernel picks.
fn place(family: &str) -> Address {
    match family {
        "unix" => Address::Abstract(
            format!(
                "mp-bench-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            )
            .into_bytes(),
        ),
        _ => "127.0.0.1:0".parse().expect("an address"),
    }
}

/// Child: connects, then echoes as the `pipe` group's child does.
fn echo_client(address: Address) -> Result<u64, String> {
    pipe::echo(Client::connect(&address).map_err(|e| format!("connect: {e}"))?)
}

/// Child: connects (no message limit), then sends as the `pipe` group's child does.
fn send_client((address, size): (Address, usize)) -> Result<u64, String> {
    let conn = Client::builder(&address)
        .max_message(None)
        .connect()
        .map_err(|e| format!("connect: {e}"))?;
    pipe::sender((conn, size))
}

/// Runs `measure` over the connection of a forked child started with `f(arg(address))`.
fn with_client<A: serde::Serialize + serde::de::DeserializeOwned>(
    pin: &Pinning,
    family: &str,
    f: fn(A) -> Result<u64, String>,
    arg: impl FnOnce(Address) -> A,
    measure: impl FnOnce(&Connection) -> Result<f64, String>,
) -> Result<f64, String> {
    let listener = Listener::builder(place(family))
        .max_message(None)
        .bind()
        .map_err(|e| format!("bind: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(f, arg(listener.address().clone()))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let conn = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let result = measure(&conn);
    let _ = conn.send_bytes(b"");
    drop(conn);
    let joined = child.join();
    let secs = result?;
    match joined {
        Ok(Ok(_)) => Ok(secs),
        Ok(Err(e)) => Err(format!("the child failed: {e}")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

fn round_trip(pin: &Pinning, family: &str, plan: Plan) -> Result<f64, String> {
    with_client(
        pin,
        family,
        echo_client,
        |a| a,
        |conn| pipe::timed_round_trips(conn, plan),
    )
}

fn one_way(pin: &Pinning, family: &str, plan: Plan, size: usize) -> Result<f64, String> {
    with_client(
        pin,
        family,
        send_client,
        |a| (a, size),
        |conn| pipe::timed_one_way(conn, plan, size),
    )
}

/// Child: a keyed listener that accepts until a client says "stop"; its address goes back first.
fn keyed_server((family, report): (String, Connection)) -> Result<u64, String> {
    let listener = Listener::builder(place(&family))
        .authkey(KEY)
        .bind()
        .map_err(|e| format!("bind: {e}"))?;
    report
        .send(listener.address())
        .map_err(|e| format!("report: {e}"))?;
    let mut n = 0;
    loop {
        let conn = listener.accept().map_err(|e| format!("accept: {e}"))?;
        // A measured client hangs up at once (end of file); the last one says "stop".
        if conn.recv_bytes().is_ok_and(|m| m == b"stop") {
            return Ok(n);
        }
        n += 1;
    }
}

fn connect(pin: &Pinning, family: &str, plan: Plan) -> Result<f64, String> {
    let (here, there) = multiprocess::pipe().map_err(|e| format!("pipe: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(keyed_server, (family.to_string(), there))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let address: Address = here.recv().map_err(|e| format!("address: {e}"))?;
    let client = || Client::builder(&address).authkey(KEY).connect();
    let result = plan.run(|ops| {
        for _ in 0..ops {
            drop(client().map_err(|e| format!("connect: {e}"))?);
        }
        Ok::<(), String>(())
    });
    let stop = client().map_err(|e| format!("connect: {e}"));
    if let Ok(c) = &stop {
        let _ = c.send_bytes(b"stop");
        // Wait until the server has read it (it returns and closes).
        let _ = c.recv_bytes();
    }
    let joined = child.join();
    let secs = result?;
    stop?;
    match joined {
        Ok(Ok(_)) => Ok(secs),
        Ok(Err(e)) => Err(format!("the child failed: {e}")),
        Err(e) => Err(format!("join failed: {e}")),
    }
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let pin = Pinning::new("socket");
    for family in ["unix", "tcp"] {
        let fam = ["--family".to_string(), family.to_string()];
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(15, 51),
            ops: ctx.pick(200, 1000),
        };
        table.push(Row::compare(
            format!("socket round trip 8 B, {family}"),
            Unit::Micros,
            round_trip(&pin, family, plan),
            ctx.python
                .measure("socket-rt", &pin.python_args(&fam), plan, Unit::Micros),
        ));
        let size = 1 << 20;
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(7, 21),
            ops: ctx.pick(64, 256),
        };
        let unit = Unit::GigabytesPerSec(size as f64);
        let mut args = fam.to_vec();
        args.extend(["--size".to_string(), size.to_string()]);
        table.push(Row::compare(
            format!("socket one-way 1 MiB, {family}"),
            unit,
            one_way(&pin, family, plan, size),
            ctx.python
                .measure("socket-oneway", &pin.python_args(&args), plan, unit),
        ));
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(9, 31),
            ops: ctx.pick(50, 200),
        };
        table.push(Row::compare(
            format!("socket connect + handshake, {family}"),
            Unit::Micros,
            connect(&pin, family, plan),
            ctx.python
                .measure("socket-connect", &pin.python_args(&fam), plan, Unit::Micros),
        ));
    }
}
