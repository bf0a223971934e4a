//! Group `codec`: which serde format `multiprocess` should encode values with, by measurement.
//!
//! Each figure is one encode + decode round trip (median) of a shape, per codec:
//! - `bincode`: bincode 1 with fixed-width integers, as `src/codec.rs` configures it (the decoder with
//!   a size limit equal to the input's length, as there);
//! - `postcard`: varint integers;
//! - `rmp-serde`: MessagePack, structs as arrays (`rmp_serde::to_vec`).
//!
//! Shapes: `small struct` (a `u64`, a 16-character `String`, a `Vec<u32>` of 8; ns per round trip),
//! `Vec<u64> 10k` (the squares of 0..10 000, so varints need 1 to 4 bytes each; µs per round trip) and
//! `1 MiB bytes` (a `serde_bytes::ByteBuf`; GB/s, 10⁹ B/s of payload). The python column is
//! `pickle.loads(pickle.dumps(x))` on the same shape (a tuple, a list of ints, a `bytes`): what Python's
//! `multiprocessing` does to every value it sends. It is the same for the three codec rows of a shape.

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
    Postcard,
    Rmp,
}

impl Codec {
    const ALL: [Codec; 3] = [Codec::Bincode, Codec::Postcard, Codec::Rmp];

    fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Postcard => "postcard",
            Codec::Rmp => "rmp-serde",
        }
    }

    fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, String> {
        match self {
            Codec::Bincode => bincode_options()
                .serialize(value)
                .map_err(|e| e.to_string()),
            Codec::Postcard => postcard::to_allocvec(value).map_err(|e| e.to_string()),
            Codec::Rmp => rmp_serde::to_vec(value).map_err(|e| e.to_string()),
        }
    }

    fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => bincode_options()
                .with_limit(bytes.len() as u64)
                .deserialize(bytes)
                .map_err(|e| e.to_string()),
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
            Codec::Rmp => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// The options `src/codec.rs` uses.
fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding()
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

/// Median seconds per encode + decode of `value` with `codec`.
fn round_trip<T>(codec: Codec, value: &T, plan: Plan) -> Result<f64, String>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    plan.run(|ops| {
        for _ in 0..ops {
            let bytes = codec.encode(black_box(value))?;
            black_box(codec.decode::<T>(black_box(&bytes))?);
        }
        Ok::<(), String>(())
    })
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
    let mut timed: Vec<(Codec, f64)> = Vec::new();
    let mut rows = Vec::new();
    for codec in Codec::ALL {
        let secs = faithful(codec, value).and_then(|()| round_trip(codec, value, plan));
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
