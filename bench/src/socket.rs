//! Group `socket`: `Listener`/`Client` connections between two processes, over a Unix socket (an
//! abstract name) and TCP on loopback, against Python's `multiprocessing.connection` on the same
//! shapes. The parent listens, a forked child connects (pinned as in `pipe`). Medians:
//! - `socket round trip 8 B, unix` / `, tcp` (µs): the parent `send_bytes` 8 bytes, the child echoes
//!   them (Python: `Listener`/`Client` with the same calls).
//! - `socket one-way 1 MiB, unix` / `, tcp` (GB/s, 10⁹ B/s): the child sends 1 MiB messages, the
//!   parent receives each.
//! - `socket connect + handshake, unix` / `, tcp` (µs): the parent connects with a key to a
//!   listener in the child, both sides prove the key (6 frames), the parent hangs up; per connection.
//! - the same three over `tcp+tls` (TLS 1.3 with a self-signed certificate, rustls and ring, the key
//!   handshake inside it): Python's multiprocessing has no TLS, so its column is its plain TCP
//!   figure from the same run, for the price of encryption.

use multiprocess::{
    Address, Client, ClientBuilder, Connection, Listener, Process, StartMethod, tls,
};

use crate::Ctx;
use crate::measure::Plan;
use crate::pin::Pinning;
use crate::pipe;
use crate::table::{Cell, Row, Table, Unit};

const KEY: &[u8] = b"bench key";

/// Where a child connects, and the certificate it trusts (PEM) when the family is `tcp+tls`.
type Target = (Address, Option<String>);

/// A self-signed certificate for 127.0.0.1 (PEM certificate, PEM key), for the `tcp+tls` rows.
fn certificate() -> Result<(String, String), String> {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((c.cert.pem(), c.key_pair.serialize_pem()))
}

/// A listener for `family` (with TLS when `cert` is given).
fn listener(
    family: &str,
    cert: Option<&(String, String)>,
    with: impl FnOnce(multiprocess::ListenerBuilder) -> multiprocess::ListenerBuilder,
) -> Result<Listener, String> {
    let mut b = with(Listener::builder(place(family)));
    if let Some((cert, key)) = cert {
        let config = tls::server_config(cert.as_bytes(), key.as_bytes())
            .map_err(|e| format!("TLS config: {e}"))?;
        b = b.tls(config);
    }
    b.bind().map_err(|e| format!("bind: {e}"))
}

/// A client of `address`, trusting `roots` over TLS when given.
fn client(address: &Address, roots: Option<&str>) -> Result<ClientBuilder, String> {
    let b = Client::builder(address);
    Ok(match roots {
        Some(pem) => b.tls(tls::client_config(pem.as_bytes()).map_err(|e| format!("TLS: {e}"))?),
        None => b,
    })
}

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
fn echo_client((address, roots): Target) -> Result<u64, String> {
    let conn = client(&address, roots.as_deref())?;
    pipe::echo(conn.connect().map_err(|e| format!("connect: {e}"))?)
}

/// Child: connects (no message limit), then sends as the `pipe` group's child does.
fn send_client(((address, roots), size): (Target, usize)) -> Result<u64, String> {
    let conn = client(&address, roots.as_deref())?
        .max_message(None)
        .connect()
        .map_err(|e| format!("connect: {e}"))?;
    pipe::sender((conn, size))
}

/// Runs `measure` over the connection of a forked child started with `f(arg(target))`.
fn with_client<A: serde::Serialize + serde::de::DeserializeOwned>(
    pin: &Pinning,
    family: &str,
    cert: Option<&(String, String)>,
    f: fn(A) -> Result<u64, String>,
    arg: impl FnOnce(Target) -> A,
    measure: impl FnOnce(&Connection) -> Result<f64, String>,
) -> Result<f64, String> {
    let listener = listener(family, cert, |b| b.max_message(None))?;
    let target = (listener.address().clone(), cert.map(|c| c.0.clone()));
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(f, arg(target))
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

fn round_trip(
    pin: &Pinning,
    family: &str,
    cert: Option<&(String, String)>,
    plan: Plan,
) -> Result<f64, String> {
    with_client(
        pin,
        family,
        cert,
        echo_client,
        |a| a,
        |conn| pipe::timed_round_trips(conn, plan),
    )
}

fn one_way(
    pin: &Pinning,
    family: &str,
    cert: Option<&(String, String)>,
    plan: Plan,
    size: usize,
) -> Result<f64, String> {
    with_client(
        pin,
        family,
        cert,
        send_client,
        |a| (a, size),
        |conn| pipe::timed_one_way(conn, plan, size),
    )
}

/// Child: a keyed listener that accepts until a client says "stop"; its address goes back first.
fn keyed_server(
    (family, cert, report): (String, Option<(String, String)>, Connection),
) -> Result<u64, String> {
    let listener = listener(&family, cert.as_ref(), |b| b.authkey(KEY))?;
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

fn connect(
    pin: &Pinning,
    family: &str,
    cert: Option<&(String, String)>,
    plan: Plan,
) -> Result<f64, String> {
    let (here, there) = multiprocess::pipe().map_err(|e| format!("pipe: {e}"))?;
    let child = pin
        .start(|| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(keyed_server, (family.to_string(), cert.cloned(), there))
        })
        .map_err(|e| format!("start failed: {e}"))?;
    let address: Address = here.recv().map_err(|e| format!("address: {e}"))?;
    let builder = client(&address, cert.map(|c| c.0.as_str()))?.authkey(KEY);
    let client = || builder.clone().connect();
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
    let cert = certificate();
    // Python's plain TCP rows, the column the TLS rows show beside theirs.
    let mut tcp_rows: Vec<Row> = Vec::new();
    for family in ["unix", "tcp", "tcp+tls"] {
        let tls = family == "tcp+tls";
        let cert = match (tls, &cert) {
            (false, _) => None,
            (true, Ok(c)) => Some(c),
            (true, Err(e)) => {
                eprintln!("socket: no TLS rows: {e}");
                break;
            }
        };
        let fam = ["--family".to_string(), family.to_string()];
        let mut row =
            |figure: String, unit: Unit, ours: Result<f64, String>, py: &dyn Fn() -> Cell| {
                let python = match tls {
                    false => py(),
                    true => tcp_rows.remove(0).python_cell(),
                };
                let r = Row::compare(figure, unit, ours, python);
                if family == "tcp" {
                    tcp_rows.push(r.clone());
                }
                table.push(r);
            };
        let label = |s: &str| match tls {
            true => format!("{s}, tcp+tls (Python: plain tcp)"),
            false => format!("{s}, {family}"),
        };
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(15, 51),
            ops: ctx.pick(200, 1000),
        };
        row(
            label("socket round trip 8 B"),
            Unit::Micros,
            round_trip(&pin, family, cert, plan),
            &|| {
                ctx.python
                    .measure("socket-rt", &pin.python_args(&fam), plan, Unit::Micros)
            },
        );
        let size = 1 << 20;
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(7, 21),
            ops: ctx.pick(64, 256),
        };
        let unit = Unit::GigabytesPerSec(size as f64);
        let mut args = fam.to_vec();
        args.extend(["--size".to_string(), size.to_string()]);
        row(
            label("socket one-way 1 MiB"),
            unit,
            one_way(&pin, family, cert, plan, size),
            &|| {
                ctx.python
                    .measure("socket-oneway", &pin.python_args(&args), plan, unit)
            },
        );
        let plan = Plan {
            warmup: 1,
            samples: ctx.pick(9, 31),
            ops: ctx.pick(50, 200),
        };
        row(
            label("socket connect + handshake"),
            Unit::Micros,
            connect(&pin, family, cert, plan),
            &|| {
                ctx.python
                    .measure("socket-connect", &pin.python_args(&fam), plan, Unit::Micros)
            },
        );
    }
}
