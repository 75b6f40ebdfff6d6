//! `#[serde(with = "crate::bytes")]` for `Vec<u8>` fields: serde's own
//! `Vec<u8>` goes element by element, a call per byte on both sides; as
//! bytes, bincode copies them in one go. The encoding is the same (a length,
//! then the bytes), so this changes speed, not the wire.

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    // Borrowed where the decoder can (bincode from a slice): one copy, no zeroing.
    d.deserialize_bytes(BytesVisitor)
}

/// Borrowed bytes that serialize as bytes: what the hand-written encoders
/// of the hot path are checked against.
#[cfg(test)]
pub(crate) struct AsBytes<'a>(pub &'a [u8]);

#[cfg(test)]
impl serde::Serialize for AsBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
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
