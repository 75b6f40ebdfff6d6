//! Byte payloads as bytes, not as sequences of `u8`: serde's default for a
//! `Vec<u8>` visits every byte on its own, which dominated the cost of tiny
//! records. bincode writes both the same way (a length, then the bytes), so
//! the wire format does not change.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Serializer;

pub(crate) fn serialize<T: AsRef<[u8]>, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v.as_ref())
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBuf)
}

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Bounded by the input: the size hint is a guess, never trusted beyond 4 KiB.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// A borrowed payload that serialises as bytes.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{decode_value, encode_value};

    #[test]
    fn bytes_have_the_wire_format_of_a_u8_sequence() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct AsBytes(#[serde(with = "super")] Vec<u8>);
        for v in [vec![], vec![7u8], (0..=255u8).cycle().take(1000).collect()] {
            let as_seq = encode_value(&v).unwrap();
            let as_bytes = encode_value(&AsBytes(v.clone())).unwrap();
            assert_eq!(as_seq, as_bytes);
            assert_eq!(
                decode_value::<AsBytes>(&as_seq).unwrap(),
                AsBytes(v.clone())
            );
            assert_eq!(decode_value::<Vec<u8>>(&as_bytes).unwrap(), v);
        }
    }
}
