//! OCSF export of audit events: [`to_ocsf`] and [`OcsfSink`].

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::{AuditEvent, Outcome, StageOutcome};
use crate::decision::Stage;
use crate::error::{Error, ErrorKind};
use crate::finding::{Action, Finding, Severity};
use crate::stage::AuditSink;

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.5.0";

const API_ACTIVITY: u32 = 6003;
const AUTHENTICATION: u32 = 3002;
const DETECTION_FINDING: u32 = 2004;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn severity_id(s: Severity) -> u8 {
    match s {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// What the events of one request share: metadata, time, the caller.
struct Common<'e, 'a> {
    event: &'e AuditEvent<'a>,
    time: u64,
}

impl Common<'_, '_> {
    fn metadata(&self, n: usize) -> Value {
        let mut m = json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "inference-guard",
                "vendor_name": "inference-guard",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": format!("{}-{n}", self.event.event_id()),
            "correlation_uid": self.event.request_id().to_string(),
            "log_name": "inference_guard_audit",
        });
        if let Some(t) = self.event.principal().and_then(crate::Principal::tenant) {
            m["tenant_uid"] = Value::from(t);
        }
        m
    }

    fn user(&self) -> Value {
        match self.event.principal() {
            Some(p) => {
                let mut u = json!({ "uid": p.qualified_id(), "name": p.id() });
                if let Some(k) = p.key_id() {
                    // The key's id, never the key.
                    u["credential_uid"] = Value::from(k);
                }
                u
            }
            None => json!({ "name": "unauthenticated" }),
        }
    }

    fn src_endpoint(&self) -> Value {
        match self.event.client_addr {
            Some(ip) => json!({ "ip": ip.to_string() }),
            None => json!({ "name": "unknown" }),
        }
    }

    fn base(&self, class_uid: u32, activity_id: u32, n: usize) -> Map<String, Value> {
        let (category_uid, class_name, category_name) = match class_uid {
            API_ACTIVITY => (6, "API Activity", "Application Activity"),
            AUTHENTICATION => (3, "Authentication", "Identity & Access Management"),
            _ => (2, "Detection Finding", "Findings"),
        };
        let mut m = Map::new();
        m.insert("class_uid".into(), json!(class_uid));
        m.insert("class_name".into(), json!(class_name));
        m.insert("category_uid".into(), json!(category_uid));
        m.insert("category_name".into(), json!(category_name));
        m.insert("activity_id".into(), json!(activity_id));
        m.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
        m.insert("time".into(), json!(self.time));
        m.insert("metadata".into(), self.metadata(n));
        m
    }
}

/// One audit event as OCSF events (OCSF [`OCSF_VERSION`]):
///
/// - an **API Activity** (6003) for the request: the caller (`actor.user`), the
///   route (`api.operation`), the model (`api.service.name`), the request id
///   (`api.request.uid`, also every event's `metadata.correlation_uid`), the client
///   address, the outcome (`status_id` 1 success or 2 failure, `status` the outcome,
///   `status_code` the HTTP status, `status_detail` the reason code);
/// - an **Authentication** (3002) when the identity stage ran: `status_id` 1 or 2,
///   the principal (`user.uid` its qualified id, `user.credential_uid` the key id),
///   `auth_protocol` the credential kind;
/// - a **Detection Finding** (2004) per finding: `finding_info.title` and
///   `analytic.uid` the rule id, `finding_info.types` its category, the severity,
///   `confidence_score` (0-100), and `message` what the guard did (`blocked`,
///   `redacted`, `flagged`).
///
/// No credential, prompt or answer text is in them.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use inference_guard::audit::{OCSF_VERSION, to_ocsf};
/// use inference_guard::*;
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous()
///     .authorize_all()
///     .audit_sink(sink_fn(move |e| Ok(s.lock().unwrap().extend(to_ocsf(e)))));
/// let guard = b.build()?;
/// guard.check_request(GuardRequest::new("m"))?.check_response(GuardResponse::new("ok"))?;
/// let events = seen.lock().unwrap();
/// assert_eq!(events[0]["class_uid"], 6003);
/// assert_eq!(events[0]["metadata"]["version"], OCSF_VERSION);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_ocsf(event: &AuditEvent<'_>) -> Vec<Value> {
    let c = Common {
        event,
        time: millis(event.ended()),
    };
    let mut out = Vec::with_capacity(2);
    let rejection = event.rejection();
    let ok = event.outcome() == Outcome::Completed;

    // The request.
    let mut api = c.base(API_ACTIVITY, 99, 0);
    api.insert("activity_name".into(), json!("Inference"));
    let mut operation = json!({
        "operation": if event.route().is_empty() { "inference" } else { event.route() },
        "request": { "uid": event.request_id().to_string() },
    });
    if !event.model().is_empty() {
        operation["service"] = json!({ "name": event.model() });
    }
    api.insert("api".into(), operation);
    api.insert("actor".into(), json!({ "user": c.user() }));
    api.insert("src_endpoint".into(), c.src_endpoint());
    api.insert("start_time".into(), json!(millis(event.started())));
    api.insert("end_time".into(), json!(c.time));
    api.insert("status_id".into(), json!(if ok { 1 } else { 2 }));
    api.insert("status".into(), json!(event.outcome().as_str()));
    let severity = match (ok, rejection) {
        (true, _) => 1,
        (false, Some(r)) if r.status() >= 500 => 2,
        (false, _) => 3,
    };
    api.insert("severity_id".into(), json!(severity));
    if let Some(r) = rejection {
        api.insert("status_code".into(), json!(r.status().to_string()));
        api.insert("status_detail".into(), json!(r.code()));
        api.insert("http_response".into(), json!({ "code": r.status() }));
    }
    let mut unmapped = json!({ "outcome": event.outcome().as_str() });
    if let Some(s) = event.decided_by() {
        unmapped["decided_by"] = json!(s.as_str());
    }
    if let Some(u) = event.usage() {
        unmapped["tokens_input"] = json!(u.input_tokens);
        unmapped["tokens_output"] = json!(u.output_tokens);
    }
    api.insert("unmapped".into(), unmapped);
    out.push(Value::Object(api));

    // The authentication, when the identity stage ran.
    if let Some(id) = event.stages().iter().find(|s| s.stage() == Stage::Identity) {
        let passed = matches!(
            id.outcome(),
            StageOutcome::Passed | StageOutcome::FailedOpen | StageOutcome::Shadowed
        );
        let mut auth = c.base(AUTHENTICATION, 1, 1);
        auth.insert("activity_name".into(), json!("Logon"));
        auth.insert("user".into(), c.user());
        auth.insert("src_endpoint".into(), c.src_endpoint());
        auth.insert("service".into(), json!({ "name": "inference-guard" }));
        auth.insert("status_id".into(), json!(if passed { 1 } else { 2 }));
        auth.insert("status".into(), json!(id.outcome().as_str()));
        auth.insert("severity_id".into(), json!(if passed { 1 } else { 3 }));
        if let Some(p) = event.principal() {
            auth.insert("auth_protocol_id".into(), json!(99));
            auth.insert("auth_protocol".into(), json!(p.kind().as_str()));
        }
        if let (false, Some(r)) = (passed, rejection) {
            auth.insert("status_detail".into(), json!(r.code()));
        }
        out.push(Value::Object(auth));
    }

    // The findings.
    let findings = event
        .input_findings()
        .iter()
        .map(|f| (f, "input"))
        .chain(event.output_findings().iter().map(|f| (f, "output")));
    for (f, direction) in findings {
        let n = out.len();
        out.push(finding(&c, f, direction, n));
    }
    out
}

fn finding(c: &Common<'_, '_>, f: &Finding, direction: &str, n: usize) -> Value {
    let mut d = c.base(DETECTION_FINDING, 1, n);
    d.insert("activity_name".into(), json!("Create"));
    d.insert(
        "finding_info".into(),
        json!({
            "uid": format!("{}-{n}", c.event.event_id()),
            "title": f.rule_id(),
            "types": [f.category().as_str()],
            "analytic": { "type_id": 1, "type": "Rule", "uid": f.rule_id(), "name": f.rule_id() },
        }),
    );
    d.insert("severity_id".into(), json!(severity_id(f.severity())));
    d.insert(
        "confidence_score".into(),
        json!((f.confidence().clamp(0.0, 1.0) * 100.0).round() as u32),
    );
    d.insert("status_id".into(), json!(1));
    let did = match f.action() {
        Action::Block => "blocked",
        Action::Redact => "redacted",
        Action::Flag => "flagged",
    };
    d.insert("message".into(), json!(did));
    d.insert(
        "unmapped".into(),
        json!({
            "direction": direction,
            "location": f.location().to_string(),
            "span": [f.span().start, f.span().end],
        }),
    );
    Value::Object(d)
}

/// A sink that writes each audit event as OCSF events ([`to_ocsf`]), one JSON
/// object per line, to a writer (a file a SIEM collector tails). A write that
/// fails part way (a full disk) leaves part of a line, which the next write ends
/// first (as [`JsonLinesSink`](crate::JsonLinesSink) does).
///
/// ```
/// use inference_guard::audit::OcsfSink;
/// let sink = OcsfSink::new(Vec::<u8>::new());
/// # let _ = sink;
/// ```
pub struct OcsfSink<W> {
    writer: Mutex<super::Lines<W>>,
}

impl<W: Write + Send + 'static> OcsfSink<W> {
    /// A sink writing to `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer: Mutex::new(super::Lines::new(writer)),
        }
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.writer
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .w
    }
}

impl<W> fmt::Debug for OcsfSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OcsfSink")
    }
}

impl<W: Write + Send + 'static> AuditSink for OcsfSink<W> {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let mut buf = Vec::new();
        for e in to_ocsf(event) {
            serde_json::to_writer(&mut buf, &e)
                .map_err(|e| Error::with_source(ErrorKind::Audit, "serialize OCSF event", e))?;
            buf.push(b'\n');
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write(&buf)
            .map_err(|e| Error::with_source(ErrorKind::Audit, "write OCSF events", e))
    }

    fn flush(&self) -> Result<(), Error> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.w.flush()
            .map_err(|e| Error::with_source(ErrorKind::Audit, "flush OCSF events", e))
    }

    fn name(&self) -> &str {
        "ocsf"
    }
}
