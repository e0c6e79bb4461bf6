//! Arbitrary receipts through `ReceiptVerifier`. Properties: no panic; nothing but
//! the genuine receipt verifies; any change to a genuine receipt is refused.
#![no_main]

use std::sync::OnceLock;

use inference_guard::audit::AuditSigningKey;
use inference_guard::receipt::{ReceiptSigner, ReceiptVerifier};
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

struct Fixture {
    verifier: ReceiptVerifier,
    receipt: String,
    text: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = AuditSigningKey::generate("fuzz").unwrap();
        let verifier = ReceiptVerifier::new([key.public_key()]);
        let g = common::open_guard(|b| {
            b.receipts(ReceiptSigner::new(key));
        });
        let text = "Approved.".to_owned();
        let c = g
            .check_request(common::user("ok?"))
            .unwrap()
            .check_response(GuardResponse::new(text.clone()))
            .unwrap();
        Fixture {
            verifier,
            receipt: c.receipt().unwrap().to_owned(),
            text,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // Arbitrary input as a receipt.
    if let Ok(s) = std::str::from_utf8(data) {
        let ok = f.verifier.verify(s, f.text.as_bytes()).is_ok();
        assert_eq!(ok, s == f.receipt);
    }
    // A genuine receipt with one byte changed.
    if data.len() >= 3 {
        let mut r = f.receipt.clone().into_bytes();
        let at = usize::from(u16::from_le_bytes([data[0], data[1]])) % r.len();
        if r[at] != data[2] {
            r[at] = data[2];
            if let Ok(s) = String::from_utf8(r) {
                assert!(f.verifier.verify(&s, f.text.as_bytes()).is_err());
            }
        }
    }
});
