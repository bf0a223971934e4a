//! Decoded pickles into serde types: the inverse of `serde_ser`'s mapping (any Python sequence
//! reads as a Rust sequence or tuple, any dict as a map or struct, `bytes` and `bytearray` as byte
//! buffers, ints into any integer type they fit).
//!
//! # Straight from the arena
//! [`from_slice`] does not build a [`Value`] tree: the serde type is read straight from the
//! machine's arena (`Node`s that refer to each other by index), so a list of ten thousand ints is
//! one arena and one `Vec` of the target type, not also ten thousand `Value`s to build, move and
//! drop. What the tree's expansion checks, this walk checks the same way as it goes: every node it
//! visits counts against `max_nodes` and every leaf's bytes against `max_bytes` (a memo reference
//! visited twice counts twice, so a memo bomb stops here as it does in `decode`), nesting against
//! `max_depth` (and at most [`SERDE_MAX_DEPTH`]), and a container met again inside itself is
//! [`PickleError::Recursive`]. A [`Value`] also deserializes into serde types (its
//! `Deserializer` impl below), with the same mapping.
//!
//! # Why a second depth limit
//! The machine and the tree's expansion keep their own stacks on the heap, but serde's
//! deserializers recurse on the thread's: a recursive type (a tree, `serde_json::Value`) read from
//! a pickle nested `max_depth` (1000) deep could overflow a 2 MiB thread stack, which aborts the
//! process. So the serde walk stops at 128 levels, as serde_json does; deeper data decodes as a
//! [`Value`].

/// The deepest nesting [`from_slice`] reads (serde_json's default too): serde recurses on the
/// thread's stack. [`decode`](super::decode) reads up to [`Limits::max_depth`].
pub const SERDE_MAX_DEPTH: usize = 128;

use super::de::{Id, Node, Slot, leaf_bytes, with_arena};
use super::{Limits, PickleError, Value};
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use std::cell::Cell;

/// Decodes a pickle (with the default limits) into a `T`.
///
/// ```
/// use std::collections::HashMap;
/// // pickle.dumps({'a': [1, 2]}, protocol=4)
/// let bytes = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94]\x94(K\x01K\x02es.";
/// let m: HashMap<String, Vec<u8>> = multiprocess::pickle::from_slice(bytes)?;
/// assert_eq!(m["a"], [1, 2]);
/// # Ok::<(), multiprocess::pickle::PickleError>(())
/// ```
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PickleError> {
    from_slice_with(bytes, &Limits::default())
}

/// [`from_slice`] with the given limits.
pub fn from_slice_with<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, PickleError> {
    with_arena(bytes, limits, |nodes, root| {
        let walk = Walk {
            nodes,
            limits,
            written: Cell::new(0),
            bytes: Cell::new(0),
            visiting: nodes.iter().map(|_| Cell::new(false)).collect(),
        };
        T::deserialize(At {
            walk: &walk,
            slot: root,
            depth: 0,
        })
    })
}

/// One walk over the arena: what it has counted so far (see the module notes).
struct Walk<'a> {
    nodes: &'a [Node],
    limits: &'a Limits,
    written: Cell<u64>,
    bytes: Cell<u64>,
    /// The containers open on the way down to where the walk is.
    visiting: Vec<Cell<bool>>,
}

/// A value of the arena (a scalar slot or a node), as a serde `Deserializer`.
#[derive(Clone, Copy)]
struct At<'a> {
    walk: &'a Walk<'a>,
    slot: Slot,
    /// Containers above this value.
    depth: usize,
}

impl<'a> At<'a> {
    /// The node, for a slot that names one.
    fn node(&self) -> Option<&'a Node> {
        match self.slot {
            Slot::Node(id) => Some(&self.walk.nodes[id]),
            _ => None,
        }
    }

    fn child(&self, slot: Slot) -> At<'a> {
        At {
            walk: self.walk,
            slot,
            depth: self.depth + 1,
        }
    }

    /// Counts this node (and a leaf's bytes) against the limits.
    fn count(&self, leaf: Option<&Value>) -> Result<(), PickleError> {
        let w = self.walk;
        w.written.set(w.written.get() + 1);
        if w.written.get() > w.limits.max_nodes {
            return Err(PickleError::Limit {
                what: "nodes",
                limit: w.limits.max_nodes,
            });
        }
        if let Some(v) = leaf {
            w.bytes.set(w.bytes.get().saturating_add(leaf_bytes(v)));
            if w.bytes.get() > w.limits.max_bytes {
                return Err(PickleError::Limit {
                    what: "bytes of the decoded value",
                    limit: w.limits.max_bytes,
                });
            }
        }
        Ok(())
    }

    /// Runs `f` inside container `id` (this value's node): nesting and recursion checked, the
    /// container open while it runs.
    fn inside<R>(
        &self,
        id: Id,
        f: impl FnOnce() -> Result<R, PickleError>,
    ) -> Result<R, PickleError> {
        let max = self.walk.limits.max_depth.min(SERDE_MAX_DEPTH);
        if self.depth >= max {
            return Err(PickleError::Limit {
                what: "nesting depth",
                limit: max as u64,
            });
        }
        let open = &self.walk.visiting[id];
        if open.replace(true) {
            return Err(PickleError::Recursive);
        }
        let r = f();
        open.set(false);
        r
    }

    /// The error for a node with no serde form (only names: arguments could be gigabytes).
    fn no_serde_form(&self) -> PickleError {
        let name = |at: At<'_>| match at.node() {
            Some(Node::Leaf(Value::Global { module, name })) => format!("{module}.{name}"),
            Some(Node::Leaf(v)) => kind(v).to_string(),
            Some(_) => "a container".to_string(),
            None => "a scalar".to_string(),
        };
        let (what, named) = match self.node() {
            Some(Node::Object(o)) => (
                "an object",
                format!("made by {}", name(self.child(o.callable))),
            ),
            _ => ("a global", name(*self)),
        };
        PickleError::Type(format!(
            "{what} ({named}) has no serde form; decode it as a Value"
        ))
    }
}

/// The items of a list, tuple or set.
struct Seq<'a> {
    parent: At<'a>,
    items: std::slice::Iter<'a, Slot>,
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = PickleError;

    fn next_element_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, PickleError> {
        match self.items.next() {
            Some(&id) => seed.deserialize(self.parent.child(id)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a dict.
struct Map<'a> {
    parent: At<'a>,
    entries: std::slice::Iter<'a, (Slot, Slot)>,
    value: Option<Slot>,
}

impl<'de> de::MapAccess<'de> for Map<'_> {
    type Error = PickleError;

    fn next_key_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, PickleError> {
        match self.entries.next() {
            Some(&(k, v)) => {
                self.value = Some(v);
                seed.deserialize(self.parent.child(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| PickleError::Type("a dict value asked for before its key".into()))?;
        seed.deserialize(self.parent.child(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

fn too_many(expected: usize, got: usize) -> PickleError {
    de::Error::invalid_length(got, &format!("{expected} elements").as_str())
}

impl<'de> de::Deserializer<'de> for At<'_> {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        let id = match self.slot {
            Slot::Node(id) => id,
            scalar => {
                self.count(None)?;
                return match scalar {
                    Slot::Bool(b) => v.visit_bool(b),
                    Slot::Int(i) => v.visit_i64(i),
                    Slot::Float(f) => v.visit_f64(f),
                    _ => v.visit_unit(),
                };
            }
        };
        let items = match &self.walk.nodes[id] {
            Node::Leaf(leaf) => {
                self.count(Some(leaf))?;
                return match leaf {
                    Value::None => v.visit_unit(),
                    Value::Bool(b) => v.visit_bool(*b),
                    Value::Int(i) => v.visit_i64(*i),
                    Value::Float(f) => v.visit_f64(*f),
                    Value::Str(s) => v.visit_str(s),
                    Value::Bytes(b) | Value::ByteArray(b) => v.visit_bytes(b),
                    Value::Global { .. } => Err(self.no_serde_form()),
                    // Big ints (and anything else a leaf may hold) as the tree does.
                    other => de::Deserializer::deserialize_any(other.clone(), v),
                };
            }
            Node::List(items) | Node::Tuple(items) | Node::Set(items) | Node::FrozenSet(items) => {
                items
            }
            Node::Dict(entries) => {
                self.count(None)?;
                return self.inside(id, || {
                    let mut map = Map {
                        parent: self,
                        entries: entries.iter(),
                        value: None,
                    };
                    let out = v.visit_map(&mut map)?;
                    match map.entries.len() {
                        0 => Ok(out),
                        left => Err(too_many(entries.len() - left, entries.len())),
                    }
                });
            }
            Node::Object(_) => return Err(self.no_serde_form()),
        };
        self.count(None)?;
        self.inside(id, || {
            let mut seq = Seq {
                parent: self,
                items: items.iter(),
            };
            let out = v.visit_seq(&mut seq)?;
            match seq.items.len() {
                0 => Ok(out),
                left => Err(too_many(items.len() - left, items.len())),
            }
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self.slot {
            Slot::None => {
                self.count(None)?;
                v.visit_none()
            }
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, PickleError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        self.count(None)?;
        let Slot::Node(id) = self.slot else {
            return Err(PickleError::Type(
                "an enum is a str or a one-entry dict, not a scalar".into(),
            ));
        };
        match &self.walk.nodes[id] {
            Node::Leaf(Value::Str(name)) => v.visit_enum(ArenaVariant {
                name,
                content: None,
            }),
            Node::Dict(kv) if kv.len() == 1 => match (self.child(kv[0].0).node(), kv[0].1) {
                (Some(Node::Leaf(Value::Str(name))), content) => self.inside(id, || {
                    v.visit_enum(ArenaVariant {
                        name,
                        content: Some(self.child(content)),
                    })
                }),
                _ => Err(PickleError::Type("an enum's dict needs a str key".into())),
            },
            Node::Leaf(other) => Err(PickleError::Type(format!(
                "an enum is a str or a one-entry dict, not {}",
                kind(other)
            ))),
            _ => Err(PickleError::Type(
                "an enum is a str or a one-entry dict, not another container".into(),
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// An enum variant in the arena: its name and, but for unit variants, its content.
struct ArenaVariant<'a> {
    name: &'a str,
    content: Option<At<'a>>,
}

impl<'de, 'a> de::EnumAccess<'de> for ArenaVariant<'a> {
    type Error = PickleError;
    type Variant = ArenaContent<'a>;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ArenaContent<'a>), PickleError> {
        let name = seed.deserialize(self.name.into_deserializer())?;
        Ok((name, ArenaContent(self.content)))
    }
}

/// A variant's content in the arena (`None` for a unit variant written as its name).
struct ArenaContent<'a>(Option<At<'a>>);

impl<'de> de::VariantAccess<'de> for ArenaContent<'_> {
    type Error = PickleError;

    fn unit_variant(self) -> Result<(), PickleError> {
        match self.0.map(|at| (at.slot, at.node())) {
            None | Some((Slot::None, _)) => Ok(()),
            Some((_, Some(Node::Leaf(v)))) => Err(PickleError::Type(format!(
                "a unit variant with {}",
                kind(v)
            ))),
            Some((_, Some(_))) => Err(PickleError::Type("a unit variant with a container".into())),
            Some((_, None)) => Err(PickleError::Type("a unit variant with a scalar".into())),
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        match self.0 {
            Some(at) => seed.deserialize(at),
            None => seed.deserialize(Value::None),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Some(at) => de::Deserializer::deserialize_any(at, v),
            None => de::Deserializer::deserialize_any(Value::Tuple(Vec::new()), v),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        match self.0 {
            Some(at) => de::Deserializer::deserialize_any(at, v),
            None => de::Deserializer::deserialize_any(Value::Dict(Vec::new()), v),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a str",
        Value::Bytes(_) => "bytes",
        Value::ByteArray(_) => "a bytearray",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Set(_) => "a set",
        Value::FrozenSet(_) => "a frozenset",
        Value::Global { .. } => "a global",
        Value::Object(_) => "an object",
    }
}

impl IntoDeserializer<'_, PickleError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self {
            Value::None => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            Value::Int(i) => v.visit_i64(i),
            Value::BigInt(b) => {
                if let Ok(u) = u64::try_from(&b) {
                    v.visit_u64(u)
                } else if let Ok(i) = i128::try_from(&b) {
                    v.visit_i128(i)
                } else if let Ok(u) = u128::try_from(&b) {
                    v.visit_u128(u)
                } else {
                    Err(PickleError::Type(format!(
                        "the int {b} does not fit 128 bits"
                    )))
                }
            }
            Value::Float(f) => v.visit_f64(f),
            Value::Str(s) => v.visit_string(s),
            Value::Bytes(b) | Value::ByteArray(b) => v.visit_byte_buf(b),
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Dict(kv) => {
                let mut map = MapDeserializer::new(kv.into_iter());
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            other @ (Value::Global { .. } | Value::Object(_)) => {
                // Only the names: an object's arguments could be gigabytes.
                let named = match &other {
                    Value::Global { module, name } => format!("{module}.{name}"),
                    Value::Object(o) => match &o.callable {
                        Value::Global { module, name } => format!("made by {module}.{name}"),
                        c => format!("made by {}", kind(c)),
                    },
                    _ => String::new(),
                };
                Err(PickleError::Type(format!(
                    "{} ({named}) has no serde form; decode it as a Value",
                    kind(&other)
                )))
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self {
            Value::None => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, PickleError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        match self {
            Value::Str(name) => v.visit_enum(Variant {
                name,
                content: None,
            }),
            Value::Dict(mut kv) if kv.len() == 1 => match kv.pop() {
                Some((Value::Str(name), content)) => v.visit_enum(Variant {
                    name,
                    content: Some(content),
                }),
                _ => Err(PickleError::Type("an enum's dict needs a str key".into())),
            },
            other => Err(PickleError::Type(format!(
                "an enum is a str or a one-entry dict, not {}",
                kind(&other)
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// An enum variant: its name and, but for unit variants, its content.
struct Variant {
    name: String,
    content: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = PickleError;
    type Variant = Content;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Content), PickleError> {
        let name = seed.deserialize(Value::Str(self.name))?;
        Ok((name, Content(self.content)))
    }
}

/// A variant's content (`None` for a unit variant written as its name).
struct Content(Option<Value>);

impl<'de> de::VariantAccess<'de> for Content {
    type Error = PickleError;

    fn unit_variant(self) -> Result<(), PickleError> {
        match self.0 {
            None | Some(Value::None) => Ok(()),
            Some(v) => Err(PickleError::Type(format!(
                "a unit variant with {}",
                kind(&v)
            ))),
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        seed.deserialize(self.0.unwrap_or(Value::None))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, PickleError> {
        de::Deserializer::deserialize_any(self.0.unwrap_or(Value::Tuple(Vec::new())), v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        de::Deserializer::deserialize_any(self.0.unwrap_or(Value::Dict(Vec::new())), v)
    }
}
