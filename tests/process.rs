//! Processes across real process boundaries, under every start method.
#![cfg(not(miri))]

mod common;

use common::{join, pid_alive, start};
use multiprocess::{Connection, JoinTimeoutError, Process, ProcessError, StartMethod, pipe};
use std::time::{Duration, Instant};

fn square(x: i64) -> i64 {
    x * x
}

fn identity(v: (String, Vec<u8>, Option<f64>)) -> (String, Vec<u8>, Option<f64>) {
    v
}

fn panics(msg: String) -> u8 {
    panic!("{msg}")
}

fn exits(code: i32) {
    std::process::exit(code)
}

fn sleeps(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

fn whoami(_: ()) -> (String, i32, Option<(String, i32)>, bool) {
    let me = multiprocess::current_process();
    let parent = multiprocess::parent_process().map(|p| (p.name, p.pid));
    (me.name, me.pid, parent, me.daemon)
}

#[test]
fn returns_the_functions_value() {
    for m in StartMethod::ALL {
        assert_eq!(join(start(m, square, -12)).unwrap(), 144, "{m}");
        let v = ("héllo".to_string(), vec![0, 1, 255], Some(2.5));
        assert_eq!(join(start(m, identity, v.clone())).unwrap(), v, "{m}");
    }
}

#[test]
fn panic_message_comes_back_with_exitcode_1() {
    for m in StartMethod::ALL {
        let p = start(m, panics, format!("boom under {m}"));
        let err = match p.join_timeout(common::DEADLINE).unwrap_err() {
            JoinTimeoutError::Failed(e) => e,
            other => panic!("{m}: {other:?}"),
        };
        match &err {
            ProcessError::Panicked { message } => assert_eq!(*message, format!("boom under {m}")),
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(err.exitcode(), Some(1));
        assert_eq!(p.exitcode(), Some(1), "{m}");
        assert!(!p.is_alive());
    }
}

#[test]
fn exit_without_result_reports_the_code() {
    for m in StartMethod::ALL {
        for code in [0, 3, 255] {
            let err = join(start(m, exits, code)).unwrap_err();
            assert!(
                matches!(err, ProcessError::Exited { code: c } if c == code),
                "{m}: {err:?}"
            );
        }
    }
}

#[test]
fn kill_and_terminate_report_the_signal() {
    for m in StartMethod::ALL {
        let p = start(m, sleeps, 60_000);
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        p.kill().unwrap();
        assert!(p.join_timeout(common::DEADLINE).is_err());
        assert_eq!(p.exitcode(), Some(-9), "{m}");

        let p = start(m, sleeps, 60_000);
        p.terminate().unwrap();
        let err = join(p).unwrap_err();
        assert!(
            matches!(err, ProcessError::Signaled { signal: 15 }),
            "{m}: {err:?}"
        );
        assert_eq!(err.exitcode(), Some(-15));
        assert!(err.to_string().contains("SIGTERM"), "{err}");
    }
}

#[test]
fn signalling_a_finished_child_is_harmless() {
    for m in StartMethod::ALL {
        let p = start(m, square, 2);
        assert_eq!(p.join_timeout(common::DEADLINE).unwrap(), 4);
        p.kill().unwrap();
        p.terminate().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        assert!(matches!(
            p.join_timeout(Duration::ZERO),
            Err(JoinTimeoutError::Failed(ProcessError::AlreadyJoined))
        ));
        assert!(matches!(p.join(), Err(ProcessError::AlreadyJoined)));
    }
}

#[test]
fn join_timeout_waits_at_least_its_duration_and_can_be_repeated() {
    for m in StartMethod::ALL {
        let p = start(m, sleeps, 400);
        let t = Instant::now();
        assert!(matches!(
            p.join_timeout(Duration::from_millis(100)),
            Err(JoinTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(p.is_alive(), "{m}: join_timeout must not kill the child");
        p.join_timeout(common::DEADLINE).unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
}

#[test]
fn child_killed_before_it_could_report_never_hangs_join() {
    for m in StartMethod::ALL {
        // Killed immediately: the child may not even have read its bootstrap message.
        let p = start(m, square, 1);
        p.kill().unwrap();
        match join(p) {
            Ok(v) => assert_eq!(v, 1), // it won the race
            Err(ProcessError::Signaled { signal: 9 }) => {}
            Err(e) => panic!("{m}: {e:?}"),
        }
    }
}

#[test]
fn identity_inside_the_child() {
    for m in StartMethod::ALL {
        let p = Process::builder()
            .name("worker-7")
            .daemon(true)
            .start_method(m)
            .spawn(whoami, ())
            .unwrap();
        assert_eq!(p.name(), "worker-7");
        assert!(p.daemon());
        assert_eq!(p.start_method(), m);
        let pid = p.pid();
        let (name, child_pid, parent, daemon) = join(p).unwrap();
        assert_eq!(name, "worker-7");
        assert_eq!(child_pid, pid);
        assert!(daemon);
        let me = multiprocess::current_process();
        assert_eq!(parent, Some((me.name, me.pid)), "{m}");
    }
}

#[test]
fn default_names_count_up() {
    let a = Process::spawn(whoami, ()).unwrap();
    let b = Process::spawn(whoami, ()).unwrap();
    let (na, nb) = (join(a).unwrap().0, join(b).unwrap().0);
    let n = |s: &str| {
        s.strip_prefix("Process-")
            .and_then(|n| n.parse::<u64>().ok())
            .expect(s)
    };
    assert!(n(&nb) > n(&na), "{na} {nb}");
}

fn spawn_grandchild(m: StartMethod) -> (String, i64) {
    let p = Process::builder()
        .start_method(m)
        .spawn(square, 11)
        .unwrap();
    let v = p.join().unwrap();
    let child_name = multiprocess::current_process().name;
    (child_name, v)
}

#[test]
fn children_can_have_children() {
    for m in StartMethod::ALL {
        for inner in StartMethod::ALL {
            let p = Process::builder()
                .name("middle")
                .start_method(m)
                .spawn(spawn_grandchild, inner)
                .unwrap();
            assert_eq!(
                join(p).unwrap(),
                ("middle".to_string(), 121),
                "{m} -> {inner}"
            );
        }
    }
}

#[test]
fn active_children_lists_running_children_only() {
    for m in StartMethod::ALL {
        let p = start(m, sleeps, 60_000);
        assert!(
            multiprocess::active_children()
                .iter()
                .any(|c| c.pid == p.pid()),
            "{m}"
        );
        p.kill().unwrap();
        let pid = p.pid();
        let _ = join(p);
        assert!(
            !multiprocess::active_children().iter().any(|c| c.pid == pid),
            "{m}"
        );
    }
}

fn echo_service(conn: Connection) -> u32 {
    let mut n = 0;
    while let Ok(v) = conn.recv::<String>() {
        conn.send(&v.to_uppercase()).unwrap();
        n += 1;
    }
    n
}

#[test]
fn connection_as_argument_under_every_method() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let p = start(m, echo_service, there);
        for word in ["a", "bc", "def"] {
            here.send(word).unwrap();
            assert_eq!(here.recv::<String>().unwrap(), word.to_uppercase());
        }
        drop(here); // end-of-file ends the child's loop
        assert_eq!(join(p).unwrap(), 3, "{m}");
    }
}

fn sum_bytes(v: serde_bytes::ByteBuf) -> (u64, serde_bytes::ByteBuf) {
    let s = v.iter().map(|&b| b as u64).sum();
    (s, v)
}

#[test]
fn large_argument_and_result() {
    for m in StartMethod::ALL {
        let data: Vec<u8> = (0..32 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expect: u64 = data.iter().map(|&b| b as u64).sum();
        let (sum, back) = join(start(
            m,
            sum_bytes,
            serde_bytes::ByteBuf::from(data.clone()),
        ))
        .unwrap();
        assert_eq!(sum, expect, "{m}");
        assert!(back.as_slice() == data.as_slice(), "{m}");
    }
}

/// Middle child: starts a long-sleeping grandchild, reports its pid, then sleeps.
fn parent_of_sleeper(args: (Connection, StartMethod)) {
    let (conn, m) = args;
    let g = Process::builder()
        .start_method(m)
        .spawn(sleeps, 60_000)
        .unwrap();
    conn.send(&g.pid()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn children_die_with_their_parent() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let middle = start(m, parent_of_sleeper, (there, m));
        let grandchild: i32 = here.recv_timeout(common::DEADLINE).unwrap();
        assert!(pid_alive(grandchild));
        middle.kill().unwrap(); // abnormal death: no exit handler runs in the middle process
        assert!(matches!(
            join(middle),
            Err(ProcessError::Signaled { signal: 9 })
        ));
        assert!(
            common::eventually(|| !pid_alive(grandchild)),
            "{m}: grandchild {grandchild} outlived its parent"
        );
    }
}

fn spawn_and_return(args: (StartMethod, bool)) -> i32 {
    let (m, daemon) = args;
    let p = Process::builder()
        .daemon(daemon)
        .start_method(m)
        .spawn(sleeps, if daemon { 60_000 } else { 300 })
        .unwrap();
    p.pid() // the handle is dropped without join
}

#[test]
fn normal_exit_joins_non_daemon_and_terminates_daemon_children() {
    for m in StartMethod::ALL {
        // Non-daemon: the middle process waits for its 300 ms child before it exits.
        let t = Instant::now();
        let grandchild = join(start(m, spawn_and_return, (m, false))).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{m}: exited before its child"
        );
        assert!(!pid_alive(grandchild));
        // Daemon: terminated at exit rather than waited for (it would sleep 60 s).
        let grandchild = join(start(m, spawn_and_return, (m, true))).unwrap();
        assert!(common::eventually(|| !pid_alive(grandchild)), "{m}");
    }
}

#[test]
fn many_processes_some_terminated() {
    // Port of CPython's test_many_processes: start N, terminate half, every exit code is right.
    for m in StartMethod::ALL {
        let procs: Vec<_> = (0..20)
            .map(|i| start(m, sleeps, if i % 2 == 0 { 60_000 } else { 10 }))
            .collect();
        for p in procs.iter().step_by(2) {
            p.terminate().unwrap();
        }
        for (i, p) in procs.into_iter().enumerate() {
            let r = join(p);
            if i % 2 == 0 {
                assert!(
                    matches!(r, Err(ProcessError::Signaled { signal: 15 })),
                    "{m} {i}: {r:?}"
                );
            } else {
                assert!(r.is_ok(), "{m} {i}: {r:?}");
            }
        }
    }
}

#[test]
fn pidfd_identifies_the_child() {
    // Port of CPython's test_sentinel: a descriptor that tracks the child's life.
    for m in StartMethod::ALL {
        let p = start(m, sleeps, 200);
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&p.pidfd())
        ))
        .unwrap();
        assert!(
            fdinfo.contains(&format!("Pid:\t{}", p.pid())),
            "{m}: {fdinfo}"
        );
        assert!(p.is_alive());
        p.join_timeout(common::DEADLINE).unwrap();
        assert!(!p.is_alive());
    }
}

#[test]
fn cpu_count_is_positive() {
    assert!(multiprocess::cpu_count() >= 1);
}

#[test]
fn start_method_names_round_trip() {
    for m in StartMethod::ALL {
        assert_eq!(m.name().parse::<StartMethod>().unwrap(), m);
    }
    assert!("thread".parse::<StartMethod>().is_err());
}

#[test]
fn threads_starting_children_concurrently() {
    // The test harness itself is multi-threaded; here many threads start children at once.
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..5 {
                    let m = StartMethod::ALL[(t + i) % 3];
                    assert_eq!(
                        join(start(m, square, (t * 10 + i) as i64)).unwrap(),
                        ((t * 10 + i) * (t * 10 + i)) as i64
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

// ---- Regressions found in review ---------------------------------------------------------------

#[test]
fn concurrent_reaping_gives_every_join_its_own_status() {
    // One thread keeps reaping through active_children() while children come and go: every join must
    // still see its child's real status (no ECHILD, no lost fork-server report, no hang).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = multiprocess::active_children();
            }
        })
    };
    for m in StartMethod::ALL {
        for _ in 0..30 {
            let p = start(m, exits, 3);
            let err = join(p).unwrap_err();
            assert!(
                matches!(err, ProcessError::Exited { code: 3 }),
                "{m}: {err:?}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reaper.join().unwrap();
}

#[test]
fn fork_while_another_thread_prints() {
    // stdout's lock may be held by another thread at the instant of fork(); the child must not
    // inherit it locked (it flushes stdout when it exits).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let printer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                println!("printing while forking");
            }
        })
    };
    for i in 0..100 {
        assert_eq!(join(start(StartMethod::Fork, square, i)).unwrap(), i * i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    printer.join().unwrap();
}

#[derive(Debug, serde::Deserialize)]
struct PanicsWhenSerialized;

impl serde::Serialize for PanicsWhenSerialized {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("serialize panicked")
    }
}

fn returns_bad_value(_: ()) -> PanicsWhenSerialized {
    PanicsWhenSerialized
}

#[test]
fn a_result_that_panics_while_serializing_is_reported() {
    for m in StartMethod::ALL {
        let err = join(start(m, returns_bad_value, ())).unwrap_err();
        assert!(
            matches!(&err, ProcessError::Panicked { message } if message == "serialize panicked"),
            "{m}: {err:?}"
        );
    }
}

fn returns_many_connections(n: usize) -> Vec<Connection> {
    (0..n).map(|_| pipe().unwrap().0).collect()
}

#[test]
fn a_result_that_cannot_be_sent_is_an_error_not_a_clean_exit() {
    for m in StartMethod::ALL {
        let err = join(start(m, returns_many_connections, 300)).unwrap_err();
        assert!(
            matches!(&err, ProcessError::Child(msg) if msg.contains("253")),
            "{m}: {err:?}"
        );
        assert_eq!(
            join(start(m, returns_many_connections, 3)).unwrap().len(),
            3
        );
    }
}

fn fd3_flags(_: ()) -> String {
    std::fs::read_to_string("/proc/self/fdinfo/3").unwrap_or_default()
}

#[test]
fn bootstrap_socket_is_close_on_exec_in_the_child() {
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let info = join(start(m, fd3_flags, ())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| f.trim().to_string());
        let flags = u32::from_str_radix(flags.as_deref().unwrap_or("0"), 8).unwrap();
        assert!(flags & 0o2000000 != 0, "{m}: fd 3 lacks O_CLOEXEC: {info}");
    }
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn dropped_handles_leak_neither_descriptors_nor_zombies() {
    for m in StartMethod::ALL {
        let before = count_fds();
        let pids: Vec<i32> = (0..40).map(|i| start(m, square, i).pid()).collect(); // handles dropped
        assert!(common::eventually(|| pids.iter().all(|&p| !pid_alive(p))));
        join(start(m, square, 0)).unwrap(); // starting a child reaps the finished, forgotten ones
        let after = count_fds();
        // Tests run in parallel in this process: allow their descriptors, but not 2 per child.
        assert!(after < before + 40, "{m}: {before} -> {after}");
        if m != StartMethod::ForkServer {
            // Direct children: no zombie left (a fork server's children are reaped by the server).
            let zombies = pids
                .iter()
                .filter(|&&p| std::fs::metadata(format!("/proc/{p}")).is_ok())
                .count();
            assert!(zombies < 5, "{m}: {zombies} zombies");
        }
    }
}
