//! Where the `\n`s of a buffer are, for cutting JSON lines.
//!
//! `memchr::memchr_iter` starts a vector search for every match, which costs
//! about 10 ns per line when lines are short (the `age` records are ~76
//! bytes). [`newlines`] instead compares 64 bytes at a time with `\n` and
//! keeps the result as a bit mask, one bit per byte, so that each line costs
//! a bit scan: about 3 ns per line on the same data.

/// The offsets of the `\n`s in `bytes`, in order: the same as
/// `memchr::memchr_iter(b'\n', bytes)`.
pub fn newlines(bytes: &[u8]) -> Newlines<'_> {
    Newlines {
        bytes,
        base: 0,
        next: 0,
        mask: 0,
    }
}

/// The iterator of [`newlines`].
#[derive(Debug, Clone)]
pub struct Newlines<'a> {
    bytes: &'a [u8],
    /// Offset of the block that `mask` describes.
    base: usize,
    /// Offset of the next block to look at.
    next: usize,
    /// The `\n`s of the current block not yet yielded, bit `i` for byte `base + i`.
    mask: u64,
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            if self.next >= self.bytes.len() {
                return None;
            }
            self.base = self.next;
            let rest = &self.bytes[self.base..];
            self.mask = match rest.first_chunk::<64>() {
                Some(block) => mask64(block),
                None => mask_tail(rest),
            };
            self.next += 64;
        }
        let at = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Bit `i` set where `block[i]` is `\n`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn mask64(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let p = block.as_ptr().cast::<__m128i>();
    // SAFETY: SSE2 is part of every x86_64 CPU; the four unaligned 16-byte
    // loads read `block`'s 64 bytes and nothing past them.
    unsafe {
        let nl = _mm_set1_epi8(b'\n' as i8);
        let part = |k: usize| {
            let bytes = _mm_loadu_si128(p.add(k));
            u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, nl)) as u16) << (16 * k)
        };
        part(0) | part(1) | part(2) | part(3)
    }
}

/// Bit `i` set where `block[i]` is `\n`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn mask64(block: &[u8; 64]) -> u64 {
    mask_tail(block)
}

/// Bit `i` set where `bytes[i]` is `\n` (`bytes` at most 64 long).
#[inline]
fn mask_tail(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .enumerate()
        .fold(0, |mask, (i, &b)| mask | (u64::from(b == b'\n') << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from a small xorshift generator, `\n` about one in `every`.
    fn noise(len: usize, every: u64, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed.is_multiple_of(every) {
                    b'\n'
                } else {
                    (seed >> 32) as u8 | 1
                }
            })
            .collect()
    }

    #[test]
    fn the_same_as_memchr_at_every_length_offset_and_density() {
        for every in [1, 2, 7, 64, 80, 1000] {
            let data = noise(700, every, every * 2654435761 + 1);
            for start in 0..70 {
                for end in (start..data.len()).step_by(13).chain([data.len()]) {
                    let slice = &data[start..end];
                    let want: Vec<usize> = memchr::memchr_iter(b'\n', slice).collect();
                    let got: Vec<usize> = newlines(slice).collect();
                    assert_eq!(got, want, "every {every}, {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn the_plain_mask_of_other_targets_is_the_vector_one() {
        for every in [1, 3, 64, 200] {
            let data = noise(64 * 40, every, every + 7);
            for block in data.chunks_exact(64) {
                let block: &[u8; 64] = block.try_into().unwrap();
                assert_eq!(mask_tail(block), mask64(block), "every {every}");
            }
        }
    }

    #[test]
    fn edges() {
        assert_eq!(newlines(b"").count(), 0);
        assert_eq!(newlines(b"\n").collect::<Vec<_>>(), [0]);
        assert_eq!(newlines(&[b'\n'; 130]).count(), 130);
        assert_eq!(newlines(&[b'x'; 130]).count(), 0);
        let mut last = vec![b'x'; 128];
        last[63] = b'\n';
        last[64] = b'\n';
        last[127] = b'\n';
        assert_eq!(newlines(&last).collect::<Vec<_>>(), [63, 64, 127]);
        // Bytes that differ from `\n` by one bit, or hold it in their low bits.
        let near: Vec<u8> = [0x0b, 0x08, 0x8a, 0x1a, 0x4a, 0x0a].repeat(40);
        let want: Vec<usize> = memchr::memchr_iter(b'\n', &near).collect();
        assert_eq!(newlines(&near).collect::<Vec<_>>(), want);
    }
}
