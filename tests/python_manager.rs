//! Real CPython clients (pyenv's 3.11, legacy handshake, and 3.12 and 3.13, current one) of the
//! Rust manager server in Python mode (`multiprocess::manager::python`): every type SyncManager
//! serves, with Python's results and exception types (`tests/python/manager_client.py`), several
//! clients at once over a Unix socket and TCP; a client SIGKILLed while holding a lock, and while
//! owning objects; and requests that are not requests.

mod common;

use multiprocess::manager::python::{PythonServer, PythonStopper};
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

/// A Python process running `script` with the address and key, killed on drop.
struct Py(Child);

impl Py {
    fn start(minor: u32, script: &str, served: &Served) -> Py {
        Py(Command::new(common::python(minor))
            .arg("-c")
            .arg(script)
            .arg(served.arg())
            .arg(hex(KEY))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap())
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
    }
}

#[test]
fn python_clients_get_pythons_semantics_from_the_rust_server() {
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
            Py(c.spawn().unwrap())
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
    match pickle::decode(&conn.recv_bytes().unwrap()).unwrap() {
        Value::Tuple(r) if r.len() == 2 && r[0] == Value::Str("#RETURN".into()) => match r[1] {
            Value::Int(n) => n,
            ref other => panic!("number_of_objects gave {other:?}"),
        },
        other => panic!("number_of_objects answered {other:?}"),
    }
}

#[test]
fn objects_of_a_killed_python_client_are_freed() {
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
    match pickle::decode(&conn.recv_bytes().unwrap()).unwrap() {
        Value::Tuple(r) if r.len() == 2 => match &r[0] {
            Value::Str(k) => k.clone(),
            other => panic!("a reply kind {other:?}"),
        },
        other => panic!("a reply {other:?}"),
    }
}

#[test]
fn a_request_that_is_not_one_gets_a_traceback_and_the_connection_goes_on() {
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
        match pickle::decode(&control.recv_bytes().unwrap()).unwrap() {
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
