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
use inference_guard::identity::{ApiKeyFormat, ApiKeys, InMemoryKeyStore, JwtVerifier};
use inference_guard::{CredentialKind, Principal};
use ring::signature::KeyPair;

#[path = "../tests/common/jwt.rs"]
mod jwt;

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

/// A token signed by the kit's key for `alg` (its kid is the algorithm's name).
fn sign(s: &jwt::Signers, alg: &str) -> String {
    let h = serde_json::json!({"alg": alg, "typ": "JWT", "kid": alg}).to_string();
    jwt::raw_token(s, &h, &claims(), alg)
}

fn bench(c: &mut Criterion) {
    let signers = jwt::signers();
    let mut builder = JwtVerifier::builder();
    builder
        .issuer("https://issuer.example")
        .audience("inference-api")
        .keys(signers.keys());
    let cached = builder.build().unwrap();
    let uncached = builder.verified_cache(0).build().unwrap();

    let es = sign(&signers, "ES256");
    let eddsa = sign(&signers, "EdDSA");
    let hs = sign(&signers, "HS256");
    for t in [&es, &eddsa, &hs] {
        uncached.verify_token(t).expect("bench tokens verify");
    }

    let point = signers.p256.public_key().as_ref();
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
