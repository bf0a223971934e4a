//! The bytes of a broker entry: what a caller puts on the task stream and a worker on a caller's
//! result stream.
//!
//! # Why every entry is authenticated
//! A task names the functions it runs by their offset in this program's image (see
//! `sys::entry`): a worker that believed any bytes on the stream would jump wherever whoever can
//! write to the broker told it to. So an entry is only ever decoded after its HMAC-SHA256, under
//! the pool's key, checks out: it was written by a holder of the key. It also carries the writer's
//! build ID; a worker resolves a task's tokens only when that build is its own (a token of
//! another build names another function, or none). Results are authenticated the same way, so a
//! stranger cannot hand a caller a result.
//!
//! # Layout
//! One stream field, `m`, holds:
//!
//! ```text
//! "mpC1" | kind (1 byte) | build length B (1 byte, at most 64) | build (B bytes)
//!        | HMAC-SHA256 (32 bytes) over everything before it and the body | body (bincode)
//! ```
//!
//! A body is decoded with the crate's codec, whose length limit is the body's own size, so a
//! forged length inside cannot make it allocate more than the entry holds.

use super::hex;
use crate::codec;
use crate::pool::TaskError;
use crate::pool::worker::Chunk;
use crate::sys::entry::Func;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::Sha256;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"mpC1";
const MAC_LEN: usize = 32;
const MAX_BUILD: usize = 64;
/// The most bytes an entry may hold (larger payloads go beside the stream as blobs).
pub(crate) const MAX_ENTRY: usize = 8 << 20;
/// The largest payload kept beside the stream (Redis's own limit for a string is 512 MB).
pub(crate) const MAX_BLOB: u64 = 512 << 20;
/// Payloads above this go beside the stream, in a key of their own.
pub(crate) const BLOB_OVER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Task = 1,
    Result = 2,
    /// An item of a queue on a broker: the body is the item, in the crate's encoding.
    Item = 3,
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum EntryError {
    #[error("the entry is {0} bytes, not a pool entry")]
    Short(usize),
    #[error("the entry is {0} bytes, more than an entry may hold")]
    Large(usize),
    #[error("the entry is not a pool entry (bad magic)")]
    Magic,
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("the entry's build ID is {0} bytes long")]
    BuildLen(usize),
    #[error("the entry's authentication failed (another key, or altered bytes)")]
    Mac,
    #[error("the entry is a {got:?}, where a {want:?} was expected")]
    WrongKind { got: Kind, want: Kind },
    #[error("the entry's body does not decode: {0}")]
    Body(String),
    #[error("the entry has no `m` field")]
    NoField,
}

/// A payload: inline, or in a key of its own with its length and digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(ByteBuf),
    Blob {
        key: String,
        len: u64,
        sha256: [u8; 32],
    },
}

/// A task on the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskBody {
    /// The pool it was sent to (an entry copied into another pool's stream is refused there).
    pub(crate) pool: String,
    /// The caller's name: its results go to `Keys::results(caller)`.
    pub(crate) caller: String,
    /// The task's number at the caller.
    pub(crate) task: u64,
    pub(crate) runner: Func,
    pub(crate) func: Func,
    pub(crate) init: Option<Func>,
    pub(crate) count: u32,
    pub(crate) args: Payload,
}

impl TaskBody {
    /// The chunk to run, once its arguments are at hand.
    pub(crate) fn chunk(&self, args: ByteBuf) -> Chunk {
        Chunk {
            func: self.func.clone(),
            args,
            count: self.count,
            init: self.init.clone(),
        }
    }
}

/// A task's outcome, on a caller's result stream (an entry holds several: a `Vec<ResultBody>`,
/// written with the acknowledgement of all their tasks in one transaction).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultBody {
    /// The caller it answers (an entry copied into another caller's stream is refused there).
    pub(crate) caller: String,
    pub(crate) task: u64,
    /// The worker (consumer) that answered.
    pub(crate) consumer: String,
    pub(crate) outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The chunk's `Vec<Result<R, Failure>>`, as the local pool's workers encode it.
    Results(Payload),
    Failed(TaskError),
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// An entry of `kind` holding the encoded `body`, written by build `build`, under `key`.
pub(crate) fn encode_raw(kind: Kind, build: &[u8], key: &[u8], body: &[u8]) -> Vec<u8> {
    let build = &build[..build.len().min(MAX_BUILD)];
    let mut out = Vec::with_capacity(6 + build.len() + MAC_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.push(build.len() as u8);
    out.extend_from_slice(build);
    let mut m = mac(key);
    m.update(&out);
    m.update(body);
    out.extend_from_slice(&m.finalize().into_bytes());
    out.extend_from_slice(body);
    out
}

/// Encodes `body` as an entry (see [`encode_raw`]).
pub(crate) fn encode<T: Serialize>(
    kind: Kind,
    build: &[u8],
    key: &[u8],
    body: &T,
) -> Result<Vec<u8>, String> {
    let (body, fds) = codec::encode(body)?;
    if !fds.is_empty() {
        return Err("a broker entry cannot carry descriptors".into());
    }
    Ok(encode_raw(kind, build, key, &body))
}

/// An entry whose authentication checked out.
#[derive(Debug)]
pub(crate) struct Checked<'a> {
    pub(crate) build: &'a [u8],
    body: &'a [u8],
}

impl Checked<'_> {
    pub(crate) fn build_hex(&self) -> String {
        hex(self.build)
    }

    /// The body's bytes, undecoded.
    pub(crate) fn raw(&self) -> &[u8] {
        self.body
    }

    pub(crate) fn body<T: serde::de::DeserializeOwned>(&self) -> Result<T, EntryError> {
        codec::decode(self.body, Vec::new()).map_err(EntryError::Body)
    }
}

/// Checks an entry of kind `want` under `key`: its frame, then its MAC (in constant time). The
/// body is decoded only after this.
pub(crate) fn check<'a>(
    bytes: &'a [u8],
    want: Kind,
    key: &[u8],
) -> Result<Checked<'a>, EntryError> {
    if bytes.len() > MAX_ENTRY {
        return Err(EntryError::Large(bytes.len()));
    }
    if bytes.len() < 6 + MAC_LEN {
        return Err(EntryError::Short(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(EntryError::Magic);
    }
    let kind = match bytes[4] {
        1 => Kind::Task,
        2 => Kind::Result,
        3 => Kind::Item,
        k => return Err(EntryError::Kind(k)),
    };
    let b = bytes[5] as usize;
    if b > MAX_BUILD {
        return Err(EntryError::BuildLen(b));
    }
    let head = 6 + b;
    if bytes.len() < head + MAC_LEN {
        return Err(EntryError::Short(bytes.len()));
    }
    let (framed, rest) = bytes.split_at(head);
    let (tag, body) = rest.split_at(MAC_LEN);
    let mut m = mac(key);
    m.update(framed);
    m.update(body);
    m.verify_slice(tag).map_err(|_| EntryError::Mac)?;
    if kind != want {
        return Err(EntryError::WrongKind { got: kind, want });
    }
    Ok(Checked {
        build: &framed[6..],
        body,
    })
}

/// The `m` field of a stream entry's fields.
pub(crate) fn field(
    map: &std::collections::HashMap<String, redis::Value>,
) -> Result<&[u8], EntryError> {
    match map.get("m") {
        Some(redis::Value::BulkString(b)) => Ok(b),
        _ => Err(EntryError::NoField),
    }
}

/// For the fuzz target: checks `bytes` as a task and as a result under a fixed key and decodes
/// the bodies that pass. Never panics.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_decode(bytes: &[u8]) -> Result<String, String> {
    const KEY: &[u8] = b"fuzz";
    let mut out = String::new();
    match check(bytes, Kind::Task, KEY) {
        Ok(c) => out.push_str(&format!(
            "{:?}",
            c.body::<TaskBody>().map_err(|e| e.to_string())?
        )),
        Err(e) => out.push_str(&e.to_string()),
    }
    match check(bytes, Kind::Result, KEY) {
        Ok(c) => out.push_str(&format!(
            "{:?}",
            c.body::<Vec<ResultBody>>().map_err(|e| e.to_string())?
        )),
        Err(e) => out.push_str(&e.to_string()),
    }
    // Bodies as a holder of the key could write them (the MAC is no obstacle to a key holder).
    let _ = codec::decode::<TaskBody>(bytes, Vec::new());
    let _ = codec::decode::<Vec<ResultBody>>(bytes, Vec::new());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ResultBody {
        ResultBody {
            caller: "c".into(),
            task: 7,
            consumer: "c".into(),
            outcome: Outcome::Failed(TaskError::WorkerLost { deliveries: 3 }),
        }
    }

    #[test]
    fn an_entry_round_trips_and_every_alteration_is_refused() {
        let e = encode(Kind::Result, b"build", b"key", &body()).unwrap();
        let c = check(&e, Kind::Result, b"key").unwrap();
        assert_eq!(c.build, b"build");
        let back: ResultBody = c.body().unwrap();
        assert_eq!(back.task, 7);
        assert!(matches!(
            back.outcome,
            Outcome::Failed(TaskError::WorkerLost { deliveries: 3 })
        ));
        assert_eq!(
            check(&e, Kind::Result, b"other").unwrap_err(),
            EntryError::Mac
        );
        assert!(matches!(
            check(&e, Kind::Task, b"key").unwrap_err(),
            EntryError::WrongKind { .. }
        ));
        for i in 0..e.len() {
            let mut bad = e.clone();
            bad[i] ^= 1;
            assert!(check(&bad, Kind::Result, b"key").is_err(), "byte {i}");
        }
        for n in 0..e.len() {
            assert!(check(&e[..n], Kind::Result, b"key").is_err(), "prefix {n}");
        }
    }

    #[test]
    fn a_forged_body_under_the_key_is_an_error_not_a_panic() {
        // A holder of the key writing nonsense: a length that claims more than the body holds.
        let mut m = mac(b"key");
        let mut e = Vec::from(&MAGIC[..]);
        e.extend_from_slice(&[2, 0]);
        let body = [0xffu8; 16];
        m.update(&e);
        m.update(&body);
        e.extend_from_slice(&m.finalize().into_bytes());
        e.extend_from_slice(&body);
        let c = check(&e, Kind::Result, b"key").unwrap();
        assert!(matches!(c.body::<ResultBody>(), Err(EntryError::Body(_))));
    }

    /// Real entries (a task, a result, an item) under the fuzz target's key, and every one-byte
    /// change and prefix of them, through the fuzz entry point: answers, never panics. With
    /// `MP_WRITE_FUZZ_SEEDS=dir` the entries are written there as the target's seeds.
    #[test]
    fn the_fuzz_entry_point_answers_real_and_altered_entries() {
        use crate::sys::entry::Func;
        fn f(x: u32) -> u32 {
            x
        }
        let func = Func::of(f).unwrap();
        let task = TaskBody {
            pool: "p".into(),
            caller: "host-1-00".into(),
            task: 3,
            runner: func.clone(),
            func,
            init: None,
            count: 1,
            args: Payload::Inline(ByteBuf::from(vec![1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0])),
        };
        let seeds = [
            encode(Kind::Task, b"build", b"fuzz", &task).unwrap(),
            encode(Kind::Result, b"build", b"fuzz", &vec![body(), body()]).unwrap(),
            encode_raw(Kind::Item, b"build", b"fuzz", &[7, 0, 0, 0]),
        ];
        let ok = fuzz_decode(&seeds[0]).unwrap();
        assert!(ok.contains("host-1-00"), "{ok}");
        for seed in &seeds {
            for i in 0..seed.len() {
                let mut bad = seed.clone();
                bad[i] = bad[i].wrapping_add(0x41);
                let _ = fuzz_decode(&bad);
                let _ = fuzz_decode(&seed[..i]);
            }
        }
        if let Ok(dir) = std::env::var("MP_WRITE_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(format!("{dir}/seed-{i}"), seed).unwrap();
            }
        }
    }
}
