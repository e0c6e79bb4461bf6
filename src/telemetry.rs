//! Metrics through the `metrics` facade (feature `metrics`), emitted once per
//! request from its audit event. Names and labels are listed in the README
//! ("Metrics"); label values are fixed vocabularies (stages, outcomes, reasons,
//! categories), never principals, models or content.

use metrics::{counter, histogram};

use crate::finding::{Category, Finding};
use crate::record::AuditEvent;

/// A bounded label for a category: user-defined ones are all `custom`.
fn category(c: &Category) -> &'static str {
    match c {
        Category::Secret => "secret",
        Category::PersonalData => "personal_data",
        Category::PromptInjection => "prompt_injection",
        Category::Jailbreak => "jailbreak",
        Category::UnicodeSmuggling => "unicode_smuggling",
        Category::EncodedPayload => "encoded_payload",
        Category::SystemPromptLeak => "system_prompt_leak",
        Category::Exfiltration => "exfiltration",
        Category::UnsafeMarkup => "unsafe_markup",
        Category::ToolCall => "tool_call",
        Category::Schema => "schema",
        Category::Limit => "limit",
        _ => "custom",
    }
}

fn findings(list: &[Finding], direction: &'static str) {
    for f in list {
        counter!(
            "inference_guard_findings_total",
            "direction" => direction,
            "category" => category(f.category()),
            "action" => f.action().as_str()
        )
        .increment(1);
    }
}

/// Records one request's metrics; `audit_ok` says whether its record was written.
pub(crate) fn observe(event: &AuditEvent<'_>, audit_ok: bool) {
    let rejection = event.rejection();
    counter!(
        "inference_guard_requests_total",
        "outcome" => event.outcome().as_str(),
        "reason" => rejection.map_or("none", |r| r.reason().as_str()),
        "stage" => event.decided_by().map_or("none", |s| s.as_str())
    )
    .increment(1);
    for s in event.stages() {
        let stage = s.stage().as_str();
        counter!(
            "inference_guard_stage_decisions_total",
            "stage" => stage,
            "outcome" => s.outcome().as_str()
        )
        .increment(1);
        histogram!("inference_guard_stage_duration_seconds", "stage" => stage)
            .record(s.latency().as_secs_f64());
    }
    findings(event.input_findings(), "input");
    findings(event.output_findings(), "output");
    let reserved = event.estimated_tokens;
    if reserved > 0 {
        counter!("inference_guard_tokens_reserved_total").increment(reserved);
    }
    if let Some(u) = event.usage() {
        let settled = u.total();
        counter!("inference_guard_tokens_settled_total").increment(settled);
        if reserved > settled {
            counter!("inference_guard_tokens_refunded_total").increment(reserved - settled);
        }
    }
    if let Some(a) = event.abuse() {
        counter!(
            "inference_guard_abuse_responses_total",
            "level" => a.level().as_str()
        )
        .increment(1);
    }
    if !audit_ok {
        counter!("inference_guard_audit_failures_total").increment(1);
    }
}
