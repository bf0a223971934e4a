//! The broker the cluster backend stands on (Redis Streams with consumer groups), checked for the
//! facts its design relies on, against real servers: the shared one `.ci/with-redis` starts and
//! private ones killed with SIGKILL and restarted. See `shared/research/scale-out.md`.

mod common;

use common::redis::{RedisServer, connect, shared_url};
use redis::Commands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use std::time::{Duration, Instant};

/// A stream name of this test run's own on the shared server.
fn stream(tag: &str) -> String {
    format!("mp-test:{{{}}}:{tag}", std::process::id())
}

#[test]
fn the_shared_broker_is_there_and_new_enough() {
    let mut c = connect(&shared_url());
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("a version");
    let parts: Vec<u32> = version
        .trim()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        (parts[0], parts[1]) >= (6, 2),
        "Redis {version}: the cluster backend needs 6.2 or later (XAUTOCLAIM)"
    );
    let appendonly: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(&mut c)
        .unwrap();
    assert_eq!(appendonly, ["appendonly", "yes"]);
}

#[test]
fn an_idle_delivery_is_reclaimed_and_a_deleted_one_is_reported() {
    let mut c = connect(&shared_url());
    let s = stream("reclaim");
    let _: () = c.del(&s).unwrap();
    let _: () = c.xgroup_create_mkstream(&s, "w", "0").unwrap();
    // A second create is BUSYGROUP: the group exists (what a worker that joins late sees).
    let again: redis::RedisResult<()> = c.xgroup_create_mkstream(&s, "w", "0");
    assert_eq!(again.unwrap_err().code(), Some("BUSYGROUP"));
    for i in 0..5u32 {
        let _: String = c.xadd(&s, "*", &[("i", i)]).unwrap();
    }
    let opts = StreamReadOptions::default().group("w", "dead").count(5);
    let read: StreamReadReply = c.xread_options(&[&s], &[">"], &opts).unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    // Two of the dead consumer's deliveries vanish from the stream (as after a trim, or a broker
    // that lost them).
    let _: u64 = c.xdel(&s, &ids[..2]).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let claimed: StreamAutoClaimReply = c
        .xautoclaim_options(
            &s,
            "w",
            "alive",
            20,
            "0-0",
            StreamAutoClaimOptions::default().count(100),
        )
        .unwrap();
    let got: Vec<&str> = claimed.claimed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, ids[2..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(claimed.deleted_ids, ids[..2]);
    // The result, the acknowledgement and the removal in one transaction.
    let result_stream = stream("reclaim-results");
    let (acked, deleted): (u64, u64) = redis::pipe()
        .atomic()
        .xadd(&result_stream, "*", &[("i", 2)])
        .ignore()
        .xack(&s, "w", &ids[2..3])
        .xdel(&s, &ids[2..3])
        .query(&mut c)
        .unwrap();
    assert_eq!((acked, deleted), (1, 1));
    let _: () = c.del(&[&s, &result_stream]).unwrap();
}

#[test]
fn a_blocking_read_returns_empty_at_its_deadline() {
    let mut c = connect(&shared_url());
    let s = stream("block");
    let _: () = c.del(&s).unwrap();
    let _: () = c.xgroup_create_mkstream(&s, "w", "$").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let opts = StreamReadOptions::default()
        .group("w", "c")
        .count(1)
        .block(200);
    let read: Option<StreamReadReply> = c.xread_options(&[&s], &[">"], &opts).unwrap();
    assert!(read.is_none_or(|r| r.keys.is_empty()));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let _: () = c.del(&s).unwrap();
}

#[test]
fn a_broker_killed_keeps_what_it_synced_and_an_empty_one_has_no_group() {
    let mut server = RedisServer::start("restart", "always");
    let url = server.url();
    let mut c = connect(&url);
    let _: () = c.xgroup_create_mkstream("t", "w", "0").unwrap();
    for i in 0..100u32 {
        let _: String = c.xadd("t", "*", &[("i", i)]).unwrap();
    }
    let opts = StreamReadOptions::default().group("w", "c").count(10);
    let _: StreamReadReply = c.xread_options(&["t"], &[">"], &opts).unwrap();
    drop(c);
    // Killed with SIGKILL and restarted with its append-only file: the entries and the group's
    // deliveries are there.
    server.restart(true);
    let mut c = connect(&url);
    let len: u64 = c.xlen("t").unwrap();
    let pending: redis::streams::StreamPendingReply = c.xpending("t", "w").unwrap();
    assert_eq!((len, pending.count()), (100, 10));
    drop(c);
    // Restarted without its data: no stream and no group (NOGROUP), which callers and workers
    // must take for a broker that lost everything.
    server.restart(false);
    let mut c = connect(&url);
    let len: u64 = c.xlen("t").unwrap();
    assert_eq!(len, 0);
    let lost: redis::RedisResult<StreamReadReply> = c.xread_options(&["t"], &[">"], &opts);
    assert_eq!(lost.unwrap_err().code(), Some("NOGROUP"));
}
