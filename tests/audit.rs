//! Audit: the event schema, keyed digests and content, the sinks, the tamper-evident
//! log and its verifier, and crash safety with a real child process.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use inference_guard::audit::*;
use inference_guard::*;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ig-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const KEY: &str = "sk-audit-test-CREDENTIAL-0123456789";

fn guard_with(sink: impl AuditSink, configure: impl FnOnce(&mut GuardBuilder)) -> InferenceGuard {
    let rules = builtin::PatternRules::builder()
        .rule(
            "pii.email",
            Category::PersonalData,
            Severity::Medium,
            Action::Redact,
            r"[a-z]+@example\.com",
        )
        .rule(
            "leak.canary",
            Category::SystemPromptLeak,
            Severity::Critical,
            Action::Block,
            "CANARY-[0-9]+",
        )
        .build()
        .unwrap();
    let mut b = InferenceGuard::builder();
    b.identity(verifier_fn(|req| match req.credentials().api_key() {
        Some(k) if k.expose() == KEY => Ok(Principal::builder("svc-audit", CredentialKind::ApiKey)
            .key_id("key-7")
            .tenant("acme")
            .build()),
        _ => Err(Rejection::unauthenticated("unknown api key").into()),
    }))
    .authorize_all()
    .rate_limiter(rate_limit::InMemoryRateLimiter::per_principal(
        rate_limit::Quota::per_minute(1000),
    ))
    .input_scanner(rules.clone())
    .output_validator(rules)
    .audit_sink(sink);
    configure(&mut b);
    b.build().unwrap()
}

fn request(text: &str) -> GuardRequest {
    GuardRequest::new("demo-model")
        .with_credentials(Credentials::from_api_key(KEY))
        .with_route("/v1/chat/completions")
        .with_client_addr("192.0.2.7".parse().unwrap())
        .with_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
        .with_message(Role::User, text)
}

fn complete(
    guard: &InferenceGuard,
    text: &str,
    answer: &str,
) -> Result<CheckedResponse, Rejection> {
    guard
        .check_request(request(text))?
        .check_response(GuardResponse::new(answer).with_usage(Usage::new(9, 4)))
}

#[test]
fn events_carry_the_documented_schema_and_never_the_credential() {
    let sink = MemorySink::new();
    let guard = guard_with(sink.clone(), |_| {});
    complete(&guard, "mail bob@example.com", "ok").unwrap();
    let _ = complete(&guard, "hi", "CANARY-42");
    let recs = sink.records();
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(r["schema"], 1);
    let event_id = r["event_id"].as_str().unwrap();
    assert_eq!(event_id.len(), 36);
    assert_eq!(&event_id[14..15], "7", "UUIDv7");
    assert_ne!(r["event_id"], r["request_id"]);
    for t in ["started", "ended"] {
        let s = r[t].as_str().unwrap();
        assert!(s.ends_with('Z') && s.contains('T'), "RFC 3339 UTC: {s}");
    }
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(r["principal"]["id"], "svc-audit");
    assert_eq!(r["principal"]["credential"], "api_key");
    assert_eq!(r["principal"]["key_id"], "key-7");
    assert_eq!(r["principal"]["tenant"], "acme");
    assert_eq!(r["client_addr"], "192.0.2.7");
    assert_eq!(
        (r["route"].as_str(), r["model"].as_str()),
        (Some("/v1/chat/completions"), Some("demo-model"))
    );
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["output_verdict"], "passed");
    assert_eq!(r["stream_aborted"], false);
    assert_eq!(r["rate_limit"]["remaining"], 999);
    assert_eq!(r["tokens_estimated"], 9);
    assert_eq!(r["usage"]["output_tokens"], 4);
    assert_eq!(r["input_findings"][0]["rule"], "pii.email");
    assert_eq!(r["input_findings"][0]["span"], serde_json::json!([5, 20]));
    for s in r["stages"].as_array().unwrap() {
        assert!(s["latency_us"].as_f64().unwrap() >= 0.0);
    }
    let blocked = &recs[1];
    assert_eq!(blocked["outcome"], "output_blocked");
    assert_eq!(blocked["output_verdict"], "rejected");
    assert_eq!(blocked["rejection"]["stage"], "output_validation");
    for line in sink.lines() {
        assert!(!line.contains(KEY));
        assert!(!line.contains("bob@example.com"), "no prompt text");
        assert!(!line.contains("CANARY-42"), "no answer text");
    }
}

#[test]
fn keyed_digests_correlate_without_content_and_content_is_opt_in_and_redacted() {
    let sink = MemorySink::new();
    let guard = guard_with(sink.clone(), |b| {
        b.audit_digest_key(&[7u8; 32]);
    });
    complete(&guard, "same prompt", "same answer").unwrap();
    complete(&guard, "same prompt", "same answer").unwrap();
    complete(&guard, "other prompt", "same answer").unwrap();
    let r = sink.records();
    assert_eq!(r[0]["prompt_hmac"], r[1]["prompt_hmac"]);
    assert_ne!(r[0]["prompt_hmac"], r[2]["prompt_hmac"]);
    assert_eq!(r[0]["answer_hmac"], r[2]["answer_hmac"]);
    assert_eq!(r[0]["prompt_hmac"].as_str().unwrap().len(), 64);
    assert!(r[0].get("content").is_none(), "content is off by default");

    let mut b = InferenceGuard::builder();
    b.allow_anonymous()
        .authorize_all()
        .audit_sink(NoopSink)
        .audit_digest_key(b"short");
    assert!(
        b.build().is_err(),
        "digest keys shorter than 32 bytes are refused"
    );

    let sink = MemorySink::new();
    let guard = guard_with(sink.clone(), |b| {
        b.audit_content(true);
    });
    complete(&guard, "reply to bob@example.com", "done").unwrap();
    let _ = complete(&guard, "x", "the CANARY-7 leaked");
    let lines = sink.lines();
    assert!(lines[0].contains("reply to [REDACTED:PERSONAL_DATA]"));
    assert!(lines[0].contains(r#""answer":"done""#));
    assert!(
        !lines[0].contains("bob@example.com"),
        "content only after redaction"
    );
    assert!(
        !lines[1].contains("CANARY-7"),
        "a blocked answer is never logged"
    );
}

#[test]
fn background_sink_flushes_everything_accepted_on_shutdown() {
    let memory = MemorySink::new();
    let bg = Arc::new(BackgroundSink::new(memory.clone(), 64, Overflow::Block));
    let guard = guard_with(bg.clone(), |_| {});
    for i in 0..500 {
        complete(&guard, &format!("request {i}"), "ok").unwrap();
    }
    bg.shutdown();
    let stats = bg.stats();
    assert_eq!(stats.accepted, 500);
    assert_eq!(stats.written, 500);
    assert_eq!(stats.dropped, 0);
    assert_eq!(memory.len(), 500);
    // After shutdown, events are refused and counted; the guard fails closed.
    assert_eq!(complete(&guard, "late", "ok").unwrap_err().status(), 503);
    assert_eq!(bg.stats().dropped, 1);
}

/// An inner sink that takes its time, so the queue fills.
#[derive(Clone)]
struct Slow(MemorySink, Duration);
impl AuditSink for Slow {
    fn record(&self, e: &AuditEvent<'_>) -> Result<(), Error> {
        std::thread::sleep(self.1);
        self.0.record(e)
    }
}

#[test]
fn background_sink_overflow_policies() {
    // Drop and count: requests go on, the losses are counted and reported.
    let memory = MemorySink::new();
    let bg = Arc::new(BackgroundSink::new(
        Slow(memory.clone(), Duration::from_millis(20)),
        2,
        Overflow::DropAndCount,
    ));
    let guard = guard_with(bg.clone(), |_| {});
    for _ in 0..40 {
        complete(&guard, "x", "ok").unwrap();
    }
    bg.shutdown();
    let s = bg.stats();
    assert!(s.dropped > 0, "{s:?}");
    assert_eq!(s.accepted + s.dropped, 40);
    assert_eq!(memory.len() as u64, s.accepted);

    // Reject: a full queue refuses new requests before the model is called (503).
    let memory = MemorySink::new();
    let bg = Arc::new(BackgroundSink::new(
        Slow(memory, Duration::from_millis(200)),
        1,
        Overflow::Reject,
    ));
    let guard = guard_with(bg, |_| {});
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            complete(&guard, "x", "ok")
                .map(|_| 200)
                .unwrap_or_else(|r| r.status()),
        );
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(statuses[0], 200);
}

/// An inner sink that refuses writes while `down` is set, as a full disk or a lost
/// connection does.
#[derive(Clone)]
struct Flaky(MemorySink, Arc<std::sync::atomic::AtomicBool>);
impl AuditSink for Flaky {
    fn record(&self, e: &AuditEvent<'_>) -> Result<(), Error> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Audit, "no space left on device"));
        }
        self.0.record(e)
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn background_sink_reports_failures_refuses_requests_and_loses_nothing() {
    let memory = MemorySink::new();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = Arc::new(BackgroundSink::new(
        Flaky(memory.clone(), down.clone()),
        64,
        Overflow::Block,
    ));
    let guard = guard_with(bg.clone(), |_| {});
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            complete(&guard, &format!("before {i}"), "ok")
                .unwrap()
                .request_id(),
        );
    }
    bg.flush().unwrap();
    assert!(bg.last_error().is_none());

    // The sink fails: the failure is reported, and new requests are refused (503)
    // once the writer has seen it.
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    ids.push(complete(&guard, "while down", "ok").unwrap().request_id());
    wait_for("the failure to be seen", || bg.last_error().is_some());
    assert!(bg.flush().is_err(), "flush reports the failure");
    assert_eq!(bg.stats().retrying, 1);
    let refused = complete(&guard, "refused", "ok").unwrap_err();
    assert_eq!(refused.status(), 503);
    assert!(refused.retry_after().is_some());

    // The sink recovers: the waiting event is written, in order, and requests flow.
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("the retry", || bg.last_error().is_none());
    ids.push(complete(&guard, "after", "ok").unwrap().request_id());
    bg.shutdown();
    let s = bg.stats();
    assert_eq!((s.failed, s.retrying), (0, 0), "{s:?}");
    let written: Vec<String> = memory
        .lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let answered: Vec<String> = ids.iter().map(ToString::to_string).collect();
    for id in &answered {
        assert!(written.contains(id), "answered {id} has no record");
    }
    // In order: the event refused first was written before the later ones.
    let pos = |id: &String| written.iter().position(|w| w == id).unwrap();
    assert!(pos(&answered[5]) < pos(&answered[6]));

    // fail_open keeps admitting while the sink fails.
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let bg = Arc::new(
        BackgroundSink::new(Flaky(MemorySink::new(), down), 64, Overflow::Block).fail_open(),
    );
    let guard = guard_with(bg.clone(), |_| {});
    complete(&guard, "one", "ok").unwrap();
    wait_for("the failure to be seen", || bg.last_error().is_some());
    assert!(complete(&guard, "two", "ok").is_ok());
}

/// A directory on a small tmpfs (`IG_SMALL_DISK`, mounted by `.ci/run`): a disk that
/// really fills. Without it the test says so and passes on a developer machine;
/// under CI it fails.
fn small_disk() -> Option<PathBuf> {
    match std::env::var_os("IG_SMALL_DISK") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            let msg = "IG_SMALL_DISK is not set (a directory on a small tmpfs; .ci/run mounts one)";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

/// Fills the disk `dir` is on with `filler`, then frees `keep` bytes of it.
fn fill(dir: &std::path::Path, keep: u64) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![b'x'; 4096];
    while f.write_all(&block).is_ok() {}
    drop(f);
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(keep))
        .unwrap();
    filler
}

fn ids_in(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[test]
fn a_full_disk_never_lets_an_answer_out_without_its_record() {
    let Some(disk) = small_disk() else {
        return;
    };
    // A synchronous sink: an answer whose record cannot be written is replaced by a
    // 503, so every answer that went out has its record on disk.
    let dir = disk.join(format!("sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let filler = fill(&dir, 16 * 1024);
    let guard = guard_with(JsonLinesSink::new(file), |_| {});
    let (mut answered, mut refused) = (Vec::new(), 0);
    for i in 0..200 {
        match complete(&guard, &format!("request {i}"), "ok") {
            Ok(r) => answered.push(r.request_id().to_string()),
            Err(r) => {
                assert_eq!(r.status(), 503, "{r:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert!(!answered.is_empty());
    let written = ids_in(&log);
    for id in &answered {
        assert!(written.contains(id.as_str()), "answered {id} has no record");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    drop(filler);

    // A background sink: once a write fails, new requests are refused until the
    // disk has room again, and the waiting records are then written.
    let dir = disk.join(format!("background-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let filler = fill(&dir, 16 * 1024);
    let bg = Arc::new(BackgroundSink::new(
        JsonLinesSink::new(file),
        256,
        Overflow::Block,
    ));
    let guard = guard_with(bg.clone(), |_| {});
    let mut answered = Vec::new();
    let mut refused_at = None;
    for i in 0..400 {
        match complete(&guard, &format!("request {i}"), "ok") {
            Ok(r) => answered.push(r.request_id().to_string()),
            Err(r) => {
                assert_eq!(r.status(), 503);
                refused_at = Some(i);
                break;
            }
        }
        // Give the writer the time it takes between two real requests.
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(refused_at.is_some(), "the disk never filled");
    assert!(bg.last_error().is_some());
    assert!(bg.stats().retrying > 0);
    // Room again: the retries succeed and requests are admitted.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the retries", || bg.last_error().is_none());
    answered.push(
        complete(&guard, "after", "ok")
            .unwrap()
            .request_id()
            .to_string(),
    );
    bg.shutdown();
    assert_eq!(bg.stats().failed, 0, "{:?}", bg.stats());
    let written = ids_in(&log);
    for id in &answered {
        assert!(written.contains(id.as_str()), "answered {id} has no record");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotating_file_sink_keeps_bounded_files() {
    let dir = temp_dir("rotate");
    let path = dir.join("audit.jsonl");
    let sink = Arc::new(RotatingFileSink::new(&path, 4096, 2).unwrap());
    let guard = guard_with(sink.clone(), |_| {});
    for i in 0..60 {
        complete(&guard, &format!("r{i}"), "ok").unwrap();
    }
    sink.flush().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    assert_eq!(files, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.len() <= 4096 + 2048, "{f:?} has {} bytes", text.len());
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes a sealed log of `n` events with a checkpoint every `every`.
fn write_log(name: &str, n: usize, every: u64, route: &str) -> (PathBuf, AuditPublicKey) {
    let dir = temp_dir(name);
    let path = dir.join("audit.jsonl");
    let key = AuditSigningKey::generate("audit-test-1").unwrap();
    let public = key.public_key();
    let sink = Arc::new(
        ChainedLogSink::create(&path, key)
            .unwrap()
            .checkpoint_every(every),
    );
    let guard = guard_with(sink.clone(), |_| {});
    for i in 0..n {
        guard
            .check_request(request(&format!("r{i}")).with_route(route))
            .unwrap()
            .check_response(GuardResponse::new("ok"))
            .unwrap();
    }
    sink.close().unwrap();
    (path, public)
}

fn verify(path: &PathBuf, key: &AuditPublicKey) -> LogReport {
    verify_log(
        std::fs::File::open(path).unwrap(),
        std::slice::from_ref(key),
    )
    .unwrap()
}

fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &PathBuf, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_untouched_log_verifies_as_intact() {
    let (path, key) = write_log("intact", 25, 10, "/v1/chat/completions");
    let r = verify(&path, &key);
    assert!(r.is_intact(), "{r}");
    assert_eq!(r.events, 25);
    assert_eq!(r.checkpoints, 3, "two periodic and the final one");
    assert_eq!(r.unsigned_events, 0);
}

#[test]
fn the_verifier_detects_each_kind_of_tampering() {
    let (path, key) = write_log("tamper", 12, 5, "/v1/chat/completions");
    let original = lines(&path);
    let check = |mutate: &dyn Fn(&mut Vec<String>)| {
        let mut l = original.clone();
        mutate(&mut l);
        write_lines(&path, &l);
        verify(&path, &key)
    };
    // Modification of an event (first bad line reported: line 4 of the file).
    let r = check(&|l| l[3] = l[3].replace(r#""outcome":"completed""#, r#""outcome":"rejected""#));
    assert_eq!(r.status, LogStatus::Tampered, "{r}");
    assert_eq!(r.first_bad_line.as_ref().unwrap().0, 4, "{r}");
    // Deletion, insertion, reordering.
    let r = check(&|l| {
        l.remove(2);
    });
    assert_eq!(
        (r.status, r.first_bad_line.unwrap().0),
        (LogStatus::Tampered, 3)
    );
    let r = check(&|l| {
        let dup = l[1].clone();
        l.insert(2, dup);
    });
    assert_eq!(
        (r.status, r.first_bad_line.unwrap().0),
        (LogStatus::Tampered, 3)
    );
    let r = check(&|l| l.swap(6, 7));
    assert_eq!(
        (r.status, r.first_bad_line.unwrap().0),
        (LogStatus::Tampered, 7)
    );
    // A forged checkpoint: flipping "final", or a made-up signature.
    let cp = original
        .iter()
        .position(|l| l.contains("checkpoint"))
        .unwrap();
    let r = check(&|l| l[cp] = l[cp].replace(r#""final":false"#, r#""final":true"#));
    assert_eq!(r.status, LogStatus::Tampered, "{r}");
    // Truncation after the last checkpoint: the final checkpoint and the events before
    // it are cut off.
    let last_cp = original.len() - 1;
    let r = check(&|l| l.truncate(last_cp - 1));
    assert_eq!(r.status, LogStatus::Unsealed, "{r}");
    assert!(!r.is_intact());
    // Truncation exactly at a periodic checkpoint is unsealed too.
    let r = check(&|l| l.truncate(cp + 1));
    assert_eq!(r.status, LogStatus::Unsealed);
    assert_eq!(r.unsigned_events, 0);
    // Lines appended after the final checkpoint.
    let r = check(&|l| {
        let extra = l[0].clone();
        l.push(extra);
    });
    assert_eq!(r.status, LogStatus::Tampered);
    // The wrong public key.
    write_lines(&path, &original);
    let other = AuditSigningKey::generate("audit-test-1")
        .unwrap()
        .public_key();
    assert_eq!(verify(&path, &other).status, LogStatus::Tampered);
    assert!(verify(&path, &key).is_intact());
}

/// Writes `n` events through a guard into `log`, flushing (a checkpoint) every 4.
fn feed(log: &Arc<ChainedLogSink>, n: usize) {
    let guard = guard_with(log.clone(), |_| {});
    for i in 0..n {
        complete(&guard, &format!("r{i}"), "ok").unwrap();
        if i % 4 == 3 {
            log.flush().unwrap();
        }
    }
}

fn verify_with(
    path: &PathBuf,
    key: &AuditPublicKey,
    witness: Option<&Witness>,
    after: Option<&Witness>,
) -> LogReport {
    verify_log_with(
        std::fs::File::open(path).unwrap(),
        std::slice::from_ref(key),
        witness,
        after,
    )
    .unwrap()
}

#[test]
fn a_witness_detects_a_log_cut_at_a_checkpoint_and_a_substituted_file() {
    let dir = temp_dir("witness");
    let path = dir.join("audit.jsonl");
    let der = AuditSigningKey::generate("audit-w")
        .unwrap()
        .pkcs8()
        .unwrap()
        .to_vec();
    let key = || AuditSigningKey::from_pkcs8("audit-w", &der).unwrap();
    let public = key().public_key();
    let log = Arc::new(ChainedLogSink::create(&path, key()).unwrap());
    feed(&log, 16);
    // The writer ships its latest checkpoint elsewhere as it goes.
    let witness = log.witness().unwrap();
    assert_eq!(witness.checkpoint(), 3);
    assert_eq!(witness.log_id(), log.log_id());
    let shipped = witness.to_string();
    assert!(!shipped.contains('\n') && shipped.starts_with("igw1."));
    let witness: Witness = shipped.parse().unwrap();

    // The live log verifies against it; the report names the last checkpoint.
    let live = verify_with(&path, &public, Some(&witness), None);
    assert_eq!(live.status, LogStatus::Unsealed, "{live}");
    assert_eq!(live.witness.as_ref(), Some(&witness));
    assert!(live.last_checkpoint_time.is_some());
    assert!(
        live.to_string().contains("last checkpoint at seq"),
        "{live}"
    );

    // Cut right after the second checkpoint: alone it looks like a live log...
    let all = lines(&path);
    let second = all
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"checkpoint\""))
        .nth(1)
        .unwrap()
        .0;
    let cut = dir.join("cut.jsonl");
    write_lines(&cut, &all[..=second]);
    assert_eq!(verify(&cut, &public).status, LogStatus::Unsealed);
    // ...the witness shows what is missing.
    let r = verify_with(&cut, &public, Some(&witness), None);
    assert_eq!(r.status, LogStatus::Truncated, "{r}");
    assert!(r.to_string().contains("witness saw checkpoint 3"), "{r}");

    // Another log signed by the same key, put in its place.
    let other_path = dir.join("other.jsonl");
    let other = Arc::new(ChainedLogSink::create(&other_path, key()).unwrap());
    feed(&other, 16);
    other.close().unwrap();
    assert!(verify(&other_path, &public).is_intact());
    let r = verify_with(&other_path, &public, Some(&witness), None);
    assert_eq!(r.status, LogStatus::Substituted, "{r}");

    log.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotated_files_chain_by_their_seals() {
    let dir = temp_dir("seal");
    let key_der = AuditSigningKey::generate("audit-r")
        .unwrap()
        .pkcs8()
        .unwrap()
        .to_vec();
    let key = || AuditSigningKey::from_pkcs8("audit-r", &key_der).unwrap();
    let public = key().public_key();
    let first = dir.join("audit.1.jsonl");
    let a = Arc::new(ChainedLogSink::create(&first, key()).unwrap());
    feed(&a, 8);
    assert!(a.seal().is_none(), "not sealed before close");
    a.close().unwrap();
    let seal = a.seal().unwrap();
    assert!(seal.is_final());
    let second = dir.join("audit.2.jsonl");
    let b = Arc::new(ChainedLogSink::create_after(&second, key(), &seal).unwrap());
    assert_ne!(b.log_id(), a.log_id());
    feed(&b, 8);
    b.close().unwrap();
    assert!(verify_with(&second, &public, None, Some(&seal)).is_intact());
    // A file that follows another seal (or none) is not the continuation.
    let third = dir.join("audit.3.jsonl");
    let c = Arc::new(ChainedLogSink::create(&third, key()).unwrap());
    feed(&c, 8);
    c.close().unwrap();
    let r = verify_with(&third, &public, None, Some(&seal));
    assert_eq!(r.status, LogStatus::Substituted, "{r}");
    // Only a seal starts a continuation.
    assert!(
        ChainedLogSink::create_after(dir.join("x.jsonl"), key(), &b.witness().unwrap()).is_ok()
    );
    let live = Arc::new(ChainedLogSink::create(dir.join("live.jsonl"), key()).unwrap());
    feed(&live, 4);
    assert!(
        ChainedLogSink::create_after(dir.join("y.jsonl"), key(), &live.witness().unwrap()).is_err()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_partial_last_line_is_reported_as_a_crash_not_tampering() {
    let (path, key) = write_log("partial", 6, 100, "/v1/chat/completions");
    let mut l = lines(&path);
    l.pop(); // the final checkpoint
    let mut text = l.join("\n");
    text.push('\n');
    text.push_str(r#"{"seq":7,"prev":"ab"#);
    std::fs::write(&path, text).unwrap();
    let r = verify(&path, &key);
    assert_eq!(r.status, LogStatus::Unsealed, "{r}");
    assert!(r.partial_last_line);
    assert_eq!(r.events, 6);
    assert!(r.to_string().contains("partial"));
}

#[test]
fn control_characters_cannot_forge_records() {
    let forged_route = "/v1\n{\"seq\":1,\"prev\":\"00\",\"event\":{}}\r\n\u{1b}[2J\u{2028}";
    let (path, key) = write_log("inject", 3, 100, forged_route);
    let l = lines(&path);
    assert_eq!(
        l.len(),
        4,
        "three events and the final checkpoint, one line each"
    );
    assert!(verify(&path, &key).is_intact());
    let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(v["event"]["route"], forged_route);
}

/// The child half of the crash test: writes events through a background sink into a
/// chained log, and reports each durable count on stdout until it is killed.
fn crash_child(path: &str) -> ! {
    let key = AuditSigningKey::generate("crash-test").unwrap();
    // libtest has printed "test NAME ... " without a newline: start a fresh line.
    println!("\nkey {}", key.public_key().to_jwk());
    let chained = ChainedLogSink::create(path, key).unwrap();
    let bg = BackgroundSink::new(chained, 4096, Overflow::Block);
    let guard = guard_with(bg, |_| {});
    let mut n = 0u64;
    loop {
        for _ in 0..25 {
            complete(&guard, "crash test", "ok").unwrap();
            n += 1;
        }
        guard.flush().unwrap();
        println!("durable {n}");
        std::io::stdout().flush().unwrap();
    }
}

#[test]
fn sigkill_while_writing_keeps_every_durable_record() {
    if let Ok(path) = std::env::var("IG_AUDIT_CRASH_CHILD") {
        crash_child(&path);
    }
    let dir = temp_dir("crash");
    let path = dir.join("audit.jsonl");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_while_writing_keeps_every_durable_record",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IG_AUDIT_CRASH_CHILD", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut key = None;
    let mut durable = 0u64;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(jwk) = line.find("key {").map(|i| &line[i + 4..]) {
            key = Some(AuditPublicKey::from_jwk(jwk).unwrap());
        } else if let Some(n) = line.strip_prefix("durable ") {
            durable = n.parse().unwrap();
            if durable >= 400 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let report = verify(&path, &key.unwrap());
    assert_ne!(report.status, LogStatus::Tampered, "{report}");
    assert!(
        !report.is_intact(),
        "a killed writer leaves an unsealed log"
    );
    assert!(
        report.events >= durable,
        "verified {} events, {durable} were reported durable: {report}",
        report.events
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_sink_emits_one_event_per_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing::{Event, Metadata, Subscriber, span};

    struct Count(Arc<AtomicUsize>);
    impl Subscriber for Count {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            if e.metadata().target() == "inference_guard::audit" {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    let n = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::with_default(Count(n.clone()), || {
        let guard = guard_with(TracingSink, |_| {});
        complete(&guard, "hi", "ok").unwrap();
        assert!(guard.check_request(GuardRequest::new("m")).is_err());
    });
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

/// A Python with `ocsf-json-schema` and `jsonschema` (`IG_OCSF_PYTHON`, set by
/// `.ci/run`). Without it the test says so and passes on a developer machine;
/// under CI it fails.
fn ocsf_python() -> Option<String> {
    match std::env::var("IG_OCSF_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            let msg = "IG_OCSF_PYTHON is not set (a venv with ocsf-json-schema and jsonschema; .ci/run makes one)";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

#[test]
fn ocsf_events_map_the_audit_trail_and_validate_against_the_published_schema() {
    let dir = temp_dir("ocsf");
    let path = dir.join("ocsf.jsonl");
    let sink = Arc::new(OcsfSink::new(std::fs::File::create(&path).unwrap()));
    let guard = guard_with(sink.clone(), |_| {});
    // Completed with a redaction; an output block; an unknown key; a bad key form.
    complete(&guard, "mail bob@example.com", "ok").unwrap();
    let _ = complete(&guard, "hi", "CANARY-42");
    let anonymous = GuardRequest::new("demo-model").with_message(Role::User, "hi");
    assert_eq!(guard.check_request(anonymous).unwrap_err().status(), 401);
    let wrong = request("hi").with_credentials(Credentials::from_api_key("sk-wrong"));
    assert_eq!(guard.check_request(wrong).unwrap_err().status(), 401);
    sink.flush().unwrap();
    drop(guard);

    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |uid: u64| events.iter().filter(move |e| e["class_uid"] == uid);
    assert_eq!(of(6003).count(), 4, "one API Activity per request");
    assert_eq!(
        of(3002).count(),
        4,
        "one Authentication per identity decision"
    );
    let ok_auth = of(3002).find(|e| e["status_id"] == 1).unwrap();
    assert_eq!(ok_auth["user"]["uid"], "api_key|svc-audit");
    assert_eq!(ok_auth["user"]["credential_uid"], "key-7");
    assert_eq!(of(3002).filter(|e| e["status_id"] == 2).count(), 2);
    let rules: Vec<&str> = of(2004)
        .map(|e| e["finding_info"]["title"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"pii.email") && rules.contains(&"leak.canary"),
        "{rules:?}"
    );
    let blocked = of(6003).find(|e| e["status"] == "output_blocked").unwrap();
    assert_eq!(blocked["status_code"], "422");
    assert_eq!(blocked["api"]["operation"], "/v1/chat/completions");
    assert_eq!(blocked["src_endpoint"]["ip"], "192.0.2.7");
    // One request's events share its id.
    let rid = blocked["metadata"]["correlation_uid"].as_str().unwrap();
    assert!(
        events
            .iter()
            .filter(|e| e["metadata"]["correlation_uid"] == rid)
            .count()
            >= 3
    );
    for secret in [KEY, "sk-wrong", "bob@example.com", "CANARY-42"] {
        assert!(!text.contains(secret), "{secret} leaked into OCSF events");
    }

    // The published schema (OCSF 1.5.0 as the ocsf-json-schema package ships it).
    if let Some(python) = ocsf_python() {
        let out = Command::new(python)
            .args([
                "tests/ocsf/validate.py",
                OCSF_VERSION,
                path.to_str().unwrap(),
                "6003",
                "3002",
                "2004",
            ])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(report.contains("0 violations"), "{report}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A writer with a given room left: it takes what fits and then fails, as a full
/// disk does.
#[derive(Clone)]
struct Cramped {
    out: Arc<std::sync::Mutex<Vec<u8>>>,
    room: Arc<std::sync::atomic::AtomicUsize>,
}

impl Write for Cramped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::SeqCst;
        let room = self.room.load(SeqCst);
        if room == 0 {
            return Err(std::io::Error::other("no space left on device"));
        }
        let n = room.min(buf.len());
        self.room.store(room - n, SeqCst);
        self.out.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_torn_json_line_is_ended_before_the_next_record() {
    let w = Cramped {
        out: Arc::default(),
        room: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
    };
    torn_line_then_whole_ones(&w, guard_with(JsonLinesSink::new(w.clone()), |_| {}));
    let w = Cramped {
        out: Arc::default(),
        room: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
    };
    torn_line_then_whole_ones(&w, guard_with(OcsfSink::new(w.clone()), |_| {}));
}

/// A record, one torn by a full disk, one refused outright, one after: the torn line
/// is ended before the last one, every other line is JSON, no line is empty.
fn torn_line_then_whole_ones(w: &Cramped, guard: InferenceGuard) {
    use std::sync::atomic::Ordering::SeqCst;
    assert!(complete(&guard, "first", "ok").is_ok());
    // Twenty bytes of the next record fit; then the disk is full: the answer is
    // refused (the sink is synchronous) and part of a line is on disk.
    w.room.store(20, SeqCst);
    assert_eq!(complete(&guard, "second", "ok").unwrap_err().status(), 503);
    // Nothing fits: nothing is written, not even a line break.
    assert_eq!(complete(&guard, "third", "ok").unwrap_err().status(), 503);
    w.room.store(usize::MAX, SeqCst);
    let fourth = complete(&guard, "fourth", "ok").unwrap();
    let out = String::from_utf8(w.out.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let torn: Vec<usize> = (0..lines.len())
        .filter(|&i| serde_json::from_str::<serde_json::Value>(lines[i]).is_err())
        .collect();
    assert_eq!(torn.len(), 1, "{out}");
    assert_eq!(lines[torn[0]].len(), 20, "the torn line: {out}");
    assert!(lines.iter().all(|l| !l.is_empty()), "{out}");
    assert!(torn[0] > 0 && torn[0] + 1 < lines.len(), "{out}");
    assert!(
        lines[torn[0] + 1..]
            .iter()
            .any(|l| l.contains(&fourth.request_id().to_string()))
    );
    assert!(out.ends_with('\n'));
}

/// A request whose record is long (a finding per address: about 25 KB, longer
/// than a write buffer).
fn long_record_request(i: usize) -> GuardRequest {
    let mut text = format!("request {i}:");
    for k in 0..250 {
        text.push_str(&format!(" u{k}x@example.com"));
    }
    request(&text)
}

/// Fills the disk `dir` is on but for a few long records, sends `sink` twelve of
/// them (writes fail part way), makes room and sends three short ones.
fn through_a_full_disk(dir: &std::path::Path, sink: Arc<dyn AuditSink>) {
    let filler = fill(dir, 40 * 1024);
    let guard = guard_with(sink, |_| {});
    let (mut ok, mut refused) = (0, 0);
    for i in 0..12 {
        let answer = guard
            .check_request(long_record_request(i))
            .and_then(|adm| adm.check_response(GuardResponse::new("ok")));
        match answer {
            Ok(_) => ok += 1,
            Err(r) => {
                assert_eq!(r.status(), 503, "{r:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0 && ok > 0, "{ok} answered, {refused} refused");
    std::fs::remove_file(&filler).unwrap();
    for i in 0..3 {
        complete(&guard, &format!("after {i}"), "ok").unwrap();
    }
}

#[test]
fn file_sinks_on_a_full_disk_keep_whole_lines() {
    let Some(disk) = small_disk() else {
        return;
    };
    let dir = disk.join(format!("lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rotating = Arc::new(RotatingFileSink::new(dir.join("rotating.jsonl"), 1 << 20, 1).unwrap());
    through_a_full_disk(&dir, rotating.clone());
    rotating.flush().unwrap();
    let text = std::fs::read_to_string(dir.join("rotating.jsonl")).unwrap();
    let mut after = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a torn line ({e}): {}", &line[..line.len().min(80)]));
        after += usize::from(v["outcome"] == "completed" && line.len() < 4096);
    }
    assert_eq!(after, 3, "the records written once there was room");
    std::fs::remove_file(dir.join("rotating.jsonl")).unwrap();

    let key = AuditSigningKey::generate("audit-full").unwrap();
    let public = key.public_key();
    let chained = Arc::new(ChainedLogSink::create(dir.join("chained.jsonl"), key).unwrap());
    through_a_full_disk(&dir, chained.clone());
    chained.close().unwrap();
    let report = verify(&dir.join("chained.jsonl"), &public);
    assert_eq!(report.status, LogStatus::Intact, "{report}");
    assert!(
        report.first_bad_line.is_none() && !report.partial_last_line,
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
