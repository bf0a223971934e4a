//! Group `manager`: a manager server in a forked child and this process as its client, against
//! Python's `multiprocessing.Manager()` (also forked) on the same shapes. Medians:
//! - `manager dict set+get round trip` (µs): `d.set(k, v)` then `d.get(k)`, two round trips (Python:
//!   `d[k] = v; d[k]`). DESIGN.md: ≤ 30 µs; the issue: ≥ 3× Python.
//! - `manager queue put+get round trip` (µs): `q.put(i)` then `q.get()`, two round trips (Python:
//!   the same on `Manager().Queue()`).
//! - `manager 1000 dict updates, one at a time` (ms): 1000 `set` calls (Python: 1000 `d[i] = i`).
//! - `manager 1000 dict updates, batched` (ms): the same 1000 in one `Batch` (one round trip;
//!   Python has no batch: its column is `d.update({...})`, its one call for many updates).
//! - `manager 1000 dict updates, Dict::update` (ms): the same 1000 in one `update` call (Python:
//!   `d.update({...})`).
//! - `manager snapshot of a 10 000-entry dict` (ms): `snapshot()`, entries and version in one round
//!   trip (Python: `d.copy()`).
//! - `manager served call round trip` (µs): one call of a type of the bench's own (`Serve`), `Add(1)`
//!   answering the total (Python: `c.add(1)` on a `BaseManager.register`ed class's proxy).

use multiprocess::StartMethod;
use multiprocess::manager::{Dict, Manager, Registrations, Registry, Serve};

use crate::Ctx;
use crate::measure::Plan;
use crate::table::{Cell, Row, Table, Target, Unit};

fn start() -> Result<Manager, String> {
    Manager::builder()
        .start_method(StartMethod::Fork)
        .start()
        .map_err(|e| format!("manager start failed: {e}"))
}

/// The served type: a counter.
struct Counter(u64);

impl Serve for Counter {
    const NAME: &'static str = "bench.Counter";
    type Init = ();
    type Request = u64;
    type Response = u64;
    fn new(_: ()) -> Counter {
        Counter(0)
    }
    fn call(&mut self, n: u64) -> u64 {
        self.0 += n;
        self.0
    }
}

struct BenchTypes;

impl Registrations for BenchTypes {
    fn register(r: &mut Registry) {
        r.register::<Counter>();
    }
}

fn served_rt(plan: Plan) -> Result<f64, String> {
    let m = Manager::builder()
        .start_method(StartMethod::Fork)
        .serving::<BenchTypes>()
        .start()
        .map_err(|e| format!("manager start failed: {e}"))?;
    let c = m.served::<Counter>(&()).map_err(|e| e.to_string())?;
    let mut expected = 0;
    plan.run(|ops| {
        for _ in 0..ops {
            expected += 1;
            if c.call(&1).map_err(|e| e.to_string())? != expected {
                return Err("a wrong total".to_string());
            }
        }
        Ok::<(), String>(())
    })
}

fn dict(m: &Manager) -> Result<Dict<u64, u64>, String> {
    m.dict().map_err(|e| e.to_string())
}

fn set_get(plan: Plan) -> Result<f64, String> {
    set_get_on(&start()?, plan)
}

fn set_get_on(m: &Manager, plan: Plan) -> Result<f64, String> {
    let d = dict(m)?;
    plan.run(|ops| {
        for i in 0..ops as u64 {
            d.set(&(i % 64), &i).map_err(|e| e.to_string())?;
            if d.get(&(i % 64)).map_err(|e| e.to_string())? != Some(i) {
                return Err("a wrong value".to_string());
            }
        }
        Ok::<(), String>(())
    })
}

/// How `updates` sends its 1000.
#[derive(Clone, Copy)]
enum Way {
    OneAtATime,
    Batch,
    Update,
}

fn queue_rt(plan: Plan) -> Result<f64, String> {
    let m = start()?;
    let q = m.queue::<u64>(0).map_err(|e| e.to_string())?;
    plan.run(|ops| {
        for i in 0..ops as u64 {
            q.put(&i).map_err(|e| e.to_string())?;
            if q.get().map_err(|e| e.to_string())? != i {
                return Err("a wrong item".to_string());
            }
        }
        Ok::<(), String>(())
    })
}

fn updates(plan: Plan, way: Way) -> Result<f64, String> {
    let m = start()?;
    let d = dict(&m)?;
    plan.run(|ops| {
        for _ in 0..ops {
            match way {
                Way::Batch => {
                    let mut b = m.batch();
                    for i in 0..1000u64 {
                        b.dict_set(&d, &i, &i).map_err(|e| e.to_string())?;
                    }
                    b.send().map_err(|e| e.to_string())?;
                }
                Way::Update => {
                    let entries: Vec<(u64, u64)> = (0..1000).map(|i| (i, i)).collect();
                    d.update(entries.iter().map(|(k, v)| (k, v)))
                        .map_err(|e| e.to_string())?;
                }
                Way::OneAtATime => {
                    for i in 0..1000u64 {
                        d.set(&i, &i).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok::<(), String>(())
    })
}

fn snapshot(plan: Plan) -> Result<f64, String> {
    let m = start()?;
    let d = dict(&m)?;
    let entries: Vec<(u64, u64)> = (0..10_000).map(|i| (i, i)).collect();
    d.update(entries.iter().map(|(k, v)| (k, v)))
        .map_err(|e| e.to_string())?;
    plan.run(|ops| {
        for _ in 0..ops {
            let (_, items) = d.snapshot().map_err(|e| e.to_string())?;
            if items.len() != 10_000 {
                return Err("a short snapshot".to_string());
            }
        }
        Ok::<(), String>(())
    })
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: ctx.pick(100, 500),
    };
    table.push(
        Row::compare(
            "manager dict set+get round trip",
            Unit::Micros,
            set_get(plan),
            ctx.python
                .measure("manager-dict-rt", &[], plan, Unit::Micros),
        )
        .target(Target::AtMost(30.0)),
    );
    table.push(Row::compare(
        "manager queue put+get round trip",
        Unit::Micros,
        queue_rt(plan),
        ctx.python
            .measure("manager-queue-rt", &[], plan, Unit::Micros),
    ));
    table.push(Row::compare(
        "manager served call round trip",
        Unit::Micros,
        served_rt(plan),
        ctx.python
            .measure("manager-served-rt", &[], plan, Unit::Micros),
    ));
    python_clients(ctx, plan, table);
    let plan = Plan {
        warmup: 1,
        samples: ctx.pick(5, 11),
        ops: 1,
    };
    table.push(Row::compare(
        "manager 1000 dict updates, one at a time",
        Unit::Millis,
        updates(plan, Way::OneAtATime),
        ctx.python
            .measure("manager-updates-each", &[], plan, Unit::Millis),
    ));
    table.push(Row::compare(
        "manager 1000 dict updates, batched (Python: d.update)",
        Unit::Millis,
        updates(plan, Way::Batch),
        ctx.python
            .measure("manager-updates", &[], plan, Unit::Millis),
    ));
    table.push(Row::compare(
        "manager 1000 dict updates, Dict::update (Python: d.update)",
        Unit::Millis,
        updates(plan, Way::Update),
        ctx.python
            .measure("manager-updates", &[], plan, Unit::Millis),
    ));
    table.push(Row::compare(
        "manager snapshot of a 10 000-entry dict (Python: d.copy())",
        Unit::Millis,
        snapshot(plan),
        ctx.python
            .measure("manager-snapshot", &[], plan, Unit::Millis),
    ));
}

/// Python's own client (`SyncManager(...).connect()`, unchanged) against the Rust server in
/// Python mode (`manager::python::PythonServer`, on a Unix socket, on a thread here), and against
/// Python's server (`multiprocessing.Manager()`), by the same script in the same run.
fn python_clients(ctx: &Ctx, plan: Plan, table: &mut Table) {
    const KEY: &[u8] = b"bench python clients";
    let dir = std::env::temp_dir().join(format!("mp-bench-pyman-{}", std::process::id()));
    let served = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let l = multiprocess::Listener::builder(dir.join("m.sock"))
                .authkey(KEY)
                .bind()
                .map_err(|e| e.to_string())?;
            multiprocess::manager::python::PythonServer::new(l).map_err(|e| e.to_string())
        });
    let (stopper, thread, extra) = match served {
        Ok(server) => {
            let stopper = server.stopper();
            let extra = vec![
                "--connect".to_string(),
                dir.join("m.sock").display().to_string(),
                "--key".to_string(),
                KEY.iter().map(|b| format!("{b:02x}")).collect(),
            ];
            (
                Some(stopper),
                Some(std::thread::spawn(move || server.serve())),
                Some(extra),
            )
        }
        Err(e) => {
            eprintln!("manager: the Python-mode server did not start: {e}");
            (None, None, None)
        }
    };
    let mut python_dict = None;
    for (figure, name) in [
        ("pyclient-dict", "Python client: dict set+get round trip"),
        ("pyclient-list", "Python client: list append"),
        ("pyclient-queue", "Python client: queue put+get round trip"),
        (
            "pyclient-churn",
            "Python client: a dict proxy made, used once and dropped",
        ),
    ] {
        // The churn figure is a whole proxy's life (five connections): fewer of them per batch.
        let plan = if figure == "pyclient-churn" {
            Plan {
                ops: ctx.pick(30, 100),
                samples: ctx.pick(5, 11),
                ..plan
            }
        } else {
            plan
        };
        let ours = match &extra {
            Some(extra) => ctx.python.measure(figure, extra, plan, Unit::Micros),
            None => Cell::Error("the Python-mode server did not start".into()),
        };
        let theirs = ctx.python.measure(figure, &[], plan, Unit::Micros);
        if figure == "pyclient-dict" {
            python_dict = Some(theirs.clone());
        }
        table.push(Row::cells(
            format!("{name} (Rust server; python: Python's server)"),
            Unit::Micros,
            ours,
            theirs,
        ));
    }
    // The Rust manager's own proxies on the same server (pickled values, Python's semantics),
    // beside the Python client of Python's server measured above.
    let ours = match &stopper {
        Some(_) => Manager::connect(dir.join("m.sock"), KEY)
            .map_err(|e| e.to_string())
            .and_then(|m| set_get_on(&m, plan)),
        None => Err("the Python-mode server did not start".into()),
    };
    table.push(Row::compare(
        "manager::Dict set+get round trip on the server for Python clients (python: Python's client and server)",
        Unit::Micros,
        ours,
        python_dict.unwrap_or_else(|| Cell::Error("not measured".into())),
    ));
    if let Some(s) = stopper {
        s.stop();
    }
    if let Some(t) = thread {
        let _ = t.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
