//! The system layer: the only module of the crate that contains `unsafe` code or raw system calls.
//!
//! Everything above this module is safe Rust. Each file below opens with its safety contract and each
//! `unsafe` block carries a `// SAFETY:` line stating the invariant it relies on.
//!
//! Every backend provides:
//! - descriptors: [`socketpair`], [`pipe`], [`poll`], `send_frame` / `recv_into_spare` with `SCM_RIGHTS`,
//!   socket options, `fcntl` helpers;
//! - processes: [`fork`](process::fork), a `posix_spawn` of the running executable, pidfds,
//!   `waitid`, signals, the parent-death *lifeline*, `_exit`;
//! - entry: the `.init_array` constructor that turns a re-executed copy of this program into a child
//!   or a fork server before `main` runs, and the translation of function pointers into offsets that
//!   survive address-space randomisation.
//!
//! The system calls are rustix's wherever rustix has them (descriptors, sockets with `SCM_RIGHTS`,
//! `poll`, memfds and seals, `mmap`, futexes, pidfds, `waitid`, signals sent); `libc` remains for
//! what rustix does not wrap: `fork`, `clone3`, `posix_spawn`, `sigaction` and the signal mask,
//! `F_SETOWN`/`F_SETSIG`, `atexit`, `pthread_atfork`, `dladdr`, `getauxval`, `prctl` and the
//! robust list.
//!
//! Only Linux is supported today: the crate relies on pidfds, `memfd`, `SCM_RIGHTS`, `F_SETSIG`,
//! and futexes on shared memory. A port needs a file beside `linux/` that provides the same items.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiprocess currently supports Linux only (it needs pidfds, F_SETSIG and SCM_RIGHTS)"
);

mod linux;
pub(crate) use linux::*;
