//! Identity and authorization: a hand-made token for every rule of the JWT verifier,
//! API keys, the authenticator, and the policy authorizer through a guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use inference_guard::authz::{Grant, PolicyAuthorizer};
use inference_guard::identity::*;
use inference_guard::*;
use ring::signature::KeyPair;
use serde_json::json;

const ISS: &str = "https://issuer.example";
const AUD: &str = "inference-api";
#[path = "common/jwt.rs"]
mod jwt;
use jwt::{HMAC_SECRET, Signers, b64, now, raw_token, signers};

fn claims() -> serde_json::Value {
    let t = now();
    json!({"iss": ISS, "aud": AUD, "sub": "svc-batch", "iat": t, "exp": t + 600,
           "scope": "model:gpt-4o-mini stream", "tenant": "acme"})
}

fn token_with(
    s: &Signers,
    alg: &str,
    header_extra: serde_json::Value,
    payload: serde_json::Value,
) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT", "kid": alg});
    for (k, v) in header_extra.as_object().unwrap() {
        if v.is_null() {
            header.as_object_mut().unwrap().remove(k);
        } else {
            header[k] = v.clone();
        }
    }
    raw_token(s, &header.to_string(), &payload.to_string(), alg)
}

fn token(s: &Signers, alg: &str) -> String {
    token_with(s, alg, json!({}), claims())
}

fn verifier(s: &Signers) -> JwtVerifier {
    JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .build()
        .unwrap()
}

fn code(v: &JwtVerifier, token: &str) -> &'static str {
    match v.verify_token(token) {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    }
}

#[test]
fn every_algorithm_verifies_with_its_bound_key() {
    let s = signers();
    let v = verifier(&s);
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
        "HS384", "HS512",
    ] {
        let p = v
            .verify_token(&token(&s, alg))
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(p.id(), "svc-batch");
        assert_eq!(p.key_id(), Some(alg));
        assert_eq!(p.kind(), CredentialKind::BearerToken);
        assert_eq!(p.tenant(), Some("acme"));
        assert!(p.has_scope("stream") && p.has_scope("model:gpt-4o-mini"));
    }
}

#[test]
fn none_is_rejected_in_any_spelling() {
    let s = signers();
    let v = verifier(&s);
    for none in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": none, "kid": "HS256"}).to_string();
        let t = format!(
            "{}.{}.",
            b64(h.as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(code(&v, &t), "alg_none", "{none}");
        // Even with a signature attached.
        let t2 = raw_token(&s, &h, &claims().to_string(), "HS256");
        assert_eq!(code(&v, &t2), "alg_none", "{none} signed");
    }
    assert_eq!(
        code(
            &v,
            &token_with(&s, "XS256", json!({"kid": "HS256"}), claims())
        ),
        "unsupported_alg"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "hs256", json!({"kid": "HS256"}), claims())
        ),
        "unsupported_alg"
    );
}

#[test]
fn algorithm_confusion_is_rejected() {
    let s = signers();
    let v = verifier(&s);
    // The classic attack: sign with HMAC, using the RSA public key as the secret, and
    // point kid at the RSA key.
    let public_pem = include_str!("data/test-rsa-2048.pub.pem");
    let header = json!({"alg": "HS256", "kid": "RS256"}).to_string();
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let forged = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_pem.as_bytes()),
        input.as_bytes(),
    );
    assert_eq!(
        code(&v, &format!("{input}.{}", b64(forged.as_ref()))),
        "alg_mismatch"
    );
    // Wrong key family: an ES256 token naming the Ed25519 key, and RS256 vs PS256.
    assert_eq!(
        code(
            &v,
            &token_with(&s, "ES256", json!({"kid": "EdDSA"}), claims())
        ),
        "alg_mismatch"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "RS256", json!({"kid": "PS256"}), claims())
        ),
        "alg_mismatch"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "ES384", json!({"kid": "ES256"}), claims())
        ),
        "alg_mismatch"
    );
}

#[test]
fn kid_tricks() {
    let s = signers();
    let v = verifier(&s);
    for kid in [
        json!("../../../../dev/null"),
        json!("' OR '1'='1"),
        json!("RS256 "),
        json!("rs256"),
    ] {
        assert_eq!(
            code(&v, &token_with(&s, "RS256", json!({"kid": kid}), claims())),
            "unknown_kid",
            "{kid}"
        );
    }
    for kid in [
        json!(1),
        json!(""),
        json!(["RS256"]),
        json!("RS\u{0}256"),
        json!("k".repeat(300)),
    ] {
        assert_eq!(
            code(&v, &token_with(&s, "RS256", json!({"kid": kid}), claims())),
            "bad_kid",
            "{kid}"
        );
    }
    // No kid: ambiguous with many keys, accepted with exactly one.
    assert_eq!(
        code(&v, &token_with(&s, "HS256", json!({"kid": null}), claims())),
        "ambiguous_key"
    );
    let mut one = KeySet::new();
    one.add_hmac("only", Algorithm::HS256, &HMAC_SECRET[..32])
        .unwrap();
    let single = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(one)
        .build()
        .unwrap();
    assert_eq!(
        code(
            &single,
            &token_with(&s, "HS256", json!({"kid": null}), claims())
        ),
        "accepted"
    );
}

#[test]
fn key_references_and_crit_are_never_followed() {
    let s = signers();
    let v = verifier(&s);
    let jwk = json!({"kty": "oct", "k": b64(&[0; 32])});
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", jwk),
        ("x5c", json!(["MIIB"])),
    ] {
        let t = token_with(&s, "ES256", json!({ name: value }), claims());
        assert_eq!(code(&v, &t), "untrusted_key_reference", "{name}");
    }
    assert_eq!(
        code(
            &v,
            &token_with(&s, "ES256", json!({"crit": ["exp"], "exp": 1}), claims())
        ),
        "unsupported_crit"
    );
    assert_eq!(
        code(&v, &token_with(&s, "ES256", json!({"crit": []}), claims())),
        "unsupported_crit"
    );
}

#[test]
fn required_claims_and_times() {
    let s = signers();
    let v = verifier(&s);
    let t = now();
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        code(&v, &token_with(&s, "EdDSA", json!({}), c))
    };
    for missing in ["exp", "iss", "aud", "sub"] {
        assert_eq!(with(json!({ missing: null })), "missing_claim", "{missing}");
    }
    assert_eq!(with(json!({"sub": ""})), "missing_claim");
    assert_eq!(with(json!({"exp": t - 120, "iat": t - 300})), "expired");
    assert_eq!(
        with(json!({"exp": t - 10, "iat": t - 300})),
        "accepted",
        "within the 30 s leeway"
    );
    assert_eq!(with(json!({"nbf": t + 120})), "not_yet_valid");
    assert_eq!(
        with(json!({"iat": t + 120, "exp": t + 600})),
        "issued_in_future"
    );
    assert_eq!(with(json!({"exp": (t + 600).to_string()})), "bad_claim");
    assert_eq!(with(json!({"exp": true})), "bad_claim");
    assert_eq!(with(json!({"nbf": "soon"})), "bad_claim");
    assert_eq!(with(json!({"sub": 42})), "bad_claim");
    assert_eq!(
        with(json!({"exp": (t + 600) as f64 + 0.5})),
        "accepted",
        "NumericDate may be fractional"
    );
}

#[test]
fn audience_and_issuer_forms() {
    let s = signers();
    let v = verifier(&s);
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, val) in patch.as_object().unwrap() {
            c[k] = val.clone();
        }
        code(&v, &token_with(&s, "ES256", json!({}), c))
    };
    assert_eq!(with(json!({"aud": ["other", AUD]})), "accepted");
    assert_eq!(with(json!({"aud": ["other"]})), "bad_audience");
    assert_eq!(with(json!({"aud": []})), "bad_audience");
    assert_eq!(
        with(json!({"aud": "inference-api-staging"})),
        "bad_audience"
    );
    assert_eq!(with(json!({"aud": [AUD, 7]})), "bad_claim");
    assert_eq!(with(json!({"aud": {"aud": AUD}})), "bad_claim");
    assert_eq!(
        with(json!({"iss": "https://issuer.example/"})),
        "bad_issuer"
    );
    assert_eq!(with(json!({"iss": "https://ISSUER.example"})), "bad_issuer");
    assert_eq!(with(json!({"iss": [ISS]})), "bad_claim");
}

#[test]
fn only_short_lived_tokens() {
    let s = signers();
    let v = verifier(&s);
    let t = now();
    let mk = |c: serde_json::Value| code(&v, &token_with(&s, "ES256", json!({}), c));
    assert_eq!(
        mk(json!({"iss": ISS, "aud": AUD, "sub": "a", "iat": t, "exp": t + 3600})),
        "accepted"
    );
    assert_eq!(
        mk(json!({"iss": ISS, "aud": AUD, "sub": "a", "iat": t - 60, "exp": t + 7200})),
        "lifetime_too_long"
    );
    // A long-lived token issued long ago, whose remaining time is short, is still refused.
    assert_eq!(
        mk(json!({"iss": ISS, "aud": AUD, "sub": "a", "iat": t - 86_400, "exp": t + 60})),
        "lifetime_too_long"
    );
    // Without iat, exp - now is bounded.
    assert_eq!(
        mk(json!({"iss": ISS, "aud": AUD, "sub": "a", "exp": t + 7200})),
        "lifetime_too_long"
    );
    assert_eq!(
        mk(json!({"iss": ISS, "aud": AUD, "sub": "a", "exp": t + 600})),
        "accepted"
    );
    let strict = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .max_lifetime(Duration::from_secs(300))
        .build()
        .unwrap();
    assert_eq!(code(&strict, &token(&s, "ES256")), "lifetime_too_long");
}

#[test]
fn strict_parsing() {
    let s = signers();
    let v = verifier(&s);
    let good = token(&s, "HS256");
    // Size cap before decoding.
    let big = format!("{}.{}", good, "A".repeat(9000));
    assert_eq!(code(&v, &big), "too_large");
    let mut c = claims();
    c["pad"] = json!("x".repeat(9000));
    assert_eq!(
        code(&v, &token_with(&s, "HS256", json!({}), c)),
        "too_large"
    );
    // Segments.
    let parts: Vec<&str> = good.split('.').collect();
    assert_eq!(code(&v, &format!("{}.{}", parts[0], parts[1])), "malformed");
    assert_eq!(code(&v, &format!("{good}.")), "malformed");
    assert_eq!(code(&v, &format!("{good}.{}", parts[2])), "malformed");
    assert_eq!(code(&v, ""), "malformed");
    // Non-canonical base64url: padding, the standard alphabet, non-zero trailing bits.
    assert_eq!(
        code(&v, &format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
        "bad_base64"
    );
    let std_alpha = good.replace('-', "+").replace('_', "/");
    if std_alpha != good {
        assert_eq!(code(&v, &std_alpha), "bad_base64");
    }
    let sig = parts[2];
    let last = sig.chars().last().unwrap();
    // HS256 signatures are 32 bytes: 43 characters, the last carrying 2 unused bits.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let tweaked = alphabet.as_bytes()[idx | 1] as char;
    if tweaked != last {
        let t = format!(
            "{}.{}.{}{}",
            parts[0],
            parts[1],
            &sig[..sig.len() - 1],
            tweaked
        );
        assert_eq!(code(&v, &t), "bad_base64", "trailing bits");
    }
    // Duplicate members, in the header and in the payload.
    let t = now();
    let dup_header = r#"{"alg":"HS256","kid":"HS256","alg":"HS256"}"#;
    assert_eq!(
        code(
            &v,
            &raw_token(&s, dup_header, &claims().to_string(), "HS256")
        ),
        "duplicate_member"
    );
    let dup_payload = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"a","exp":{e},"sub":"admin"}}"#,
        e = t + 60
    );
    assert_eq!(
        code(
            &v,
            &raw_token(
                &s,
                r#"{"alg":"HS256","kid":"HS256"}"#,
                &dup_payload,
                "HS256"
            )
        ),
        "duplicate_member"
    );
    // Nothing before or after the JSON; objects only; UTF-8 only.
    let h = r#"{"alg":"HS256","kid":"HS256"}"#;
    assert_eq!(
        code(
            &v,
            &raw_token(&s, &format!("{h} "), &claims().to_string(), "HS256")
        ),
        "bad_json"
    );
    assert_eq!(
        code(
            &v,
            &raw_token(&s, &format!("{h}{{}}"), &claims().to_string(), "HS256")
        ),
        "bad_json"
    );
    assert_eq!(
        code(&v, &raw_token(&s, h, &format!("{}x", claims()), "HS256")),
        "bad_json"
    );
    assert_eq!(code(&v, &raw_token(&s, h, "[1,2]", "HS256")), "bad_json");
    let bad_utf8 = format!(
        "{}.{}.{}",
        b64(h.as_bytes()),
        b64(b"{\"sub\":\"\xff\"}"),
        parts[2]
    );
    assert!(["bad_json", "bad_signature"].contains(&code(&v, &bad_utf8)));
    // Tampering.
    let mut c = claims();
    c["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(code(&v, &tampered), "bad_signature");
}

#[test]
fn typ_and_profiles() {
    let s = signers();
    let v = verifier(&s);
    assert_eq!(
        code(
            &v,
            &token_with(&s, "ES256", json!({"typ": "at+jwt"}), claims())
        ),
        "bad_typ"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "ES256", json!({"typ": "JOSE+JSON"}), claims())
        ),
        "bad_typ"
    );
    assert_eq!(
        code(&v, &token_with(&s, "ES256", json!({"typ": 1}), claims())),
        "bad_typ"
    );
    assert_eq!(
        code(&v, &token_with(&s, "ES256", json!({"typ": null}), claims())),
        "accepted"
    );

    let at = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .access_token_profile()
        .build()
        .unwrap();
    let mut c = claims();
    c["client_id"] = json!("ci-runner");
    c["jti"] = json!("t-1");
    assert_eq!(
        code(
            &at,
            &token_with(&s, "ES256", json!({"typ": "at+jwt"}), c.clone())
        ),
        "accepted"
    );
    assert_eq!(
        code(
            &at,
            &token_with(&s, "ES256", json!({"typ": "application/at+jwt"}), c.clone())
        ),
        "accepted"
    );
    assert_eq!(
        code(&at, &token_with(&s, "ES256", json!({}), c.clone())),
        "bad_typ"
    );
    c.as_object_mut().unwrap().remove("client_id");
    assert_eq!(
        code(&at, &token_with(&s, "ES256", json!({"typ": "at+jwt"}), c)),
        "missing_claim"
    );

    let svid = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .spiffe_trust_domain("prod.example")
        .build()
        .unwrap();
    let sub = |id: &str| {
        let mut c = claims();
        c["sub"] = json!(id);
        code(&svid, &token_with(&s, "ES256", json!({}), c))
    };
    assert_eq!(sub("spiffe://prod.example/ns/billing/sa/agent"), "accepted");
    assert_eq!(sub("spiffe://prod.example"), "accepted");
    assert_eq!(
        sub("spiffe://staging.example/ns/billing"),
        "untrusted_trust_domain"
    );
    for bad in [
        "svc-batch",
        "SPIFFE://prod.example/a",
        "spiffe://Prod.example/a",
        "spiffe://prod.example/a/",
        "spiffe://prod.example/a/../b",
        "spiffe://prod.example//a",
        "spiffe://prod.example:443/a",
        "spiffe://user@prod.example/a",
        "spiffe://prod.example/a?x=1",
        "spiffe://prod.example/a%2Fb",
        "spiffe:///a",
    ] {
        assert_eq!(sub(bad), "bad_spiffe_id", "{bad}");
    }
}

#[test]
fn replay_cache_rejects_a_second_use_and_fails_closed_when_full() {
    let s = signers();
    let v = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .replay_cache(2)
        .build()
        .unwrap();
    let with_jti = |jti: &str| {
        let mut c = claims();
        c["jti"] = json!(jti);
        token_with(&s, "ES256", json!({}), c)
    };
    let t1 = with_jti("a");
    assert_eq!(code(&v, &t1), "accepted");
    assert_eq!(code(&v, &t1), "replayed");
    assert_eq!(
        code(&v, &token(&s, "ES256")),
        "missing_claim",
        "jti required with a replay cache"
    );
    assert_eq!(code(&v, &with_jti("b")), "accepted");
    // Full of unexpired ids: the guard fails closed (503), it does not forget.
    let mut b = InferenceGuard::builder();
    b.identity(v).authorize_all().audit_sink(NoopSink);
    let guard = b.build().unwrap();
    let r = guard
        .check_request(
            GuardRequest::new("m").with_credentials(Credentials::from_bearer(with_jti("c"))),
        )
        .unwrap_err();
    assert_eq!(r.status(), 503);
}

#[test]
fn verified_cache_never_outlives_the_token_and_rotation_clears_it() {
    let s = signers();
    let v = verifier(&s);
    let t = now();
    let mut c = claims();
    c["exp"] = json!(t + 100);
    let tok = token_with(&s, "ES256", json!({}), c);
    let at = |secs: u64| v.verify_token_at(&tok, UNIX_EPOCH + Duration::from_secs(secs));
    assert!(at(t).is_ok());
    assert!(at(t + 1).is_ok(), "cached");
    // Past exp (and past the leeway) the cached entry is not used.
    assert_eq!(at(t + 200).unwrap_err().code(), "expired");
    assert!(at(t).is_ok());
    // Rotation: with the ES256 key gone, the cached token no longer verifies.
    let mut other = KeySet::new();
    other
        .add_hmac("HS256", Algorithm::HS256, &HMAC_SECRET[..32])
        .unwrap();
    v.replace_keys(other);
    assert_eq!(at(t).unwrap_err().code(), "unknown_kid");
}

#[test]
fn refresh_hook_fetches_keys_for_an_unknown_kid_with_a_cooldown() {
    let s = signers();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let mut only_hmac = KeySet::new();
    only_hmac
        .add_hmac("HS256", Algorithm::HS256, &HMAC_SECRET[..32])
        .unwrap();
    let full = s.keys();
    let v = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(only_hmac)
        .refresh_hook(
            move || {
                c2.fetch_add(1, Ordering::SeqCst);
                Ok(full.clone())
            },
            Duration::from_secs(60),
        )
        .build()
        .unwrap();
    assert_eq!(code(&v, &token(&s, "EdDSA")), "accepted");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        code(
            &v,
            &token_with(&s, "EdDSA", json!({"kid": "new"}), claims())
        ),
        "unknown_kid"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "EdDSA", json!({"kid": "newer"}), claims())
        ),
        "unknown_kid"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cooldown limits refreshes");
}

#[test]
fn keys_from_jwks_pem_and_der() {
    let s = signers();
    let p = s.p256.public_key().as_ref();
    let (n, e) = s.rsa_ne();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig", "x": b64(&p[1..33]), "y": b64(&p[33..])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(s.ed.public_key().as_ref())},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256",
         "n": b64(&n), "e": b64(&e)},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}
    ]})
    .to_string();
    let keys = KeySet::from_jwks(&jwks).unwrap();
    assert_eq!(keys.len(), 3);
    let v = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(keys)
        .build()
        .unwrap();
    assert_eq!(
        code(&v, &token_with(&s, "ES256", json!({"kid": "ec"}), claims())),
        "accepted"
    );
    assert_eq!(
        code(&v, &token_with(&s, "EdDSA", json!({"kid": "ed"}), claims())),
        "accepted"
    );
    assert_eq!(
        code(
            &v,
            &token_with(&s, "RS256", json!({"kid": "rsa"}), claims())
        ),
        "accepted"
    );

    let mut pem_keys = KeySet::new();
    pem_keys
        .add_pem(
            "rsa",
            Algorithm::PS256,
            include_str!("data/test-rsa-2048.pub.pem"),
        )
        .unwrap();
    let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    spki.extend_from_slice(p);
    pem_keys.add_der("ec", Algorithm::ES256, &spki).unwrap();
    let mut ed_spki = hex("302a300506032b6570032100");
    ed_spki.extend_from_slice(s.ed.public_key().as_ref());
    let ed_pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&ed_spki)
    );
    pem_keys.add_pem("ed", Algorithm::EdDSA, &ed_pem).unwrap();
    // A key's type must fit the algorithm it is bound to.
    assert!(KeySet::new().add_der("x", Algorithm::ES384, &spki).is_err());
    assert!(
        KeySet::new()
            .add_pem(
                "x",
                Algorithm::ES256,
                include_str!("data/test-rsa-2048.pub.pem")
            )
            .is_err()
    );
    let v = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(pem_keys)
        .build()
        .unwrap();
    assert_eq!(
        code(
            &v,
            &token_with(&s, "PS256", json!({"kid": "rsa"}), claims())
        ),
        "accepted"
    );
    assert_eq!(
        code(&v, &token_with(&s, "ES256", json!({"kid": "ec"}), claims())),
        "accepted"
    );
    assert_eq!(
        code(&v, &token_with(&s, "EdDSA", json!({"kid": "ed"}), claims())),
        "accepted"
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn short_hmac_keys_are_refused_when_the_guard_is_built() {
    for (alg, len) in [
        (Algorithm::HS256, 31),
        (Algorithm::HS384, 47),
        (Algorithm::HS512, 63),
    ] {
        let err = KeySet::new().add_hmac("k", alg, &vec![1; len]).unwrap_err();
        assert!(err.to_string().contains("at least"), "{alg}");
    }
    assert!(
        JwtVerifier::builder()
            .audience(AUD)
            .keys(KeySet::new())
            .build()
            .is_err()
    );
    assert!(JwtVerifier::builder().issuer(ISS).build().is_err());
    assert!(
        JwtVerifier::builder()
            .issuer(ISS)
            .audience(AUD)
            .build()
            .is_err(),
        "no keys"
    );
    assert!(
        JwtVerifier::builder()
            .issuer(ISS)
            .audience(AUD)
            .keys(signers().keys())
            .leeway(Duration::from_secs(3600))
            .build()
            .is_err()
    );
}

/// A store that counts lookups, to show malformed keys never reach it.
#[derive(Clone, Default)]
struct CountingStore {
    inner: InMemoryKeyStore,
    lookups: Arc<AtomicUsize>,
}

impl ApiKeyStore for CountingStore {
    fn find<'a>(
        &'a self,
        digest: &'a [u8; 32],
    ) -> Step<'a, Result<Option<Arc<ApiKeyRecord>>, Error>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find(digest)
    }
}

fn api_keys(store: CountingStore) -> ApiKeys<CountingStore> {
    ApiKeys::new(
        b"server secret: 32 bytes or longer!!",
        ApiKeyFormat::new("igk").unwrap(),
        store,
    )
    .unwrap()
}

#[test]
fn api_keys_issue_verify_revoke_expire() {
    let store = CountingStore::default();
    let keys = api_keys(store.clone());
    let owner = Principal::builder("svc-reports", CredentialKind::ApiKey)
        .tenant("acme")
        .scope("model:*")
        .build();
    let (key, record) = keys.issue("key_01", owner.clone(), None).unwrap();
    assert!(
        !format!("{record:?}").contains(key.expose()),
        "records never hold the key"
    );
    store.inner.insert(record);
    let p = keys.verify_key(key.expose()).unwrap();
    assert_eq!(
        (p.id(), p.key_id(), p.tenant()),
        ("svc-reports", Some("key_01"), Some("acme"))
    );
    assert!(p.has_scope("model:*"));

    // A typo and a random string are rejected before any lookup.
    let before = store.lookups.load(Ordering::SeqCst);
    let mut typo = key.expose().to_owned();
    let c = if typo.ends_with('a') { "b" } else { "a" };
    typo.replace_range(typo.len() - 1.., c);
    assert_eq!(keys.verify_key(&typo).unwrap_err().code(), "bad_checksum");
    assert_eq!(
        keys.verify_key("igk_not-a-key").unwrap_err().code(),
        "malformed"
    );
    assert_eq!(
        keys.verify_key("sk-proj-abcdef").unwrap_err().code(),
        "malformed"
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), before);

    // A well-formed key that was never issued.
    let stranger = keys.format().generate().unwrap();
    assert_eq!(
        keys.verify_key(stranger.expose()).unwrap_err().code(),
        "unknown_key"
    );

    // Revocation and expiry.
    assert!(store.inner.revoke("key_01"));
    assert_eq!(keys.verify_key(key.expose()).unwrap_err().code(), "revoked");
    let (old, rec) = keys
        .issue(
            "key_02",
            owner,
            Some(SystemTime::now() - Duration::from_secs(1)),
        )
        .unwrap();
    store.inner.insert(rec);
    assert_eq!(keys.verify_key(old.expose()).unwrap_err().code(), "expired");
}

#[test]
fn authenticator_routes_credentials_and_guard_answers_401_with_challenge() {
    let s = signers();
    let store = CountingStore::default();
    let keys = api_keys(store.clone());
    let owner = Principal::builder("svc-reports", CredentialKind::ApiKey)
        .scope("chat")
        .build();
    let (key, rec) = keys.issue("key_01", owner, None).unwrap();
    store.inner.insert(rec);
    let auth = Authenticator::new().jwt(verifier(&s)).api_keys(keys);

    let sink = MemorySink::new();
    let mut b = InferenceGuard::builder();
    b.identity(auth)
        .authorizer(
            PolicyAuthorizer::builder()
                .grant(Grant::to_scope("chat").models(["gpt-4o-mini"]))
                .grant(
                    // Token subjects are named with their issuer's namespace.
                    Grant::to_principals([format!("jwt:{ISS}|svc-batch")])
                        .models(["gpt-4o*"])
                        .allow_stream(),
                )
                .build()
                .unwrap(),
        )
        .realm("inference-api")
        .audit_sink(sink.clone());
    let guard = b.build().unwrap();
    let req = |c: Credentials| GuardRequest::new("gpt-4o-mini").with_credentials(c);

    // x-api-key, and the same key as a Bearer token (as OpenAI clients send it).
    for c in [
        Credentials::from_api_key(key.expose()),
        Credentials::from_bearer(key.expose()),
    ] {
        let adm = guard.check_request(req(c)).unwrap();
        assert_eq!(adm.principal().key_id(), Some("key_01"));
        adm.fail();
    }
    // A JWT.
    let adm = guard
        .check_request(req(Credentials::from_bearer(token(&s, "ES256"))))
        .unwrap();
    assert_eq!(adm.principal().id(), "svc-batch");
    drop(adm);
    // Both at once: ambiguous.
    let both = Credentials::from_bearer(token(&s, "ES256")).with_api_key(key.expose());
    assert_eq!(guard.check_request(req(both)).unwrap_err().status(), 401);
    // An expired JWT: 401, RFC 6750 challenge, the reason in the audit record only.
    let t = now();
    let expired = token_with(
        &s,
        "ES256",
        json!({}),
        json!({"iss": ISS, "aud": AUD, "sub": "x", "exp": t - 600, "iat": t - 900}),
    );
    let r = guard
        .check_request(req(Credentials::from_bearer(expired.clone())))
        .unwrap_err();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="inference-api", error="invalid_token""#)
    );
    assert!(!r.message().contains("expired"));
    let last = sink.lines().pop().unwrap();
    assert!(last.contains(r#""detail":"jwt: expired""#));
    assert!(!last.contains(&expired) && !last.contains(key.expose()));
    // Authorization: the API key's grant covers gpt-4o-mini only, without streaming.
    let r = guard
        .check_request(req(Credentials::from_api_key(key.expose())).with_stream(true))
        .unwrap_err();
    assert_eq!(
        (r.status(), r.code(), r.detail()),
        (403, "insufficient_scope", "stream_not_allowed")
    );
    let r = guard
        .check_request(
            GuardRequest::new("gpt-4o").with_credentials(Credentials::from_api_key(key.expose())),
        )
        .unwrap_err();
    assert_eq!(r.detail(), "model_not_allowed");
    // Client certificates are refused unless configured.
    let r = guard
        .check_request(req(Credentials::from_client_certificate("spiffe://prod/x")))
        .unwrap_err();
    assert_eq!(r.status(), 401);
}

#[test]
fn credentials_never_appear_in_debug_or_errors() {
    let s = signers();
    let v = verifier(&s);
    let tok = token(&s, "HS256");
    let sig = tok.rsplit('.').next().unwrap().to_owned();
    let req = GuardRequest::new("m").with_credentials(Credentials::from_bearer(tok.clone()));
    for text in [
        format!("{v:?}"),
        format!("{req:?}"),
        format!("{:?}", v.verify_token(&tok)),
    ] {
        assert!(!text.contains(&sig), "{text}");
    }
    assert!(!format!("{:?}", s.keys()).contains("5a5a"));
}

#[test]
fn each_key_signs_for_its_own_issuer_and_principals_are_namespaced() {
    let s = signers();
    const OTHER: &str = "https://partner.example";
    let mut partner = KeySet::new();
    partner
        .add_raw_public_key("partner-ed", Algorithm::EdDSA, s.ed.public_key().as_ref())
        .unwrap();
    let mut ours = KeySet::new();
    ours.add_hmac("HS256", Algorithm::HS256, &HMAC_SECRET[..32])
        .unwrap();
    let v = JwtVerifier::builder()
        .issuer_keys(ISS, ours)
        .issuer_keys(OTHER, partner)
        .audience(AUD)
        .build()
        .unwrap();
    // The partner's key, a token claiming to be ours: refused.
    let forged = token_with(&s, "EdDSA", json!({"kid": "partner-ed"}), claims());
    assert_eq!(code(&v, &forged), "key_issuer_mismatch");
    // The partner's key for the partner's issuer: accepted, in its own namespace.
    let mut c = claims();
    c["iss"] = json!(OTHER);
    let theirs = token_with(&s, "EdDSA", json!({"kid": "partner-ed"}), c);
    let p = v.verify_token(&theirs).unwrap();
    assert_eq!(p.id(), "svc-batch");
    assert_eq!(p.namespace(), format!("jwt:{OTHER}"));
    let ours = v.verify_token(&token(&s, "HS256")).unwrap();
    assert_ne!(ours.qualified_id(), p.qualified_id());
    // Unbound keys with several issuers do not build.
    assert!(
        JwtVerifier::builder()
            .issuer(ISS)
            .issuer(OTHER)
            .audience(AUD)
            .keys(s.keys())
            .build()
            .is_err()
    );
    // Grants: a bare id pattern never matches a token subject; a namespaced one does.
    let policy = PolicyAuthorizer::builder()
        .grant(Grant::to_principals(["svc-batch"]).models(["m"]))
        .grant(Grant::to_principals([format!("jwt:{ISS}|svc-*")]).models(["ours"]))
        .build()
        .unwrap();
    let req = |m: &str| GuardRequest::new(m);
    assert!(policy.check(&p, &req("m")).is_err());
    assert!(policy.check(&p, &req("ours")).is_err());
    assert!(policy.check(&ours, &req("ours")).is_ok());
    let key_owner = Principal::builder("svc-batch", CredentialKind::ApiKey).build();
    assert!(policy.check(&key_owner, &req("m")).is_ok());
    // An authenticator with one verifier per issuer sends each token to its own.
    let a = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .build()
        .unwrap();
    let mut pk = KeySet::new();
    pk.add_raw_public_key("partner-ed", Algorithm::EdDSA, s.ed.public_key().as_ref())
        .unwrap();
    let b = JwtVerifier::builder()
        .issuer(OTHER)
        .audience(AUD)
        .keys(pk)
        .build()
        .unwrap();
    let auth = Authenticator::new().jwt(a).jwt(b);
    let mut g = InferenceGuard::builder();
    g.identity(auth).authorize_all().audit_sink(NoopSink);
    let guard = g.build().unwrap();
    let with = |t: &str| GuardRequest::new("m").with_credentials(Credentials::from_bearer(t));
    let adm = guard.check_request(with(&theirs)).unwrap();
    assert_eq!(adm.principal().namespace(), format!("jwt:{OTHER}"));
    drop(adm);
    assert!(guard.check_request(with(&token(&s, "ES256"))).is_ok());
    assert_eq!(
        guard.check_request(with(&forged)).unwrap_err().status(),
        401
    );
}

/// A verifier that allows any lifetime hands the shared replay store a token's
/// expiry however far it is: past what a `SystemTime` holds, the last second of
/// 9999 (it panicked adding the expiry to the epoch).
#[test]
fn a_far_expiry_reaches_the_shared_replay_store_without_a_panic() {
    struct Seen(Arc<std::sync::Mutex<Vec<SystemTime>>>);
    impl ReplayStore for Seen {
        fn first_use<'a>(
            &'a self,
            _id: &'a [u8; 32],
            until: SystemTime,
        ) -> Step<'a, Result<bool, Error>> {
            self.0.lock().unwrap().push(until);
            Step::ready(Ok(true))
        }
    }
    let s = signers();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let v = JwtVerifier::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(s.keys())
        .max_lifetime(Duration::MAX)
        .shared_replay_cache(Seen(seen.clone()))
        .build()
        .unwrap();
    let guard = InferenceGuard::builder()
        .identity(v)
        .authorize_all()
        .audit_sink(NoopSink)
        .build()
        .unwrap();
    let mut c = claims();
    c["exp"] = json!(1e19);
    c["jti"] = json!("far");
    let token = token_with(&s, "EdDSA", json!({}), c);
    let req = GuardRequest::new("m").with_credentials(Credentials::from_bearer(token));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(guard.check_request_async(req))
        .unwrap()
        .fail();
    assert_eq!(
        *seen.lock().unwrap(),
        [UNIX_EPOCH + Duration::from_secs(253_402_300_799)]
    );
}
