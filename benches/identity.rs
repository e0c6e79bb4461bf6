//! Identity: ES256 and EdDSA uncached, HS256, the verified-token cache, API keys, and
//! the `jsonwebtoken` crate verifying the same ES256 token in the same run.
//!
//! Targets (issue #3): uncached ES256 within 1.1x of `jsonwebtoken`; the cached path at
//! least 50x faster than uncached ES256.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use inference_guard::identity::{
    Algorithm, ApiKeyFormat, ApiKeys, InMemoryKeyStore, JwtVerifier, KeySet,
};
use inference_guard::{CredentialKind, Principal};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: String,
    sub: String,
    exp: u64,
    iat: u64,
    scope: String,
}

fn claims() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"iss": "https://issuer.example", "aud": "inference-api", "sub": "spiffe://prod/ns/a/sa/b",
        "iat": t, "exp": t + 3000, "scope": "model:gpt-4o-mini stream", "tenant": "acme"})
    .to_string()
}

fn sign(alg: &str, kid: &str, f: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let h = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string();
    let input = format!("{}.{}", B64.encode(h), B64.encode(claims()));
    let sig = f(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let p256 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let p256 = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        p256.as_ref(),
        &rng,
    )
    .unwrap();
    let ed =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let secret = [7u8; 32];

    let mut keys = KeySet::new();
    keys.add_raw_public_key("es", Algorithm::ES256, p256.public_key().as_ref())
        .unwrap();
    keys.add_raw_public_key("ed", Algorithm::EdDSA, ed.public_key().as_ref())
        .unwrap();
    keys.add_hmac("hs", Algorithm::HS256, &secret).unwrap();
    let builder = || {
        JwtVerifier::builder()
            .issuer("https://issuer.example")
            .audience("inference-api")
            .keys(keys.clone())
    };
    let uncached = builder().verified_cache(0).build().unwrap();
    let cached = builder().build().unwrap();

    let es = sign("ES256", "es", |m| {
        p256.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    let eddsa = sign("EdDSA", "ed", |m| ed.sign(m).as_ref().to_vec());
    let hs = sign("HS256", "hs", |m| {
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), m)
            .as_ref()
            .to_vec()
    });
    for t in [&es, &eddsa, &hs] {
        uncached.verify_token(t).expect("bench tokens verify");
    }

    let point = p256.public_key().as_ref();
    let jwt_key = jsonwebtoken::DecodingKey::from_ec_components(
        &B64.encode(&point[1..33]),
        &B64.encode(&point[33..]),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["https://issuer.example"]);
    validation.set_audience(&["inference-api"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(&es, &jwt_key, &validation)
        .expect("jsonwebtoken accepts the token");

    let store = InMemoryKeyStore::new();
    let api = ApiKeys::new(&[1u8; 32], ApiKeyFormat::new("igk").unwrap(), store.clone()).unwrap();
    let (api_key, record) = api
        .issue(
            "key_01",
            Principal::builder("svc", CredentialKind::ApiKey)
                .scope("model:*")
                .build(),
            None,
        )
        .unwrap();
    store.insert(record);

    let mut g = c.benchmark_group("identity");
    g.throughput(Throughput::Elements(1));
    g.bench_function("es256_uncached", |b| {
        b.iter(|| black_box(uncached.verify_token(black_box(&es)).unwrap()))
    });
    g.bench_function("es256_jsonwebtoken", |b| {
        b.iter(|| {
            black_box(
                jsonwebtoken::decode::<Claims>(black_box(&es), &jwt_key, &validation).unwrap(),
            )
        })
    });
    g.bench_function("eddsa_uncached", |b| {
        b.iter(|| black_box(uncached.verify_token(black_box(&eddsa)).unwrap()))
    });
    g.bench_function("hs256_uncached", |b| {
        b.iter(|| black_box(uncached.verify_token(black_box(&hs)).unwrap()))
    });
    g.bench_function("es256_cached", |b| {
        b.iter(|| black_box(cached.verify_token(black_box(&es)).unwrap()))
    });
    g.bench_function("api_key", |b| {
        b.iter(|| black_box(api.verify_key(black_box(api_key.expose())).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
