//! Signed receipts: issued for validated answers (whole and streamed), verified
//! downstream, and refused for every kind of forgery.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use inference_guard::audit::AuditSigningKey;
use inference_guard::output::AnswerValidator;
use inference_guard::receipt::{
    ReceiptError, ReceiptSigner, ReceiptVerifier, digest, input_digest,
};
use inference_guard::*;

fn guard(key: AuditSigningKey) -> InferenceGuard {
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|_r: &GuardRequest| {
        Ok(Principal::builder("svc-approvals", CredentialKind::ApiKey)
            .tenant("acme")
            .build())
    }))
    .authorize_all()
    .audit_sink(NoopSink)
    .output_validator(AnswerValidator::new())
    .receipts(ReceiptSigner::new(key).ttl(Duration::from_secs(600)))
    .policy_version("policy-7");
    b.build().unwrap()
}

fn request() -> GuardRequest {
    GuardRequest::new("demo-large")
        .with_credentials(Credentials::from_api_key("k"))
        .with_message(Role::System, "You approve invoices.")
        .with_message(Role::User, "Is invoice 42 within budget?")
}

fn issue(g: &InferenceGuard, answer: &str) -> (String, String, GuardRequest) {
    let adm = g.check_request(request()).unwrap();
    let admitted = adm.request().clone();
    let c = adm.check_response(GuardResponse::new(answer)).unwrap();
    (
        c.receipt().unwrap().to_owned(),
        c.response().text().to_owned(),
        admitted,
    )
}

#[test]
fn a_receipt_binds_who_asked_what_was_checked_and_the_text() {
    let key = AuditSigningKey::generate("rcpt-1").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let (receipt, text, admitted) = issue(&g, "Yes: 4,200 of 5,000 EUR.");
    let r = verifier.verify(&receipt, text.as_bytes()).unwrap();
    assert_eq!(r.principal(), "svc-approvals");
    assert_eq!(r.tenant(), Some("acme"));
    assert_eq!(r.model(), "demo-large");
    assert_eq!(r.policy_version(), "policy-7");
    assert_eq!(r.verdict(), "passed");
    assert_eq!(r.kid(), "rcpt-1");
    assert_eq!(r.input_digest(), input_digest(&admitted));
    assert_eq!(r.output_digest(), digest(text.as_bytes()));
    assert_eq!(r.expires_at() - r.issued_at(), 600);
    assert!(r.input_findings().is_empty() && r.output_findings().is_empty());
    // Each request has its own id.
    let (other, _, _) = issue(&g, "Yes: 4,200 of 5,000 EUR.");
    let o = verifier.verify(&other, text.as_bytes()).unwrap();
    assert_ne!(o.request_id(), r.request_id());
}

#[test]
fn a_redacted_answer_gets_a_receipt_for_what_the_caller_received() {
    let key = AuditSigningKey::generate("rcpt-1").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let (receipt, text, _) = issue(&g, "Use AKIAZ4QW7RTY2UIOPL3M to pay.");
    assert!(text.contains("[REDACTED"));
    let r = verifier.verify(&receipt, text.as_bytes()).unwrap();
    assert_eq!(r.verdict(), "redacted");
    assert_eq!(r.output_findings().get("secret"), Some(&1));
    assert_eq!(
        verifier
            .verify(&receipt, b"Use AKIAZ4QW7RTY2UIOPL3M to pay.")
            .unwrap_err(),
        ReceiptError::DigestMismatch
    );
}

#[test]
fn every_forgery_is_refused() {
    let key = AuditSigningKey::generate("rcpt-1").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let (receipt, text, _) = issue(&g, "Approved.");
    let t = text.as_bytes();
    let parts: Vec<&str> = receipt.split('.').collect();
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let dec = |s: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    };

    // Another key with the same key id: the signature does not verify.
    let impostor = AuditSigningKey::generate("rcpt-1").unwrap();
    let wrong = ReceiptVerifier::new([impostor.public_key()]);
    assert_eq!(
        wrong.verify(&receipt, t).unwrap_err(),
        ReceiptError::Signature
    );
    // A verifier that does not know the key id.
    let other = ReceiptVerifier::new([AuditSigningKey::generate("rcpt-2").unwrap().public_key()]);
    assert_eq!(
        other.verify(&receipt, t).unwrap_err(),
        ReceiptError::UnknownKey
    );
    // Algorithm swaps, and a JWT that is not a receipt.
    for alg in ["none", "HS256", "ES256"] {
        let mut h = dec(parts[0]);
        h["alg"] = alg.into();
        let forged = format!("{}.{}.{}", enc(&h), parts[1], parts[2]);
        assert_eq!(
            verifier.verify(&forged, t).unwrap_err(),
            ReceiptError::Algorithm,
            "{alg}"
        );
    }
    let mut h = dec(parts[0]);
    h["typ"] = "JWT".into();
    let forged = format!("{}.{}.{}", enc(&h), parts[1], parts[2]);
    assert_eq!(
        verifier.verify(&forged, t).unwrap_err(),
        ReceiptError::Algorithm
    );
    // Claims changed after signing.
    let mut c = dec(parts[1]);
    c["verdict"] = "passed".into();
    c["sub"] = "svc-admin".into();
    let forged = format!("{}.{}.{}", parts[0], enc(&c), parts[2]);
    assert_eq!(
        verifier.verify(&forged, t).unwrap_err(),
        ReceiptError::Signature
    );
    // Expired (and from the future).
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(
        verifier.verify_at(&receipt, t, later).unwrap_err(),
        ReceiptError::Expired
    );
    let earlier = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(
        verifier.verify_at(&receipt, t, earlier).unwrap_err(),
        ReceiptError::Expired
    );
    // The text changed.
    assert_eq!(
        verifier.verify(&receipt, b"Approved!").unwrap_err(),
        ReceiptError::DigestMismatch
    );
    // Malformed.
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        &format!("{receipt}x"),
        &format!("{}=", receipt),
    ] {
        assert!(verifier.verify(bad, t).is_err(), "{bad}");
    }
    assert!(verifier.verify(&receipt, t).is_ok());
}

/// A receipt is read with the JWT parser: a claim set with a member twice is
/// malformed even when its signature is good, because another verifier could read
/// the other member (RFC 7515 §5.2).
#[test]
fn a_signed_receipt_with_a_duplicate_member_is_malformed() {
    let key = AuditSigningKey::generate("rcpt-dup").unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(key.pkcs8().unwrap()).unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let (receipt, text, _) = issue(&g, "Approved.");
    let parts: Vec<&str> = receipt.split('.').collect();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let sign = |header: &str, claims: &str| {
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()));
        format!("{input}.{sig}")
    };
    // Re-signed unchanged: accepted (the signing here is right).
    let resigned = sign(parts[0], &claims);
    assert!(verifier.verify(&resigned, text.as_bytes()).is_ok());
    // The same claims with a second "sub" at the end: malformed.
    let dup = format!("{},\"sub\":\"svc-admin\"}}", claims.trim_end_matches('}'));
    assert_eq!(
        verifier
            .verify(&sign(parts[0], &dup), text.as_bytes())
            .unwrap_err(),
        ReceiptError::Malformed
    );
    // A duplicate in the header too.
    let header = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let dup_header = format!("{},\"alg\":\"EdDSA\"}}", header.trim_end_matches('}'));
    let forged = sign(&URL_SAFE_NO_PAD.encode(dup_header), &claims);
    assert_eq!(
        verifier.verify(&forged, text.as_bytes()).unwrap_err(),
        ReceiptError::Malformed
    );
}

#[test]
fn rejected_requests_get_no_receipt() {
    let key = AuditSigningKey::generate("rcpt-1").unwrap();
    let g = guard(key);
    let adm = g.check_request(request()).unwrap();
    let r = adm.check_response(GuardResponse::new(
        "<|im_start|> see ![x](javascript:alert(1))",
    ));
    // Redacted, not blocked: still a receipt. A blocked answer has none to give.
    assert!(r.unwrap().receipt().is_some());
    let adm = g.check_request(request().with_json_response(true)).unwrap();
    assert!(adm.check_response(GuardResponse::new("not json")).is_err());
}

#[test]
fn streamed_answers_get_a_receipt_over_everything_sent() {
    let key = AuditSigningKey::generate("rcpt-1").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let mut s = g
        .check_request(request().with_stream(true))
        .unwrap()
        .stream();
    let mut sent = String::new();
    let answer = "Yes, invoice 42 is within budget. ".repeat(100);
    for c in answer.as_bytes().chunks(16) {
        sent.push_str(&s.push(std::str::from_utf8(c).unwrap()).unwrap());
    }
    let end = s.end(None, Vec::new()).unwrap();
    sent.push_str(&end.text);
    assert_eq!(sent, answer);
    let r = verifier
        .verify(end.receipt().unwrap(), sent.as_bytes())
        .unwrap();
    assert_eq!(r.verdict(), "passed");

    // Through SSE: the receipt is an event after [DONE].
    let adm = g.check_request(request().with_stream(true)).unwrap();
    let mut sse = SseGuard::new(adm.stream());
    let mut body = Vec::new();
    for w in ["Within ", "budget."] {
        let chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": w}}]});
        body.extend(sse.push(format!("data: {chunk}\n\n").as_bytes()));
    }
    body.extend(sse.push(b"data: [DONE]\n\n"));
    let body = String::from_utf8(body).unwrap();
    let (before, receipt) = body.split_once("event: inference_receipt\ndata: ").unwrap();
    assert!(before.ends_with("data: [DONE]\n\n"));
    let r = verifier
        .verify(receipt.trim_end(), b"Within budget.")
        .unwrap();
    assert_eq!(r.model(), "demo-large");
}

#[test]
fn a_receipt_binds_the_tool_calls_whole_and_streamed() {
    let key = AuditSigningKey::generate("rcpt-calls").unwrap();
    let verifier = ReceiptVerifier::new([key.public_key()]);
    let g = guard(key);
    let req = || request().with_tool(ToolSpec::new("approve"));
    let call = ToolCall::new("c1", "approve", r#"{"invoice": 42}"#);
    let forged = ToolCall::new("c1", "approve", r#"{"invoice": 43}"#);
    // A tool-call-only answer: its text is empty, and the text alone never verifies.
    let c = g
        .check_request(req())
        .unwrap()
        .check_response(GuardResponse::new("").with_tool_call(call.clone()))
        .unwrap();
    let receipt = c.receipt().unwrap();
    assert_eq!(
        verifier.verify(receipt, b"").unwrap_err(),
        ReceiptError::DigestMismatch
    );
    let r = verifier
        .verify_answer(receipt, b"", std::slice::from_ref(&call))
        .unwrap();
    assert!(r.tool_calls_digest().is_some());
    assert_eq!(
        verifier
            .verify_answer(receipt, b"", std::slice::from_ref(&forged))
            .unwrap_err(),
        ReceiptError::DigestMismatch
    );
    // Streamed: the calls that were released are bound.
    let s = g.check_request(req().with_stream(true)).unwrap().stream();
    let end = s.end(None, vec![call]).unwrap();
    let receipt = end.receipt().unwrap();
    assert!(
        verifier
            .verify_answer(receipt, end.text.as_bytes(), &end.tool_calls)
            .is_ok()
    );
    assert!(verifier.verify(receipt, end.text.as_bytes()).is_err());
    // An answer without calls verifies with either.
    let (receipt, text, _) = issue(&g, "No calls here.");
    assert!(
        verifier
            .verify_answer(&receipt, text.as_bytes(), &[])
            .is_ok()
    );
}
