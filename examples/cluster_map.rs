//! A distributed `map`: a caller and two worker programs, through Redis Streams.
//!
//! This one program is both. Started in worker mode (the `MULTIPROCESS_*` variables below), it
//! joins the pool before `main` runs and serves its tasks on a local pool of its own processes;
//! started plainly, it is the caller, and counts the primes below 2 000 000 in 200 ranges across
//! the workers.
//!
//! On one machine (it starts a redis-server and two workers itself):
//!
//! ```text
//! cargo run --release --example cluster_map
//! ```
//!
//! Across machines, with the same build of the program on each:
//!
//! ```text
//! broker$  redis-server --bind 0.0.0.0 --requirepass pw --appendonly yes
//! worker$  MULTIPROCESS_WORKER=primes MULTIPROCESS_BROKER=redis://:pw@broker:6379 \
//!          MULTIPROCESS_AUTHKEY=secret ./cluster_map          # on each worker machine
//! caller$  MULTIPROCESS_AUTHKEY=secret ./cluster_map redis://:pw@broker:6379
//! ```

#[path = "support/redis.rs"]
mod support;

use multiprocess::Pool;
use multiprocess::cluster::{self, Broker};
use std::time::Instant;

/// The primes in `[from, to)`, counted by trial division (CPU work worth sending away).
fn count_primes((from, to): (u64, u64)) -> (u64, u32) {
    let n = (from.max(2)..to)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64;
    (n, std::process::id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::refuse_main_in_a_worker();
    const POOL: &str = "primes";
    let key = std::env::var(cluster::ENV_AUTHKEY).unwrap_or_else(|_| "example key".into());
    // A broker given on the command line has workers of its own; otherwise start everything here.
    let (url, _server, _workers) = match std::env::args().nth(1) {
        Some(url) => (url, None, None),
        None => {
            let server = support::RedisServer::start()?;
            let url = server.url.clone();
            let workers = support::LocalWorkers::start(&url, POOL, &key, 2, 1)?;
            support::LocalWorkers::wait_live(&url, POOL, 2)?;
            (url, Some(server), Some(workers))
        }
    };
    let pool = Pool::builder()
        .broker(Broker::redis(&url, POOL).authkey(&key))
        .build()?;
    let status = cluster::status(&url, POOL)?;
    println!(
        "pool {POOL:?} on {url}: {} live workers, {} processes",
        status.workers.iter().filter(|w| w.alive).count(),
        pool.processes()
    );
    let ranges: Vec<(u64, u64)> = (0..200).map(|i| (i * 10_000, (i + 1) * 10_000)).collect();
    let t = Instant::now();
    let counted = pool.map(count_primes, ranges)?;
    let total: u64 = counted.iter().map(|(n, _)| n).sum();
    let mut pids: Vec<u32> = counted.iter().map(|(_, pid)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    println!(
        "{total} primes below 2 000 000 (148933 expected), in {:.0} ms, by worker processes {pids:?}",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(total, 148_933);
    Ok(())
}
