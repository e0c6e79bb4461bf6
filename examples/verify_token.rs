//! Answers "why is my token rejected?".
//!
//! ```text
//! cargo run --example verify_token -- --jwks FILE --issuer ISS --audience AUD \
//!     [--max-lifetime SECS] [--leeway SECS] [--rsa-alg RS256] TOKEN
//! ```
//!
//! Prints `accepted <principal id>` and exits 0, or `rejected <reason code>` and exits
//! 1. TOKEN may be `-` to read it from standard input. Configuration errors exit 2.
//!
//! The reason codes are documented on `inference_guard::identity::TokenError`.

use std::process::ExitCode;
use std::time::Duration;

use inference_guard::identity::{Algorithm, JwtVerifier, KeySet};

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    eprintln!(
        "usage: verify_token --jwks FILE --issuer ISS --audience AUD [--max-lifetime SECS] [--leeway SECS] [--rsa-alg ALG] TOKEN"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut jwks, mut issuer, mut audience, mut token) = (None, None, None, None);
    let (mut lifetime, mut leeway, mut rsa_alg) = (None, None, None);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r = match a.as_str() {
            "--jwks" => value("--jwks").map(|v| jwks = Some(v)),
            "--issuer" => value("--issuer").map(|v| issuer = Some(v)),
            "--audience" => value("--audience").map(|v| audience = Some(v)),
            "--max-lifetime" => value("--max-lifetime").map(|v| lifetime = Some(v)),
            "--leeway" => value("--leeway").map(|v| leeway = Some(v)),
            "--rsa-alg" => value("--rsa-alg").map(|v| rsa_alg = Some(v)),
            "-h" | "--help" => return usage("help"),
            t if token.is_none() && (!t.starts_with("--") || t == "-") => {
                token = Some(t.to_owned());
                Ok(())
            }
            other => Err(format!("unexpected argument {other:?}")),
        };
        if let Err(e) = r {
            return usage(&e);
        }
    }
    let (Some(jwks), Some(issuer), Some(audience), Some(token)) = (jwks, issuer, audience, token)
    else {
        return usage("--jwks, --issuer, --audience and TOKEN are required");
    };
    let token = if token == "-" {
        let mut s = String::new();
        if std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).is_err() {
            return usage("could not read the token from standard input");
        }
        s.trim().to_owned()
    } else {
        token
    };
    let text = match std::fs::read_to_string(&jwks) {
        Ok(t) => t,
        Err(e) => return usage(&format!("{jwks}: {e}")),
    };
    let keys = match rsa_alg.as_deref().map(Algorithm::from_name) {
        None => KeySet::from_jwks(&text),
        Some(Some(alg)) => KeySet::from_jwks_assuming(&text, alg),
        Some(None) => return usage("--rsa-alg: unknown algorithm"),
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => return usage(&e.to_string()),
    };
    let secs = |v: Option<String>, name: &str| -> Result<Option<Duration>, String> {
        v.map(|s| {
            s.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{name}: not a number of seconds"))
        })
        .transpose()
    };
    let mut b = JwtVerifier::builder();
    b.issuer(issuer)
        .audience(audience)
        .keys(keys)
        .verified_cache(0);
    match secs(lifetime, "--max-lifetime") {
        Ok(Some(d)) => {
            b.max_lifetime(d);
        }
        Ok(None) => {}
        Err(e) => return usage(&e),
    }
    match secs(leeway, "--leeway") {
        Ok(Some(d)) => {
            b.leeway(d);
        }
        Ok(None) => {}
        Err(e) => return usage(&e),
    }
    let verifier = match b.build() {
        Ok(v) => v,
        Err(e) => return usage(&e.to_string()),
    };
    match verifier.verify_token(&token) {
        Ok(p) => {
            println!("accepted {}", p.id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("rejected {}", e.code());
            ExitCode::from(1)
        }
    }
}
