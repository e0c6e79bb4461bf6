//! Arbitrary bytes as an OpenAI chat completions body: parse, check with a guard that
//! redacts, write the admitted request back. Properties: no panic; a message the
//! guard did not change is written back unchanged; a redacted e-mail address never
//! reaches the rewritten body.
#![no_main]

use inference_guard::openai::ChatCompletionRequest;
use inference_guard::*;
use libfuzzer_sys::fuzz_target;

fn rules() -> builtin::PatternRules {
    builtin::PatternRules::builder()
        .rule(
            "pii.email",
            Category::PersonalData,
            Severity::Medium,
            Action::Redact,
            r"[a-z0-9.]+@[a-z0-9]+\.[a-z]{2,}",
        )
        .rule(
            "injection.ignore",
            Category::PromptInjection,
            Severity::High,
            Action::Block,
            r"(?i)ignore previous",
        )
        .build()
        .unwrap()
}

fn guard() -> InferenceGuard {
    let mut b = InferenceGuard::builder();
    b.allow_anonymous()
        .authorize_all()
        .input_scanner(rules())
        .audit_sink(NoopSink);
    b.build().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut wire) = serde_json::from_slice::<ChatCompletionRequest>(data) else {
        return;
    };
    let before = wire.clone();
    let req = wire.to_guard_request(Credentials::none(), "/v1/chat/completions");
    let Ok(admission) = guard().check_request(req) else {
        return;
    };
    wire.apply_messages(admission.request());
    let rescan = rules();
    for (i, m) in admission.request().messages().iter().enumerate() {
        let redacted = admission
            .findings()
            .iter()
            .any(|f| f.location() == Location::Message(i));
        if redacted {
            // The redacted text holds no e-mail address any more, and it is what the
            // rewritten body carries.
            assert!(
                rescan
                    .scan_text(m.content(), Location::Other)
                    .iter()
                    .all(|f| f.rule_id() != "pii.email")
            );
            let back = wire.to_guard_request(Credentials::none(), "/");
            assert_eq!(back.messages()[i].content(), m.content());
        } else {
            assert_eq!(
                wire.messages[i], before.messages[i],
                "untouched message changed"
            );
        }
    }
    serde_json::to_string(&wire).unwrap();
    admission.fail();
});
