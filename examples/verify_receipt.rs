//! Verifies a signed receipt against the text a downstream system received.
//!
//! ```text
//! cargo run --example verify_receipt -- --public-key FILE RECEIPT TEXTFILE
//! cargo run --example verify_receipt -- --demo DIR
//! ```
//!
//! FILE holds the receipt key's public half as a JWK (or a JWKS: all its keys are
//! trusted). RECEIPT is the receipt itself or a file holding it (from the
//! `x-inference-receipt` header, or the `inference_receipt` event of a stream).
//! TEXTFILE holds the answer's text exactly as received.
//!
//! Prints the receipt's claims when it verifies. Exit codes: 0 verified; 1 refused
//! (the reason code is printed: `malformed`, `algorithm`, `unknown_key`,
//! `signature`, `expired`, `digest_mismatch`); 2 usage or I/O error.
//!
//! `--demo DIR` runs a guard over one request and writes `DIR/receipt.pub`,
//! `DIR/receipt.jws` and `DIR/answer.txt` to try it with.

use std::process::ExitCode;

use inference_guard::audit::{AuditPublicKey, AuditSigningKey};
use inference_guard::receipt::{ReceiptSigner, ReceiptVerifier};
use inference_guard::*;

fn keys(text: &str) -> Result<Vec<AuditPublicKey>, String> {
    AuditPublicKey::from_jwk_set(text).map_err(|e| format!("key file: {e}"))
}

fn demo(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let key = AuditSigningKey::generate("receipts-demo")?;
    let public = key.public_key();
    let mut b = InferenceGuard::builder();
    b.allow_anonymous()
        .authorize_all()
        .audit_sink(NoopSink)
        .output_validator(inference_guard::output::AnswerValidator::new())
        .receipts(ReceiptSigner::new(key))
        .policy_version("demo-1");
    let guard = b.build()?;
    let checked = guard
        .check_request(
            GuardRequest::new("demo-small").with_message(Role::User, "Approve invoice 42?"),
        )?
        .check_response(GuardResponse::new(
            "Invoice 42 (4,200 EUR) is within the Q4 budget.",
        ))?;
    std::fs::create_dir_all(dir)?;
    let path = |f: &str| std::path::Path::new(dir).join(f);
    std::fs::write(path("receipt.pub"), public.to_jwk())?;
    std::fs::write(path("receipt.jws"), checked.receipt().unwrap_or_default())?;
    std::fs::write(path("answer.txt"), checked.response().text())?;
    println!(
        "wrote {0}/receipt.pub, {0}/receipt.jws and {0}/answer.txt; verify with\n  \
         cargo run --example verify_receipt -- --public-key {0}/receipt.pub {0}/receipt.jws {0}/answer.txt",
        dir
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--demo") {
        return match args.get(1).map(|d| demo(d)) {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("usage: verify_receipt --demo DIR");
                ExitCode::from(2)
            }
        };
    }
    let mut key_file = None;
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--public-key" && i + 1 < args.len() {
            key_file = Some(args[i + 1].clone());
            i += 2;
        } else {
            rest.push(args[i].clone());
            i += 1;
        }
    }
    let (Some(key_file), [receipt, text_file]) = (key_file, rest.as_slice()) else {
        eprintln!("usage: verify_receipt --public-key FILE RECEIPT TEXTFILE");
        return ExitCode::from(2);
    };
    let keys = match std::fs::read_to_string(&key_file)
        .map_err(|e| format!("{key_file}: {e}"))
        .and_then(|t| keys(&t))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The receipt itself, or a file that holds it.
    let receipt = match std::fs::read_to_string(receipt) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => receipt.trim().to_owned(),
    };
    let text = match std::fs::read(text_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {text_file}: {e}");
            return ExitCode::from(2);
        }
    };
    match ReceiptVerifier::new(keys).verify(&receipt, &text) {
        Ok(r) => {
            println!("verified");
            println!("  request    {}", r.request_id());
            println!(
                "  principal  {}{}",
                r.principal(),
                r.tenant()
                    .map(|t| format!(" (tenant {t})"))
                    .unwrap_or_default()
            );
            println!("  model      {}", r.model());
            println!("  policy     {}", r.policy_version());
            println!("  verdict    {}", r.verdict());
            println!(
                "  findings   input {:?}, output {:?}",
                r.input_findings(),
                r.output_findings()
            );
            println!("  input      {}", r.input_digest());
            println!("  output     {}", r.output_digest());
            println!(
                "  issued     {} (expires {})",
                r.issued_at(),
                r.expires_at()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {} ({e})", e.code());
            ExitCode::from(1)
        }
    }
}
