//! Events for the optional `tracing` feature: what the crate does on its own behalf (a lock taken
//! over from a dead holder, a fork server replaced, a queue repaired after a dead process, shared
//! memory found corrupt) and every error it has no caller to return to (a best-effort call that
//! failed, a drop that could not undo something). Without the feature an event compiles to nothing
//! and its arguments are not evaluated (they are still type-checked).

/// `event!(level, "format", args...)`: a `tracing` event at `level` (`error`, `warn`, `info`,
/// `debug`, `trace`) with target `multiprocess`, when the `tracing` feature is on.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!(target: "multiprocess", $($arg)+);
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
