//! The child side: how a new process finds its function and argument, runs it, and reports back.
//!
//! All three start methods end in [`run_and_report`]:
//! - *fork*: the forked child already has the function and the argument in memory, and calls it.
//! - *spawn*: the parent re-executes `/proc/self/exe` with a bootstrap socket at fd 3 and
//!   `MULTIPROCESS_BOOT=3` in the environment. The crate's constructor (`sys::entry`) sees the variable
//!   before `main` and calls [`boot_from_fd`].
//! - *forkserver*: the fork server forks, moves the bootstrap socket to fd 3 and calls [`boot_from_fd`].
//!
//! The bootstrap message is one frame: `[u32 LE n][n bytes: Boot][argument bytes]` with descriptors
//! `[lifeline read end, descriptors of the argument...]`. The report is one frame: a tag byte, then the
//! encoded result (with its descriptors), or a UTF-8 message. The child exits right after reporting.

use super::state;
use crate::codec;
use crate::connection::Connection;
use crate::error::SendError;
use crate::sys;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub(crate) const BOOT_ENV: &str = "MULTIPROCESS_BOOT";
pub(crate) const FORKSERVER_ENV: &str = "MULTIPROCESS_FORKSERVER";
pub(crate) const BOOT_FD: RawFd = 3;

/// Exit code of a child that could not even read its bootstrap message (its parent died first).
pub(crate) const EXIT_BOOT_FAILED: i32 = 255;

pub(crate) const TAG_RETURNED: u8 = 0;
pub(crate) const TAG_PANICKED: u8 = 1;
pub(crate) const TAG_FAILED: u8 = 2;

/// What the parent tells a re-executed child.
#[derive(Serialize, Deserialize)]
pub(crate) struct Boot {
    /// Token of `child_main::<A, R>`.
    pub(crate) entry: i64,
    /// Token of the user's `fn(A) -> R`.
    pub(crate) func: i64,
    /// `type_name` of `fn(A) -> R`, checked before the function token is trusted.
    pub(crate) signature: String,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: i32,
    pub(crate) parent_name: String,
}

/// Everything `child_main` needs.
pub(crate) struct ChildCall {
    func: i64,
    signature: String,
    args: Vec<u8>,
    args_offset: usize,
    fds: Vec<OwnedFd>,
    conn: Connection,
}

/// Called by the constructor in every process of the program, before `main`.
pub(crate) fn on_load() {
    if let Some(fd) = sys::entry::take_env_fd(BOOT_ENV) {
        boot_from_fd(fd);
    }
    if let Some(fd) = sys::entry::take_env_fd(FORKSERVER_ENV) {
        match sys::adopt_inherited(fd) {
            Some(fd) => super::forkserver::serve(Connection::from_socket(fd)),
            None => sys::exit_now(EXIT_BOOT_FAILED),
        }
    }
}

pub(crate) fn signature<A, R>() -> String {
    std::any::type_name::<fn(A) -> R>().to_string()
}

/// Becomes the child described by the bootstrap message waiting on descriptor `fd`. Never returns.
pub(crate) fn boot_from_fd(fd: RawFd) -> ! {
    let Some(fd) = sys::adopt_inherited(fd) else {
        sys::exit_now(EXIT_BOOT_FAILED)
    };
    let conn = Connection::from_socket(fd);
    let Ok(frame) = conn.recv_frame(None, None) else {
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
    state::lock().become_child(
        boot.name.clone(),
        boot.daemon,
        (boot.parent_pid, boot.parent_name.clone()),
    );
    let call = ChildCall {
        func: boot.func,
        signature: boot.signature,
        args: bytes,
        args_offset: 4 + n,
        fds,
        conn,
    };
    let code = sys::entry::call_trusted_entry(boot.entry, call);
    finish(code)
}

/// The monomorphised entry of a re-executed child running `fn(A) -> R`.
pub(crate) fn child_main<A, R>(call: ChildCall) -> i32
where
    A: DeserializeOwned,
    R: Serialize,
{
    if call.signature != signature::<A, R>() {
        let msg = format!(
            "child entry mismatch: expected {}, got {}",
            signature::<A, R>(),
            call.signature
        );
        report(&call.conn, TAG_FAILED, msg.as_bytes(), &[]);
        return 1;
    }
    let f: fn(A) -> R = sys::entry::resolve_trusted_fn(call.func);
    match codec::decode::<A>(&call.args[call.args_offset..], call.fds) {
        Ok(arg) => run_and_report(f, arg, &call.conn),
        Err(e) => {
            let msg = format!("failed to deserialize the argument in the child: {e}");
            report(&call.conn, TAG_FAILED, msg.as_bytes(), &[]);
            1
        }
    }
}

/// Runs the user's function and sends the outcome to the parent. Returns the exit code.
pub(crate) fn run_and_report<A, R: Serialize>(f: fn(A) -> R, arg: A, conn: &Connection) -> i32 {
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
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".to_string());
        report(conn, TAG_PANICKED, msg.as_bytes(), &[]);
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
    let _ = conn.send_frame_parts(&[&[tag], body], fds);
}

/// Ends a child: joins its own children (as Python's `_exit_function`), flushes stdio, `_exit`s.
pub(crate) fn finish(code: i32) -> ! {
    super::registry::join_children_at_exit();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}
