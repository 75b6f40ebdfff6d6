//! A serde deserializer adapter that reads owned strings and byte buffers
//! through borrowed ones.
//!
//! bincode decodes a `String` (and a `Vec<u8>` asked for as a byte buffer)
//! by zero-filling a new buffer and copying into it; glibc serves zeroed
//! memory (`calloc`) without its per-thread cache, so every string of every
//! record paid a slow allocation, and the matching `free` a slow return. From
//! a slice, the same bytes can be borrowed and copied into an ordinary
//! allocation instead: this adapter asks for `str` / `bytes` where the value
//! asks for `string` / `byte_buf`, at every depth. The visitor gets
//! `visit_borrowed_str` instead of `visit_string` and builds the same value;
//! what is decoded, and the errors, are unchanged.

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// Wraps a deserializer (and, through [`Wrap`], everything it hands out).
pub(crate) struct Borrowing<D>(pub D);

/// Wraps a visitor, so that what it is given is wrapped in turn.
struct Wrap<V>(V);

macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method(Wrap(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Borrowing<D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_bytes deserialize_option deserialize_unit deserialize_seq
        deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_str(Wrap(visitor))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Wrap(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, Wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, Wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, Wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! visit {
    ($($method:ident: $ty:ty)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.0.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    visit! {
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32 visit_i64: i64
        visit_i128: i128 visit_u8: u8 visit_u16: u16 visit_u32: u32 visit_u64: u64
        visit_u128: u128 visit_f32: f32 visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String visit_bytes: &[u8]
        visit_borrowed_bytes: &'de [u8] visit_byte_buf: Vec<u8>
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Borrowing(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Borrowing(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Wrap(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
    }
}

/// Wraps a seed, so that the deserializer it is given is wrapped.
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Borrowing(d))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Seed(seed))?;
        Ok((value, Wrap(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use crate::codec::{decode_value, encode_value, CONFIG};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Name(String);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Plain,
        Named(Name),
        Pair(String, i64),
        Full {
            label: Option<String>,
            tags: Vec<String>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Everything {
        text: String,
        empty: String,
        maybe: Option<String>,
        none: Option<String>,
        list: Vec<String>,
        map: BTreeMap<String, Vec<u8>>,
        #[serde(with = "crate::bytes")]
        buf: Vec<u8>,
        tuple: (char, bool, u8, i16, u32, u64, i128, u128, f32, f64),
        shapes: Vec<Shape>,
        unit: Unit,
        nested: Box<Option<Everything>>,
    }

    fn sample(depth: u32) -> Everything {
        Everything {
            text: "Ada Lovelace — é ✓".into(),
            empty: String::new(),
            maybe: Some("x".repeat(300)),
            none: None,
            list: vec!["a".into(), String::new(), "ccc".into()],
            map: [("k1".to_string(), vec![1, 2]), ("k2".to_string(), vec![])].into(),
            buf: (0..=255).collect(),
            tuple: (
                'ß',
                true,
                7,
                -3,
                70_000,
                u64::MAX,
                i128::MIN,
                u128::MAX,
                1.5,
                -2.25,
            ),
            shapes: vec![
                Shape::Plain,
                Shape::Named(Name("n".into())),
                Shape::Pair("p".into(), -9),
                Shape::Full {
                    label: Some("l".into()),
                    tags: vec!["t".into()],
                },
            ],
            unit: Unit,
            nested: Box::new((depth > 0).then(|| sample(depth - 1))),
        }
    }

    #[test]
    fn values_decode_as_bincode_decodes_them() {
        let value = sample(2);
        let bytes = encode_value(&value).unwrap();
        let (plain, used): (Everything, usize) =
            bincode::serde::decode_from_slice(&bytes, CONFIG).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(plain, value);
        assert_eq!(decode_value::<Everything>(&bytes).unwrap(), value);
        // Each kind of value on its own, too.
        let text = encode_value(&"only a string").unwrap();
        assert_eq!(decode_value::<String>(&text).unwrap(), "only a string");
        let shape = encode_value(&Shape::Pair("q".into(), 4)).unwrap();
        assert_eq!(
            decode_value::<Shape>(&shape).unwrap(),
            Shape::Pair("q".into(), 4)
        );
    }

    #[test]
    fn bad_bytes_are_still_errors() {
        // A string that is not UTF-8.
        let bytes = encode_value(&serde_bytes_like(&[0xff, 0xfe])).unwrap();
        assert!(decode_value::<String>(&bytes).is_err());
        // Cut short, anywhere.
        let full = encode_value(&sample(0)).unwrap();
        for cut in [1, full.len() / 2, full.len() - 1] {
            assert!(decode_value::<Everything>(&full[..cut]).is_err());
        }
    }

    /// Bytes with a string's wire format (a length, then the bytes).
    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
