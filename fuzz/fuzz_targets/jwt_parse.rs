//! Arbitrary text as a token: the verifier must never panic, must reject it (no key can
//! sign random bytes here), and must answer with a documented reason code.
#![no_main]

use std::sync::OnceLock;

use inference_guard::identity::{Algorithm, JwtVerifier, KeySet};
use libfuzzer_sys::fuzz_target;

const CODES: &[&str] = &[
    "too_large",
    "malformed",
    "bad_base64",
    "bad_json",
    "duplicate_member",
    "alg_none",
    "unsupported_alg",
    "alg_mismatch",
    "bad_typ",
    "untrusted_key_reference",
    "unsupported_crit",
    "bad_kid",
    "unknown_kid",
    "ambiguous_key",
    "bad_signature",
    "missing_claim",
    "bad_claim",
    "bad_issuer",
    "bad_audience",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "lifetime_too_long",
    "bad_spiffe_id",
    "untrusted_trust_domain",
    "replayed",
];

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut keys = KeySet::new();
        keys.add_hmac("k1", Algorithm::HS256, &[7u8; 32]).unwrap();
        keys.add_raw_public_key("k2", Algorithm::EdDSA, &[9u8; 32])
            .unwrap();
        JwtVerifier::builder()
            .issuer("iss")
            .audience("aud")
            .keys(keys)
            .spiffe_trust_domain("example.org")
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    // Also feed the structured shape: three segments of base64url-encoded input.
    let shaped = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = data.splitn(3, |&b| b == 0);
        let h = parts.next().unwrap_or_default();
        let p = parts.next().unwrap_or_default();
        let s = parts.next().unwrap_or_default();
        format!("{}.{}.{}", e.encode(h), e.encode(p), e.encode(s))
    };
    for t in [token, shaped.as_str()] {
        match verifier().verify_token(t) {
            Ok(_) => panic!("an unsigned token was accepted"),
            Err(e) => assert!(CODES.contains(&e.code()), "undocumented code {}", e.code()),
        }
    }
});
