//! The value codec, and the side channel that lets descriptors travel inside values.
//!
//! Values are encoded with bincode 1 (fixed-width integers, little endian), pinned at 1.3.3. The
//! codec is chosen by measurement (`bench/` group `codec`, which also probes each candidate with
//! hostile input): bincode 1 is the fastest on every shape (about 1.2 to 1.6 times the fastest
//! maintained alternative, musli with fixed-width integers, on small structs and integer vectors;
//! postcard 2.4 and 5 times slower), and with a decode limit equal to the message's length it
//! refuses forged lengths without allocating for them. The bincode project has stopped
//! (RUSTSEC-2025-0141, "unmaintained", no vulnerability): 1.3.3 is a frozen format, which is what a
//! wire needs, and the pin keeps it so. Its successors bincode 2 and bincode-next allocate a forged
//! string length before reading it, so they are not candidates.
//!
//! One hostile input is not refused: a collection of zero-sized values (`Vec<()>`) with a forged
//! count of 2^60 costs no bytes per element, so decoding it loops for that count (postcard does the
//! same). Only types that contain such collections are exposed.
//!
//! Objects that own a descriptor (a [`Connection`](crate::Connection), and later locks, queues and
//! shared memory) cannot put the descriptor's number in the bytes: numbers mean nothing in another
//! process. Instead, while [`encode`] runs, their `Serialize` impl hands the descriptor to a thread-local
//! list and writes its index; the list travels beside the bytes as `SCM_RIGHTS`. While [`decode`] runs,
//! the received descriptors sit in a thread-local table, and `Deserialize` takes the one at its index.
//! Serialising such an object outside of this crate's `send`/`spawn` is an error, not a silent copy of a
//! number.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

thread_local! {
    static OUTGOING: RefCell<Vec<Option<Vec<RawFd>>>> = const { RefCell::new(Vec::new()) };
    static INCOMING: RefCell<Vec<Vec<Option<OwnedFd>>>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// Set while encoding what will leave this machine through a broker (nonzero: how deep).
    static LEAVING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Set for good in a broker worker's local processes: everything they encode is a result that
/// goes back through the broker.
static PROCESS_LEAVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the value being encoded will leave this machine through a broker, in clear: objects
/// that travel as their key (a `Manager`, a proxy, a `Queue` on a broker) refuse to.
pub(crate) fn leaves_machine() -> bool {
    PROCESS_LEAVING.load(std::sync::atomic::Ordering::Relaxed)
        || LEAVING.try_with(|l| l.get() > 0).unwrap_or(false)
}

/// Marks this process as a broker worker's local process (see [`leaves_machine`]).
#[cfg(feature = "cluster")]
pub(crate) fn mark_process_leaving() {
    PROCESS_LEAVING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The refusal of an object whose key would travel in clear.
pub(crate) const KEY_WOULD_LEAVE: &str = "cannot travel through a broker: its key would be \
     stored there in clear; send its address or name, and build it with the key on the other side";

/// [`encode`], for bytes that will leave this machine through a broker when `leaving` is set.
pub(crate) fn encode_leaving<T: Serialize + ?Sized>(
    value: &T,
    leaving: bool,
) -> Result<(Vec<u8>, Vec<RawFd>), String> {
    leaving_if(leaving, || encode(value))
}

/// Runs `f` (an encode) as one whose bytes leave this machine through a broker, if `leaving`.
pub(crate) fn leaving_if<R>(leaving: bool, f: impl FnOnce() -> R) -> R {
    if !leaving {
        return f();
    }
    let _ = LEAVING.try_with(|l| l.set(l.get() + 1));
    let r = f();
    let _ = LEAVING.try_with(|l| l.set(l.get().saturating_sub(1)));
    r
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding()
}

/// Encodes `value`, collecting the descriptors of the objects it contains. The descriptors are
/// borrowed from `value`: send them before `value` is dropped.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<RawFd>), String> {
    let mut buf = Vec::new();
    let fds = encode_into(&mut buf, value)?;
    Ok((buf, fds))
}

/// [`encode`] into `buf` (cleared first); gives the descriptors collected.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<Vec<RawFd>, String> {
    buf.clear();
    // `try_with`: this also runs from the at-exit handler, after thread-locals are destroyed; then
    // values simply cannot carry descriptors.
    let _ = OUTGOING.try_with(|o| o.borrow_mut().push(Some(Vec::new())));
    // `serialize_into`, not `serialize`: the latter runs a size-counting pass first, which would run
    // every `Serialize` impl (and register every descriptor) twice.
    let done = options().serialize_into(&mut *buf, value);
    let fds = OUTGOING
        .try_with(|o| o.borrow_mut().pop().flatten().unwrap_or_default())
        .unwrap_or_default();
    done.map(|()| fds).map_err(|e| e.to_string())
}

/// The descriptors `value` would send, without producing its bytes (a size-counting pass).
pub(crate) fn collect_fds<T: Serialize + ?Sized>(value: &T) -> Vec<RawFd> {
    let _ = OUTGOING.try_with(|o| o.borrow_mut().push(Some(Vec::new())));
    let _ = options().serialized_size(value);
    OUTGOING
        .try_with(|o| o.borrow_mut().pop().flatten().unwrap_or_default())
        .unwrap_or_default()
}

/// Decodes a `T` from `bytes`, giving objects inside it the descriptors in `fds` (by index).
/// Descriptors no object claimed are closed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, String> {
    let _ = INCOMING.try_with(|i| i.borrow_mut().push(fds.into_iter().map(Some).collect()));
    // The limit bounds every length prefix inside the payload by the payload's own size, so a forged
    // inner length cannot make bincode allocate more than the message holds.
    let value = options().with_limit(bytes.len() as u64).deserialize(bytes);
    let _ = INCOMING.try_with(|i| i.borrow_mut().pop());
    value.map_err(|e| e.to_string())
}

/// [`decode`] through a seed (no descriptors): for decoding straight into a caller's buffer.
pub(crate) fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, String> {
    let _ = INCOMING.try_with(|i| i.borrow_mut().push(Vec::new()));
    let value = options()
        .with_limit(bytes.len() as u64)
        .deserialize_seed(seed, bytes);
    let _ = INCOMING.try_with(|i| i.borrow_mut().pop());
    value.map_err(|e| e.to_string())
}

/// Called by `Serialize` impls of descriptor-owning objects: registers `fd` for the message being
/// encoded and returns its index, or `None` when no encode of this crate is running.
pub(crate) fn push_fd(fd: BorrowedFd<'_>) -> Option<u32> {
    OUTGOING
        .try_with(|o| {
            let mut o = o.borrow_mut();
            let list = o.last_mut()?.as_mut()?;
            list.push(fd.as_raw_fd());
            Some(list.len() as u32 - 1)
        })
        .ok()
        .flatten()
}

/// Called by `Deserialize` impls: takes the received descriptor at `index`.
pub(crate) fn take_fd(index: u32) -> Result<OwnedFd, String> {
    let gone = || "descriptor-carrying objects cannot be decoded during thread exit".to_string();
    INCOMING
        .try_with(|i| {
            let mut i = i.borrow_mut();
            let Some(table) = i.last_mut() else {
                return Err(
                    "descriptor-carrying objects can only be decoded by multiprocess".to_string(),
                );
            };
            match table.get_mut(index as usize) {
                Some(slot) => slot
                    .take()
                    .ok_or_else(|| format!("descriptor {index} claimed twice")),
                None => Err(format!(
                    "message refers to descriptor {index}, but only {} arrived",
                    table.len()
                )),
            }
        })
        .unwrap_or_else(|_| Err(gone()))
}

/// Serializes an object that owns descriptor `fd` as its index in the message's descriptor list.
fn serialize_fd<S: serde::Serializer>(
    fd: BorrowedFd<'_>,
    what: &str,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    match push_fd(fd) {
        Some(index) => serde::Serialize::serialize(&index, s),
        None => Err(S::Error::custom(format!(
            "a {what} can only be serialized by multiprocess (a Connection's send, or a process argument)"
        ))),
    }
}

/// A descriptor that serializes as its index in the message's descriptor list (see
/// [`serialize_fd`]); the name says what owns it, for the error outside of this crate's encoders.
/// With [`ReceivedFd`], the one serde wrapper of every object that travels as descriptors.
pub(crate) struct FdRef<'a>(pub(crate) BorrowedFd<'a>, pub(crate) &'static str);

impl serde::Serialize for FdRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, self.1, s)
    }
}

/// A received descriptor: the inverse of [`FdRef`].
pub(crate) struct ReceivedFd(pub(crate) OwnedFd);

impl<'de> serde::Deserialize<'de> for ReceivedFd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(ReceivedFd)
    }
}

/// Deserializes a shared-memory object: takes its descriptor, checks that it is a sealed memfd of
/// kind `kind` (see `sys::shm`), maps it, and checks that it holds at least `min_len` bytes (a
/// smaller region sent by a confused or hostile peer is an error, not a read past the mapping).
pub(crate) fn deserialize_region<'de, D: serde::Deserializer<'de>>(
    d: D,
    min_len: usize,
    kind: &str,
    what: &str,
) -> Result<crate::sys::shm::Region, D::Error> {
    use serde::de::Error;
    let fd = deserialize_fd(d)?;
    let region = crate::sys::shm::Region::receive(fd, kind, false).map_err(D::Error::custom)?;
    if region.len() < min_len {
        return Err(D::Error::custom(format!(
            "a {what}'s shared memory is too small"
        )));
    }
    Ok(region)
}

/// The inverse of [`serialize_fd`].
fn deserialize_fd<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = <u32 as serde::Deserialize>::deserialize(d)?;
    take_fd(index).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_round_trip() {
        let v = (1u32, "two".to_string(), vec![3.0f64; 3]);
        let (bytes, fds) = encode(&v).unwrap();
        assert!(fds.is_empty());
        assert_eq!(
            decode::<(u32, String, Vec<f64>)>(&bytes, vec![]).unwrap(),
            v
        );
    }

    #[test]
    fn forged_inner_length_is_an_error_not_an_allocation() {
        // A Vec<u8> claiming 2^60 elements in an 8-byte payload.
        let bytes = (1u64 << 60).to_le_bytes();
        assert!(decode::<Vec<u8>>(&bytes, vec![]).is_err());
    }

    #[test]
    fn descriptors_are_collected_once() {
        let (a, _b) = crate::pipe().unwrap();
        let (_, fds) = encode(&vec![&a, &a]).unwrap();
        assert_eq!(fds.len(), 2);
        assert_eq!(collect_fds(&(&a, 1u8)).len(), 1);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let (mut bytes, _) = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(decode::<u32>(&bytes, vec![]).is_err());
    }
}
