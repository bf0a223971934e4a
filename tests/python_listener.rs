//! Listener and Client against real CPython, both directions, over a Unix socket file, an abstract
//! name and TCP on loopback: Python 3.11 (the legacy HMAC-MD5 handshake) and 3.12 (the current one,
//! `{sha256}`), with and without a key, with a wrong key (refused on both sides), and 100 MiB
//! messages. The interpreters are pyenv's (`$PYENV_ROOT`, default `~/.pyenv`); a missing one fails
//! the test loudly (`.ci/run` checks they exist before testing).

mod common;

use multiprocess::{AcceptError, Address, AuthError, Client, ClientError, Connection, Listener};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The versions every scenario runs against: the legacy handshake and the current one.
const VERSIONS: [u32; 2] = [11, 12];

/// Echoes each message reversed until end of file, then prints DONE; prints ERR and the exception
/// if the handshake fails. argv: role (listen/connect), kind (unix/abstract/tcp), address, key hex
/// or '-'.
const PY_PEER: &str = r#"
import sys
from multiprocessing.connection import Listener, Client
role, kind, addr, key = sys.argv[1:5]
key = None if key == '-' else bytes.fromhex(key)
if kind == 'tcp':
    host, port = addr.rsplit(':', 1)
    address = (host, int(port))
elif kind == 'abstract':
    address = '\0' + addr
else:
    address = addr
def serve(c):
    while True:
        try:
            m = c.recv_bytes()
        except EOFError:
            break
        c.send_bytes(m[::-1])
    c.close()
    print('DONE', flush=True)
if role == 'listen':
    with Listener(address, authkey=key) as l:
        a = l.address
        if isinstance(a, tuple):
            a = '%s:%d' % a
        elif isinstance(a, bytes):
            a = a.lstrip(b'\0').decode()
        print('ADDR', a.lstrip('\0'), flush=True)
        try:
            c = l.accept()
        except Exception as e:
            print('ERR', type(e).__name__, e, flush=True)
            sys.exit(0)
        serve(c)
else:
    try:
        c = Client(address, authkey=key)
    except Exception as e:
        print('ERR', type(e).__name__, e, flush=True)
        sys.exit(0)
    serve(c)
"#;

/// A Python peer, killed (and reaped) if the test ends before it does.
struct Py {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Py {
    fn start(minor: u32, role: &str, kind: &str, addr: &str, key: Option<&[u8]>) -> Py {
        let key = key.map_or("-".to_string(), |k| {
            k.iter().map(|b| format!("{b:02x}")).collect()
        });
        let mut child = Command::new(common::python(minor))
            .args(["-c", PY_PEER, role, kind, addr, &key])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python");
        let out = BufReader::new(child.stdout.take().unwrap());
        Py { child, out }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim_end().to_string()
    }

    /// Waits for its exit within the deadline; its status.
    fn finish(mut self) -> std::process::ExitStatus {
        let until = Instant::now() + common::DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "python did not finish in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct TempDir(PathBuf, &'static str);

impl TempDir {
    fn new(tag: &'static str) -> TempDir {
        let d = std::env::temp_dir().join(format!("mp-pylistener-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d, tag)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends messages and checks the Python peer's reversed echoes, then closes.
fn exchange(conn: Connection, big: bool) {
    let mut msgs = vec![
        b"hello".to_vec(),
        Vec::new(),
        "ünïcode ✓".as_bytes().to_vec(),
    ];
    if big {
        msgs.push((0..100u32 << 20).map(|i| (i % 251) as u8).collect());
    }
    for m in msgs {
        conn.send_bytes(&m).unwrap();
        let mut want = m;
        want.reverse();
        assert!(conn.poll(common::DEADLINE).unwrap(), "an echo in time");
        assert!(conn.recv_bytes().unwrap() == want, "echo mismatch");
    }
}

/// (kind, our address, the address as the Python script takes it) for a fresh place to listen.
fn places(dir: &TempDir, minor: u32) -> Vec<(&'static str, Address, String)> {
    let path = dir.0.join(format!("s{minor}"));
    let name = format!("mp-py-{}-{}-{minor}", dir.1, std::process::id());
    vec![
        (
            "unix",
            Address::Unix(path.clone()),
            path.display().to_string(),
        ),
        (
            "abstract",
            Address::Abstract(name.clone().into_bytes()),
            name,
        ),
        ("tcp", "127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".into()),
    ]
}

const KEY: &[u8] = b"interop key";

#[test]
fn rust_clients_of_python_listeners() {
    let dir = TempDir::new("client");
    for minor in VERSIONS {
        for (kind, _, addr) in places(&dir, minor) {
            for key in [None, Some(KEY)] {
                let mut py = Py::start(minor, "listen", kind, &addr, key);
                let line = py.line();
                let bound = line.strip_prefix("ADDR ").expect(&line).to_string();
                let address: Address = match kind {
                    "abstract" => Address::Abstract(bound.into_bytes()),
                    _ => bound.parse().unwrap(),
                };
                let mut b = Client::builder(&address).max_message(Some(200 << 20));
                if let Some(k) = key {
                    b = b.authkey(k);
                }
                let conn = b
                    .connect()
                    .unwrap_or_else(|e| panic!("3.{minor} {kind}: {e}"));
                // The 100 MiB message once per version and kind, with the key.
                exchange(conn, key.is_some());
                assert_eq!(py.line(), "DONE", "3.{minor} {kind}");
                assert!(py.finish().success());
            }
            // A wrong key: refused on both sides.
            let mut py = Py::start(minor, "listen", kind, &addr, Some(KEY));
            let line = py.line();
            let bound = line.strip_prefix("ADDR ").expect(&line).to_string();
            let address: Address = match kind {
                "abstract" => Address::Abstract(bound.into_bytes()),
                _ => bound.parse().unwrap(),
            };
            let r = Client::builder(&address).authkey(b"wrong").connect();
            assert!(
                matches!(r, Err(ClientError::Auth(AuthError::Rejected))),
                "3.{minor} {kind}: {r:?}"
            );
            let err = py.line();
            assert!(
                err.starts_with("ERR AuthenticationError")
                    && err.contains("digest received was wrong"),
                "3.{minor} {kind}: {err}"
            );
            assert!(py.finish().success());
        }
    }
}

#[test]
fn python_clients_of_rust_listeners() {
    let dir = TempDir::new("listener");
    for minor in VERSIONS {
        for (kind, address, _) in places(&dir, minor) {
            for key in [None, Some(KEY)] {
                let mut b = Listener::builder(&address).max_message(Some(200 << 20));
                if let Some(k) = key {
                    b = b.authkey(k);
                }
                let listener = b.bind().unwrap();
                let addr = match listener.address() {
                    Address::Abstract(n) => String::from_utf8(n.clone()).unwrap(),
                    a => a.to_string(),
                };
                let mut py = Py::start(minor, "connect", kind, &addr, key);
                let conn = listener
                    .accept_timeout(common::DEADLINE)
                    .unwrap_or_else(|e| panic!("3.{minor} {kind}: {e}"));
                exchange(conn, key.is_some());
                assert_eq!(py.line(), "DONE", "3.{minor} {kind}");
                assert!(py.finish().success());
            }
            // A wrong key: refused on both sides.
            let listener = Listener::builder(&address).authkey(KEY).bind().unwrap();
            let addr = match listener.address() {
                Address::Abstract(n) => String::from_utf8(n.clone()).unwrap(),
                a => a.to_string(),
            };
            let mut py = Py::start(minor, "connect", kind, &addr, Some(b"wrong"));
            let r = listener.accept_timeout(common::DEADLINE);
            assert!(
                matches!(
                    r,
                    Err(AcceptError::Auth {
                        error: AuthError::DigestWrong,
                        ..
                    })
                ),
                "3.{minor} {kind}: {r:?}"
            );
            let err = py.line();
            assert!(
                err.starts_with("ERR AuthenticationError")
                    && err.contains("digest sent was rejected"),
                "3.{minor} {kind}: {err}"
            );
            assert!(py.finish().success());
        }
    }
}
