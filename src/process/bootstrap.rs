//! The child side: how a new process finds its function and argument, runs it, and reports back.
//!
//! All three start methods end in [`run_and_report`]:
//! - *fork*: the forked child already has the function and the argument in memory, and calls it.
//! - *spawn*: the parent re-executes `/proc/self/exe` with a bootstrap socket at fd 3 and
//!   `MULTIPROCESS_BOOT=3` in the environment. The crate's constructor (`sys::entry`) sees the variable
//!   before `main` and calls [`boot_from_fd`].
//! - *forkserver*: the fork server forks, moves the bootstrap socket to fd 3 and calls [`boot_from_fd`].
//!
//! On the bootstrap socket the parent first sends the *prelude* (which entry and function to run;
//! read and checked by `sys::entry`, never by this module), then one frame:
//! `[u32 LE n][n bytes: Boot][argument bytes]` with descriptors `[lifeline read end, descriptors of
//! the argument...]`. The report is one frame: a tag byte, then the encoded result (with its
//! descriptors), or a UTF-8 message. The child exits right after reporting.

use super::state;
use crate::codec;
use crate::connection::Connection;
use crate::error::SendError;
use crate::sys;
use crate::sys::entry::Func;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

pub(crate) const BOOT_ENV: &str = "MULTIPROCESS_BOOT";
pub(crate) const FORKSERVER_ENV: &str = "MULTIPROCESS_FORKSERVER";
pub(crate) const BOOT_FD: RawFd = 3;

/// Exit code of a child that could not even read its bootstrap message (its parent died first, or
/// it refused the parent).
pub(crate) const EXIT_BOOT_FAILED: i32 = 255;

pub(crate) const TAG_RETURNED: u8 = 0;
pub(crate) const TAG_PANICKED: u8 = 1;
pub(crate) const TAG_FAILED: u8 = 2;

/// What the parent tells a re-executed child, beside the prelude.
#[derive(Serialize, Deserialize)]
pub(crate) struct Boot {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: i32,
    pub(crate) parent_name: String,
    /// For a child of the fork server, which was forked from a process started long ago: what it
    /// would have had had the parent `exec`ed it just now.
    pub(crate) fresh: Option<Fresh>,
}

/// The parent's state at the moment it started a fork-server child.
#[derive(Serialize, Deserialize)]
pub(crate) struct Fresh {
    /// The parent's working directory (`None` if it has none, say it was removed).
    pub(crate) cwd: Option<Vec<u8>>,
    /// The parent's environment.
    pub(crate) env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The signals the parent ignores (bit `n` for signal `n`), which an `exec`ed child inherits.
    pub(crate) ignored_signals: u32,
}

impl Fresh {
    /// This process's state now.
    pub(crate) fn now() -> Fresh {
        Fresh {
            cwd: std::env::current_dir()
                .ok()
                .map(|d| d.into_os_string().into_vec()),
            env: std::env::vars_os()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            ignored_signals: sys::ignored_signals(),
        }
    }

    /// Takes it on (in a fork-server child, which has one thread).
    fn apply(self) {
        if let Some(cwd) = self.cwd {
            // A directory that vanished since leaves us where the fork server was.
            let cwd = OsString::from_vec(cwd);
            if let Err(e) = std::env::set_current_dir(&cwd) {
                crate::trace::event!(
                    warn,
                    "a fork-server child stays in the server's directory: {cwd:?}: {e}"
                );
            }
        }
        let env: Vec<(OsString, OsString)> = self
            .env
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
            .collect();
        sys::replace_environment(&env);
        sys::reset_signals(self.ignored_signals);
    }
}

/// Everything `child_main` needs besides the function.
pub(crate) struct ChildCall {
    args: Vec<u8>,
    args_offset: usize,
    fds: Vec<OwnedFd>,
    conn: Connection,
}

sys::entry::before_main!(on_load);

/// Called by the constructor in every process of the program, before `main`.
fn on_load() {
    if let Some(fd) = sys::entry::take_env_fd(BOOT_ENV) {
        boot_from_fd(fd);
    }
    if let Some(fd) = sys::entry::take_env_fd(FORKSERVER_ENV) {
        let Some(fd) = sys::adopt_inherited(fd) else {
            sys::exit_now(EXIT_BOOT_FAILED)
        };
        if let Err(why) = sys::entry::verify_parent(&fd) {
            refuse(&why);
        }
        // Whatever else this process inherited belongs to the parent.
        sys::close_from(BOOT_FD + 1);
        super::forkserver::serve(Connection::from_socket(fd));
    }
    #[cfg(feature = "worker-env")]
    if std::env::var_os(crate::cluster::ENV_WORKER).is_some_and(|v| !v.is_empty()) {
        // Worker mode: this program joins a pool on a broker instead of running `main`.
        crate::cluster::worker_main_from_env();
    }
}

/// Ends a process that will not take orders from whoever started it.
fn refuse(why: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "multiprocess: {why}");
    sys::exit_now(EXIT_BOOT_FAILED)
}

/// Becomes the child described by the bootstrap messages waiting on descriptor `fd`. Never returns.
pub(crate) fn boot_from_fd(fd: RawFd) -> ! {
    let Some(fd) = sys::adopt_inherited(fd) else {
        sys::exit_now(EXIT_BOOT_FAILED)
    };
    // Single-threaded here (before `main`, or a fork of the single-threaded fork server).
    install_panic_hook();
    // Descriptors the parent did not mean to pass (spawn closes them already where glibc can).
    sys::close_from(BOOT_FD + 1);
    let entry = match sys::entry::accept_boot::<ChildCall>(&fd) {
        Ok(entry) => entry,
        Err(sys::entry::BootError::ParentGone) => sys::exit_now(EXIT_BOOT_FAILED),
        Err(sys::entry::BootError::Refused(why)) => refuse(&why),
    };
    let conn = Connection::from_socket(fd);
    let Ok(frame) = conn.recv_frame(crate::sync::futex::Wait::Forever, None) else {
        sys::exit_now(EXIT_BOOT_FAILED); // the parent died before telling us what to do
    };
    let mut fds = frame.fds;
    let bytes = frame.bytes;
    let boot = bytes
        .first_chunk::<4>()
        .map(|n| u32::from_le_bytes(*n) as usize)
        .and_then(|n| bytes.get(4..4 + n).map(|b| (n, b)))
        .and_then(|(n, b)| codec::decode::<Boot>(b, vec![]).ok().map(|boot| (n, boot)));
    let (Some((n, boot)), false) = (boot, fds.is_empty()) else {
        report(&conn, TAG_FAILED, b"malformed bootstrap message", &[]);
        finish(EXIT_BOOT_FAILED)
    };
    let lifeline = fds.remove(0);
    if !sys::arm_lifeline(std::os::fd::AsFd::as_fd(&lifeline)).unwrap_or(false) {
        sys::exit_now(EXIT_BOOT_FAILED); // the parent is already gone
    }
    std::mem::forget(lifeline); // stays open for the life of the process: it *is* the lifeline
    if let Some(fresh) = boot.fresh {
        fresh.apply();
    }
    state::lock().become_child(boot.name, boot.daemon, (boot.parent_pid, boot.parent_name));
    let call = ChildCall {
        args: bytes,
        args_offset: 4 + n,
        fds,
        conn,
    };
    finish(entry.run(call))
}

/// The monomorphised entry of a re-executed child running `fn(A) -> R`.
pub(crate) fn child_main<A, R>(func: Func, call: ChildCall) -> i32
where
    A: DeserializeOwned,
    R: Serialize,
{
    let f: fn(A) -> R = match func.resolve() {
        Ok(f) => f,
        Err(msg) => {
            report(&call.conn, TAG_FAILED, msg.as_bytes(), &[]);
            return 1;
        }
    };
    match codec::decode::<A>(&call.args[call.args_offset..], call.fds) {
        Ok(arg) => run_and_report(f, arg, &call.conn),
        Err(e) => {
            let msg = format!("failed to deserialize the argument in the child: {e}");
            report(&call.conn, TAG_FAILED, msg.as_bytes(), &[]);
            1
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_string())
}

/// What a child says of its function's panic: the message, and the panic as the panic hook would
/// have printed it (which process, where, the message, a backtrace if `RUST_BACKTRACE` asks).
#[derive(Serialize, Deserialize)]
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) rendered: String,
}

thread_local! {
    /// Set on the thread that runs a child's function: where its panic goes.
    static FUNCTION: std::cell::RefCell<Option<PanicSink>> = const { std::cell::RefCell::new(None) };
}

/// Where the panic of a child's function goes.
enum PanicSink {
    /// Kept for `run_and_report`, which sends it once `catch_unwind` returns.
    Keep(Option<String>),
    /// Sent by the hook itself (`panic = "abort"`: nothing returns), on this clone of the report
    /// connection.
    Send(Connection),
}

/// Installs (once per process) the panic hook that renders a child's panic for its parent; called
/// before every start of a child in the parent, and in the fork server and every re-executed child
/// before anything runs. Never in a forked child: another thread of the parent may have held the
/// hook's lock at the fork, which the child would then wait for forever.
///
/// # Why the parent prints a child's panic
/// A child's stderr is its parent's, so the default hook's message goes straight to the terminal:
/// under `cargo test` it shows up in the middle of other tests' output, even for a test that passes
/// (the test harness captures what the test's thread prints, not what other processes write to the
/// descriptor; a child forked from the test thread even prints into its own copy of the capture,
/// which nobody reads). So the hook only renders the panic of the thread that runs a child's
/// function; the child sends it with its report, and the parent prints it with `eprintln!` when it
/// learns the outcome (in `join`, or when the `Process` is dropped), where the harness captures it
/// like the test's own output. Other panics go to the hook that was there before. A program that
/// installs a hook of its own after starting children replaces this one: its children's panics
/// then print as that hook prints them.
///
/// In a program built with `panic = "abort"` a panic cannot be caught: the process aborts right
/// after the hook. So there the hook sends the report itself and ends the child with the exit code
/// of a panic, 1, as under unwinding.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let handled = FUNCTION
                .try_with(|f| {
                    let mut f = f.try_borrow_mut().ok()?;
                    let sink = f.as_mut()?;
                    let message = panic_message(info.payload());
                    let rendered = render(info, &message);
                    match sink {
                        PanicSink::Keep(kept) => *kept = Some(rendered),
                        PanicSink::Send(reporter) => {
                            report_panic(reporter, message, rendered);
                            // Not `finish`: this may run while the panicking code holds any lock
                            // of ours.
                            let _ = std::io::stdout().flush();
                            sys::exit_now(1);
                        }
                    }
                    Some(())
                })
                .ok()
                .flatten();
            if handled.is_none() {
                previous(info);
            }
        }));
    });
}

/// Marks this thread as the one running a child's function (see [`install_panic_hook`]).
fn capture_panics(conn: &Connection) {
    let sink = match cfg!(panic = "abort") {
        true => conn.try_clone().map(PanicSink::Send).ok(),
        false => Some(PanicSink::Keep(None)),
    };
    let _ = FUNCTION.try_with(|f| *f.borrow_mut() = sink);
}

/// The panic as the default hook prints it, naming the process instead of the thread.
fn render(info: &std::panic::PanicHookInfo<'_>, message: &str) -> String {
    let me = super::current_process();
    let at = info
        .location()
        .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let mut text = format!(
        "process '{}' (pid {}) panicked{at}:\n{message}",
        me.name, me.pid
    );
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        text.push_str(&format!("\nstack backtrace:\n{backtrace}"));
    } else {
        text.push_str(
            "\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
    }
    text
}

fn report_panic(conn: &Connection, message: String, rendered: String) {
    let panic = Panic { message, rendered };
    match codec::encode(&panic) {
        Ok((bytes, _)) => report(conn, TAG_PANICKED, &bytes, &[]),
        Err(_) => report(conn, TAG_FAILED, panic.message.as_bytes(), &[]),
    }
}

/// Runs the user's function and sends the outcome to the parent. Returns the exit code.
pub(crate) fn run_and_report<A, R: Serialize>(f: fn(A) -> R, arg: A, conn: &Connection) -> i32 {
    capture_panics(conn);
    // The result is encoded and sent inside `catch_unwind` too: a `Serialize` impl may panic.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let value = f(arg);
        match codec::encode(&value) {
            Ok((bytes, fds)) => match conn.send_frame_parts(&[&[TAG_RETURNED], &bytes], &fds) {
                Ok(()) | Err(SendError::Disconnected) => 0, // a vanished parent cannot be told
                Err(e) => failed(
                    conn,
                    format!("failed to send the result to the parent: {e}"),
                ),
            },
            Err(e) => failed(
                conn,
                format!("failed to serialize the result in the child: {e}"),
            ),
        }
    }));
    outcome.unwrap_or_else(|payload| {
        let message = panic_message(&*payload);
        let rendered = FUNCTION
            .try_with(|f| match f.borrow_mut().take() {
                Some(PanicSink::Keep(kept)) => kept,
                _ => None,
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("a child process panicked:\n{message}"));
        report_panic(conn, message, rendered);
        1
    })
}

/// Reports a failure that is not a panic; returns the exit code for it.
fn failed(conn: &Connection, msg: String) -> i32 {
    report(conn, TAG_FAILED, msg.as_bytes(), &[]);
    1
}

fn report(conn: &Connection, tag: u8, body: &[u8], fds: &[RawFd]) {
    // If the parent is gone there is nobody to tell; the exit code still says what happened.
    if let Err(e) = conn.send_frame_parts(&[&[tag], body], fds) {
        crate::trace::event!(debug, "a child could not send its report (tag {tag}): {e}");
    }
}

/// Ends a child: joins its own children (as Python's `_exit_function`), flushes stdio, `_exit`s.
pub(crate) fn finish(code: i32) -> ! {
    super::registry::join_children_at_exit();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}
