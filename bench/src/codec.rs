//! Group `codec`: which serde format `multiprocess` should encode values with, by measurement.
//!
//! Each figure is one encode + decode round trip (median) of a shape, per codec. Every codec goes
//! through serde (`multiprocess` must take any user `T: Serialize`), and every decoder is given the
//! whole message and made to reject trailing bytes where its API can say how much it read:
//! - `bincode`: bincode 1 with fixed-width integers, as `src/codec.rs` configures it (the decoder with
//!   a size limit equal to the input's length, as there); unmaintained (RUSTSEC-2025-0141);
//! - `bincode2`: bincode 2.0.1 in serde mode, fixed-width little-endian integers, no limit (its limit
//!   is a compile-time constant, so it cannot be the input's length); unmaintained too: a reference;
//! - `bincode-next`: a community fork of bincode 2 (3.x), the same configuration;
//! - `bitcode`: `bitcode::serialize`/`deserialize` (its serde mode; its own derive cannot take an
//!   arbitrary `T: Serialize`);
//! - `postcard`: varint integers (`take_from_bytes`, trailing bytes checked);
//! - `rmp-serde`: MessagePack, structs as arrays (`rmp_serde::to_vec`/`from_slice`, which cannot
//!   report trailing bytes);
//! - `ciborium`: CBOR (`into_writer`/`from_reader` over the slice, trailing bytes checked);
//! - `minicbor-serde`: CBOR (`to_vec`, a `Deserializer` whose position is checked);
//! - `musli`: Müsli's `storage` format (its defaults: variable-length integers) through its serde
//!   layer (`musli::serde`);
//! - `musli-fixint`: the same with fixed-width little-endian integers and 64-bit lengths;
//! - `pickle (ours)`: `multiprocess::pickle::to_vec`/`from_slice` (protocol 4, the decoder's default
//!   limits): not a candidate for Rust-to-Rust messages but the codec for Python's values, so its row
//!   is the like-for-like comparison with the python column.
//!
//! Shapes: `small struct` (a `u64`, a 16-character `String`, a `Vec<u32>` of 8; ns per round trip),
//! `Vec<u64> 10k` (the squares of 0..10 000, so varints need 1 to 4 bytes each; µs per round trip) and
//! `1 MiB bytes` (a `serde_bytes::ByteBuf`; GB/s, 10⁹ B/s of payload). The python column is
//! `pickle.loads(pickle.dumps(x))` on the same shape (a tuple, a list of ints, a `bytes`): what Python's
//! `multiprocessing` does to every value it sends. It is the same for every codec row of a shape.
//!
//! The codecs of a shape are sampled in alternation (batch `i` of every codec before batch `i + 1` of
//! any), so that all of them see the same machine state. stderr gets, per shape, the ranking and each
//! codec's encoded size. The tests at the end check each codec on hostile input (forged lengths,
//! truncation, trailing bytes, mutated messages) and on the descriptor side channel's needs.

use std::hint::black_box;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::Ctx;
use crate::measure::Plan;
use crate::table::{Cell, Row, Table, Unit};

/// The codecs compared.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Codec {
    Bincode,
    Bincode2,
    BincodeNext,
    Bitcode,
    Postcard,
    Rmp,
    Ciborium,
    Minicbor,
    Musli,
    MusliFixed,
    /// `multiprocess::pickle` (protocol 4), for values exchanged with Python.
    Pickle,
}

/// Says that `read` of `len` bytes were decoded: the rest would be trailing bytes.
fn whole(read: usize, len: usize) -> Result<(), String> {
    if read == len {
        Ok(())
    } else {
        Err(format!("{} trailing bytes", len - read))
    }
}

impl Codec {
    const ALL: [Codec; 11] = [
        Codec::Bincode,
        Codec::Bincode2,
        Codec::BincodeNext,
        Codec::Bitcode,
        Codec::Postcard,
        Codec::Rmp,
        Codec::Ciborium,
        Codec::Minicbor,
        Codec::Musli,
        Codec::MusliFixed,
        Codec::Pickle,
    ];

    fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Bincode2 => "bincode2",
            Codec::BincodeNext => "bincode-next",
            Codec::Bitcode => "bitcode",
            Codec::Postcard => "postcard",
            Codec::Rmp => "rmp-serde",
            Codec::Ciborium => "ciborium",
            Codec::Minicbor => "minicbor-serde",
            Codec::Musli => "musli",
            Codec::MusliFixed => "musli-fixint",
            Codec::Pickle => "pickle (ours)",
        }
    }

    fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out, value)?;
        Ok(out)
    }

    /// Encodes `value` into `buf`, cleared first (its capacity kept, where the codec's API allows).
    fn encode_into<T: Serialize>(self, buf: &mut Vec<u8>, value: &T) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        buf.clear();
        match self {
            Codec::Bincode => bincode_options()
                .serialize_into(&mut *buf, value)
                .map_err(|x| e(&x)),
            Codec::Bincode2 => {
                bincode2::serde::encode_into_std_write(value, buf, bincode2_config())
                    .map(drop)
                    .map_err(|x| e(&x))
            }
            Codec::BincodeNext => {
                bincode_next::serde::encode_into_std_write(value, buf, bincode_next_config())
                    .map(drop)
                    .map_err(|x| e(&x))
            }
            // Its serde side has no way to write into a given buffer.
            Codec::Bitcode => {
                *buf = bitcode::serialize(value).map_err(|x| e(&x))?;
                Ok(())
            }
            Codec::Postcard => {
                *buf = postcard::to_extend(value, std::mem::take(buf)).map_err(|x| e(&x))?;
                Ok(())
            }
            Codec::Rmp => rmp_serde::encode::write(buf, value).map_err(|x| e(&x)),
            Codec::Ciborium => ciborium::into_writer(value, &mut *buf).map_err(|x| e(&x)),
            Codec::Minicbor => {
                let mut ser = minicbor_serde::Serializer::new(&mut *buf);
                value.serialize(&mut ser).map_err(|x| e(&x))
            }
            Codec::Musli => musli::storage::encode(&mut *buf, &MusliSerde(value))
                .map(drop)
                .map_err(|x| e(&x)),
            Codec::MusliFixed => MUSLI_FIXED
                .encode(&mut *buf, &MusliSerde(value))
                .map(drop)
                .map_err(|x| e(&x)),
            Codec::Pickle => {
                *buf = multiprocess::pickle::to_vec(value).map_err(|x| e(&x))?;
                Ok(())
            }
        }
    }

    fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            Codec::Bincode => bincode_options()
                .with_limit(bytes.len() as u64)
                .deserialize(bytes)
                .map_err(|x| e(&x)),
            Codec::Bincode2 => {
                let (value, read) = bincode2::serde::decode_from_slice(bytes, bincode2_config())
                    .map_err(|x| e(&x))?;
                whole(read, bytes.len()).map(|()| value)
            }
            Codec::BincodeNext => {
                let (value, read) =
                    bincode_next::serde::decode_from_slice(bytes, bincode_next_config())
                        .map_err(|x| e(&x))?;
                whole(read, bytes.len()).map(|()| value)
            }
            // Rejects trailing bytes itself.
            Codec::Bitcode => bitcode::deserialize(bytes).map_err(|x| e(&x)),
            Codec::Postcard => {
                let (value, rest) = postcard::take_from_bytes(bytes).map_err(|x| e(&x))?;
                whole(bytes.len() - rest.len(), bytes.len()).map(|()| value)
            }
            Codec::Rmp => rmp_serde::from_slice(bytes).map_err(|x| e(&x)),
            Codec::Ciborium => {
                let mut rest = bytes;
                let value = ciborium::from_reader(&mut rest).map_err(|x| e(&x))?;
                whole(bytes.len() - rest.len(), bytes.len()).map(|()| value)
            }
            Codec::Minicbor => {
                let mut de = minicbor_serde::Deserializer::new(bytes);
                let value = T::deserialize(&mut de).map_err(|x| e(&x))?;
                whole(de.decoder().position(), bytes.len()).map(|()| value)
            }
            // Rejects trailing bytes itself.
            Codec::Musli => musli::storage::from_slice::<MusliSerde<T>>(bytes)
                .map(|v| v.0)
                .map_err(|x| e(&x)),
            Codec::MusliFixed => MUSLI_FIXED
                .from_slice::<MusliSerde<T>>(bytes)
                .map(|v| v.0)
                .map_err(|x| e(&x)),
            // Refuses bytes after STOP itself.
            Codec::Pickle => multiprocess::pickle::from_slice(bytes).map_err(|x| e(&x)),
        }
    }
}

/// The options `src/codec.rs` uses.
fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding()
}

/// bincode 1's wire format in bincode 2: fixed-width little-endian integers.
fn bincode2_config() -> impl bincode2::config::Config {
    bincode2::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

/// The same for the fork.
fn bincode_next_config() -> impl bincode_next::config::Config {
    bincode_next::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

/// Müsli's `storage` format with fixed-width little-endian integers and 64-bit lengths (bincode 1's
/// choices).
const MUSLI_FIXED: musli::storage::Encoding<
    {
        musli::options::new()
            .fixed()
            .pointer(musli::options::Width::U64)
            .byte_order(musli::options::ByteOrder::Little)
            .build()
    },
> = musli::storage::Encoding::new().with_options();

/// A serde value as a Müsli value: Müsli reaches serde types only through such a wrapper.
struct MusliSerde<T>(T);

impl<M, T: Serialize> musli::Encode<M> for MusliSerde<T> {
    type Encode = Self;

    fn encode<E>(&self, encoder: E) -> Result<(), E::Error>
    where
        E: musli::Encoder<Mode = M>,
    {
        musli::serde::encode(&self.0, encoder)
    }

    fn as_encode(&self) -> &Self {
        self
    }
}

impl<'de, M, A, T> musli::Decode<'de, M, A> for MusliSerde<T>
where
    A: musli::Allocator,
    T: Deserialize<'de>,
{
    fn decode<D>(decoder: D) -> Result<Self, D::Error>
    where
        D: musli::Decoder<'de, Mode = M, Allocator = A>,
    {
        musli::serde::decode(decoder).map(MusliSerde)
    }
}

/// The `small struct` shape.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
    values: Vec<u32>,
}

fn small() -> Small {
    Small {
        id: 1_234_567_890_123,
        name: "sixteen chars ok".to_string(),
        values: (1..=8).map(|i| i * 1000).collect(),
    }
}

fn vec_u64() -> Vec<u64> {
    (0..10_000u64).map(|i| i * i).collect()
}

fn bytes_1mib() -> ByteBuf {
    ByteBuf::from(
        (0..1usize << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Checks that `codec` gives `value` back unchanged.
fn faithful<T>(codec: Codec, value: &T) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let back: T = codec.decode(&codec.encode(value)?)?;
    if back != *value {
        return Err("the value came back different".to_string());
    }
    Ok(())
}

/// A figure's batch of `ops` operations, as [`Plan::run_interleaved`] takes it.
type Batch<'a> = dyn FnMut(usize) -> Result<(), String> + 'a;

/// One batch of `ops` encode + decode round trips of `value` with `codec`, encoding into `buf` (reused
/// from batch to batch, as `multiprocess` reuses a queue's buffer).
fn round_trips<T>(codec: Codec, value: &T, buf: &mut Vec<u8>, ops: usize) -> Result<(), String>
where
    T: Serialize + DeserializeOwned,
{
    for _ in 0..ops {
        codec.encode_into(buf, black_box(value))?;
        black_box(codec.decode::<T>(black_box(buf))?);
    }
    Ok(())
}

/// Measures one shape with every codec, against pickle; returns the rows, and says on stderr how the
/// codecs rank.
fn shape_rows<T>(
    ctx: &Ctx,
    label: &str,
    py_shape: &str,
    unit: Unit,
    plan: Plan,
    value: &T,
) -> Vec<Row>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let python = ctx
        .python
        .measure("codec", &["--shape".into(), py_shape.into()], plan, unit);
    // A codec that does not give the value back is not timed: its batches fail at once.
    let checks: Vec<Result<(), String>> = Codec::ALL.iter().map(|&c| faithful(c, value)).collect();
    let mut batches: Vec<Box<Batch<'_>>> = Codec::ALL
        .iter()
        .zip(&checks)
        .map(|(&codec, check)| {
            let mut buf = Vec::new();
            Box::new(move |ops| {
                check.clone()?;
                round_trips(codec, value, &mut buf, ops)
            }) as Box<Batch<'_>>
        })
        .collect();
    let mut figures: Vec<&mut dyn FnMut(usize) -> Result<(), String>> = batches
        .iter_mut()
        .map(|b| &mut **b as &mut dyn FnMut(usize) -> Result<(), String>)
        .collect();
    let results = plan.run_interleaved(&mut figures);
    let mut timed: Vec<(Codec, f64)> = Vec::new();
    let mut rows = Vec::new();
    for (codec, secs) in Codec::ALL.into_iter().zip(results) {
        if let Ok(s) = secs {
            timed.push((codec, s));
        }
        let python = match &python {
            // Say why only once per shape.
            Cell::Unavailable(Some(_)) if codec != Codec::ALL[0] => Cell::Unavailable(None),
            other => other.clone(),
        };
        rows.push(Row::compare(
            format!("codec {} {label}", codec.name()),
            unit,
            secs,
            python,
        ));
    }
    let sizes: Vec<String> = Codec::ALL
        .iter()
        .map(|&c| match c.encode(value) {
            Ok(bytes) => format!("{} {} B", c.name(), bytes.len()),
            Err(_) => format!("{} error", c.name()),
        })
        .collect();
    eprintln!("   codec sizes on {label}: {}", sizes.join(", "));
    eprintln!("   codec ranking on {label}: {}", ranking(&mut timed));
    rows
}

/// `"a, b 1.53x, c 2.10x"`: the codecs from fastest to slowest, each with its time over the fastest's.
fn ranking(timed: &mut [(Codec, f64)]) -> String {
    timed.sort_by(|a, b| a.1.total_cmp(&b.1));
    let Some(&(_, best)) = timed.first() else {
        return "none measured".to_string();
    };
    let ranked: Vec<String> = timed
        .iter()
        .enumerate()
        .map(|(i, (codec, secs))| match i {
            0 => codec.name().to_string(),
            _ => format!("{} {:.2}x", codec.name(), secs / best),
        })
        .collect();
    ranked.join(", ")
}

/// Settles glibc's malloc for large blocks, so that every codec is timed in the same allocator state.
///
/// glibc serves blocks over its mmap threshold (128 KiB at first) with `mmap`, and raises that
/// threshold, with the heap's trim threshold at twice it, to the size of such a block when it is freed.
/// Until a block larger than 1 MiB has been freed, a 1 MiB round trip (two 1 MiB blocks) can grow and
/// trim the heap every time and fault its pages in again: 20 times slower, whatever the codec, and
/// which codec pays depends on the order they run in. Freeing one 4 MiB block first puts the
/// thresholds where a long-running program ends up anyway.
fn settle_allocator() {
    drop(black_box(Vec::<u8>::with_capacity(4 << 20)));
}

/// Runs the group.
pub(crate) fn run(ctx: &Ctx, table: &mut Table) {
    settle_allocator();
    let plan = |quick: usize, full: usize| Plan {
        warmup: 1,
        samples: ctx.pick(9, 31),
        ops: ctx.pick(quick, full),
    };
    let ns = Unit::Nanos;
    for row in shape_rows(
        ctx,
        "small struct",
        "small",
        ns,
        plan(20_000, 100_000),
        &small(),
    ) {
        table.push(row);
    }
    let us = Unit::Micros;
    for row in shape_rows(
        ctx,
        "Vec<u64> 10k",
        "vec-u64",
        us,
        plan(300, 1_500),
        &vec_u64(),
    ) {
        table.push(row);
    }
    let gbps = Unit::GigabytesPerSec((1 << 20) as f64);
    for row in shape_rows(
        ctx,
        "1 MiB bytes",
        "bytes",
        gbps,
        plan(100, 500),
        &bytes_1mib(),
    ) {
        table.push(row);
    }
}

// Hostile input and the side channel's needs, per codec. Each probe runs in a child process (this
// test binary again, running [`tests::probe_child`]), so that an abort or a hang is seen as such; the
// child's allocator records the largest allocation each decode asked for and refuses any over
// [`counting::REFUSE_ABOVE`] (the child then says so, with the message, and aborts).
// `hostile_input` prints one line per codec and probe (`cargo test -p multiprocess-bench hostile --
// --nocapture`), and fails if a codec listed in [`tests::SAFE`] fails a probe. `MP_CODEC_FUZZ_MS`
// sets how long each codec is fed mutated messages (default 300 ms).
#[cfg(test)]
mod counting {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::{Cell, RefCell};
    use std::io::Write;

    /// Larger requests are refused: a decoder asking for that much from a small message is a finding.
    pub(crate) const REFUSE_ABOVE: usize = 256 << 20;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
        static CURRENT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Names the message being decoded, for the report of a refused allocation.
    pub(crate) fn set_current(message: &[u8]) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            c.clear();
            c.extend_from_slice(message);
        });
    }

    /// Says on stderr how much was asked for, decoding which message, and aborts.
    fn refuse(size: usize) -> ! {
        let mut err = std::io::stderr();
        let _ = err.write_all(b"PROBE REFUSED ");
        let _ = err.write_all(size.to_string().as_bytes());
        let _ = err.write_all(b" bytes, decoding ");
        let _ = CURRENT.try_with(|c| {
            if let Ok(c) = c.try_borrow() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for b in c.iter().take(256) {
                    let _ = err.write_all(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                }
            }
        });
        let _ = err.write_all(b"\n");
        std::process::abort()
    }

    /// The system allocator, recording on each thread the largest request since [`take_largest`].
    pub(crate) struct Counting;

    fn note(size: usize) -> bool {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        if size > REFUSE_ABOVE {
            refuse(size);
        }
        true
    }

    /// The largest request this thread made since the last call.
    pub(crate) fn take_largest() -> usize {
        LARGEST.try_with(|l| l.replace(0)).unwrap_or(0)
    }

    // SAFETY: every call is forwarded to `System` unchanged, or refused with a null pointer, which
    // `GlobalAlloc` allows.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !note(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if !note(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !note(new_size) {
                return std::ptr::null_mut();
            }
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::io::Read as _;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// The codecs whose every probe must pass (the others' findings are only printed): bincode 2 and
    /// its fork abort on a forged string length (they allocate it before reading), bitcode panics on
    /// a value whose items serialize as different types, rmp-serde accepts trailing bytes.
    const SAFE: [Codec; 7] = [
        Codec::Bincode,
        Codec::Postcard,
        Codec::Ciborium,
        Codec::Minicbor,
        Codec::Musli,
        Codec::MusliFixed,
        Codec::Pickle,
    ];

    const PROBES: [&str; 4] = ["truncated", "mutated", "side-channel", "mixed-shapes"];

    /// How much a decode may allocate at once from a message of `len` bytes: serde's own cap on the
    /// capacity it reserves from a length it was told (1 MiB), or what the message itself holds.
    fn allowed(len: usize) -> usize {
        (1 << 20).max(4 * len)
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Circle(f64),
        Rect { w: u32, h: u32 },
    }

    /// A value using most of serde's data model.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Composite {
        flag: bool,
        small: i8,
        name: Option<String>,
        pairs: Vec<(u8, Vec<u32>)>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, i64>,
        blob: ByteBuf,
    }

    fn composite() -> Composite {
        Composite {
            flag: true,
            small: -3,
            name: Some("composite".into()),
            pairs: vec![(1, vec![1, 2, 3]), (2, vec![]), (3, vec![u32::MAX])],
            shapes: vec![Shape::Unit, Shape::Circle(1.5), Shape::Rect { w: 3, h: 4 }],
            map: [("a".to_string(), -1), ("bb".to_string(), i64::MIN)].into(),
            blob: ByteBuf::from(vec![0xaa; 40]),
        }
    }

    /// The kinds of length a forged message lies about.
    #[derive(Clone, Copy)]
    enum Kind {
        Seq,
        Str,
        Bytes,
    }

    /// The start of a message of `codec` whose outermost value is a sequence, string or byte string
    /// of `len` elements.
    fn forged_header(codec: Codec, kind: Kind, len: u64) -> Vec<u8> {
        match codec {
            Codec::Bincode | Codec::Bincode2 | Codec::BincodeNext | Codec::MusliFixed => {
                len.to_le_bytes().to_vec()
            }
            Codec::Postcard | Codec::Musli => codec.encode(&len).unwrap(),
            // A length of 255 or more: the escape byte, then the length as bitcode writes a `u64`.
            Codec::Bitcode => [vec![0xff], codec.encode(&len).unwrap()].concat(),
            Codec::Rmp => {
                let marker = match kind {
                    Kind::Seq => 0xdd,
                    Kind::Str => 0xdb,
                    Kind::Bytes => 0xc6,
                };
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                [vec![marker], len.to_be_bytes().to_vec()].concat()
            }
            Codec::Ciborium | Codec::Minicbor => {
                let major = match kind {
                    Kind::Seq => 4,
                    Kind::Str => 3,
                    Kind::Bytes => 2,
                };
                [vec![(major << 5) | 27], len.to_be_bytes().to_vec()].concat()
            }
            // No sequence length in a pickle: a str or bytes of that length stands for all three.
            Codec::Pickle => {
                let op = if matches!(kind, Kind::Str) {
                    0x8d
                } else {
                    0x8e
                };
                [vec![0x80, 4, op], len.to_le_bytes().to_vec()].concat()
            }
        }
    }

    /// Pads `header` with zeros to 16 bytes.
    fn forged(codec: Codec, kind: Kind, len: u64) -> Vec<u8> {
        let mut m = forged_header(codec, kind, len);
        m.resize(m.len().max(16), 0);
        m
    }

    /// Forged messages: (what, bytes, type: 0 `Vec<u64>`, 1 `String`, 2 `ByteBuf`, 3 a tuple
    /// `(u64, String, Vec<u64>)`). Lengths of 2⁶⁰, 2³², 1 GiB and 100 MiB, each in 16 bytes; and a
    /// forged `Vec` behind real fields.
    fn forged_cases(codec: Codec) -> Vec<(String, Vec<u8>, u8)> {
        let mut cases = Vec::new();
        for len in [1u64 << 60, 1 << 32, 1 << 30, 100 << 20] {
            for (ty, kind, what) in [
                (0, Kind::Seq, "Vec<u64>"),
                (1, Kind::Str, "String"),
                (2, Kind::Bytes, "ByteBuf"),
            ] {
                let m = forged(codec, kind, len);
                cases.push((
                    format!("{what} of forged length {len} in {} bytes", m.len()),
                    m,
                    ty,
                ));
            }
        }
        let mut m = codec.encode(&(7u64, "x".to_string())).unwrap();
        m.extend(forged(codec, Kind::Seq, 1 << 60));
        cases.push((
            format!(
                "(u64, String, Vec<u64> of forged length 2^60) in {} bytes",
                m.len()
            ),
            m,
            3,
        ));
        cases
    }

    /// Decodes `bytes` as a `T` with `codec`: `Ok(true)` if it decoded, `Ok(false)` if it said no,
    /// `Err` with the panic's message if it panicked; and the largest allocation it made.
    fn try_decode<T: DeserializeOwned>(
        codec: Codec,
        bytes: &[u8],
    ) -> (Result<bool, String>, usize) {
        counting::take_largest();
        let r = catch_unwind(AssertUnwindSafe(|| codec.decode::<T>(bytes).is_ok()));
        let largest = counting::take_largest();
        let r = r.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string())
        });
        (r, largest)
    }

    /// Runs `probe` on `codec` here; returns what went wrong, one line each (none: it passed), and
    /// notes worth printing.
    fn run_probe(codec: Codec, probe: &str) -> (Vec<String>, Vec<String>) {
        let mut bad = Vec::new();
        let mut notes = Vec::new();
        match probe {
            forged if forged.starts_with("forged:") => {
                let i: usize = forged["forged:".len()..].parse().unwrap();
                let (say, m, ty) = forged_cases(codec).swap_remove(i);
                counting::set_current(&m);
                let (r, largest) = match ty {
                    0 => try_decode::<Vec<u64>>(codec, &m),
                    1 => try_decode::<String>(codec, &m),
                    2 => try_decode::<ByteBuf>(codec, &m),
                    _ => try_decode::<(u64, String, Vec<u64>)>(codec, &m),
                };
                match r {
                    Ok(false) => {}
                    Ok(true) => bad.push(format!("{say}: decoded")),
                    Err(p) => bad.push(format!("{say}: panicked: {p}")),
                }
                if largest > allowed(m.len()) {
                    bad.push(format!("{say}: allocated {largest} bytes at once"));
                }
                notes.push(format!("{say}: largest allocation {largest} bytes"));
            }
            "truncated" => {
                let messages: Vec<(&str, Vec<u8>)> = vec![
                    ("small struct", codec.encode(&small()).unwrap()),
                    (
                        "Vec<u64> 100",
                        codec
                            .encode(&(0..100u64).map(|i| i * i).collect::<Vec<_>>())
                            .unwrap(),
                    ),
                    (
                        "ByteBuf 1000",
                        codec.encode(&ByteBuf::from(vec![7u8; 1000])).unwrap(),
                    ),
                    ("composite", codec.encode(&composite()).unwrap()),
                ];
                for (what, m) in &messages {
                    for cut in 0..m.len() {
                        let (r, largest) = match *what {
                            "small struct" => try_decode::<Small>(codec, &m[..cut]),
                            "Vec<u64> 100" => try_decode::<Vec<u64>>(codec, &m[..cut]),
                            "ByteBuf 1000" => try_decode::<ByteBuf>(codec, &m[..cut]),
                            _ => try_decode::<Composite>(codec, &m[..cut]),
                        };
                        match r {
                            Ok(false) => {}
                            Ok(true) => {
                                bad.push(format!(
                                    "{what} cut to {cut} of {} bytes: decoded",
                                    m.len()
                                ));
                                break;
                            }
                            Err(p) => {
                                bad.push(format!("{what} cut to {cut}: panicked: {p}"));
                                break;
                            }
                        }
                        if largest > allowed(m.len()) {
                            bad.push(format!("{what} cut to {cut}: allocated {largest}"));
                        }
                    }
                    for tail in [&[0u8][..], &[0xff], &m[..]] {
                        let mut longer = m.clone();
                        longer.extend_from_slice(tail);
                        let (r, _) = match *what {
                            "small struct" => try_decode::<Small>(codec, &longer),
                            "Vec<u64> 100" => try_decode::<Vec<u64>>(codec, &longer),
                            "ByteBuf 1000" => try_decode::<ByteBuf>(codec, &longer),
                            _ => try_decode::<Composite>(codec, &longer),
                        };
                        match r {
                            Ok(false) => {}
                            Ok(true) => bad.push(format!(
                                "{what} + {} trailing bytes: decoded (accepted)",
                                tail.len()
                            )),
                            Err(p) => bad.push(format!("{what} + trailing: panicked: {p}")),
                        }
                    }
                }
            }
            "mutated" => {
                let ms: u64 = std::env::var("MP_CODEC_FUZZ_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300);
                let seeds: Vec<(u8, Vec<u8>)> = vec![
                    (0, codec.encode(&small()).unwrap()),
                    (
                        1,
                        codec
                            .encode(&(0..50u64).map(|i| i * i * i).collect::<Vec<_>>())
                            .unwrap(),
                    ),
                    (2, codec.encode(&ByteBuf::from(vec![3u8; 100])).unwrap()),
                    (3, codec.encode(&composite()).unwrap()),
                    (4, codec.encode(&vec!["ab".to_string(); 20]).unwrap()),
                ];
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ codec as u64);
                let deadline = Instant::now() + Duration::from_millis(ms);
                let (mut runs, mut panics, mut decoded) = (0u64, 0u64, 0u64);
                let mut worst = (0usize, 0usize);
                let mut first_panic = None;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        let (ty, seed) = &seeds[rng.below(seeds.len())];
                        let m = if rng.below(16) == 0 {
                            (0..rng.below(48)).map(|_| rng.next() as u8).collect()
                        } else {
                            mutate(&mut rng, seed)
                        };
                        counting::set_current(&m);
                        // Each message is decoded as its seed's type and as the composite.
                        for as_ty in [*ty, 3] {
                            let (r, largest) = match as_ty {
                                0 => try_decode::<Small>(codec, &m),
                                1 => try_decode::<Vec<u64>>(codec, &m),
                                2 => try_decode::<ByteBuf>(codec, &m),
                                3 => try_decode::<Composite>(codec, &m),
                                _ => try_decode::<Vec<String>>(codec, &m),
                            };
                            runs += 1;
                            match r {
                                Ok(true) => decoded += 1,
                                Ok(false) => {}
                                Err(p) => {
                                    panics += 1;
                                    first_panic.get_or_insert_with(|| format!("{p} on {m:02x?}"));
                                }
                            }
                            if largest > worst.0 {
                                worst = (largest, m.len());
                            }
                            if largest > allowed(m.len()) {
                                bad.push(format!(
                                    "allocated {largest} bytes decoding {} bytes: {m:02x?}",
                                    m.len()
                                ));
                            }
                        }
                    }
                    if bad.len() > 3 {
                        break;
                    }
                }
                if let Some(p) = first_panic {
                    bad.push(format!("{panics} panics in {runs} decodes; first: {p}"));
                }
                notes.push(format!(
                    "{runs} decodes of mutated messages in {ms} ms, {decoded} accepted, {panics} panics; \
                     largest alloc {} bytes (from a {}-byte message)",
                    worst.0, worst.1
                ));
            }
            "side-channel" => {
                thread_local! {
                    static SERIALIZED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
                }
                /// Stands for a descriptor: serializes as the next index, as `codec::serialize_fd`.
                #[derive(Debug, PartialEq)]
                struct Fd(u32);
                impl Serialize for Fd {
                    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        let index = SERIALIZED.with(|c| {
                            c.set(c.get() + 1);
                            c.get() - 1
                        });
                        index.serialize(s)
                    }
                }
                impl<'de> Deserialize<'de> for Fd {
                    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        u32::deserialize(d).map(Fd)
                    }
                }
                #[derive(Debug, PartialEq, Serialize, Deserialize)]
                enum Msg {
                    Plain(String),
                    WithFd { fd: Fd, also: Option<Fd> },
                }
                let value = (
                    vec![
                        ("a".to_string(), Fd(0), Some(Fd(1))),
                        ("b".to_string(), Fd(2), None),
                    ],
                    Msg::WithFd {
                        fd: Fd(3),
                        also: Some(Fd(4)),
                    },
                    Msg::Plain("p".into()),
                    vec![
                        Msg::Plain("q".into()),
                        Msg::WithFd {
                            fd: Fd(5),
                            also: None,
                        },
                    ],
                );
                let mut buf = Vec::new();
                SERIALIZED.with(|c| c.set(0));
                match codec.encode_into(&mut buf, &value) {
                    Err(e) => bad.push(format!("encode: {e}")),
                    Ok(()) => {
                        let calls = SERIALIZED.with(|c| c.get());
                        if calls != 6 {
                            bad.push(format!("6 descriptors serialized {calls} times: the encoder runs Serialize more than once"));
                        }
                        match codec
                            .decode::<(Vec<(String, Fd, Option<Fd>)>, Msg, Msg, Vec<Msg>)>(&buf)
                        {
                            Ok(back) if back == value => {}
                            Ok(back) => bad.push(format!("came back as {back:?}")),
                            Err(e) => bad.push(format!("decode: {e}")),
                        }
                    }
                }
            }
            "zst" => {
                // Each `()` takes no bytes, so no limit on bytes stops the count.
                let m = forged(codec, Kind::Seq, 1 << 60);
                let start = Instant::now();
                let (r, largest) = try_decode::<Vec<()>>(codec, &m);
                let took = start.elapsed();
                match r {
                    Ok(false) => {}
                    Ok(true) => bad.push("Vec<()> of forged length 2^60: decoded".to_string()),
                    Err(p) => bad.push(format!("Vec<()> of forged length 2^60: panicked: {p}")),
                }
                notes.push(format!(
                    "Vec<()> of forged length 2^60 refused in {took:?}, largest allocation {largest}"
                ));
            }
            "mixed-shapes" => {
                /// Serializes as a bare `u32` or a bare string, depending on its value: valid serde,
                /// which a non-self-describing format can encode (decoding it needs a hint).
                enum Either {
                    N(u32),
                    S(String),
                }
                impl Serialize for Either {
                    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        match self {
                            Either::N(n) => n.serialize(s),
                            Either::S(x) => x.serialize(s),
                        }
                    }
                }
                let value = vec![Either::N(1), Either::S("a".into())];
                let mut buf = Vec::new();
                match catch_unwind(AssertUnwindSafe(|| codec.encode_into(&mut buf, &value))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => bad.push(format!(
                        "encoding a Vec whose items serialize as different types: error: {e}"
                    )),
                    Err(_) => bad.push(
                        "encoding a Vec whose items serialize as different types: panicked"
                            .to_string(),
                    ),
                }
            }
            _ => unreachable!("no probe {probe}"),
        }
        (bad, notes)
    }

    /// xorshift64*: enough for mutations, and the same run every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One to four random edits of `seed`: bit flips, special bytes, inserted or removed bytes, a cut,
    /// or 8 bytes overwritten with a large number (a forged length or count).
    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut m = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len() + 1);
            match rng.below(7) {
                0 if at < m.len() => m[at] ^= 1 << rng.below(8),
                1 if at < m.len() => m[at] = [0, 0xff, 0x7f, 0x80, 0xfe][rng.below(5)],
                2 => m.insert(at, rng.next() as u8),
                3 if at < m.len() => {
                    m.remove(at);
                }
                4 => m.truncate(at),
                5 => {
                    let big = [
                        u64::MAX,
                        1 << 60,
                        1 << 40,
                        1 << 32,
                        u32::MAX as u64,
                        1 << 28,
                    ][rng.below(6)];
                    let bytes = if rng.below(2) == 0 {
                        big.to_le_bytes()
                    } else {
                        big.to_be_bytes()
                    };
                    for (i, b) in bytes.into_iter().enumerate() {
                        if let Some(slot) = m.get_mut(at + i) {
                            *slot = b;
                        }
                    }
                }
                _ => {
                    if at < m.len() {
                        let end = (at + 1 + rng.below(8)).min(m.len());
                        let chunk = m[at..end].to_vec();
                        m.splice(at..at, chunk);
                    }
                }
            }
        }
        m
    }

    /// The child side: runs the probe named by `MP_CODEC_PROBE` (`codec/probe`), printing its result
    /// as `PROBE BAD ...` and `PROBE NOTE ...` lines. Without that variable it does nothing.
    #[test]
    fn probe_child() {
        let Ok(which) = std::env::var("MP_CODEC_PROBE") else {
            return;
        };
        let (name, probe) = which.split_once('/').expect("codec/probe");
        let codec = Codec::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .expect("a codec name");
        // The panics are caught and counted; their messages would only be noise.
        std::panic::set_hook(Box::new(|_| {}));
        let (bad, notes) = run_probe(codec, probe);
        let _ = std::panic::take_hook();
        for b in bad {
            println!("PROBE BAD {b}");
        }
        for n in notes {
            println!("PROBE NOTE {n}");
        }
        println!("PROBE DONE");
    }

    /// Runs one probe in a child process: what went wrong (empty: passed) and notes.
    fn in_child(codec: Codec, probe: &str, patience: Duration) -> (Vec<String>, Vec<String>) {
        // Through a shell that turns core dumps off: some probes abort, on purpose.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -c 0; exec \"$0\" \"$@\"")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "codec::tests::probe_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MP_CODEC_PROBE", format!("{}/{probe}", codec.name()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let limit = Instant::now() + patience;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        // The harness's "test ... " may stand before the first line.
        let lines: Vec<&str> = out
            .lines()
            .filter_map(|l| l.find("PROBE ").map(|i| &l[i..]))
            .collect();
        let mut bad: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("PROBE BAD "))
            .map(String::from)
            .collect();
        let notes = lines
            .iter()
            .filter_map(|l| l.strip_prefix("PROBE NOTE "))
            .map(String::from)
            .collect();
        let done = lines.contains(&"PROBE DONE");
        match status {
            None => bad.push(format!("hung (killed after {patience:?})")),
            Some(s) if !s.success() || !done => {
                let why = match err
                    .lines()
                    .find_map(|l| l.find("PROBE REFUSED ").map(|i| &l[i + 14..]))
                {
                    Some(refused) => format!("asked for {refused}"),
                    None => err
                        .lines()
                        .rfind(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .to_string(),
                };
                bad.push(format!("the process died ({s}): {why}"));
            }
            Some(_) => {}
        }
        (bad, notes)
    }

    #[test]
    fn hostile_input() {
        if std::env::var("MP_CODEC_PROBE").is_ok() {
            return;
        }
        let mut report = String::new();
        let mut failed = Vec::new();
        for codec in Codec::ALL {
            let forged: Vec<String> = (0..forged_cases(codec).len())
                .map(|i| format!("forged:{i}"))
                .collect();
            let probes = forged
                .iter()
                .map(String::as_str)
                .chain(PROBES)
                .chain(["zst"]);
            for probe in probes {
                // A sequence of zero-sized values with a forged count (`zst`) is only reported: where
                // `()` takes no bytes (bincode, postcard) no limit on bytes stops the count, and only
                // a cap on counts would (bitcode has one); a hang is cut short after 2 s.
                let informational = probe == "zst";
                let patience = Duration::from_secs(if informational { 2 } else { 60 });
                let (bad, notes) = in_child(codec, probe, patience);
                let verdict = match (bad.is_empty(), informational) {
                    (true, _) => "ok",
                    (false, false) => "FAILED",
                    (false, true) => "failed (informational)",
                };
                let _ = writeln!(report, "{:14} {:12} {verdict}", codec.name(), probe);
                for b in bad.iter().take(6) {
                    let _ = writeln!(report, "      {}", b.chars().take(300).collect::<String>());
                }
                for n in &notes {
                    let _ = writeln!(report, "      note: {n}");
                }
                if !bad.is_empty() && !informational && SAFE.contains(&codec) {
                    failed.push(format!("{} {probe}", codec.name()));
                }
            }
        }
        eprintln!("{report}");
        assert!(failed.is_empty(), "codecs expected safe failed: {failed:?}");
    }

    #[test]
    fn forged_headers_are_what_the_codecs_write() {
        // The prefix-style codecs write a sequence's length as they write a u64: check that, on a
        // real Vec, so that the forged messages above mean what they say.
        for codec in [
            Codec::Bincode,
            Codec::Bincode2,
            Codec::BincodeNext,
            Codec::Postcard,
            Codec::Musli,
            Codec::MusliFixed,
        ] {
            let m = codec.encode(&vec![7u64; 3]).unwrap();
            assert!(
                m.starts_with(&forged_header(codec, Kind::Seq, 3)),
                "{}",
                codec.name()
            );
        }
        let m = Codec::Bitcode.encode(&vec![0u64; 300]).unwrap();
        assert!(m.starts_with(&forged_header(Codec::Bitcode, Kind::Seq, 300)));
        let m = Codec::Rmp.encode(&vec![0u64; 70_000]).unwrap();
        assert!(m.starts_with(&forged_header(Codec::Rmp, Kind::Seq, 70_000)));
        for codec in [Codec::Ciborium, Codec::Minicbor] {
            // CBOR writes the shortest head; a 27 head with a small length is still valid CBOR.
            let mut m = forged_header(codec, Kind::Seq, 2);
            m.extend([1, 2]);
            assert_eq!(
                codec.decode::<Vec<u64>>(&m),
                Ok(vec![1, 2]),
                "{}",
                codec.name()
            );
        }
    }

    #[test]
    fn every_codec_round_trips_every_shape() {
        for codec in Codec::ALL {
            faithful(codec, &small()).unwrap();
            faithful(codec, &vec_u64()).unwrap();
            faithful(codec, &ByteBuf::from(vec![1u8; 5000])).unwrap();
            faithful(codec, &composite()).unwrap();
        }
    }
}
