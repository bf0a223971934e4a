//! The `tracing` feature: what the crate does on its own behalf is an event (run with
//! `--all-features`, as CI does).
#![cfg(all(feature = "tracing", not(miri)))]

mod common;

use common::{join, start};
use multiprocess::{Connection, Lock, StartMethod, TryLockError, pipe};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Keeps every event's level, target and message.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        let m = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {} {message}", m.level(), m.target()));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn hold_and_wait(args: (Lock, Connection)) {
    let (lock, conn) = args;
    lock.lock().unwrap().leak();
    conn.send(&()).unwrap();
    std::thread::sleep(common::DEADLINE);
}

#[test]
fn taking_over_a_dead_holders_lock_is_an_event() {
    let events = Collect::default();
    let lock = Lock::new().unwrap();
    let (here, there) = pipe().unwrap();
    let holder = start(StartMethod::Fork, hold_and_wait, (lock.clone(), there));
    here.recv_timeout::<()>(common::DEADLINE).unwrap();
    holder.kill().unwrap();
    let _ = join(holder);
    tracing::subscriber::with_default(events.clone(), || {
        assert!(matches!(lock.try_lock(), Err(TryLockError::OwnerDied(_))));
    });
    let seen = events.0.lock().unwrap();
    assert!(
        seen.iter()
            .any(|e| e.starts_with("WARN multiprocess") && e.contains("died holding it")),
        "{seen:?}"
    );
}
