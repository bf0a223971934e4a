//! Behaviours checked by CPython's `Lib/test/_test_multiprocessing.py`, in Rust terms.
//!
//! Where each applicable test of `_TestProcess`, `_TestConnection` and `_TestPoll` is ported:
//!
//! | CPython test | here |
//! |---|---|
//! | test_current, test_parent_process_attributes, test_daemon_argument | `process.rs::identity_inside_the_child` |
//! | test_args_argument, test_process | `process.rs::returns_the_functions_value`, `join_timeout_*` |
//! | test_parent_process (child sees its parent die) | `process.rs::children_die_with_their_parent` (here the child is killed) |
//! | test_terminate, test_kill | `process.rs::kill_and_terminate_report_the_signal` |
//! | test_cpu_count, test_active_children | `process.rs` |
//! | test_recursion | `process.rs::children_can_have_children` |
//! | test_sentinel | `process.rs::pidfd_identifies_the_child` |
//! | test_many_processes | `process.rs::many_processes_some_terminated` |
//! | test_child_fd_inflation | [`child_fd_inflation`] |
//! | test_forkserver_sigkill | [`forkserver_killed_is_restarted`], `process_robustness.rs::a_fork_server_that_dies_loses_no_childs_outcome` (here the children of a killed server still report their own outcome: they are the parent's children) |
//! | test_forkserver_sigint | `process_robustness.rs::a_fork_server_that_dies_loses_no_childs_outcome` (the server ignores SIGINT, and SIGTERM) |
//! | test_closefd (a descriptor the child was not given is closed under spawn and forkserver, open under fork) | `process_robustness.rs::spawned_children_inherit_only_what_they_are_given` |
//! | TestIgnoreEINTR test_ignore (a child with a signal handler keeps receiving and sending) | `sys::linux::process::tests::signals_do_not_break_a_childs_blocking_calls` (a unit test: installing a handler needs `unsafe`) |
//! | test_sys_exit (subclassing) | `process.rs::exit_without_result_reports_the_code` |
//! | test_connection | `connection.rs` (`typed_values_round_trip`, `recv_bytes_into_*`, `poll_*`, `closed_ends_*`) |
//! | test_duplex_false | `connection.rs::one_way_pipes_refuse_the_wrong_direction` |
//! | test_spawn_close | [`spawn_close`] |
//! | test_sendbytes | `connection.rs::send_bytes_range_checks_its_bounds` |
//! | test_fd_transfer, test_large_fd_transfer | `connection.rs::connections_travel_through_connections`, [`large_fd_transfer`] |
//! | test_missing_fd_transfer | [`missing_fd_transfer`] |
//! | _TestPoll test_empty_string, test_strings, test_boundaries, test_dont_merge | [`poll_strings_and_boundaries`], `connection.rs::messages_keep_their_boundaries` |
//! | atexit joining of children (`util._exit_function`) | [`main_process_exit_joins_and_terminates_children`] |
//!
//! The synchronisation and shared-memory classes are ported beside their primitives:
//!
//! | CPython test | here |
//! |---|---|
//! | _TestLock test_lock, test_lock_context | `sync.rs::lock_gives_mutual_exclusion_across_processes`, `another_process_may_release_a_leaked_guard`, `Lock::release` doc test (release of an unlocked lock is an error) |
//! | _TestLock test_rlock | `sync.rs::rlock_is_reentrant_and_exclusive_across_processes`, `rlock_belongs_to_one_thread` |
//! | _TestSemaphore test_semaphore, test_bounded_semaphore, test_timeout | `sync_semaphore_event.rs` (`semaphore_of_two_*`, `get_value_is_shared`, `bounded_semaphore_*`, `acquire_timeout_*`) |
//! | _TestCondition test_notify, test_notify_all, test_timeout, test_waitfor, test_waitfor_timeout | `sync.rs` (`notify_hands_turns_back_and_forth`, `notify_all_wakes_every_waiting_process`, `condition_timeouts_wait_at_least_their_duration`) |
//! | _TestCondition test_notify_n | `sync.rs::notify_n_releases_exactly_n` |
//! | _TestEvent test_event | `sync_semaphore_event.rs` (`set_wakes_every_waiting_process`, `clear_is_seen_by_every_process`, `wait_timeout_*`) |
//! | _TestBarrier (every test, the action as `wait_with`) | `sync_barrier.rs` |
//! | _TestValue, _TestArray | `shared_values.rs` |
//! | _TestSharedMemory basics, across processes | `sync.rs` (`shared_memory_*`, `named_shared_memory_is_removed_by_its_owner`) |
//! | _TestQueue test_put, test_get, test_fork, test_qsize, test_task_done, test_closed_queue_put_get_exceptions | `queue.rs::cpython_test_*` (every start method; timeouts assert lower bounds only) |
//! | _TestQueue test_queue_feeder_donot_stop_onexc (an item that fails to pickle does not stop the queue) | `queue.rs::cpython_test_queue_feeder_donot_stop_onexc`: `PutError::Encode` hands the item back, the next put works |
//! | _TestQueue test_timeout | `queue.rs::timeouts_wait_at_least_their_duration` |
//! | TestSimpleQueue test_empty, test_close | `queue.rs::simple_queues_work_across_processes` |
//! | test_shared_memory_cleaned_after_process_termination, TestResourceTracker test_resource_tracker (shared memory), test_resource_tracker_sigint, _sigterm, _sigkill | `named_shared_memory.rs` (a killed or exiting creator takes its names with it; the fork server, which tracks them, ignores SIGINT and SIGTERM and is restarted after SIGKILL, names registered again), without the "leaked" warnings, which CPython emits for every region an attaching process leaves; anonymous regions: `shared_values.rs::a_killed_creator_of_anonymous_objects_leaves_nothing_behind` |
//!
//! The pool's (`_TestPool`, `_TestPoolWorkerLifetime`, `_TestPoolWorkerErrors`) are in `pool.rs`:
//!
//! | CPython test | here |
//! |---|---|
//! | test_apply, test_map, test_map_async, test_async, test_imap, test_imap_unordered, test_empty_iterable, test_map_chunksize | `pool.rs::apply_map_and_imap_forms` (every start method) |
//! | test_starmap, test_starmap_async | `pool.rs::starmap_takes_pairs` |
//! | test_async_timeout | `pool.rs::waiting_with_a_timeout_kills_nothing` (here the task goes on and is read later) |
//! | test_map_async_callbacks, test_async_error_callback | `pool.rs::callbacks_run_in_the_parent` (one callback takes the result or the error) |
//! | test_map_unplicklable, test_unpickleable_result | `pool.rs::values_that_fail_to_serialize_fail_their_item_alone` (the item alone, also inside a chunk) |
//! | test_traceback, test_wrapped_exception | `pool.rs::a_panicking_item_fails_alone_even_inside_a_chunk` (the panic's message) |
//! | test_map_no_failfast (every task runs although one fails) | `pool.rs::a_panicking_item_fails_alone_even_inside_a_chunk`, `map_reports_the_first_failed_item_with_its_index` |
//! | test_make_pool (0 workers is an error), test_terminate, test_context, test_enter (use after terminate) | `pool.rs::close_join_terminate_and_drop`, `Pool::new(0)` is `InvalidInput` |
//! | _TestPoolWorkerLifetime test_pool_worker_lifetime, test_pool_worker_lifetime_early_close | `pool.rs::cpython_worker_lifetime_at_the_task_limit_loses_nothing` |
//! | _TestPoolWorkerErrors test_async_error_callback, test_unpickleable_result | as above |
//! | initializer (test_pool_initializer in _TestInitializers) | `pool.rs::cpython_initializer_runs_in_each_worker_and_a_failing_one_breaks_the_pool` |
//!
//! Listener, Client, wait and authentication (`_TestListener`, `_TestListenerClient`, `TestWait`,
//! `OtherTest`, `ChallengeResponseTest`) are in `listener.rs` and `python_listener.rs`:
//!
//! | CPython test | here |
//! |---|---|
//! | _TestListener test_multiple_bind | `listener.rs::socket_files_are_removed_and_stale_ones_replaced` (a live listener keeps its path) |
//! | _TestListener test_empty_authkey | `listener.rs::an_empty_key_is_a_key` (3.13's behaviour: an empty key is a key) |
//! | _TestListener test_abstract_socket | `listener.rs::every_address_kind_with_and_without_a_key_across_processes` |
//! | _TestListenerClient test_listener_client, test_issue16955 (poll after connect) | `listener.rs::every_address_kind_with_and_without_a_key_across_processes` (every start method), `an_empty_key_is_a_key` |
//! | TestWait test_wait, test_wait_integer, test_wait_socket (a listener here) | `listener.rs::wait_collects_connections_listeners_and_processes_as_they_become_ready` |
//! | TestWait test_wait_timeout, test_neg_timeout | `listener.rs::wait_with_a_timeout_waits_at_least_that_long` |
//! | OtherTest test_deliver_challenge_auth_failure, test_answer_challenge_auth_failure | `listener.rs::a_wrong_key_is_a_clear_error_on_both_sides`, `a_key_on_one_side_only_fails_within_the_deadline`; `connection::auth::tests` |
//! | ChallengeResponseTest test_challengeresponse | `connection::auth::tests::answers_match_cpython` (CPython's own vectors), `python_listener.rs` (real 3.11 and 3.12) |
//!
//! Not applicable there: test_issue14725 and the AF_PIPE tests (Windows named pipes), test_wait_slow
//! (the same as test_wait with a slower child).
//!
//! Not applicable to the pool: test_map_handle_iterable_exception and its imap forms (a Rust
//! iterator cannot raise; an item that fails to serialize is the nearest, above), test_release_task_refs
//! and test_resource_warning (Python object lifetimes), test_worker_finalization_via_atexit_handler_of_multiprocessing
//! (atexit in workers).
//!
//! Not applicable to queues: test_no_import_lock_contention (Python's import lock),
//! test_queue_feeder_on_queue_feeder_error and test_ignore (signals) are unrelated to queues; there is no feeder
//! thread to hook; test_joinable_queue_* pickling-by-inheritance restrictions (queues travel freely).
//!
//! Not applicable: test_set_executable (no interpreter), test_close (Rust drops), test_lose_target_ref and
//! test_wait_for_threads (Python object and thread lifetimes), test_error_on_stdio_flush_* (Python's
//! stdio objects), test_process_mainthread_native_id.
#![cfg(not(miri))]

mod common;

use common::{join, pid_alive, start};
use multiprocess::{Connection, RecvError, StartMethod, pipe};
use std::time::{Duration, Instant};

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn fd_count_then_wait(args: (Connection, Connection)) {
    let (report, gate) = args;
    report.send(&count_fds()).unwrap();
    let _ = gate.recv::<()>(); // until the parent says so (or goes away)
}

#[test]
fn child_fd_inflation() {
    // Children started with spawn or forkserver get only what they are given, however many of their
    // siblings run. (Like CPython, not checked for fork, which inherits everything by design.)
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mut procs = Vec::new();
        let mut gates = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..5 {
            let (report, report_child) = pipe().unwrap();
            let (gate, gate_child) = pipe().unwrap();
            procs.push(start(m, fd_count_then_wait, (report_child, gate_child)));
            counts.push(report.recv_timeout::<usize>(common::DEADLINE).unwrap());
            gates.push(gate);
        }
        drop(gates);
        for p in procs {
            join(p).unwrap();
        }
        assert!(counts.windows(2).all(|w| w[0] == w[1]), "{m}: {counts:?}");
    }
}

fn nothing(_: ()) {}

#[test]
fn starting_children_leaks_no_descriptor_in_the_parent() {
    multiprocess::init().unwrap();
    for m in StartMethod::ALL {
        join(start(m, nothing, ())).unwrap(); // warm-up (the fork server's socket)
    }
    let before = count_fds();
    for _ in 0..10 {
        for m in StartMethod::ALL {
            join(start(m, nothing, ())).unwrap();
        }
    }
    // Other tests run concurrently in this process, so allow for their descriptors: a leak of one
    // descriptor per child would show as 30.
    let after = count_fds();
    assert!(after < before + 20, "{before} -> {after}");
}

fn send_then_close(conn: Connection) {
    conn.send_bytes(b"last words").unwrap();
    conn.close();
    std::thread::sleep(Duration::from_millis(100)); // still alive, but the end is closed
}

#[test]
fn spawn_close() {
    for m in StartMethod::ALL {
        let (here, there) = pipe().unwrap();
        let p = start(m, send_then_close, there);
        assert_eq!(here.recv_bytes().unwrap(), b"last words");
        assert!(matches!(here.recv_bytes(), Err(RecvError::Eof)), "{m}");
        join(p).unwrap();
    }
}

#[test]
fn missing_fd_transfer() {
    // A message that claims to carry a connection but came without a descriptor.
    let (a, b) = pipe().unwrap();
    let forged = bincode::serialize(&(0u32, true, true)).unwrap(); // the wire shape of a Connection
    a.send_bytes(&forged).unwrap();
    match b.recv::<Connection>() {
        Err(RecvError::Decode(m)) => assert!(m.contains("descriptor"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The connection is still usable.
    a.send(&1u8).unwrap();
    assert_eq!(b.recv::<u8>().unwrap(), 1);
}

#[test]
fn large_fd_transfer() {
    // Descriptors numbered high travel as well.
    let hold: Vec<_> = (0..600).map(|_| pipe().unwrap()).collect();
    let (a, b) = pipe().unwrap();
    let (x, y) = pipe().unwrap();
    assert!(std::os::fd::AsRawFd::as_raw_fd(&y) > 1000);
    a.send(&y).unwrap();
    let y2: Connection = b.recv().unwrap();
    x.send(&"high").unwrap();
    assert_eq!(y2.recv::<String>().unwrap(), "high");
    drop(hold);
}

#[test]
fn poll_strings_and_boundaries() {
    let (a, b) = pipe().unwrap();
    let strings: [&[u8]; 6] = [b"hello", b"", b"a", b"b", b"", b"bye"];
    for s in strings {
        a.send_bytes(s).unwrap();
    }
    for s in strings {
        assert!(b.poll(common::DEADLINE).unwrap());
        assert_eq!(b.recv_bytes().unwrap(), s);
    }
    assert!(!b.poll(Duration::ZERO).unwrap());
}

fn parent_pid_of_self(_: ()) -> i32 {
    std::os::unix::process::parent_id() as i32
}

#[test]
fn forkserver_killed_is_restarted() {
    let p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(parent_pid_of_self, ())
        .unwrap();
    // The child is ours, not the server's (it was forked with CLONE_PARENT).
    assert_eq!(join(p).unwrap(), std::process::id() as i32);
    let server = common::forkserver_pid().expect("a fork server is running");
    let st = std::process::Command::new("kill")
        .args(["-9", &server.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(common::eventually(|| !pid_alive(server)));
    // The next children still start, from a new server, and the dead one was reaped.
    for _ in 0..3 {
        let p = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(parent_pid_of_self, ())
            .unwrap();
        assert_eq!(join(p).unwrap(), std::process::id() as i32);
    }
    assert!(
        std::fs::metadata(format!("/proc/{server}")).is_err(),
        "left a zombie"
    );
    assert_ne!(common::forkserver_pid(), Some(server));
}

use multiprocess::Process;

fn sleeps(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

const EXIT_CASE: &str = "MULTIPROCESS_TEST_EXIT_CASE";

#[test]
fn main_process_exit_joins_and_terminates_children() {
    if let Ok(case) = std::env::var(EXIT_CASE) {
        // Child side: start one child, drop its handle, and let the test binary exit normally.
        let (method, daemon) = case.split_once(',').unwrap();
        let m: StartMethod = method.parse().unwrap();
        let daemon = daemon == "daemon";
        let p = Process::builder()
            .daemon(daemon)
            .start_method(m)
            .spawn(sleeps, if daemon { 60_000 } else { 300 })
            .unwrap();
        println!("GRANDCHILD={}", p.pid());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for m in StartMethod::ALL {
        for daemon in [false, true] {
            let t = Instant::now();
            let mut child = std::process::Command::new(&exe)
                .args([
                    "main_process_exit_joins_and_terminates_children",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    EXIT_CASE,
                    format!("{m},{}", if daemon { "daemon" } else { "normal" }),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let end = Instant::now() + common::DEADLINE;
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{m} daemon={daemon}: the exiting test binary did not finish");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let elapsed = t.elapsed();
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            assert!(status.success(), "{m} daemon={daemon}: {status:?}\n{out}");
            let pid: i32 = out
                .lines()
                .find_map(|l| l.split_once("GRANDCHILD=").map(|(_, p)| p))
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no pid in {out}"));
            if !daemon {
                assert!(
                    elapsed >= Duration::from_millis(300),
                    "{m}: exited before its non-daemon child"
                );
            }
            assert!(
                common::eventually(|| !pid_alive(pid)),
                "{m} daemon={daemon}: child {pid} survived"
            );
        }
    }
}
