//! Listener and Client between Rust processes: every address kind, the authentication handshake,
//! deadlines, stale socket files, message limits. (Against real CPython: `tests/python_listener.rs`.)

mod common;

use multiprocess::auth::AuthPolicy;
use multiprocess::{
    AcceptError, Address, AuthError, Client, ClientError, Connection, Listener, RecvError,
    StartMethod,
};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

/// A fresh directory for socket files, removed by the guard.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("mp-listener-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child's side: connect (with the key, if any), echo one typed value doubled and one raw
/// message reversed, return how many bytes it saw.
fn client_echo(args: (Address, Option<Vec<u8>>)) -> u64 {
    let (address, key) = args;
    let mut b = Client::builder(&address);
    if let Some(k) = &key {
        b = b.authkey(k);
    }
    let conn = b.connect().expect("connect");
    let n: u64 = conn.recv().unwrap();
    conn.send(&(n * 2)).unwrap();
    let mut m = conn.recv_bytes().unwrap();
    m.reverse();
    conn.send_bytes(&m).unwrap();
    m.len() as u64
}

fn serve_one(listener: &Listener) -> Connection {
    listener
        .accept_timeout(common::DEADLINE)
        .expect("a client in time")
}

#[test]
fn every_address_kind_with_and_without_a_key_across_processes() {
    let dir = TempDir::new("kinds");
    let addresses = [
        Address::Unix(dir.0.join("s")),
        Address::Abstract(format!("mp-test-{}", std::process::id()).into_bytes()),
        "127.0.0.1:0".parse().unwrap(),
        "[::1]:0".parse().unwrap(),
    ];
    for (i, address) in addresses.iter().enumerate() {
        for key in [None, Some(b"s3cret".to_vec())] {
            let method = METHODS[i % METHODS.len()];
            let mut b = Listener::builder(address);
            if let Some(k) = &key {
                b = b.authkey(k);
            }
            let listener = b.bind().unwrap_or_else(|e| panic!("{address}: {e}"));
            let bound = listener.address().clone();
            if let Address::Tcp(a) = &bound {
                assert_ne!(a.port(), 0, "the chosen port is readable");
            }
            let child = common::start(method, client_echo, (bound.clone(), key.clone()));
            let conn = serve_one(&listener);
            conn.send(&21u64).unwrap();
            assert_eq!(conn.recv::<u64>().unwrap(), 42);
            let big = vec![9u8; 1 << 20];
            conn.send_bytes(&big).unwrap();
            assert_eq!(conn.recv_bytes().unwrap().len(), big.len());
            assert_eq!(
                common::join(child).unwrap(),
                big.len() as u64,
                "{bound} {method:?}"
            );
        }
    }
}

#[test]
fn a_wrong_key_is_a_clear_error_on_both_sides() {
    let listener = Listener::builder("127.0.0.1:0")
        .authkey(b"right")
        .bind()
        .unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        Client::builder(&address)
            .authkey(b"wrong")
            .connect()
            .map(|_| ())
    });
    match listener.accept_timeout(common::DEADLINE) {
        Err(AcceptError::Auth {
            error: AuthError::DigestWrong,
            peer,
        }) => assert!(peer.starts_with("127.0.0.1:"), "{peer}"),
        other => panic!("{other:?}"),
    }
    match client.join().unwrap() {
        Err(ClientError::Auth(AuthError::Rejected)) => {}
        other => panic!("{other:?}"),
    }
    // The listener goes on: a client with the right key gets in.
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        Client::builder(&address)
            .authkey(b"right")
            .connect()
            .map(|c| c.send_bytes(b"in").unwrap())
    });
    assert_eq!(serve_one(&listener).recv_bytes().unwrap(), b"in");
    client.join().unwrap().unwrap();
}

#[test]
fn a_silent_client_does_not_hold_up_the_others_and_times_out() {
    let timeout = Duration::from_millis(600);
    let listener = Listener::builder("127.0.0.1:0")
        .authkey(b"k")
        .handshake_timeout(timeout)
        .bind()
        .unwrap();
    let Address::Tcp(addr) = listener.address().clone() else {
        unreachable!()
    };
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let address = listener.address().clone();
    let good = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let c = Client::builder(&address).authkey(b"k").connect().unwrap();
        c.send_bytes(b"first").unwrap();
        c
    });
    // The good client is accepted although the silent one came first.
    let conn = serve_one(&listener);
    assert_eq!(conn.recv_bytes().unwrap(), b"first");
    let _good = good.join().unwrap();
    // Then the silent one is dropped at its deadline, as this accept's error.
    match listener.accept_timeout(common::DEADLINE) {
        Err(AcceptError::Auth {
            error: AuthError::Timeout,
            ..
        }) => assert!(started.elapsed() >= timeout),
        other => panic!("{other:?}"),
    }
    // It saw our challenge, then the end.
    let mut got = Vec::new();
    silent.set_read_timeout(Some(common::DEADLINE)).unwrap();
    silent.read_to_end(&mut got).unwrap();
    assert_eq!(&got[4..15], b"#CHALLENGE#");
    // accept_timeout with nobody coming waits at least its time.
    let t = Instant::now();
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(100)),
        Err(AcceptError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn a_key_on_one_side_only_fails_within_the_deadline() {
    // A client with a key, a listener without: the client waits for a challenge that never comes
    // (a deadlock in CPython, gh-123736) and gives up at its deadline.
    let open = Listener::bind("127.0.0.1:0").unwrap();
    let t = Instant::now();
    let r = Client::builder(open.address())
        .authkey(b"k")
        .timeout(Duration::from_millis(300))
        .connect();
    assert!(
        matches!(r, Err(ClientError::Auth(AuthError::Timeout))),
        "{r:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    drop(serve_one(&open));
    // A listener with a key, a client without that sends a message: not an answer.
    let keyed = Listener::builder("127.0.0.1:0")
        .authkey(b"k")
        .bind()
        .unwrap();
    let c = Client::connect(keyed.address()).unwrap();
    c.send_bytes(b"hello, anyone?").unwrap();
    assert!(matches!(
        keyed.accept_timeout(common::DEADLINE),
        Err(AcceptError::Auth {
            error: AuthError::Protocol(_),
            ..
        })
    ));
}

#[test]
fn legacy_answers_can_be_refused() {
    // A legacy (Python 3.11) client answers with bare HMAC-MD5: accepted by default, refused when
    // the policy says so. Played here by a client whose policy is to challenge with MD5... which
    // still sends the modern form; so the legacy side is played by hand over a raw socket.
    for legacy in [true, false] {
        let policy = AuthPolicy {
            legacy,
            ..AuthPolicy::default()
        };
        let listener = Listener::builder("127.0.0.1:0")
            .authkey(b"k")
            .auth_policy(policy)
            .bind()
            .unwrap();
        let address = listener.address().clone();
        let client = std::thread::spawn(move || {
            let Address::Tcp(a) = address else {
                unreachable!()
            };
            let s = std::net::TcpStream::connect(a).unwrap();
            let conn = Connection::from_fd(s.into());
            let challenge = conn.recv_bytes().unwrap();
            let message = &challenge[b"#CHALLENGE#".len()..];
            let md5 = multiprocess::auth::Digest::Md5.mac(b"k", message);
            conn.send_bytes(&md5).unwrap();
            conn.recv_bytes().unwrap()
        });
        let r = listener.accept_timeout(common::DEADLINE);
        let verdict = client.join().unwrap();
        if legacy {
            assert_eq!(verdict, b"#WELCOME#");
            // (The hand-played client stops there; the listener waits for its challenge.)
            assert!(matches!(r, Err(AcceptError::Auth { .. })), "{r:?}");
        } else {
            assert_eq!(verdict, b"#FAILURE#");
            assert!(
                matches!(
                    r,
                    Err(AcceptError::Auth {
                        error: AuthError::LegacyRefused,
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }
}

#[test]
fn socket_files_are_removed_and_stale_ones_replaced() {
    let dir = TempDir::new("files");
    let path = dir.0.join("s");
    // Removed with its listener.
    let l = Listener::bind(&path).unwrap();
    assert!(path.exists());
    // A live listener keeps its path.
    let e = Listener::bind(&path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    drop(l);
    assert!(!path.exists());
    // A stale file (a listener that died without cleaning up) does not stop a new one.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = Listener::bind(&path).unwrap();
    let c = Client::connect(&path).unwrap();
    c.send_bytes(b"x").unwrap();
    assert_eq!(serve_one(&l).recv_bytes().unwrap(), b"x");
    drop(l);
    // A file that is not a socket is never removed.
    std::fs::write(&path, b"precious").unwrap();
    assert!(Listener::bind(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    // A listener whose file was replaced by a successor's leaves the successor's alone.
    std::fs::remove_file(&path).unwrap();
    let old = Listener::bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = Listener::bind(&path).unwrap();
    drop(old);
    assert!(path.exists());
    drop(new);
    assert!(!path.exists());
}

#[test]
fn tcp_connections_refuse_messages_past_their_limit() {
    let listener = Listener::builder("127.0.0.1:0")
        .max_message(Some(1000))
        .bind()
        .unwrap();
    let c = Client::builder(listener.address())
        .max_message(Some(10))
        .connect()
        .unwrap();
    let s = serve_one(&listener);
    assert_eq!(s.max_message(), Some(1000));
    c.send_bytes(&[1; 1000]).unwrap();
    assert_eq!(s.recv_bytes().unwrap().len(), 1000);
    c.send_bytes(&[1; 1001]).unwrap();
    assert!(matches!(
        s.recv_bytes(),
        Err(RecvError::TooLong {
            len: 1001,
            max: 1000
        })
    ));
    s.send_bytes(&[2; 11]).unwrap();
    assert!(matches!(c.recv_bytes(), Err(RecvError::TooLong { .. })));
    // The defaults: a limit over TCP, none over a Unix socket.
    let tcp = Listener::bind("127.0.0.1:0").unwrap();
    let c = Client::connect(tcp.address()).unwrap();
    assert_eq!(c.max_message(), Some(multiprocess::DEFAULT_MAX_MESSAGE));
    assert_eq!(
        serve_one(&tcp).max_message(),
        Some(multiprocess::DEFAULT_MAX_MESSAGE)
    );
    let name = format!("@mp-limit-{}", std::process::id());
    let unix = Listener::bind(name.as_str()).unwrap();
    assert_eq!(Client::connect(name.as_str()).unwrap().max_message(), None);
    assert_eq!(serve_one(&unix).max_message(), None);
}

#[test]
fn addresses_parse_and_fail_clearly() {
    assert!(matches!("@x".parse::<Address>(), Ok(Address::Abstract(n)) if n == b"x"));
    assert!(matches!("./s".parse::<Address>(), Ok(Address::Unix(_))));
    assert!(matches!(
        "localhost:1".parse::<Address>(),
        Ok(Address::Tcp(_))
    ));
    let e = "no-such-thing".parse::<Address>().unwrap_err();
    assert!(e.to_string().contains("not an address"), "{e}");
    let e = Client::connect("127.0.0.1:1").unwrap_err();
    assert!(matches!(e, ClientError::Io(_)), "{e}");
}

#[test]
fn one_listener_serves_200_clients_while_silent_and_slow_ones_connect() {
    const CLIENTS: usize = 200;
    const ROUNDS: u64 = 100;
    let listener = std::sync::Arc::new(
        Listener::builder("127.0.0.1:0")
            .authkey(b"load")
            .handshake_timeout(Duration::from_secs(2))
            .backlog(512)
            .bind()
            .unwrap(),
    );
    let address = listener.address().clone();
    let Address::Tcp(addr) = address.clone() else {
        unreachable!()
    };
    // The server: every accepted connection gets a thread that echoes until end of file.
    let server = {
        let listener = listener.clone();
        std::thread::spawn(move || {
            let mut served = Vec::new();
            let mut refused = 0;
            while served.len() < CLIENTS {
                match listener.accept_timeout(common::DEADLINE) {
                    Ok(conn) => served.push(std::thread::spawn(move || {
                        let mut n = 0u64;
                        while let Ok(m) = conn.recv_bytes() {
                            conn.send_bytes(&m).unwrap();
                            n += 1;
                        }
                        n
                    })),
                    Err(AcceptError::Auth { .. }) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            let total: u64 = served.into_iter().map(|t| t.join().unwrap()).sum();
            (total, refused)
        })
    };
    // Silent clients (connect, say nothing) and slow ones (a byte at a time) meanwhile.
    let silent: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let slow = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        for b in [0u8, 0, 0, 16].iter().chain(&[7u8; 16]) {
            let _ = s.write_all(&[*b]);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let c = Client::builder(&address)
                    .authkey(b"load")
                    .timeout(common::DEADLINE)
                    .connect()
                    .unwrap();
                for r in 0..ROUNDS {
                    let m = format!("{i}:{r}");
                    c.send_bytes(m.as_bytes()).unwrap();
                    assert_eq!(c.recv_bytes().unwrap(), m.as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (total, _refused) = server.join().unwrap();
    assert_eq!(total, CLIENTS as u64 * ROUNDS, "every round trip answered");
    slow.join().unwrap();
    drop(silent);
}

/// A child that connects, sleeps `ms`, sends its index, and closes (CPython's `TestWait._child_test_wait`).
fn connect_nap_send(args: (Address, u64, u32)) {
    let (address, ms, index) = args;
    let c = Client::connect(&address).expect("connect");
    std::thread::sleep(Duration::from_millis(ms));
    c.send(&index).unwrap();
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn wait_collects_connections_listeners_and_processes_as_they_become_ready() {
    use multiprocess::{Waitable, wait};
    for method in METHODS {
        // CPython's test_wait: several children each send one message at different moments; wait
        // returns each connection as its message (and then its end of file) arrives.
        let listener =
            Listener::bind(format!("@mp-wait-{}-{method:?}", std::process::id())).unwrap();
        let children: Vec<_> = (0..4u32)
            .map(|i| {
                common::start(
                    method,
                    connect_nap_send,
                    (listener.address().clone(), 20 * u64::from(i), i),
                )
            })
            .collect();
        let mut conns: Vec<Connection> = (0..4).map(|_| serve_one(&listener)).collect();
        let mut got = Vec::new();
        while !conns.is_empty() {
            let refs: Vec<&Connection> = conns.iter().collect();
            let ready = wait(&refs, Some(common::DEADLINE)).unwrap();
            assert!(!ready.is_empty());
            for &i in ready.iter().rev() {
                match conns[i].recv::<u32>() {
                    Ok(v) => got.push(v),
                    Err(RecvError::Eof) => {
                        conns.remove(i);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        got.sort();
        assert_eq!(got, [0, 1, 2, 3], "{method:?}");
        for c in children {
            common::join(c).unwrap();
        }
        // test_wait_integer: processes are ready once they have ended, in the order they end.
        let slow = common::start(method, nap, 300);
        let quick = common::start(method, nap, 10);
        let ready = wait(&[&slow, &quick], Some(common::DEADLINE)).unwrap();
        assert_eq!(ready, [1], "{method:?}");
        let ready = wait(&[&slow, &quick], Some(common::DEADLINE)).unwrap();
        assert!(ready.contains(&1));
        common::join(slow).unwrap();
        common::join(quick).unwrap();
        // A listener is ready when a client waits; mixed with other kinds through `dyn`.
        let (a, _b) = multiprocess::pipe().unwrap();
        let objects: [&dyn Waitable; 2] = [&a, &listener];
        assert_eq!(
            wait(&objects, Some(Duration::ZERO)).unwrap(),
            Vec::<usize>::new()
        );
        let _c = Client::connect(listener.address()).unwrap();
        assert_eq!(wait(&objects, Some(common::DEADLINE)).unwrap(), [1]);
    }
}

#[test]
fn wait_with_a_timeout_waits_at_least_that_long() {
    // CPython's test_wait_timeout and test_neg_timeout (here a zero timeout looks once).
    let (a, _b) = multiprocess::pipe().unwrap();
    let t = Instant::now();
    assert!(
        multiprocess::wait(&[&a], Some(Duration::from_millis(100)))
            .unwrap()
            .is_empty()
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(
        multiprocess::wait(&[&a], Some(Duration::ZERO))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn an_empty_key_is_a_key() {
    // CPython's _TestListener test_empty_authkey (3.13 semantics; 3.11 and 3.12 deadlocked): b""
    // on both sides runs the handshake and succeeds.
    let l = Listener::builder("127.0.0.1:0")
        .authkey(b"")
        .bind()
        .unwrap();
    let address = l.address().clone();
    let t = std::thread::spawn(move || {
        let c = Client::builder(&address).authkey(b"").connect().unwrap();
        c.send_bytes(b"ok").unwrap();
        // test_issue16955: poll sees the reply.
        assert!(c.poll(common::DEADLINE).unwrap());
        c.recv_bytes().unwrap()
    });
    let s = serve_one(&l);
    assert_eq!(s.recv_bytes().unwrap(), b"ok");
    s.send_bytes(b"back").unwrap();
    assert_eq!(t.join().unwrap(), b"back");
}

#[test]
fn handshakes_past_the_limit_wait_in_the_backlog() {
    let timeout = Duration::from_millis(300);
    let listener = Listener::builder("127.0.0.1:0")
        .authkey(b"k")
        .handshake_timeout(timeout)
        .max_pending(1)
        .bind()
        .unwrap();
    let Address::Tcp(addr) = listener.address().clone() else {
        unreachable!()
    };
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    // Let the silent one take the only handshake slot, then a good client comes.
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(50)),
        Err(AcceptError::Timeout)
    ));
    let address = listener.address().clone();
    let good = std::thread::spawn(move || {
        let c = Client::builder(&address).authkey(b"k").connect().unwrap();
        c.send_bytes(b"waited").unwrap();
    });
    // The silent one ends first (at its deadline); then the good one's handshake runs.
    let t = Instant::now();
    assert!(matches!(
        listener.accept_timeout(common::DEADLINE),
        Err(AcceptError::Auth {
            error: AuthError::Timeout,
            ..
        })
    ));
    let conn = serve_one(&listener);
    assert_eq!(conn.recv_bytes().unwrap(), b"waited");
    assert!(t.elapsed() + Duration::from_millis(50) >= timeout);
    good.join().unwrap();
}
