//! The JWT ladder of the test kit: one signing key per algorithm the verifier
//! accepts (RSA from a fixed test key, EC and Ed25519 generated, HMAC from a fixed
//! secret), the matching key set, and tokens built from raw JSON text. Used by the
//! identity tests and the identity bench.
#![allow(dead_code)] // each user takes a part

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use inference_guard::identity::{Algorithm, KeySet};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

pub(crate) const HMAC_SECRET: &[u8] = &[0x5a; 64];

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) struct Signers {
    pub(crate) rsa: RsaKeyPair,
    pub(crate) p256: EcdsaKeyPair,
    pub(crate) p384: EcdsaKeyPair,
    pub(crate) ed: Ed25519KeyPair,
}

pub(crate) fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

pub(crate) fn signers() -> Signers {
    let rng = SystemRandom::new();
    let rsa_der = pem_body(include_str!("../data/test-rsa-2048.pk8.pem"));
    let p256 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let p384 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Signers {
        rsa: RsaKeyPair::from_pkcs8(&rsa_der).unwrap(),
        p256: EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            p256.as_ref(),
            &rng,
        )
        .unwrap(),
        p384: EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            p384.as_ref(),
            &rng,
        )
        .unwrap(),
        ed: Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap(),
    }
}

impl Signers {
    pub(crate) fn rsa_ne(&self) -> (Vec<u8>, Vec<u8>) {
        let c: signature::RsaPublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        (c.n, c.e)
    }

    pub(crate) fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let rsa = |params: &'static dyn signature::RsaEncoding| {
            let mut sig = vec![0; self.rsa.public().modulus_len()];
            self.rsa.sign(params, &rng, msg, &mut sig).unwrap();
            sig
        };
        let hmac = |a, len: usize| {
            ring::hmac::sign(&ring::hmac::Key::new(a, &HMAC_SECRET[..len]), msg)
                .as_ref()
                .to_vec()
        };
        match alg {
            "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
            "RS384" => rsa(&signature::RSA_PKCS1_SHA384),
            "RS512" => rsa(&signature::RSA_PKCS1_SHA512),
            "PS256" => rsa(&signature::RSA_PSS_SHA256),
            "PS384" => rsa(&signature::RSA_PSS_SHA384),
            "PS512" => rsa(&signature::RSA_PSS_SHA512),
            "ES256" => self.p256.sign(&rng, msg).unwrap().as_ref().to_vec(),
            "ES384" => self.p384.sign(&rng, msg).unwrap().as_ref().to_vec(),
            "EdDSA" => self.ed.sign(msg).as_ref().to_vec(),
            "HS256" => hmac(ring::hmac::HMAC_SHA256, 32),
            "HS384" => hmac(ring::hmac::HMAC_SHA384, 48),
            "HS512" => hmac(ring::hmac::HMAC_SHA512, 64),
            _ => Vec::new(),
        }
    }

    /// A key set with one key per algorithm; the kid is the algorithm's name.
    pub(crate) fn keys(&self) -> KeySet {
        let mut k = KeySet::new();
        let (n, e) = self.rsa_ne();
        let (n, e) = (&n[..], &e[..]);
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            k.add_rsa_components(alg.name(), alg, n, e).unwrap();
        }
        k.add_raw_public_key("ES256", Algorithm::ES256, self.p256.public_key().as_ref())
            .unwrap();
        k.add_raw_public_key("ES384", Algorithm::ES384, self.p384.public_key().as_ref())
            .unwrap();
        k.add_raw_public_key("EdDSA", Algorithm::EdDSA, self.ed.public_key().as_ref())
            .unwrap();
        k.add_hmac("HS256", Algorithm::HS256, &HMAC_SECRET[..32])
            .unwrap();
        k.add_hmac("HS384", Algorithm::HS384, &HMAC_SECRET[..48])
            .unwrap();
        k.add_hmac("HS512", Algorithm::HS512, HMAC_SECRET).unwrap();
        k
    }
}

/// Builds `b64(header).b64(payload).b64(sig)` from raw JSON text (so duplicate
/// members and odd spacing can be expressed).
pub(crate) fn raw_token(s: &Signers, header: &str, payload: &str, sign_as: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = s.sign(sign_as, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig))
}
