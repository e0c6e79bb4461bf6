//! Verifies a tamper-evident audit log written by `ChainedLogSink`.
//!
//! ```text
//! cargo run --example audit_verify -- FILE --public-key KEYFILE [--witness W] [--after SEAL]
//! ```
//!
//! KEYFILE holds the public key as a JWK (or a JWKS whose keys are all accepted), as
//! the quickstart writes to `audit.pub`. `--witness` is the latest checkpoint the
//! writer shipped elsewhere (`ChainedLogSink::witness`): with it, a log cut at or
//! before that checkpoint, or another log put in its place, is detected. `--after` is
//! the seal of the file this one continues (rotation). Both take the line itself or
//! `@FILE`. Prints the verdict, the last checkpoint's sequence number and time, and
//! its witness line.
//!
//! Exit codes: 0 intact (sealed, every line chained, every checkpoint verified, and
//! the witness and seal match); 1 tampered, truncated or substituted; 2 unsealed (the
//! writer crashed or is still writing, or the log was cut after its last checkpoint
//! and no witness says otherwise; a partial last line is reported); 3 usage or I/O
//! error.

use std::process::ExitCode;

use inference_guard::audit::{AuditPublicKey, LogStatus, Witness, verify_log_with};

fn keys(text: &str) -> Result<Vec<AuditPublicKey>, String> {
    AuditPublicKey::from_jwk_set(text).map_err(|e| format!("key file: {e}"))
}

/// A witness given as the line itself or as `@FILE`.
fn witness(arg: &str) -> Result<Witness, String> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => arg.to_owned(),
    };
    text.trim().parse().map_err(|e| format!("{e}"))
}

const USAGE: &str =
    "usage: audit_verify FILE --public-key KEYFILE [--witness LINE|@FILE] [--after SEAL|@FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut file, mut key_file, mut witness_arg, mut after_arg) = (None, None, None, None);
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        match (args[i].as_str(), value) {
            ("--public-key", Some(v)) => key_file = Some(v),
            ("--witness", Some(v)) => witness_arg = Some(v),
            ("--after", Some(v)) => after_arg = Some(v),
            (a, _) if !a.starts_with("--") && file.is_none() => {
                file = Some(a.to_owned());
                i += 1;
                continue;
            }
            (other, _) => {
                eprintln!("unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(3);
            }
        }
        i += 2;
    }
    let (Some(file), Some(key_file)) = (file, key_file) else {
        eprintln!("{USAGE}");
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
    let parse = |a: &Option<String>, what: &str| match a {
        None => Ok(None),
        Some(a) => witness(a).map(Some).map_err(|e| format!("{what}: {e}")),
    };
    let (witness, after) = match (
        parse(&witness_arg, "--witness"),
        parse(&after_arg, "--after"),
    ) {
        (Ok(w), Ok(a)) => (w, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    let report = match std::fs::File::open(&file)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            verify_log_with(f, &keys, witness.as_ref(), after.as_ref()).map_err(|e| e.to_string())
        }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::from(3);
        }
    };
    println!("{file}: {report}");
    if let Some(w) = &report.witness {
        println!("last checkpoint as a witness: {w}");
    }
    match report.status {
        LogStatus::Intact => ExitCode::SUCCESS,
        LogStatus::Unsealed => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}
