//! The floor: encodings every module may use and that use nothing of the crate's
//! own but each other. Hex, base62, CRC-32, ROT13, Keccak-256, strict JSON and
//! compact JWS segments.
//!
//! Where a well-kept crate does the job (`hex`, `crc32fast`, `sha3`, `base64`), this
//! module only names the variant the crate uses, so that every caller agrees on it.

pub(crate) mod json;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) use json::{JsonError, parse_object};

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Hex digits into `out`, which must be half as long as `s`: whether they decode
/// (an odd count does not).
pub(crate) fn unhex_into(s: &str, out: &mut [u8]) -> bool {
    hex::decode_to_slice(s, out).is_ok()
}

/// Exactly 64 hex digits to 32 bytes.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The value of one hex digit.
pub(crate) fn hex_digit(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).map(|d| d as u8)
}

/// CRC-32 (IEEE 802.3), as GitHub's token format uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The base62 alphabet (digits, upper case, lower case), as GitHub's tokens use it.
pub(crate) fn base62_digit(i: u8) -> u8 {
    BASE62[usize::from(i % 62)]
}

/// A number as exactly `N` base62 digits, most significant first (zero-padded).
pub(crate) fn base62_fixed<const N: usize>(mut v: u32) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// ROT13 of ASCII letters; everything else unchanged.
pub(crate) fn rot13(c: char) -> char {
    match c {
        'a'..='m' | 'A'..='M' => (c as u8 + 13) as char,
        'n'..='z' | 'N'..='Z' => (c as u8 - 13) as char,
        _ => c,
    }
}

/// ROT13 of a text, a byte at a time (only ASCII letters change, to ASCII
/// letters: the bytes of other characters are left as they are, and the text
/// stays UTF-8). Branch-free, so that the compiler can do many bytes at once: a
/// character at a time it took 1.8 ns a byte.
pub(crate) fn rot13_str(text: &str) -> String {
    let bytes: Vec<u8> = text
        .bytes()
        .map(|b| {
            let i = (b | 0x20).wrapping_sub(b'a');
            let shift = if i < 13 { 13 } else { 0u8.wrapping_sub(13) };
            b.wrapping_add(if i < 26 { shift } else { 0 })
        })
        .collect();
    String::from_utf8(bytes).unwrap_or_else(|_| text.chars().map(rot13).collect())
}

/// Keccak-256 with the original padding, as Ethereum uses it (not SHA3-256).
pub(crate) fn keccak256(data: &[u8]) -> [u8; 32] {
    use sha3::Digest as _;
    sha3::Keccak256::digest(data).into()
}

/// Whether `text` matches a glob whose `*` stands for any run of characters (the one
/// pattern dialect of the crate: grants, rule actions, inventory reports).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A compact JWS (`header.payload.signature`) split into its three segments; `None`
/// unless there are exactly three.
pub(crate) fn jws_segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

/// One base64url segment (no padding, canonical: unused trailing bits must be zero,
/// so one byte string has one encoding).
pub(crate) fn b64url(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// A segment of a JWS as a strict JSON object (no duplicate member names at any
/// depth, nothing around the object): the header and the JWT claims, and receipts'
/// claims, are read by this one parser.
pub(crate) fn jws_object(
    segment: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwsError> {
    let bytes = b64url(segment).ok_or(JwsError::Base64)?;
    parse_object(&bytes).map_err(JwsError::Json)
}

/// Why a JWS segment could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwsError {
    Base64,
    Json(JsonError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        let mut out = [0u8; 3];
        assert!(unhex_into("00ABff", &mut out));
        assert_eq!(out, [0, 0xab, 0xff]);
        assert!(!unhex_into("0", &mut []));
        assert!(!unhex_into("zz", &mut [0]));
        assert!(unhex32(&"ab".repeat(32)).is_some());
        assert!(unhex32(&"ab".repeat(31)).is_none());
        assert_eq!(hex_digit(b'f'), Some(15));
        assert_eq!(hex_digit(b'g'), None);
    }

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn base62_is_fixed_width() {
        assert_eq!(&base62_fixed::<6>(0), b"000000");
        assert_eq!(&base62_fixed::<6>(61), b"00000z");
        assert_eq!(&base62_fixed::<6>(62), b"000010");
    }

    #[test]
    fn rot13_is_its_own_inverse() {
        assert_eq!(rot13_str("Uryyb, Jbeyq!"), "Hello, World!");
        assert_eq!(rot13_str(&rot13_str("Any text 123")), "Any text 123");
    }

    #[test]
    fn keccak_is_ethereums() {
        assert_eq!(
            hex(&keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("pii.*", "pii.email"));
        assert!(glob_match("pii.*.email", "pii.work.email"));
        assert!(!glob_match("pii.*.email", "pii.email.work"));
        assert!(glob_match("spiffe://prod/*", "spiffe://prod/ns/a"));
        assert!(glob_match("a*b*c", "axxbyyc") && !glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }

    #[test]
    fn jws_segments_and_canonical_base64() {
        assert_eq!(jws_segments("a.b.c"), Some(("a", "b", "c")));
        assert_eq!(jws_segments("a.b"), None);
        assert_eq!(jws_segments("a.b.c.d"), None);
        assert_eq!(b64url("QQ"), Some(b"A".to_vec()));
        // "QR" decodes to "A" too, with non-zero unused bits: refused.
        assert_eq!(b64url("QR"), None);
        assert_eq!(b64url("QQ=="), None);
        let dup = URL_SAFE_NO_PAD.encode(br#"{"a":1,"a":2}"#);
        assert_eq!(jws_object(&dup), Err(JwsError::Json(JsonError::Duplicate)));
        assert_eq!(jws_object("!"), Err(JwsError::Base64));
    }
}
