//! serde values into pickles, mapped to what a Python user expects: structs and maps to dicts (in
//! field or iteration order), tuples to tuples, sequences to lists, byte buffers (`serde_bytes`)
//! to bytes, `None` and `()` to `None`, integers past 64 bits to Python's big ints, enums as serde's
//! JSON does (a unit variant is its name, others `{name: content}`).

use super::PickleError;
use super::ser::{BATCH, Writer};
use num_bigint::BigInt;
use serde::ser::{self, Serialize};

/// Encodes any serde value as a protocol 4 pickle.
///
/// ```
/// use multiprocess::pickle::{decode, to_vec, Value};
/// #[derive(serde::Serialize)]
/// struct Point { x: i32, y: i32 }
/// let v = decode(&to_vec(&(Point { x: 1, y: -2 }, vec![7u8]))?)?;
/// assert_eq!(v, Value::Tuple(vec![
///     Value::Dict(vec![
///         (Value::Str("x".into()), Value::Int(1)),
///         (Value::Str("y".into()), Value::Int(-2)),
///     ]),
///     Value::List(vec![Value::Int(7)]),
/// ]));
/// # Ok::<(), multiprocess::pickle::PickleError>(())
/// ```
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PickleError> {
    let mut w = Writer::new();
    value.serialize(&mut Ser { w: &mut w })?;
    Ok(w.finish())
}

struct Ser<'a> {
    w: &'a mut Writer,
}

/// A list, dict or set being written in batches: how many items so far, and the batch opcode.
struct Batched<'a, 'b> {
    s: &'b mut Ser<'a>,
    count: usize,
    each: u8,
}

impl Batched<'_, '_> {
    fn item(&mut self) {
        if self.count.is_multiple_of(BATCH) {
            if self.count > 0 {
                self.s.w.op(self.each);
            }
            self.s.w.op(b'(');
        }
        self.count += 1;
    }

    fn end(self) {
        if self.count > 0 {
            self.s.w.op(self.each);
        }
    }
}

/// A tuple (a mark, its items, `TUPLE`), possibly inside a one-entry dict (enum variants).
struct Tupled<'a, 'b> {
    s: &'b mut Ser<'a>,
    /// Close the `{variant: ...}` dict after the tuple.
    variant: bool,
}

/// A dict for a struct, possibly inside a one-entry dict (struct variants).
struct Structed<'a, 'b> {
    inner: Batched<'a, 'b>,
    variant: bool,
}

impl<'a> Ser<'a> {
    /// Opens `{name: ` for an enum variant's content.
    fn open_variant(&mut self, name: &str) {
        self.w.op(b'}');
        self.w.str(name);
    }

    /// Closes it (`SETITEM`).
    fn close_variant(&mut self) {
        self.w.op(b's');
    }
}

impl<'a, 'b> ser::Serializer for &'b mut Ser<'a> {
    type Ok = ();
    type Error = PickleError;
    type SerializeSeq = Batched<'a, 'b>;
    type SerializeTuple = Tupled<'a, 'b>;
    type SerializeTupleStruct = Tupled<'a, 'b>;
    type SerializeTupleVariant = Tupled<'a, 'b>;
    type SerializeMap = Batched<'a, 'b>;
    type SerializeStruct = Structed<'a, 'b>;
    type SerializeStructVariant = Structed<'a, 'b>;

    fn serialize_bool(self, v: bool) -> Result<(), PickleError> {
        self.w.bool(v);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), PickleError> {
        self.w.int(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), PickleError> {
        match i64::try_from(v) {
            Ok(v) => self.w.int(v),
            Err(_) => self.w.bigint(&BigInt::from(v)),
        }
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), PickleError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), PickleError> {
        self.serialize_u128(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<(), PickleError> {
        match i64::try_from(v) {
            Ok(v) => self.w.int(v),
            Err(_) => self.w.bigint(&BigInt::from(v)),
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), PickleError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), PickleError> {
        self.w.float(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), PickleError> {
        self.w.str(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), PickleError> {
        self.w.str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), PickleError> {
        self.w.bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), PickleError> {
        self.w.none();
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), PickleError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), PickleError> {
        self.w.none();
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), PickleError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), PickleError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        self.open_variant(variant);
        v.serialize(&mut *self)?;
        self.close_variant();
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Batched<'a, 'b>, PickleError> {
        self.w.op(b']');
        Ok(Batched {
            s: self,
            count: 0,
            each: b'e',
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Tupled<'a, 'b>, PickleError> {
        self.w.op(b'(');
        Ok(Tupled {
            s: self,
            variant: false,
        })
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Tupled<'a, 'b>, PickleError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Tupled<'a, 'b>, PickleError> {
        self.open_variant(variant);
        self.w.op(b'(');
        Ok(Tupled {
            s: self,
            variant: true,
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Batched<'a, 'b>, PickleError> {
        self.w.op(b'}');
        Ok(Batched {
            s: self,
            count: 0,
            each: b'u',
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Structed<'a, 'b>, PickleError> {
        self.w.op(b'}');
        Ok(Structed {
            inner: Batched {
                s: self,
                count: 0,
                each: b'u',
            },
            variant: false,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Structed<'a, 'b>, PickleError> {
        self.open_variant(variant);
        self.w.op(b'}');
        Ok(Structed {
            inner: Batched {
                s: self,
                count: 0,
                each: b'u',
            },
            variant: true,
        })
    }
}

impl ser::SerializeSeq for Batched<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        self.item();
        v.serialize(&mut *self.s)
    }
    fn end(self) -> Result<(), PickleError> {
        Batched::end(self);
        Ok(())
    }
}

impl ser::SerializeMap for Batched<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), PickleError> {
        self.item();
        k.serialize(&mut *self.s)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.s)
    }
    fn end(self) -> Result<(), PickleError> {
        Batched::end(self);
        Ok(())
    }
}

impl Tupled<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.s)
    }
    fn finish(self) -> Result<(), PickleError> {
        self.s.w.op(b't');
        if self.variant {
            self.s.close_variant();
        }
        Ok(())
    }
}

impl ser::SerializeTuple for Tupled<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        self.element(v)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Tupled<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        self.element(v)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Tupled<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        self.element(v)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish()
    }
}

impl Structed<'_, '_> {
    fn field<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> Result<(), PickleError> {
        self.inner.item();
        self.inner.s.w.str(k);
        v.serialize(&mut *self.inner.s)
    }
    fn finish(self) -> Result<(), PickleError> {
        let variant = self.variant;
        let count = self.inner.count;
        let each = self.inner.each;
        let s = self.inner.s;
        if count > 0 {
            s.w.op(each);
        }
        if variant {
            s.close_variant();
        }
        Ok(())
    }
}

impl ser::SerializeStruct for Structed<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        self.field(k, v)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Structed<'_, '_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        self.field(k, v)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish()
    }
}
