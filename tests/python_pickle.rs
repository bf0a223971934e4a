//! The pickle codec against real CPython (pyenv's 3.8, 3.11, 3.12 and 3.13): every plain value
//! pickled by Python at every protocol it writes (0 to 5) decodes to the value expected here, and
//! every value encoded here loads in Python as the value Python started from; then a Python
//! `Client.send(obj)` arrives in Rust as a value, and goes back.

mod common;

use multiprocess::Listener;
use multiprocess::pickle::{Value, decode, encode, to_vec};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const VERSIONS: [u32; 4] = [8, 11, 12, 13];

/// The values, in Python; `expected()` is the same list in Rust.
const PY_VALUES: &str = r#"
values = [
    None, True, False, 0, -1, 255, 256, 65535, 65536, -2**31, 2**31, 2**63 - 1, -2**63, 2**64,
    -2**100, 10**50, 1.5, -2.25, float('inf'), '', 'ünïcode ✓', 'a' * 300, b'', b'\x00\xff',
    bytearray(b'ab'), (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], [1, [2, [3]]], {},
    {'b': 1, 'a': 2, 3: 'x', (1, 2): None}, set(), {1, 2}, frozenset({3}),
    [{'k': [i, str(i), bytes([i % 256])]} for i in range(1500)],
]
shared = [0]
values.append([shared, shared])
"#;

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

fn int(i: i64) -> Value {
    Value::Int(i)
}

fn big(x: &str) -> Value {
    Value::BigInt(x.parse().unwrap())
}

fn expected() -> Vec<Value> {
    let mut v = vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        int(0),
        int(-1),
        int(255),
        int(256),
        int(65535),
        int(65536),
        int(-(1 << 31)),
        int(1 << 31),
        int(i64::MAX),
        int(i64::MIN),
        big("18446744073709551616"),
        big("-1267650600228229401496703205376"),
        big("100000000000000000000000000000000000000000000000000"),
        Value::Float(1.5),
        Value::Float(-2.25),
        Value::Float(f64::INFINITY),
        s(""),
        s("ünïcode ✓"),
        s(&"a".repeat(300)),
        Value::Bytes(vec![]),
        Value::Bytes(vec![0, 255]),
        Value::ByteArray(b"ab".to_vec()),
        Value::Tuple(vec![]),
        Value::Tuple(vec![int(1)]),
        Value::Tuple(vec![int(1), int(2)]),
        Value::Tuple(vec![int(1), int(2), int(3)]),
        Value::Tuple(vec![int(1), int(2), int(3), int(4)]),
        Value::List(vec![]),
        Value::List(vec![
            int(1),
            Value::List(vec![int(2), Value::List(vec![int(3)])]),
        ]),
        Value::Dict(vec![]),
        Value::Dict(vec![
            (s("b"), int(1)),
            (s("a"), int(2)),
            (int(3), s("x")),
            (Value::Tuple(vec![int(1), int(2)]), Value::None),
        ]),
        Value::Set(vec![]),
        Value::Set(vec![int(1), int(2)]),
        Value::FrozenSet(vec![int(3)]),
        Value::List(
            (0..1500)
                .map(|i| {
                    Value::Dict(vec![(
                        s("k"),
                        Value::List(vec![
                            int(i),
                            s(&i.to_string()),
                            Value::Bytes(vec![(i % 256) as u8]),
                        ]),
                    )])
                })
                .collect(),
        ),
    ];
    let shared = Value::List(vec![int(0)]);
    v.push(Value::List(vec![shared.clone(), shared]));
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Runs `script` (after the values) under Python 3.`minor` with `input` on stdin; its stdout.
fn run_python(minor: u32, script: &str, input: &str) -> String {
    let mut child = Command::new(common::python(minor))
        .args(["-c", &format!("{PY_VALUES}\n{script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "python 3.{minor} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_pickles_of_every_protocol_decode_to_the_expected_values() {
    let want = expected();
    for minor in VERSIONS {
        let out = run_python(
            minor,
            "import pickle\n\
             for p in range(pickle.HIGHEST_PROTOCOL + 1):\n\
             \x20   for i, v in enumerate(values):\n\
             \x20       print(p, i, pickle.dumps(v, protocol=p).hex())\n",
            "",
        );
        let mut seen = 0;
        for line in out.lines() {
            let mut parts = line.split(' ');
            let (p, i, h) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let i: usize = i.parse().unwrap();
            let got = decode(&unhex(h))
                .unwrap_or_else(|e| panic!("3.{minor} protocol {p} value {i}: {e}"));
            assert_eq!(got, want[i], "3.{minor} protocol {p} value {i}");
            seen += 1;
        }
        assert_eq!(seen, want.len() * 6, "3.{minor}: protocols 0 to 5");
    }
}

#[test]
fn our_pickles_load_in_python_as_the_same_values() {
    let lines: String = expected()
        .iter()
        .map(|v| hex(&encode(v).unwrap()) + "\n")
        .collect();
    // A serde value too: a struct is a dict, a tuple a tuple, bytes bytes.
    #[derive(serde::Serialize)]
    struct Point {
        x: i32,
        tag: (u8, String),
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
        big: u128,
    }
    let serde_line = hex(&to_vec(&Point {
        x: -3,
        tag: (1, "t".into()),
        raw: vec![7, 8],
        big: u128::MAX,
    })
    .unwrap());
    let input = format!("{lines}{serde_line}\n");
    for minor in VERSIONS {
        let out = run_python(
            minor,
            "import pickle, sys\n\
             lines = sys.stdin.read().split()\n\
             bad = [i for i, (h, v) in enumerate(zip(lines, values)) if pickle.loads(bytes.fromhex(h)) != v or type(pickle.loads(bytes.fromhex(h))) is not type(v)]\n\
             p = pickle.loads(bytes.fromhex(lines[-1]))\n\
             ok = p == {'x': -3, 'tag': (1, 't'), 'raw': b'\\x07\\x08', 'big': 2**128 - 1}\n\
             print('BAD', bad, 'SERDE', ok)\n",
            &input,
        );
        assert_eq!(out.trim(), "BAD [] SERDE True", "3.{minor}");
    }
}

#[test]
fn python_send_arrives_as_a_value_and_goes_back() {
    let listener = Listener::builder("127.0.0.1:0")
        .authkey(b"pk")
        .bind()
        .unwrap();
    for minor in [11, 13] {
        let mut child = Command::new(common::python(minor))
            .args([
                "-c",
                &format!(
                    "{PY_VALUES}\n\
                     import sys\n\
                     from multiprocessing.connection import Client\n\
                     h, p = sys.argv[1].rsplit(':', 1)\n\
                     c = Client((h, int(p)), authkey=b'pk')\n\
                     c.send(values)\n\
                     back = c.recv()\n\
                     print('SAME', back == values)\n"
                ),
                &listener.address().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let conn = listener.accept_timeout(common::DEADLINE).unwrap();
        let got = conn.recv_pickle_value().unwrap();
        assert_eq!(got, Value::List(expected()), "3.{minor}");
        conn.send_pickle_value(&got).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "SAME True", "3.{minor}");
        assert!(child.wait().unwrap().success());
    }
}
