//! The bincode codec: the one place that knows the wire encoding.
//!
//! bincode 2.0.1 with its serde integration, standard configuration
//! (little-endian, variable-length integers) and a hard size limit, so that a
//! length prefix in garbage bytes can never make a decoder allocate without
//! bound. Trailing bytes after a message are an error.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

use crate::borrowing::Borrowing;
use crate::{Request, WorkerMessage};

/// The largest message either side will encode or decode (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest encoded record payload or task output (63 MiB): what is left
/// of a message for one record once room is kept for the rest of its batch
/// (batches are cut at 192 KiB of other records) or of its results message.
pub const MAX_RECORD_BYTES: usize = MAX_MESSAGE_BYTES - (1 << 20);

type Config = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_BYTES>>;

pub(crate) const CONFIG: Config = config::standard().with_limit::<MAX_MESSAGE_BYTES>();

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Encoding failed (a value that serde cannot represent, or over the size limit).
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid message.
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A value encodes to more bytes than the wire accepts.
    #[error("{what} of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// `message` or `record`.
        what: &'static str,
        /// Its encoded size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A valid message followed by extra bytes.
    #[error("cannot decode: {extra} trailing bytes after the message")]
    Trailing {
        /// How many bytes were left over.
        extra: usize,
    },
}

/// Encode any serde value (a record, a result, a task's parameters).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::new();
    encode_into(value, &mut bytes)?;
    Ok(bytes)
}

/// Encode a value by appending to `buf`, so that callers can reuse one buffer.
/// A value over [`MAX_MESSAGE_BYTES`] (which the other side would refuse to
/// decode) is an error and leaves `buf` as it was.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    encode_limited(value, buf, MAX_MESSAGE_BYTES, "message")
}

/// Encode one record's payload (or one task output) by appending to `buf`:
/// over [`MAX_RECORD_BYTES`] it is an error (that record's, not its batch's),
/// and `buf` is left as it was.
pub fn encode_record_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError> {
    encode_limited(value, buf, MAX_RECORD_BYTES, "record")
}

fn encode_limited<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    limit: usize,
    what: &'static str,
) -> Result<(), CodecError> {
    let start = buf.len();
    if let Err(e) = bincode::serde::encode_into_std_write(value, buf, CONFIG) {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = buf.len() - start;
    if len > limit {
        buf.truncate(start);
        return Err(CodecError::TooLarge { what, len, limit });
    }
    Ok(())
}

/// Decode a serde value that must span all of `bytes`.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    /// `T`, with its strings read through borrowed ones (see [`Borrowing`]).
    struct Via<T>(T);
    impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Via<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            T::deserialize(Borrowing(d)).map(Via)
        }
    }
    let (Via(value), used) = bincode::serde::borrow_decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Encode `Request::Batch` straight from borrowed payloads, appending to
/// `buf`: the coordinator keeps each payload for a possible retry and need
/// not copy it into an owned [`crate::Batch`] first. Decodes as `Request::Batch`.
///
/// Written field by field with `put_u64` and `put_bytes` (bincode's own
/// encoding of these types, checked against it in the tests): through serde
/// every integer would be a `Write` call of its own.
pub fn encode_batch<'a, I>(id: u64, records: I, buf: &mut Vec<u8>) -> Result<(), CodecError>
where
    I: ExactSizeIterator<Item = (u64, &'a [u8])>,
{
    let start = buf.len();
    // `Request::Batch(Batch { id, records })`: variant 1.
    put_u64(buf, 1);
    put_u64(buf, id);
    put_u64(buf, records.len() as u64);
    for (seq, payload) in records {
        put_u64(buf, seq);
        put_bytes(buf, payload);
    }
    check_message(buf, start)
}

/// Append one record of a batch to `buf` as [`encode_batch`] writes it (its
/// sequence number, then its payload as bytes), with the payload appended by
/// `payload`. Returns where the payload is in `buf`; on an error `buf` is
/// left as it was. Records appended so become a batch with
/// [`encode_batch_of`], with no further work per record.
pub fn append_record<E>(
    buf: &mut Vec<u8>,
    seq: u64,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<std::ops::Range<usize>, E> {
    let start = buf.len();
    put_u64(buf, seq);
    // One byte for the length, enough below 251 bytes; more are made room for after.
    let at = buf.len();
    buf.push(0);
    if let Err(e) = payload(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - at - 1;
    if len < 251 {
        buf[at] = len as u8;
    } else {
        let mut prefix = [0u8; 9];
        let n = varint(len as u64, &mut prefix);
        buf.resize(buf.len() + n - 1, 0);
        buf.copy_within(at + 1..at + 1 + len, at + n);
        buf[at..at + n].copy_from_slice(&prefix[..n]);
    }
    let end = buf.len();
    Ok(end - len..end)
}

/// Encode `Request::Batch` of `count` records already appended to `records`
/// by [`append_record`], appending to `buf`. Decodes as `Request::Batch`.
pub fn encode_batch_of(
    id: u64,
    count: usize,
    records: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = buf.len();
    buf.reserve(records.len() + BATCH_HEAD_BYTES);
    encode_batch_head(id, count, buf);
    buf.extend_from_slice(records);
    check_message(buf, start)
}

/// The head of a batch message, as [`encode_batch_of`] writes it before the
/// records: written in front of records already in place, it makes the
/// message without copying them.
pub fn encode_batch_head(id: u64, count: usize, buf: &mut Vec<u8>) {
    // `Request::Batch(Batch { id, records })`: variant 1.
    put_u64(buf, 1);
    put_u64(buf, id);
    put_u64(buf, count as u64);
}

/// Most bytes [`encode_batch_head`] writes: three varints.
pub const BATCH_HEAD_BYTES: usize = 27;

/// The head of a `Request::Lines` message, written in front of its `len`
/// bytes of lines already in place, as for [`encode_batch_head`].
pub fn encode_lines_head(id: u64, first_seq: u64, count: usize, len: usize, buf: &mut Vec<u8>) {
    // `Request::Lines(LinesBatch { id, first_seq, count, lines })`: variant 5.
    put_u64(buf, 5);
    put_u64(buf, id);
    put_u64(buf, first_seq);
    put_u64(buf, count as u64);
    put_u64(buf, len as u64);
}

/// Most bytes [`encode_lines_head`] writes: five varints.
pub const LINES_HEAD_BYTES: usize = 45;

/// A message appended to `buf` from `start` must be within
/// [`MAX_MESSAGE_BYTES`]; if not, it is taken off again.
pub(crate) fn check_message(buf: &mut Vec<u8>, start: usize) -> Result<(), CodecError> {
    let len = buf.len() - start;
    if len > MAX_MESSAGE_BYTES {
        buf.truncate(start);
        return Err(CodecError::TooLarge {
            what: "message",
            len,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// Append `v` as bincode's standard configuration encodes any unsigned
/// integer (a `u64`, a `u32`, a length, an enum's variant index): one byte
/// below 251, else a marker byte and 2, 4 or 8 little-endian bytes.
#[inline]
pub(crate) fn put_u64(buf: &mut Vec<u8>, v: u64) {
    if v < 251 {
        buf.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        buf.push(251);
        buf.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        buf.push(252);
        buf.extend_from_slice(&v.to_le_bytes());
    } else {
        buf.push(253);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// `v` as [`put_u64`] writes it, into `out`; returns how many bytes.
fn varint(v: u64, out: &mut [u8; 9]) -> usize {
    if v < 251 {
        out[0] = v as u8;
        1
    } else if let Ok(v) = u16::try_from(v) {
        out[0] = 251;
        out[1..3].copy_from_slice(&v.to_le_bytes());
        3
    } else if let Ok(v) = u32::try_from(v) {
        out[0] = 252;
        out[1..5].copy_from_slice(&v.to_le_bytes());
        5
    } else {
        out[0] = 253;
        out[1..9].copy_from_slice(&v.to_le_bytes());
        9
    }
}

/// Append bytes as bincode encodes `serialize_bytes`: the length, then them.
#[inline]
pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A message that can travel on the wire.
pub trait Message: Serialize + DeserializeOwned {}
impl Message for Request {}
impl Message for WorkerMessage {}

/// Encode a protocol message.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, CodecError> {
    encode_value(message)
}

/// Decode a protocol message.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, CodecError> {
    decode_value(bytes)
}

/// Read the variant index and protocol version at the start of a worker's
/// first message, whatever the rest of it holds. Lets the coordinator tell
/// "another protocol version" from "garbage".
pub fn decode_prefix(bytes: &[u8]) -> Result<(u32, u32), CodecError> {
    let ((variant, version), _) =
        bincode::serde::decode_from_slice::<(u32, u32), _>(bytes, CONFIG)?;
    Ok((variant, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn hello() -> WorkerMessage {
        WorkerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: 4242,
            host: "node-a".into(),
            token: "secret".into(),
            tasks: vec![TaskInfo {
                name: "age".into(),
                description: "d".into(),
                input_fields: vec!["name".into()],
                output_fields: vec!["age".into()],
                types: crate::TaskTypes {
                    task: "tasks::Age".into(),
                    input: "tasks::Scientist".into(),
                    output: "tasks::Aged".into(),
                },
            }],
        })
    }

    fn samples() -> (Vec<Request>, Vec<WorkerMessage>) {
        let requests = vec![
            Request::Configure {
                spec: TaskSpec {
                    name: "age".into(),
                    params: vec![1, 2, 3],
                    params_encoding: ParamsEncoding::Bincode,
                    records: Encoding::Bincode,
                    threads: 1,
                },
                flush_each: true,
                record_times: false,
            },
            Request::Configure {
                spec: TaskSpec {
                    name: "word-stats".into(),
                    params: b"{\"min\":2}".to_vec(),
                    params_encoding: ParamsEncoding::Json,
                    records: Encoding::Csv {
                        header: b"text,lang".to_vec(),
                    },
                    threads: 4,
                },
                flush_each: false,
                record_times: true,
            },
            Request::Batch(Batch {
                id: 7,
                records: (0..100)
                    .map(|seq| Record {
                        seq: seq * 1_000_003,
                        payload: vec![seq as u8; seq as usize],
                    })
                    .collect(),
            }),
            Request::Stop,
        ];
        let replies = vec![
            hello(),
            WorkerMessage::Ready,
            WorkerMessage::Rejected {
                reason: "no such task".into(),
            },
            WorkerMessage::Results(BatchResults {
                batch: u64::MAX,
                thread: 3,
                busy_nanos: 12,
                started_us: 1_700_000_000_000_000,
                nanos: vec![5, u64::MAX],
                lengths: vec![40, 0],
                outputs: vec![9; 40],
                failures: vec![(
                    1,
                    TaskFailure {
                        kind: FailureKind::Panic,
                        message: "boom".into(),
                    },
                )],
            }),
            WorkerMessage::Heartbeat,
        ];
        (requests, replies)
    }

    #[test]
    fn messages_round_trip() {
        let (requests, replies) = samples();
        for r in requests {
            assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
        for m in replies {
            assert_eq!(decode::<WorkerMessage>(&encode(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn values_round_trip_and_reuse_buffer() {
        let mut buf = Vec::new();
        encode_into(&("Ada", 1815u32), &mut buf).unwrap();
        let first = buf.len();
        encode_into(&("Emmy", 1882u32), &mut buf).unwrap();
        assert_eq!(
            decode_value::<(String, u32)>(&buf[..first]).unwrap(),
            ("Ada".to_string(), 1815)
        );
        assert_eq!(
            decode_value::<(String, u32)>(&buf[first..]).unwrap(),
            ("Emmy".to_string(), 1882)
        );
    }

    #[test]
    fn hello_prefix_names_the_version() {
        let bytes = encode(&hello()).unwrap();
        assert_eq!(decode_prefix(&bytes).unwrap(), (0, PROTOCOL_VERSION));
        // A future Hello with a different layout still shows its version.
        let future = encode_value(&(0u32, 99u32, "whatever else")).unwrap();
        assert_eq!(decode_prefix(&future).unwrap(), (0, 99));
        assert!(decode::<WorkerMessage>(&future).is_err());
    }

    #[test]
    fn hand_written_integers_and_bytes_are_bincodes() {
        let edges = [
            0u64,
            1,
            250,
            251,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64 - 1,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            1_700_000_000_000_000,
            u64::MAX,
        ];
        for v in edges {
            let mut buf = vec![];
            put_u64(&mut buf, v);
            assert_eq!(buf, encode_value(&v).unwrap(), "{v}");
            if let Ok(small) = u32::try_from(v) {
                assert_eq!(buf, encode_value(&small).unwrap(), "{v} as u32");
            }
        }
        for len in [0usize, 1, 250, 251, 70_000] {
            let bytes = vec![7u8; len];
            let mut buf = vec![];
            put_bytes(&mut buf, &bytes);
            assert_eq!(buf, encode_value(&crate::bytes::AsBytes(&bytes)).unwrap());
        }
    }

    #[test]
    fn borrowed_batch_encodes_as_request_batch() {
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 300]];
        let mut buf = vec![];
        encode_batch(
            42,
            payloads
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 * 10, p.as_slice())),
            &mut buf,
        )
        .unwrap();
        let expected = Request::Batch(Batch {
            id: 42,
            records: payloads
                .iter()
                .enumerate()
                .map(|(i, p)| Record {
                    seq: i as u64 * 10,
                    payload: p.clone(),
                })
                .collect(),
        });
        assert_eq!(decode::<Request>(&buf).unwrap(), expected);
        assert_eq!(buf, encode(&expected).unwrap());
    }

    #[test]
    fn oversized_values_are_refused_and_leave_the_buffer_as_it_was() {
        // Strings: serde writes one in one call, a `Vec<u8>` byte by byte.
        let mut buf = vec![7u8; 3];
        let big = "x".repeat(MAX_RECORD_BYTES);
        // A payload of MAX_RECORD_BYTES bytes needs a length prefix too.
        let e = encode_record_into(&big, &mut buf).unwrap_err();
        assert!(
            matches!(e, CodecError::TooLarge { what: "record", .. }),
            "{e}"
        );
        assert_eq!(buf, [7, 7, 7]);
        let huge = "x".repeat(MAX_MESSAGE_BYTES);
        assert!(matches!(
            encode_into(&huge, &mut buf),
            Err(CodecError::TooLarge {
                what: "message",
                ..
            })
        ));
        assert_eq!(buf, [7, 7, 7]);
        assert!(encode_value(&huge).is_err());
        // Just under the record limit fits in a message with room to spare.
        let fits = "x".repeat(MAX_RECORD_BYTES - 8);
        encode_record_into(&fits, &mut buf).unwrap();
        assert!(buf.len() < MAX_MESSAGE_BYTES);
    }

    #[test]
    fn appended_records_encode_as_a_batch() {
        let sizes = [0usize, 1, 250, 251, 252, 65_535, 65_536, 70_000];
        let records: Vec<Record> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Record {
                seq: [0u64, 250, 251, 1 << 20, 1 << 40][i % 5],
                payload: (0..n).map(|b| b as u8).collect(),
            })
            .collect();
        let mut body = vec![];
        for r in &records {
            let at = append_record(&mut body, r.seq, |buf| {
                buf.extend_from_slice(&r.payload);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(&body[at], r.payload.as_slice());
        }
        let before = body.len();
        assert_eq!(
            append_record(&mut body, 5, |buf| {
                buf.extend_from_slice(b"half");
                Err("no")
            }),
            Err("no")
        );
        assert_eq!(body.len(), before, "a failed record leaves nothing");
        let mut buf = vec![9];
        encode_batch_of(77, records.len(), &body, &mut buf).unwrap();
        let expected = encode(&Request::Batch(Batch { id: 77, records })).unwrap();
        assert_eq!(&buf[1..], expected.as_slice());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Request::Stop).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::Trailing { extra: 1 })
        ));
    }

    #[test]
    fn truncations_are_rejected_without_panic() {
        let (requests, replies) = samples();
        for r in &requests {
            let bytes = encode(r).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode::<Request>(&bytes[..cut]).is_err(), "cut {cut}");
            }
        }
        for m in &replies {
            let bytes = encode(m).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode::<WorkerMessage>(&bytes[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_not_allocated() {
        // Variant 1 (Batch), id 0, then a record count of u64::MAX as a varint.
        let mut bytes = vec![1u8, 0u8, 0xFF];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Request>(&bytes).is_err());
        // Results with a payload length just over the limit.
        let mut bytes = vec![3u8, 0, 0, 1, 0, 0, 0xFD];
        bytes.extend_from_slice(&((MAX_MESSAGE_BYTES as u32) + 1).to_le_bytes());
        assert!(decode::<WorkerMessage>(&bytes).is_err());
    }

    /// Deterministic pseudo-random garbage (xorshift), plus bit flips of valid messages.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode::<Request>(&bytes);
            let _ = decode::<WorkerMessage>(&bytes);
            let _ = decode_prefix(&bytes);
        }
        let (requests, replies) = samples();
        let valid: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| encode(r).unwrap())
            .chain(replies.iter().map(|m| encode(m).unwrap()))
            .collect();
        for bytes in valid {
            for _ in 0..2_000 {
                let mut b = bytes.clone();
                let i = (next() as usize) % b.len();
                b[i] ^= 1 << (next() % 8);
                let _ = decode::<Request>(&b);
                let _ = decode::<WorkerMessage>(&b);
            }
        }
    }
}
