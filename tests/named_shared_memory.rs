//! Named `SharedMemory` and the death of its creator: the name goes with the creator, however it
//! ends, and with nobody else. (Each process's fork server removes the names its client created when
//! the client dies; see `src/process/forkserver.rs`.)
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{Connection, ProcessError, SharedMemory, StartMethod, pipe};
use std::sync::Mutex;
use std::time::Duration;

/// One test at a time: this binary makes itself a child subreaper (below) and reaps by pid.
static ONE: Mutex<()> = Mutex::new(());

fn unique(tag: &str) -> String {
    format!("mp-named-{tag}-{}", std::process::id())
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{name}")).exists()
}

/// The fork server of a child we kill is orphaned; as a subreaper this process inherits it, and
/// reaps it once it has done its work, so that the test leaves no process behind.
fn adopt_orphans() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
}

fn reap(pid: i32) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    assert!(common::eventually(|| {
        !matches!(
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
            Ok(None)
        )
    }));
}

/// Creates a named region (and so starts its own fork server), reports the server's pid, and hangs.
fn create_and_hang(args: (String, Connection)) {
    let (name, conn) = args;
    let shm = SharedMemory::create(&name, 4096).unwrap();
    conn.send(&common::forkserver_pid()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(shm);
}

#[test]
fn a_killed_creator_takes_its_name_with_it() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    adopt_orphans();
    for m in StartMethod::ALL {
        let name = unique(&format!("killed-{m}"));
        let (here, there) = pipe().unwrap();
        let child = start(m, create_and_hang, (name.clone(), there));
        let server: Option<i32> = here.recv_timeout(common::DEADLINE).unwrap();
        assert!(exists(&name), "{m}");
        child.kill().unwrap();
        assert!(matches!(
            join(child),
            Err(ProcessError::Signaled { signal: 9 })
        ));
        assert!(
            common::eventually(|| !exists(&name)),
            "{m}: {name} outlived its creator"
        );
        reap(server.expect("the creator started a fork server"));
    }
}

fn create_and_exit(name: String) {
    let shm = SharedMemory::create(&name, 4096).unwrap();
    std::mem::forget(shm); // never dropped: the name must still go
    std::process::exit(0);
}

#[test]
fn a_creator_that_exits_without_dropping_takes_its_name_with_it() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    for m in StartMethod::ALL {
        let name = unique(&format!("exited-{m}"));
        let r = join(start(m, create_and_exit, name.clone()));
        assert!(
            matches!(r, Err(ProcessError::Exited { code: 0 })),
            "{m}: {r:?}"
        );
        assert!(!exists(&name), "{m}: {name} outlived its creator");
    }
}

fn open_and_hang(args: (String, Connection)) {
    let (name, conn) = args;
    let shm = SharedMemory::open(&name).unwrap();
    conn.send(&()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(shm);
}

fn drop_a_copy(shm: SharedMemory) -> usize {
    shm.len()
}

#[test]
fn nobody_but_the_creator_removes_a_name() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    for m in StartMethod::ALL {
        let name = unique(&format!("kept-{m}"));
        let shm = SharedMemory::create(&name, 4096).unwrap();
        // An opener that is killed.
        let (here, there) = pipe().unwrap();
        let child = start(m, open_and_hang, (name.clone(), there));
        here.recv_timeout::<()>(common::DEADLINE).unwrap();
        child.kill().unwrap();
        let _ = join(child);
        // A child given a copy (under fork, a copy of the creator's own handle) that drops it.
        assert_eq!(join(start(m, drop_a_copy, shm.clone())).unwrap(), 4096);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            exists(&name),
            "{m}: removed by a process that did not create it"
        );
        drop(shm);
        assert!(!exists(&name), "{m}");
    }
}

#[test]
fn a_name_created_again_by_someone_else_is_left_alone() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    adopt_orphans();
    for m in StartMethod::ALL {
        let name = unique(&format!("again-{m}"));
        let (here, there) = pipe().unwrap();
        let child = start(m, create_and_hang, (name.clone(), there));
        let server: Option<i32> = here.recv_timeout(common::DEADLINE).unwrap();
        // The name is removed and created again by another process, then the first creator dies.
        SharedMemory::remove(&name).unwrap();
        let ours = SharedMemory::create(&name, 8192).unwrap();
        child.kill().unwrap();
        let _ = join(child);
        reap(server.expect("the creator started a fork server"));
        assert!(
            exists(&name),
            "{m}: the creator's server removed another region"
        );
        assert_eq!(SharedMemory::open(&name).unwrap().len(), 8192);
        drop(ours);
        assert!(!exists(&name));
    }
}

/// Creates a named region, reports its fork server, waits to hear that the server was killed,
/// makes a call into the crate (which notices, and starts and briefs a new server), reports, hangs.
fn create_outlive_server_and_hang(args: (String, Connection)) {
    let (name, conn) = args;
    let shm = SharedMemory::create(&name, 4096).unwrap();
    conn.send(&common::forkserver_pid()).unwrap();
    conn.recv::<()>().unwrap();
    let _ = multiprocess::active_children();
    conn.send(&common::forkserver_pid()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(shm);
}

#[test]
fn names_outlive_a_killed_fork_server_and_go_with_the_creator() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    adopt_orphans();
    for m in StartMethod::ALL {
        let name = unique(&format!("server-killed-{m}"));
        let (here, there) = pipe().unwrap();
        let child = start(m, create_outlive_server_and_hang, (name.clone(), there));
        let first: Option<i32> = here.recv_timeout(common::DEADLINE).unwrap();
        let first = first.expect("a fork server");
        std::process::Command::new("kill")
            .args(["-9", &first.to_string()])
            .status()
            .unwrap();
        assert!(common::eventually(|| !common::pid_alive(first)));
        here.send(&()).unwrap();
        let second: Option<i32> = here.recv_timeout(common::DEADLINE).unwrap();
        let second = second.expect("a new fork server");
        assert_ne!(first, second, "{m}");
        assert!(exists(&name), "{m}");
        child.kill().unwrap();
        let _ = join(child);
        assert!(
            common::eventually(|| !exists(&name)),
            "{m}: {name} outlived its creator"
        );
        reap(second);
    }
}

/// In a child of its own (the limit is process-wide): the fork server starts with a small
/// descriptor limit, the client raises its own and creates more named regions than the server
/// could hold descriptors for. (Found by review: the server then removed every name.)
fn more_names_than_descriptors(n: usize) -> (usize, usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    let low = Rlimit {
        current: Some(64),
        maximum: old.maximum,
    };
    setrlimit(Resource::Nofile, low).unwrap();
    multiprocess::init().unwrap(); // the server inherits the limit of 64
    setrlimit(Resource::Nofile, old).unwrap();
    let regions: Vec<_> = (0..n)
        .map(|i| {
            let name = unique(&format!("many-{i}"));
            let shm = SharedMemory::create(&name, 4096).unwrap();
            (name, shm)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let alive = regions.iter().filter(|(name, _)| exists(name)).count();
    let server_alive = common::forkserver_pid().is_some();
    drop(regions);
    (alive, server_alive as usize)
}

#[test]
fn the_fork_server_tracks_more_names_than_it_has_descriptors() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let (alive, server) = join(start(StartMethod::Fork, more_names_than_descriptors, 200)).unwrap();
    assert_eq!((alive, server), (200, 1));
}

/// Creates a region, removes its name by hand, creates the name again, then drops the first handle
/// (whose drop must not unregister the second region), reports, and hangs.
fn unlink_recreate_and_hang(args: (String, Connection)) {
    let (name, conn) = args;
    let first = SharedMemory::create(&name, 4096).unwrap();
    first.unlink().unwrap();
    let second = SharedMemory::create(&name, 8192).unwrap();
    drop(first);
    conn.send(&common::forkserver_pid()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(second);
}

#[test]
fn a_name_created_again_by_its_creator_stays_tracked() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    adopt_orphans();
    for m in StartMethod::ALL {
        let name = unique(&format!("recreated-{m}"));
        let (here, there) = pipe().unwrap();
        let child = start(m, unlink_recreate_and_hang, (name.clone(), there));
        let server: Option<i32> = here.recv_timeout(common::DEADLINE).unwrap();
        assert!(exists(&name), "{m}");
        child.kill().unwrap();
        let _ = join(child);
        assert!(
            common::eventually(|| !exists(&name)),
            "{m}: {name} outlived its creator"
        );
        reap(server.expect("a fork server"));
    }
}
