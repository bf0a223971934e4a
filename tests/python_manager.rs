//! Real CPython clients (pyenv's 3.11, legacy handshake, and 3.12 and 3.13, current one) of the
//! Rust manager server in Python mode (`multiprocess::manager::python`): every type SyncManager
//! serves, with Python's results and exception types (`tests/python/manager_client.py`), several
//! clients at once over a Unix socket and TCP; a client SIGKILLed while holding a lock, and while
//! owning objects; and requests that are not requests.

mod common;

use multiprocess::manager::python::{PyException, PythonManager, PythonServer, PythonStopper};
use multiprocess::pickle::{self, Value};
use multiprocess::{Address, Client, Listener};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"python manager test key";
const CLIENT: &str = include_str!("python/manager_client.py");

/// A Rust server for Python clients, run on a thread of the test; stopped and joined on drop,
/// with its socket's directory removed.
struct Served {
    stopper: PythonStopper,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    address: Address,
    dir: Option<PathBuf>,
}

impl Served {
    /// On a Unix socket in a fresh directory, with the options `tweak` sets.
    fn with(tag: &str, tweak: impl FnOnce(PythonServer) -> PythonServer) -> Served {
        let dir = std::env::temp_dir().join(format!("mp-pyman-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = Listener::builder(dir.join("m.sock"))
            .authkey(KEY)
            .bind()
            .unwrap();
        let server = tweak(PythonServer::new(listener).unwrap());
        Served {
            address: server.address().clone(),
            stopper: server.stopper(),
            thread: Some(std::thread::spawn(move || server.serve())),
            dir: Some(dir),
        }
    }

    fn start(tcp: bool) -> Served {
        let (listener, dir) = if tcp {
            let l = Listener::builder("127.0.0.1:0")
                .authkey(KEY)
                .bind()
                .unwrap();
            (l, None)
        } else {
            let dir = std::env::temp_dir().join(format!(
                "mp-pyman-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let l = Listener::builder(dir.join("m.sock"))
                .authkey(KEY)
                .bind()
                .unwrap();
            (l, Some(dir))
        };
        let server = PythonServer::new(listener).unwrap();
        let address = server.address().clone();
        let stopper = server.stopper();
        let thread = Some(std::thread::spawn(move || server.serve()));
        Served {
            stopper,
            thread,
            address,
            dir,
        }
    }

    /// The address as the client script takes it.
    fn arg(&self) -> String {
        match &self.address {
            Address::Tcp(sa) => sa.to_string(),
            Address::Unix(p) => p.display().to_string(),
            other => panic!("unexpected address {other:?}"),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The Python processes alive now, for the watchdog to kill.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Ends the test binary if a test runs past `limit` (a server that stopped answering would
/// otherwise hang the suite), killing the Python processes first.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

fn watchdog(test: &'static str, limit: Duration) -> Watchdog {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if d.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{test}: past its deadline of {limit:?}; aborting");
        for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        std::process::abort();
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A Python process running `script` with the address and key, killed on drop.
struct Py(Child);

impl From<Child> for Py {
    fn from(c: Child) -> Py {
        CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c.id());
        Py(c)
    }
}

impl Py {
    fn start(minor: u32, script: &str, served: &Served) -> Py {
        Py::from(
            Command::new(common::python(minor))
                .arg("-c")
                .arg(script)
                .arg(served.arg())
                .arg(hex(KEY))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn stdout(&mut self) -> BufReader<ChildStdout> {
        BufReader::new(self.0.stdout.take().unwrap())
    }

    /// Waits for the exit, at most until `deadline` (then kills it and fails), and gives its
    /// stdout and stderr.
    fn finish(mut self, deadline: Instant) -> (bool, String, String) {
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut out = String::new();
                let mut err = String::new();
                if let Some(mut o) = self.0.stdout.take() {
                    o.read_to_string(&mut out).unwrap();
                }
                if let Some(mut e) = self.0.stderr.take() {
                    e.read_to_string(&mut err).unwrap();
                }
                return (status.success(), out, err);
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                panic!("a Python client ran past its deadline");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let id = self.0.id();
        CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&c| c != id);
    }
}

#[test]
fn python_clients_get_pythons_semantics_from_the_rust_server() {
    let _deadline = watchdog(
        "python_clients_get_pythons_semantics_from_the_rust_server",
        Duration::from_secs(240),
    );
    let unix = Served::start(false);
    let tcp = Served::start(true);
    let deadline = Instant::now() + Duration::from_secs(90);
    // Several clients at once, of both handshakes, on both transports.
    let clients = [
        (11, Py::start(11, CLIENT, &unix)),
        (12, Py::start(12, CLIENT, &tcp)),
        (13, Py::start(13, CLIENT, &unix)),
        (11, Py::start(11, CLIENT, &tcp)),
    ];
    for (minor, py) in clients {
        let (ok, out, err) = py.finish(deadline);
        assert!(
            ok && out.lines().last().is_some_and(|l| l.starts_with("OK ")),
            "Python 3.{minor}: {out}\n{err}"
        );
        eprintln!("Python 3.{minor}: {}", out.trim());
    }
}

/// A client that takes the lock, says so, and waits to be killed.
const HOLD_LOCK: &str = r#"
import sys, time
from multiprocessing.managers import SyncManager
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
lk = m.Lock()
lk.acquire()
ident = lk._token.id
print('HELD', ident, flush=True)
time.sleep(60)
"#;

/// Acquires the lock named by argv[3] (within 10 s) through a proxy rebuilt from its token.
const TAKE_LOCK: &str = r#"
import sys
from multiprocessing.managers import SyncManager, Token, AcquirerProxy
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
lk = AcquirerProxy(Token('Lock', m.address, sys.argv[3]), 'pickle', manager=m, authkey=m._authkey)
print('GOT' if lk.acquire(timeout=10) else 'TIMEOUT', flush=True)
"#;

#[test]
fn a_python_client_killed_holding_a_lock_does_not_keep_it() {
    let _deadline = watchdog(
        "a_python_client_killed_holding_a_lock_does_not_keep_it",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    for minor in [11, 12] {
        let mut holder = Py::start(minor, HOLD_LOCK, &served);
        let mut line = String::new();
        holder.stdout().read_line(&mut line).unwrap();
        let ident = line
            .strip_prefix("HELD ")
            .unwrap_or_else(|| panic!("the holder said {line:?}"))
            .trim()
            .to_string();
        // While it lives, the lock is held: a try with a short timeout fails.
        let probe = TAKE_LOCK.replace("timeout=10", "timeout=0.2");
        let mut p = Command::new(common::python(minor));
        let out = p
            .args(["-c", &probe, &served.arg(), &hex(KEY), &ident])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "TIMEOUT");
        // Killed: its connection ends, and the lock is given back. The taker starts first and
        // rebuilds a proxy (an incref), so that the holder's death does not free the lock.
        let taker = {
            let mut c = Command::new(common::python(minor));
            c.args(["-c", TAKE_LOCK, &served.arg(), &hex(KEY), &ident])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Py::from(c.spawn().unwrap())
        };
        std::thread::sleep(Duration::from_millis(300));
        holder.0.kill().unwrap();
        holder.0.wait().unwrap();
        let (ok, out, err) = taker.finish(deadline);
        assert!(ok && out.trim() == "GOT", "Python 3.{minor}: {out}\n{err}");
    }
}

/// Makes objects, prints how many the server holds, and waits to be killed.
const OWN_OBJECTS: &str = r#"
import sys, time
from multiprocessing.managers import SyncManager
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
keep = [m.dict({'a': 1}), m.list([1, 2]), m.Queue(), m.Namespace(x=1)]
keep.append(iter(keep[0]))  # an Iterator proxy too
print('OWN', m._number_of_objects(), flush=True)
time.sleep(60)
"#;

fn number_of_objects(served: &Served) -> i64 {
    let conn = Client::builder(served.address.clone())
        .authkey(KEY)
        .connect()
        .unwrap();
    let request = Value::Tuple(vec![
        Value::None,
        Value::Str("number_of_objects".into()),
        Value::Tuple(vec![]),
        Value::Dict(vec![]),
    ]);
    conn.send_bytes(&pickle::encode(&request).unwrap()).unwrap();
    let answer = conn.recv_bytes_timeout(Duration::from_secs(30)).unwrap();
    match pickle::decode(&answer).unwrap() {
        Value::Tuple(r) if r.len() == 2 && r[0] == Value::Str("#RETURN".into()) => match r[1] {
            Value::Int(n) => n,
            ref other => panic!("number_of_objects gave {other:?}"),
        },
        other => panic!("number_of_objects answered {other:?}"),
    }
}

#[test]
fn objects_of_a_killed_python_client_are_freed() {
    let _deadline = watchdog(
        "objects_of_a_killed_python_client_are_freed",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let before = number_of_objects(&served);
    let mut owner = Py::start(12, OWN_OBJECTS, &served);
    let mut line = String::new();
    owner.stdout().read_line(&mut line).unwrap();
    let owned: i64 = line
        .strip_prefix("OWN ")
        .unwrap_or_else(|| panic!("the owner said {line:?}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(owned, before + 5);
    owner.0.kill().unwrap();
    owner.0.wait().unwrap();
    assert!(
        common::eventually(|| number_of_objects(&served) == before),
        "the dead client's objects were not freed: {} left",
        number_of_objects(&served)
    );
}

/// Sends raw bytes as a request on a fresh connection and reads the reply's kind.
fn reply_kind(conn: &multiprocess::Connection, bytes: &[u8]) -> String {
    conn.send_bytes(bytes).unwrap();
    let answer = conn.recv_bytes_timeout(Duration::from_secs(30)).unwrap();
    match pickle::decode(&answer).unwrap() {
        Value::Tuple(r) if r.len() == 2 => match &r[0] {
            Value::Str(k) => k.clone(),
            other => panic!("a reply kind {other:?}"),
        },
        other => panic!("a reply {other:?}"),
    }
}

#[test]
fn a_request_that_is_not_one_gets_a_traceback_and_the_connection_goes_on() {
    let _deadline = watchdog(
        "a_request_that_is_not_one_gets_a_traceback_and_the_connection_goes_on",
        Duration::from_secs(240),
    );
    let served = Served::start(true);
    let conn = Client::builder(served.address.clone())
        .authkey(KEY)
        .connect()
        .unwrap();
    let call = |ident: Value, method: &str, args: Vec<Value>| {
        pickle::encode(&Value::Tuple(vec![
            ident,
            Value::Str(method.into()),
            Value::Tuple(args),
            Value::Dict(vec![]),
        ]))
        .unwrap()
    };
    assert_eq!(
        reply_kind(
            &conn,
            &call(
                Value::None,
                "accept_connection",
                vec![Value::Str("t".into())]
            )
        ),
        "#RETURN"
    );
    // Not a pickle; a pickle of the wrong shape; an unknown object; a method not exposed; a
    // memo bomb.
    assert_eq!(reply_kind(&conn, b"\x80\x04garbage"), "#TRACEBACK");
    assert_eq!(
        reply_kind(&conn, &pickle::encode(&Value::Int(1)).unwrap()),
        "#TRACEBACK"
    );
    assert_eq!(
        reply_kind(&conn, &call(Value::Str("ffff".into()), "get", vec![])),
        "#TRACEBACK"
    );
    let mut bomb = vec![0x80, 4, b']', 0x94];
    for i in 0..30u8 {
        // A list of four references to the list before: 4^30 nodes once expanded.
        bomb.extend([b'(', b'h', i, b'h', i, b'h', i, b'h', i, b'l', 0x94]);
    }
    bomb.push(b'.');
    assert_eq!(reply_kind(&conn, &bomb), "#TRACEBACK");
    // The connection still serves.
    let control = Client::builder(served.address.clone())
        .authkey(KEY)
        .connect()
        .unwrap();
    let created = {
        control
            .send_bytes(&call(
                Value::None,
                "create",
                vec![Value::Str("dict".into())],
            ))
            .unwrap();
        match pickle::decode(&control.recv_bytes_timeout(Duration::from_secs(30)).unwrap()).unwrap()
        {
            Value::Tuple(r) => match &r[1] {
                Value::Tuple(t) => t[0].clone(),
                other => panic!("create gave {other:?}"),
            },
            other => panic!("create answered {other:?}"),
        }
    };
    assert_eq!(
        reply_kind(&conn, &call(created.clone(), "no_such", vec![])),
        "#TRACEBACK"
    );
    assert_eq!(
        reply_kind(
            &conn,
            &call(created.clone(), "__getitem__", vec![Value::Str("k".into())])
        ),
        "#ERROR"
    );
    assert_eq!(
        reply_kind(
            &conn,
            &call(
                created,
                "__setitem__",
                vec![Value::Str("k".into()), Value::Int(1)]
            )
        ),
        "#RETURN"
    );
}

/// Everything the Rust client does, against any server that speaks Python's protocol.
/// `alone`: no other client uses the server meanwhile, so that its object count is this one's.
fn exercise_rust_client(m: &PythonManager, alone: bool) {
    let baseline = m.number_of_objects().unwrap();
    let d = m.dict::<String, i64>().unwrap();
    d.set(&"a".into(), &1).unwrap();
    d.set(&"b".into(), &2).unwrap();
    assert_eq!(d.get(&"a".into()).unwrap(), Some(1));
    assert_eq!(d.get(&"zz".into()).unwrap(), None);
    assert!(d.contains(&"b".into()).unwrap() && !d.contains(&"c".into()).unwrap());
    assert_eq!(d.len().unwrap(), 2);
    assert_eq!(d.items().unwrap(), vec![("a".into(), 1), ("b".into(), 2)]);
    assert_eq!(d.remove(&"a".into()).unwrap(), Some(1));
    assert_eq!(d.remove(&"a".into()).unwrap(), None);
    let e = d
        .call("__getitem__", vec![Value::Str("nope".into())])
        .unwrap_err();
    assert_eq!(
        e.exception(),
        Some(&PyException::KeyError(Value::Str("nope".into())))
    );
    let l = m.list::<i64>().unwrap();
    for i in 1..=3 {
        l.push(&i).unwrap();
    }
    assert_eq!(l.get(-1).unwrap(), 3);
    assert!(matches!(
        l.get(10).unwrap_err().exception(),
        Some(PyException::IndexError(_))
    ));
    l.set(0, &10).unwrap();
    assert_eq!(l.pop().unwrap(), 3);
    assert_eq!(l.to_vec().unwrap(), vec![10, 2]);
    let ns = m.namespace().unwrap();
    ns.set("x", &5i64).unwrap();
    assert_eq!(ns.get::<i64>("x").unwrap(), 5);
    assert!(matches!(
        ns.get::<i64>("missing").unwrap_err().exception(),
        Some(PyException::AttributeError(_))
    ));
    let v = m.value("i", &3i64).unwrap();
    v.set(&4).unwrap();
    assert_eq!(v.get().unwrap(), 4);
    let q = m.queue::<String>().unwrap();
    q.put(&"job".into()).unwrap();
    assert_eq!(q.len().unwrap(), 1);
    assert_eq!(q.get().unwrap(), "job");
    let t = Instant::now();
    let e = q.get_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(e.exception(), Some(&PyException::Empty));
    let bq = m.queue_bounded::<i64>(1).unwrap();
    bq.put(&1).unwrap();
    let e = bq.put_timeout(&2, Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.exception(), Some(&PyException::Full));
    if alone {
        assert_eq!(m.number_of_objects().unwrap(), baseline + 6);
    }
    drop((d, l, ns, v, q, bq));
    if alone {
        assert!(common::eventually(
            || m.number_of_objects().unwrap() == baseline
        ));
    }
}

/// CPython's own manager server: prints its address, serves until killed.
const PY_SERVER: &str = r#"
import sys
from multiprocessing.managers import SyncManager
addr = sys.argv[1]
m = SyncManager(address=addr if addr.startswith('/') else ('127.0.0.1', 0), authkey=bytes.fromhex(sys.argv[2]))
s = m.get_server()
a = s.address
print('ADDR', a if isinstance(a, str) else '%s:%d' % a, flush=True)
s.serve_forever()
"#;

#[test]
fn the_rust_client_uses_a_cpython_manager_server() {
    let _deadline = watchdog(
        "the_rust_client_uses_a_cpython_manager_server",
        Duration::from_secs(240),
    );
    let dir = std::env::temp_dir().join(format!("mp-pyserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (minor, at) in [
        (12, "tcp".to_string()),
        (11, dir.join("py.sock").display().to_string()),
    ] {
        let mut server = Py::from(
            Command::new(common::python(minor))
                .args(["-c", PY_SERVER, &at, &hex(KEY)])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        server.stdout().read_line(&mut line).unwrap();
        let address = line
            .strip_prefix("ADDR ")
            .unwrap_or_else(|| panic!("the server said {line:?}"))
            .trim()
            .to_string();
        let m = PythonManager::connect(address.as_str(), KEY).unwrap();
        exercise_rust_client(&m, true);
        // A wrong key is refused at the handshake.
        assert!(matches!(
            PythonManager::connect(address.as_str(), b"wrong"),
            Err(multiprocess::manager::python::PyError::Connect(_))
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_rust_client_uses_the_rust_server_beside_python_clients() {
    let _deadline = watchdog(
        "the_rust_client_uses_the_rust_server_beside_python_clients",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let m = PythonManager::connect(served.address.clone(), KEY).unwrap();
    // A Python client runs the whole script while the Rust client works beside it.
    let py = Py::start(12, CLIENT, &served);
    exercise_rust_client(&m, false);
    let (ok, out, err) = py.finish(Instant::now() + Duration::from_secs(60));
    assert!(ok && out.contains("OK "), "{out}\n{err}");
}

/// A Python producer of the objects a Rust consumer made: argv[3] and [4] are their ids.
const PRODUCER: &str = r#"
import sys
from multiprocessing.managers import SyncManager, Token, DictProxy, AutoProxy
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
d = DictProxy(Token('dict', m.address, sys.argv[3]), 'pickle', manager=m, authkey=m._authkey)
q = AutoProxy(Token('Queue', m.address, sys.argv[4]), 'pickle', manager=m, authkey=m._authkey)
for i in range(100):
    q.put({'n': i, 'square': i * i})
d['produced'] = 100
d['by'] = 'python %d.%d' % sys.version_info[:2]
"#;

#[test]
fn a_python_producer_feeds_a_rust_consumer_through_the_rust_server() {
    let _deadline = watchdog(
        "a_python_producer_feeds_a_rust_consumer_through_the_rust_server",
        Duration::from_secs(240),
    );
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Job {
        n: i64,
        square: i64,
    }
    let served = Served::start(false);
    let m = PythonManager::connect(served.address.clone(), KEY).unwrap();
    let status = m.dict::<String, i64>().unwrap();
    let jobs = m.queue::<Job>().unwrap();
    let mut producer = Command::new(common::python(13));
    producer.args([
        "-c",
        PRODUCER,
        &served.arg(),
        &hex(KEY),
        status.id(),
        jobs.id(),
    ]);
    let py = Py::from(
        producer
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for i in 0..100 {
        let job = jobs.get_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            job,
            Job {
                n: i,
                square: i * i
            }
        );
    }
    let (ok, out, err) = py.finish(Instant::now() + Duration::from_secs(60));
    assert!(ok, "{out}\n{err}");
    assert_eq!(status.get(&"produced".into()).unwrap(), Some(100));
}

const SUITE: &str = include_str!("python/cpython_manager_suite.py");

/// CPython's own tests of manager objects (`_TestContainers`, `_TestQueue`, `_TestLock`,
/// `_TestSemaphore`, `_TestCondition`, `_TestEvent`, `_TestBarrier`), from the `test` package of
/// each interpreter, as clients of the Rust server; children forked by the tests use the proxies
/// too. Left out: `_TestBarrier.test_action` (the action would run Python in the server) and
/// `_TestQueue.test_no_import_lock_contention` (no manager in it).
#[test]
fn cpythons_manager_tests_pass_against_the_rust_server() {
    let _deadline = watchdog(
        "cpythons_manager_tests_pass_against_the_rust_server",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let deadline = Instant::now() + Duration::from_secs(180);
    let runs: Vec<(u32, Py)> = [11, 13]
        .into_iter()
        .map(|minor| {
            let mut c = Command::new(common::python(minor));
            c.args(["-c", SUITE, &served.arg(), &hex(KEY)])
                .args([
                    "_TestContainers",
                    "_TestQueue",
                    "_TestLock",
                    "_TestSemaphore",
                    "_TestCondition",
                    "_TestEvent",
                    "_TestBarrier",
                    "!test_action",
                    // Uses a multiprocessing.Queue, not the manager, with a 3 s timeout that
                    // a loaded 2-core machine can miss.
                    "!test_no_import_lock_contention",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (minor, Py::from(c.spawn().unwrap()))
        })
        .collect();
    for (minor, py) in runs {
        let (ok, out, err) = py.finish(deadline);
        let last = out.lines().last().unwrap_or_default().to_string();
        assert!(
            ok && last.contains("FAILED 0"),
            "Python 3.{minor}: {out}\n{err}"
        );
        // Most of each class ran (a few are skipped by the suite itself for managers).
        let ran: usize = last.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(ran >= 40, "Python 3.{minor} ran only {ran} tests: {out}");
        eprintln!("Python 3.{minor}: {last}");
    }
}

/// `_TestRemoteManager` in pickle form: a queue the server shares under `get_queue`, a putter
/// process declaring it with another manager class, values of many types round trip.
const REMOTE_QUEUE: &str = r#"
import sys
from multiprocessing import Process
from multiprocessing.managers import BaseManager
values = ['hello world', None, True, 2.25, 'hall\xe5 v\xe4rlden',
          '\u043f\u0440\u0438\u0432\u0456\u0442 \u0441\u0432\u0456\u0442', b'hall\xe5 v\xe4rlden']
class QueueManager2(BaseManager):
    pass
QueueManager2.register('get_queue')
addr, key = sys.argv[1], bytes.fromhex(sys.argv[2])
def putter():
    m = QueueManager2(address=addr, authkey=key); m.connect()
    m.get_queue().put(tuple(values))
if __name__ == '__main__':
    p = Process(target=putter); p.start()
    m = QueueManager2(address=addr, authkey=key); m.connect()
    q = m.get_queue()
    got = q.get(timeout=30)
    p.join()
    assert got == tuple(values), got
    # Another client's get_queue() is the same queue.
    m2 = QueueManager2(address=addr, authkey=key); m2.connect()
    m2.get_queue().put('again')
    assert q.get(timeout=5) == 'again'
    print('OK', flush=True)
"#;

#[test]
fn a_shared_queue_is_every_clients_get_queue() {
    let _deadline = watchdog(
        "a_shared_queue_is_every_clients_get_queue",
        Duration::from_secs(240),
    );
    let served = Served::with("share", |s| s.share("get_queue", "Queue").unwrap());
    assert!(
        PythonServer::new(
            Listener::builder("127.0.0.1:0")
                .authkey(KEY)
                .bind()
                .unwrap()
        )
        .unwrap()
        .share("get_queue", "Nope")
        .is_err()
    );
    let script = std::env::temp_dir().join(format!("mp-pyshare-{}.py", std::process::id()));
    // A file, not `-c`: the putter is a child process started with the default start method,
    // which must find `putter` in a module.
    std::fs::write(&script, REMOTE_QUEUE).unwrap();
    let mut c = Command::new(common::python(12));
    c.arg(&script)
        .arg(served.arg())
        .arg(hex(KEY))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ok, out, err) =
        Py::from(c.spawn().unwrap()).finish(Instant::now() + Duration::from_secs(60));
    let _ = std::fs::remove_file(&script);
    assert!(ok && out.trim() == "OK", "{out}\n{err}");
}

/// `_TestManagerRestart`: a server stopped and started again at once on the same TCP address
/// (clients had connected, so the old port has connections in TIME_WAIT).
#[test]
fn a_server_restarts_at_once_on_its_address() {
    let _deadline = watchdog(
        "a_server_restarts_at_once_on_its_address",
        Duration::from_secs(240),
    );
    let first = Served::start(true);
    let address = first.address.clone();
    let m = PythonManager::connect(address.clone(), KEY).unwrap();
    let d = m.dict::<String, i64>().unwrap();
    d.set(&"k".into(), &1).unwrap();
    drop(d);
    drop(m);
    drop(first);
    let listener = Listener::builder(address.clone())
        .authkey(KEY)
        .bind()
        .expect("the address is free again at once");
    let server = PythonServer::new(listener).unwrap();
    let stopper = server.stopper();
    let t = std::thread::spawn(move || server.serve());
    let m = PythonManager::connect(address, KEY).unwrap();
    assert_eq!(m.number_of_objects().unwrap(), 0);
    drop(m);
    stopper.stop();
    t.join().unwrap().unwrap();
}

/// Proxies made and dropped as fast as Python clients make them (each a create, an incref, a
/// decref, a method connection and a last decref), from several processes at once, with a shared
/// counter under a lock: nothing lost, and every object freed at the end.
const CHURN: &str = r#"
import sys
from multiprocessing.managers import SyncManager, Token, AcquirerProxy, DictProxy
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
lk = AcquirerProxy(Token('Lock', m.address, sys.argv[3]), 'pickle', manager=m, authkey=m._authkey)
total = DictProxy(Token('dict', m.address, sys.argv[4]), 'pickle', manager=m, authkey=m._authkey)
for i in range(150):
    d = m.dict({'i': i})
    l = m.list([i])
    assert d['i'] == i and l[0] == i
    del d, l
    with lk:
        total['n'] = total['n'] + 1
print('DONE', flush=True)
"#;

#[test]
fn proxy_churn_from_several_processes_loses_nothing() {
    let _deadline = watchdog(
        "proxy_churn_from_several_processes_loses_nothing",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let m = PythonManager::connect(served.address.clone(), KEY).unwrap();
    let baseline = m.number_of_objects().unwrap();
    let lock = m.object("Lock", vec![]).unwrap();
    let total = m.dict::<String, i64>().unwrap();
    total.set(&"n".into(), &0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let clients: Vec<Py> = [11, 12, 13, 12]
        .into_iter()
        .map(|minor| {
            let mut c = Command::new(common::python(minor));
            c.args(["-c", CHURN, &served.arg(), &hex(KEY), lock.id(), total.id()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Py::from(c.spawn().unwrap())
        })
        .collect();
    for py in clients {
        let (ok, out, err) = py.finish(deadline);
        assert!(ok && out.trim() == "DONE", "{out}\n{err}");
    }
    assert_eq!(total.get(&"n".into()).unwrap(), Some(4 * 150));
    drop((lock, total));
    assert!(
        common::eventually(|| m.number_of_objects().unwrap() == baseline),
        "{} objects left",
        m.number_of_objects().unwrap()
    );
}

/// Proxies handed from one client to another through a queue while other clients make and drop
/// objects (every drop sweeps): none of them is freed on the way.
const IN_TRANSIT: &str = r#"
import sys, threading, multiprocessing
from multiprocessing.managers import SyncManager
key = bytes.fromhex(sys.argv[2])
multiprocessing.current_process().authkey = key   # proxies rebuilt from replies use it (gh-78740)
m = SyncManager(address=sys.argv[1], authkey=key); m.connect()
q = m.Queue()
stop = False
def churn():
    while not stop:
        x = m.Value('i', 1); del x
def producer(n):
    for i in range(n):
        p = m.dict({'i': i}); q.put(p); del p
threads = [threading.Thread(target=churn) for _ in range(2)] + [threading.Thread(target=producer, args=(200,))]
for t in threads: t.start()
got = []
try:
    for _ in range(200):
        got.append(q.get(timeout=30)['i'])
finally:
    stop = True
    for t in threads: t.join()
assert got == list(range(200)), got[:10]
print('OK', flush=True)
"#;

#[test]
fn proxies_in_transit_are_not_freed_by_the_sweep() {
    let _deadline = watchdog(
        "proxies_in_transit_are_not_freed_by_the_sweep",
        Duration::from_secs(240),
    );
    let served = Served::start(false);
    let (ok, out, err) =
        Py::start(12, IN_TRANSIT, &served).finish(Instant::now() + Duration::from_secs(120));
    assert!(ok && out.trim() == "OK", "{out}\n{err}");
}

/// Takes both slots of the BoundedSemaphore argv[3], says so, and waits to be killed.
const HOLD_SLOTS: &str = r#"
import sys, time
from multiprocessing.managers import SyncManager, Token, AcquirerProxy
m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2])); m.connect()
s = AcquirerProxy(Token('BoundedSemaphore', m.address, sys.argv[3]), 'pickle', manager=m, authkey=m._authkey)
s.acquire(); s.acquire()
print('HELD', flush=True)
time.sleep(60)
"#;

#[test]
fn the_slots_of_a_killed_python_client_come_back_when_asked() {
    let _deadline = watchdog(
        "the_slots_of_a_killed_python_client_come_back_when_asked",
        Duration::from_secs(240),
    );
    for give_back in [false, true] {
        let served = Served::with(&format!("slots-{give_back}"), |s| {
            s.give_back_slots(give_back)
        });
        let m = PythonManager::connect(served.address.clone(), KEY).unwrap();
        let sem = m.object("BoundedSemaphore", vec![Value::Int(2)]).unwrap();
        let mut c = Command::new(common::python(12));
        c.args(["-c", HOLD_SLOTS, &served.arg(), &hex(KEY), sem.id()])
            .stdout(Stdio::piped());
        let mut holder = Py::from(c.spawn().unwrap());
        let mut line = String::new();
        holder.stdout().read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "HELD");
        holder.0.kill().unwrap();
        holder.0.wait().unwrap();
        // acquire(True, 3): within 3 s only if the dead client's slots came back.
        let got = sem
            .call("acquire", vec![Value::Bool(true), Value::Int(3)])
            .unwrap();
        assert_eq!(got, Value::Bool(give_back), "give_back_slots({give_back})");
    }
}

/// A Python client of the objects a Rust client named (`register(name)` finds them), checking
/// what the Rust client stored and storing its own.
const OF_RUST: &str = r#"
import sys
from multiprocessing.managers import SyncManager, DictProxy, ListProxy, AcquirerProxy, ValueProxy
class M(SyncManager):
    pass
M.register('shared', proxytype=DictProxy)
M.register('log', proxytype=ListProxy)
M.register('jobs')
M.register('gate', proxytype=AcquirerProxy)
M.register('count', proxytype=ValueProxy)
a = sys.argv[1]
addr = a if a.startswith('/') else (a.rsplit(':', 1)[0], int(a.rsplit(':', 1)[1]))
m = M(address=addr, authkey=bytes.fromhex(sys.argv[2])); m.connect()
d, log, jobs, gate, count = m.shared(), m.log(), m.jobs(), m.gate(), m.count()
# What the Rust client stored, as Python sees it: structs are dicts, vectors lists, and the key
# 1 is the key 1.0 and True.
assert d['point'] == {'x': 3, 'y': -4}, d['point']
assert d['one'] == [1, 2, 3], d['one']
assert log[-1] == 'from rust' and len(log) == 1, log[:]
assert count.value == 41
count.value = 42
d['from python'] = [4, 5]
d['version'] = list(sys.version_info[:2])
log.append('from python')
for i in range(50):
    jobs.put(i * i)
# The Rust client holds the gate: it cannot be taken until it lets go.
assert not gate.acquire(timeout=0.2)
print('BLOCKED', flush=True)
assert gate.acquire(timeout=30)
gate.release()
print('OK', flush=True)
"#;

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

/// The typed proxies of `multiprocess::manager` (a Rust `Manager`) on the server for Python
/// clients: the same objects as the Python clients', under every start method for the Rust
/// children that receive them, over a Unix socket and TCP.
#[test]
fn rust_manager_proxies_share_objects_with_python_clients() {
    use multiprocess::StartMethod;
    use multiprocess::manager::{Manager, ManagerError, RemoteError};
    let _deadline = watchdog(
        "rust_manager_proxies_share_objects_with_python_clients",
        Duration::from_secs(240),
    );
    for tcp in [false, true] {
        let served = Served::start(tcp);
        let m = Manager::connect(served.address.clone(), KEY).unwrap();
        let d = m.named("shared").dict::<String, Point>().unwrap();
        d.set(&"point".into(), &Point { x: 3, y: -4 }).unwrap();
        let any = m.named("shared").dict::<String, Vec<i64>>().unwrap();
        any.set(&"one".into(), &vec![1, 2, 3]).unwrap();
        let log = m.named("log").list::<String>().unwrap();
        log.append(&"from rust".into()).unwrap();
        let jobs = m.named("jobs").queue::<i64>(0).unwrap();
        let gate = m.named("gate").lock().unwrap();
        let count = m.named("count").value(&41i64).unwrap();
        // Another kind under a taken name is refused.
        assert!(matches!(
            m.named("jobs").dict::<String, i64>(),
            Err(ManagerError::Remote(RemoteError::WrongKind { .. }))
        ));
        let held = gate.lock().unwrap();
        let mut py = Py::start(if tcp { 11 } else { 13 }, OF_RUST, &served);
        let mut out = py.stdout();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.trim() != "BLOCKED" {
            let (_, _, err) = py.finish(Instant::now() + Duration::from_secs(60));
            panic!("the Python client said {line:?}: {err}");
        }
        drop(held);
        for i in 0..50 {
            assert_eq!(jobs.get_timeout(Duration::from_secs(30)).unwrap(), i * i);
        }
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "OK");
        let (ok, rest, err) = py.finish(Instant::now() + Duration::from_secs(60));
        assert!(ok, "{rest}\n{err}");
        assert_eq!(
            any.get(&"from python".into()).unwrap(),
            Some(vec![4, 5]),
            "{err}"
        );
        assert_eq!(count.get().unwrap(), 42);
        assert_eq!(log.snapshot().unwrap().1, ["from rust", "from python"]);
        // Python's semantics for the Rust client too: 1.0, 1 and True are one key (one named
        // dict, through proxies of three key types).
        let floats = m.named("numbers").dict::<f64, String>().unwrap();
        floats.set(&1.0, &"float".into()).unwrap();
        let ints = m.named("numbers").dict::<i64, String>().unwrap();
        assert_eq!(ints.get(&1).unwrap().as_deref(), Some("float"));
        ints.set(&1, &"int".into()).unwrap();
        let bools = m.named("numbers").dict::<bool, String>().unwrap();
        assert_eq!(bools.get(&true).unwrap().as_deref(), Some("int"));
        assert_eq!(floats.len().unwrap(), 1);
        drop((floats, ints, bools));
        // Children started every way reach the same objects through proxies in their argument.
        for method in StartMethod::ALL {
            let child = multiprocess::Process::builder()
                .start_method(method)
                .spawn(
                    fill_from_child,
                    (log.clone(), jobs.clone(), method.to_string()),
                )
                .unwrap();
            assert_eq!(
                child.join_timeout(Duration::from_secs(60)).unwrap(),
                Ok::<(), String>(())
            );
            assert_eq!(log.get(-1).unwrap(), format!("child {method}"));
            assert_eq!(jobs.get_timeout(Duration::from_secs(10)).unwrap(), 7);
        }
        drop((d, any, log, jobs, gate, count));
    }
}

fn fill_from_child(
    (log, jobs, method): (
        multiprocess::manager::List<String>,
        multiprocess::manager::Queue<i64>,
        String,
    ),
) -> Result<(), String> {
    log.append(&format!("child {method}"))
        .map_err(|e| e.to_string())?;
    jobs.put(&7).map_err(|e| e.to_string())
}

/// What the server for Python clients does not serve to a Rust client is refused with a typed
/// error, and what a Rust client holds goes with its connection: its objects are freed and the
/// locks its threads hold are given back.
#[test]
fn a_rust_client_of_the_python_server_gets_typed_errors_and_leaves_nothing_held() {
    use multiprocess::manager::{Manager, ManagerError, RemoteError};
    let _deadline = watchdog(
        "a_rust_client_of_the_python_server_gets_typed_errors_and_leaves_nothing_held",
        Duration::from_secs(120),
    );
    let served = Served::start(false);
    let before = number_of_objects(&served);
    let m = Manager::connect(served.address.clone(), KEY).unwrap();
    let l = m.list::<i64>().unwrap();
    l.extend(&[1, 2, 3]).unwrap();
    assert!(matches!(
        l.get(5),
        Err(ManagerError::Remote(RemoteError::IndexError {
            index: 5,
            len: 3
        }))
    ));
    assert!(matches!(
        l.remove(&9),
        Err(ManagerError::Remote(RemoteError::NotFound))
    ));
    assert_eq!(l.pop(Some(-1)).unwrap(), 3);
    let q = m.queue::<String>(1).unwrap();
    q.put(&"a".into()).unwrap();
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(&"b".into(), Duration::from_millis(100)),
        Err(ManagerError::Remote(RemoteError::Full))
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
    // A key Python cannot hash is Python's TypeError, in words.
    let d = m.dict::<Vec<i64>, i64>().unwrap();
    match d.set(&vec![1], &1) {
        Err(ManagerError::Remote(RemoteError::Exception(e))) => {
            assert!(e.contains("TypeError") && e.contains("unhashable"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A version moves with every change, and a watch sees it.
    let v0 = l.version().unwrap();
    let watcher = {
        let l = l.clone();
        std::thread::spawn(move || l.watch_timeout(v0, Duration::from_secs(30)))
    };
    std::thread::sleep(Duration::from_millis(50));
    l.append(&4).unwrap();
    assert!(watcher.join().unwrap().unwrap().is_some_and(|v| v > v0));
    assert!(matches!(
        m.barrier(0),
        Err(ManagerError::Remote(RemoteError::NoParties))
    ));
    // Bools would come back as ints from an array: refused, as other items than numbers are.
    assert!(matches!(
        m.array(&[true, false]),
        Err(ManagerError::Remote(RemoteError::Unsupported(_)))
    ));
    assert_eq!(m.array(&[1.5, 2.0]).unwrap().get(-1).unwrap(), 2.0);
    let ns = m.namespace().unwrap();
    ns.set("x", &1).unwrap();
    assert!(ns.remove("x").unwrap());
    assert!(!ns.remove("x").unwrap());
    drop(ns);
    let lock = m.lock().unwrap();
    let sem = m.semaphore(2).unwrap();
    sem.acquire().unwrap();
    assert_eq!(sem.value().unwrap(), 1);
    assert!(number_of_objects(&served) > before);
    // A second process holds the lock, then its connection ends without a release.
    let child = multiprocess::Process::builder()
        .spawn(hold_and_vanish, lock.clone())
        .unwrap();
    assert_eq!(
        child.join_timeout(Duration::from_secs(60)).unwrap(),
        Ok::<(), String>(())
    );
    assert!(lock.acquire_timeout(Duration::from_secs(30)).unwrap());
    lock.release().unwrap();
    drop((l, q, d, lock, sem, m));
    assert!(
        common::eventually(|| number_of_objects(&served) == before),
        "the objects of a Rust client that let go are freed"
    );
}

fn hold_and_vanish(lock: multiprocess::manager::Lock) -> Result<(), String> {
    let g = lock.lock().map_err(|e| e.to_string())?;
    std::mem::forget(g);
    Ok(())
}

/// A Rust `Manager` that reaches CPython's own manager server is told which client to use.
#[test]
fn a_rust_manager_at_a_cpython_server_is_told_to_use_the_python_client() {
    let _deadline = watchdog(
        "a_rust_manager_at_a_cpython_server_is_told_to_use_the_python_client",
        Duration::from_secs(120),
    );
    let mut server = Py::from(
        Command::new(common::python(12))
            .args(["-c", PY_SERVER, "tcp", &hex(KEY)])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    server.stdout().read_line(&mut line).unwrap();
    let address = line.strip_prefix("ADDR ").unwrap().trim().to_string();
    match multiprocess::manager::Manager::connect(address.as_str(), KEY) {
        Err(multiprocess::manager::ManagerError::Decode(e)) => {
            assert!(e.contains("PythonManager"), "{e}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

fn take_a_slot_and_exit(sem: multiprocess::manager::Semaphore) -> Result<(), String> {
    sem.acquire().map_err(|e| e.to_string())
}

/// With `give_back_slots`, the semaphore slots a Rust client process took and did not give back
/// come back when it is gone, as a Python client's do.
#[test]
fn the_slots_of_a_gone_rust_client_come_back_when_asked() {
    let _deadline = watchdog(
        "the_slots_of_a_gone_rust_client_come_back_when_asked",
        Duration::from_secs(120),
    );
    let served = Served::with("rustslots", |s| s.give_back_slots(true));
    let m = multiprocess::manager::Manager::connect(served.address.clone(), KEY).unwrap();
    let sem = m.semaphore(2).unwrap();
    for method in multiprocess::StartMethod::ALL {
        let child = multiprocess::Process::builder()
            .start_method(method)
            .spawn(take_a_slot_and_exit, sem.clone())
            .unwrap();
        assert_eq!(
            child.join_timeout(Duration::from_secs(60)).unwrap(),
            Ok::<(), String>(())
        );
        assert!(
            common::eventually(|| sem.value().unwrap() == 2),
            "{method}: the slot of a gone client stays taken"
        );
    }
}

fn name_then_id(
    (go, name, at): (multiprocess::manager::Event, String, PathBuf),
) -> Result<u64, String> {
    let m =
        multiprocess::manager::Manager::connect(at.as_path(), KEY).map_err(|e| e.to_string())?;
    go.wait().map_err(|e| e.to_string())?;
    let d = m.named(&name).dict::<u8, u8>().map_err(|e| e.to_string())?;
    Ok(d.id())
}

/// Clients of several processes asking for one name at once all get the one object.
#[test]
fn clients_racing_for_a_name_get_one_object() {
    let _deadline = watchdog(
        "clients_racing_for_a_name_get_one_object",
        Duration::from_secs(120),
    );
    let served = Served::start(false);
    let Address::Unix(at) = served.address.clone() else {
        unreachable!("a Unix socket")
    };
    let m = multiprocess::manager::Manager::connect(served.address.clone(), KEY).unwrap();
    for round in 0..20 {
        let go = m.event().unwrap();
        let name = format!("race-{round}");
        let children: Vec<_> = (0..4)
            .map(|_| {
                multiprocess::Process::builder()
                    // Fork: a child forked while another thread of this binary connects must
                    // not find the connection table locked (it hung, before the fork gate).
                    .start_method(multiprocess::StartMethod::Fork)
                    .spawn(name_then_id, (go.clone(), name.clone(), at.clone()))
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        go.set().unwrap();
        let ids: Vec<u64> = children
            .into_iter()
            .map(|c| c.join_timeout(Duration::from_secs(60)).unwrap().unwrap())
            .collect();
        assert!(ids.iter().all(|&i| i == ids[0]), "round {round}: {ids:?}");
    }
}
