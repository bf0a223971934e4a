//! The manager's server: one thread per client connection over one shared state.
//!
//! # One lock, and nothing slow under it
//! Every object lives in one `State` behind one mutex: a call, or a whole batch, runs under it, so
//! an atomic batch sees and leaves a consistent world with nothing of another client's in between,
//! for free. No socket is written under that lock: answers are collected while it is held and
//! delivered after. A call that must wait (a lock another client holds) is parked on the object and
//! answered by whichever thread frees it, or by the timer thread at its deadline (a heap of
//! deadlines: it looks only at the objects whose time came).
//!
//! # A client that stops reading stalls only itself
//! A client's own answers are written by its own thread, which may block on that client's full
//! socket; that stalls nobody else. An answer another thread produces for it (a lock granted on
//! someone's release, a timeout) goes into the client's mailbox, which a writer thread of its own
//! empties; a mailbox that grows past `MAILBOX_LIMIT` answers means the client is not reading, and
//! its connection is ended.
//!
//! # A slow served call does not hold up its connection
//! A client's requests are read by one thread, which runs a served object's method itself: a
//! quick call pays no hand-off to another thread (a wake-up costs ~25 µs on a small machine). But
//! a method that runs on blocks the reading, and every other thread of that client process (they
//! share the connection) would wait behind it. So while served calls run, a watchdog looks every
//! millisecond for a reader that has been in one call longer than `HANDOFF_AFTER` (2 ms), and
//! starts a fresh reader for that connection. Old and new settle who reads with one
//! compare-and-swap on the call's sequence number: whichever swaps it first (the old reader
//! finishing, or the new one starting) owns the connection; an old reader that lost sends its
//! answer and ends. The watchdog sleeps when no served call has run for a while, and the next one
//! wakes it. A method that never returns holds its thread for good (and `serve` waits for it when
//! stopping): so at most `MAX_STUCK_PER_CLIENT` readers of one client may be stuck, past which its
//! calls wait in line again, and a client that keeps abandoning such calls cannot make the server
//! grow threads without end.
//!
//! # Proxies in transit
//! An unnamed object nobody holds is not freed at once but after a grace period (`free_after`,
//! 10 s by default): a proxy on its way to another process (in a child's argument, a message, a
//! forked child's copy, a value stored in a dict) holds nothing while in transit, and the receiving
//! process takes its hold when it arrives.
//!
//! # Clients die
//! A client is its connection. When it ends (the process exited, crashed, or was killed), its
//! thread takes the client out of the state: the locks it held are released and handed to the next
//! waiter, its parked calls are dropped, and its holds on objects are let go of, which frees every
//! unnamed object nobody else holds (after the grace period below). Named objects stay until the
//! server stops.

use super::proto::{Bytes, Call, Expect, Kind, ObjectId, Op, Reply, Request, Response};
use super::{ClientStatus, ObjectStatus, RemoteError, Status};
use crate::{Connection, Listener};
use indexmap::IndexMap;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type ClientId = u64;

/// A manager server: serves the objects of its clients on a [`Listener`]. A [`Manager`](super::Manager)
/// started with [`Manager::start`](super::Manager::start) runs one in a child process; the
/// `multiprocess` command line tool runs one standalone.
///
/// # Examples
/// ```
/// use multiprocess::{Listener, manager::{Manager, Server}};
///
/// let listener = Listener::builder("@multiprocess-doc-server").authkey(b"key").bind()?;
/// let server = Server::new(listener)?;
/// let stop = server.stopper();
/// let serving = std::thread::spawn(move || server.serve());
/// let m = Manager::connect("@multiprocess-doc-server", b"key")?;
/// let d = m.dict::<String, u32>()?;
/// d.set(&"a".into(), &1)?;
/// assert_eq!(d.get(&"a".into())?, Some(1));
/// stop.stop();
/// serving.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

/// Stops a [`Server`] from another thread: [`Server::serve`] returns soon after.
#[derive(Clone, Debug)]
pub struct Stopper {
    shared: Arc<Shared>,
    address: crate::Address,
}

impl Stopper {
    /// Asks the server to stop: it stops accepting, ends its clients' connections, and `serve`
    /// returns.
    pub fn stop(&self) {
        self.shared.stop(&self.address);
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the timer thread when a call with an earlier deadline is parked, or at shutdown.
    timer: Condvar,
    stopping: AtomicBool,
    /// How long an unnamed object nobody holds is kept (see the module notes).
    free_after: Duration,
    /// The types of your own this server serves.
    registry: super::Registry,
    handoff: Handoff,
}

/// A served call running this long has its connection handed to a fresh reader (see the module
/// notes); the watchdog looks twice as often.
const HANDOFF_AFTER: Duration = Duration::from_millis(2);

/// At most this many readers of one client may be stuck in served calls, each having handed its
/// connection on; past it the next call waits behind them (as with no hand-off), so that a client
/// that keeps abandoning calls to a method that never returns cannot make the server grow threads
/// without end.
const MAX_STUCK_PER_CLIENT: usize = 16;

/// The watchdog sleeps after this many looks in a row found no served call running.
const HANDOFF_QUIET_LOOKS: u32 = 100;

/// The readers of a server that serves types of its own (see "A slow served call").
#[derive(Debug, Default)]
struct Handoff {
    readers: Mutex<Vec<Arc<Reader>>>,
    /// The watchdog sleeps on `wake` (with `readers` locked) until a served call starts; the
    /// first call to see it asleep clears it and wakes it.
    parked: AtomicBool,
    wake: Condvar,
    /// Readers the watchdog started, joined when the server stops.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Who reads one client's connection.
#[derive(Debug)]
struct Reader {
    id: ClientId,
    conn: Arc<Connection>,
    /// Odd while its reader runs a served call (the call's sequence number), even while it reads.
    /// Only the reader makes it odd; the reader finishing or a fresh one taking over makes it
    /// even again, whichever comes first.
    call: AtomicU64,
    /// When the running call started, in microseconds since `epoch`.
    since_us: AtomicU64,
    epoch: Instant,
    /// The call a fresh reader was last started for (one per call at most).
    helped: AtomicU64,
    /// Fresh readers started whose old reader is still in its call (see `MAX_STUCK_PER_CLIENT`).
    stuck: AtomicUsize,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Reader>>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `r`'s reader starts a served call; the call's sequence number.
    fn begin(&self, r: &Reader) -> u64 {
        let seq = r.call.load(Ordering::Relaxed) + 1;
        r.since_us
            .store(r.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        r.call.store(seq, Ordering::SeqCst);
        // Paired with the watchdog's `parked` store and look, both SeqCst: either it sees this
        // call, or this sees it parked and wakes it (only the first call to see it does).
        if self.parked.swap(false, Ordering::SeqCst) {
            let _readers = self.lock();
            self.wake.notify_all();
        }
        seq
    }
}

impl Reader {
    /// Makes call `seq` no longer the reader's: `true` for the one that did. The reader calls it
    /// when the call ends (`false`: a fresh reader took the connection over meanwhile), a fresh
    /// reader when it starts.
    fn take(&self, seq: u64) -> bool {
        self.call
            .compare_exchange(seq, seq + 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// The call its reader has been running for at least `HANDOFF_AFTER`, if any.
    fn slow_call(&self) -> Option<u64> {
        let seq = self.call.load(Ordering::SeqCst);
        if !in_call(seq) {
            return None;
        }
        let ran = (self.epoch.elapsed().as_micros() as u64)
            .saturating_sub(self.since_us.load(Ordering::Relaxed));
        (ran >= HANDOFF_AFTER.as_micros() as u64).then_some(seq)
    }

    fn in_call(&self) -> bool {
        in_call(self.call.load(Ordering::SeqCst))
    }
}

/// Whether a reader's call sequence number says it is in a call (odd).
fn in_call(seq: u64) -> bool {
    !seq.is_multiple_of(2)
}

/// Answers in a mailbox past this many: the client is not reading, and its connection is ended.
const MAILBOX_LIMIT: usize = 4096;

/// The default of [`Server::free_after`].
const FREE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    objects: HashMap<ObjectId, Entry>,
    names: HashMap<String, ObjectId>,
    next_object: ObjectId,
    clients: HashMap<ClientId, Client>,
    next_client: ClientId,
    /// When the timer must look at an object: a parked call's deadline, or the end of an unheld
    /// object's grace period. Stale entries (the call was answered) cost one look.
    timers: BinaryHeap<Reverse<(Instant, ObjectId)>>,
    /// Watches waiting for an object's version to pass theirs.
    watchers: HashMap<ObjectId, Vec<(Waiter, u64)>>,
}

#[derive(Debug)]
struct Client {
    conn: Arc<Connection>,
    mailbox: Arc<Mailbox>,
    peer: String,
    /// How many holds this client has on each object.
    holds: HashMap<ObjectId, u64>,
    requests: u64,
}

/// Answers for a client that other threads produced (see the module notes).
#[derive(Debug)]
struct Mailbox {
    conn: Arc<Connection>,
    queue: Mutex<(VecDeque<Response>, bool)>,
    ready: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Response>, bool)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, response: Response) {
        let mut q = self.lock();
        if q.1 {
            return;
        }
        if q.0.len() >= MAILBOX_LIMIT {
            crate::trace::event!(warn, "manager: a client does not read its answers: dropped");
            q.1 = true;
            q.0.clear();
            self.conn.shutdown();
            self.ready.notify_all();
            return;
        }
        q.0.push_back(response);
        self.ready.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_all();
    }

    /// The writer thread: sends what arrives until closed (or the connection fails).
    fn run(&self) {
        loop {
            let response = {
                let mut q = self.lock();
                loop {
                    if let Some(r) = q.0.pop_front() {
                        break r;
                    }
                    if q.1 {
                        return;
                    }
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            if self.conn.send(&response).is_err() {
                self.close();
                return;
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    name: Option<String>,
    /// Holds of all clients together.
    holds: u64,
    /// Since when nobody holds it (an unnamed object is freed a grace period later).
    unheld: Option<Instant>,
    /// One more for each change.
    version: u64,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    Dict(IndexMap<Bytes, Bytes>),
    List(Vec<Bytes>),
    Namespace(BTreeMap<String, Bytes>),
    Value(Bytes),
    Lock(LockState),
    Semaphore(SemState),
    Event(EventState),
    Queue(QueueState),
    Barrier(BarrierState),
    Condition(CondState),
    Served(super::serve::ServedObject),
}

#[derive(Debug, Clone, Default)]
struct CondState {
    /// Its lock (reentrant, as Python's default).
    lock: LockState,
    /// Waiting for a notify, with the lock count each had.
    waiters: VecDeque<Waiter>,
}

impl Data {
    /// The lock of a lock or a condition.
    fn lock_mut(&mut self) -> Option<&mut LockState> {
        match self {
            Data::Lock(l) => Some(l),
            Data::Condition(c) => Some(&mut c.lock),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct BarrierState {
    parties: u64,
    waiting: VecDeque<Waiter>,
    /// Broken (a wait timed out, a waiting party died, or it was aborted): every wait fails
    /// until a reset.
    broken: bool,
}

#[derive(Debug, Clone, Default)]
struct QueueState {
    items: VecDeque<Bytes>,
    /// 0: no limit.
    maxsize: u64,
    /// Items put and not yet marked done.
    unfinished: u64,
    getters: VecDeque<Waiter>,
    /// Puts waiting for room, with their items.
    putters: VecDeque<(Waiter, Bytes)>,
    joiners: VecDeque<Waiter>,
}

impl QueueState {
    fn full(&self) -> bool {
        self.maxsize != 0 && self.items.len() as u64 >= self.maxsize
    }
}

#[derive(Debug, Clone, Default)]
struct SemState {
    value: u64,
    /// A bounded semaphore's starting value, past which a release is an error.
    max: Option<u64>,
    /// Slots each client holds (given back if it dies).
    holders: HashMap<ClientId, u64>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Default)]
struct EventState {
    set: bool,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Default)]
struct LockState {
    reentrant: bool,
    /// The holder: its client and its thread there, and how many times it holds it.
    owner: Option<(ClientId, u64, u32)>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone)]
struct Waiter {
    client: ClientId,
    thread: u64,
    request: u64,
    deadline: Option<Instant>,
    /// For a lock's waiter: how many times it holds the lock once granted (a condition's waiter
    /// takes back the count it had), and the answer then (`false`: its condition wait timed out).
    count: u32,
    notified: bool,
}

impl Waiter {
    /// A parked call of `client`'s `thread`, answered by request id `request`; it holds a lock
    /// once when granted, and is answered `true` unless a timeout says otherwise.
    fn new(client: ClientId, thread: u64, request: u64, deadline: Option<Instant>) -> Self {
        Waiter {
            client,
            thread,
            request,
            deadline,
            count: 1,
            notified: true,
        }
    }
}

/// When a wait of `timeout_us` started now ends (`None`: never, or too far off to say).
fn deadline_in(timeout_us: Option<u64>) -> Option<Instant> {
    timeout_us.and_then(|us| Instant::now().checked_add(Duration::from_micros(us)))
}

/// Answers to deliver once the state's lock is released.
type Outbox = Vec<(Arc<Mailbox>, Response)>;

/// Queues `result` as the answer to waiter `w`, if its client is still connected (`false` if not:
/// a departed client's waits are dropped unanswered).
fn answer(
    clients: &HashMap<ClientId, Client>,
    w: &Waiter,
    result: Result<Reply, RemoteError>,
    out: &mut Outbox,
) -> bool {
    let Some(c) = clients.get(&w.client) else {
        return false;
    };
    out.push((
        c.mailbox.clone(),
        Response {
            id: w.request,
            result,
        },
    ));
    true
}

impl Server {
    /// A server for `listener` (its key, TLS and limits are the server's).
    ///
    /// # Errors
    /// A TCP listener without a key ([`io::ErrorKind::InvalidInput`]): a manager reachable from
    /// the network must require one.
    pub fn new(listener: Listener) -> io::Result<Server> {
        if matches!(listener.address(), crate::Address::Tcp(_)) && !listener.has_authkey() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a manager on TCP needs a key: bind its listener with one",
            ));
        }
        Ok(Server {
            listener,
            shared: Arc::new(Shared::new(FREE_AFTER)),
        })
    }

    /// Serves the types `register` names ([`Registry::register`](super::Registry::register)).
    pub fn serving(mut self, register: impl FnOnce(&mut super::Registry)) -> Server {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            register(&mut shared.registry);
        }
        self
    }

    /// How long an unnamed object nobody holds is kept before it is freed (default 10 s): long
    /// enough for a proxy in transit to another process (which holds nothing on the way) to
    /// arrive and take its hold.
    pub fn free_after(mut self, grace: Duration) -> Server {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.free_after = grace;
        }
        self
    }

    /// Where clients connect.
    pub fn address(&self) -> &crate::Address {
        self.listener.address()
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
            address: self.listener.address().clone(),
        }
    }

    /// Serves until stopped (by a [`Stopper`] or a client's shutdown request). A client that fails
    /// its handshake is dropped and the server goes on; so does the server when it runs out of
    /// descriptors or threads for a new client (that client is refused, the others are served, and
    /// accepting resumes a little later).
    ///
    /// # Errors
    /// The timer thread could not start, or the listener failed for a reason other than a
    /// shortage.
    pub fn serve(self) -> io::Result<()> {
        let timer = {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("manager-timer".into())
                .spawn(move || shared.run_timer())?
        };
        // Only a server with types of its own runs served calls, and needs the watchdog.
        let watchdog = if self.shared.registry.is_empty() {
            None
        } else {
            let shared = self.shared.clone();
            let address = self.listener.address().clone();
            Some(
                std::thread::Builder::new()
                    .name("manager-watchdog".into())
                    .spawn(move || shared.run_watchdog(&address))?,
            )
        };
        let mut threads = Vec::new();
        let result = loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                break Ok(());
            }
            match self.listener.accept_timeout(Duration::from_millis(200)) {
                Ok(conn) => {
                    if self.shared.stopping.load(Ordering::Acquire) {
                        break Ok(());
                    }
                    let conn = Arc::new(conn);
                    let (id, mailbox) = self.shared.join(conn.clone(), self.listener.address());
                    crate::trace::event!(info, "manager: client {id} connected");
                    let shared = self.shared.clone();
                    let address = self.listener.address().clone();
                    let watched = watchdog.is_some().then(|| shared.watch_reader(id, &conn));
                    let reader = std::thread::Builder::new()
                        .name(format!("manager-client-{id}"))
                        .spawn(move || shared.serve_client(id, conn, &address, watched.as_deref()));
                    let writer = {
                        let mailbox = mailbox.clone();
                        std::thread::Builder::new()
                            .name(format!("manager-mail-{id}"))
                            .spawn(move || mailbox.run())
                    };
                    match (reader, writer) {
                        (Ok(r), Ok(w)) => threads.extend([r, w]),
                        (r, w) => {
                            // Out of threads: this client is refused, the others go on.
                            crate::trace::event!(warn, "manager: no thread for client {id}");
                            mailbox.close();
                            mailbox.conn.shutdown();
                            if r.is_err() {
                                self.shared.handoff.lock().retain(|x| x.id != id);
                                send_all(self.shared.leave(id), None);
                            }
                            threads.extend(r.ok().into_iter().chain(w.ok()));
                        }
                    }
                    threads.retain(|t| !t.is_finished());
                }
                Err(crate::AcceptError::Timeout) => {}
                Err(e) if e.is_per_client() => {
                    crate::trace::event!(debug, "manager: {e}");
                }
                Err(crate::AcceptError::Io(e)) if is_shortage(&e) => {
                    // Out of descriptors or memory: serve the clients there are, and try again
                    // a little later (the waiting client stays in the kernel's backlog).
                    crate::trace::event!(warn, "manager: cannot accept now: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(crate::AcceptError::Io(e)) => break Err(e),
                Err(e) => break Err(io::Error::other(e.to_string())),
            }
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.timer.notify_all();
        // End every client's connection: their threads see the end and leave.
        for client in self.shared.lock().clients.values() {
            client.conn.shutdown();
        }
        if let Some(w) = watchdog {
            drop(self.shared.handoff.lock());
            self.shared.handoff.wake.notify_all();
            let _ = w.join();
        }
        let helpers = std::mem::take(
            &mut *self
                .shared
                .handoff
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for t in threads.into_iter().chain(helpers) {
            let _ = t.join();
        }
        let _ = timer.join();
        result
    }
}

/// Out of descriptors, threads or memory: a shortage to wait out, not a broken listener.
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    ) || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Delivers answers: those for `me` (the client whose thread this is) written now, unless its
/// mailbox holds earlier ones; every other client's through its mailbox.
fn send_all(outbox: Outbox, me: Option<&Arc<Mailbox>>) {
    for (mailbox, response) in outbox {
        let mine = me.is_some_and(|m| Arc::ptr_eq(m, &mailbox));
        if mine && mailbox.lock().0.is_empty() {
            // A client that is gone is cleaned up by its own thread.
            let _ = mailbox.conn.send(&response);
        } else {
            mailbox.put(response);
        }
    }
}

impl Shared {
    fn new(free_after: Duration) -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            timer: Condvar::new(),
            stopping: AtomicBool::new(false),
            free_after,
            registry: super::Registry::default(),
            handoff: Handoff::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&self, address: &crate::Address) {
        self.stopping.store(true, Ordering::Release);
        self.timer.notify_all();
        // Wake the accept loop at once (it also looks every 200 ms).
        let _ = crate::Client::builder(address)
            .timeout(Duration::from_millis(200))
            .connect();
    }

    fn join(&self, conn: Arc<Connection>, address: &crate::Address) -> (ClientId, Arc<Mailbox>) {
        let peer = match address {
            crate::Address::Tcp(_) => crate::sys::net::tcp_peer_addr(conn.as_fd())
                .map_or_else(|_| "an unknown TCP peer".into(), |a| a.to_string()),
            _ => "a local process".into(),
        };
        let mailbox = Arc::new(Mailbox {
            conn: conn.clone(),
            queue: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        });
        let mut st = self.lock();
        st.next_client += 1;
        let id = st.next_client;
        st.clients.insert(
            id,
            Client {
                conn,
                mailbox: mailbox.clone(),
                peer,
                holds: HashMap::new(),
                requests: 0,
            },
        );
        (id, mailbox)
    }

    /// A reader the watchdog looks after, for client `id`.
    fn watch_reader(&self, id: ClientId, conn: &Arc<Connection>) -> Arc<Reader> {
        let r = Arc::new(Reader {
            id,
            conn: conn.clone(),
            call: AtomicU64::new(0),
            since_us: AtomicU64::new(0),
            epoch: Instant::now(),
            helped: AtomicU64::new(0),
            stuck: AtomicUsize::new(0),
        });
        self.handoff.lock().push(r.clone());
        r
    }

    /// The watchdog: starts a fresh reader for a connection whose reader is stuck in a served
    /// call (see the module notes); sleeps while no served call runs.
    fn run_watchdog(self: &Arc<Self>, address: &crate::Address) {
        let mut quiet = 0;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let mut busy = false;
            for r in self.handoff.lock().iter() {
                busy |= r.in_call();
                let Some(seq) = r.slow_call() else {
                    continue;
                };
                if r.stuck.load(Ordering::Relaxed) >= MAX_STUCK_PER_CLIENT
                    || r.helped.swap(seq, Ordering::Relaxed) == seq
                {
                    continue;
                }
                // Counted before the fresh reader runs: the old one may finish (and count itself
                // out) before the new one could count itself in.
                r.stuck.fetch_add(1, Ordering::Relaxed);
                let (shared, r2, address) = (self.clone(), r.clone(), address.clone());
                let fresh = std::thread::Builder::new()
                    .name(format!("manager-client-{}", r.id))
                    .spawn(move || {
                        if r2.take(seq) {
                            crate::trace::event!(
                                debug,
                                "manager: client {}'s served call runs long: a fresh reader",
                                r2.id
                            );
                            shared.serve_client(r2.id, r2.conn.clone(), &address, Some(&r2));
                        } else {
                            // The call ended first: nobody is stuck.
                            r2.stuck.fetch_sub(1, Ordering::Relaxed);
                        }
                    });
                let mut threads = self
                    .handoff
                    .threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                threads.retain(|t| !t.is_finished());
                match fresh {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        r.stuck.fetch_sub(1, Ordering::Relaxed);
                        crate::trace::event!(warn, "manager: no fresh reader: {e}");
                    }
                }
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet < HANDOFF_QUIET_LOOKS {
                std::thread::sleep(HANDOFF_AFTER / 2);
                continue;
            }
            // No served call for a while: sleep until one starts (or the server stops).
            let mut readers = self.handoff.lock();
            self.handoff.parked.store(true, Ordering::SeqCst);
            while self.handoff.parked.load(Ordering::SeqCst)
                && !self.stopping.load(Ordering::Acquire)
                && !readers.iter().any(|r| r.in_call())
            {
                readers = self
                    .handoff
                    .wake
                    .wait(readers)
                    .unwrap_or_else(|p| p.into_inner());
            }
            self.handoff.parked.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }

    fn serve_client(
        &self,
        id: ClientId,
        conn: Arc<Connection>,
        address: &crate::Address,
        reader: Option<&Reader>,
    ) {
        let mailbox = self.lock().clients.get(&id).map(|c| c.mailbox.clone());
        loop {
            let request: Request = match conn.recv() {
                Ok(r) => r,
                Err(crate::RecvError::Decode(why)) => {
                    // The frame was whole but not a request: this client speaks something else.
                    crate::trace::event!(debug, "manager: a request that does not decode: {why}");
                    let _ = conn.send(&Response {
                        id: 0,
                        result: Err(RemoteError::Protocol(format!(
                            "a request that does not decode: {why}"
                        ))),
                    });
                    break;
                }
                Err(_) => break,
            };
            if matches!(request.op, Op::Shutdown) {
                let _ = conn.send(&Response {
                    id: request.id,
                    result: Ok(Reply::Unit),
                });
                self.stop(address);
                break;
            }
            let outbox = match request.op {
                Op::Call {
                    object,
                    call: Call::Served(ref bytes),
                } => {
                    let seq = reader.map(|r| self.handoff.begin(r));
                    let out = self.served_call(id, request.id, object, bytes);
                    if let (Some(r), Some(seq)) = (reader, seq)
                        && !r.take(seq)
                    {
                        // A fresh reader took the connection while this call ran: it goes on
                        // reading (and cleans up when the client leaves); this thread answers
                        // and ends.
                        send_all(out, mailbox.as_ref());
                        r.stuck.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    out
                }
                _ => self.handle(id, request),
            };
            send_all(outbox, mailbox.as_ref());
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
        }
        self.handoff.lock().retain(|r| r.id != id);
        let outbox = self.leave(id);
        send_all(outbox, None);
        if let Some(m) = mailbox {
            m.close();
        }
        crate::trace::event!(info, "manager: client {id} left");
    }

    /// A call of a served object: looked up under the server's lock, run under the object's own.
    fn served_call(
        &self,
        client: ClientId,
        request: u64,
        object: ObjectId,
        bytes: &[u8],
    ) -> Outbox {
        let (mailbox, target) = {
            let mut st = self.lock();
            let Some(c) = st.clients.get_mut(&client) else {
                return Outbox::new();
            };
            c.requests += 1;
            let mailbox = c.mailbox.clone();
            let target = match st.objects.get(&object) {
                Some(Entry {
                    data: Data::Served(s),
                    ..
                }) => Ok(s.clone()),
                Some(e) => Err(wrong_kind(object, e.kind, "served object")),
                None => Err(RemoteError::NoSuchObject(object)),
            };
            (mailbox, target)
        };
        // (The object is let go of before the lock is taken again: if it was freed meanwhile, its
        // `Drop` runs here, outside the lock.)
        let (result, ran) = match target {
            Ok(s) => s.call(bytes),
            Err(e) => (Err(e), false),
        };
        let mut out = vec![(
            mailbox,
            Response {
                id: request,
                result: result.map(Reply::Bytes),
            },
        )];
        // Its version moves with every call that ran its method (what the method changed is the
        // type's own business); a request that did not decode changed nothing.
        if ran {
            let mut st = self.lock();
            if let Some(e) = st.objects.get_mut(&object) {
                e.version += 1;
            }
            wake_watchers(&mut st, &mut out);
        }
        out
    }

    /// A client is gone: its locks are released, its parked calls dropped, its holds let go.
    fn leave(&self, id: ClientId) -> Outbox {
        let mut out = Outbox::new();
        let mut st = self.lock();
        let Some(client) = st.clients.remove(&id) else {
            return out;
        };
        let st = &mut *st;
        for (&object, entry) in st.objects.iter_mut() {
            match &mut entry.data {
                Data::Semaphore(sem) => {
                    sem.waiters.retain(|w| w.client != id);
                    if let Some(n) = sem.holders.remove(&id) {
                        crate::trace::event!(
                            info,
                            "manager: {n} slot(s) of semaphore {object} given back: client {id} is gone"
                        );
                        for _ in 0..n {
                            sem_give(sem, &st.clients, &mut out);
                        }
                        entry.version += 1;
                    }
                }
                Data::Event(ev) => ev.waiters.retain(|w| w.client != id),
                Data::Condition(c) => c.waiters.retain(|w| w.client != id),
                // A party that died waiting: the others would wait forever.
                Data::Barrier(b) if b.waiting.iter().any(|w| w.client == id) => {
                    b.waiting.retain(|w| w.client != id);
                    break_barrier(b, &st.clients, &mut out);
                    entry.version += 1;
                }
                Data::Queue(q) => {
                    q.getters.retain(|w| w.client != id);
                    q.putters.retain(|(w, _)| w.client != id);
                    q.joiners.retain(|w| w.client != id);
                }
                _ => {}
            }
            if let Some(lock) = entry.data.lock_mut() {
                lock.waiters.retain(|w| w.client != id);
                if lock.owner.is_some_and(|(c, _, _)| c == id) {
                    crate::trace::event!(
                        info,
                        "manager: lock {object} released: its holder, client {id}, is gone"
                    );
                    lock.owner = None;
                    entry.version += 1;
                    grant(lock, &st.clients, &mut out);
                }
            }
        }
        for (object, n) in client.holds {
            release(st, object, n, self.free_after);
        }
        for list in st.watchers.values_mut() {
            list.retain(|(w, _)| w.client != id);
        }
        st.watchers.retain(|_, list| !list.is_empty());
        wake_watchers(st, &mut out);
        self.timer.notify_all();
        client.mailbox.close();
        out
    }

    fn handle(&self, client: ClientId, request: Request) -> Outbox {
        let mut out = Outbox::new();
        // A type's own `new` may be slow: it runs before the server's lock is taken.
        let mut made = match &request.op {
            Op::CreateServed { type_name, init } => Some(self.registry.make(type_name, init)),
            _ => None,
        };
        let mut st = self.lock();
        let st = &mut *st;
        let Some(c) = st.clients.get_mut(&client) else {
            return out;
        };
        c.requests += 1;
        let conn = c.mailbox.clone();
        let id = request.id;
        let result = match request.op {
            Op::Create {
                kind,
                name,
                existing,
                init,
                items,
            } => create(st, client, kind, name, existing, (init, items)),
            Op::CreateServed { .. } => match made.take() {
                Some(Ok(object)) => {
                    Ok(insert(st, client, Kind::Served, None, Data::Served(object)))
                }
                Some(Err(e)) => Err(e),
                None => Err(RemoteError::Protocol("a served object not made".into())),
            },
            Op::Lookup { name } => lookup(st, client, &name),
            Op::Attach { object, expect } => match st.objects.get(&object) {
                Some(e) if fits(e, &expect) => {
                    let kind = e.kind;
                    hold(st, client, object);
                    Ok(Reply::Object { id: object, kind })
                }
                Some(e) => Err(RemoteError::WrongKind {
                    object,
                    kind: match &e.data {
                        Data::Served(s) => format!("Served({})", s.type_name()),
                        _ => format!("{:?}", e.kind),
                    },
                    wanted: format!("{expect:?}"),
                }),
                None => Err(RemoteError::NoSuchObject(object)),
            },
            Op::Release { object } => {
                if let Some(c) = st.clients.get_mut(&client)
                    && let Some(n) = c.holds.get_mut(&object)
                {
                    *n -= 1;
                    if *n == 0 {
                        c.holds.remove(&object);
                    }
                    release(st, object, 1, self.free_after);
                    // It may have a new deadline to keep.
                    self.timer.notify_all();
                }
                // Fire and forget: no answer.
                return out;
            }
            Op::Call {
                object,
                call: Call::LockAcquire { timeout_us, thread },
            } => match acquire(st, client, thread, id, object, timeout_us) {
                // Parked: answered later.
                Ok(None) => {
                    self.timer.notify_all();
                    return out;
                }
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            },
            Op::Call {
                object,
                call: Call::LockRelease { thread },
            } => release_lock(st, client, thread, object, &mut out),
            Op::Call {
                object,
                call: Call::CondWait { timeout_us, thread },
            } => match cond_wait(st, client, thread, id, object, timeout_us, &mut out) {
                Ok(()) => {
                    self.timer.notify_all();
                    wake_watchers(st, &mut out);
                    return out;
                }
                Err(e) => Err(e),
            },
            Op::Call {
                object,
                call: Call::CondNotify { n, thread },
            } => cond_notify(st, client, thread, object, n),
            Op::Call {
                object,
                call:
                    call @ (Call::SemAcquire { .. }
                    | Call::SemRelease
                    | Call::EventSet
                    | Call::EventWait { .. }
                    | Call::QueuePut { .. }
                    | Call::QueueGet { .. }
                    | Call::QueueTaskDone
                    | Call::QueueJoin { .. }
                    | Call::BarrierWait { .. }
                    | Call::BarrierAbort
                    | Call::BarrierReset),
            } => match wait_call(st, client, id, object, call, &mut out) {
                Ok(None) => {
                    self.timer.notify_all();
                    return out;
                }
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            },
            Op::Call {
                object,
                call: Call::Watch { since, timeout_us },
            } => match st.objects.get(&object).map(|e| e.version) {
                None => Err(RemoteError::NoSuchObject(object)),
                Some(v) if v > since => Ok(Reply::Version(v)),
                Some(_) if timeout_us == Some(0) => Ok(Reply::Bool(false)),
                Some(_) => {
                    let deadline = deadline_in(timeout_us);
                    let waiter = Waiter::new(client, 0, id, deadline);
                    st.watchers.entry(object).or_default().push((waiter, since));
                    if let Some(d) = deadline {
                        st.timers.push(Reverse((d, object)));
                        self.timer.notify_all();
                    }
                    return out;
                }
            },
            Op::Call { object, call } => call_one(st, object, call),
            Op::Batch {
                calls,
                atomic,
                expect,
            } => batch(st, calls, atomic, expect),
            Op::Status => Ok(Reply::Status(status(st))),
            Op::Shutdown => Ok(Reply::Unit),
            Op::Hello => Ok(Reply::Values(super::proto::Values::Crate)),
        };
        wake_watchers(st, &mut out);
        out.push((conn, Response { id, result }));
        out
    }

    /// Answers parked calls whose deadline passed, and frees unheld objects whose grace ended:
    /// only the objects the deadline heap names.
    fn run_timer(&self) {
        let mut st = self.lock();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            let mut out = Outbox::new();
            let mut freed = Vec::new();
            let mut expired = false;
            while let Some(&Reverse((at, object))) = st.timers.peek() {
                if at > now {
                    break;
                }
                st.timers.pop();
                freed.extend(self.expire(&mut st, object, now, &mut out));
                expired = true;
            }
            if expired {
                // A barrier broken by a timeout moved its version.
                wake_watchers(&mut st, &mut out);
            }
            if !out.is_empty() || !freed.is_empty() {
                drop(st);
                send_all(out, None);
                // A served object's own `Drop` runs here, outside the lock.
                drop(freed);
                st = self.lock();
                continue;
            }
            st = match st.timers.peek().map(|Reverse((at, _))| *at) {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.timer
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.timer.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// What came due on `object` at `now`; the object, if its grace ended and it is freed (to be
    /// dropped once the lock is let go of).
    fn expire(
        &self,
        st: &mut State,
        object: ObjectId,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<Entry> {
        let State {
            objects,
            clients,
            watchers,
            ..
        } = st;
        // Watches of this object: those past their deadline, or all if it is gone.
        if let Some(list) = watchers.get_mut(&object) {
            let gone = objects
                .get(&object)
                .is_none_or(|e| e.unheld.is_some_and(|since| since + self.free_after <= now));
            list.retain(|(w, _)| {
                let result = if gone {
                    Err(RemoteError::NoSuchObject(object))
                } else if w.deadline.is_some_and(|d| d <= now) {
                    Ok(Reply::Bool(false))
                } else {
                    return true;
                };
                answer(clients, w, result, out);
                false
            });
            if list.is_empty() {
                watchers.remove(&object);
            }
        }
        let entry = objects.get_mut(&object)?;
        if entry
            .unheld
            .is_some_and(|since| since + self.free_after <= now)
        {
            return objects.remove(&object);
        }
        if let Data::Condition(cond) = &mut entry.data {
            // A wait that timed out takes its lock back (with no deadline), then answers false.
            let mut late = Vec::new();
            cond.waiters.retain(|w| {
                if w.deadline.is_some_and(|d| d <= now) {
                    late.push(w.clone());
                    false
                } else {
                    true
                }
            });
            for mut w in late {
                w.deadline = None;
                w.notified = false;
                cond.lock.waiters.push_back(w);
            }
            grant(&mut cond.lock, clients, out);
        }
        let due = |w: &Waiter| w.deadline.is_some_and(|d| d <= now);
        // Answers the waiters of `list` whose deadline passed, with `result`.
        let time_out = |list: &mut VecDeque<Waiter>, out: &mut Outbox, result: fn() -> _| {
            list.retain(|w| {
                if !due(w) {
                    return true;
                }
                answer(clients, w, result(), out);
                false
            });
        };
        let timed_out = || Ok(Reply::Bool(false));
        match &mut entry.data {
            Data::Lock(l) => time_out(&mut l.waiters, out, timed_out),
            Data::Condition(c) => time_out(&mut c.lock.waiters, out, timed_out),
            Data::Semaphore(s) => time_out(&mut s.waiters, out, timed_out),
            Data::Event(e) => time_out(&mut e.waiters, out, timed_out),
            Data::Barrier(b) if b.waiting.iter().any(due) => {
                break_barrier(b, clients, out);
                entry.version += 1;
            }
            Data::Queue(q) => {
                time_out(&mut q.getters, out, || Err(RemoteError::Empty));
                q.putters.retain(|(w, _)| {
                    if !due(w) {
                        return true;
                    }
                    answer(clients, w, Err(RemoteError::Full), out);
                    false
                });
                time_out(&mut q.joiners, out, timed_out);
            }
            _ => {}
        }
        None
    }
}

/// Answers the watches whose object moved past their version (a look at each watched object: free
/// when nothing is watched).
fn wake_watchers(st: &mut State, out: &mut Outbox) {
    if st.watchers.is_empty() {
        return;
    }
    let State {
        objects,
        clients,
        watchers,
        ..
    } = st;
    watchers.retain(|object, list| {
        let Some(version) = objects.get(object).map(|e| e.version) else {
            return true; // the timer answers watches of a freed object
        };
        list.retain(|(w, since)| {
            if version <= *since {
                return true;
            }
            answer(clients, w, Ok(Reply::Version(version)), out);
            false
        });
        !list.is_empty()
    });
}

/// Hands a free lock to its first waiter (answering its parked acquire).
fn grant(lock: &mut LockState, clients: &HashMap<ClientId, Client>, out: &mut Outbox) {
    while lock.owner.is_none()
        && let Some(w) = lock.waiters.pop_front()
    {
        if answer(clients, &w, Ok(Reply::Bool(w.notified)), out) {
            lock.owner = Some((w.client, w.thread, w.count));
        }
    }
}

/// Lets go of `n` holds on `object`; an unnamed object nobody holds is freed `grace` later
/// (unless someone takes a hold meanwhile).
fn release(st: &mut State, object: ObjectId, n: u64, grace: Duration) {
    let Some(entry) = st.objects.get_mut(&object) else {
        return;
    };
    entry.holds = entry.holds.saturating_sub(n);
    if entry.holds == 0 && entry.name.is_none() && entry.unheld.is_none() {
        let now = Instant::now();
        entry.unheld = Some(now);
        st.timers.push(Reverse((now + grace, object)));
    }
}

/// Whether `entry` is what a proxy attaching as `expect` is a proxy of.
fn fits(entry: &Entry, expect: &Expect) -> bool {
    match (expect, &entry.data) {
        (Expect::Served(name), Data::Served(s)) => s.type_name() == name,
        (Expect::Served(_), _) => false,
        (Expect::Any, _) => true,
        // A condition's lock, handed out as a `Lock`.
        (Expect::Lock, Data::Condition(_)) => true,
        (expect, _) => {
            *expect
                == match entry.kind {
                    Kind::Dict => Expect::Dict,
                    Kind::List => Expect::List,
                    Kind::Namespace => Expect::Namespace,
                    Kind::Value => Expect::Value,
                    Kind::Lock { .. } => Expect::Lock,
                    Kind::Semaphore { .. } => Expect::Semaphore,
                    Kind::Event => Expect::Event,
                    Kind::Condition => Expect::Condition,
                    Kind::Array => Expect::Array,
                    Kind::Barrier { .. } => Expect::Barrier,
                    Kind::Served => return false,
                    Kind::Queue { .. } => Expect::Queue,
                }
        }
    }
}

fn hold(st: &mut State, client: ClientId, object: ObjectId) {
    if let Some(c) = st.clients.get_mut(&client) {
        *c.holds.entry(object).or_default() += 1;
    }
    if let Some(e) = st.objects.get_mut(&object) {
        e.holds += 1;
        e.unheld = None;
    }
}

fn create(
    st: &mut State,
    client: ClientId,
    kind: Kind,
    name: Option<String>,
    existing: bool,
    (init, items): (Option<Bytes>, Vec<Bytes>),
) -> Result<Reply, RemoteError> {
    if kind == (Kind::Barrier { parties: 0 }) {
        return Err(RemoteError::NoParties);
    }
    if let Some(n) = &name
        && let Some(&id) = st.names.get(n)
    {
        let found = st.objects.get(&id).map(|e| e.kind);
        return match found {
            Some(k) if existing && k == kind => {
                hold(st, client, id);
                Ok(Reply::Object { id, kind })
            }
            Some(k) if existing => Err(RemoteError::WrongKind {
                object: id,
                kind: format!("{k:?}"),
                wanted: format!("{kind:?}"),
            }),
            _ => Err(RemoteError::NameTaken(n.clone())),
        };
    }
    let data = match kind {
        Kind::Dict => Data::Dict(IndexMap::new()),
        Kind::List => Data::List(Vec::new()),
        Kind::Array => Data::List(items),
        Kind::Served => {
            return Err(RemoteError::Unsupported(
                "a served object is made by its type (CreateServed)".into(),
            ));
        }
        Kind::Barrier { parties } => Data::Barrier(BarrierState {
            parties,
            ..BarrierState::default()
        }),
        Kind::Namespace => Data::Namespace(BTreeMap::new()),
        Kind::Value => Data::Value(init.unwrap_or_default()),
        Kind::Lock { reentrant } => Data::Lock(LockState {
            reentrant,
            ..LockState::default()
        }),
        Kind::Semaphore { value, bounded } => Data::Semaphore(SemState {
            value,
            max: bounded.then_some(value),
            ..SemState::default()
        }),
        Kind::Event => Data::Event(EventState::default()),
        Kind::Condition => Data::Condition(CondState {
            lock: LockState {
                reentrant: true,
                ..LockState::default()
            },
            waiters: VecDeque::new(),
        }),
        Kind::Queue { maxsize } => Data::Queue(QueueState {
            maxsize,
            ..QueueState::default()
        }),
    };
    Ok(insert(st, client, kind, name, data))
}

/// A new object, held once by `client`.
fn insert(st: &mut State, client: ClientId, kind: Kind, name: Option<String>, data: Data) -> Reply {
    st.next_object += 1;
    let id = st.next_object;
    if let Some(n) = &name {
        st.names.insert(n.clone(), id);
    }
    st.objects.insert(
        id,
        Entry {
            kind,
            name,
            holds: 0,
            unheld: None,
            version: 0,
            data,
        },
    );
    hold(st, client, id);
    Reply::Object { id, kind }
}

fn lookup(st: &mut State, client: ClientId, name: &str) -> Result<Reply, RemoteError> {
    let id = *st
        .names
        .get(name)
        .ok_or_else(|| RemoteError::NoSuchName(name.to_string()))?;
    let kind = st
        .objects
        .get(&id)
        .map(|e| e.kind)
        .ok_or(RemoteError::NoSuchObject(id))?;
    hold(st, client, id);
    Ok(Reply::Object { id, kind })
}

fn acquire(
    st: &mut State,
    client: ClientId,
    thread: u64,
    request: u64,
    object: ObjectId,
    timeout: Option<u64>,
) -> Result<Option<Reply>, RemoteError> {
    let entry = st
        .objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    let kind = entry.kind;
    let Some(lock) = entry.data.lock_mut() else {
        return Err(wrong_kind(object, kind, "Lock"));
    };
    match &mut lock.owner {
        None => {
            lock.owner = Some((client, thread, 1));
            entry.version += 1;
            return Ok(Some(Reply::Bool(true)));
        }
        Some((c, t, n)) if lock.reentrant && *c == client && *t == thread => {
            *n += 1;
            return Ok(Some(Reply::Bool(true)));
        }
        Some(_) => {}
    }
    if timeout == Some(0) {
        return Ok(Some(Reply::Bool(false)));
    }
    let w = Waiter::new(client, thread, request, deadline_in(timeout));
    park_waiter(&mut lock.waiters, &mut st.timers, object, w);
    Ok(None)
}

fn release_lock(
    st: &mut State,
    client: ClientId,
    thread: u64,
    object: ObjectId,
    out: &mut Outbox,
) -> Result<Reply, RemoteError> {
    let clients = &st.clients;
    let entry = st
        .objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    let kind = entry.kind;
    let Some(lock) = entry.data.lock_mut() else {
        return Err(wrong_kind(object, kind, "Lock"));
    };
    match &mut lock.owner {
        None => return Err(RemoteError::NotHeld),
        // An RLock is released only by its holder; a Lock by anyone (as in Python).
        Some((c, t, _)) if lock.reentrant && (*c != client || *t != thread) => {
            return Err(RemoteError::NotHeld);
        }
        Some((_, _, n)) if *n > 1 => {
            *n -= 1;
            return Ok(Reply::Unit);
        }
        Some(_) => lock.owner = None,
    }
    entry.version += 1;
    grant(lock, clients, out);
    Ok(Reply::Unit)
}

/// Gives one slot of `sem` back: to its first waiter (whose acquire is answered), or to its value.
fn sem_give(sem: &mut SemState, clients: &HashMap<ClientId, Client>, out: &mut Outbox) {
    while let Some(w) = sem.waiters.pop_front() {
        if answer(clients, &w, Ok(Reply::Bool(true)), out) {
            *sem.holders.entry(w.client).or_default() += 1;
            return;
        }
    }
    sem.value += 1;
}

/// Parks a waiting call (of no particular thread) on `waiters`, with its deadline on the timer
/// heap.
fn park(
    waiters: &mut VecDeque<Waiter>,
    timers: &mut BinaryHeap<Reverse<(Instant, ObjectId)>>,
    (client, request, object): (ClientId, u64, ObjectId),
    timeout_us: Option<u64>,
) {
    let w = Waiter::new(client, 0, request, deadline_in(timeout_us));
    park_waiter(waiters, timers, object, w);
}

/// Parks `w` on `waiters` (a call waiting on `object`), with its deadline on the timer heap.
fn park_waiter(
    waiters: &mut VecDeque<Waiter>,
    timers: &mut BinaryHeap<Reverse<(Instant, ObjectId)>>,
    object: ObjectId,
    w: Waiter,
) {
    if let Some(d) = w.deadline {
        timers.push(Reverse((d, object)));
    }
    waiters.push_back(w);
}

/// A condition wait: the caller's thread must hold the lock; it lets go of it entirely (the next
/// lock waiter gets it) and waits for a notify, parked (answered when it has the lock back).
fn cond_wait(
    st: &mut State,
    client: ClientId,
    thread: u64,
    request: u64,
    object: ObjectId,
    timeout_us: Option<u64>,
    out: &mut Outbox,
) -> Result<(), RemoteError> {
    let State {
        objects,
        clients,
        timers,
        ..
    } = st;
    let entry = objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    let kind = entry.kind;
    let Data::Condition(cond) = &mut entry.data else {
        return Err(wrong_kind(object, kind, "Condition"));
    };
    let count = match cond.lock.owner {
        Some((c, t, n)) if c == client && t == thread => n,
        _ => return Err(RemoteError::NotHeld),
    };
    cond.lock.owner = None;
    entry.version += 1;
    let w = Waiter {
        count,
        ..Waiter::new(client, thread, request, deadline_in(timeout_us))
    };
    park_waiter(&mut cond.waiters, timers, object, w);
    grant(&mut cond.lock, clients, out);
    Ok(())
}

/// Wakes at most `n` waiters of a condition (the caller's thread must hold its lock): each queues
/// for the lock, to get it back once the caller lets go.
fn cond_notify(
    st: &mut State,
    client: ClientId,
    thread: u64,
    object: ObjectId,
    n: u64,
) -> Result<Reply, RemoteError> {
    let entry = st
        .objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    let kind = entry.kind;
    let Data::Condition(cond) = &mut entry.data else {
        return Err(wrong_kind(object, kind, "Condition"));
    };
    if !matches!(cond.lock.owner, Some((c, t, _)) if c == client && t == thread) {
        return Err(RemoteError::NotHeld);
    }
    for _ in 0..n.min(cond.waiters.len() as u64) {
        if let Some(mut w) = cond.waiters.pop_front() {
            w.deadline = None;
            cond.lock.waiters.push_back(w);
        }
    }
    Ok(Reply::Unit)
}

/// Breaks a barrier: every waiting party's wait fails, and every later one.
fn break_barrier(b: &mut BarrierState, clients: &HashMap<ClientId, Client>, out: &mut Outbox) {
    b.broken = true;
    for w in b.waiting.drain(..) {
        answer(clients, &w, Err(RemoteError::BrokenBarrier), out);
    }
}

/// The semaphore and event calls that wait or wake: an answer now, or `None` when parked.
fn wait_call(
    st: &mut State,
    client: ClientId,
    request: u64,
    object: ObjectId,
    call: Call,
    out: &mut Outbox,
) -> Result<Option<Reply>, RemoteError> {
    let State {
        objects,
        clients,
        timers,
        ..
    } = st;
    let entry = objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    let kind = entry.kind;
    let who = (client, request, object);
    match (&mut entry.data, call) {
        (Data::Semaphore(sem), Call::SemAcquire { timeout_us }) => {
            if sem.value > 0 {
                sem.value -= 1;
                *sem.holders.entry(client).or_default() += 1;
                entry.version += 1;
                return Ok(Some(Reply::Bool(true)));
            }
            if timeout_us == Some(0) {
                return Ok(Some(Reply::Bool(false)));
            }
            park(&mut sem.waiters, timers, who, timeout_us);
            Ok(None)
        }
        (Data::Semaphore(sem), Call::SemRelease) => {
            if sem.max.is_some_and(|max| sem.value >= max) {
                return Err(RemoteError::TooManyReleases);
            }
            if let Some(n) = sem.holders.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    sem.holders.remove(&client);
                }
            }
            sem_give(sem, clients, out);
            entry.version += 1;
            Ok(Some(Reply::Unit))
        }
        (Data::Event(ev), Call::EventSet) => {
            if !ev.set {
                ev.set = true;
                entry.version += 1;
            }
            for w in ev.waiters.drain(..) {
                answer(clients, &w, Ok(Reply::Bool(true)), out);
            }
            Ok(Some(Reply::Unit))
        }
        (Data::Event(ev), Call::EventWait { timeout_us }) => {
            if ev.set {
                return Ok(Some(Reply::Bool(true)));
            }
            if timeout_us == Some(0) {
                return Ok(Some(Reply::Bool(false)));
            }
            park(&mut ev.waiters, timers, who, timeout_us);
            Ok(None)
        }
        (Data::Queue(q), Call::QueuePut { item, timeout_us }) => {
            // A waiting get takes it at once; else it goes in if there is room.
            while let Some(w) = q.getters.pop_front() {
                if clients.contains_key(&w.client) {
                    q.unfinished += 1;
                    entry.version += 1;
                    answer(clients, &w, Ok(Reply::Bytes(item)), out);
                    return Ok(Some(Reply::Unit));
                }
            }
            if !q.full() {
                q.items.push_back(item);
                q.unfinished += 1;
                entry.version += 1;
                return Ok(Some(Reply::Unit));
            }
            if timeout_us == Some(0) {
                return Err(RemoteError::Full);
            }
            let deadline = deadline_in(timeout_us);
            q.putters
                .push_back((Waiter::new(client, 0, request, deadline), item));
            if let Some(d) = deadline {
                timers.push(Reverse((d, object)));
            }
            Ok(None)
        }
        (Data::Queue(q), Call::QueueGet { timeout_us }) => {
            if let Some(item) = q.items.pop_front() {
                // Room now: the first waiting put goes in.
                while let Some((w, waiting)) = q.putters.pop_front() {
                    if answer(clients, &w, Ok(Reply::Unit), out) {
                        q.items.push_back(waiting);
                        q.unfinished += 1;
                        break;
                    }
                }
                entry.version += 1;
                return Ok(Some(Reply::Bytes(item)));
            }
            if timeout_us == Some(0) {
                return Err(RemoteError::Empty);
            }
            park(&mut q.getters, timers, who, timeout_us);
            Ok(None)
        }
        (Data::Barrier(b), Call::BarrierWait { timeout_us }) => {
            if b.broken {
                return Err(RemoteError::BrokenBarrier);
            }
            if b.waiting.len() as u64 + 1 >= b.parties {
                // The last party: everyone goes on, each with its own index (0 to parties - 1,
                // in the order they came; the last gets the highest).
                let index = b.waiting.len() as u64;
                for (i, w) in b.waiting.drain(..).enumerate() {
                    answer(clients, &w, Ok(Reply::Len(i as u64)), out);
                }
                entry.version += 1;
                return Ok(Some(Reply::Len(index)));
            }
            if timeout_us == Some(0) {
                break_barrier(b, clients, out);
                entry.version += 1;
                return Err(RemoteError::BrokenBarrier);
            }
            park(&mut b.waiting, timers, who, timeout_us);
            Ok(None)
        }
        (Data::Barrier(b), Call::BarrierAbort) => {
            if !b.broken {
                break_barrier(b, clients, out);
                entry.version += 1;
            }
            Ok(Some(Reply::Unit))
        }
        (Data::Barrier(b), Call::BarrierReset) => {
            // As Python's: parties waiting now fail; the barrier works again for later ones.
            let waiting = !b.waiting.is_empty();
            if waiting {
                break_barrier(b, clients, out);
            }
            if waiting || b.broken {
                b.broken = false;
                entry.version += 1;
            }
            Ok(Some(Reply::Unit))
        }
        (Data::Queue(q), Call::QueueTaskDone) => {
            if q.unfinished == 0 {
                return Err(RemoteError::TooManyTaskDone);
            }
            q.unfinished -= 1;
            if q.unfinished == 0 {
                for w in q.joiners.drain(..) {
                    answer(clients, &w, Ok(Reply::Bool(true)), out);
                }
            }
            Ok(Some(Reply::Unit))
        }
        (Data::Queue(q), Call::QueueJoin { timeout_us }) => {
            if q.unfinished == 0 {
                return Ok(Some(Reply::Bool(true)));
            }
            if timeout_us == Some(0) {
                return Ok(Some(Reply::Bool(false)));
            }
            park(&mut q.joiners, timers, who, timeout_us);
            Ok(None)
        }
        (_, call) => Err(RemoteError::Unsupported(format!(
            "{call:?} on object {object}, a {kind:?}"
        ))),
    }
}

fn wrong_kind(object: ObjectId, kind: Kind, wanted: &str) -> RemoteError {
    RemoteError::WrongKind {
        object,
        kind: format!("{kind:?}"),
        wanted: wanted.to_string(),
    }
}

/// A Python index into a sequence of `len`: negative counts from the end.
fn index(i: i64, len: usize) -> Result<usize, RemoteError> {
    let at = if i < 0 { len as i64 + i } else { i };
    if (0..len as i64).contains(&at) {
        Ok(at as usize)
    } else {
        Err(RemoteError::IndexError {
            index: i,
            len: len as u64,
        })
    }
}

fn call_one(st: &mut State, object: ObjectId, call: Call) -> Result<Reply, RemoteError> {
    let entry = st
        .objects
        .get_mut(&object)
        .ok_or(RemoteError::NoSuchObject(object))?;
    apply(object, entry, call)
}

/// One call on one object's entry.
fn apply(object: ObjectId, entry: &mut Entry, call: Call) -> Result<Reply, RemoteError> {
    let kind = entry.kind;
    let mut changed = false;
    if kind == Kind::Array
        && matches!(
            call,
            Call::Clear
                | Call::ListAppend(_)
                | Call::ListExtend(_)
                | Call::ListInsert(..)
                | Call::ListPop(_)
                | Call::ListRemove(_)
        )
    {
        return Err(RemoteError::Unsupported(format!(
            "an array's length is fixed: {call:?} on object {object}"
        )));
    }
    let reply = match (&mut entry.data, call) {
        (_, Call::Version) => Reply::Version(entry.version),
        (Data::Barrier(b), Call::BarrierState) => Reply::Barrier {
            parties: b.parties,
            waiting: b.waiting.len() as u64,
            broken: b.broken,
        },
        (Data::Dict(d), Call::Len) => Reply::Len(d.len() as u64),
        (Data::List(l), Call::Len) => Reply::Len(l.len() as u64),
        (Data::Namespace(n), Call::Len) => Reply::Len(n.len() as u64),
        (Data::Dict(d), Call::Clear) => {
            changed = !d.is_empty();
            d.clear();
            Reply::Unit
        }
        (Data::List(l), Call::Clear) => {
            changed = !l.is_empty();
            l.clear();
            Reply::Unit
        }
        (Data::Namespace(n), Call::Clear) => {
            changed = !n.is_empty();
            n.clear();
            Reply::Unit
        }
        (Data::Dict(d), Call::Snapshot) => Reply::Snapshot(
            entry.version,
            Box::new(Reply::Raw(raw(d.len(), d.iter().flat_map(|(k, v)| [k, v])))),
        ),
        (Data::List(l), Call::Snapshot) => {
            Reply::Snapshot(entry.version, Box::new(Reply::Raw(raw(l.len(), l.iter()))))
        }
        (Data::Namespace(n), Call::Snapshot) => Reply::Snapshot(
            entry.version,
            Box::new(Reply::Named(
                n.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            )),
        ),
        (Data::Value(v), Call::Snapshot) => {
            Reply::Snapshot(entry.version, Box::new(Reply::Many(vec![v.clone()])))
        }

        (Data::Dict(d), Call::DictGet(k)) => Reply::Maybe(d.get(&k).cloned()),
        (Data::Dict(d), Call::DictSet(k, v)) => {
            d.insert(k, v);
            changed = true;
            Reply::Unit
        }
        (Data::Dict(d), Call::DictSetDefault(k, v)) => {
            let len = d.len();
            let now = d.entry(k).or_insert(v).clone();
            changed = d.len() != len;
            Reply::Bytes(now)
        }
        (Data::Dict(d), Call::DictRemove(k)) => {
            let old = d.shift_remove(&k);
            changed = old.is_some();
            Reply::Maybe(old)
        }
        (Data::Dict(d), Call::DictContains(k)) => Reply::Bool(d.contains_key(&k)),
        (Data::Dict(d), Call::DictKeys) => Reply::Many(d.keys().cloned().collect()),
        (Data::Dict(d), Call::DictValues) => Reply::Many(d.values().cloned().collect()),
        (Data::Dict(d), Call::DictUpdate(kv)) => {
            changed = !kv.is_empty();
            d.extend(kv);
            Reply::Unit
        }

        (Data::List(l), Call::ListAppend(v)) => {
            l.push(v);
            changed = true;
            Reply::Unit
        }
        (Data::List(l), Call::ListExtend(v)) => {
            changed = !v.is_empty();
            l.extend(v);
            Reply::Unit
        }
        (Data::List(l), Call::ListInsert(i, v)) => {
            // Python's insert clamps the index.
            let len = l.len() as i64;
            let at = if i < 0 { (len + i).max(0) } else { i.min(len) };
            l.insert(at as usize, v);
            changed = true;
            Reply::Unit
        }
        (Data::List(l), Call::ListGet(i)) => Reply::Bytes(l[index(i, l.len())?].clone()),
        (Data::List(l), Call::ListSet(i, v)) => {
            let at = index(i, l.len())?;
            l[at] = v;
            changed = true;
            Reply::Unit
        }
        (Data::List(l), Call::ListPop(i)) => {
            let at = index(i.unwrap_or(-1), l.len())?;
            changed = true;
            Reply::Bytes(l.remove(at))
        }
        (Data::List(l), Call::ListRemove(v)) => {
            let at = l
                .iter()
                .position(|x| *x == v)
                .ok_or(RemoteError::NotFound)?;
            l.remove(at);
            changed = true;
            Reply::Unit
        }
        (Data::List(l), Call::ListRange(start, end)) => {
            let end = (end.min(l.len() as u64)) as usize;
            let start = (start as usize).min(end);
            Reply::Many(l[start..end].to_vec())
        }

        (Data::Namespace(n), Call::NsGet(k)) => Reply::Maybe(n.get(&k).cloned()),
        (Data::Namespace(n), Call::NsSet(k, v)) => {
            n.insert(k, v);
            changed = true;
            Reply::Unit
        }
        (Data::Namespace(n), Call::NsRemove(k)) => {
            let old = n.remove(&k);
            changed = old.is_some();
            Reply::Maybe(old)
        }

        (Data::Event(e), Call::EventIsSet) => Reply::Bool(e.set),
        (Data::Event(e), Call::EventClear) => {
            changed = e.set;
            e.set = false;
            Reply::Unit
        }
        (Data::Semaphore(s), Call::Len) => Reply::Len(s.value),
        (Data::Queue(q), Call::Len) => Reply::Len(q.items.len() as u64),
        (Data::Value(v), Call::ValueGet) => Reply::Bytes(v.clone()),
        (Data::Value(v), Call::ValueSet(new)) => {
            *v = new;
            changed = true;
            Reply::Unit
        }
        (Data::Value(v), Call::ValueCompareSet(old, new)) => {
            let same = *v == old;
            if same {
                *v = new;
                changed = true;
            }
            Reply::Bool(same)
        }
        (_, call) => {
            return Err(RemoteError::Unsupported(format!(
                "{call:?} on object {object}, a {kind:?}"
            )));
        }
    };
    if changed {
        entry.version += 1;
    }
    Ok(reply)
}

/// A container's content in the form of [`Reply::Raw`].
fn raw<'a>(count: usize, parts: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut out = (count as u64).to_le_bytes().to_vec();
    for p in parts {
        out.extend((p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

fn batch(
    st: &mut State,
    calls: Vec<(ObjectId, Call)>,
    atomic: bool,
    expect: Vec<(ObjectId, u64)>,
) -> Result<Reply, RemoteError> {
    if calls.iter().any(|(_, c)| !c.goes_in_a_batch()) {
        return Err(RemoteError::Unsupported(
            "locks, semaphores, events and queues cannot be waited on inside a batch".into(),
        ));
    }
    for &(object, expected) in &expect {
        let found = st
            .objects
            .get(&object)
            .ok_or(RemoteError::NoSuchObject(object))?
            .version;
        if found != expected {
            return Err(RemoteError::Conflict {
                object,
                expected,
                found,
            });
        }
    }
    if !atomic {
        return Ok(Reply::Batch(
            calls
                .into_iter()
                .map(|(object, call)| call_one(st, object, call))
                .collect(),
        ));
    }
    // All or nothing: each call runs on the object itself, after noting how to undo it; if one
    // fails, what the earlier ones did is undone, newest first. Undoing the calls a batch can be
    // built of (set, remove, append) costs what they cost; any other call copies its object first.
    let mut undo: Vec<(ObjectId, u64, Undo)> = Vec::with_capacity(calls.len());
    // Objects copied whole already: later calls on them need no undo of their own (the copy,
    // restored last, takes everything back), and no object is copied twice.
    let mut copied: std::collections::HashSet<ObjectId> = std::collections::HashSet::new();
    let mut results = Vec::with_capacity(calls.len());
    for (object, call) in calls {
        let done = match st.objects.get_mut(&object) {
            None => Err(RemoteError::NoSuchObject(object)),
            Some(entry) => {
                let u = if copied.contains(&object) {
                    Undo::Nothing
                } else {
                    undo_for(&entry.data, &call)
                };
                if matches!(u, Undo::Whole(_)) {
                    copied.insert(object);
                }
                let before = (entry.version, u);
                apply(object, entry, call).map(|reply| (reply, before))
            }
        };
        match done {
            Ok((reply, (version, u))) => {
                undo.push((object, version, u));
                results.push(Ok(reply));
            }
            Err(e) => {
                for (object, version, u) in undo.into_iter().rev() {
                    if let Some(entry) = st.objects.get_mut(&object) {
                        u.apply(&mut entry.data);
                        entry.version = version;
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(Reply::Batch(results))
}

/// How to take one call back.
enum Undo {
    Nothing,
    Whole(Data),
    /// The dict's last entry was added: remove it.
    DictPop,
    DictRestore(Bytes, Bytes),
    DictReinsert(usize, Bytes, Bytes),
    ListPop,
    ListSetAt(usize, Bytes),
    ValueRestore(Bytes),
    NsRestore(String, Option<Bytes>),
}

/// What undoes `call` on `data` (looked at before the call runs).
fn undo_for(data: &Data, call: &Call) -> Undo {
    match (data, call) {
        (
            _,
            Call::Len
            | Call::Snapshot
            | Call::Version
            | Call::Watch { .. }
            | Call::DictGet(_)
            | Call::DictContains(_)
            | Call::DictKeys
            | Call::DictValues
            | Call::ListGet(_)
            | Call::ListRange(..)
            | Call::NsGet(_)
            | Call::ValueGet,
        ) => Undo::Nothing,
        (Data::Dict(d), Call::DictSet(k, _)) => match d.get(k) {
            Some(old) => Undo::DictRestore(k.clone(), old.clone()),
            None => Undo::DictPop,
        },
        (Data::Dict(d), Call::DictRemove(k)) => match d.get_full(k) {
            Some((at, k, v)) => Undo::DictReinsert(at, k.clone(), v.clone()),
            None => Undo::Nothing,
        },
        (Data::List(_), Call::ListAppend(_)) => Undo::ListPop,
        (Data::List(l), Call::ListSet(i, _)) => match index(*i, l.len()) {
            Ok(at) => Undo::ListSetAt(at, l[at].clone()),
            Err(_) => Undo::Nothing, // the call fails and changes nothing
        },
        (Data::Value(v), Call::ValueSet(_)) => Undo::ValueRestore(v.clone()),
        (Data::Namespace(n), Call::NsSet(k, _)) => Undo::NsRestore(k.clone(), n.get(k).cloned()),
        (data, _) => Undo::Whole(data.clone()),
    }
}

impl Undo {
    fn apply(self, data: &mut Data) {
        match (self, data) {
            (Undo::Nothing, _) => {}
            (Undo::Whole(old), data) => *data = old,
            (Undo::DictPop, Data::Dict(d)) => {
                d.pop();
            }
            (Undo::DictRestore(k, v), Data::Dict(d)) => {
                d.insert(k, v);
            }
            (Undo::DictReinsert(at, k, v), Data::Dict(d)) => {
                d.shift_insert(at.min(d.len()), k, v);
            }
            (Undo::ListPop, Data::List(l)) => {
                l.pop();
            }
            (Undo::ListSetAt(at, old), Data::List(l)) => {
                if let Some(slot) = l.get_mut(at) {
                    *slot = old;
                }
            }
            (Undo::ValueRestore(old), Data::Value(v)) => *v = old,
            (Undo::NsRestore(k, old), Data::Namespace(n)) => match old {
                Some(v) => {
                    n.insert(k, v);
                }
                None => {
                    n.remove(&k);
                }
            },
            // An undo is only ever made for the kind of data it undoes.
            _ => {}
        }
    }
}

fn status(st: &State) -> Status {
    let mut objects: Vec<ObjectStatus> = st
        .objects
        .iter()
        .map(|(&id, e)| ObjectStatus {
            id,
            kind: e.kind,
            name: e.name.clone(),
            holds: e.holds,
            version: e.version,
            len: match &e.data {
                Data::Dict(d) => d.len() as u64,
                Data::List(l) => l.len() as u64,
                Data::Namespace(n) => n.len() as u64,
                Data::Value(_) => 1,
                Data::Lock(l) => u64::from(l.owner.is_some()),
                Data::Semaphore(s) => s.value,
                Data::Event(e) => u64::from(e.set),
                Data::Queue(q) => q.items.len() as u64,
                Data::Barrier(b) => b.waiting.len() as u64,
                Data::Condition(c) => c.waiters.len() as u64,
                Data::Served(_) => 0,
            },
            served: match &e.data {
                Data::Served(s) => Some(s.type_name().to_string()),
                _ => None,
            },
        })
        .collect();
    objects.sort_by_key(|o| o.id);
    let mut clients: Vec<ClientStatus> = st
        .clients
        .iter()
        .map(|(&id, c)| ClientStatus {
            id,
            peer: c.peer.clone(),
            holds: c.holds.values().sum(),
            requests: c.requests,
        })
        .collect();
    clients.sort_by_key(|c| c.id);
    Status { objects, clients }
}

/// Runs requests decoded from `data` against a fresh server state, as one client: a fuzz entry
/// (see `multiprocess::fuzzing::manager_requests`). `data` is a sequence of chunks, each a 2-byte
/// little-endian length and that many bytes of one encoded request; a chunk that does not decode
/// ends the run, as it ends a client's connection. Answers go to a socket pair's other end, which
/// is drained.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_requests(data: &[u8]) -> usize {
    let Ok((here, there)) = crate::pipe() else {
        return 0;
    };
    let shared = Shared::new(FREE_AFTER);
    let address = crate::Address::Abstract(b"fuzz".to_vec());
    let (id, mailbox) = shared.join(Arc::new(here), &address);
    let mut handled = 0;
    for chunk in super::proto::fuzz_chunks(data) {
        let Ok(request) = crate::codec::decode::<Request>(chunk, Vec::new()) else {
            break;
        };
        if matches!(request.op, Op::Shutdown) {
            break;
        }
        let out = match request.op {
            Op::Call {
                object,
                call: Call::Served(ref bytes),
            } => shared.served_call(id, request.id, object, bytes),
            _ => shared.handle(id, request),
        };
        send_all(out, Some(&mailbox));
        handled += 1;
        while there.try_recv_bytes().is_ok() {}
    }
    send_all(shared.leave(id), None);
    handled
}

#[cfg(test)]
mod tests {
    use super::super::proto::{Bytes, Call, Expect, Kind, Op, Request};
    use crate::queue::fuzzing::manager_requests as fuzz_requests;

    /// A session of well-formed requests in the fuzz entry's format (also the fuzz corpus's seed:
    /// with `MP_WRITE_FUZZ_SEEDS=dir`, it is written there).
    fn session() -> Vec<u8> {
        let b = |s: &[u8]| Bytes::from(s.to_vec());
        let ops = vec![
            Op::Create {
                kind: Kind::Dict,
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Create {
                kind: Kind::List,
                name: Some("l".into()),
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Create {
                kind: Kind::Lock { reentrant: true },
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Call {
                object: 1,
                call: Call::DictSet(b(b"k"), b(b"v")),
            },
            Op::Call {
                object: 2,
                call: Call::ListInsert(i64::MIN, b(b"x")),
            },
            Op::Call {
                object: 2,
                call: Call::ListRange(u64::MAX - 1, u64::MAX),
            },
            Op::Call {
                object: 2,
                call: Call::ListPop(Some(i64::MIN)),
            },
            Op::Call {
                object: 3,
                call: Call::LockAcquire {
                    timeout_us: Some(0),
                    thread: 1,
                },
            },
            Op::Call {
                object: 3,
                call: Call::LockAcquire {
                    timeout_us: Some(1),
                    thread: 2,
                },
            },
            Op::Batch {
                calls: vec![(1, Call::DictRemove(b(b"k"))), (2, Call::ListGet(5))],
                atomic: true,
                expect: vec![(1, 1)],
            },
            Op::Release { object: 1 },
            Op::Release { object: 99 },
            Op::Attach {
                object: 2,
                expect: Expect::List,
            },
            Op::Attach {
                object: 2,
                expect: Expect::Served("nobody".into()),
            },
            Op::Lookup { name: "l".into() },
            Op::Status,
            Op::Create {
                kind: Kind::Semaphore {
                    value: 1,
                    bounded: true,
                },
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Call {
                object: 4,
                call: Call::SemAcquire {
                    timeout_us: Some(5),
                },
            },
            Op::Call {
                object: 4,
                call: Call::SemRelease,
            },
            Op::Call {
                object: 4,
                call: Call::SemRelease,
            },
            Op::Create {
                kind: Kind::Queue { maxsize: 1 },
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Call {
                object: 5,
                call: Call::QueuePut {
                    item: b(b"i"),
                    timeout_us: Some(0),
                },
            },
            Op::Call {
                object: 5,
                call: Call::QueuePut {
                    item: b(b"j"),
                    timeout_us: Some(3),
                },
            },
            Op::Call {
                object: 5,
                call: Call::QueueGet { timeout_us: None },
            },
            Op::Create {
                kind: Kind::Condition,
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Call {
                object: 6,
                call: Call::LockAcquire {
                    timeout_us: None,
                    thread: 1,
                },
            },
            Op::Call {
                object: 6,
                call: Call::CondWait {
                    timeout_us: Some(2),
                    thread: 1,
                },
            },
            Op::Call {
                object: 6,
                call: Call::CondNotify { n: 9, thread: 1 },
            },
            Op::Create {
                kind: Kind::Barrier { parties: 2 },
                name: None,
                existing: false,
                init: None,
                items: Vec::new(),
            },
            Op::Call {
                object: 7,
                call: Call::BarrierWait {
                    timeout_us: Some(4),
                },
            },
            Op::Call {
                object: 7,
                call: Call::BarrierState,
            },
            Op::Call {
                object: 7,
                call: Call::BarrierAbort,
            },
            Op::Call {
                object: 7,
                call: Call::BarrierReset,
            },
            Op::Create {
                kind: Kind::Array,
                name: None,
                existing: false,
                init: None,
                items: vec![b(b"a"), b(b"b")],
            },
            Op::Call {
                object: 8,
                call: Call::ListSet(-1, b(b"c")),
            },
            Op::Call {
                object: 1,
                call: Call::Watch {
                    since: 0,
                    timeout_us: Some(1),
                },
            },
            Op::CreateServed {
                type_name: "nobody".into(),
                init: b(b""),
            },
            Op::Call {
                object: 1,
                call: Call::Served(b(b"x")),
            },
        ];
        let mut out = Vec::new();
        for (id, op) in ops.into_iter().enumerate() {
            let (bytes, _) = crate::codec::encode(&Request { id: id as u64, op }).unwrap();
            out.extend((bytes.len() as u16).to_le_bytes());
            out.extend(bytes);
        }
        out
    }

    #[test]
    fn the_fuzz_entry_runs_a_whole_session_and_survives_garbage() {
        let s = session();
        assert_eq!(fuzz_requests(&s), 38);
        if let Ok(dir) = std::env::var("MP_WRITE_FUZZ_SEEDS") {
            std::fs::write(std::path::Path::new(&dir).join("session"), &s).unwrap();
        }
        // Garbage after a good prefix ends the run there.
        let mut bad = s[..s.len() / 2].to_vec();
        bad.extend([0xff, 0x00, 0xde, 0xad]);
        assert!(fuzz_requests(&bad) < 32);
        assert_eq!(fuzz_requests(&[0x05, 0x00, 1, 2, 3, 4, 5]), 0);
    }
}
