//! A reader of the bytes releases before the postcard codec wrote: bincode 1's
//! `serialize` layout with fixed-width integers, restricted to what a serde `Deserialize`
//! derive asks for. Data dirs written by those releases hold such values in the database
//! and the log files; [`super::decode`] hands every value without the postcard tag here.
//!
//! Owns the legacy layout and nothing else: it never writes, and it must not grow into a
//! second codec (new values are always postcard). It replaces the `bincode` crate, which is
//! unmaintained (RUSTSEC-2025-0141), so that the old bytes stay readable without it.
//!
//! The layout: integers and floats little-endian at their full width; `bool` one byte, 0 or 1;
//! `char` its UTF-8 bytes; strings, byte strings, sequences and maps a `u64` length then
//! their items; `Option` one byte (0 none, 1 some) then the value; structs and tuples their
//! fields in order, without a length; enums a `u32` variant index then the variant's fields.
//! Not self-describing: `deserialize_any` is refused, as bincode refused it.
//!
//! Memory a hostile input can make it allocate is bounded as bincode's was: a string or
//! byte string is checked against the bytes left before anything is copied, and a sequence
//! reports its declared length only as a size hint, which serde caps at 1 MiB of
//! preallocation (`node/tests/decode_alloc.rs` measures it).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Why legacy bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub enum Bincode1Error {
    /// The input ended inside a value.
    #[error("legacy (bincode 1) value: unexpected end of input")]
    Eof,
    /// A bool, option tag or char that the layout cannot hold.
    #[error("legacy (bincode 1) value: invalid {0}")]
    Invalid(&'static str),
    /// A length that does not fit this machine's `usize`.
    #[error("legacy (bincode 1) value: length {0} too large")]
    Length(u64),
    /// The type asked for something the layout cannot answer (e.g. `deserialize_any`).
    #[error("legacy (bincode 1) value: {0}")]
    Custom(String),
}

impl de::Error for Bincode1Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Bincode1Error::Custom(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Bincode1Error>;

/// Decodes one legacy value from the start of `b` (trailing bytes are allowed, as they were).
pub fn from_slice<'de, T: de::Deserialize<'de>>(b: &'de [u8]) -> Result<T> {
    T::deserialize(&mut Reader { input: b })
}

struct Reader<'de> {
    input: &'de [u8],
}

impl<'de> Reader<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(Bincode1Error::Eof);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| Bincode1Error::Length(n))
    }

    fn bytes(&mut self) -> Result<&'de [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'de str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Bincode1Error::Invalid("UTF-8 string"))
    }
}

macro_rules! fixed {
    ($($method:ident $visit:ident $t:ty;)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
            v.$visit(<$t>::from_le_bytes(self.array()?))
        })*
    };
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Bincode1Error;

    fixed! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_i128 visit_i128 i128;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
        deserialize_u128 visit_u128 u128;
        deserialize_f32 visit_f32 f32;
        deserialize_f64 visit_f64 f64;
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Bincode1Error::Custom("the layout is not self-describing".into()))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        match self.take(1)?[0] {
            0 => v.visit_bool(false),
            1 => v.visit_bool(true),
            _ => Err(Bincode1Error::Invalid("bool")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let first = self.take(1)?[0];
        let width = match first {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return Err(Bincode1Error::Invalid("char")),
        };
        let mut buf = [first, 0, 0, 0];
        buf[1..width].copy_from_slice(self.take(width - 1)?);
        let s = std::str::from_utf8(&buf[..width]).map_err(|_| Bincode1Error::Invalid("char"))?;
        match s.chars().next() {
            Some(c) => v.visit_char(c),
            None => Err(Bincode1Error::Invalid("char")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        self.deserialize_bytes(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        match self.take(1)?[0] {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            _ => Err(Bincode1Error::Invalid("option tag")),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let len = self.len()?;
        v.visit_seq(Items { r: self, left: len })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value> {
        v.visit_seq(Items { r: self, left: len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, len: usize, v: V) -> Result<V::Value> {
        self.deserialize_tuple(len, v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let len = self.len()?;
        v.visit_map(Items { r: self, left: len })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), v)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], v: V) -> Result<V::Value> {
        v.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Bincode1Error::Custom("identifiers are not stored in the layout".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Bincode1Error::Custom(
            "the layout cannot skip a value it does not know".into(),
        ))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The items of a sequence, tuple, struct or map: `left` more to read.
struct Items<'a, 'de> {
    r: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Bincode1Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.r).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Bincode1Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.r).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.r)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = Bincode1Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = u32::from_le_bytes(self.array()?);
        let value = seed.deserialize(IntoDeserializer::<Bincode1Error>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = Bincode1Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, v)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), v)
    }
}
