//! Decoded pickles into serde types: the inverse of `serde_ser`'s mapping (any Python sequence
//! reads as a Rust sequence or tuple, any dict as a map or struct, `bytes` and `bytearray` as byte
//! buffers, ints into any integer type they fit).

use super::{PickleError, Value, decode};
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

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
    T::deserialize(decode(bytes)?)
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
