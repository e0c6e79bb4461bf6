//! Deterministic generated texts, for the tests that hold a fast path to the
//! general one it replaces.

/// `count` byte strings of fewer than `max_len` bytes drawn from `alphabet` (a
/// xorshift generator with a fixed seed: the same strings every run).
pub(crate) fn strings(
    alphabet: &'static [u8],
    max_len: u64,
    count: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..count).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (0..x % max_len)
            .map(|k| {
                let r = x.rotate_left(k as u32 * 5) ^ k.wrapping_mul(0x2545_F491_4F6C_DD1D);
                alphabet[(r % alphabet.len() as u64) as usize]
            })
            .collect()
    })
}

/// The same strings as text (`alphabet` is ASCII).
pub(crate) fn texts(
    alphabet: &'static [u8],
    max_len: u64,
    count: usize,
) -> impl Iterator<Item = String> {
    strings(alphabet, max_len, count).map(|b| b.into_iter().map(char::from).collect())
}

/// `count` texts of fewer than `most` pieces each, drawn from `pieces` (the same
/// texts every run).
pub(crate) fn pieces(
    pieces: &'static [&'static str],
    most: u64,
    count: usize,
) -> impl Iterator<Item = String> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..count).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut text = String::new();
        for k in 0..x % most {
            let r = x.rotate_left(k as u32 * 5) ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            text.push_str(pieces[(r % pieces.len() as u64) as usize]);
        }
        text
    })
}
