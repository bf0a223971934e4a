//! The `multiprocess` command against real processes: `manager serve` in the background, a Rust
//! client making objects, `manager status` listing them, `manager stop` ending the server (which
//! exits 0); over an abstract socket, TCP, and TCP with TLS; a wrong key and a missing key file.

use multiprocess::manager::Manager;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_multiprocess");
const DEADLINE: Duration = Duration::from_secs(60);

/// A scratch directory, removed by the guard.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("mp-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server process, killed if the test fails before it stops it.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address with a free port (found by binding port 0 and letting go): the server is
/// given a fixed address, so that the test knows where to connect before it is up.
fn free_tcp_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn serve(args: &[&str]) -> Served {
    Served(
        Command::new(BIN)
            .args(["manager", "serve"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Retries `connect` until the server listens.
fn until_up<T, E: std::fmt::Debug>(mut connect: impl FnMut() -> Result<T, E>) -> T {
    let start = Instant::now();
    loop {
        match connect() {
            Ok(t) => return t,
            Err(e) if start.elapsed() > DEADLINE => panic!("the server never came up: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn wait_exit(mut served: Served) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = served.0.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exercise(
    address: &str,
    target: &str,
    key_file: &Path,
    tls: &[&str],
    client: impl Fn() -> Manager,
) {
    let m = until_up(|| Ok::<_, ()>(client()));
    let d = m.named_dict::<String, u32>("scores").unwrap();
    d.set(&"ada".into(), &3).unwrap();
    m.named_list::<u8>("log")
        .unwrap()
        .extend(&[1, 2, 3])
        .unwrap();
    let key = key_file.to_str().unwrap();
    let mut args = vec![
        "manager",
        "status",
        "--address",
        target,
        "--authkey-file",
        key,
    ];
    args.extend(tls);
    let out = run(&args);
    let t = text(&out);
    assert!(out.status.success(), "{address}: {t}");
    assert!(t.contains("2 objects"), "{t}");
    assert!(t.contains("scores") && t.contains("log"), "{t}");
    assert!(t.contains("2 clients"), "{t}"); // this test's and the status command's
    drop(m);
    let mut args = vec![
        "manager",
        "stop",
        "--address",
        target,
        "--authkey-file",
        key,
    ];
    args.extend(tls);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn serve_status_and_stop_over_a_unix_socket_and_tcp() {
    let dir = Dir::new("plain");
    let key = dir.file("key", b"a key for the cli test");
    for (address, target) in [
        (format!("@mp-cli-test-{}", std::process::id()), None),
        ("127.0.0.1:0".to_string(), Some(())),
    ] {
        let address = match target {
            None => address,
            Some(()) => free_tcp_address(),
        };
        let served = serve(&[
            "--address",
            &address,
            "--authkey-file",
            key.to_str().unwrap(),
        ]);
        let client = || Manager::connect(address.as_str(), b"a key for the cli test").unwrap();
        let up = until_up(|| Manager::connect(address.as_str(), b"a key for the cli test"));
        drop(up);
        exercise(&address, &address, &key, &[], client);
        assert!(wait_exit(served).success(), "{address}");
    }
}

#[test]
fn serve_over_tls() {
    let dir = Dir::new("tls");
    let key = dir.file("key", b"tls key");
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = dir.file("cert.pem", c.cert.pem().as_bytes());
    let cert_key = dir.file("cert.key", c.key_pair.serialize_pem().as_bytes());
    let address = free_tcp_address();
    let served = serve(&[
        "--address",
        &address,
        "--authkey-file",
        key.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert_key.to_str().unwrap(),
    ]);
    let pem = c.cert.pem();
    let client = || {
        let config = multiprocess::tls::client_config(pem.as_bytes()).unwrap();
        Manager::connect_with(
            multiprocess::Client::builder(address.as_str())
                .authkey(b"tls key")
                .tls(config),
        )
        .unwrap()
    };
    until_up(|| {
        let config = multiprocess::tls::client_config(pem.as_bytes()).unwrap();
        Manager::connect_with(
            multiprocess::Client::builder(address.as_str())
                .authkey(b"tls key")
                .tls(config),
        )
    });
    // Without TLS the server refuses (the plain handshake waits for a challenge that never comes).
    assert!(
        Manager::connect_with(
            multiprocess::Client::builder(address.as_str())
                .authkey(b"tls key")
                .timeout(Duration::from_millis(300))
        )
        .is_err()
    );
    exercise(
        &address,
        &address,
        &key,
        &["--tls-ca", cert.to_str().unwrap()],
        client,
    );
    assert!(wait_exit(served).success());
}

#[test]
fn a_wrong_key_and_a_missing_key_file_are_clear_errors() {
    let dir = Dir::new("errors");
    let key = dir.file("key", b"right");
    let wrong = dir.file("wrong", b"wrong");
    let address = format!("@mp-cli-errors-{}", std::process::id());
    let served = serve(&[
        "--address",
        &address,
        "--authkey-file",
        key.to_str().unwrap(),
    ]);
    until_up(|| Manager::connect(address.as_str(), b"right"));
    let out = run(&[
        "manager",
        "status",
        "--address",
        &address,
        "--authkey-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("authenticat"), "{}", text(&out));
    let out = run(&[
        "manager",
        "status",
        "--address",
        &address,
        "--authkey-file",
        "/nonexistent/key",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot read the key file"),
        "{}",
        text(&out)
    );
    let out = run(&[
        "manager",
        "stop",
        "--address",
        &address,
        "--authkey-file",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_exit(served).success());
}

/// A task that waits until its file exists (so that the test decides when it ends).
fn wait_for_file(path: String) -> u32 {
    let end = Instant::now() + DEADLINE;
    while !Path::new(&path).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    7
}

#[test]
fn pool_status_shows_workers_and_tasks_on_the_broker() {
    use multiprocess::Pool;
    use multiprocess::cluster::{self, Broker};
    let url = std::env::var("MP_REDIS_URL").expect(
        "MP_REDIS_URL is not set: run the tests through `.ci/with-redis` (the README's test command)",
    );
    let pool = format!("cli-{}", std::process::id());
    let dir = Dir::new("pool");
    // A worker in this process's threads (its tasks run in a local process of its own).
    let worker = cluster::Worker::new(Broker::redis(&url, &pool).authkey("k"))
        .processes(1)
        .start()
        .unwrap();
    let pid = std::process::id();
    let p = Pool::builder()
        .broker(Broker::redis(&url, &pool).authkey("k"))
        .build()
        .unwrap();
    // The worker takes two (twice its processes); the third waits on the stream.
    let gate = dir.0.join("gate").to_string_lossy().into_owned();
    let tasks: Vec<_> = (0..3)
        .map(|_| p.apply_async(wait_for_file, gate.clone()))
        .collect();
    until_up(|| match cluster::status(&url, &pool) {
        Ok(s) if s.in_flight == 2 && s.queued == 1 => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let out = run(&["pool", "status", "--redis", &url, "--pool", &pool]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("pool {pool}")), "{t}");
    assert!(
        t.contains("tasks: 1 queued, 2 in flight, 0 reclaimed, 0 lost"),
        "{t}"
    );
    assert!(
        t.contains("workers: 1 live (1 processes), 0 not responding"),
        "{t}"
    );
    let line = t
        .lines()
        .find(|l| l.contains(&format!(" {pid} ")))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        line.contains(&cluster::this_build()[..16]) && line.ends_with("live"),
        "{line}"
    );
    // Every pool on the broker, when none is named.
    let all = text(&run(&["pool", "status", "--redis", &url]));
    assert!(all.contains(&format!("pool {pool}")), "{all}");
    std::fs::write(&gate, b"").unwrap();
    for t in tasks {
        assert_eq!(t.get(), Ok(7));
    }
    worker.stop(Duration::from_secs(1));
    let out = run(&[
        "pool",
        "status",
        "--redis",
        "redis://127.0.0.1:1",
        "--pool",
        &pool,
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("redis://127.0.0.1:1"), "{}", text(&out));
    drop(p);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("mp:{{{pool}}}:*"))
        .query(&mut c)
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut c).unwrap();
    }
}

/// A Python client of `manager serve --python`: makes a dict and a queue, reads them back, and
/// shuts the server down with the protocol's `shutdown` verb.
const PY_CLIENT: &str = r#"
import sys
from multiprocessing.managers import SyncManager, dispatch
host, port = sys.argv[1].rsplit(':', 1)
m = SyncManager(address=(host, int(port)), authkey=sys.argv[2].encode())
m.connect()
d = m.dict({'a': 1}); d[1.0] = 'one'; q = m.Queue(); q.put([1, 2])
print(d[True], d['a'], q.get(), end=' ', flush=True)
SyncManager.register('get_jobs')
m2 = SyncManager(address=(host, int(port)), authkey=sys.argv[2].encode()); m2.connect()
m2.get_jobs().put('job'); print(m.get_jobs().get(timeout=5), flush=True)
dispatch(m._Client(m.address, authkey=m._authkey), None, 'shutdown')
"#;

#[test]
fn serve_python_clients() {
    let dir = Dir::new("python");
    let key = dir.file("key", b"a key for python");
    let address = free_tcp_address();
    let served = serve(&[
        "--address",
        &address,
        "--authkey-file",
        key.to_str().unwrap(),
        "--python",
        "--share",
        "get_jobs=Queue",
    ]);
    until_up(|| {
        multiprocess::Client::builder(address.as_str())
            .authkey(b"a key for python")
            .connect()
    });
    let out = Command::new("python3")
        .args(["-c", PY_CLIENT, &address, "a key for python"])
        .output()
        .unwrap();
    assert_eq!(text(&out).trim(), "one 1 [1, 2] job", "{}", text(&out));
    assert!(wait_exit(served).success());
}
