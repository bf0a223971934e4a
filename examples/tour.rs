//! A guided tour of `multiprocess`: every part built so far, run for real, with what each step did and
//! how long it took.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! Each section shows one part of the library and prints measured values (pids, return values, wall
//! times, error messages as the library formats them). Sections for synchronization primitives, shared
//! memory, queues, pools, managers and the broker backend join as those parts land. The whole tour
//! takes a few seconds (section 10 starts a redis-server of its own when one is installed, and
//! waits out a worker's 1 s lease).

use multiprocess::{
    Array, AtomicValue, Barrier, BarrierError, Condition, Connection, Event, GetError,
    JoinableQueue, Lock, Pool, Process, Queue, RLock, RecvError, Semaphore, SendError,
    SharedMemory, SimpleQueue, StartMethod, Value, active_children, cpu_count, current_process,
    get_start_method, parent_process, pipe, pipe_oneway,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[cfg(feature = "worker-env")]
#[path = "support/redis.rs"]
mod support;
use std::error::Error;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

type Result<T = (), E = Box<dyn Error>> = std::result::Result<T, E>;

fn main() -> Result {
    #[cfg(feature = "worker-env")]
    support::refuse_main_in_a_worker();
    let me = current_process();
    println!(
        "multiprocess tour: {} is pid {}, {} CPUs, default start method {}",
        me.name,
        me.pid,
        cpu_count(),
        get_start_method()
    );
    println!("parent_process() here: {:?}", parent_process());
    let t = Instant::now();

    section("1. Processes");
    start_methods()?;
    panicking_child()?;
    exiting_child()?;
    killed_child()?;
    join_with_timeout()?;
    listing_children()?;
    forkserver_killed()?;

    section("2. Pipes and connections");
    duplex_round_trip()?;
    one_way()?;
    end_of_file()?;
    errors_from_bad_input()?;
    passing_connections()?;
    polling()?;
    waits_and_iteration()?;

    section("3. Shared memory and synchronization");
    shared_memory()?;
    value_and_array()?;
    lock_counter()?;
    lock_holder_killed()?;
    reentrant_lock()?;
    semaphore_and_event()?;
    condition_handoff()?;
    barrier_rounds()?;
    barrier_party_killed()?;
    named_region_creator_killed()?;
    named_region_truncated()?;

    section("4. Queues");
    queue_producers_consumers()?;
    queue_exit_before_taken()?;
    queue_bounded_and_timeouts()?;
    queue_killed_producer()?;
    joinable_queue()?;
    simple_queue_round_trip()?;
    queue_carries_connections()?;

    section("5. Pool");
    pool_basics()?;
    pool_worker_killed()?;
    pool_failures_stay_alone()?;

    section("6. Listener and Client");
    listener_across_processes()?;
    listener_refuses_wrong_keys()?;
    listener_python_client()?;
    listener_tls()?;

    section("7. Manager");
    manager_basics()?;
    manager_transactions()?;
    manager_dead_client()?;
    manager_served()?;

    section("8. Limits");
    out_of_descriptors()?;

    section("9. Under load");
    busy_cpus()?;

    section("10. Past one machine: Pool and Queue on Redis Streams");
    #[cfg(feature = "worker-env")]
    past_one_machine()?;
    #[cfg(not(feature = "worker-env"))]
    println!("   (built without the `worker-env` feature)");

    section("11. Python clients of the manager, and Python managers");
    python_clients_of_the_rust_server()?;
    python_client_killed_holding_a_lock()?;
    rust_proxies_beside_python_clients()?;
    rust_client_of_a_python_manager()?;

    section("Still to come");
    println!(
        "   xmlrpclib-serialized managers; Python's Pool proxy (a manager's Pool) on the Rust server"
    );
    println!("\ntour finished in {}", ms(t.elapsed()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 1. Processes

/// What a child reports about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Who {
    pid: i32,
    name: String,
    /// The process that asked for this child, as `parent_process()` says.
    parent_pid: i32,
    /// What the OS says (`getppid()`): the parent under every method (the fork server forks its
    /// children as children of the process that asked).
    os_ppid: u32,
    reply: String,
}

fn whoami(greeting: String) -> Who {
    let me = current_process();
    Who {
        pid: me.pid,
        parent_pid: parent_process().map_or(0, |p| p.pid),
        os_ppid: std::os::unix::process::parent_id(),
        reply: format!("{greeting}, back from {}", me.name),
        name: me.name,
    }
}

fn nothing(_: ()) {}

fn start_methods() -> Result {
    step("Start methods: `Process::builder().start_method(m).spawn(whoami, ..)?.join()?`");
    println!(
        "   {:<11} {:>7} {:>8} {:>8}  {:<17} {:>10} {:>13}",
        "method", "pid", "parent", "getppid", "name", "first run", "median of 20"
    );
    for method in StartMethod::ALL {
        let t = Instant::now();
        let p = Process::builder()
            .name(format!("{method}-child"))
            .start_method(method)
            .spawn(whoami, "hello".to_string())?;
        let who = p.join()?;
        let first = t.elapsed();
        let median = median_of(20, || {
            let t = Instant::now();
            Process::builder()
                .start_method(method)
                .spawn(nothing, ())?
                .join()?;
            Ok(t.elapsed())
        })?;
        println!(
            "   {:<11} {:>7} {:>8} {:>8}  {:<17} {:>10} {:>13}",
            method.name(),
            who.pid,
            who.parent_pid,
            who.os_ppid,
            who.name,
            ms(first),
            ms(median)
        );
        if method == StartMethod::ForkServer {
            println!("   returned: {who:?}");
        }
    }
    println!(
        "   (the first forkserver start includes starting the server; its children are forked as the \
         parent's own children, so getppid() is the parent under every method)"
    );
    Ok(())
}

/// This process's fork server, found by its initial environment (for the tour only).
fn forkserver_pid() -> Option<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let server = env
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(b"MULTIPROCESS_FORKSERVER="));
        (ppid == me && server).then_some(pid)
    })
}

fn nap_then(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn forkserver_killed() -> Result {
    step("The fork server is killed (kill -9) while two of its children run");
    multiprocess::init()?;
    let kids = [
        Process::spawn(nap_then, 150)?,
        Process::spawn(nap_then, 200)?,
    ];
    let server = forkserver_pid().ok_or("no fork server")?;
    std::process::Command::new("kill")
        .args(["-9", &server.to_string()])
        .status()?;
    for k in kids {
        println!("   child {} -> {:?}", k.pid(), k.join());
    }
    let next = Process::spawn(nap_then, 0)?;
    println!(
        "   the next child started from a new server ({:?}); the dead one ({server}) was reaped: {}",
        forkserver_pid(),
        std::fs::metadata(format!("/proc/{server}")).is_err()
    );
    next.join()?;
    Ok(())
}

fn explode(index: usize) -> u32 {
    // The default hook prints the panic (and, with RUST_BACKTRACE set, a backtrace) to stderr, as
    // Python prints a child's traceback. One line is enough here.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at line {}", l.line()));
        eprintln!("   [child's stderr] panicked{}", at.unwrap_or_default());
    }));
    let v = [1, 2, 3];
    v[index % 8] // panics for index 7
}

fn panicking_child() -> Result {
    step("A child that panics: the message comes back with the error");
    let p = Process::spawn(explode, 7)?;
    let pid = p.pid();
    std::io::stdout().flush()?;
    let err = p.join().expect_err("the child panics");
    println!("   join() -> Err({err:?})");
    println!("   message: {err}");
    println!("   exitcode: {:?} (pid {pid})", err.exitcode());
    Ok(())
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn exiting_child() -> Result {
    step("A child that calls std::process::exit(3) before returning");
    let err = Process::spawn(exit_with, 3)?.join().expect_err("no result");
    println!(
        "   join() -> Err({err:?}): {err}; exitcode {:?}",
        err.exitcode()
    );
    Ok(())
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn killed_child() -> Result {
    step("kill(): a child sleeping for 10 s");
    let p = Process::spawn(sleep_ms, 10_000)?;
    let t = Instant::now();
    p.kill()?;
    let err = p.join().expect_err("killed");
    println!(
        "   kill() + join() -> Err({err:?}) after {}: {err}",
        ms(t.elapsed())
    );
    println!(
        "   exitcode: {:?} (Process::exitcode() says {:?}), is_alive() = {}",
        err.exitcode(),
        p.exitcode(),
        p.is_alive()
    );
    Ok(())
}

fn join_with_timeout() -> Result {
    step("join_timeout on a child that sleeps 300 ms");
    let p = Process::spawn(sleep_ms, 300)?;
    let t = Instant::now();
    let r = p.join_timeout(Duration::from_millis(50));
    println!(
        "   join_timeout(50 ms) -> {r:?} after {}; is_alive() = {}, exitcode() = {:?}",
        ms(t.elapsed()),
        p.is_alive(),
        p.exitcode()
    );
    let r = p.join_timeout(Duration::from_secs(5));
    println!(
        "   join_timeout(5 s)   -> {r:?} after {}; is_alive() = {}, exitcode() = {:?}",
        ms(t.elapsed()),
        p.is_alive(),
        p.exitcode()
    );
    Ok(())
}

fn listing_children() -> Result {
    step("active_children()");
    let sleepers = (0..3)
        .map(|i| {
            Process::builder()
                .name(format!("sleeper-{i}"))
                .daemon(i == 2)
                .spawn(sleep_ms, 100)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let list: Vec<String> = active_children()
        .iter()
        .map(|c| {
            let daemon = if c.daemon { ", daemon" } else { "" };
            format!("{} (pid {}{daemon})", c.name, c.pid)
        })
        .collect();
    println!("   while running: [{}]", list.join(", "));
    for p in sleepers {
        p.join()?;
    }
    println!("   after join:    {:?}", active_children());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 2. Pipes and connections

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    prices: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: u32,
    total: f64,
    handled_by: i32,
}

/// Answers one typed `Order`, then echoes raw byte messages until end-of-file. Returns how many.
fn echo(conn: Connection) -> u64 {
    let order: Order = conn.recv().expect("an order");
    let receipt = Receipt {
        id: order.id,
        total: order.prices.iter().sum(),
        handled_by: current_process().pid,
    };
    conn.send(&receipt).expect("send receipt");
    let mut n = 0;
    while let Ok(msg) = conn.recv_bytes() {
        conn.send_bytes(&msg).expect("echo");
        n += 1;
    }
    n
}

fn duplex_round_trip() -> Result {
    step("Duplex pipe: typed values and raw bytes to a child and back");
    let (here, there) = pipe()?;
    let child = Process::spawn(echo, there)?;
    let order = Order {
        id: 42,
        item: "tea".into(),
        prices: vec![1.5, 2.25, 0.25],
    };
    println!("   send  {order:?}");
    here.send(&order)?;
    let receipt: Receipt = here.recv()?;
    println!("   recv  {receipt:?}");

    const ROUNDS: u32 = 2000;
    let mut times = Vec::with_capacity(ROUNDS as usize);
    for i in 0..ROUNDS {
        let t = Instant::now();
        here.send_bytes(&u64::from(i).to_le_bytes())?;
        let back = here.recv_bytes()?;
        times.push(t.elapsed());
        assert_eq!(back, u64::from(i).to_le_bytes());
    }
    times.sort();
    println!(
        "   {ROUNDS} round trips of 8 raw bytes: median {}, p99 {}",
        us(times[times.len() / 2]),
        us(times[times.len() * 99 / 100])
    );
    drop(here);
    println!(
        "   we drop our end; the child sees end-of-file and returns {}",
        child.join()?
    );
    Ok(())
}

fn one_way() -> Result {
    step("One-way pipe (Pipe(duplex=False)): each end only one way");
    let (rx, tx) = pipe_oneway()?;
    tx.send(&[1u16, 2, 3])?;
    println!(
        "   tx.send(&[1, 2, 3]); rx.recv() -> {:?}",
        rx.recv::<[u16; 3]>()?
    );
    let e: SendError = rx.send(&0).unwrap_err();
    println!("   rx.send(..)  -> Err({e:?}): {e}");
    let e: RecvError = tx.recv::<u32>().unwrap_err();
    println!("   tx.recv()    -> Err({e:?}): {e}");
    Ok(())
}

fn send_three(conn: Connection) {
    for word in ["one", "two", "three"] {
        conn.send(word).expect("send");
    }
    // `conn` is dropped when the function returns: the parent sees end-of-file.
}

fn end_of_file() -> Result {
    step("End of file: a child sends three messages and returns");
    let (here, there) = pipe()?;
    let child = Process::spawn(send_three, there)?;
    let mut got = Vec::new();
    let err = loop {
        match here.recv::<String>() {
            Ok(s) => got.push(s),
            Err(e) => break e,
        }
    };
    child.join()?;
    println!(
        "   received {got:?}, then Err({err:?}): {err}; is_disconnect() = {}",
        err.is_disconnect()
    );
    Ok(())
}

fn errors_from_bad_input() -> Result {
    step("Messages that do not fit, and a hostile peer");
    let (a, b) = pipe()?;
    a.send_bytes(b"twelve bytes")?;
    let mut buf = [0u8; 4];
    match b.recv_bytes_into(&mut buf) {
        Err(RecvError::BufferTooShort(msg)) => println!(
            "   recv_bytes_into(4-byte buffer) -> Err(BufferTooShort): the message is handed back: {:?}",
            String::from_utf8_lossy(&msg)
        ),
        other => println!("   unexpected: {other:?}"),
    }
    a.send_bytes(&[0; 1000])?;
    let e = b.recv_bytes_max(100).unwrap_err();
    println!("   recv_bytes_max(100) of 1000 bytes -> Err(TooLong): {e}");

    // A peer that writes raw bytes instead of frames.
    let (mut raw, theirs) = UnixStream::pair()?;
    let conn = Connection::from_fd(theirs.into());
    raw.write_all(&(-2i32).to_be_bytes())?;
    let e = conn.recv_bytes().unwrap_err();
    println!("   header announcing length -2 -> Err(Protocol): {e}");

    let (mut raw, theirs) = UnixStream::pair()?;
    let conn = Connection::from_fd(theirs.into());
    raw.write_all(&(1u32 << 30).to_be_bytes())?; // announces 1 GiB...
    raw.write_all(b"short")?; // ...sends 5 bytes and hangs up
    drop(raw);
    let t = Instant::now();
    let e = conn.recv_bytes().unwrap_err();
    println!(
        "   header announcing 1 GiB, 5 bytes, hang-up -> Err(Truncated) in {}: {e}",
        ms(t.elapsed())
    );
    Ok(())
}

/// Receives a connection inside a message and answers through it.
fn relay(control: Connection) -> i32 {
    let conn: Connection = control.recv().expect("a connection");
    let fd = conn.as_raw_fd();
    conn.send(&format!(
        "hello through a connection that came in a message (fd {fd} in pid {})",
        std::process::id()
    ))
    .expect("send");
    fd
}

fn passing_connections() -> Result {
    step("Descriptor passing: a Connection sent through another Connection");
    let (control, control_there) = pipe()?;
    let child = Process::spawn(relay, control_there)?;
    let (mine, theirs) = pipe()?;
    let fd = theirs.as_raw_fd();
    control.send(&theirs)?;
    drop(theirs); // the child has its own handle now
    let msg: String = mine.recv()?;
    println!("   sent the end with fd {fd} in pid {}", std::process::id());
    println!("   recv: {msg:?}");
    child.join()?;
    Ok(())
}

fn send_later(conn: Connection) {
    sleep_ms(100);
    conn.send("ready").expect("send");
}

fn polling() -> Result {
    step("poll(timeout): is a message waiting?");
    let (here, there) = pipe()?;
    let child = Process::spawn(send_later, there)?;
    let t = Instant::now();
    let ready = here.poll(Duration::from_millis(20))?;
    println!("   poll(20 ms) -> {ready} after {}", ms(t.elapsed()));
    let ready = here.poll(Duration::from_secs(5))?;
    println!(
        "   poll(5 s)   -> {ready} after {} (the child sends at 100 ms): {:?}",
        ms(t.elapsed()),
        here.recv::<String>()?
    );
    child.join()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Helpers

fn count_slowly(args: (Connection, u32)) {
    let (conn, n) = args;
    for i in 1..=n {
        std::thread::sleep(Duration::from_millis(5));
        conn.send(&i).expect("send");
    }
}

fn waits_and_iteration() -> Result {
    step("Three kinds of wait, each with its own error, and iteration until end of file");
    let (here, there) = pipe()?;
    let nothing = here.try_recv::<u32>();
    let t = Instant::now();
    let timed = here.recv_timeout::<u32>(Duration::from_millis(10));
    let waited = t.elapsed();
    let child = Process::spawn(count_slowly, (there, 4))?;
    let got: Vec<u32> = here.iter().collect::<std::result::Result<_, _>>()?;
    child.join()?;
    println!(
        "   try_recv: {nothing:?}; recv_timeout(10 ms): {timed:?} after {}\n   iter() over a child's \
         messages: {got:?} (it ended when the child's end closed)",
        ms(waited)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 3. Shared memory and locks

fn upper_in_place(shm: SharedMemory) -> usize {
    let mut buf = vec![0u8; shm.len()];
    shm.read(0, &mut buf).expect("in bounds");
    buf.make_ascii_uppercase();
    shm.write(0, &buf).expect("in bounds");
    shm.len()
}

fn shared_memory() -> Result {
    step("SharedMemory: an anonymous memfd region handed to a child, changed in place");
    let shm = SharedMemory::new(32)?;
    shm.write(0, b"shared bytes, no copies in pipes")?;
    let n = Process::spawn(upper_in_place, shm.clone())?.join()?;
    let mut buf = [0u8; 32];
    shm.read(0, &mut buf)?;
    println!(
        "   the child uppercased {n} bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    Ok(())
}

fn negate(args: (Value<f64>, Array<i32>)) {
    let (num, arr) = args;
    num.set(std::f64::consts::PI);
    let mut items = arr.lock().unwrap_or_else(|d| d.into_inner());
    for x in items.iter_mut() {
        *x = -*x;
    }
}

fn value_and_array() -> Result {
    step("Value<f64> and Array<i32> (the seed's Value('d', 0.0), Array('i', range(10)))");
    let num = Value::new(0.0f64)?;
    let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    Process::spawn(negate, (num.clone(), arr.clone()))?.join()?;
    println!(
        "   the child set num = {} and arr = {:?}",
        num.get(),
        arr.to_vec()
    );
    let hits = AtomicValue::new(0u64)?;
    let t = Instant::now();
    for _ in 0..1_000_000 {
        hits.fetch_add(1);
    }
    println!(
        "   1 000 000 fetch_add on an AtomicValue<u64> (lock-free): {}",
        ms(t.elapsed())
    );
    Ok(())
}

fn add_under_lock(args: (Lock, SharedMemory, u32)) {
    let (lock, counter, times) = args;
    for _ in 0..times {
        let _guard = lock.lock().unwrap_or_else(|died| died.into_inner());
        let mut n = [0u8; 8];
        counter.read(0, &mut n).expect("in bounds");
        counter
            .write(0, &(u64::from_le_bytes(n) + 1).to_le_bytes())
            .expect("in bounds");
    }
}

fn lock_counter() -> Result {
    step("Lock: 4 children each add 10 000 to one counter, read-modify-write under the lock");
    let (lock, counter) = (Lock::new()?, SharedMemory::new(8)?);
    let t = Instant::now();
    let kids = (0..4)
        .map(|_| Process::spawn(add_under_lock, (lock.clone(), counter.clone(), 10_000)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for k in kids {
        k.join()?;
    }
    let mut n = [0u8; 8];
    counter.read(0, &mut n)?;
    println!(
        "   counter = {} (expected 40000) in {}",
        u64::from_le_bytes(n),
        ms(t.elapsed())
    );
    Ok(())
}

fn hold_lock(args: (Lock, Connection)) {
    let (lock, conn) = args;
    let _guard = lock.lock().unwrap_or_else(|died| died.into_inner());
    conn.send(&()).expect("parent listening");
    std::thread::sleep(Duration::from_secs(10));
}

fn lock_holder_killed() -> Result {
    step("A child holding the lock is killed: the next acquirer is told, and gets the lock");
    let lock = Lock::new()?;
    let (here, there) = pipe()?;
    let holder = Process::spawn(hold_lock, (lock.clone(), there))?;
    here.recv::<()>()?;
    holder.kill()?;
    let outcome = holder.join();
    let t = Instant::now();
    match lock.lock() {
        Ok(_) => println!("   lock() -> Ok (unexpected)"),
        Err(died) => {
            println!("   holder: {outcome:?}");
            println!(
                "   lock() -> Err(OwnerDied): \"{died}\" after {}; the guard is inside",
                ms(t.elapsed())
            );
            drop(died.into_inner());
        }
    }
    println!(
        "   then lock() -> {}",
        if lock.lock().is_ok() { "Ok" } else { "Err" }
    );
    Ok(())
}

fn create_named(args: (String, Connection)) {
    let (name, conn) = args;
    let shm = SharedMemory::create(&name, 4096).expect("a fresh name");
    conn.send(&()).expect("parent listening");
    std::thread::sleep(Duration::from_secs(10));
    drop(shm);
}

fn named_region_creator_killed() -> Result {
    step("A named SharedMemory whose creator is SIGKILLed: the name goes with the creator");
    let name = format!("mp-tour-{}", std::process::id());
    let (here, there) = pipe()?;
    let creator = Process::spawn(create_named, (name.clone(), there))?;
    here.recv::<()>()?;
    let path = format!("/dev/shm/{name}");
    println!("   {path} exists: {}", std::path::Path::new(&path).exists());
    creator.kill()?;
    let t = Instant::now();
    let _ = creator.join();
    while std::path::Path::new(&path).exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "   killed; {path} exists: {} after {} (its fork server removed it)",
        std::path::Path::new(&path).exists(),
        ms(t.elapsed())
    );
    Ok(())
}

fn read_after_cut(args: (String, Connection)) -> String {
    let (name, conn) = args;
    let shm = SharedMemory::open(&name).expect("created by the parent");
    conn.send(&()).expect("parent listening");
    let _ = conn.recv::<()>();
    let mut buf = [0u8; 16];
    format!("{:?}", shm.read(8192, &mut buf))
}

fn named_region_truncated() -> Result {
    step("Another process truncates a named region under a reader: an error, not SIGBUS");
    let name = format!("mp-tour-cut-{}", std::process::id());
    let shm = SharedMemory::create(&name, 16 << 10)?;
    let (here, there) = pipe()?;
    let reader = Process::spawn(read_after_cut, (name.clone(), there))?;
    here.recv::<()>()?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))?
        .set_len(0)?;
    here.send(&())?;
    println!(
        "   the reader's read past the new end -> {}",
        reader.join()?
    );
    println!("   and ours -> {:?}", shm.read(0, &mut [0u8; 4]));
    Ok(())
}

fn try_rlock(rlock: RLock) -> bool {
    rlock.try_lock().is_ok()
}

fn reentrant_lock() -> Result {
    step("RLock: the owning thread takes it again; another process cannot");
    let rlock = RLock::new()?;
    let outer = rlock.lock().unwrap_or_else(|d| d.into_inner());
    let inner = rlock.lock().unwrap_or_else(|d| d.into_inner());
    let child_got_it = Process::spawn(try_rlock, rlock.clone())?.join()?;
    println!("   held twice here; a child's try_lock() -> {child_got_it}");
    drop((inner, outer));
    let child_got_it = Process::spawn(try_rlock, rlock.clone())?.join()?;
    println!("   after both guards are dropped, a child's try_lock() -> {child_got_it}");
    Ok(())
}

fn gatekept(args: (Semaphore, Event, AtomicValue<i32>, AtomicValue<i32>)) {
    let (sem, go, inside, most) = args;
    go.wait();
    let _slot = sem.acquire(); // a permit: the slot is given back when it drops
    let now = inside.fetch_add(1) + 1;
    let mut m = most.load();
    while now > m {
        match most.compare_exchange(m, now) {
            Ok(_) => break,
            Err(seen) => m = seen,
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    inside.fetch_add(-1);
}

fn semaphore_and_event() -> Result {
    step("Semaphore(2) and an Event: 6 children wait for the event, then at most 2 run at once");
    let (sem, go) = (Semaphore::new(2)?, Event::new()?);
    let (inside, most) = (AtomicValue::new(0i32)?, AtomicValue::new(0i32)?);
    let t = Instant::now();
    let kids = (0..6)
        .map(|_| {
            Process::spawn(
                gatekept,
                (sem.clone(), go.clone(), inside.clone(), most.clone()),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    go.set();
    for k in kids {
        k.join()?;
    }
    println!(
        "   most inside at once: {} (cap 2); get_value() = {}; all done in {}",
        most.load(),
        sem.get_value(),
        ms(t.elapsed())
    );
    Ok(())
}

fn consumer(args: (Condition, AtomicValue<u32>)) -> u32 {
    let (cond, item) = args;
    let guard = cond.lock().unwrap_or_else(|d| d.into_inner());
    let guard = cond
        .wait_while(guard, || item.load() == 0)
        .unwrap_or_else(|d| d.into_inner());
    let got = item.load();
    drop(guard);
    got
}

fn condition_handoff() -> Result {
    step("Condition: a child waits for an item; the parent produces it and notifies");
    let (cond, item) = (Condition::new()?, AtomicValue::new(0u32)?);
    let child = Process::spawn(consumer, (cond.clone(), item.clone()))?;
    std::thread::sleep(Duration::from_millis(20));
    let t = {
        let _guard = cond.lock().unwrap_or_else(|d| d.into_inner());
        item.store(42);
        cond.notify_all();
        Instant::now()
    };
    let got = child.join()?;
    println!(
        "   the child woke and took item {got}; notify-to-join {}",
        ms(t.elapsed())
    );
    Ok(())
}

fn rounds(args: (Barrier, u32)) -> u32 {
    let (barrier, n) = args;
    let mut last = 0;
    for _ in 0..n {
        if barrier.wait().expect("no party fails") == barrier.parties() - 1 {
            last += 1;
        }
    }
    last
}

fn barrier_rounds() -> Result {
    step("Barrier(4): 3 children and the parent pass it 1000 times together");
    let barrier = Barrier::new(4)?;
    let t = Instant::now();
    let kids = (0..3)
        .map(|_| Process::spawn(rounds, (barrier.clone(), 1000)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut last = rounds((barrier.clone(), 1000));
    for k in kids {
        last += k.join()?;
    }
    let took = t.elapsed();
    println!(
        "   {last} rounds had exactly one last arrival each; {} per round (with 4 processes on {} CPUs)",
        us(took / 1000),
        cpu_count()
    );
    Ok(())
}

fn wait_at(barrier: Barrier) -> std::result::Result<usize, BarrierError> {
    barrier.wait()
}

fn barrier_party_killed() -> Result {
    step("Barrier(3): one waiting party is killed; the other waiter learns the barrier broke");
    let barrier = Barrier::new(3)?;
    let victim = Process::spawn(wait_at, barrier.clone())?;
    let other = Process::spawn(wait_at, barrier.clone())?;
    while barrier.n_waiting() < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    victim.kill()?;
    let t = Instant::now();
    let outcome = other.join()?;
    println!(
        "   victim: {:?}; the other waiter got {outcome:?} after {}",
        victim.join().err(),
        ms(t.elapsed())
    );
    let e = outcome.expect_err("broken");
    println!("   ({e}); broken = {}", barrier.is_broken());
    barrier.reset();
    println!("   after reset(): broken = {}", barrier.is_broken());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 4. Queues

fn produce(args: (Queue<(u32, u32)>, u32, u32)) {
    let (q, me, n) = args;
    for i in 0..n {
        q.put((me, i)).expect("unbounded put");
    }
}

fn consume(q: Queue<(u32, u32)>) -> Vec<(u32, u32)> {
    std::iter::from_fn(|| q.get().ok().filter(|&(who, _)| who != u32::MAX)).collect()
}

fn queue_producers_consumers() -> Result {
    step("Queue: 3 producers and 3 consumers, 100 000 items each way, every item exactly once");
    let q = Queue::new()?;
    let t = Instant::now();
    let consumers = (0..3)
        .map(|_| Process::spawn(consume, q.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let producers = (0..3)
        .map(|p| Process::spawn(produce, (q.clone(), p, 100_000)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for p in producers {
        p.join()?;
    }
    for _ in 0..3 {
        q.put((u32::MAX, 0))?; // one stop sentinel per consumer
    }
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for c in consumers {
        let got = c.join()?;
        per_consumer.push(got.len());
        all.extend(got);
    }
    let took = t.elapsed();
    all.sort_unstable();
    all.dedup();
    println!(
        "   consumers took {per_consumer:?} items; {} distinct of 300 000; {} in all ({:.1} M items/s, 6 processes on {} CPUs)",
        all.len(),
        ms(took),
        300_000.0 / took.as_secs_f64() / 1e6,
        cpu_count()
    );
    Ok(())
}

fn put_big(q: Queue<ByteBuf>) {
    q.put(ByteBuf::from(vec![7u8; 50 << 20])).expect("put");
}

fn queue_exit_before_taken() -> Result {
    step("Queue: a child puts a 50 MiB item and exits; it is joined before anyone takes the item");
    let q = Queue::new()?;
    let t = Instant::now();
    let child = Process::spawn(put_big, q.clone())?;
    child.join()?;
    let joined = t.elapsed();
    let item = q.get()?;
    println!(
        "   joined after {} (no feeder thread to wait for); then took {} MiB, all 7s: {}; len now {}",
        ms(joined),
        item.len() >> 20,
        item.iter().all(|&b| b == 7),
        q.len()
    );
    Ok(())
}

fn queue_bounded_and_timeouts() -> Result {
    step("Queue(2): put_timeout on a full queue hands the item back; get_timeout on an empty one");
    let q = Queue::bounded(2)?;
    q.put("a".to_string())?;
    q.try_put("b".to_string())?;
    let t = Instant::now();
    let err = q
        .put_timeout("c".to_string(), Duration::from_millis(20))
        .expect_err("full");
    let waited = t.elapsed();
    let said = err.to_string();
    println!(
        "   len {} is_full={} after {}: \"{said}\", item back: {:?}",
        q.len(),
        q.is_full(),
        ms(waited),
        err.into_inner()
    );
    q.get()?;
    q.get()?;
    let t = Instant::now();
    let empty = q.get_timeout(Duration::from_millis(20));
    println!(
        "   empty: {:?} after {}",
        empty.map_err(|e| e.to_string()),
        ms(t.elapsed())
    );
    Ok(())
}

fn put_numbers_forever(q: Queue<u64>) {
    for i in 0.. {
        q.put(i).expect("put");
    }
}

fn queue_killed_producer() -> Result {
    step("Queue: a producer is SIGKILLed in the middle of its puts; the queue stays consistent");
    let q = Queue::new()?;
    let child = Process::spawn(put_numbers_forever, q.clone())?;
    while q.len() < 200_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill()?;
    let status = child.join().err();
    let mut n = 0u64;
    let mut in_order = true;
    while let Ok(v) = q.try_get() {
        in_order &= v == n;
        n += 1;
    }
    q.put(42)?;
    println!(
        "   child: {status:?}\n   drained {n} items, consecutive from 0: {in_order}; a new put/get works: {:?}",
        q.get()?
    );
    Ok(())
}

fn worker(q: JoinableQueue<Option<u32>>) -> u32 {
    let mut sum = 0;
    while let Ok(Some(n)) = q.get() {
        sum += n;
        q.task_done().expect("one per item");
    }
    q.task_done().expect("the sentinel counts too");
    sum
}

fn joinable_queue() -> Result {
    step("JoinableQueue: 2 workers; join() returns when every item is marked done");
    let q = JoinableQueue::new()?;
    let workers = (0..2)
        .map(|_| Process::spawn(worker, q.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let t = Instant::now();
    for n in 1..=1000 {
        q.put(Some(n))?;
    }
    q.join();
    println!(
        "   1000 items done after {}; unfinished = {}",
        ms(t.elapsed()),
        q.unfinished()
    );
    for _ in &workers {
        q.put(None)?;
    }
    let sums: Vec<u32> = workers
        .into_iter()
        .map(|w| w.join())
        .collect::<std::result::Result<_, _>>()?;
    println!(
        "   the workers' sums {sums:?} add up to {} (1 + … + 1000 = 500500)",
        sums.iter().sum::<u32>()
    );
    println!(
        "   one task_done too many: {}",
        q.task_done().expect_err("all done")
    );
    Ok(())
}

fn shout(args: (SimpleQueue<String>, SimpleQueue<String>)) {
    let (inq, out) = args;
    while let Ok(s) = inq.get() {
        if s.is_empty() {
            return;
        }
        out.put(s.to_uppercase()).expect("put");
    }
}

fn simple_queue_round_trip() -> Result {
    step("SimpleQueue: a put→get round trip through a child and back, 10 000 times");
    let (there, back) = (SimpleQueue::new()?, SimpleQueue::new()?);
    let child = Process::spawn(shout, (there.clone(), back.clone()))?;
    let t = Instant::now();
    for _ in 0..10_000 {
        there.put("ping".to_string())?;
        back.get()?;
    }
    let took = t.elapsed();
    there.put(String::new())?;
    child.join()?;
    println!("   {} per round trip", us(took / 10_000));
    let closed = there.clone();
    closed.close();
    println!(
        "   after close(): {}",
        match closed.get() {
            Err(e @ GetError::Closed) => e.to_string(),
            other => format!("{other:?}"),
        }
    );
    Ok(())
}

/// A worker that gets its reply channel with each job.
fn answer_on(jobs: Queue<Option<(u64, Connection)>>) -> u32 {
    let mut answered = 0;
    for (n, reply) in jobs.iter().map_while(|job| job.expect("get")) {
        reply.send(&(n * n)).expect("reply");
        answered += 1;
    }
    answered
}

fn queue_carries_connections() -> Result {
    step("Objects that travel as descriptors go on a queue: jobs that carry their own reply pipe");
    let jobs = Queue::new()?;
    let workers = (0..2)
        .map(|_| Process::spawn(answer_on, jobs.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut replies = Vec::new();
    for n in 1..=6u64 {
        let (here, there) = pipe()?;
        jobs.put(Some((n, there)))?; // the descriptor rides beside the item
        replies.push(here);
    }
    for _ in &workers {
        jobs.put(None)?;
    }
    let squares = replies
        .iter()
        .map(|r| r.recv::<u64>())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let answered = workers
        .into_iter()
        .map(|w| w.join())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    println!("   replies {squares:?}; jobs answered per worker {answered:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 5. Pool

fn cube(x: u64) -> u64 {
    x * x * x
}

fn slow_cube(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x * x
}

fn pool_basics() -> Result {
    step("Pool(2): apply, apply_async, map, and imap over an endless input");
    let pool = Pool::new(2)?;
    let t = Instant::now();
    let one = pool.apply(cube, 3)?;
    let apply = t.elapsed();
    let pending = pool.apply_async(cube, 4);
    let t = Instant::now();
    let all = pool.map(cube, 0..100_000)?;
    let map = t.elapsed();
    let first: Vec<u64> = pool.imap(cube, 1..).take(5).map(|r| r.unwrap()).collect();
    println!(
        "   apply(cube, 3) = {one} in {}; apply_async(cube, 4).get() = {}; map over 100 000 items in {} \
         (sum {}); imap over 1.. took 5: {first:?}",
        us(apply),
        pending.get()?,
        ms(map),
        all.iter().map(|&v| u128::from(v)).sum::<u128>()
    );
    Ok(())
}

fn pool_worker_killed() -> Result {
    step("Pool(2): a worker is SIGKILLed in the middle of a map; the map completes");
    let pool = Pool::new(2)?;
    let before = pool.worker_pids();
    let m = pool.map_async(slow_cube, 0..400);
    std::thread::sleep(Duration::from_millis(50));
    let victim = before[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim).expect("a pid"),
        rustix::process::Signal::KILL,
    )?;
    let results = m.results();
    let failed: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].is_err())
        .collect();
    let right = results
        .iter()
        .enumerate()
        .filter(|(i, r)| r.as_ref().is_ok_and(|v| *v == (*i as u64).pow(3)))
        .count();
    let why = failed
        .first()
        .map(|&i| format!("{}", results[i].as_ref().unwrap_err()))
        .unwrap_or_default();
    println!(
        "   killed worker {victim}: {right} of 400 items right, {} failed (the chunk it held: items {}..={}): \"{why}\"",
        failed.len(),
        failed.first().copied().unwrap_or(0),
        failed.last().copied().unwrap_or(0),
    );
    println!(
        "   workers before {before:?}, after {:?}; the pool goes on: apply(cube, 5) = {}",
        pool.worker_pids(),
        pool.apply(cube, 5)?
    );
    Ok(())
}

fn pool_failures_stay_alone() -> Result {
    step("Pool: a panicking item and a task past its time limit fail alone");
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(100))
        .build()?;
    let r = pool.map_results(checked_sqrt, [16, -1, 81]);
    let t = Instant::now();
    let late = pool.apply(sleep_ms, 5_000);
    println!(
        "   map_results(checked_sqrt, [16, -1, 81]) = {r:?}\n   a 5 s task with a 100 ms limit: {late:?} after {}",
        ms(t.elapsed())
    );
    Ok(())
}

fn checked_sqrt(x: i64) -> i64 {
    assert!(x >= 0, "no square root of {x}");
    (x as f64).sqrt() as i64
}

// ---------------------------------------------------------------------------------------------------
// 8. Limits

/// Lowers this process's descriptor limit and makes pipes until the system says no.
fn pipes_until_refused(limit: u64) -> (usize, String, String) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let maximum = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum,
        },
    )
    .expect("setrlimit");
    let mut pipes = Vec::new();
    loop {
        match pipe() {
            Ok(p) => pipes.push(p),
            Err(e) => return (pipes.len(), format!("{:?}", e.kind()), e.to_string()),
        }
    }
}

fn out_of_descriptors() -> Result {
    step("Running out of descriptors (a child limited to 64) is an error of its own kind");
    let (made, kind, message) = Process::spawn(pipes_until_refused, 64)?.join()?;
    println!("   {made} pipes made, then io::ErrorKind::{kind}: \"{message}\"");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 9. Under load

fn burn(_: ()) {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn echo_bytes(conn: Connection) {
    while let Ok(msg) = conn.recv_bytes() {
        if conn.send_bytes(&msg).is_err() {
            return;
        }
    }
}

fn busy_cpus() -> Result {
    step("Every CPU busy with another process: round trips and a 1 ms timeout");
    let burners = (0..cpu_count())
        .map(|_| {
            Process::builder()
                .start_method(StartMethod::Fork)
                .daemon(true)
                .spawn(burn, ())
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let (here, there) = pipe()?;
    let child = Process::spawn(echo_bytes, there)?;
    let rt = median_of(201, || {
        let t = Instant::now();
        here.send_bytes(b"ping")?;
        here.recv_bytes()?;
        Ok(t.elapsed())
    })?;
    drop(here);
    child.join()?;
    let event = Event::new()?;
    let timeout = median_of(51, || {
        let t = Instant::now();
        let _ = event.wait_timeout(Duration::from_millis(1)); // never set: always times out
        Ok(t.elapsed())
    })?;
    println!(
        "   {} burners: pipe round trip {} (median of 201), Event::wait_timeout(1 ms) {} (median \
         of 51); waits stop spinning when they notice they were descheduled, and yield only \
         while yields come back quickly",
        burners.len(),
        us(rt),
        ms(timeout)
    );
    for b in burners {
        b.kill()?;
        let _ = b.join();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 6. Listener and Client

/// A child's side: connects with `key` and echoes one message; how long connect + handshake took.
fn keyed_echo(args: (multiprocess::Address, Vec<u8>)) -> u64 {
    let (address, key) = args;
    let t = Instant::now();
    let conn = multiprocess::Client::builder(&address)
        .authkey(&key)
        .connect()
        .expect("connect");
    let took = t.elapsed().as_micros() as u64;
    let m = conn.recv_bytes().expect("recv");
    conn.send_bytes(&m).expect("send");
    took
}

fn listener_across_processes() -> Result {
    step("a TCP listener with a key; a child connects, both prove the key (Python's handshake)");
    let listener = multiprocess::Listener::builder("127.0.0.1:0")
        .authkey(b"tour key")
        .bind()?;
    println!(
        "   listening at {} (port 0: the kernel chose)",
        listener.address()
    );
    let child = Process::spawn(
        keyed_echo,
        (listener.address().clone(), b"tour key".to_vec()),
    )?;
    let conn = listener.accept()?;
    let t = Instant::now();
    conn.send_bytes(b"ping")?;
    let back = conn.recv_bytes()?;
    let rt = t.elapsed();
    let handshake = child.join()?;
    println!(
        "   the child authenticated: connect + 6-frame handshake {handshake} µs; echo {:?} in {:.1} µs",
        String::from_utf8_lossy(&back),
        rt.as_secs_f64() * 1e6
    );
    Ok(())
}

fn listener_refuses_wrong_keys() -> Result {
    step("a wrong key is refused on both sides; a silent client holds nobody up");
    let listener = multiprocess::Listener::builder("@multiprocess-tour")
        .authkey(b"right")
        .handshake_timeout(Duration::from_millis(300))
        .bind()?;
    let address = listener.address().clone();
    let wrong = std::thread::spawn(move || {
        multiprocess::Client::builder(&address)
            .authkey(b"wrong")
            .connect()
            .err()
            .map(|e| e.to_string())
    });
    println!(
        "   listener: {}",
        listener
            .accept()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    println!(
        "   client:   {}",
        wrong.join().unwrap_or_default().unwrap_or_default()
    );
    let _silent = multiprocess::Client::connect(listener.address())?; // says nothing
    let address = listener.address().clone();
    let good = std::thread::spawn(move || {
        multiprocess::Client::builder(&address)
            .authkey(b"right")
            .connect()
            .map(|c| c.send_bytes(b"me"))
    });
    let t = Instant::now();
    let conn = listener.accept()?;
    println!(
        "   a silent client came first; the good one was accepted after {} and said {:?}",
        ms(t.elapsed()),
        String::from_utf8_lossy(&conn.recv_bytes()?)
    );
    let _ = good.join();
    let e = listener
        .accept()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("   then, at its deadline (300 ms): {e}");
    Ok(())
}

fn listener_python_client() -> Result {
    step("a Python client (multiprocessing.connection.Client) connects; bytes and pickled values");
    let listener = multiprocess::Listener::builder("127.0.0.1:0")
        .authkey(b"tour key")
        .bind()?;
    let script = "import sys\nfrom multiprocessing.connection import Client\n\
        h, p = sys.argv[1].rsplit(':', 1)\n\
        c = Client((h, int(p)), authkey=b'tour key')\n\
        c.send_bytes(b'hello from Python %d.%d' % sys.version_info[:2])\n\
        c.send({'answer': 42, 'pair': (1, 2.5), 'big': 2**70, 'tags': {'a'}})\n\
        print('   python got back:', c.recv())\n";
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let child = std::process::Command::new(&python)
        .args(["-c", script, &listener.address().to_string()])
        .spawn();
    let Ok(mut child) = child else {
        println!("   skipped: {python} did not start");
        return Ok(());
    };
    match listener.accept_timeout(Duration::from_secs(20)) {
        Ok(conn) => {
            println!("   got {:?}", String::from_utf8_lossy(&conn.recv_bytes()?));
            // A pickled value: decoded here (nothing imported or called), sent back pickled.
            let v = conn.recv_pickle_value()?;
            println!("   got a pickled value: {v:?}");
            conn.send_pickle(&("thanks", vec![1u8, 2], Option::<u8>::None))?;
        }
        Err(e) => println!("   {e}"),
    }
    child.wait()?;
    Ok(())
}

/// A child's side over TLS: trusts `roots` (PEM), connects with the key, echoes one message; how
/// long connect + TLS + key handshake took.
#[cfg(feature = "tls")]
fn tls_echo(args: (multiprocess::Address, String)) -> u64 {
    let (address, roots) = args;
    let t = Instant::now();
    let conn = multiprocess::Client::builder(&address)
        .tls(multiprocess::tls::client_config(roots.as_bytes()).expect("roots"))
        .authkey(b"tour key")
        .connect()
        .expect("connect");
    let took = t.elapsed().as_micros() as u64;
    let m = conn.recv_bytes().expect("recv");
    conn.send_bytes(&m).expect("send");
    took
}

#[cfg(feature = "tls")]
fn listener_tls() -> Result {
    use multiprocess::tls;
    step("TLS between Rust processes (rustls): a child trusts the listener's certificate");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let listener = multiprocess::Listener::builder("127.0.0.1:0")
        .tls(tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes())?)
        .authkey(b"tour key")
        .bind()?;
    let child = Process::spawn(tls_echo, (listener.address().clone(), cert_pem.clone()))?;
    let conn = listener.accept()?;
    let t = Instant::now();
    conn.send_bytes(b"sealed")?;
    let back = conn.recv_bytes()?;
    let rt = t.elapsed();
    let handshake = child.join()?;
    println!(
        "   the TLS handshake, then the key handshake inside it: {handshake} µs; echo {:?} in {:.1} µs",
        String::from_utf8_lossy(&back),
        rt.as_secs_f64() * 1e6
    );
    // A client that trusts another certificate is refused, and so is it by the listener.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let address = listener.address().clone();
    let wrong = std::thread::spawn(move || {
        multiprocess::Client::builder(&address)
            .tls(tls::client_config(other.cert.pem().as_bytes()).expect("roots"))
            .connect()
            .err()
            .map(|e| e.to_string())
    });
    let refused = listener.accept().err().map(|e| e.to_string());
    println!(
        "   client:   {}",
        wrong.join().unwrap_or_default().unwrap_or_default()
    );
    println!("   listener: {}", refused.unwrap_or_default());
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn listener_tls() -> Result {
    step("TLS between Rust processes: built without the `tls` feature, skipped");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 7. Manager

/// A child's side: squares its number into the shared dict.
fn square_into(args: (multiprocess::manager::Dict<u32, u32>, u32)) {
    let (d, i) = args;
    d.set(&i, &(i * i)).expect("set");
}

fn manager_basics() -> Result {
    use multiprocess::manager::Manager;
    step("a manager server in a child process; ten children fill its dict (the seed's example)");
    let t = Instant::now();
    let m = Manager::start()?;
    println!(
        "   started in {}, listening at {}",
        ms(t.elapsed()),
        m.address()
    );
    let d = m.dict::<u32, u32>()?;
    let children: Vec<_> = (0..10)
        .map(|i| Process::spawn(square_into, (d.clone(), i)))
        .collect::<std::result::Result<_, _>>()?;
    for c in children {
        c.join()?;
    }
    let mut items = d.items()?;
    items.sort();
    println!("   the dict: {items:?}");
    let rt = median_of(201, || {
        let t = Instant::now();
        d.set(&1, &1)?;
        d.get(&1)?;
        Ok(t.elapsed())
    })?;
    println!(
        "   set + get round trip: {} (one connection per process, calls pipelined)",
        us(rt)
    );
    let l = m.list::<u64>()?;
    l.extend(&(0..1000).collect::<Vec<u64>>())?;
    let t = Instant::now();
    let sum: u64 = l
        .iter()
        .map(|x| x.map_err(Box::from))
        .sum::<Result<u64>>()?;
    println!(
        "   a 1000-item list iterated in {} (256 items per round trip): sum {sum}",
        us(t.elapsed())
    );
    Ok(())
}

fn manager_transactions() -> Result {
    use multiprocess::manager::{Manager, ManagerError, RemoteError};
    step("a version-checked transaction: all or nothing, refused when the data moved");
    let m = Manager::start()?;
    let accounts = m.dict::<String, i64>()?;
    accounts.set(&"alice".into(), &100)?;
    let (version, _) = accounts.snapshot()?;
    let mut tx = m.batch();
    tx.expect(&accounts, version);
    tx.dict_set(&accounts, &"alice".into(), &70)?;
    tx.dict_set(&accounts, &"bob".into(), &30)?;
    tx.commit()?;
    println!("   moved 30 at version {version}: {:?}", accounts.items()?);
    let mut stale = m.batch();
    stale.expect(&accounts, version);
    stale.dict_set(&accounts, &"bob".into(), &1_000_000)?;
    match stale.commit() {
        Err(ManagerError::Remote(e @ RemoteError::Conflict { .. })) => {
            println!("   again at {version}: {e}")
        }
        other => println!("   unexpected: {other:?}"),
    }
    println!("   still {:?}", accounts.items()?);
    Ok(())
}

/// A child's side: takes the lock, says so, and waits to be killed.
fn take_manager_lock(args: (multiprocess::manager::Lock, Connection)) {
    let (lock, told) = args;
    lock.acquire().expect("acquire");
    told.send(&()).expect("tell");
    std::thread::sleep(Duration::from_secs(60));
}

fn manager_dead_client() -> Result {
    use multiprocess::manager::Manager;
    step("a client SIGKILLed holding a manager lock: the server releases it");
    let m = Manager::start()?;
    let lock = m.lock()?;
    let (here, there) = multiprocess::pipe()?;
    let child = Process::spawn(take_manager_lock, (lock.clone(), there))?;
    here.recv::<()>()?;
    println!(
        "   held by the child: try_acquire here = {}",
        lock.try_acquire()?
    );
    let t = Instant::now();
    child.kill()?;
    let _ = child.join();
    let got = lock.acquire_timeout(Duration::from_secs(10))?;
    println!(
        "   killed; acquired here {} after the kill: {got}",
        ms(t.elapsed())
    );
    lock.release()?;
    let s = m.status()?;
    println!(
        "   the server now: {} objects, {} client(s)",
        s.objects.len(),
        s.clients.len()
    );
    Ok(())
}

/// A type of the tour's own, served by the manager: a tally whose `Slow` call takes 200 ms.
struct Tally(u64);

#[derive(serde::Serialize, serde::Deserialize)]
enum TallyCall {
    Add(u64),
    Slow,
}

impl multiprocess::manager::Serve for Tally {
    const NAME: &'static str = "tour.Tally";
    type Init = u64;
    type Request = TallyCall;
    type Response = u64;
    fn new(start: u64) -> Tally {
        Tally(start)
    }
    fn call(&mut self, call: TallyCall) -> u64 {
        match call {
            TallyCall::Add(n) => self.0 += n,
            TallyCall::Slow => std::thread::sleep(Duration::from_millis(200)),
        }
        self.0
    }
}

struct TourTypes;

impl multiprocess::manager::Registrations for TourTypes {
    fn register(r: &mut multiprocess::manager::Registry) {
        r.register::<Tally>();
    }
}

/// A child's side: finds the named queue and the tally, adds what it takes from the queue.
fn add_from_queue(
    args: (
        multiprocess::manager::Manager,
        multiprocess::manager::Served<Tally>,
    ),
) {
    let (m, tally) = args;
    let jobs = m.named("jobs").queue::<u64>(0).expect("the named queue");
    while let Ok(n) = jobs.get_timeout(Duration::from_millis(200)) {
        tally.call(&TallyCall::Add(n)).expect("add");
    }
}

fn manager_served() -> Result {
    use multiprocess::manager::Manager;
    step("a type of your own in the manager, a named queue, and a slow call that blocks nobody");
    let m = Manager::builder().serving::<TourTypes>().start()?;
    let tally = m.served::<Tally>(&0)?;
    let jobs = m.named("jobs").queue::<u64>(0)?;
    for n in 1..=100 {
        jobs.put(&n)?;
    }
    let children: Vec<_> = (0..3)
        .map(|_| Process::spawn(add_from_queue, (m.clone(), tally.clone())))
        .collect::<std::result::Result<_, _>>()?;
    for c in children {
        c.join()?;
    }
    println!(
        "   three children added 1..=100 from the named queue: the tally is {}",
        tally.call(&TallyCall::Add(0))?
    );
    let rt = median_of(201, || {
        let t = Instant::now();
        tally.call(&TallyCall::Add(0))?;
        Ok(t.elapsed())
    })?;
    println!("   a served call's round trip: {}", us(rt));
    // One thread of this process sits in a 200 ms call; the others share its connection.
    let slow = {
        let tally = tally.clone();
        std::thread::spawn(move || tally.call(&TallyCall::Slow))
    };
    std::thread::sleep(Duration::from_millis(20));
    let d = m.dict::<u32, u32>()?;
    let t = Instant::now();
    let mut calls = 0;
    while t.elapsed() < Duration::from_millis(100) {
        d.set(&calls, &calls)?;
        calls += 1;
    }
    let _ = slow.join().map_err(|_| "the slow call panicked")??;
    println!(
        "   during a 200 ms call on another thread, this one made {calls} dict calls (its connection was handed to a fresh reader)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// 10. Past one machine

/// A slow square, with the pid of the process that ran it.
#[cfg(feature = "worker-env")]
fn slow_square_with_pid(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(10));
    (x * x, std::process::id())
}

#[cfg(feature = "worker-env")]
fn put_ten(q: Queue<String>) {
    for i in 0..10 {
        q.put(format!("job {i}")).unwrap();
    }
}

#[cfg(feature = "worker-env")]
fn past_one_machine() -> Result {
    use multiprocess::cluster::{self, Broker};
    const KEY: &str = "tour key";
    let server = match support::RedisServer::start() {
        Ok(s) => s,
        Err(why) => {
            println!("   skipped: {why}");
            return Ok(());
        }
    };
    let url = server.url.clone();
    step(
        "Two workers (this program in worker mode: MULTIPROCESS_WORKER=tour ...), one local process each",
    );
    let mut workers = support::LocalWorkers::start(&url, "tour", KEY, 2, 1)?;
    support::LocalWorkers::wait_live(&url, "tour", 2)?;
    let pool = Pool::builder()
        .broker(Broker::redis(&url, "tour").authkey(KEY))
        .build()?;
    let t = Instant::now();
    let out = pool.map(slow_square_with_pid, 0..100)?;
    let mut pids: Vec<u32> = out.iter().map(|(_, p)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    println!(
        "   map of 100 slow squares through {url}: sum {} in {}, run by processes {pids:?}",
        out.iter().map(|(v, _)| v).sum::<u64>(),
        ms(t.elapsed())
    );
    let rt = median_of(200, || {
        let t = Instant::now();
        pool.apply(cube, 3)?;
        Ok(t.elapsed())
    })?;
    println!(
        "   apply round trip through the broker: {} (median of 200)",
        us(rt)
    );

    step(
        "A worker is SIGKILLed in the middle of a map: its tasks are reclaimed after the 1 s lease",
    );
    let pending = pool.map_async(slow_square_with_pid, 0..200);
    std::thread::sleep(Duration::from_millis(300));
    let victim = workers.0[0].id();
    let held = cluster::status(&url, "tour")?
        .workers
        .iter()
        .find(|w| w.pid == victim)
        .map_or(0, |w| w.pending);
    workers.0[0].kill()?;
    workers.0[0].wait()?;
    let t = Instant::now();
    let out = pending.get()?;
    let right = out
        .iter()
        .enumerate()
        .filter(|(i, (v, _))| *v == (*i as u64).pow(2))
        .count();
    let s = cluster::status(&url, "tour")?;
    println!(
        "   killed worker {victim} (holding {held} tasks): {right} of 200 results right, each once; {} task(s) reclaimed; {} after the kill",
        s.reclaimed,
        ms(t.elapsed())
    );
    println!(
        "   `multiprocess pool status` says: {} queued, {} in flight, {} live workers, {} not responding",
        s.queued,
        s.in_flight,
        s.workers.iter().filter(|w| w.alive).count(),
        s.workers.iter().filter(|w| !w.alive).count()
    );

    step("A Queue on the broker: a child process puts ten jobs, this one takes them");
    let q: Queue<String> = Queue::builder()
        .broker(Broker::redis(&url, "tour-jobs").authkey(KEY))
        .build()?;
    let child = Process::spawn(put_ten, q.clone())?;
    child.join()?;
    let jobs: Vec<String> = (0..10)
        .map(|_| q.get())
        .collect::<std::result::Result<_, _>>()?;
    println!(
        "   {} jobs, first {:?}, last {:?}; the queue is empty: {}",
        jobs.len(),
        jobs[0],
        jobs[9],
        q.is_empty()
    );
    drop((pool, q, workers, server));
    Ok(())
}

fn section(title: &str) {
    println!(
        "\n== {title} {}",
        "=".repeat(70usize.saturating_sub(title.len()))
    );
}

fn step(title: &str) {
    println!("\n-- {title}");
}

fn median_of(n: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut v = (0..n).map(|_| f()).collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v[n / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

// ---------------------------------------------------------------------------------------------------
// 11. Python clients of the manager, and Python managers

/// A Rust server for Python clients on a Unix socket in a fresh directory, on a thread.
struct PyServed {
    path: std::path::PathBuf,
    stopper: multiprocess::manager::python::PythonStopper,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl PyServed {
    fn start(tag: &str) -> Result<PyServed> {
        let dir = std::env::temp_dir().join(format!("mp-tour-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("m.sock");
        let listener = multiprocess::Listener::builder(&path)
            .authkey(b"tour key")
            .bind()?;
        let server = multiprocess::manager::python::PythonServer::new(listener)?;
        let stopper = server.stopper();
        let thread = Some(std::thread::spawn(move || server.serve()));
        Ok(PyServed {
            path,
            stopper,
            thread,
        })
    }
}

impl Drop for PyServed {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_clients_of_the_rust_server() -> Result {
    use multiprocess::manager::python::PythonManager;
    step("an unchanged Python SyncManager client of the Rust server, and a Rust client beside it");
    let served = PyServed::start("pyclients")?;
    let m = PythonManager::connect(served.path.as_path(), b"tour key")?;
    let shared = m.dict::<String, String>()?;
    let script = r#"
import sys, queue
from multiprocessing.managers import SyncManager, Token, DictProxy
m = SyncManager(address=sys.argv[1], authkey=b'tour key'); m.connect()
d = m.dict(); d[1] = 'int one'; d[1.0] = 'float one'
print('   python: d[True] =', repr(d[True]), '(1, 1.0 and True are one key), len', len(d))
l = m.list(range(10)); print('   python: l[-3:] =', l[-3:], ' l[::4] =', l[::4])
q = m.Queue()
try:
    q.get(timeout=0.05)
except queue.Empty as e:
    print('   python: an empty queue raised', type(e).__module__ + '.' + type(e).__name__)
rust = DictProxy(Token('dict', m.address, sys.argv[2]), 'pickle', manager=m, authkey=m._authkey)
rust['from'] = 'python %d.%d' % sys.version_info[:2]
"#;
    let t = Instant::now();
    let status = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&served.path)
        .arg(shared.id())
        .status();
    match status {
        Ok(s) if s.success() => println!(
            "   the Rust client reads what Python wrote into its dict: {:?} ({} for the script)",
            shared.get(&"from".into())?,
            ms(t.elapsed())
        ),
        Ok(s) => println!("   the Python client failed: {s}"),
        Err(e) => println!("   skipped: {} did not start: {e}", python()),
    }
    Ok(())
}

fn python_client_killed_holding_a_lock() -> Result {
    use multiprocess::manager::python::PythonManager;
    use multiprocess::pickle::Value as Py;
    use std::io::BufRead;
    step("a Python client SIGKILLed holding a Lock: the server gives the lock back");
    let served = PyServed::start("pylock")?;
    let m = PythonManager::connect(served.path.as_path(), b"tour key")?;
    let lock = m.object("Lock", vec![])?;
    let script = r#"
import sys, time
from multiprocessing.managers import SyncManager, Token, AcquirerProxy
m = SyncManager(address=sys.argv[1], authkey=b'tour key'); m.connect()
lk = AcquirerProxy(Token('Lock', m.address, sys.argv[2]), 'pickle', manager=m, authkey=m._authkey)
lk.acquire(); print('held', flush=True); time.sleep(60)
"#;
    let Ok(mut child) = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&served.path)
        .arg(lock.id())
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        println!("   skipped: {} did not start", python());
        return Ok(());
    };
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let try_now = lock.call("acquire", vec![Py::Bool(false)])?;
    println!(
        "   Python {} holds it: acquire(False) here gives {try_now:?}",
        child.id()
    );
    child.kill()?;
    child.wait()?;
    let t = Instant::now();
    let got = lock.call("acquire", vec![Py::Bool(true), Py::Int(10)])?;
    println!(
        "   killed: acquire(timeout=10) gives {got:?} after {} (CPython's server would keep it locked forever)",
        ms(t.elapsed())
    );
    Ok(())
}

fn rust_proxies_beside_python_clients() -> Result {
    use multiprocess::manager::Manager;
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Job {
        id: u32,
        word: String,
    }
    step(
        "the Rust manager's own typed proxies on the same server: a Rust struct is a dict to Python",
    );
    let served = PyServed::start("pynative")?;
    let m = Manager::connect(served.path.as_path(), b"tour key")?;
    let jobs = m.named("jobs").queue::<Job>(0)?;
    let done = m.named("done").dict::<u32, usize>()?;
    for (id, word) in [(1, "spam"), (2, "eggs"), (3, "ham")] {
        jobs.put(&Job {
            id,
            word: word.into(),
        })?;
    }
    let script = r#"
import sys
from multiprocessing.managers import BaseManager, DictProxy
class M(BaseManager): pass
M.register('jobs'); M.register('done', proxytype=DictProxy)
m = M(address=sys.argv[1], authkey=b'tour key'); m.connect()
jobs, done = m.jobs(), m.done()
for _ in range(3):
    job = jobs.get(timeout=10)
    done[job['id']] = len(job['word'])
print('   python: got', job, 'from the Rust queue', flush=True)
"#;
    let t = Instant::now();
    match std::process::Command::new(python())
        .args(["-c", script])
        .arg(&served.path)
        .status()
    {
        Ok(s) if s.success() => println!(
            "   the Rust dict<u32, usize> Python filled: {:?} ({} for the script)",
            done.items()?,
            ms(t.elapsed())
        ),
        Ok(s) => println!("   the Python client failed: {s}"),
        Err(e) => println!("   skipped: {} did not start: {e}", python()),
    }
    Ok(())
}

fn rust_client_of_a_python_manager() -> Result {
    use multiprocess::manager::python::{PyException, PythonManager};
    use std::io::BufRead;
    step("a Rust client of CPython's own manager server (SyncManager.get_server())");
    let dir = std::env::temp_dir().join(format!("mp-tour-pyserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("py.sock");
    let script = r#"
import sys
from multiprocessing.managers import SyncManager
s = SyncManager(address=sys.argv[1], authkey=b'tour key').get_server()
print('up', flush=True); s.serve_forever()
"#;
    let Ok(mut server) = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        println!("   skipped: {} did not start", python());
        return Ok(());
    };
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line)?;
    let outcome = (|| -> Result {
        let m = PythonManager::connect(path.as_path(), b"tour key")?;
        let d = m.dict::<String, Vec<u32>>()?;
        d.set(&"primes".into(), &vec![2, 3, 5, 7])?;
        println!(
            "   d['primes'] = {:?}, len {}",
            d.get(&"primes".into())?,
            d.len()?
        );
        let q = m.queue::<(String, f64)>()?;
        q.put(&("pi".into(), std::f64::consts::PI))?;
        println!("   q.get() = {:?}", q.get()?);
        let e = q.get_timeout(Duration::from_millis(50)).unwrap_err();
        println!(
            "   an empty get: {e} (typed: {})",
            e.exception() == Some(&PyException::Empty)
        );
        println!(
            "   objects on the Python server: {}",
            m.number_of_objects()?
        );
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
