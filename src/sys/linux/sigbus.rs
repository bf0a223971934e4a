//! A guard for mappings of files that another process can shrink.
//!
//! # Why
//! A shared mapping is backed only where its file has bytes. If another process truncates the file
//! while we have it mapped, the next access past the new end raises `SIGBUS`, and by default that
//! kills the process. Anonymous regions are protected by seals (`F_SEAL_SHRINK`, see `shm.rs`), but
//! a name in `/dev/shm` cannot be sealed, and any process that can open it can truncate it. So every
//! mapping of a named region is registered here, and a `SIGBUS` handler that finds the faulting
//! address inside a registered mapping replaces the pages from the fault to the mapping's end with
//! private zero pages (`mmap(MAP_FIXED | MAP_ANONYMOUS)`), marks the mapping as truncated and
//! returns. The access that faulted is retried and completes (it reads zeros, or writes into memory
//! nobody else sees), and the region's operations, which look at the mark after every copy, report
//! an error instead of data. A fault anywhere else is handed on to whichever handler was installed
//! before ours (Rust's own stack-overflow handler, typically), or kills the process as it would have.
//! systemd's journal reader protects its mappings of journal files the same way.
//!
//! # Safety
//! The handler is async-signal-safe: it reads atomics, remaps and signals with rustix's raw system
//! calls (which leave the interrupted code's `errno` alone) and changes the disposition with
//! `sigaction`, which cannot fail for `SIGBUS` with a valid action (so it leaves `errno` alone too). A slot is registered after its mapping exists and released before the mapping
//! is unmapped (the mapping's owner holds `&mut` then, so no access can fault in between), so the
//! handler only ever remaps pages of a live mapping that the crate owns.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// How many named mappings can be guarded at once.
const SLOTS: usize = 1024;

/// `si_code` of a `SIGBUS` raised by an access to a nonexistent page of a mapping (Linux).
const BUS_ADRERR: i32 = 2;

struct Slot {
    /// Start of the mapping, 0 while the slot is free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// Set by the handler once it replaced some of the mapping's pages.
    truncated: AtomicBool,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        truncated: AtomicBool::new(false),
    }
}; SLOTS];

type SigInfoHandler = extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void);

/// The disposition that was in place before ours.
#[derive(Clone, Copy)]
enum Previous {
    Default,
    Ignore,
    Plain(extern "C" fn(i32)),
    SigInfo(SigInfoHandler),
}

/// Set once, before our handler is installed (which is what makes reading it there safe: the
/// handler only runs after the set, and `OnceLock::get` is an atomic load).
static PREVIOUS: OnceLock<Previous> = OnceLock::new();

impl Previous {
    fn from_disposition(handler: libc::sighandler_t, flags: libc::c_int) -> Previous {
        match handler {
            libc::SIG_DFL => Previous::Default,
            libc::SIG_IGN => Previous::Ignore,
            // SAFETY: any other handler value is the address of the handler function that was
            // installed, with the signature that its SA_SIGINFO flag says.
            h if flags & libc::SA_SIGINFO != 0 => {
                Previous::SigInfo(unsafe { std::mem::transmute::<usize, SigInfoHandler>(h) })
            }
            // SAFETY: as above.
            h => Previous::Plain(unsafe { std::mem::transmute::<usize, extern "C" fn(i32)>(h) }),
        }
    }
}

/// A registered mapping; dropping it releases the slot.
#[derive(Debug)]
pub(crate) struct Guard {
    slot: usize,
}

impl Guard {
    /// Registers the mapping `start..start + len`, installing the handler on first use.
    pub(crate) fn register(start: usize, len: usize) -> io::Result<Guard> {
        install()?;
        for (i, slot) in TABLE.iter().enumerate() {
            if slot.start.load(Ordering::Relaxed) != 0 {
                continue;
            }
            // Claim with a placeholder, then publish the length before the real start.
            if slot
                .start
                .compare_exchange(0, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.len.store(len, Ordering::Relaxed);
                slot.truncated.store(false, Ordering::Relaxed);
                slot.start.store(start, Ordering::Release);
                return Ok(Guard { slot: i });
            }
        }
        Err(io::Error::other(format!(
            "more than {SLOTS} named shared memory regions are mapped at once"
        )))
    }

    /// Whether another process shrank the file under the mapping (some of its pages now read zeros).
    pub(crate) fn truncated(&self) -> bool {
        TABLE[self.slot].truncated.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        TABLE[self.slot].start.store(0, Ordering::Release);
    }
}

fn install() -> io::Result<()> {
    static ONCE: Once = Once::new();
    static FAILED: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        let Some((handler, flags)) = super::process::disposition(libc::SIGBUS) else {
            FAILED.store(true, Ordering::Relaxed);
            return;
        };
        let _ = PREVIOUS.set(Previous::from_disposition(handler, flags));
        if !install_ours() {
            FAILED.store(true, Ordering::Relaxed);
        }
    });
    if FAILED.load(Ordering::Relaxed) {
        Err(io::Error::other("could not install the SIGBUS guard"))
    } else {
        Ok(())
    }
}

/// Installs [`on_sigbus`]; whether it worked. Async-signal-safe (one `sigaction`).
fn install_ours() -> bool {
    // SAFETY: sigaction is plain old data; the handler is async-signal-safe (see the module
    // contract) and runs with an empty mask.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction =
            on_sigbus as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0
    }
}

/// Sets SIGBUS to its default action. Async-signal-safe.
fn set_default() {
    super::process::set_disposition(libc::SIGBUS, super::process::Plain::Default);
}

/// The handler. A fault (`si_code > 0`, raised by the kernel for an access) in a registered mapping
/// is patched and retried. Anything else goes where it would have gone without us:
/// - under the previous default action, a fault retries with the default (and ends the process), and
///   a signal someone sent (`kill -BUS`, `si_code <= 0`) is raised again with the default, so the
///   process ends as the sender meant;
/// - under a previous "ignore", a sent signal is ignored (a fault cannot be: it retries with the
///   default);
/// - a previous handler is called; if what came was a sent signal, ours is put back afterwards (a
///   handler such as Rust's stack-overflow one resets the default on its way out), so that the
///   guard outlives a stray `kill`.
extern "C" fn on_sigbus(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO; for SIGBUS
    // the fault address is the union member to read.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let fault = code > 0;
    if fault && code == BUS_ADRERR && patch(addr) {
        return;
    }
    match PREVIOUS.get().copied().unwrap_or(Previous::Default) {
        Previous::Default => {
            set_default();
            if !fault {
                // Blocked in this thread while we run: delivered, with the default action, when we
                // return (or at once to another thread; it ends the process either way).
                let me = rustix::process::getpid();
                let _ = rustix::process::kill_process(me, rustix::process::Signal::BUS);
            }
        }
        Previous::Ignore => {
            if fault {
                set_default();
            }
        }
        // A previous handler gets exactly what the kernel gave us.
        Previous::SigInfo(f) => {
            f(sig, info, ctx);
            if !fault {
                install_ours();
            }
        }
        Previous::Plain(f) => {
            f(sig);
            if !fault {
                install_ours();
            }
        }
    }
}

/// Replaces the pages of the registered mapping holding `addr`, from `addr`'s page to the mapping's
/// end, with private zero pages; whether `addr` was in a registered mapping and the remap worked.
fn patch(addr: usize) -> bool {
    const PAGE: usize = 4096;
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || start == usize::MAX || addr < start {
            continue;
        }
        let end = start.saturating_add(slot.len.load(Ordering::Relaxed));
        if addr >= end {
            continue;
        }
        let page = addr & !(PAGE - 1);
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: `page..end` lies inside a live mapping the crate owns (the slot is registered); the
        // call replaces those pages with fresh anonymous memory and touches nothing else. rustix's
        // mmap is a raw system call: async-signal-safe, and it leaves the interrupted code's `errno`
        // alone.
        let r = unsafe {
            rustix::mm::mmap_anonymous(
                page as *mut std::ffi::c_void,
                end - page,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        };
        if r.is_ok_and(|p| p as usize == page) {
            slot.truncated.store(true, Ordering::Release);
            return true;
        }
        return false;
    }
    false
}
