//! Processes that run a function of this program.

pub(crate) mod bootstrap;
pub(crate) mod forkserver;
pub(crate) mod registry;
pub(crate) mod state;

use crate::codec;
use crate::connection::{Connection, Frame};
use crate::error::{RecvError, RecvTimeoutError};
use crate::sync::futex::{Spin, Wait};
use crate::sys::{self, WaitStatus};
use crate::tracked::{self, TrackedFd};
use bootstrap::{Boot, TAG_FAILED, TAG_PANICKED, TAG_RETURNED};
pub(crate) use forkserver::{track as track_name, untrack as untrack_name};
use registry::ChildEntry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// How a child process is started.
///
/// | method | how | cost here | caveat |
/// |---|---|---|---|
/// | [`Fork`](Self::Fork) | `fork()` of the calling process | lowest | the child is a copy of a process that may have other threads: a lock another thread held at that instant (stdout's, a `static Mutex`, an allocator arena in some allocators) stays locked in the child |
/// | [`Spawn`](Self::Spawn) | re-executes `/proc/self/exe` | highest (`execve` + loading) | none: the child starts clean |
/// | [`ForkServer`](Self::ForkServer) | forks from a clean single-threaded server started once per process | low | none: the server never ran `main` or started a thread |
///
/// The default is `ForkServer`: as safe as `Spawn` (a multi-threaded parent, such as the `cargo test`
/// harness or a tokio runtime, cannot leave a lock held in the child) at close to the cost of `Fork`.
/// Python 3.14 made the same choice on Linux.
///
/// Under every method the child is a child of the process that started it (`getppid()` says so;
/// the fork server forks with `CLONE_PARENT`), is reaped by it, and starts with an empty signal
/// mask. Under `Spawn` and `ForkServer` it starts in the parent's current directory, with the
/// parent's current environment, the signals the parent ignores ignored and every other one at its
/// default, and with no descriptor of the parent's but the ones it was handed (as CPython's spawn):
/// what an `exec` from the parent at that moment would give it, even though a fork-server child is
/// forked from a server started long before. The fork server ignores SIGINT and SIGTERM (as
/// CPython's); if it dies anyway (`kill -9`), its children still report their own outcome, and the
/// next child starts from a new server.
///
/// # Caveats
/// - `Spawn` and `ForkServer` refuse to run in a set-user-ID, set-group-ID or capability-raising
///   program (`AT_SECURE`): a re-executed child cannot trust its environment there. Use `Fork`.
/// - Under `Spawn` and `ForkServer` the function must live in the executable itself (not in a shared
///   library loaded later): the child finds it by its offset inside the executable image.
/// - Under `Spawn` and `ForkServer` the child runs from the crate's `.init_array` constructor, before
///   `main` and before Rust's runtime set-up: a stack overflow in the child is a bare `SIGSEGV`
///   (no "stack overflow" message), and constructors that run after this crate's (C++ static
///   initialisers, `ctor` registrations of crates linked later) have not run in the child.
/// - Under `Fork`, the child inherits every descriptor of the parent, but the crate's own objects
///   (connection ends, lifelines) that were not handed to the child in its argument are replaced by
///   `/dev/null` in the child, so that their peers still see end-of-file when the parent closes them.
///   Such a copied `Connection` fails with an I/O error in the child; pass what the child needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork()` the calling process.
    Fork,
    /// Re-execute the current program.
    Spawn,
    /// Fork from the fork server (default).
    ForkServer,
}

impl StartMethod {
    /// Every start method, for tests and benchmarks that cover them all.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ];

    /// Python's name for the method: `"fork"`, `"spawn"` or `"forkserver"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StartMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            _ => Err(format!(
                "unknown start method {s:?} (expected fork, spawn or forkserver)"
            )),
        }
    }
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(2);

/// Sets the start method used by [`Process::spawn`] and builders that do not name one.
///
/// # Examples
/// ```
/// use multiprocess::{set_start_method, get_start_method, StartMethod};
/// set_start_method(StartMethod::Spawn);
/// assert_eq!(get_start_method(), StartMethod::Spawn);
/// set_start_method(StartMethod::ForkServer);
/// ```
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(method as u8, Ordering::Relaxed);
}

/// The default start method (initially [`StartMethod::ForkServer`]).
pub fn get_start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        0 => StartMethod::Fork,
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

/// Starts the fork server now, ahead of the first child.
///
/// Optional. Children started with [`StartMethod::Spawn`] or [`StartMethod::ForkServer`] find their
/// function through a constructor that the crate installs, so no line in `main` is needed for them to
/// work, in a binary or in a test. Calling `init()` first thing in `main` only moves the fork server's
/// start-up (about a millisecond) out of the first [`Process::spawn`].
///
/// # Examples
/// ```
/// // First thing in `main`:
/// multiprocess::init()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn init() -> io::Result<()> {
    forkserver_handle().map(drop)
}

/// The fork server, started (or restarted, after it died) if needed. A dead server is reaped here, and
/// the named regions this process registered with it are registered with its successor.
fn forkserver_handle() -> io::Result<Arc<forkserver::ForkServer>> {
    let mut g = state::lock();
    g.claim();
    if let Some(fs) = &g.forkserver {
        if !fs.is_broken() {
            return Ok(fs.clone());
        }
        drop(g.forkserver.take()); // reaps it
    }
    if sys::secure_execution() {
        return Err(secure_execution_error());
    }
    let fs = Arc::new(forkserver::ForkServer::start()?);
    registry::install_exit_handler();
    g.tracked.retain(|t| t.region.strong_count() > 0);
    for t in &g.tracked {
        fs.track(&t.name, t.id);
    }
    g.forkserver = Some(fs.clone());
    Ok(fs)
}

/// Reaps the fork server if it died (so that it is not left a zombie while nothing else calls in),
/// and starts another at once if named regions of ours need one to remove them should we die.
fn reap_dead_forkserver() {
    let mut g = state::lock();
    if g.forkserver.as_ref().is_some_and(|fs| fs.is_broken()) {
        crate::trace::event!(warn, "the fork server died; it is reaped");
        drop(g.forkserver.take());
        if g.tracked.iter().any(|t| t.region.strong_count() > 0) {
            drop(g);
            match forkserver_handle() {
                Ok(_) => {
                    crate::trace::event!(info, "a new fork server took over the named regions")
                }
                Err(e) => crate::trace::event!(
                    warn,
                    "no new fork server for the named regions (they outlive a crash of ours): {e}"
                ),
            }
        }
    }
}

fn secure_execution_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this program runs set-user-ID, set-group-ID or with raised capabilities, where children \
         started by re-executing it (Spawn, ForkServer) refuse to boot; use StartMethod::Fork",
    )
}

/// Why a child did not give back a result.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The function panicked in the child; the message is the panic's. (`exitcode` is 1.)
    #[error("the child process panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The child exited with this code without giving back a result (for example it called
    /// `std::process::exit`).
    #[error("the child process exited with code {code} without a result")]
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The child was killed by this signal.
    #[error("the child process was killed by signal {signal}{}", sys::signal_name(*.signal).map(|n| format!(" ({n})")).unwrap_or_default())]
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// The argument could not be used in the child, or the result could not be serialized there
    /// (the message says which).
    #[error("{0}")]
    Child(String),
    /// The result arrived but could not be deserialized as `R`.
    #[error("failed to deserialize the child's result: {0}")]
    Decode(String),
    /// The result was already taken by an earlier `join`.
    #[error("the process was already joined")]
    AlreadyJoined,
    /// An operating-system error while waiting.
    #[error("I/O error while joining: {0}")]
    Io(#[from] io::Error),
}

/// Why [`Process::join_timeout`] gave no result.
#[derive(Debug, Error)]
pub enum JoinTimeoutError {
    /// The child is still running.
    #[error("the child process is still running")]
    Timeout,
    /// The child ended without a result, or the join failed, as a blocking one would have.
    #[error(transparent)]
    Failed(#[from] ProcessError),
}

impl ProcessError {
    /// Python's `exitcode` for this outcome, when it is known.
    pub fn exitcode(&self) -> Option<i32> {
        match self {
            ProcessError::Panicked { .. } | ProcessError::Child(_) => Some(1),
            ProcessError::Exited { code } => Some(*code),
            ProcessError::Signaled { signal } => Some(-signal),
            _ => None,
        }
    }
}

/// Configures and starts a child process.
///
/// # Examples
/// ```
/// use multiprocess::{Process, StartMethod};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let p = Process::builder().name("squarer").start_method(StartMethod::Spawn).spawn(square, 7)?;
/// assert_eq!(p.name(), "squarer");
/// assert_eq!(p.join()?, 49);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until .spawn() is called"]
pub struct Builder {
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
}

impl Builder {
    /// A builder with the defaults: name `Process-N`, not a daemon, the default start method.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The child's name, as `current_process().name()` reports it inside the child.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// A daemon child is terminated (`SIGTERM`) when this process exits normally; a non-daemon child is
    /// waited for, as in Python. Either way every child is killed if this process dies abnormally.
    pub fn daemon(mut self, daemon: bool) -> Builder {
        self.daemon = daemon;
        self
    }

    /// The start method; without it, [`get_start_method`].
    pub fn start_method(mut self, method: StartMethod) -> Builder {
        self.method = Some(method);
        self
    }

    /// Starts a child that runs `f(arg)`.
    ///
    /// `arg` may contain [`Connection`]s (and other OS objects of this crate); they arrive usable in
    /// the child under every start method. `f` is a plain function (a closure that captures nothing
    /// coerces to one).
    ///
    /// Under every start method the child starts with an empty signal mask; under `Spawn` and
    /// `ForkServer` also in this process's current directory, with its current environment and the
    /// signal dispositions an `exec` from here would give it (ignored signals stay ignored, every
    /// other one is at its default).
    ///
    /// # Errors
    /// The OS refused to create the process or its pipes (descriptors exhausted is
    /// [`ErrorKind::QuotaExceeded`](io::ErrorKind::QuotaExceeded), with the OS error as its source;
    /// no child is left behind by any failure); the argument could
    /// not be serialized (`InvalidInput`; no process was started); or, under `Spawn`/`ForkServer`,
    /// `f` does not live in the executable, or this program runs set-user-ID (`Unsupported`).
    pub fn spawn<A, R>(self, f: fn(A) -> R, arg: A) -> io::Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        {
            // Under the lock the fork path holds across `fork`, so that no child is forked while
            // another thread is in the middle of installing the hook.
            let _state = state::lock();
            bootstrap::install_panic_hook();
        }
        bootstrap::ensure_constructor_linked();
        let method = self.method.unwrap_or_else(get_start_method);
        let (parent_name, name) = {
            let mut g = state::lock();
            g.identity.counter += 1;
            let name = self
                .name
                .clone()
                .unwrap_or_else(|| match &g.identity.parent {
                    None => format!("Process-{}", g.identity.counter),
                    Some(_) => format!("{}:{}", g.name(), g.identity.counter),
                });
            (g.name(), name)
        };
        let (life_r, life_w) = tracked::made(sys::pipe)?;
        let (pid, pidfd, conn, method) = match method {
            StartMethod::Fork => {
                // Tracked from the start, so that a concurrent fork elsewhere does not keep copies.
                let (here, there) = tracked::made(sys::socketpair)?;
                let here = Connection::from_socket_sharing(here, &REPORT_SPIN);
                let (pid, pidfd) = fork_child(f, arg, there, life_r, &name, self.daemon)?;
                (pid, pidfd, here, method)
            }
            StartMethod::Spawn | StartMethod::ForkServer => {
                let boot = Boot {
                    name: name.clone(),
                    daemon: self.daemon,
                    parent_pid: sys::getpid(),
                    parent_name,
                    fresh: None,
                };
                reexec_child(method, f, arg, boot, life_r)?
            }
        };
        let entry = Arc::new(ChildEntry::new(pid, name, self.daemon, pidfd, life_w));
        registry::register(entry.clone());
        Ok(Process {
            entry,
            conn,
            method,
            joined: Mutex::new(Joined {
                report: None,
                taken: false,
            }),
            _result: PhantomData,
        })
    }
}

/// The spawn and fork-server start methods: a fresh copy of this program, told what to run over its
/// bootstrap socket. Returns the child, the parent's end of that socket, and the method that was
/// used (a fork server that cannot fork children of ours, see `forkserver`, leaves it to spawn).
fn reexec_child<A, R>(
    method: StartMethod,
    f: fn(A) -> R,
    arg: A,
    mut boot: Boot,
    life_r: TrackedFd,
) -> io::Result<(i32, OwnedFd, Connection, StartMethod)>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    if sys::secure_execution() {
        return Err(secure_execution_error());
    }
    let entry: fn(sys::entry::Func, bootstrap::ChildCall) -> i32 = bootstrap::child_main::<A, R>;
    let prelude = sys::entry::prelude(entry, f)?;
    let (args, arg_fds) = codec::encode(&arg).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("failed to serialize the argument: {e}"),
        )
    })?;
    if arg_fds.len() >= sys::MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an argument can carry at most 252 connections or other OS objects, not {}",
                arg_fds.len()
            ),
        ));
    }
    let mut method = method;
    let mut retried = false;
    let (here, pid, pidfd) = loop {
        let (here, there) = tracked::made(sys::socketpair)?;
        let here = Connection::from_socket_sharing(here, &REPORT_SPIN);
        if method == StartMethod::Spawn {
            let pid = sys::spawn_self(there.as_fd(), bootstrap::BOOT_FD, bootstrap::BOOT_ENV, "3")?;
            let pidfd = sys::pidfd_open(pid).inspect_err(|_| sys::kill_and_reap(pid))?;
            break (here, pid, pidfd);
        }
        let server = forkserver_handle()?;
        match server.spawn_child(there.as_fd()) {
            Ok((pid, pidfd)) => break (here, pid, pidfd),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => method = StartMethod::Spawn,
            // The server died (it was killed, say): start a new one and try once more, on a fresh
            // socket pair (the dead server may have forked a child that holds `there`).
            Err(_) if server.is_broken() && !retried => retried = true,
            Err(e) => return Err(e),
        }
    };
    if method == StartMethod::ForkServer {
        boot.fresh = Some(bootstrap::Fresh::now());
    }
    let sent = codec::encode(&boot)
        .map_err(io::Error::other)
        .and_then(|(boot_bytes, _)| {
            let mut fds = vec![life_r.as_fd().as_raw_fd()];
            fds.extend(arg_fds);
            let len = (boot_bytes.len() as u32).to_le_bytes();
            // The prelude by itself first (the child reads it without descriptors), then the frame.
            here.send_unframed(&prelude)?;
            here.send_frame_parts(&[&len, &boot_bytes, &args], &fds)?;
            Ok(())
        });
    match sent {
        // A child that died before reading shows up in join() with its exit status.
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            sys::kill_and_reap(pid);
            return Err(e);
        }
    }
    drop(arg);
    drop(life_r);
    Ok((pid, pidfd, here, method))
}

/// The fork start method: the child runs `f(arg)` from its copy of our memory.
fn fork_child<A: Serialize, R: Serialize>(
    f: fn(A) -> R,
    arg: A,
    there: TrackedFd,
    life_r: TrackedFd,
    name: &str,
    daemon: bool,
) -> io::Result<(i32, OwnedFd)> {
    let mut keep = codec::collect_fds(&arg);
    keep.extend([there.as_fd().as_raw_fd(), life_r.as_fd().as_raw_fd()]);
    let parent = (sys::getpid(), state::lock().name());
    let name = name.to_string();
    let null = sys::dev_null()?;
    // Held across fork() and released by the child itself, so that the child finds each of them
    // consistent and unlocked: stdout and stderr (another thread may be printing; the child prints its
    // own panic message and flushes at exit), the state and the set of tracked descriptors.
    // Flushing first keeps the child from printing a second copy of our buffered output.
    // First the gate of the tables above this layer (see `forkgate`), then this layer's own.
    let gate = crate::forkgate::shut();
    let mut out = io::stdout().lock();
    let _ = out.flush();
    let err = io::stderr().lock();
    let mut guard = state::lock();
    let mut owned = tracked::owned_fds();
    // What the child does to the tracked set, worked out here: every page a forked child writes (an
    // allocation, a tree's nodes) is a page the kernel copies for it.
    let (stale, kept): (Vec<_>, std::collections::BTreeSet<_>) = {
        let (kept, stale): (Vec<_>, Vec<_>) = owned.iter().partition(|fd| keep.contains(fd));
        (stale, kept.into_iter().collect())
    };
    let pid = sys::fork_then(move || {
        // Child. Only this thread exists. Release every crate descriptor that was not handed to us
        // (other children's pipes, lifelines, the fork server's socket): see `tracked::owned_fds`.
        // A failure cannot be told here: a forked child must not enter a `tracing` subscriber,
        // whose locks another thread of the parent may have held at the fork. Descriptors left
        // open only delay their peers' end-of-file until this child exits.
        let _ = sys::neuter(&stale, null);
        // The parent's set goes unfreed (freeing writes the allocator's pages too).
        std::mem::forget(std::mem::replace(&mut *owned, kept));
        drop(owned);
        guard.become_child(name, daemon, parent);
        drop(guard);
        drop((out, err));
        drop(gate);
        // The forking thread's mask is not the child's business (a blocked SIGTERM would make
        // `terminate` powerless).
        sys::unblock_all_signals();
        let life_r = life_r.into_owned();
        if !sys::arm_lifeline(life_r.as_fd()).unwrap_or(false) {
            sys::exit_now(bootstrap::EXIT_BOOT_FAILED);
        }
        std::mem::forget(life_r); // stays open for the life of the process: it *is* the lifeline
        let conn = Connection::from_tracked_socket(there);
        let code = bootstrap::run_and_report(f, arg, &conn);
        bootstrap::finish(code)
    })?;
    let pidfd = sys::pidfd_open(pid).inspect_err(|_| sys::kill_and_reap(pid))?;
    Ok((pid, pidfd))
}

/// A child process running a function of this program; `join` gives back its result.
///
/// Dropping a `Process` neither kills nor detaches the child: like Python, a non-daemon child is still
/// waited for when this process exits, and a daemon child is terminated then. If this process dies
/// abnormally (a signal, `abort`), every child it started is killed by the kernel through its lifeline
/// pipe, whatever its start method, so no child outlives its parent.
///
/// # Examples
/// ```
/// use multiprocess::Process;
///
/// fn greet(name: String) -> String {
///     format!("hello {name} from {}", std::process::id())
/// }
///
/// let p = Process::spawn(greet, "bob".to_string())?;
/// let pid = p.pid();
/// assert_eq!(p.join()?, format!("hello bob from {pid}"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Process<R> {
    entry: Arc<ChildEntry>,
    conn: Connection,
    method: StartMethod,
    /// What `join` learnt so far (a lock: `join` takes `&self`, so that one thread may join while
    /// another terminates, as in Python).
    joined: Mutex<Joined<R>>,
    _result: PhantomData<fn() -> R>,
}

impl Process<()> {
    /// A builder, for a name, daemon flag or start method.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<R: Serialize + DeserializeOwned> Process<R> {
    /// Starts a child running `f(arg)` with the default settings. See [`Builder::spawn`].
    pub fn spawn<A>(f: fn(A) -> R, arg: A) -> io::Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
    {
        Builder::new().spawn(f, arg)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to exit and returns what its function returned. The handle stays: its
    /// [`exitcode`](Self::exitcode) (and the rest) can be read afterwards, and a second `join` is
    /// [`ProcessError::AlreadyJoined`] (the result was handed out once).
    ///
    /// Never hangs on a dead child: whenever the child ends (returns, panics, exits, is killed, even
    /// before it started running the function) `join` returns.
    ///
    /// # Errors
    /// [`ProcessError::Panicked`] with the panic message, [`ProcessError::Signaled`] /
    /// [`ProcessError::Exited`] when it ended without a result, and the others listed there.
    ///
    /// # Examples
    /// ```
    /// fn fails(code: i32) { std::process::exit(code) }
    ///
    /// let p = multiprocess::Process::spawn(fails, 3)?;
    /// assert!(p.join().is_err());
    /// assert_eq!(p.exitcode(), Some(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) -> Result<R, ProcessError> {
        match self.wait(Wait::Forever)? {
            Some(r) => r,
            None => unreachable!("wait without a deadline returns only when the child has ended"),
        }
    }

    /// Waits up to `timeout` for the child to exit: [`JoinTimeoutError::Timeout`] while it is
    /// still running (nothing is lost: `join_timeout` or [`join`](Self::join) can be called again;
    /// the child is not killed).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use multiprocess::JoinTimeoutError;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    ///
    /// let p = multiprocess::Process::spawn(nap, 300)?;
    /// assert!(matches!(p.join_timeout(Duration::from_millis(10)), Err(JoinTimeoutError::Timeout)));
    /// assert!(p.is_alive());
    /// p.join_timeout(Duration::from_secs(30))?;
    /// assert_eq!(p.exitcode(), Some(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<R, JoinTimeoutError> {
        match self.wait(Wait::timeout(timeout))? {
            Some(r) => Ok(r?),
            None => Err(JoinTimeoutError::Timeout),
        }
    }

    /// Waits for the report and the exit. Outer `Err` only for `AlreadyJoined` and I/O failures.
    fn wait(&self, wait: Wait) -> Result<Option<Result<R, ProcessError>>, ProcessError> {
        let mut joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        let Joined { report, taken } = &mut *joined;
        if *taken {
            return Err(ProcessError::AlreadyJoined);
        }
        while report.is_none() {
            match self
                .conn
                .recv_frame_watching(wait, None, Some(self.entry.pidfd.as_fd()))
            {
                Ok(frame) => *report = Some(parse_report(frame)),
                Err(RecvTimeoutError::Timeout) => {
                    if self.entry.has_exited() {
                        // Whatever it wrote before dying is already in the socket buffer; a report
                        // that is not complete now never will be.
                        match self.conn.recv_frame(Wait::Never, None) {
                            Ok(frame) => *report = Some(parse_report(frame)),
                            Err(_) => break,
                        }
                    } else if wait.is_over() {
                        return Ok(None);
                    }
                }
                Err(RecvTimeoutError::Failed(RecvError::Io(e))) => return Err(ProcessError::Io(e)),
                Err(_) => break, // end of file or a torn report: the child died without reporting
            }
        }
        // The report is in (or never will be); now the exit itself.
        let status = loop {
            match self.entry.reap(false) {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                // The status is lost (the fork server that was this child's parent died), but the
                // child has ended; its report, if any, is the answer.
                Err(e) => match report.take() {
                    Some(r) => {
                        *taken = true;
                        return Ok(Some(r));
                    }
                    None => return Err(ProcessError::Io(e)),
                },
            }
            // A child that has reported exits right after: stay awake for it a moment (as for any
            // hand-off, see `futex::Spin`) rather than sleep and be woken a second time.
            let ended = EXIT_SPIN.until(wait, || self.entry.has_exited().then_some(()));
            if ended.is_none()
                && !sys::poll_readable(&[self.entry.pidfd.as_fd()], wait.deadline())?[0]
            {
                return Ok(None);
            }
        };
        *taken = true;
        Ok(Some(match report.take() {
            Some(r) => r,
            None => Err(match status {
                WaitStatus::Exited(code) => ProcessError::Exited { code },
                WaitStatus::Signaled(signal) => ProcessError::Signaled { signal },
            }),
        }))
    }
}

fn parse_report<R: DeserializeOwned>(frame: Frame) -> Result<R, ProcessError> {
    let Frame { bytes, fds } = frame;
    let text = || String::from_utf8_lossy(&bytes[1..]).into_owned();
    match bytes.first() {
        Some(&TAG_RETURNED) => codec::decode(&bytes[1..], fds).map_err(ProcessError::Decode),
        Some(&TAG_PANICKED) => match codec::decode::<bootstrap::Panic>(&bytes[1..], fds) {
            Ok(panic) => {
                // Here, where a test harness captures it (see `bootstrap::capture_panics`).
                print_child_panic(&panic.rendered);
                Err(ProcessError::Panicked {
                    message: panic.message,
                })
            }
            Err(e) => Err(ProcessError::Decode(format!("malformed panic report: {e}"))),
        },
        Some(&TAG_FAILED) => Err(ProcessError::Child(text())),
        _ => Err(ProcessError::Decode(
            "malformed report from the child".into(),
        )),
    }
}

impl<R> Process<R> {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.entry.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Whether the child is a daemon (see [`Builder::daemon`]).
    pub fn daemon(&self) -> bool {
        self.entry.daemon
    }

    /// How the child was started.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        !self.entry.has_exited()
    }

    /// Python's `exitcode`: `None` while running; then 0 after the function returned, 1 after a panic,
    /// `n` after `exit(n)`, `-N` when killed by signal `N`.
    pub fn exitcode(&self) -> Option<i32> {
        self.entry
            .reap(false)
            .ok()
            .flatten()
            .map(WaitStatus::exitcode)
    }

    /// Sends `SIGTERM` (Python's `terminate`). Does nothing if the child has already ended.
    pub fn terminate(&self) -> io::Result<()> {
        self.entry.signal(sys::SIGTERM)
    }

    /// Sends `SIGKILL` (Python's `kill`). Does nothing if the child has already ended.
    pub fn kill(&self) -> io::Result<()> {
        self.entry.signal(sys::SIGKILL)
    }

    /// The child's pidfd, for use with `poll`/`epoll` (readable once the child has ended).
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.entry.pidfd.as_fd()
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.entry.name)
            .field("pid", &self.entry.pid)
            .field("daemon", &self.entry.daemon)
            .field("start_method", &self.method)
            // What is known already: formatting must not reap the child as a side effect.
            .field("exitcode", &self.entry.status().map(WaitStatus::exitcode))
            .finish()
    }
}

/// A child that panicked and was never joined still has its panic printed (see
/// `bootstrap::capture_panics`), if it has ended by the time its handle goes.
impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        let joined = self.joined.get_mut().unwrap_or_else(|p| p.into_inner());
        if joined.taken || joined.report.is_some() || !self.entry.has_exited() {
            return; // told already, or not over yet
        }
        if let Ok(frame) = self.conn.recv_frame(Wait::Never, None)
            && frame.bytes.first() == Some(&TAG_PANICKED)
            && let Ok(panic) = codec::decode::<bootstrap::Panic>(&frame.bytes[1..], frame.fds)
        {
            print_child_panic(&panic.rendered);
        }
    }
}

/// Prints a child's panic with `eprintln!` (which a test harness captures), never panicking: a
/// stderr whose reader is gone (`prog 2>&1 | head`) makes `eprintln!` panic, and a panic in a drop
/// during unwinding would abort. While this thread unwinds, and where panics abort, it writes to
/// stderr directly and ignores failure.
fn print_child_panic(rendered: &str) {
    if cfg!(panic = "unwind") && !std::thread::panicking() {
        let _ = std::panic::catch_unwind(|| eprintln!("{rendered}"));
    } else {
        let _ = writeln!(io::stderr(), "{rendered}");
    }
}

/// How long `join` stays awake, after a child's report, for the child's exit (see [`Spin`]).
static EXIT_SPIN: Spin = Spin::new(Duration::from_micros(30));

/// How long `join` stays awake for a child's report, shared by every child (one report each: too
/// few for a budget of their own to learn from). A child just started needs its parent's CPU as
/// often as not, so this starts at the least.
static REPORT_SPIN: Spin = Spin::new(Spin::MIN);

/// The child's report, once read: its result or why there is none; and whether `join` handed it out.
struct Joined<R> {
    report: Option<Result<R, ProcessError>>,
    taken: bool,
}

/// Identity of a process, as [`current_process`], [`parent_process`] and [`active_children`] report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The name: `"MainProcess"` for a program's first process, the builder's name (or `Process-N`) in a
    /// child.
    pub name: String,
    /// The process id.
    pub pid: i32,
    /// Whether it is a daemon child.
    pub daemon: bool,
}

/// This process: its name and pid.
///
/// # Examples
/// ```
/// let me = multiprocess::current_process();
/// assert_eq!(me.pid, std::process::id() as i32);
/// assert_eq!(me.name, "MainProcess");
/// ```
pub fn current_process() -> ProcessInfo {
    let g = state::lock();
    ProcessInfo {
        name: g.name(),
        pid: sys::getpid(),
        daemon: g.identity.daemon,
    }
}

/// The process that started this one, when this process is a child started by this crate.
///
/// # Examples
/// ```
/// assert!(multiprocess::parent_process().is_none()); // the test itself is no child
/// fn parent(_: ()) -> (i32, String) {
///     let p = multiprocess::parent_process().unwrap();
///     (p.pid, p.name)
/// }
/// let (pid, name) = multiprocess::Process::spawn(parent, ())?.join()?;
/// assert_eq!((pid, name.as_str()), (std::process::id() as i32, "MainProcess"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parent_process() -> Option<ProcessInfo> {
    let g = state::lock();
    g.identity.parent.clone().map(|(pid, name)| ProcessInfo {
        name,
        pid,
        daemon: false,
    })
}

/// The children of this process that are still running (finished ones are reaped on the way).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
/// let p = multiprocess::Process::spawn(nap, 200)?;
/// assert!(multiprocess::active_children().iter().any(|c| c.pid == p.pid()));
/// p.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn active_children() -> Vec<ProcessInfo> {
    registry::active()
        .iter()
        .map(|c| ProcessInfo {
            name: c.name.clone(),
            pid: c.pid,
            daemon: c.daemon,
        })
        .collect()
}

/// The number of CPUs this process may run on: its affinity mask, and a cgroup CPU quota (a
/// container limited to 1.5 CPUs counts 1), as loky counts them and unlike Python's
/// `os.cpu_count()`, which counts the machine's. (This is `std::thread::available_parallelism`.)
/// [`Pool`](crate::Pool) starts this many workers by default.
///
/// # Examples
/// ```
/// assert!(multiprocess::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
