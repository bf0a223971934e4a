//! TLS between Rust processes (the `tls` feature): round trips across processes under every start
//! method, bytes on the wire that are not the plaintext, certificates and names that are refused on
//! both sides, a peer without TLS, silent peers that do not hold up `accept`, and `poll`/`wait`
//! that are not fooled by records without a message.
#![cfg(feature = "tls")]

mod common;

use multiprocess::{
    AcceptError, Address, Client, ClientError, Connection, Listener, RecvTimeoutError, StartMethod,
    tls, wait,
};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

/// A self-signed certificate for `names`, as PEM (certificate, key).
fn certificate(names: &[&str]) -> (String, String) {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let c = rcgen::generate_simple_self_signed(names).expect("a certificate");
    (c.cert.pem(), c.key_pair.serialize_pem())
}

fn tls_listener(cert: &(String, String), key: Option<&[u8]>) -> Listener {
    let config = tls::server_config(cert.0.as_bytes(), cert.1.as_bytes()).unwrap();
    let mut b = Listener::builder("127.0.0.1:0")
        .tls(config)
        .handshake_timeout(Duration::from_secs(20));
    if let Some(k) = key {
        b = b.authkey(k);
    }
    b.bind().unwrap()
}

fn tls_client(address: &Address, roots_pem: &str) -> multiprocess::ClientBuilder {
    Client::builder(address)
        .tls(tls::client_config(roots_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(20))
}

/// The child: connect with TLS (and the key), then echo every message reversed until the end, and
/// return how many bytes it echoed.
fn echo_child(args: (Address, String, Option<Vec<u8>>)) -> u64 {
    let (address, roots, key) = args;
    let mut b = tls_client(&address, &roots);
    if let Some(k) = &key {
        b = b.authkey(k);
    }
    let conn = b.connect().expect("a TLS connection");
    let mut total = 0;
    while let Ok(mut m) = conn.recv_bytes() {
        total += m.len() as u64;
        m.reverse();
        conn.send_bytes(&m).unwrap();
    }
    total
}

#[test]
fn round_trips_across_processes_under_every_start_method() {
    let cert = certificate(&["127.0.0.1"]);
    for (i, method) in METHODS.into_iter().enumerate() {
        let key = (i % 2 == 0).then(|| b"tls and a key".to_vec());
        let listener = tls_listener(&cert, key.as_deref());
        let child = common::start(
            method,
            echo_child,
            (listener.address().clone(), cert.0.clone(), key),
        );
        let conn = listener
            .accept_timeout(common::DEADLINE)
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let mut sent = 0u64;
        for len in [0usize, 1, 5, 16 << 10, (16 << 10) + 1, 300 << 10, 16 << 20] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            conn.send_bytes(&msg).unwrap();
            let mut back = conn.recv_bytes().unwrap();
            back.reverse();
            assert!(
                back == msg,
                "{method:?}: a {len}-byte message came back changed"
            );
            sent += len as u64;
        }
        drop(conn);
        let echoed = common::join(child).unwrap();
        assert_eq!(echoed, sent, "{method:?}");
    }
}

/// Whether the socket under `conn` has bytes (a look that reads nothing).
fn socket_readable(conn: &Connection) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(conn, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
}

/// A connected pair over TLS in this process: (accepted, client).
fn pair(cert: &(String, String)) -> (Connection, Connection) {
    let listener = tls_listener(cert, None);
    let address = listener.address().clone();
    let roots = cert.0.clone();
    let client = std::thread::spawn(move || tls_client(&address, &roots).connect());
    let server = listener.accept_timeout(common::DEADLINE).unwrap();
    (server, client.join().unwrap().unwrap())
}

/// Relays one TCP connection to `to`, keeping a copy of every byte that passes either way.
fn recording_relay(to: Address) -> (Address, Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(front.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let relay = std::thread::spawn(move || {
        let (a, _) = front.accept().unwrap();
        let Address::Tcp(to) = to else { unreachable!() };
        let b = TcpStream::connect(to).unwrap();
        let pump = |mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 << 10];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        let up = pump(a.try_clone().unwrap(), b.try_clone().unwrap(), log.clone());
        let down = pump(b, a, log);
        up.join().unwrap();
        down.join().unwrap();
    });
    (address, seen, relay)
}

#[test]
fn the_bytes_on_the_wire_are_not_the_plaintext() {
    let cert = certificate(&["127.0.0.1"]);
    let listener = tls_listener(&cert, Some(b"key on the wire?"));
    let (front, seen, relay) = recording_relay(listener.address().clone());
    let roots = cert.0.clone();
    let client = std::thread::spawn(move || {
        let conn = tls_client(&front, &roots)
            .authkey(b"key on the wire?")
            .server_name("127.0.0.1")
            .connect()
            .unwrap();
        conn.send(&"a secret that must not be seen".to_string())
            .unwrap();
        conn.recv::<String>().unwrap()
    });
    let conn = listener.accept_timeout(common::DEADLINE).unwrap();
    let got: String = conn.recv().unwrap();
    conn.send(&format!("{got}, answered")).unwrap();
    assert_eq!(
        client.join().unwrap(),
        "a secret that must not be seen, answered"
    );
    drop(conn);
    relay.join().unwrap();
    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > 1000, "the handshake passed through the relay");
    for plain in [&b"a secret"[..], b"answered", b"#CHALLENGE#", b"#WELCOME#"] {
        assert!(
            !wire.windows(plain.len()).any(|w| w == plain),
            "{:?} appeared on the wire",
            String::from_utf8_lossy(plain)
        );
    }
}

#[test]
fn an_untrusted_certificate_or_a_wrong_name_is_refused_on_both_sides() {
    let cert = certificate(&["127.0.0.1"]);
    let other = certificate(&["127.0.0.1"]);
    let listener = tls_listener(&cert, None);
    let address = listener.address().clone();
    for (roots, name, first) in [
        (&other.0, None, false),
        (&cert.0, Some("elsewhere.example"), false),
        // The name given before the configuration counts as well.
        (&cert.0, Some("elsewhere.example"), true),
    ] {
        let (a, r, n) = (address.clone(), roots.clone(), name);
        let client = std::thread::spawn(move || {
            let config = tls::client_config(r.as_bytes()).unwrap();
            let mut b = Client::builder(&a).timeout(Duration::from_secs(20));
            match (n, first) {
                (Some(n), true) => b = b.server_name(n).tls(config),
                (Some(n), false) => b = b.tls(config).server_name(n),
                (None, _) => b = b.tls(config),
            }
            b.connect()
        });
        let accepted = listener.accept_timeout(common::DEADLINE);
        match client.join().unwrap() {
            Err(ClientError::Tls(tls::TlsError::Refused(e))) => {
                let text = e.to_string();
                assert!(
                    text.contains("certificate") || text.contains("Certificate"),
                    "{text}"
                );
            }
            other => panic!("roots {:?}, name {name:?}: {other:?}", &roots[..20]),
        }
        match accepted {
            Err(AcceptError::Tls { peer, error }) => {
                assert!(peer.starts_with("127.0.0.1:"), "{peer}");
                assert!(matches!(error, tls::TlsError::Refused(_)), "{error}");
            }
            other => panic!("the listener: {other:?}"),
        }
    }
    // The listener serves the next client as usual (naming the server before configuring TLS).
    let roots = cert.0.clone();
    let client = std::thread::spawn(move || {
        Client::builder(&address)
            .server_name("127.0.0.1")
            .tls(tls::client_config(roots.as_bytes()).unwrap())
            .connect()
            .map(drop)
    });
    listener.accept_timeout(common::DEADLINE).unwrap();
    client.join().unwrap().unwrap();
}

#[test]
fn a_peer_without_tls_is_refused_both_ways() {
    let cert = certificate(&["127.0.0.1"]);
    // A plain client at a TLS listener: its first frame is not a TLS record.
    let listener = tls_listener(&cert, None);
    let plain = Client::connect(listener.address()).unwrap();
    plain.send_bytes(b"hello in the clear").unwrap();
    match listener.accept_timeout(common::DEADLINE) {
        Err(AcceptError::Tls {
            error: tls::TlsError::Refused(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // A TLS client at a plain listener: the hello goes unanswered until the deadline.
    let plain_listener = Listener::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let r = tls_client(plain_listener.address(), &cert.0)
        .timeout(Duration::from_millis(300))
        .connect();
    assert!(
        matches!(r, Err(ClientError::Tls(tls::TlsError::Timeout))),
        "{r:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stray = plain_listener.accept_timeout(common::DEADLINE).unwrap();
    assert!(
        stray.recv_bytes().is_err(),
        "a TLS hello is not a frame within the limit"
    );
}

#[test]
fn a_silent_client_does_not_hold_up_the_tls_handshakes_of_others() {
    let cert = certificate(&["127.0.0.1"]);
    let config = tls::server_config(cert.0.as_bytes(), cert.1.as_bytes()).unwrap();
    let listener = Listener::builder("127.0.0.1:0")
        .tls(config)
        .handshake_timeout(Duration::from_millis(500))
        .bind()
        .unwrap();
    let Address::Tcp(at) = listener.address().clone() else {
        unreachable!()
    };
    let _silent = TcpStream::connect(at).unwrap();
    let address = listener.address().clone();
    let roots = cert.0.clone();
    let client = std::thread::spawn(move || {
        let conn = tls_client(&address, &roots).connect().unwrap();
        conn.send(&7u8).unwrap();
    });
    // The talking client is served first; the silent one times out later.
    let conn = listener.accept_timeout(common::DEADLINE).unwrap();
    assert_eq!(conn.recv::<u8>().unwrap(), 7);
    client.join().unwrap();
    match listener.accept_timeout(common::DEADLINE) {
        Err(e @ AcceptError::Tls { .. }) => {
            assert!(e.is_per_client());
            let AcceptError::Tls { error, .. } = e else {
                unreachable!()
            };
            assert!(matches!(error, tls::TlsError::Timeout), "{error}")
        }
        other => panic!("{other:?}"),
    }
    // A client that connects and hangs up (a port scanner, a health check) ends its own
    // handshake only.
    drop(TcpStream::connect(at).unwrap());
    let e = listener.accept_timeout(common::DEADLINE).unwrap_err();
    assert!(e.is_per_client(), "{e}");
}

#[test]
fn poll_and_wait_are_not_fooled_by_records_without_a_message() {
    let cert = certificate(&["127.0.0.1"]);
    // TLS 1.3 servers send session tickets after the handshake: the client's socket is readable
    // with no message in it (each check on a fresh pair: either takes the tickets in).
    for check in ["wait", "poll"] {
        let (_server, client) = pair(&cert);
        std::thread::sleep(Duration::from_millis(50));
        assert!(socket_readable(&client), "the tickets are in the socket");
        let ready = match check {
            "wait" => !wait(&[&client], Some(Duration::from_millis(100)))
                .unwrap()
                .is_empty(),
            _ => client.poll(Duration::from_millis(100)).unwrap(),
        };
        assert!(!ready, "{check} took a record without a message for one");
    }
    let (server, client) = pair(&cert);
    // Two messages in one burst: after the first is read, the second is already decrypted in
    // memory and the socket is empty; both still report it.
    server.send_bytes(b"one").unwrap();
    server.send_bytes(b"two").unwrap();
    assert!(client.poll(Duration::from_secs(10)).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(client.recv_bytes().unwrap(), b"one");
    assert!(client.poll(Duration::ZERO).unwrap());
    assert_eq!(
        wait(&[&server, &client], Some(Duration::ZERO)).unwrap(),
        [1]
    );
    assert_eq!(client.recv_bytes().unwrap(), b"two");
    assert!(!client.poll(Duration::ZERO).unwrap());
    // The end of the stream is ready too.
    drop(server);
    assert!(client.poll(Duration::from_secs(10)).unwrap());
    assert!(matches!(
        client.recv_bytes(),
        Err(multiprocess::RecvError::Eof)
    ));
}

#[test]
fn a_timed_out_receive_loses_nothing() {
    let cert = certificate(&["127.0.0.1"]);
    let (server, client) = pair(&cert);
    let started = std::time::Instant::now();
    assert!(matches!(
        client.recv_timeout::<Vec<u64>>(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_millis(100));
    let big: Vec<u64> = (0..1_000_000).collect();
    let sender = std::thread::spawn(move || {
        server.send(&big).unwrap();
        server
    });
    // Many short waits: the message arrives in pieces between them, none is lost.
    let got = loop {
        match client.recv_timeout::<Vec<u64>>(Duration::from_millis(1)) {
            Ok(v) => break v,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(got.len(), 1_000_000);
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as u64));
    drop(sender.join().unwrap());
}

#[test]
fn both_ends_sending_large_messages_at_once_do_not_deadlock() {
    let cert = certificate(&["127.0.0.1"]);
    let (a, b) = pair(&cert);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let msg = Arc::new(vec![0xa5u8; 8 << 20]);
    let mut threads = Vec::new();
    for (me, peer) in [(a.clone(), b.clone()), (b, a)] {
        let m = msg.clone();
        // Each end sends from one thread while another receives from it.
        threads.push(std::thread::spawn(move || {
            for _ in 0..3 {
                me.send_bytes(&m).unwrap();
            }
        }));
        let m = msg.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..3 {
                assert!(peer.recv_bytes().unwrap() == *m);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn what_cannot_cross_tls_is_refused_with_an_error() {
    let cert = certificate(&["127.0.0.1"]);
    let (server, client) = pair(&cert);
    let err = client.try_clone().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    // A pipe end (a descriptor) cannot travel over TLS...
    let (x, _y) = multiprocess::pipe().unwrap();
    assert!(client.send(&x).is_err());
    // ...and a TLS connection cannot travel to another process.
    let (p, _q) = multiprocess::pipe().unwrap();
    assert!(p.send(&client).is_err());
    // The connection still works.
    client.send(&"still fine").unwrap();
    assert_eq!(server.recv::<String>().unwrap(), "still fine");
}

/// A raw rustls client of `listener` (the hostile peer's view: it writes records as it likes),
/// its handshake complete, and the accepted connection.
fn raw_peer(cert: &(String, String)) -> (Connection, tls::rustls::ClientConnection, TcpStream) {
    let listener = tls_listener(cert, None);
    let Address::Tcp(at) = listener.address().clone() else {
        unreachable!()
    };
    let roots = cert.0.clone();
    let peer = std::thread::spawn(move || {
        let config = tls::client_config(roots.as_bytes()).unwrap();
        let name = "127.0.0.1".try_into().unwrap();
        let mut c = tls::rustls::ClientConnection::new(config, name).unwrap();
        let mut s = TcpStream::connect(at).unwrap();
        while c.is_handshaking() {
            c.complete_io(&mut s).unwrap();
        }
        while c.wants_write() {
            c.write_tls(&mut s).unwrap();
        }
        (c, s)
    });
    let conn = listener.accept_timeout(common::DEADLINE).unwrap();
    let (c, s) = peer.join().unwrap();
    (conn, c, s)
}

/// The records that carry `payload` as one frame (4-byte length, then the bytes).
fn records_of(c: &mut tls::rustls::ClientConnection, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend(payload);
    c.writer().write_all(&frame).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_stream_cut_inside_a_record_is_not_a_clean_end() {
    let cert = certificate(&["127.0.0.1"]);
    // Cut between records: the end of the stream, as a closed plain socket.
    let (conn, mut c, mut s) = raw_peer(&cert);
    let whole = records_of(&mut c, b"whole");
    s.write_all(&whole).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"whole");
    assert!(matches!(
        conn.recv_bytes(),
        Err(multiprocess::RecvError::Eof)
    ));
    // Cut inside the record that starts the next message: bytes that were sent are lost, which is
    // an error, not a clean end.
    let (conn, mut c, mut s) = raw_peer(&cert);
    s.write_all(&records_of(&mut c, b"whole")).unwrap();
    let cut = records_of(&mut c, b"the next message, cut");
    s.write_all(&cut[..cut.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"whole");
    match conn.recv_bytes() {
        Err(multiprocess::RecvError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_that_is_refused_gets_an_alert_back() {
    let cert = certificate(&["127.0.0.1"]);
    let (conn, mut c, mut s) = raw_peer(&cert);
    // An application-data record that no key made.
    s.write_all(b"\x17\x03\x03\x00\x20forged forged forged forged !!!!")
        .unwrap();
    assert!(conn.recv_bytes().is_err());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let refused = loop {
        match c.read_tls(&mut s) {
            Ok(0) => panic!("the connection closed without an alert"),
            Ok(_) => match c.process_new_packets() {
                Ok(_) => continue,
                Err(e) => break e,
            },
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        matches!(refused, tls::rustls::Error::AlertReceived(_)),
        "{refused:?}"
    );
}

/// A thread receives messages one at a time while another polls (or waits on) the same
/// connection; each message must arrive, whoever took its record off the socket.
fn receive_beside(poller: fn(&Connection)) {
    let cert = certificate(&["127.0.0.1"]);
    let (server, client) = pair(&cert);
    let server = Arc::new(server);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                poller(&server);
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let receiving = {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(m) = server.recv_bytes() {
                if tx.send(m).is_err() {
                    break;
                }
            }
        })
    };
    let mut stuck = None;
    for i in 0..3000u32 {
        client.send_bytes(&i.to_be_bytes()).unwrap();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => assert_eq!(m, i.to_be_bytes()),
            Err(_) => {
                stuck = Some(i);
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    polling.join().unwrap();
    drop(client); // the receiver sees the end
    receiving.join().unwrap();
    assert_eq!(stuck, None, "a message never reached its receiver");
}

#[test]
fn a_receive_is_not_starved_by_poll_on_another_thread() {
    receive_beside(|c| {
        let _ = c.poll(Duration::ZERO);
    });
}

#[test]
fn a_receive_is_not_starved_by_wait_on_another_thread() {
    receive_beside(|c| {
        let _ = wait(&[c], Some(Duration::ZERO));
    });
}

/// Connects to the manager over TLS first, then receives a dict proxy of it and writes into it:
/// the proxy uses this process's TLS connection.
fn tls_manager_child(args: (Address, String, Connection)) -> usize {
    let (address, roots, conn) = args;
    let _m = multiprocess::manager::Manager::connect_with(
        tls_client(&address, &roots).authkey(b"manager key"),
    )
    .expect("the manager over TLS");
    let d: multiprocess::manager::Dict<String, u32> = conn.recv().expect("the proxy");
    d.set(&"child".into(), &2).unwrap();
    d.len().unwrap()
}

#[test]
fn manager_proxies_received_after_a_tls_connect_use_that_connection() {
    let cert = certificate(&["127.0.0.1"]);
    let server =
        multiprocess::manager::Server::new(tls_listener(&cert, Some(b"manager key"))).unwrap();
    let address = server.address().clone();
    let stop = server.stopper();
    let serving = std::thread::spawn(move || server.serve());
    let m = multiprocess::manager::Manager::connect_with(
        tls_client(&address, &cert.0).authkey(b"manager key"),
    )
    .unwrap();
    let d = m.dict::<String, u32>().unwrap();
    d.set(&"parent".into(), &1).unwrap();
    // This process's plain `connect` to that manager is the TLS connection too.
    let again = multiprocess::manager::Manager::connect(&address, b"manager key").unwrap();
    assert_eq!(again.status().unwrap().clients.len(), 1);
    for method in METHODS {
        let (here, there) = multiprocess::pipe().unwrap();
        let child = common::start(
            method,
            tls_manager_child,
            (address.clone(), cert.0.clone(), there),
        );
        here.send(&d).unwrap();
        assert_eq!(common::join(child).unwrap(), 2, "{method:?}");
    }
    assert_eq!(d.get(&"child".into()).unwrap(), Some(2));
    drop((d, m, again));
    stop.stop();
    serving.join().unwrap().unwrap();
}
