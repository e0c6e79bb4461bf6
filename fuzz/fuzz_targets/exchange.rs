//! The HTTP exchange end to end, without a server: an arbitrary method and path, a
//! request body and an upstream answer. Properties: no panic; a path the exchange
//! guards or passes normalizes to itself (normalization is idempotent); an answer
//! that passes is JSON with only the allow-listed top-level fields; a credential
//! the upstream put anywhere in the answer never reaches the caller.
#![no_main]

use inference_guard::exchange::{Exchange, ExchangeConfig, Route, normalize_path};
use inference_guard::output::AnswerValidator;
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

fn exchange() -> &'static Exchange {
    static EX: std::sync::OnceLock<Exchange> = std::sync::OnceLock::new();
    EX.get_or_init(build)
}

fn build() -> Exchange {
    let guard = common::open_guard(|b| {
        b.input_scanner(scan::Scanner::new())
            .output_validator(AnswerValidator::new())
            .rule_action("secret.*", Action::Block);
    });
    Exchange::new(
        guard,
        ExchangeConfig::default().public_route("GET", "/v1/models"),
    )
}

const KEY: &str = concat!("AKIA", "Z4QW7RTY2UIOPL3M");

/// Whether `key` occurs as a whole token (glued to more letters or digits it is
/// another string, not this credential).
fn whole_token(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + key.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

fuzz_target!(|data: &[u8]| {
    let ex = exchange();
    // method \0 path \0 body \0 answer
    let mut parts = data.splitn(4, |b| *b == 0);
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default().to_vec();
    let answer = parts.next().unwrap_or_default();
    let n = normalize_path(&path);
    assert_eq!(normalize_path(&n), n, "normalization is idempotent");
    let route = ex.route(&method, &path);
    let headers = [("content-type", &b"application/json"[..])];
    let Ok(Some(pending)) = ex.begin(&method, &path, headers.iter().map(|(k, v)| (*k, *v))) else {
        return;
    };
    assert!(matches!(route, Route::Guard(_)));
    let Some(Ok(admitted)) = common::poll_once(ex.admit(
        pending,
        async { Ok::<_, exchange::ErrorResponse>(body) },
        None,
    )) else {
        return;
    };
    // The upstream may answer with the key anywhere; it must not come back.
    let planted = String::from_utf8_lossy(answer).replace("KEY", KEY);
    if let Some(Ok(a)) = common::poll_once(admitted.answer(planted.as_bytes())) {
        let v: serde_json::Value =
            serde_json::from_slice(a.body()).expect("rebuilt answers are JSON");
        let allowed = [
            "id",
            "object",
            "created",
            "model",
            "system_fingerprint",
            "choices",
            "usage",
            "data",
        ];
        assert!(
            v.as_object()
                .unwrap()
                .keys()
                .all(|k| allowed.contains(&k.as_str()))
        );
        assert!(
            !whole_token(&String::from_utf8_lossy(a.body()), KEY),
            "a planted credential passed"
        );
    }
});
