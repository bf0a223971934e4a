//! A `tracing` event raised while the crate holds its state lock must not deadlock with a fork
//! start in another thread (which takes stdout and stderr before that lock) when the subscriber
//! writes to stdout, as `tracing_subscriber::fmt()` does: events raised under the lock are sent
//! once it is released.
#![cfg(all(feature = "tracing", not(miri)))]

mod common;

use common::forkserver_pid;
use multiprocess::{Process, StartMethod};
use std::io::Write;
use std::time::Duration;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Writes each event to stdout, holding stdout's lock.
struct ToStdout;

impl Subscriber for ToStdout {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let _ = writeln!(std::io::stdout().lock(), "event: {:?}", e.metadata().name());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn nothing(_: ()) {}

#[test]
fn an_event_under_the_state_lock_does_not_deadlock_a_fork() {
    tracing::subscriber::set_global_default(ToStdout).unwrap();
    for round in 0..3 {
        multiprocess::init().unwrap();
        let server = forkserver_pid().expect("a fork server");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(server).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // A thread of the program that prints for a while (holds stdout's lock).
        let printer = std::thread::spawn(|| {
            let _out = std::io::stdout().lock();
            std::thread::sleep(Duration::from_millis(300));
        });
        std::thread::sleep(Duration::from_millis(20));
        let (tx, rx) = std::sync::mpsc::channel();
        // A fork start: waits for stdout's lock, then takes stderr's and the state lock.
        std::thread::spawn(move || {
            let p = Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(nothing, ())
                .unwrap();
            p.join().unwrap();
            tx.send(()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        // Reaps the dead server: an event, with the state lock held.
        let reaper = std::thread::spawn(multiprocess::active_children);
        printer.join().unwrap();
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "round {round}: the fork start is still blocked"
        );
        reaper.join().unwrap();
    }
}
