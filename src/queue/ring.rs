//! The shared state of a queue, and why it is built this way.
//!
//! # Two stores, one order
//! A queue must carry an 8-byte item in a fraction of a microsecond *and* a 100 MiB item that no
//! consumer is around to take, and a producer must be able to exit the moment `put` returns (there is
//! no feeder thread to flush). One store cannot do both, so there are two:
//!
//! - the **ring**: a power-of-two byte ring in the queue's shared mapping. Records are
//!   `[len: u32][!len: u32][payload, padded to 8]` at 64-bit positions that only grow (the ring
//!   index is the position modulo the capacity). Puts and gets are two `memcpy`s and a
//!   handful of atomics; the pages stay mapped in every process, so nothing faults or syscalls.
//! - the **log**: a second memory file (`memfd`), never mapped, written with `pwrite` and read with
//!   `pread` at offsets that only grow. Records are `[len: u64][!len: u64][payload, padded to 8]`.
//!   The file is sparse and its consumed pages are punched out (`fallocate(PUNCH_HOLE)`), so it holds
//!   only what is queued, however much passed through it. It takes what the ring cannot: an item
//!   larger than half the ring, or any item while the ring is full.
//!
//! FIFO order across the two follows from one rule: *a put goes to the ring only while the log is
//! empty*. Then every record in the ring is older than every record in the log, and a consumer takes
//! from the ring while it holds anything, else from the log.
//!
//! # Who writes what
//! Producers take the **put lock**, consumers the **get lock** (the crate's [`LockWord`], whose holder
//! pid lets the next acquirer take over from a dead holder). So one producer and one consumer run at a
//! time, each side's words are written by one process at a time, and the two sides meet only through
//! a few published words: the item counts `put_count`/`got_count` and the ring positions
//! `tail`/`head` (plus `log_tail`/`log_head`), all 64-bit and only ever moving forward. Each side's
//! hot words share a cache line with its lock; the other side only reads them.
//!
//! An item exists when `put_count` says so: the count is the *commit*. A producer writes the record,
//! publishes `tail` (or `log_tail`), then increments `put_count`; a consumer that sees the count
//! therefore sees the record. A consumer reads the record, increments `got_count`, then publishes
//! `head` (or `log_head`); a producer that sees the new `head` therefore knows the bytes are free.
//! `len()` is `put_count - got_count`: exact, not an estimate.
//!
//! # Dying in the middle
//! A process can be killed at any instruction. Each side keeps a **journal** in its cache line,
//! written before it changes anything:
//!
//! - a producer records the old `tail`/`log_tail`, then the count it is about to commit. Publishing
//!   the position is the last thing it does to the record, so if the next holder of the put lock
//!   finds the holder dead with the journal's count not committed, a position that moved past the
//!   journal's proves the record complete: it commits it for the dead producer (the item is
//!   delivered). A position that did not move means nothing was published: the half-written bytes
//!   are simply overwritten (the one item in flight is lost, nothing else).
//! - a consumer records the count it is about to commit, then the new `head`/`log_head`. If the next
//!   holder of the get lock finds the count committed, it rolls the positions forward (the dead
//!   consumer took that item with it); if not, nothing changed and the item is still there for the
//!   next consumer.
//!
//! So recovery only ever moves things *forward*. Producers publish positions before their commit and
//! consumers after theirs: a consumer never reads a record that is not complete, a producer never
//! overwrites bytes that a consumer might still need, and what one process last saw of the other
//! side's words is always a lower bound of their real values. Each process keeps such a view
//! ([`Seen`]) so that a put or a get reads the other side's cache line only when its view says
//! "full" or "empty".
//!
//! # Waiting
//! Only the holder of a side's lock ever waits for the other side (a consumer for an item, a producer
//! of a bounded queue for room); everyone else waits for the lock. Waiting stays awake briefly (an adaptive spin
//! bounded by time and by the deadline, which gives up when the CPUs are oversubscribed: see
//! `futex::Spin`), then registers in a `sleepers` word and sleeps (`FUTEX_WAIT`) on the other side's 32-bit *sequence* word, which the
//! other side bumps with a read-modify-write after every commit, and then reads `sleepers` with a
//! read-modify-write too, which is
//! what makes the hand-off free of lost wake-ups under acquire/release alone (the same argument as
//! the semaphore's, checked by the loom model in `sync/model.rs`). With nobody asleep, a put or a get
//! makes no system call.
//!
//! # Nothing read is trusted
//! Every length is checked against what the positions say is there (and, in the log, against the
//! file's size) before a byte is allocated; a record whose check word is wrong, or positions that
//! contradict each other, is [`Fail::Corrupt`]. The pure checks are [`ring_record_len`] and
//! [`log_record_len`], which the fuzz target drives.

use crate::sync::futex::{Signal, Spin, Wait};
use crate::sync::lock::{Acquired, LockWord};
use crate::sys::{self, shm::Region};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// "mpQ2", little endian (version 2: 64-bit counts and positions).
const MAGIC: u32 = u32::from_le_bytes(*b"mpQ2");
/// The memfd names of the shared mapping and of the log.
const KIND: &str = "multiprocess-queue";
const LOG_KIND: &str = "multiprocess-queue-log";

// The header's layout: byte offsets in the mapping.
pub(crate) const O_MAGIC: usize = 0;
pub(crate) const O_CAP: usize = 4;
pub(crate) const O_MAXSIZE: usize = 8;
pub(crate) const O_TYPE: usize = 16;
// The producers' cache line: 32-bit words first, then 64-bit ones.
pub(crate) const O_PUT_LOCK: usize = 64;
pub(crate) const O_GET_SLEEPERS: usize = 68;
pub(crate) const O_PUT_SEQ: usize = 72;
pub(crate) const O_PUT_COUNT: usize = 80;
pub(crate) const O_TAIL: usize = 88;
pub(crate) const O_LOG_TAIL: usize = 96;
pub(crate) const O_PJ_COUNT: usize = 104;
pub(crate) const O_PJ_TAIL: usize = 112;
pub(crate) const O_PJ_LOG_TAIL: usize = 120;
// The consumers' cache line.
pub(crate) const O_GET_LOCK: usize = 128;
pub(crate) const O_PUT_SLEEPERS: usize = 132;
pub(crate) const O_GOT_SEQ: usize = 136;
pub(crate) const O_GOT_COUNT: usize = 144;
pub(crate) const O_HEAD: usize = 152;
pub(crate) const O_LOG_HEAD: usize = 160;
pub(crate) const O_GJ_COUNT: usize = 168;
pub(crate) const O_GJ_HEAD: usize = 176;
pub(crate) const O_GJ_LOG_HEAD: usize = 184;
// `JoinableQueue`'s line, and the log's punch mark (consumers, rarely).
pub(crate) const O_DONE: usize = 192;
pub(crate) const O_JOIN_SLEEPERS: usize = 196;
pub(crate) const O_PUNCHED: usize = 200;
/// The last token given to an item carrying descriptors (producers, under the put lock).
pub(crate) const O_FD_TOKEN: usize = 208;
/// Bytes before the ring.
pub(crate) const HEADER: usize = 256;

/// Most items a queue holds at once (`JoinableQueue`'s done count is 32-bit and wraps).
pub(crate) const MAX_ITEMS: u32 = i32::MAX as u32;
/// Smallest and largest ring.
pub(crate) const MIN_RING: u32 = 4096;
pub(crate) const MAX_RING: u32 = 1 << 30;
/// The ring's record header.
const RING_HDR: usize = 8;
/// The log's record header.
const LOG_HDR: u64 = 16;
/// In a record header's length word: the record's last 8 bytes are a token whose message on the
/// side channel holds the item's descriptors.
const RING_FDS: u32 = 1 << 31;
const LOG_FDS: u64 = 1 << 63;
/// Bytes of the token at the end of a record that carries descriptors.
const TOKEN: usize = 8;
/// The side channel's send buffer, asked for (the kernel caps it at `wmem_max`): each item with
/// descriptors waiting in the queue costs a message of about a kilobyte of it.
const SIDE_BUFFER: usize = 1 << 20;
const PAGE: u64 = 4096;
/// How much of the log a consumer reads at once ahead of its head.
const READ_AHEAD: u64 = 256 << 10;
/// How much of the log's consumed pages a consumer lets pile up before it gives them back.
const PUNCH_EVERY: u64 = 1 << 20;

/// How long a side's lock holder stays awake waiting for the other side before it sleeps (see
/// [`Spin`]): a consumer for an item, a producer of a bounded queue for room, a joiner.
static ITEMS_SPIN: Spin = Spin::new(Duration::from_micros(20));
static ROOM_SPIN: Spin = Spin::new(Duration::from_micros(20));
static JOIN_SPIN: Spin = Spin::new(Duration::from_micros(20));
/// How long a producer waits for a full ring's head to move before it puts into the log instead.
const STILL: Duration = Duration::from_micros(200);
/// Why an operation on the shared state failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// It would have had to wait longer than allowed (full for a put, empty for a get).
    WouldBlock,
    /// The shared state contradicts itself.
    Corrupt(String),
    /// The log file could not be written or read.
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn corrupt(what: impl Into<String>) -> Fail {
    let what = what.into();
    crate::trace::event!(error, "a queue's shared state is corrupt: {what}");
    Fail::Corrupt(what)
}

/// Bytes a ring record of a `payload`-byte item takes.
fn ring_need(payload: usize) -> Option<u64> {
    (payload as u64)
        .checked_add(7)
        .map(|n| RING_HDR as u64 + (n & !7))
}

/// Bytes a log record of a `payload`-byte item takes.
fn log_need(payload: u64) -> Option<u64> {
    payload.checked_add(7).map(|n| LOG_HDR + (n & !7))
}

/// Checks a ring record header read at the head when `available` bytes are published there and a
/// ring record may hold at most `max_record` bytes; gives the payload length.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn ring_record_len(
    header: [u8; 8],
    available: u64,
    max_record: u64,
) -> Result<u32, String> {
    ring_record(header, available, max_record).map(|(len, _)| len)
}

/// [`ring_record_len`], and whether the record carries a descriptor token (then its payload is at
/// least the token).
fn ring_record(header: [u8; 8], available: u64, max_record: u64) -> Result<(u32, bool), String> {
    let word = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let check = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if check != !word {
        return Err(format!(
            "ring record header {word:#x}/{check:#x} fails its check"
        ));
    }
    let (len, fds) = (word & !RING_FDS, word & RING_FDS != 0);
    if fds && (len as usize) < TOKEN {
        return Err(format!(
            "ring record of {len} bytes is too short for its descriptor token"
        ));
    }
    let need = ring_need(len as usize).unwrap_or(u64::MAX);
    if need > available || need > max_record {
        return Err(format!(
            "ring record of {len} bytes does not fit the {available} bytes published (at most {max_record} per record)"
        ));
    }
    Ok((len, fds))
}

/// Checks a log record header read at the log's head when `available` bytes are published there
/// (and exist in the file); gives the payload length.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn log_record_len(header: [u8; 16], available: u64) -> Result<u64, String> {
    log_record(header, available).map(|(len, _)| len)
}

/// [`log_record_len`], and whether the record carries a descriptor token.
fn log_record(header: [u8; 16], available: u64) -> Result<(u64, bool), String> {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&header[..8]);
    b.copy_from_slice(&header[8..]);
    let (word, check) = (u64::from_le_bytes(a), u64::from_le_bytes(b));
    if check != !word {
        return Err(format!(
            "log record header {word:#x}/{check:#x} fails its check"
        ));
    }
    let (len, fds) = (word & !LOG_FDS, word & LOG_FDS != 0);
    if fds && len < TOKEN as u64 {
        return Err(format!(
            "log record of {len} bytes is too short for its descriptor token"
        ));
    }
    match log_need(len) {
        Some(need) if need <= available && usize::try_from(len).is_ok() => Ok((len, fds)),
        _ => Err(format!(
            "log record of {len} bytes does not fit the {available} bytes published"
        )),
    }
}

/// A 64-bit fingerprint of an item type's name (FNV-1a), so that a queue received as the wrong type
/// is refused at once rather than failing item by item.
pub(crate) fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a get took besides the payload: the item's descriptors, or why they did not come (the item
/// is taken all the same).
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) fds: Result<Vec<OwnedFd>, String>,
}

/// Takes the descriptor token off the end of a record's payload (which the header checks made at
/// least that long).
fn split_token(buf: &mut Vec<u8>) -> u64 {
    let at = buf.len() - TOKEN;
    let mut token = [0u8; TOKEN];
    token.copy_from_slice(&buf[at..]);
    buf.truncate(at);
    u64::from_le_bytes(token)
}

/// One process's handle on a queue's shared state.
#[derive(Debug)]
pub(crate) struct Shared {
    region: Region,
    log: File,
    /// The side channel of items that carry descriptors: a `SOCK_SEQPACKET` pair, sent on at one
    /// end and received from at the other (every handle holds both; see `put_fds`).
    side: (OwnedFd, OwnedFd),
    cap: u32,
    /// This process's last view of the other side's words, so that a put or a get need not read the
    /// other side's cache line while its view already shows room or an item (see [`Seen`]).
    seen: Seen,
    /// What this process read of the log ahead of its head (under the get lock only; the mutex is
    /// for the threads of this process, which take the get lock in turn).
    ahead: std::sync::Mutex<ReadAhead>,
}

/// What this process last read of the other side's published words. Each is a lower bound of the
/// real value (the other side only moves them forward, and so does recovery), so a stale view can
/// only make a put think there is less room or a get think there are fewer items, and then it reads
/// the real word. Used only under the side's lock, which is why relaxed atomics do.
#[derive(Debug, Default)]
struct Seen {
    /// For producers: `got_count`, `head` and `log_head`.
    got: AtomicU64,
    head: AtomicU64,
    log_head: AtomicU64,
    /// For producers: when `got_count` was last seen to move (nanoseconds since [`epoch`]; 0:
    /// never), the sign of a consumer at work.
    got_moved: AtomicU64,
    /// For consumers: `put_count` and `tail`.
    put: AtomicU64,
    tail: AtomicU64,
}

/// The log's bytes this process read ahead of its head (see [`Shared::take`]): `bytes` are the
/// log's from position `start`. Positions are written once, so bytes read stay true.
#[derive(Debug, Default)]
struct ReadAhead {
    start: u64,
    bytes: Vec<u8>,
}

impl ReadAhead {
    /// The `n` bytes at position `at`, if they were read.
    fn get(&self, at: u64, n: u64) -> Option<&[u8]> {
        let from = usize::try_from(at.checked_sub(self.start)?).ok()?;
        let to = from.checked_add(usize::try_from(n).ok()?)?;
        self.bytes.get(from..to)
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64 | 1
}

/// Releases a side's lock when dropped (also on a panic or an early return).
struct Held<'a> {
    word: &'a AtomicU32,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        LockWord::on(self.word).release();
    }
}

impl Shared {
    /// A new, empty queue state: a ring of `cap` bytes (a power of two between [`MIN_RING`] and
    /// [`MAX_RING`]), at most `maxsize` items (0: [`MAX_ITEMS`]), for items of type fingerprint `ty`.
    pub(crate) fn create(cap: u32, maxsize: u32, ty: u64) -> io::Result<Shared> {
        debug_assert!(cap.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&cap));
        let region = Region::anonymous(KIND, HEADER + cap as usize)?;
        let log = File::from(sys::shm::memfd(LOG_KIND)?);
        let side = sys::seqpacket_pair()?;
        // Best effort: a smaller buffer holds fewer items with descriptors at once.
        if let Err(e) = sys::set_socket_buffers(side.0.as_fd(), SIDE_BUFFER) {
            crate::trace::event!(
                debug,
                "a queue's side channel keeps its default buffer: {e}"
            );
        }
        let s = Shared {
            region,
            log,
            side,
            cap,
            seen: Seen::default(),
            ahead: Default::default(),
        };
        s.u32(O_CAP).store(cap, Ordering::Relaxed);
        s.u32(O_MAXSIZE).store(maxsize, Ordering::Relaxed);
        s.u64(O_TYPE).store(ty, Ordering::Relaxed);
        s.u32(O_MAGIC).store(MAGIC, Ordering::Release);
        Ok(s)
    }

    /// The state behind four received descriptors, checked to be a queue for item type `ty`.
    pub(crate) fn open(
        region: OwnedFd,
        log: OwnedFd,
        side: (OwnedFd, OwnedFd),
        ty: u64,
    ) -> Result<Shared, String> {
        let region = Region::receive(region, KIND, false).map_err(|e| e.to_string())?;
        sys::shm::expect_memfd(log.as_fd(), LOG_KIND).map_err(|e| e.to_string())?;
        if !sys::is_seqpacket(side.0.as_fd()) || !sys::is_seqpacket(side.1.as_fd()) {
            return Err("a Queue's side channel is not a pair of message sockets".into());
        }
        if region.len() < HEADER + MIN_RING as usize {
            return Err("a Queue's shared memory is too small".into());
        }
        let magic = region.atomic_u32(O_MAGIC).load(Ordering::Acquire);
        let cap = region.atomic_u32(O_CAP).load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(format!("not a Queue's shared memory (magic {magic:#x})"));
        }
        if !cap.is_power_of_two()
            || !(MIN_RING..=MAX_RING).contains(&cap)
            || region.len() != HEADER + cap as usize
        {
            return Err(format!(
                "a Queue's ring of {cap} bytes does not match its {} bytes of shared memory",
                region.len()
            ));
        }
        if region.atomic::<AtomicU64>(O_TYPE).load(Ordering::Relaxed) != ty {
            return Err("the Queue was created for a different item type".into());
        }
        Ok(Shared {
            region,
            log: File::from(log),
            side,
            cap,
            // Zero is a lower bound of everything.
            seen: Seen::default(),
            ahead: Default::default(),
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn log_file(&self) -> &File {
        &self.log
    }

    /// The side channel's two ends, as they travel.
    pub(crate) fn side(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.side.0.as_fd(), self.side.1.as_fd())
    }

    fn u32(&self, at: usize) -> &AtomicU32 {
        self.region.atomic_u32(at)
    }

    fn u64(&self, at: usize) -> &AtomicU64 {
        self.region.atomic::<AtomicU64>(at)
    }

    /// The most items the queue holds (its `maxsize`, or [`MAX_ITEMS`]).
    pub(crate) fn limit(&self) -> u32 {
        match self.u32(O_MAXSIZE).load(Ordering::Relaxed) {
            0 => MAX_ITEMS,
            m => m.min(MAX_ITEMS),
        }
    }

    /// The `maxsize` given at creation (`None`: unbounded).
    pub(crate) fn maxsize(&self) -> Option<u32> {
        match self.u32(O_MAXSIZE).load(Ordering::Relaxed) {
            0 => None,
            m => Some(m),
        }
    }

    pub(crate) fn ring_bytes(&self) -> u32 {
        self.cap
    }

    /// Items put and not yet taken.
    pub(crate) fn len(&self) -> u32 {
        // `got` first: it only grows, and never past `put`.
        let got = self.u64(O_GOT_COUNT).load(Ordering::Acquire);
        let put = self.u64(O_PUT_COUNT).load(Ordering::Acquire);
        put.saturating_sub(got).min(u64::from(MAX_ITEMS)) as u32
    }

    fn items(&self) -> Signal<'_, AtomicU32> {
        Signal {
            word: self.u32(O_PUT_SEQ),
            sleepers: self.u32(O_GET_SLEEPERS),
            spin: Some(&ITEMS_SPIN),
        }
    }

    fn room(&self) -> Signal<'_, AtomicU32> {
        Signal {
            word: self.u32(O_GOT_SEQ),
            sleepers: self.u32(O_PUT_SLEEPERS),
            spin: Some(&ROOM_SPIN),
        }
    }

    fn done(&self) -> Signal<'_, AtomicU32> {
        Signal {
            word: self.u32(O_DONE),
            sleepers: self.u32(O_JOIN_SLEEPERS),
            spin: Some(&JOIN_SPIN),
        }
    }

    /// Takes a side's lock within `wait`, repairing after a holder that died.
    fn lock(&self, at: usize, wait: Wait) -> Result<Held<'_>, Fail> {
        let word = self.u32(at);
        let core = LockWord::on(word);
        let me = sys::getpid() as u32;
        let how = core.acquire(me, wait).ok_or(Fail::WouldBlock)?;
        let held = Held { word };
        if how == Acquired::FromDead {
            if at == O_PUT_LOCK {
                self.recover_put();
            } else {
                self.recover_get();
            }
        }
        Ok(held)
    }

    /// After a producer died holding the put lock: commit its record if it published one.
    fn recover_put(&self) {
        crate::trace::event!(
            warn,
            "a queue's producer died in the middle of a put: repairing"
        );
        let count = self.u64(O_PUT_COUNT).load(Ordering::Acquire);
        if self.u64(O_PJ_COUNT).load(Ordering::Acquire) == count.wrapping_add(1) {
            let moved = self.u64(O_TAIL).load(Ordering::Acquire)
                != self.u64(O_PJ_TAIL).load(Ordering::Acquire)
                || self.u64(O_LOG_TAIL).load(Ordering::Acquire)
                    != self.u64(O_PJ_LOG_TAIL).load(Ordering::Acquire);
            if moved {
                self.u64(O_PUT_COUNT)
                    .store(count.wrapping_add(1), Ordering::Release);
            }
        }
        let count = self.u64(O_PUT_COUNT).load(Ordering::Acquire);
        self.u64(O_PJ_COUNT).store(count, Ordering::Release);
        // Only a holder of the put lock registers as waiting for room, and the holder is dead. A
        // consumer asleep for a commit the dead producer made but did not announce is woken.
        self.u32(O_PUT_SLEEPERS).store(0, Ordering::Release);
        self.u32(O_PUT_SEQ).fetch_add(1, Ordering::AcqRel);
        self.items().notify(1);
    }

    /// After a consumer died holding the get lock: finish its committed get.
    fn recover_get(&self) {
        crate::trace::event!(
            warn,
            "a queue's consumer died in the middle of a get: repairing"
        );
        let got = self.u64(O_GOT_COUNT).load(Ordering::Acquire);
        if self.u64(O_GJ_COUNT).load(Ordering::Acquire) == got {
            let head = self.u64(O_GJ_HEAD).load(Ordering::Acquire);
            let log_head = self.u64(O_GJ_LOG_HEAD).load(Ordering::Acquire);
            self.u64(O_HEAD).store(head, Ordering::Release);
            self.u64(O_LOG_HEAD).store(log_head, Ordering::Release);
        }
        self.u32(O_GET_SLEEPERS).store(0, Ordering::Release);
        self.u32(O_GOT_SEQ).fetch_add(1, Ordering::AcqRel);
        self.room().notify(1);
    }

    /// Puts one item's encoded `payload`, which carries the descriptors `fds` (numbers of descriptors
    /// owned by the item, open for the whole call).
    pub(crate) fn put(&self, payload: &[u8], fds: &[RawFd], wait: Wait) -> Result<(), Fail> {
        let held = self.lock(O_PUT_LOCK, wait)?;
        let put = self.u64(O_PUT_COUNT).load(Ordering::Relaxed);
        let limit = u64::from(self.limit());
        let mut got = self.seen.got.load(Ordering::Relaxed);
        loop {
            if got > put || put - got >= limit {
                // Full by our view: look at the real count, noting the sequence first so that a
                // get between the two is not slept through.
                let seq = self.u32(O_GOT_SEQ).load(Ordering::Acquire);
                got = self.u64(O_GOT_COUNT).load(Ordering::Acquire);
                self.seen.got.store(got, Ordering::Relaxed);
                let pending = put
                    .checked_sub(got)
                    .ok_or_else(|| corrupt(format!("{got} items were taken but only {put} put")))?;
                if pending > limit {
                    return Err(corrupt(format!(
                        "{pending} items are queued, more than the limit of {limit}"
                    )));
                }
                if pending == limit {
                    if !self.room().wait_change(seq, wait) {
                        return Err(Fail::WouldBlock);
                    }
                    continue;
                }
            }
            break;
        }

        // The journal first (see the module notes): the old positions, then the count to commit.
        let tail = self.u64(O_TAIL).load(Ordering::Relaxed);
        let log_tail = self.u64(O_LOG_TAIL).load(Ordering::Relaxed);
        self.u64(O_PJ_TAIL).store(tail, Ordering::Release);
        self.u64(O_PJ_LOG_TAIL).store(log_tail, Ordering::Release);
        self.u64(O_PJ_COUNT).store(put + 1, Ordering::Release);

        let placed = self
            .send_fds(fds, wait)
            .and_then(|token| self.place(payload, token, tail, log_tail));
        if placed.is_err() {
            // Nothing was published: the journal goes back to "committed". (A descriptor message
            // already sent is passed over by consumers: no record names its token.)
            self.u64(O_PJ_COUNT).store(put, Ordering::Release);
            return placed;
        }
        self.u64(O_PUT_COUNT).store(put + 1, Ordering::Release);
        self.u32(O_PUT_SEQ).fetch_add(1, Ordering::AcqRel);
        drop(held);
        self.items().notify(1);
        Ok(())
    }

    /// Sends an item's descriptors on the side channel, under a new token (which its record will
    /// carry); `None` for an item without descriptors. Waits within `wait` while the channel is full.
    ///
    /// # Why a side channel, and why tokens
    /// Descriptors cannot be written into shared memory: only the kernel can carry them, in a
    /// socket message. So each item with descriptors sends one message, `[token]` plus the
    /// descriptors, on a `SOCK_SEQPACKET` pair that every handle of the queue holds, and its record
    /// ends with the same token. Producers send under the put lock and consumers receive under the
    /// get lock, so messages and records come in one order; the tokens (a counter that only grows,
    /// in the queue's header) make that order checkable and survive the deaths in between: a
    /// producer that dies after sending but before committing leaves a message no record names,
    /// which the consumer of the next such record passes over (its token is smaller); a consumer
    /// that dies after receiving but before committing leaves a record whose message is gone, which
    /// the next consumer reports as [`Got::fds`]'s error (the item is dropped, nothing else is
    /// lost). The kernel keeps the descriptors of a message alive after its sender exits, which is
    /// what lets a producer exit at once here too.
    fn send_fds(&self, fds: &[RawFd], wait: Wait) -> Result<Option<u64>, Fail> {
        if fds.is_empty() {
            return Ok(None);
        }
        let word = self.u64(O_FD_TOKEN);
        let token = word.load(Ordering::Relaxed).wrapping_add(1);
        word.store(token, Ordering::Release);
        let bytes = token.to_le_bytes();
        let iov = [io::IoSlice::new(&bytes)];
        let tx = self.side.0.as_fd();
        loop {
            // Never blocking in the kernel: a full channel's sender is woken only once a quarter of
            // it is free, but every get makes room for one message (and says so on the room word).
            let seq = self.u32(O_GOT_SEQ).load(Ordering::Acquire);
            match sys::send_with(tx, &iov, fds, true) {
                Ok(_) => return Ok(Some(token)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.room().wait_change(seq, wait) {
                        return Err(Fail::WouldBlock);
                    }
                }
                Err(e) => return Err(Fail::Io(e)),
            }
        }
    }

    /// Receives the descriptors of the record with `token` (holding the get lock): the side
    /// channel's messages with smaller tokens belong to no record any more and are dropped (their
    /// descriptors closed); a missing message, or one whose descriptors the kernel could not give
    /// us, is the error.
    fn recv_fds(&self, token: u64) -> Result<Vec<OwnedFd>, String> {
        let rx = self.side.1.as_fd();
        let issued = self.u64(O_FD_TOKEN).load(Ordering::Acquire);
        loop {
            let mut word = [0u8; TOKEN];
            let ours = match sys::peek_message(rx, &mut word) {
                Ok(len) => len == TOKEN && u64::from_le_bytes(word) <= issued,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(
                        "its message is not on the queue's side channel (a consumer that \
                                was taking it died, or another process took it)"
                            .into(),
                    );
                }
                Err(e) => return Err(format!("reading the queue's side channel: {e}")),
            };
            let seen = u64::from_le_bytes(word);
            if !ours {
                // Not a message a producer of this queue sent (the wrong length, or a token never
                // issued): take it out of the way, with whatever descriptors it carries.
                let mut inbox = sys::Inbox::default();
                sys::recv_into_slice(rx, &mut word, &mut inbox, true, true)
                    .map_err(|e| format!("reading the queue's side channel: {e}"))?;
                crate::trace::event!(warn, "a queue's side channel held a stray message: dropped");
                continue;
            }
            if seen > token {
                return Err(format!(
                    "its message is gone from the queue's side channel (the next one is for a \
                     later item, {seen} > {token})"
                ));
            }
            let mut inbox = sys::Inbox::default();
            sys::recv_into_slice(rx, &mut word, &mut inbox, true, true)
                .map_err(|e| format!("reading the queue's side channel: {e}"))?;
            if seen < token {
                continue; // the message of an item that was never committed; its descriptors close
            }
            if inbox.truncated {
                return Err("this process has reached its open-file limit (RLIMIT_NOFILE)".into());
            }
            return Ok(inbox.fds);
        }
    }

    /// Writes a record to the ring or the log and publishes its position (not yet the count). A
    /// record of an item with descriptors ends with their `token`.
    fn place(
        &self,
        payload: &[u8],
        token: Option<u64>,
        tail: u64,
        log_tail: u64,
    ) -> Result<(), Fail> {
        let token = token.map(u64::to_le_bytes);
        let suffix: &[u8] = token.as_ref().map_or(&[], |t| &t[..]);
        let total = payload.len() + suffix.len();
        match ring_need(total) {
            Some(need)
                if need <= u64::from(self.cap / 2)
                    && (self.log_empty(log_tail) || self.log_drained(log_tail))
                    && self.ring_room(tail, need)? =>
            {
                let word = total as u32 | if token.is_some() { RING_FDS } else { 0 };
                let mut header = [0u8; RING_HDR];
                header[..4].copy_from_slice(&word.to_le_bytes());
                header[4..].copy_from_slice(&(!word).to_le_bytes());
                self.ring_write(tail, &header)?;
                self.ring_write(tail + RING_HDR as u64, payload)?;
                if !suffix.is_empty() {
                    self.ring_write(tail + (RING_HDR + payload.len()) as u64, suffix)?;
                }
                self.u64(O_TAIL).store(tail + need, Ordering::Release);
            }
            _ => {
                let len = total as u64;
                let end = log_need(len)
                    .and_then(|n| log_tail.checked_add(n))
                    .filter(|&e| e <= i64::MAX as u64)
                    .ok_or_else(|| corrupt("the log's offsets are exhausted"))?;
                let word = len | if token.is_some() { LOG_FDS } else { 0 };
                let mut header = [0u8; LOG_HDR as usize];
                header[..8].copy_from_slice(&word.to_le_bytes());
                header[8..].copy_from_slice(&(!word).to_le_bytes());
                self.log.write_all_at(&header, log_tail)?;
                self.log.write_all_at(payload, log_tail + LOG_HDR)?;
                self.log
                    .write_all_at(suffix, log_tail + LOG_HDR + payload.len() as u64)?;
                self.u64(O_LOG_TAIL).store(end, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Whether the log holds nothing (then a put may use the ring).
    fn log_empty(&self, log_tail: u64) -> bool {
        // Our view of the log's head is a lower bound: equal to the tail means truly empty.
        if self.seen.log_head.load(Ordering::Relaxed) == log_tail {
            return true;
        }
        let log_head = self.u64(O_LOG_HEAD).load(Ordering::Acquire);
        self.seen.log_head.store(log_head, Ordering::Relaxed);
        log_head == log_tail
    }

    /// Waits, while consumers are at work, for a log that is not empty to drain; whether it did (then
    /// this put, and the ones after it, go to the ring again).
    ///
    /// # Leaving the log
    /// Once an item is in the log, every later put must go there too (the FIFO rule), until the log
    /// is empty. A producer at least as fast as the consumer keeps it from ever being empty, and the
    /// queue would stay in the log, at a system call or three per item, for the rest of its life
    /// (three quarters of the 4 KiB figure's speed, lost at random: the log is entered whenever the
    /// consumer is off its CPU for [`STILL`]). So a producer that finds the log holding items while
    /// a consumer is taking (the take count moved within the last [`STILL`]) waits for the log to
    /// empty rather than add to it, as it waits for room in a full ring: a consumer at work drains
    /// it at its own pace, and the items after it go to the ring. With no consumer at work (none has
    /// taken for [`STILL`]) the put goes to the log at once, as an unbounded queue's put must not
    /// wait for a consumer that may never come.
    fn log_drained(&self, log_tail: u64) -> bool {
        let mut got = self.u64(O_GOT_COUNT).load(Ordering::Acquire);
        let now = Instant::now();
        let mut moved = if got != self.seen.got.load(Ordering::Relaxed) {
            self.seen.got.store(got, Ordering::Relaxed);
            self.seen.got_moved.store(nanos(now), Ordering::Relaxed);
            now
        } else {
            match self.seen.got_moved.load(Ordering::Relaxed) {
                0 => return false,
                at => epoch() + Duration::from_nanos(at),
            }
        };
        loop {
            if self.log_empty(log_tail) {
                return true;
            }
            if moved.elapsed() >= STILL {
                return false;
            }
            let next = ROOM_SPIN.until(Wait::Forever, || {
                let now = self.u64(O_GOT_COUNT).load(Ordering::Acquire);
                (now != got).then_some(now)
            });
            if let Some(now) = next {
                got = now;
                moved = Instant::now();
                self.seen.got.store(got, Ordering::Relaxed);
                self.seen.got_moved.store(nanos(moved), Ordering::Relaxed);
            }
        }
    }

    /// Whether `need` bytes fit in the ring at `tail`. A full ring whose head is moving (a consumer
    /// is taking) is waited for: going to the log would slow every item after this one down until
    /// the log drains, while a consumer frees room in microseconds. A head that stands still for
    /// [`STILL`] means nobody is taking (or the consumer is busy with something else): then the item
    /// goes to the log. (A count of looks instead of a time proved too short: a consumer's page fault
    /// or a timer tick sent whole batches to the log.)
    fn ring_room(&self, tail: u64, need: u64) -> Result<bool, Fail> {
        let cap = u64::from(self.cap);
        let fits = |head: u64| self.span(head, tail).map(|used| need <= cap - used);
        // Our view of the head is a lower bound: if the record fits by it, it fits.
        if fits(self.seen.head.load(Ordering::Relaxed)).unwrap_or(false) {
            return Ok(true);
        }
        let mut head = self.u64(O_HEAD).load(Ordering::Acquire);
        if fits(head)? {
            self.seen.head.store(head, Ordering::Relaxed);
            return Ok(true);
        }
        // The ring is full: wait for a good part of it to be free, not just this record's room, so
        // that producer and consumer do not pull the head's and tail's cache lines back and forth
        // at every record.
        let slack = cap / 16;
        let roomy = |head: u64| self.span(head, tail).map(|used| need + slack <= cap - used);
        let mut moved = Instant::now();
        loop {
            self.seen.head.store(head, Ordering::Relaxed);
            if roomy(head)? {
                return Ok(true);
            }
            // Stay awake (spinning, then yielding while that is cheap: a consumer may be waiting
            // for our CPU) for the head to move.
            let next = ROOM_SPIN.until(Wait::Forever, || {
                let now = self.u64(O_HEAD).load(Ordering::Acquire);
                (now != head).then_some(now)
            });
            match next {
                Some(now) => {
                    head = now;
                    moved = Instant::now();
                }
                None if moved.elapsed() >= STILL => return fits(head),
                None => {}
            }
        }
    }

    /// The ring bytes between `head` and `tail`, checked to be at most the ring's size.
    fn span(&self, head: u64, tail: u64) -> Result<u64, Fail> {
        let cap = u64::from(self.cap);
        match tail.checked_sub(head) {
            Some(used) if used <= cap => Ok(used),
            _ => Err(corrupt(format!(
                "the ring's head {head} and tail {tail} are more than its {cap} bytes apart"
            ))),
        }
    }

    /// Copies `src` into the ring at position `pos`, wrapping around its end.
    fn ring_write(&self, pos: u64, src: &[u8]) -> io::Result<()> {
        let at = (pos & u64::from(self.cap - 1)) as usize;
        let first = src.len().min(self.cap as usize - at);
        self.region.write_at(HEADER + at, &src[..first])?;
        if first < src.len() {
            self.region.write_at(HEADER, &src[first..])?;
        }
        Ok(())
    }

    /// Appends `n` bytes from the ring at position `pos` to `buf`, wrapping around its end.
    fn ring_read_append(&self, pos: u64, n: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        let at = (pos & u64::from(self.cap - 1)) as usize;
        let first = n.min(self.cap as usize - at);
        self.region.read_append(HEADER + at, first, buf)?;
        if first < n {
            self.region.read_append(HEADER, n - first, buf)?;
        }
        Ok(())
    }

    /// Copies from the ring at position `pos` into `dst`, wrapping around its end.
    fn ring_read(&self, pos: u64, dst: &mut [u8]) -> io::Result<()> {
        let at = (pos & u64::from(self.cap - 1)) as usize;
        let first = dst.len().min(self.cap as usize - at);
        let (a, b) = dst.split_at_mut(first);
        self.region.read_at(HEADER + at, a)?;
        if !b.is_empty() {
            self.region.read_at(HEADER, b)?;
        }
        Ok(())
    }

    /// Takes the oldest item's encoded payload into `buf`.
    pub(crate) fn get(&self, buf: &mut Vec<u8>, wait: Wait) -> Result<Got, Fail> {
        let held = self.lock(O_GET_LOCK, wait)?;
        let got = self.u64(O_GOT_COUNT).load(Ordering::Relaxed);
        let mut put = self.seen.put.load(Ordering::Relaxed);
        while put <= got {
            // Empty by our view (or other consumers took past it): look at the real count, noting
            // the sequence first so that a put between the two is not slept through.
            let seq = self.u32(O_PUT_SEQ).load(Ordering::Acquire);
            put = self.u64(O_PUT_COUNT).load(Ordering::Acquire);
            self.seen.put.store(put, Ordering::Relaxed);
            if put < got {
                return Err(corrupt(format!(
                    "{got} items were taken but only {put} put"
                )));
            }
            if put == got && !self.items().wait_change(seq, wait) {
                return Err(Fail::WouldBlock);
            }
        }
        if put - got > u64::from(MAX_ITEMS) {
            return Err(corrupt(format!(
                "{} items are queued, more than a queue holds",
                put - got
            )));
        }

        let head = self.u64(O_HEAD).load(Ordering::Relaxed);
        let log_head = self.u64(O_LOG_HEAD).load(Ordering::Relaxed);
        let (new_head, new_log_head, token) = self.take(buf, head, log_head)?;
        let fds = match token {
            None => Ok(Vec::new()),
            Some(token) => self.recv_fds(token),
        };
        if let Err(why) = &fds {
            crate::trace::event!(warn, "an item's descriptors did not come with it: {why}");
        }

        // The journal (the count to commit, then the new positions), the commit, then the positions.
        self.u64(O_GJ_COUNT).store(got + 1, Ordering::Release);
        self.u64(O_GJ_HEAD).store(new_head, Ordering::Release);
        self.u64(O_GJ_LOG_HEAD)
            .store(new_log_head, Ordering::Release);
        self.u64(O_GOT_COUNT).store(got + 1, Ordering::Release);
        self.u64(O_HEAD).store(new_head, Ordering::Release);
        self.u64(O_LOG_HEAD).store(new_log_head, Ordering::Release);
        self.u32(O_GOT_SEQ).fetch_add(1, Ordering::AcqRel);
        if new_log_head != log_head {
            let emptied = new_log_head == self.u64(O_LOG_TAIL).load(Ordering::Acquire);
            self.punch(new_log_head, emptied);
        }
        drop(held);
        self.room().notify(1);
        Ok(Got { fds })
    }

    /// Reads the record at the head (ring first, then log) into `buf`; gives the new positions and
    /// the record's descriptor token, if it has one (taken off the payload).
    fn take(
        &self,
        buf: &mut Vec<u8>,
        head: u64,
        log_head: u64,
    ) -> Result<(u64, u64, Option<u64>), Fail> {
        let cap = u64::from(self.cap);
        // Our view of the tail is a lower bound: if it shows bytes past the head, they are there.
        let mut tail = self.seen.tail.load(Ordering::Relaxed);
        if tail <= head {
            tail = self.u64(O_TAIL).load(Ordering::Acquire);
            self.seen.tail.store(tail, Ordering::Relaxed);
        }
        let available = self.span(head, tail)?;
        if available > 0 {
            let mut header = [0u8; RING_HDR];
            self.ring_read(head, &mut header)?;
            let (len, fds) = ring_record(header, available, cap / 2).map_err(corrupt)?;
            buf.clear();
            self.ring_read_append(head + RING_HDR as u64, len as usize, buf)?;
            let need = ring_need(len as usize).unwrap_or(0);
            return Ok((head + need, log_head, fds.then(|| split_token(buf))));
        }
        let log_tail = self.u64(O_LOG_TAIL).load(Ordering::Acquire);
        let available = log_tail.checked_sub(log_head).ok_or_else(|| {
            corrupt(format!(
                "the log's head {log_head} is past its tail {log_tail}"
            ))
        })?;
        if available < LOG_HDR {
            return Err(corrupt(format!(
                "an item is counted but the log holds only {available} bytes"
            )));
        }
        // Small records come from what this process read ahead of the head: one `pread` per run of
        // records instead of two (and an `fstat`) per record.
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        if ahead.get(log_head, LOG_HDR).is_none() {
            self.read_ahead(&mut ahead, log_head, available)?;
        }
        let mut header = [0u8; LOG_HDR as usize];
        header.copy_from_slice(
            ahead
                .get(log_head, LOG_HDR)
                .unwrap_or(&[0; LOG_HDR as usize]),
        );
        let (len, fds) = log_record(header, available).map_err(corrupt)?;
        buf.clear();
        match ahead.get(log_head + LOG_HDR, len) {
            Some(bytes) => buf.extend_from_slice(bytes),
            None => {
                drop(ahead);
                self.read_record(buf, log_head, len)?;
            }
        }
        let need = log_need(len).unwrap_or(0);
        Ok((head, log_head + need, fds.then(|| split_token(buf))))
    }

    /// Reads up to [`READ_AHEAD`] bytes of the log from `log_head` (of the `available` published
    /// there, and of what the file holds) into `ahead`.
    fn read_ahead(&self, ahead: &mut ReadAhead, log_head: u64, available: u64) -> Result<(), Fail> {
        let in_file = self.log.metadata()?.len().saturating_sub(log_head);
        let n = available.min(in_file).min(READ_AHEAD);
        if n < LOG_HDR {
            return Err(corrupt(format!(
                "an item is counted but the log's file holds only {in_file} bytes past its head"
            )));
        }
        ahead.start = log_head;
        ahead.bytes.clear();
        ahead.bytes.resize(n as usize, 0);
        self.log.read_exact_at(&mut ahead.bytes, log_head)?;
        Ok(())
    }

    /// Reads a record's `len` payload bytes straight from the file (a record too large to have been
    /// read ahead), after checking that the file holds them.
    fn read_record(&self, buf: &mut Vec<u8>, log_head: u64, len: u64) -> Result<(), Fail> {
        let meta = self.log.metadata()?;
        let in_file = meta.len().saturating_sub(log_head + LOG_HDR);
        // The file is sparse: its size costs nothing to forge, the memory behind it does. A real
        // record's bytes were written, so they are allocated.
        let allocated = std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512);
        if len > in_file || len > allocated {
            return Err(corrupt(format!(
                "log record of {len} bytes is longer than the {in_file} bytes in the file \
                 ({allocated} allocated)"
            )));
        }
        buf.resize(len as usize, 0);
        self.log.read_exact_at(buf, log_head + LOG_HDR)?;
        Ok(())
    }

    /// Gives back the log's pages wholly below `log_head`, once they add up to [`PUNCH_EVERY`] (a
    /// hole punch takes the file's lock, which the producers' writes wait for) or the log is empty.
    fn punch(&self, log_head: u64, emptied: bool) {
        let punched = self.u64(O_PUNCHED);
        let from = punched.load(Ordering::Relaxed);
        let to = log_head & !(PAGE - 1);
        if to > from && (emptied || to - from >= PUNCH_EVERY) {
            // A failure leaves the pages allocated until the next punch covers them.
            match sys::shm::punch_hole(self.log.as_fd(), from, to - from) {
                Ok(()) => punched.store(to, Ordering::Relaxed),
                Err(e) => {
                    crate::trace::event!(debug, "a queue's log keeps {} bytes: {e}", to - from)
                }
            }
        }
    }

    /// Marks one item done (`JoinableQueue::task_done`); false if every item put is already done.
    pub(crate) fn task_done(&self) -> bool {
        let done = self.u32(O_DONE);
        let mut d = done.load(Ordering::Relaxed);
        loop {
            let unfinished = self.put_low().wrapping_sub(d);
            if unfinished == 0 || unfinished > MAX_ITEMS {
                return false;
            }
            match done.compare_exchange_weak(
                d,
                d.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => d = now,
            }
        }
        if self.unfinished() == 0 {
            self.done().notify(u32::MAX);
        }
        true
    }

    /// The put count modulo 2^32, to compare with the (32-bit, futex) done count.
    fn put_low(&self) -> u32 {
        self.u64(O_PUT_COUNT).load(Ordering::Acquire) as u32
    }

    /// Items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u32 {
        let d = self.u32(O_DONE).load(Ordering::Acquire);
        self.put_low().wrapping_sub(d).min(MAX_ITEMS)
    }

    /// Waits until every item put is done; false if `wait` ran out first.
    pub(crate) fn join(&self, wait: Wait) -> bool {
        loop {
            let d = self.u32(O_DONE).load(Ordering::Acquire);
            if self.put_low() == d {
                return true;
            }
            if !self.done().wait_change(d, wait) {
                return self.unfinished() == 0;
            }
        }
    }
}

/// Test and fuzzing access to the raw state.
#[cfg(test)]
impl Shared {
    pub(crate) fn poke_u32(&self, at: usize, v: u32) {
        self.u32(at).store(v, Ordering::SeqCst);
    }

    pub(crate) fn poke_u64(&self, at: usize, v: u64) {
        self.u64(at).store(v, Ordering::SeqCst);
    }

    pub(crate) fn peek_u64(&self, at: usize) -> u64 {
        self.u64(at).load(Ordering::SeqCst)
    }
}

/// The words a fuzzer may forge (see `crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
impl Shared {
    /// Overwrites the published state with `words` (put count, got count, head, tail, log head, log
    /// tail), the ring with `ring` and the log with `log`, as a confused or hostile process could.
    pub(crate) fn forge(&self, words: [u64; 6], ring: &[u8], log: &[u8]) -> io::Result<()> {
        for (at, v) in [
            O_PUT_COUNT,
            O_GOT_COUNT,
            O_HEAD,
            O_TAIL,
            O_LOG_HEAD,
            O_LOG_TAIL,
        ]
        .into_iter()
        .zip(words)
        {
            self.u64(at).store(v, Ordering::Release);
        }
        let n = ring.len().min(self.cap as usize);
        self.region.write_at(HEADER, &ring[..n])?;
        self.log.write_all_at(log, 0)
    }
}
