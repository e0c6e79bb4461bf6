//! Verifies a tamper-evident audit log written by `ChainedLogSink`.
//!
//! ```text
//! cargo run --example audit_verify -- FILE --public-key KEYFILE
//! ```
//!
//! KEYFILE holds the public key as a JWK (or a JWKS whose keys are all accepted), as
//! the quickstart writes to `audit.pub`. Prints the verdict and the first bad line.
//!
//! Exit codes: 0 intact (sealed, every line chained, every checkpoint verified);
//! 1 tampered; 2 unsealed (the writer crashed, or the log was truncated after its last
//! checkpoint; a partial last line is reported); 3 usage or I/O error.

use std::process::ExitCode;

use inference_guard::audit::{AuditPublicKey, LogStatus, verify_log};

fn keys(text: &str) -> Result<Vec<AuditPublicKey>, String> {
    AuditPublicKey::from_jwk_set(text).map_err(|e| format!("key file: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut file, mut key_file) = (None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--public-key" if i + 1 < args.len() => {
                key_file = Some(args[i + 1].clone());
                i += 1;
            }
            a if !a.starts_with("--") && file.is_none() => file = Some(a.to_owned()),
            other => {
                eprintln!(
                    "unexpected argument {other:?}\nusage: audit_verify FILE --public-key KEYFILE"
                );
                return ExitCode::from(3);
            }
        }
        i += 1;
    }
    let (Some(file), Some(key_file)) = (file, key_file) else {
        eprintln!("usage: audit_verify FILE --public-key KEYFILE");
        return ExitCode::from(3);
    };
    let keys = match std::fs::read_to_string(&key_file)
        .map_err(|e| e.to_string())
        .and_then(|t| keys(&t))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{key_file}: {e}");
            return ExitCode::from(3);
        }
    };
    let report = match std::fs::File::open(&file)
        .map_err(|e| e.to_string())
        .and_then(|f| verify_log(f, &keys).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::from(3);
        }
    };
    println!("{file}: {report}");
    match report.status {
        LogStatus::Intact => ExitCode::SUCCESS,
        LogStatus::Tampered => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}
