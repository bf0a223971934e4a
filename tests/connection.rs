//! Connections: framing, errors, timeouts, descriptor passing, and Python wire compatibility.
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{
    Connection, RecvError, RecvTimeoutError, SendError, StartMethod, pipe, pipe_oneway,
};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A connection whose peer is a raw socket we can write anything into.
fn raw_peer() -> (Connection, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Connection::from_fd(a.into()), b)
}

#[test]
fn messages_keep_their_boundaries() {
    let (a, b) = pipe().unwrap();
    let sizes = [0usize, 1, 3, 4, 5, 100, 4096, 65_535, 65_536, 1 << 20, 0, 7];
    let writer = std::thread::spawn(move || {
        for (i, &n) in sizes.iter().enumerate() {
            a.send_bytes(&vec![i as u8; n]).unwrap();
        }
        a
    });
    for (i, &n) in sizes.iter().enumerate() {
        assert_eq!(b.recv_bytes().unwrap(), vec![i as u8; n]);
    }
    drop(writer.join().unwrap());
    assert!(matches!(b.recv_bytes(), Err(RecvError::Eof)));
}

#[test]
fn typed_values_round_trip() {
    let (a, b) = pipe().unwrap();
    a.send(&(1u8, -2i64, "three", vec![4.0f32], Some('5')))
        .unwrap();
    let v: (u8, i64, String, Vec<f32>, Option<char>) = b.recv().unwrap();
    assert_eq!(v, (1, -2, "three".to_string(), vec![4.0], Some('5')));
    b.send(&()).unwrap();
    a.recv::<()>().unwrap();
}

#[test]
fn decode_failure_consumes_the_message_and_keeps_the_connection() {
    let (a, b) = pipe().unwrap();
    a.send(&7u8).unwrap();
    a.send(&"next").unwrap();
    assert!(matches!(b.recv::<String>(), Err(RecvError::Decode(_))));
    assert_eq!(b.recv::<String>().unwrap(), "next");
}

struct Unserializable;
impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to serialize"))
    }
}

#[test]
fn encode_failure_writes_nothing() {
    let (a, b) = pipe().unwrap();
    assert!(matches!(a.send(&Unserializable), Err(SendError::Encode(m)) if m.contains("refuses")));
    assert!(!b.poll(Duration::ZERO).unwrap(), "nothing may be written");
    a.send(&1u32).unwrap();
    assert_eq!(b.recv::<u32>().unwrap(), 1);
}

#[test]
fn eof_at_a_boundary_and_inside_a_message() {
    let (c, mut raw) = raw_peer();
    raw.write_all(&[0, 0, 0, 2, b'h', b'i']).unwrap();
    raw.write_all(&[0, 0, 0, 10, b'x']).unwrap(); // announces 10, sends 1
    drop(raw);
    assert_eq!(c.recv_bytes().unwrap(), b"hi");
    match c.recv_bytes() {
        Err(
            e @ RecvError::Truncated {
                received: 5,
                expected: 14,
            },
        ) => assert!(e.is_disconnect()),
        other => panic!("{other:?}"),
    }
    // The stream cannot be trusted after that.
    assert!(matches!(c.recv_bytes(), Err(RecvError::Protocol(_))));

    let (c, mut raw) = raw_peer();
    raw.write_all(&[0, 0]).unwrap(); // half a header
    drop(raw);
    assert!(matches!(
        c.recv_bytes(),
        Err(RecvError::Truncated {
            received: 2,
            expected: 4
        })
    ));

    let (c, raw) = raw_peer();
    drop(raw);
    assert!(matches!(c.recv_bytes(), Err(RecvError::Eof)));
    assert!(
        c.poll(Duration::ZERO).unwrap(),
        "end-of-file counts as ready"
    );
}

#[test]
fn forged_lengths_are_protocol_errors_not_allocations() {
    for bad in [-2i32, -100, i32::MIN] {
        let (c, mut raw) = raw_peer();
        raw.write_all(&bad.to_be_bytes()).unwrap();
        assert!(
            matches!(c.recv_bytes(), Err(RecvError::Protocol(m)) if m.contains("negative")),
            "{bad}"
        );
    }
    // -1 then a 64-bit length beyond isize::MAX.
    let (c, mut raw) = raw_peer();
    raw.write_all(&(-1i32).to_be_bytes()).unwrap();
    raw.write_all(&u64::MAX.to_be_bytes()).unwrap();
    assert!(matches!(c.recv_bytes(), Err(RecvError::Protocol(_))));
    // -1 then 1 TiB with only a few bytes behind it: the receiver must not try to allocate 1 TiB.
    let (c, mut raw) = raw_peer();
    raw.write_all(&(-1i32).to_be_bytes()).unwrap();
    raw.write_all(&(1u64 << 40).to_be_bytes()).unwrap();
    raw.write_all(b"tiny").unwrap();
    drop(raw);
    assert!(matches!(
        c.recv_bytes(),
        Err(RecvError::Truncated { received: 16, .. })
    ));
}

#[test]
fn long_form_header_is_accepted() {
    // CPython only uses the -1 form above 2 GiB, but a small length in it is still well-formed.
    let (c, mut raw) = raw_peer();
    raw.write_all(&(-1i32).to_be_bytes()).unwrap();
    raw.write_all(&3u64.to_be_bytes()).unwrap();
    raw.write_all(b"abc").unwrap();
    assert_eq!(c.recv_bytes().unwrap(), b"abc");
}

#[test]
fn too_long_leaves_the_connection_unreadable() {
    let (a, b) = pipe().unwrap();
    a.send_bytes(&[1; 50]).unwrap();
    assert!(matches!(
        b.recv_bytes_max(49),
        Err(RecvError::TooLong { len: 50, max: 49 })
    ));
    assert!(matches!(b.recv_bytes(), Err(RecvError::Protocol(_))));
    // Sending still works.
    b.send_bytes(b"ok").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"ok");
    // Exactly the maximum is fine.
    let (a, b) = pipe().unwrap();
    a.send_bytes(&[1; 50]).unwrap();
    assert_eq!(b.recv_bytes_max(50).unwrap().len(), 50);
}

#[test]
fn recv_bytes_into_offsets_and_too_short() {
    // Port of CPython's test_connection recv_bytes_into checks.
    let (a, b) = pipe().unwrap();
    let msg = b"abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 40];
    a.send_bytes(msg).unwrap();
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 26);
    assert_eq!(&buf[..26], msg);
    a.send_bytes(msg).unwrap();
    assert_eq!(b.recv_bytes_into_at(&mut buf, 10).unwrap(), 26);
    assert_eq!(&buf[10..36], msg);
    a.send_bytes(msg).unwrap();
    match b.recv_bytes_into_at(&mut buf, 20) {
        Err(RecvError::BufferTooShort(m)) => assert_eq!(m, msg),
        other => panic!("{other:?}"),
    }
    // The message was consumed: the next one comes through.
    a.send_bytes(b"next").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"next");
    assert!(b.recv_bytes_into_at(&mut buf, 41).is_err());
}

#[test]
fn send_bytes_range_checks_its_bounds() {
    // Port of CPython's test_sendbytes.
    let (a, b) = pipe().unwrap();
    let msg = b"abcdefghijklmnopqrstuvwxyz";
    a.send_bytes_range(msg, 0, None).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), msg);
    a.send_bytes_range(msg, 5, None).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), &msg[5..]);
    a.send_bytes_range(msg, 7, Some(8)).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), &msg[7..15]);
    a.send_bytes_range(msg, 26, None).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"");
    a.send_bytes_range(msg, 26, Some(0)).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"");
    for (offset, size) in [
        (27, None),
        (10, Some(30)),
        (usize::MAX, Some(2)),
        (2, Some(usize::MAX)),
    ] {
        assert!(
            matches!(
                a.send_bytes_range(msg, offset, size),
                Err(SendError::Range { .. })
            ),
            "{offset} {size:?}"
        );
    }
    assert!(!b.poll(Duration::ZERO).unwrap());
}

#[test]
fn one_way_pipes_refuse_the_wrong_direction() {
    // Port of CPython's test_duplex_false.
    let (r, w) = pipe_oneway().unwrap();
    w.send(&1).unwrap();
    assert_eq!(r.recv::<i32>().unwrap(), 1);
    assert!(matches!(r.send(&1), Err(SendError::WrongDirection)));
    assert!(matches!(r.send_bytes(b"x"), Err(SendError::WrongDirection)));
    assert!(matches!(w.recv::<i32>(), Err(RecvError::WrongDirection)));
    assert!(matches!(
        w.poll(Duration::ZERO),
        Err(RecvError::WrongDirection)
    ));
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
}

#[test]
fn a_closed_end_is_gone_and_its_peer_sees_end_of_file() {
    // `close` consumes the end (a use after it does not compile: see its doc test), so `AsFd` and
    // every other method always have a descriptor to work on.
    let (a, b) = pipe().unwrap();
    let _ = std::os::fd::AsFd::as_fd(&a);
    a.close();
    assert!(matches!(b.recv_bytes(), Err(RecvError::Eof)));
    assert!(matches!(b.send_bytes(b"x"), Err(SendError::Disconnected)));
}

#[test]
fn peer_gone_with_unread_data_is_end_of_file() {
    let (a, b) = pipe().unwrap();
    a.send_bytes(b"never read").unwrap();
    drop(b);
    assert!(a.recv_bytes().unwrap_err().is_disconnect());
}

#[test]
fn recv_timeout_waits_at_least_its_duration_and_loses_nothing() {
    let (c, mut raw) = raw_peer();
    let t = Instant::now();
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    // Half a header, then a timeout, then the rest: the message arrives whole.
    raw.write_all(&[0, 0]).unwrap();
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    raw.write_all(&[0, 6, b'a', b'b', b'c']).unwrap();
    assert!(matches!(
        c.recv_bytes_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    raw.write_all(b"def").unwrap();
    assert_eq!(
        c.recv_bytes_timeout(Duration::from_secs(5)).unwrap(),
        b"abcdef"
    );
    // A typed message split the same way.
    let (a, b) = pipe().unwrap();
    a.send(&"typed").unwrap();
    assert_eq!(
        b.recv_timeout::<String>(Duration::from_secs(5)).unwrap(),
        "typed"
    );
    assert!(matches!(
        b.recv_timeout::<String>(Duration::from_millis(10)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn poll_waits_at_least_its_timeout() {
    let (a, b) = pipe().unwrap();
    let t = Instant::now();
    assert!(!b.poll(Duration::from_millis(60)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(60));
    a.send(&0u8).unwrap();
    assert!(b.poll(Duration::MAX).unwrap());
}

#[test]
fn connections_travel_through_connections() {
    // Port of CPython's test_fd_transfer, for connection ends.
    let (a, b) = pipe().unwrap();
    let (x, y) = pipe().unwrap();
    a.send(&(7u32, y)).unwrap(); // our `y` stays usable too
    let (n, y2): (u32, Connection) = b.recv().unwrap();
    assert_eq!(n, 7);
    x.send(&"via y2").unwrap();
    assert_eq!(y2.recv::<String>().unwrap(), "via y2");
    y2.send(&"back").unwrap();
    assert_eq!(x.recv::<String>().unwrap(), "back");
    // Many at once, with their directions.
    let ends: Vec<(Connection, Connection)> = (0..50).map(|_| pipe_oneway().unwrap()).collect();
    let (readers, writers): (Vec<_>, Vec<_>) = ends.into_iter().unzip();
    a.send(&writers).unwrap();
    let got: Vec<Connection> = b.recv().unwrap();
    for (i, (w, r)) in got.iter().zip(&readers).enumerate() {
        assert!(w.writable() && !w.readable());
        w.send(&i).unwrap();
        assert_eq!(r.recv::<usize>().unwrap(), i);
    }
}

#[test]
fn too_many_descriptors_is_an_error_before_sending() {
    let (a, b) = pipe().unwrap();
    let many: Vec<Connection> = (0..254).map(|_| pipe().unwrap().0).collect();
    let r = a.send(&many);
    assert!(
        matches!(r, Err(SendError::TooManyDescriptors(254))),
        "{r:?}"
    );
    assert!(!b.poll(Duration::ZERO).unwrap());
}

#[test]
fn serializing_a_connection_elsewhere_fails() {
    let (a, _b) = pipe().unwrap();
    assert!(bincode::serialize(&a).is_err());
}

fn relay(args: (Connection, Connection)) -> usize {
    // Receives connections over `ctl` and answers on each of them.
    let (ctl, done) = args;
    let mut n = 0;
    while let Ok(conn) = ctl.recv::<Connection>() {
        let v: u64 = conn.recv().unwrap();
        conn.send(&(v + 1)).unwrap();
        n += 1;
    }
    done.send(&n).unwrap();
    n
}

#[test]
fn connections_sent_to_a_running_child() {
    for m in StartMethod::ALL {
        let (ctl, ctl_child) = pipe().unwrap();
        let (done, done_child) = pipe().unwrap();
        let p = start(m, relay, (ctl_child, done_child));
        for i in 0..10u64 {
            let (mine, theirs) = pipe().unwrap();
            ctl.send(&theirs).unwrap();
            drop(theirs);
            mine.send(&i).unwrap();
            assert_eq!(mine.recv::<u64>().unwrap(), i + 1, "{m}");
        }
        drop(ctl);
        assert_eq!(done.recv::<usize>().unwrap(), 10);
        assert_eq!(join(p).unwrap(), 10);
    }
}

fn stream_out(args: (Connection, usize, usize)) {
    let (conn, count, size) = args;
    let buf: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    for _ in 0..count {
        conn.send_bytes(&buf).unwrap();
    }
}

#[test]
fn hundred_mebibyte_message_across_processes() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let p = start(m, stream_out, (there, 1, 100 << 20));
        let got = here.recv_bytes().unwrap();
        assert_eq!(got.len(), 100 << 20);
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8),
            "{m}"
        );
        join(p).unwrap();
        assert!(matches!(here.recv_bytes(), Err(RecvError::Eof)));
    }
}

fn die_mid_message(conn: Connection) {
    // Announce 1 MiB, send 10 bytes, die.
    use std::os::fd::AsFd;
    let mut raw = std::fs::File::from(conn.as_fd().try_clone_to_owned().unwrap());
    raw.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    raw.write_all(&[9; 10]).unwrap();
    std::process::abort();
}

#[test]
fn peer_dying_mid_message_is_truncated_not_a_hang() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let p = start(m, die_mid_message, there);
        match here.recv_bytes() {
            Err(RecvError::Truncated {
                received: 14,
                expected,
            }) => assert_eq!(expected, 4 + (1 << 20)),
            other => panic!("{m}: {other:?}"),
        }
        assert!(matches!(
            join(p),
            Err(multiprocess::ProcessError::Signaled { signal: 6 })
        ));
    }
}

// ---- Python wire compatibility ------------------------------------------------------------------

const PY_PEER: &str = r#"
import socket, sys
from multiprocessing.connection import Connection
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
c = Connection(s.detach())
while True:
    try:
        m = c.recv_bytes()
    except EOFError:
        break
    c.send_bytes(m[::-1])
c.send_bytes(b"")
c.send_bytes(b"bye from python")
"#;

#[test]
fn python_multiprocessing_connection_speaks_our_framing() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = std::env::temp_dir().join(format!("mp-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut child = match std::process::Command::new(&python)
        .arg("-c")
        .arg(PY_PEER)
        .arg(&path)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            panic!("this test needs python3 ({python}) as the peer and could not start it: {e}")
        }
    };
    listener.set_nonblocking(false).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let conn = Connection::from_fd(stream.try_clone().unwrap().into());
    for msg in [&b"hello"[..], b"", &vec![7u8; 3 << 20][..]] {
        conn.send_bytes(msg).unwrap();
        let mut rev = msg.to_vec();
        rev.reverse();
        assert_eq!(conn.recv_bytes_timeout(common::DEADLINE).unwrap(), rev);
    }
    // End-of-file for Python: shut our side down for writing (every handle shares the socket).
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let r = conn;
    assert_eq!(r.recv_bytes_timeout(common::DEADLINE).unwrap(), b"");
    assert_eq!(
        r.recv_bytes_timeout(common::DEADLINE).unwrap(),
        b"bye from python"
    );
    assert!(matches!(
        r.recv_bytes_timeout(common::DEADLINE),
        Err(RecvTimeoutError::Failed(RecvError::Eof))
    ));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn descriptors_cannot_travel_over_an_os_pipe() {
    let (r, w) = std::io::pipe().unwrap();
    let (r, w) = (Connection::from_fd(r.into()), Connection::from_fd(w.into()));
    let (x, _y) = pipe().unwrap();
    assert!(matches!(w.send(&x), Err(SendError::Io(_))));
    w.send(&5u8).unwrap(); // plain values still work over a pipe
    assert_eq!(r.recv::<u8>().unwrap(), 5);
}

#[test]
fn a_timed_receive_on_an_os_pipe_returns_at_its_deadline_inside_a_message() {
    // A pipe (not a socket) holding a header and part of the payload: the timed receive must poll
    // before each read, or it blocks in the read past its deadline (it did before the TLS change
    // reworked the receive path).
    let (r, w) = rustix::pipe::pipe().unwrap();
    let conn = Connection::from_fd(r);
    let mut w = std::fs::File::from(w);
    w.write_all(&10u32.to_be_bytes()).unwrap();
    w.write_all(b"abc").unwrap();
    let started = Instant::now();
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(200)),
        Err(multiprocess::RecvTimeoutError::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_millis(200));
    w.write_all(b"defghij").unwrap();
    assert_eq!(
        conn.recv_bytes_timeout(common::DEADLINE).unwrap(),
        b"abcdefghij"
    );
}
