//! Eight bytes at a time ("SIMD within a register"): the byte classes the word
//! readers need, over a `u64` loaded little-endian (the first byte lowest).

pub(crate) const LO: u64 = 0x0101_0101_0101_0101;
pub(crate) const HI: u64 = 0x8080_8080_8080_8080;

/// The eight bytes of `hay` from `at`, zero-padded past its end.
#[inline]
pub(crate) fn load(hay: &[u8], at: usize) -> u64 {
    match hay
        .get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
    {
        Some(b) => u64::from_le_bytes(b),
        None => partial(&hay[at.min(hay.len())..]),
    }
}

/// Fewer than eight bytes, zero-padded: two loads that overlap (the bytes they
/// share are the same), no loop.
#[inline]
fn partial(r: &[u8]) -> u64 {
    let n = r.len();
    let pair = |lo: u64, hi: u64, width: usize| lo | hi << (8 * (n - width));
    match n {
        4.. => {
            let (lo, hi) = (&r[..4], &r[n - 4..]);
            pair(
                u64::from(u32::from_le_bytes([lo[0], lo[1], lo[2], lo[3]])),
                u64::from(u32::from_le_bytes([hi[0], hi[1], hi[2], hi[3]])),
                4,
            )
        }
        2.. => pair(
            u64::from(u16::from_le_bytes([r[0], r[1]])),
            u64::from(u16::from_le_bytes([r[n - 2], r[n - 1]])),
            2,
        ),
        1 => u64::from(r[0]),
        _ => 0,
    }
}

/// The high bit of each byte of `x` (all below 0x80) that is at least `k`.
#[inline]
pub(crate) fn at_least(x: u64, k: u8) -> u64 {
    ((x | HI) - LO * u64::from(k)) & HI
}

/// The high bit of each byte of `x` that is an ASCII letter.
#[inline]
pub(crate) fn letters(x: u64) -> u64 {
    let y = (x & !HI) | (0x20 * LO);
    at_least(y, b'a') & !at_least(y, b'z' + 1) & !x & HI
}

/// The high bit of each byte of `x` that is an ASCII digit.
#[inline]
pub(crate) fn digits(x: u64) -> u64 {
    let y = x & !HI;
    at_least(y, b'0') & !at_least(y, b'9' + 1) & !x & HI
}

/// The high bit of each byte of `x` that is an ASCII letter or digit.
#[inline]
pub(crate) fn alnum(x: u64) -> u64 {
    letters(x) | digits(x)
}

/// The high bits of the bytes of `mask`, gathered into its low eight bits (the
/// first byte's lowest): a bit per byte.
#[inline]
pub(crate) fn gather(mask: u64) -> u64 {
    ((mask & HI) >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// A bit per byte of `block` (at most 64 bytes; bit `k` for byte `k`, none past
/// its end) that is in the class `f`. The class is first a byte per byte, in a
/// loop without a branch that the compiler turns into vector comparisons, then
/// [`gather`]ed eight bytes at a time: about half the time of classes computed
/// in eight-byte words for a class of two ranges.
#[inline]
pub(crate) fn mask(block: &[u8], f: impl Fn(u8) -> bool) -> u64 {
    let mut t = [0u8; 64];
    match <&[u8; 64]>::try_from(block) {
        Ok(b) => {
            for k in 0..64 {
                t[k] = u8::from(f(b[k]));
            }
        }
        Err(_) => {
            for (k, &c) in block.iter().take(64).enumerate() {
                t[k] = u8::from(f(c));
            }
        }
    }
    (0..8).fold(0, |m, j| {
        let mut e = [0u8; 8];
        e.copy_from_slice(&t[8 * j..8 * j + 8]);
        m | gather(u64::from_le_bytes(e) << 7) << (8 * j)
    })
}

/// How many bytes of `x` from the first have their high bit in `mask`.
#[inline]
pub(crate) fn run(mask: u64) -> usize {
    ((!mask & HI).trailing_zeros() / 8) as usize
}

/// `x` with its bytes past the first `k` cleared.
#[inline]
pub(crate) fn first(x: u64, k: usize) -> u64 {
    if k >= 8 {
        x
    } else {
        x & ((1u64 << (8 * k)) - 1)
    }
}

/// Whether any byte of `b` is in the class `f`: 64 bytes at a time without a
/// branch per byte, which the compiler turns into vector instructions (a byte
/// loop with an early exit reads about a quarter of a nanosecond a byte).
#[inline]
pub(crate) fn any(b: &[u8], f: impl Fn(u8) -> bool) -> bool {
    b.chunks(64)
        .any(|chunk| chunk.iter().fold(false, |any, &c| any | f(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value in every position, beside letters and digits.
    #[test]
    fn classes_agree_with_bytes() {
        for v in 0..=255u8 {
            for at in 0..8 {
                let mut x = *b"aZ09qzAM";
                x[at] = v;
                let w = u64::from_le_bytes(x);
                for (k, c) in x.iter().enumerate() {
                    let bit = 0x80u64 << (8 * k);
                    assert_eq!(
                        letters(w) & bit != 0,
                        c.is_ascii_alphabetic(),
                        "{v:#x} at {at}"
                    );
                    assert_eq!(
                        alnum(w) & bit != 0,
                        c.is_ascii_alphanumeric(),
                        "{v:#x} at {at}"
                    );
                }
                let n = x.iter().take_while(|c| c.is_ascii_alphanumeric()).count();
                assert_eq!(run(alnum(w)), n);
            }
        }
        for n in 0..=12 {
            let hay: Vec<u8> = (1..=n as u8).collect();
            for at in 0..=n + 1 {
                let want = hay
                    .get(at..)
                    .unwrap_or_default()
                    .iter()
                    .take(8)
                    .enumerate()
                    .fold(0u64, |v, (k, &b)| v | u64::from(b) << (8 * k));
                assert_eq!(load(&hay, at), want, "{n} bytes at {at}");
            }
        }
        assert_eq!(load(b"abc", 1), u64::from(b'b') | u64::from(b'c') << 8);
        assert_eq!(load(b"abc", 3), 0);
        assert_eq!(first(u64::MAX, 3), 0xff_ffff);
        assert_eq!(first(7, 8), 7);
    }

    /// A class's bits for blocks of every length up to 64 (and past it: the first
    /// 64 bytes), over every byte value.
    #[test]
    fn mask_has_a_bit_per_byte_in_the_class() {
        let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in 0..=70 {
            for from in [0, 1, 63, 200, 440] {
                let block = &bytes[from..(from + len).min(bytes.len())];
                for class in [u8::is_ascii_alphanumeric, u8::is_ascii_digit, |c: &u8| {
                    *c >= 0x80
                }] {
                    let want = block
                        .iter()
                        .take(64)
                        .enumerate()
                        .fold(0u64, |m, (k, c)| m | u64::from(class(c)) << k);
                    assert_eq!(mask(block, |c| class(&c)), want, "{len} from {from}");
                }
            }
        }
    }

    /// Every byte value at chunk edges and past them, and the empty slice.
    #[test]
    fn any_is_the_byte_loop() {
        for at in [0, 5, 63, 64, 65, 127, 128, 130] {
            for v in 0..=255u8 {
                let mut t = [b'a'; 140];
                t[at] = v;
                for len in [at, at + 1, 140] {
                    let t = &t[..len];
                    let class = |c: u8| c < 0x20 || c == b'[' || c >= 0xc0;
                    assert_eq!(
                        any(t, class),
                        t.iter().any(|&c| class(c)),
                        "{v:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!any(b"", |_| true));
    }
}
