//! Byte tests a word at a time (SWAR), shared by the parser's line scan and the subject
//! index's check of a published subject. Sans-IO, no state.

const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
const HIGH: u64 = u64::from_le_bytes([0x80; 8]);

/// Bit 7 of each byte of the result is set where that byte of `w` is below `limit` (at most
/// 0x80), exactly: `(b & 0x7f) + (0x80 - limit)` reaches 0x80 when `b & 0x7f` is at least
/// `limit` and never carries into the next byte, so a byte is below when neither that bit
/// nor its own top bit is set.
#[inline(always)]
pub(crate) fn bytes_below(w: u64, limit: u8) -> u64 {
    let add = u64::from_le_bytes([0x80 - limit; 8]);
    !(w | ((w & LOW7) + add)) & HIGH
}

/// Bit 7 of each byte of the result is set where that byte of `w` equals `b`, exactly.
#[inline(always)]
pub(crate) fn bytes_equal(w: u64, b: u8) -> u64 {
    bytes_below(w ^ u64::from_le_bytes([b; 8]), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value in every lane, with neighbours that could carry or borrow.
    #[test]
    fn masks_are_exact() {
        for v in 0..=255u8 {
            for lane in 0..8 {
                for fill in [0x00, 0x7f, 0x80, 0xff, b'.'] {
                    let mut bytes = [fill; 8];
                    bytes[lane] = v;
                    let w = u64::from_le_bytes(bytes);
                    let below: fn(u8) -> bool = |b| b < 0x21;
                    let dot: fn(u8) -> bool = |b| b == b'.';
                    for (mask, hit) in [(bytes_below(w, 0x21), below), (bytes_equal(w, b'.'), dot)]
                    {
                        let want = bytes
                            .iter()
                            .enumerate()
                            .filter(|&(_, &b)| hit(b))
                            .fold(0u64, |m, (i, _)| m | 0x80 << (8 * i));
                        assert_eq!(mask, want, "{bytes:02x?}");
                    }
                }
            }
        }
    }
}
