//! What another process can do to the objects it shares with us, and what it cannot: shrink shared
//! memory under our mappings, send memory that could shrink, pass one kind of memory off as another.
//! Every test here crashed (SIGBUS) or misbehaved before the fix it pins.
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{Condition, Connection, SharedMemory, StartMethod, WaitTimeoutError, pipe};
use std::io::{ErrorKind, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The paths (under `/proc/self/fd`) of this process's descriptors whose target contains `what`.
fn own_fds(what: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            target.to_string_lossy().contains(what).then_some(path)
        })
        .collect()
}

/// A child that received an anonymous region tries every way to shrink it through its descriptor.
fn try_to_shrink(shm: SharedMemory) -> Vec<String> {
    own_fds("multiprocess-shm")
        .into_iter()
        .map(|path| {
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0));
            format!("{r:?}")
        })
        .chain(std::iter::once(format!("{}", shm.len())))
        .collect()
}

#[test]
fn a_peer_cannot_shrink_anonymous_memory_it_was_given() {
    for m in StartMethod::ALL {
        let shm = SharedMemory::new(1 << 16).unwrap();
        shm.write(0, b"still here").unwrap();
        let tried = join(start(m, try_to_shrink, shm.clone())).unwrap();
        assert!(tried.len() >= 2, "{m}: {tried:?}");
        for t in &tried[..tried.len() - 1] {
            assert!(t.contains("PermissionDenied"), "{m}: shrinking worked: {t}");
        }
        // Every page is still there: no SIGBUS here.
        let mut buf = [0u8; 10];
        shm.read((1 << 16) - 10, &mut buf).unwrap();
        shm.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"still here", "{m}");
    }
}

/// Sends one message in Python's framing with `fd` attached, as a hostile peer could.
fn send_raw(sock: &UnixStream, payload: &[u8], fd: &OwnedFd) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let header = (payload.len() as u32).to_be_bytes();
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let iov = [IoSlice::new(&header), IoSlice::new(payload)];
    let sent = rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::empty()).unwrap();
    assert_eq!(sent, 4 + payload.len());
}

#[test]
fn memory_that_could_shrink_is_refused_before_it_is_mapped() {
    use rustix::fs::MemfdFlags;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = Connection::from_fd(ours.into());
    // An unsealed memfd with the right name: a SharedMemory's wire form is (descriptor 0, no name).
    let forged = rustix::fs::memfd_create("multiprocess-shm", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&forged, 1 << 20).unwrap();
    send_raw(&theirs, &[0, 0, 0, 0, 0], &forged);
    let err = conn.recv::<SharedMemory>().unwrap_err();
    assert!(err.to_string().contains("not sealed"), "{err}");
    // Had it been mapped, this would now crash the receiver at its next access.
    rustix::fs::ftruncate(&forged, 0).unwrap();
    // A sealed one of another kind is refused too.
    let other = multiprocess::Lock::new().unwrap();
    let (a, b) = pipe().unwrap();
    a.send(&(other, None::<String>)).unwrap();
    assert!(b.recv::<SharedMemory>().is_err());
    // The connection is still usable.
    let honest = SharedMemory::new(8).unwrap();
    send_raw(&theirs, &[0, 0, 0, 0, 0], &honest_fd(&honest));
    assert_eq!(conn.recv::<SharedMemory>().unwrap().len(), 8);
}

/// A descriptor of `shm`'s memory, found in our own descriptor table: the one that appeared when a
/// copy of `shm` was received (tests in other threads make and close regions of the same name all
/// the time, so it must be new, sealed and of `shm`'s size, and it is opened while the copy holds it).
fn honest_fd(shm: &SharedMemory) -> OwnedFd {
    let (a, b) = pipe().unwrap();
    let before = own_fds("multiprocess-shm");
    a.send(shm).unwrap();
    let copy = b.recv::<SharedMemory>().unwrap();
    let found = own_fds("multiprocess-shm")
        .into_iter()
        .filter(|p| !before.contains(p))
        .find_map(|path| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .ok()?;
            let sealed = rustix::fs::fcntl_get_seals(&f)
                .is_ok_and(|s| s.contains(rustix::fs::SealFlags::SHRINK));
            (sealed && f.metadata().ok()?.len() == shm.len() as u64).then_some(f)
        })
        .expect("the received copy's descriptor");
    drop(copy);
    found.into()
}

fn unique(tag: &str) -> String {
    format!(
        "mp-hostile-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(['(', ')'], "")
}

/// Opens the named region, tells the parent, waits until it says it truncated the file, then reads
/// past the new end.
fn read_after_truncation(args: (String, Connection)) -> (String, String) {
    let (name, conn) = args;
    let shm = SharedMemory::open(&name).unwrap();
    let mut buf = vec![0u8; 4096];
    shm.read(8192, &mut buf).unwrap();
    conn.send(&()).unwrap();
    conn.recv::<()>().unwrap();
    let read = shm.read(8192, &mut buf);
    let write = shm.write(0, b"x");
    (format!("{read:?}"), format!("{write:?}"))
}

#[test]
fn a_named_region_truncated_under_a_reader_is_an_error_not_a_crash() {
    for m in StartMethod::ALL {
        let name = unique(m.name());
        let shm = SharedMemory::create(&name, 64 << 10).unwrap();
        let (here, there) = pipe().unwrap();
        let child = start(m, read_after_truncation, (name.clone(), there));
        here.recv_timeout::<()>(common::DEADLINE).unwrap();
        // Anyone who can open the name can do this.
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{name}"))
            .unwrap()
            .set_len(0)
            .unwrap();
        here.send(&()).unwrap();
        let (read, write) = join(child).expect("the reader survived");
        assert!(read.contains("UnexpectedEof"), "{m}: {read}");
        assert!(write.contains("UnexpectedEof"), "{m}: {write}");
        // The creator's own mapping is guarded too.
        let mut buf = [0u8; 16];
        let e = shm.read(100, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{m}");
    }
}

#[test]
fn a_received_named_region_is_guarded_too() {
    let name = unique("received");
    let shm = SharedMemory::create(&name, 16 << 10).unwrap();
    let (a, b) = pipe().unwrap();
    a.send(&shm).unwrap();
    let got: SharedMemory = b.recv().unwrap();
    assert_eq!(got.name(), Some(name.as_str()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut buf = [0u8; 8];
    got.read(0, &mut buf).unwrap(); // the first page is still there
    let e = got.read(8192, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    drop(got); // a receiver never owns the name
    assert!(SharedMemory::open(&name).is_ok());
}

#[test]
fn a_condition_accepts_guards_of_its_clones_and_receptions() {
    let cond = Condition::new().unwrap();
    let clone = cond.clone();
    let timed_out = cond.wait_timeout(clone.lock().unwrap(), Duration::from_millis(5));
    assert!(matches!(timed_out, Err(WaitTimeoutError::Timeout(_))));
    drop(timed_out);
    let (a, b) = pipe().unwrap();
    a.send(&cond).unwrap();
    let received: Condition = b.recv().unwrap();
    let timed_out = cond.wait_timeout(received.lock().unwrap(), Duration::from_millis(5));
    assert!(matches!(timed_out, Err(WaitTimeoutError::Timeout(_))));
    drop(timed_out);
    assert!(!cond.get_lock().is_locked());
}

#[test]
#[should_panic(expected = "another lock")]
fn a_condition_refuses_a_guard_of_another_lock() {
    let (cond, other) = (Condition::new().unwrap(), Condition::new().unwrap());
    let guard = other.lock().unwrap();
    let _ = cond.wait_timeout(guard, Duration::from_millis(1));
}

/// Opens the named region, reports its pid, and after the parent's go reads past the new end.
fn read_after_kill_bus(args: (String, Connection)) -> String {
    let (name, conn) = args;
    let shm = SharedMemory::open(&name).unwrap();
    conn.send(&std::process::id()).unwrap();
    conn.recv::<()>().unwrap();
    let mut buf = [0u8; 16];
    format!("{:?}", shm.read(8192, &mut buf))
}

/// `kill -BUS` (a signal sent, not a fault) does what it would have done without the guard: it ends
/// a process whose disposition was the default, and is handed to a handler installed before ours
/// (Rust's own, under fork); either way it never leaves the process running unguarded, so a later
/// truncation cannot kill it. (Found by review: the guard was silently gone after a `kill -BUS`.)
#[test]
fn a_sent_sigbus_does_not_disarm_the_guard() {
    for m in StartMethod::ALL {
        let name = unique(&format!("kill-bus-{m}"));
        let _shm = SharedMemory::create(&name, 64 << 10).unwrap();
        let (here, there) = pipe().unwrap();
        let child = start(m, read_after_kill_bus, (name.clone(), there));
        let pid: u32 = here.recv_timeout(common::DEADLINE).unwrap();
        let st = std::process::Command::new("kill")
            .args(["-BUS", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(200));
        if !common::pid_alive(pid as i32) {
            // It ended of the signal, as the sender meant (its disposition was the default).
            assert!(
                matches!(
                    join(child),
                    Err(multiprocess::ProcessError::Signaled { signal: 7 })
                ),
                "{m}"
            );
            continue;
        }
        // A handler installed before ours took it (Rust's own, inherited under fork): the guard
        // must still be there for the truncation.
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{name}"))
            .unwrap()
            .set_len(0)
            .unwrap();
        let _ = here.send(&());
        match join(child) {
            Ok(read) => assert!(read.contains("UnexpectedEof"), "{m}: {read}"),
            other => panic!("{m}: {other:?}"),
        }
    }
}
