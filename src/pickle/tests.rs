//! Unit tests of the pickle codec: limits, bombs, sharing, round trips. (Against real CPython:
//! `tests/python_pickle.rs`.)

use super::*;

#[test]
fn a_memo_bomb_hits_the_node_limit() {
    // A list memoized, then a list of 20 000 references to it, nested ten times: each level
    // multiplies the expanded size by 20 000.
    let mut p = vec![0x80, 4, b']', 0x94]; // [] memo 0
    for level in 0..10u32 {
        p.push(b']');
        p.push(b'(');
        for _ in 0..20_000 {
            p.push(b'j');
            p.extend(level.to_le_bytes());
        }
        p.push(b'e');
        p.push(0x94);
    }
    p.push(b'.');
    assert!(p.len() < 1 << 20);
    let e = decode(&p).unwrap_err();
    assert!(matches!(e, PickleError::Limit { what: "nodes", .. }), "{e}");
}

#[test]
fn two_million_marks_hit_the_mark_limit() {
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b'(', 2_000_000));
    p.push(b'.');
    let e = decode(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "open marks",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn deep_nesting_hits_the_depth_limit_without_overflowing_the_stack() {
    // 100 000 nested lists: `]` then APPEND into the one below, built bottom up.
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    let e = decode(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "nesting depth",
                ..
            }
        ),
        "{e}"
    );
    // Within the limit it decodes.
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b']', 500));
    p.extend(std::iter::repeat_n(b'a', 499));
    p.push(b'.');
    let mut v = decode(&p).unwrap();
    let mut depth = 1;
    while let Value::List(mut items) = v {
        match items.pop() {
            Some(inner) => {
                depth += 1;
                v = inner;
            }
            None => break,
        }
    }
    assert_eq!(depth, 500);
}

#[test]
fn forged_lengths_never_allocate() {
    for op in [b'X', b'B', 0x8d, 0x8e, 0x96, b'T', 0x8b] {
        let mut p = vec![0x80, 4, op];
        p.extend([0xff; 8]);
        assert!(decode(&p).is_err(), "{op:#x}");
    }
}

#[test]
fn memo_references_share_what_was_filled_later() {
    // a = []; (a, a) after a.append(1): the memo entry is stored while a is empty.
    let p = b"\x80\x04]\x94K\x01ah\x00\x86\x94.";
    assert_eq!(
        decode(p).unwrap(),
        Value::Tuple(vec![Value::List(vec![Value::Int(1)]); 2])
    );
    // A list that contains itself cannot become a tree.
    let p = b"\x80\x04]\x94h\x00a.";
    assert_eq!(decode(p).unwrap_err(), PickleError::Recursive);
}

#[test]
fn nothing_is_imported_or_called() {
    // os.system('echo hi') by REDUCE: an object naming it, nothing run.
    let p = b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x07echo hi\x85R.";
    match decode(p).unwrap() {
        Value::Object(o) => {
            assert_eq!(o.callable, Value::global("os", "system"));
            assert_eq!(o.args, Value::Tuple(vec![Value::Str("echo hi".into())]));
        }
        other => panic!("{other:?}"),
    }
    for refused in [
        &b"\x80\x04K\x01Q."[..],
        b"\x80\x04\x82\x01.",
        b"\x80\x05\x97.",
    ] {
        assert!(matches!(decode(refused), Err(PickleError::Opcode { .. })));
    }
}

#[test]
fn values_round_trip_through_the_encoder() {
    let v = Value::Tuple(vec![
        Value::None,
        Value::Bool(true),
        Value::Int(-1),
        Value::Int(300),
        Value::Int(70_000),
        Value::Int(i64::MIN),
        Value::BigInt("123456789012345678901234567890".parse().unwrap()),
        Value::Float(1.5),
        Value::Str("ünï".into()),
        Value::Bytes(vec![0, 255]),
        Value::ByteArray(vec![1, 2]),
        Value::List((0..2500).map(Value::Int).collect()),
        Value::Dict(vec![
            (Value::Int(2), Value::None),
            (Value::Int(1), Value::None),
        ]),
        Value::Set(vec![Value::Int(1)]),
        Value::FrozenSet(vec![]),
        Value::global("builtins", "KeyError"),
        Value::Tuple(vec![
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
            Value::Int(4),
        ]),
    ]);
    assert_eq!(decode(&encode(&v).unwrap()).unwrap(), v);
}

#[test]
fn serde_types_round_trip() {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, i8),
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct All {
        name: String,
        big: u128,
        neg: i128,
        tuple: (u8, String, Option<bool>),
        list: Vec<Shape>,
        map: BTreeMap<String, Vec<u64>>,
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
        unit: (),
        c: char,
    }
    let all = All {
        name: "x".into(),
        big: u128::MAX,
        neg: i128::MIN,
        tuple: (1, "t".into(), None),
        list: vec![
            Shape::Dot,
            Shape::Circle(0.5),
            Shape::Rect { w: 2, h: 3 },
            Shape::Pair(-1, 1),
        ],
        map: [("k".to_string(), vec![u64::MAX, 0])].into(),
        raw: vec![9; 3],
        unit: (),
        c: 'λ',
    };
    let bytes = to_vec(&all).unwrap();
    assert_eq!(from_slice::<All>(&bytes).unwrap(), all);
    // The Python shapes.
    let Value::Dict(fields) = decode(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        fields[0],
        (Value::Str("name".into()), Value::Str("x".into()))
    );
    assert!(matches!(fields[3].1, Value::Tuple(_)));
    assert!(matches!(fields[6].1, Value::Bytes(_)));
    // A type mismatch is a typed error.
    assert!(matches!(
        from_slice::<u8>(&to_vec(&300u32).unwrap()),
        Err(PickleError::Type(_))
    ));
}

#[test]
fn copies_made_while_decoding_count_against_the_byte_limit() {
    let limits = Limits {
        max_bytes: 10 << 20,
        ..Limits::default()
    };
    // A memoized 1 MB big int referenced 100 times.
    let mut p = vec![0x80, 4, 0x8b];
    p.extend((1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(1u8, 1 << 20));
    p.extend([0x94, b'(']);
    for _ in 0..100 {
        p.extend([b'h', 0]);
    }
    p.extend([b'l', b'.']);
    let e = decode_with(&p, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "bytes of the decoded value",
                ..
            }
        ),
        "{e}"
    );
    // STACK_GLOBAL of a memoized 1 MB str, again and again.
    let mut p = vec![0x80, 4, b'X'];
    p.extend((1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b'a', 1 << 20));
    p.push(0x94);
    for _ in 0..100 {
        p.extend([b'h', 0, b'h', 0, 0x93, b'0']);
    }
    p.push(b'.');
    assert!(matches!(
        decode_with(&p, &limits),
        Err(PickleError::Limit { .. })
    ));
    // Decimal ints past CPython's 4300 digits.
    let mut p = b"I".to_vec();
    p.extend(std::iter::repeat_n(b'9', 5000));
    p.extend(b"\n.");
    assert!(matches!(decode(&p), Err(PickleError::Malformed { .. })));
    // A text int is digits: no `_` separators (a fuzzer's find: they parsed as a big int that
    // fits 64 bits), and one that fits 64 bits is an `Int`.
    assert!(decode(b"L12_3L\n.").is_err());
    assert_eq!(
        decode(b"L-12287032376L\n.").unwrap(),
        Value::Int(-12287032376)
    );
    // `_codecs.encode` with an encoding other than latin-1 stays an object.
    let p = b"\x80\x04\x8c\x07_codecs\x8c\x06encode\x93\x8c\x01a\x8c\x05utf-8\x86R.";
    assert!(matches!(decode(p), Ok(Value::Object(_))));
}

#[test]
fn objects_keep_their_items_entries_and_state_apart() {
    // collections.OrderedDict([('a', 1)]) at protocol 4.
    let p = b"\x80\x04\x95\x23\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94\x8c\x01a\x94K\x01s.";
    let v = decode(p).unwrap();
    let Value::Object(o) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(o.entries, [(Value::Str("a".into()), Value::Int(1))]);
    assert!(o.items.is_empty() && o.state.is_empty());
    assert_eq!(decode(&encode(&v).unwrap()).unwrap(), v);
}

/// Nested lists, as a serde type: what the bombs below decode into through `from_slice`.
#[derive(Debug, serde::Deserialize)]
struct Nested(Vec<Nested>);

#[test]
fn the_serde_path_checks_what_the_tree_does() {
    // The memo bomb of `a_memo_bomb_hits_the_node_limit`, read straight from the arena.
    let mut p = vec![0x80, 4, b']', 0x94];
    for level in 0..10u32 {
        p.extend([b']', b'(']);
        for _ in 0..20_000 {
            p.push(b'j');
            p.extend(level.to_le_bytes());
        }
        p.extend([b'e', 0x94]);
    }
    p.push(b'.');
    let e = from_slice::<Nested>(&p).unwrap_err();
    assert!(matches!(e, PickleError::Limit { what: "nodes", .. }), "{e}");
    // 100 000 nested lists: the depth limit, not the thread's stack.
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    let e = from_slice::<Nested>(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "nesting depth",
                ..
            }
        ),
        "{e}"
    );
    // The serde walk's own limit (serde recurses on the thread's stack); within it, it decodes.
    let nested = |depth: usize| {
        let mut p = vec![0x80, 4];
        p.extend(std::iter::repeat_n(b']', depth));
        p.extend(std::iter::repeat_n(b'a', depth - 1));
        p.push(b'.');
        p
    };
    let e = from_slice::<Nested>(&nested(SERDE_MAX_DEPTH + 1)).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "nesting depth",
                limit: 128
            }
        ),
        "{e}"
    );
    assert!(decode(&nested(SERDE_MAX_DEPTH + 1)).is_ok());
    let (mut n, mut depth) = (from_slice::<Nested>(&nested(SERDE_MAX_DEPTH)).unwrap(), 1);
    while let Some(inner) = n.0.pop() {
        (n, depth) = (inner, depth + 1);
    }
    assert_eq!(depth, SERDE_MAX_DEPTH);
    // A list inside itself.
    assert_eq!(
        from_slice::<Nested>(b"\x80\x04]\x94h\x00a.").unwrap_err(),
        PickleError::Recursive
    );
    // Shared (not nested) references are fine: (a, a) with a = [1].
    let p = b"\x80\x04]\x94K\x01ah\x00\x86\x94.";
    assert_eq!(
        from_slice::<(Vec<u8>, Vec<u8>)>(p).unwrap(),
        (vec![1], vec![1])
    );
    // A str memoized and referenced many times counts its bytes each time.
    let mut p = vec![0x80, 4, 0x8d];
    p.extend(1000u64.to_le_bytes());
    p.extend([b'x'; 1000]);
    p.extend([0x94, b']', b'(']);
    for _ in 0..5000 {
        p.extend([b'h', 0]);
    }
    p.extend([b'e', b'.']);
    let small = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = from_slice_with::<Vec<String>>(&p, &small).unwrap_err();
    assert!(
        matches!(
            e,
            PickleError::Limit {
                what: "bytes of the decoded value",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(from_slice::<Vec<String>>(&p).unwrap().len(), 5000);
    // A value of the wrong type is named by its start, not quoted whole.
    let e = from_slice::<Vec<Vec<u8>>>(&p).unwrap_err().to_string();
    assert!(e.contains("(1000 bytes)") && e.len() < 300, "{e}");
}

#[test]
fn ints_past_32_bits_are_the_fewest_long1_bytes() {
    let edges = [
        i32::MAX as i64 + 1,
        i32::MIN as i64 - 1,
        1 << 39,
        -(1 << 39),
        (1 << 47) - 1,
        -(1 << 47),
        i64::MAX,
        i64::MIN,
        0x80_0000_0000,
        -0x80_0000_0001,
    ];
    for v in edges {
        let p = to_vec(&v).unwrap();
        let want = num_bigint::BigInt::from(v).to_signed_bytes_le();
        let mut expected = vec![0x80, 4, 0x8a, want.len() as u8];
        expected.extend(&want);
        expected.push(b'.');
        assert_eq!(p, expected, "{v}");
        assert_eq!(from_slice::<i64>(&p).unwrap(), v);
        assert_eq!(decode(&p).unwrap(), Value::Int(v));
    }
    assert_eq!(
        from_slice::<u64>(&to_vec(&u64::MAX).unwrap()).unwrap(),
        u64::MAX
    );
}

#[test]
fn memo_keys_in_any_order_and_far_apart() {
    // 'a' put at 3, 'b' at 0, 'c' at 2^32-1, then MEMOIZE (its key is the count, 3: replaces 'a'),
    // then get 0, 2^32-1, 3 into a tuple.
    let mut p = b"\x80\x04\x8c\x01aq\x03\x8c\x01bq\x00\x8c\x01cr\xff\xff\xff\xff\x8c\x01d\x94(h\x00j\xff\xff\xff\xffh\x03t".to_vec();
    p.push(b'.');
    let v = decode(&p).unwrap();
    let s = |x: &str| Value::Str(x.into());
    assert_eq!(v, Value::Tuple(vec![s("b"), s("c"), s("d")]));
    assert_eq!(
        from_slice::<(String, String, String)>(&p).unwrap(),
        ("b".into(), "c".into(), "d".into())
    );
    // A key never stored is malformed, not a panic.
    assert!(decode(b"\x80\x04h\x07.").is_err());
    assert!(decode(b"\x80\x04j\xff\xff\xff\xff.").is_err());
}
