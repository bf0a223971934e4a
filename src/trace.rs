//! Events for the optional `tracing` feature: what the crate does on its own behalf (a lock taken
//! over from a dead holder, a fork server replaced, a queue repaired after a dead process, shared
//! memory found corrupt) and every error it has no caller to return to (a best-effort call that
//! failed, a drop that could not undo something). Without the feature an event compiles to nothing
//! and its arguments are not evaluated (they are still type-checked).

//!
//! An event raised while this thread holds the process state lock is formatted at once but sent
//! only when the lock is released: a subscriber may write to stdout or stderr, which a fork takes
//! before that lock, so entering the subscriber under it could deadlock with a fork in another
//! thread.

#[cfg(feature = "tracing")]
use std::cell::{Cell, RefCell};

#[cfg(feature = "tracing")]
thread_local! {
    /// How many state-lock guards this thread holds.
    static HELD: Cell<u32> = const { Cell::new(0) };
    /// Events raised under the lock, to send when it is released.
    static DEFERRED: RefCell<Vec<(tracing::Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// The state lock was taken by this thread.
pub(crate) fn hold() {
    #[cfg(feature = "tracing")]
    let _ = HELD.try_with(|h| h.set(h.get() + 1));
}

/// The state lock was released by this thread: send what waited for it.
pub(crate) fn release() {
    #[cfg(feature = "tracing")]
    {
        let outer = HELD
            .try_with(|h| {
                h.set(h.get().saturating_sub(1));
                h.get() == 0
            })
            .unwrap_or(false);
        if outer {
            let events = DEFERRED
                .try_with(|d| std::mem::take(&mut *d.borrow_mut()))
                .unwrap_or_default();
            for (level, message) in events {
                send(level, &message);
            }
        }
    }
}

/// Sends `message` now, or keeps it for [`release`] while the state lock is held.
#[cfg(feature = "tracing")]
pub(crate) fn emit(level: tracing::Level, message: std::fmt::Arguments<'_>) {
    let held = HELD.try_with(|h| h.get() > 0).unwrap_or(false);
    if held {
        let text = message.to_string();
        let _ = DEFERRED.try_with(|d| d.borrow_mut().push((level, text)));
    } else {
        match message.as_str() {
            Some(s) => send(level, s),
            None => send(level, &message.to_string()),
        }
    }
}

#[cfg(feature = "tracing")]
fn send(level: tracing::Level, message: &str) {
    use tracing::Level;
    match level {
        Level::ERROR => tracing::error!(target: "multiprocess", "{message}"),
        Level::WARN => tracing::warn!(target: "multiprocess", "{message}"),
        Level::INFO => tracing::info!(target: "multiprocess", "{message}"),
        Level::DEBUG => tracing::debug!(target: "multiprocess", "{message}"),
        _ => tracing::trace!(target: "multiprocess", "{message}"),
    }
}

/// `event!(level, "format", args...)`: a `tracing` event at `level` (`error`, `warn`, `info`,
/// `debug`, `trace`) with target `multiprocess`, when the `tracing` feature is on.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            $crate::trace::emit($crate::trace::level!($level), format_args!($($arg)+));
        }
        #[cfg(not(feature = "tracing"))]
        {
            // Type-checks the arguments (and keeps their variables used) without running anything.
            let _ = || {
                let _ = format_args!($($arg)+);
            };
        }
    }};
}

pub(crate) use event;

/// The `tracing::Level` for an `event!` level name.
#[cfg(feature = "tracing")]
macro_rules! level {
    (error) => {
        ::tracing::Level::ERROR
    };
    (warn) => {
        ::tracing::Level::WARN
    };
    (info) => {
        ::tracing::Level::INFO
    };
    (debug) => {
        ::tracing::Level::DEBUG
    };
    (trace) => {
        ::tracing::Level::TRACE
    };
}
#[cfg(feature = "tracing")]
pub(crate) use level;
