//! OpenTelemetry spans (feature `otel`): one span per guarded request and one per
//! stage, emitted once per request from its audit event, through the
//! `opentelemetry` API (the application installs the SDK and exporter).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};

use crate::decision::Stage;
use crate::finding::{Action, Finding, Severity};
use crate::record::{AuditEvent, Outcome, StageOutcome};

/// The caller's span from a W3C `traceparent`
/// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`), to join its trace.
fn parent(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent else {
        return Context::new();
    };
    let mut parts = tp.split('-');
    let (Some(_version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Context::new();
    };
    let (Ok(trace), Ok(span), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(span),
        u8::from_str_radix(flags, 16),
    ) else {
        return Context::new();
    };
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return Context::new();
    }
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(sc)
}

/// `gen_ai.security.decision.type` for a stage outcome.
fn decision(o: StageOutcome) -> &'static str {
    match o {
        StageOutcome::Rejected | StageOutcome::FailedClosed => "deny",
        StageOutcome::Redacted => "modify",
        StageOutcome::Flagged => "warn",
        StageOutcome::Shadowed | StageOutcome::FailedOpen => "audit",
        _ => "allow",
    }
}

fn target(stage: Stage) -> &'static str {
    match stage {
        Stage::InputScan => "llm_input",
        Stage::OutputValidation => "llm_output",
        _ => "request",
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn finding_event(f: &Finding) -> Vec<KeyValue> {
    vec![
        KeyValue::new(
            "gen_ai.security.risk.category",
            f.category().as_str().to_owned(),
        ),
        KeyValue::new("gen_ai.security.risk.severity", severity(f.severity())),
        KeyValue::new("gen_ai.security.risk.score", f64::from(f.confidence())),
        KeyValue::new("inference_guard.rule_id", f.rule_id().to_owned()),
        KeyValue::new(
            "inference_guard.action",
            match f.action() {
                Action::Block => "block",
                Action::Redact => "redact",
                Action::Flag => "flag",
            },
        ),
    ]
}

/// Emits the spans of one request.
pub(crate) fn emit<T>(tracer: &T, event: &AuditEvent<'_>, policy_version: &str)
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let cx = parent(event.trace_id);
    let mut request = tracer
        .span_builder("inference_guard.request")
        .with_kind(SpanKind::Internal)
        .with_start_time(event.started())
        .start_with_context(tracer, &cx);
    if !request.is_recording() {
        // No SDK installed, or not sampled: nothing to build.
        return;
    }
    let ok = event.outcome() == Outcome::Completed;
    let modified = event
        .input_findings()
        .iter()
        .chain(event.output_findings())
        .any(|f| f.action() == Action::Redact);
    let decided = match (ok, modified) {
        (true, true) => "modify",
        (true, false) => "allow",
        (false, _) if event.rejection().is_some() => "deny",
        (false, _) => "allow",
    };
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", "apply_guardrail"),
        KeyValue::new("gen_ai.guardian.name", "inference-guard"),
        KeyValue::new("gen_ai.security.decision.type", decided),
        KeyValue::new("gen_ai.security.policy.version", policy_version.to_owned()),
        KeyValue::new("inference_guard.request_id", event.request_id().to_string()),
        KeyValue::new("inference_guard.outcome", event.outcome().as_str()),
    ];
    if !event.model().is_empty() {
        attrs.push(KeyValue::new(
            "gen_ai.request.model",
            event.model().to_owned(),
        ));
    }
    if !event.route().is_empty() {
        attrs.push(KeyValue::new(
            "inference_guard.route",
            event.route().to_owned(),
        ));
    }
    if let Some(p) = event.principal() {
        attrs.push(KeyValue::new(
            "inference_guard.principal",
            p.qualified_id().to_owned(),
        ));
    }
    if let Some(u) = event.usage() {
        attrs.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            u.input_tokens as i64,
        ));
        attrs.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            u.output_tokens as i64,
        ));
    }
    if let Some(r) = event.rejection() {
        attrs.push(KeyValue::new(
            "gen_ai.security.decision.reason",
            r.reason().as_str(),
        ));
        attrs.push(KeyValue::new(
            "gen_ai.security.decision.code",
            r.code().to_owned(),
        ));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status()),
        ));
        if let Some(s) = event.decided_by() {
            attrs.push(KeyValue::new("inference_guard.decided_by", s.as_str()));
        }
    }
    request.set_attributes(attrs);

    let request_cx = cx.with_span(request);
    let at = |i: quanta::Instant| -> SystemTime {
        match event.origin {
            Some(o) => event.started() + i.saturating_duration_since(o),
            None => event.started(),
        }
    };
    for s in event.stages() {
        let stage = s.stage();
        let name: Cow<'static, str> = Cow::Owned(format!("apply_guardrail {}", stage.as_str()));
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(at(s.start))
            .with_attributes(vec![
                KeyValue::new("gen_ai.operation.name", "apply_guardrail"),
                KeyValue::new("gen_ai.guardian.name", "inference-guard"),
                KeyValue::new("gen_ai.security.target.type", target(stage)),
                KeyValue::new("gen_ai.security.decision.type", decision(s.outcome())),
                KeyValue::new("gen_ai.security.policy.version", policy_version.to_owned()),
                KeyValue::new("inference_guard.stage", stage.as_str()),
                KeyValue::new("inference_guard.stage.outcome", s.outcome().as_str()),
            ])
            .start_with_context(tracer, &request_cx);
        let end = at(s.end);
        let findings: &[Finding] = match stage {
            Stage::InputScan => event.input_findings(),
            Stage::OutputValidation => event.output_findings(),
            _ => &[],
        };
        for f in findings {
            span.add_event_with_timestamp("gen_ai.security.finding", end, finding_event(f));
        }
        if let Some(e) = s.error() {
            span.set_attribute(KeyValue::new("error.type", e.as_str()));
            span.set_status(Status::error(e.as_str()));
        }
        span.end_with_timestamp(end);
    }
    request_cx
        .span()
        .end_with_timestamp(event.ended().max(event.started() + Duration::ZERO));
}
