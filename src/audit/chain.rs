//! The tamper-evident audit log and its verifier; see [`ChainedLogSink`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde_json::Value;

use super::{AuditEvent, hex};
use crate::error::{Error, ErrorKind};
use crate::stage::AuditSink;

const GENESIS: [u8; 32] = [0; 32];

fn checkpoint_message(seq: u64, prev: &str, kid: &str, fin: bool) -> String {
    format!("inference-guard audit checkpoint v1\n{seq}\n{prev}\n{kid}\n{fin}")
}

fn audit_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::with_source(ErrorKind::Audit, what, e)
}

/// The Ed25519 key that signs audit checkpoints, with its key id.
pub struct AuditSigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    pkcs8: Option<Vec<u8>>,
}

impl fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AuditSigningKey {
    /// A new random key.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the system random generator fails.
    pub fn generate(kid: impl Into<String>) -> Result<Self, Error> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::new(ErrorKind::Internal, "generate Ed25519 key"))?;
        let mut key = Self::from_pkcs8(kid, doc.as_ref())?;
        key.pkcs8 = Some(doc.as_ref().to_vec());
        Ok(key)
    }

    /// A key from its PKCS#8 v2 DER encoding (as `generate` produces and
    /// [`pkcs8`](Self::pkcs8) returns).
    ///
    /// # Errors
    ///
    /// An [`Error`] if the DER is not an Ed25519 PKCS#8 document.
    pub fn from_pkcs8(kid: impl Into<String>, der: &[u8]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|_| Error::new(ErrorKind::Internal, "not an Ed25519 PKCS#8 key"))?;
        Ok(Self {
            kid: kid.into(),
            pair,
            pkcs8: Some(der.to_vec()),
        })
    }

    /// The PKCS#8 document, to store the key (keep it secret).
    pub fn pkcs8(&self) -> Option<&[u8]> {
        self.pkcs8.as_deref()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for verifiers.
    pub fn public_key(&self) -> AuditPublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        AuditPublicKey {
            kid: self.kid.clone(),
            key,
        }
    }

    fn sign(&self, msg: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.sign_bytes(msg.as_bytes()))
    }

    /// An Ed25519 signature of `msg`.
    pub(crate) fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// A public key that verifies audit checkpoints, with its key id. Stored as a JWK
/// (`{"kty":"OKP","crv":"Ed25519","kid":...,"x":...}`).
///
/// ```
/// use inference_guard::audit::{AuditPublicKey, AuditSigningKey};
/// let key = AuditSigningKey::generate("audit-2026-11")?;
/// let jwk = key.public_key().to_jwk();
/// assert_eq!(AuditPublicKey::from_jwk(&jwk)?, key.public_key());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPublicKey {
    kid: String,
    key: [u8; 32],
}

impl AuditPublicKey {
    /// Whether `sig` is this key's Ed25519 signature of `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.key)
            .verify(msg, sig)
            .is_ok()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK.
    pub fn to_jwk(&self) -> String {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                           "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(self.key)})
        .to_string()
    }

    /// Parses a JWK, or every key of a JWKS (`{"keys": [...]}`), as verifiers that
    /// trust a set of keys (during a rotation) read their key file.
    ///
    /// ```
    /// use inference_guard::audit::{AuditPublicKey, AuditSigningKey};
    /// let (a, b) = (AuditSigningKey::generate("a")?, AuditSigningKey::generate("b")?);
    /// let jwks = format!(r#"{{"keys": [{}, {}]}}"#, a.public_key().to_jwk(), b.public_key().to_jwk());
    /// assert_eq!(AuditPublicKey::from_jwk_set(&jwks)?.len(), 2);
    /// assert_eq!(AuditPublicKey::from_jwk_set(&a.public_key().to_jwk())?, [a.public_key()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// An [`Error`] if it is not JSON, or a key is not an Ed25519 public key with a
    /// `kid`.
    pub fn from_jwk_set(text: &str) -> Result<Vec<Self>, Error> {
        let v: Value = serde_json::from_str(text)
            .map_err(|_| Error::new(ErrorKind::Other, "public key: not JSON"))?;
        match v.get("keys").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .map(|k| Self::from_jwk(&k.to_string()))
                .collect(),
            None => Self::from_jwk(text).map(|k| vec![k]),
        }
    }

    /// Parses a JWK, or the first key of a JWKS.
    ///
    /// # Errors
    ///
    /// An [`Error`] if it is not an Ed25519 public key with a `kid`.
    pub fn from_jwk(text: &str) -> Result<Self, Error> {
        let bad = |m: &'static str| Error::new(ErrorKind::Other, m);
        let v: Value = serde_json::from_str(text).map_err(|_| bad("public key: not JSON"))?;
        let jwk = match v.get("keys").and_then(Value::as_array) {
            Some(keys) => keys
                .first()
                .cloned()
                .ok_or_else(|| bad("public key: empty JWKS"))?,
            None => v,
        };
        if jwk.get("kty") != Some(&Value::from("OKP"))
            || jwk.get("crv") != Some(&Value::from("Ed25519"))
        {
            return Err(bad("public key: not an Ed25519 JWK"));
        }
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("public key: no kid"))?;
        let x = jwk
            .get("x")
            .and_then(Value::as_str)
            .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
            .filter(|x| x.len() == 32)
            .ok_or_else(|| bad("public key: bad x"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&x);
        Ok(Self {
            kid: kid.to_owned(),
            key,
        })
    }

    fn verify(&self, msg: &str, sig_b64: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(sig_b64)
            .is_ok_and(|sig| self.verifies(msg.as_bytes(), &sig))
    }
}

struct ChainState {
    out: BufWriter<File>,
    seq: u64,
    prev: [u8; 32],
    events: u64,
    since_checkpoint: u64,
    closed: bool,
}

///  A tamper-evident audit log: hash-chained JSON lines with signed checkpoints, and
///  its verifier.
///
///  # Format
///
///  One JSON object per line. Line `n` (from 0) is either an event or a checkpoint:
///
///  ```text
///  {"seq":n,"prev":"<hex SHA-256 of line n-1>","event":{...audit event...}}
///  {"seq":n,"prev":"<hex SHA-256 of line n-1>","checkpoint":{"key_id":"k","final":false,"sig":"<base64url>"}}
///  ```
///
///  The hash of a line is SHA-256 over its bytes as written, without the newline (the
///  writer's serialization is the canonical one). Line 0 has `prev` of 64 zeros. A
///  checkpoint's signature (Ed25519) covers
///  `"inference-guard audit checkpoint v1\n{seq}\n{prev}\n{key_id}\n{final}"`, so it
///  commits to every line before it. The writer adds a checkpoint every
///  `checkpoint_every` events, at every flush, and a final one when the log is closed.
///
///  # Durability
///
///  An event is **durable** once a flush has written its batch, signed a checkpoint
///  over it and `fsync`ed the file: [`ChainedLogSink::durable_records`] counts them.
///  A process killed at any moment leaves a log whose verified prefix holds every
///  durable event; at most its last line is partial.
///
///  # Verification
///
///  [`verify_log`] reports the first bad line: a changed, deleted, inserted or reordered
///  line breaks the chain; a forged checkpoint fails its signature. A log that does not
///  end with a final checkpoint is *unsealed*: the writer crashed, or lines after the
///  last checkpoint were cut off. A partial last line is reported as such.
///
/// # Writing
/// Every call writes through a buffer under a lock; [`AuditSink::flush`] signs a
/// checkpoint, writes and `fsync`s, which makes everything before it durable. Put it
/// behind a [`BackgroundSink`](super::BackgroundSink) to take serialization, hashing
/// and signing off the request path: the background thread flushes after each batch.
pub struct ChainedLogSink {
    state: Mutex<ChainState>,
    key: AuditSigningKey,
    checkpoint_every: u64,
    durable: AtomicU64,
}

impl fmt::Debug for ChainedLogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedLogSink")
            .field("kid", &self.key.kid)
            .field("durable_records", &self.durable_records())
            .finish_non_exhaustive()
    }
}

impl ChainedLogSink {
    /// Creates a new log at `path` (which must not exist), signing with `key`.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the file exists or cannot be created.
    pub fn create(path: impl AsRef<Path>, key: AuditSigningKey) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(audit_err("create audit log"))?;
        Ok(Self {
            state: Mutex::new(ChainState {
                out: BufWriter::new(file),
                seq: 0,
                prev: GENESIS,
                events: 0,
                since_checkpoint: 0,
                closed: false,
            }),
            key,
            checkpoint_every: 1000,
            durable: AtomicU64::new(0),
        })
    }

    /// Adds a checkpoint every `n` events (default 1000), besides those at each flush.
    #[must_use]
    pub fn checkpoint_every(mut self, n: u64) -> Self {
        self.checkpoint_every = n.max(1);
        self
    }

    /// Events made durable so far (written, covered by a checkpoint, synced).
    pub fn durable_records(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn write_line(st: &mut ChainState, line: &[u8]) -> Result<(), Error> {
        // One write of the line and its newline: a refused write (a full disk)
        // leaves the chain where it was, so the line can be written again.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        st.out
            .write_all(&buf)
            .map_err(audit_err("write audit log"))?;
        let d = ring::digest::digest(&ring::digest::SHA256, line);
        st.prev.copy_from_slice(d.as_ref());
        st.seq += 1;
        Ok(())
    }

    fn checkpoint(&self, st: &mut ChainState, fin: bool) -> Result<(), Error> {
        let prev = hex(&st.prev);
        let sig = self
            .key
            .sign(&checkpoint_message(st.seq, &prev, &self.key.kid, fin));
        let line = serde_json::json!({
            "seq": st.seq,
            "prev": prev,
            "checkpoint": {"key_id": self.key.kid, "final": fin, "sig": sig},
        })
        .to_string();
        Self::write_line(st, line.as_bytes())?;
        st.since_checkpoint = 0;
        Ok(())
    }

    fn sync(&self, st: &mut ChainState) -> Result<(), Error> {
        st.out.flush().map_err(audit_err("flush audit log"))?;
        st.out
            .get_ref()
            .sync_data()
            .map_err(audit_err("sync audit log"))?;
        self.durable.store(st.events, Ordering::Release);
        Ok(())
    }

    /// Writes the final checkpoint and syncs. Later events are refused.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the log cannot be written.
    pub fn close(&self) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Ok(());
        }
        self.checkpoint(&mut st, true)?;
        st.closed = true;
        self.sync(&mut st)
    }
}

impl AuditSink for ChainedLogSink {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let body = serde_json::to_string(event)
            .map_err(|e| Error::with_source(ErrorKind::Audit, "serialize audit event", e))?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(Error::new(ErrorKind::Audit, "audit log is closed"));
        }
        let line = format!(
            r#"{{"seq":{},"prev":"{}","event":{body}}}"#,
            st.seq,
            hex(&st.prev)
        );
        Self::write_line(&mut st, line.as_bytes())?;
        st.events += 1;
        st.since_checkpoint += 1;
        if st.since_checkpoint >= self.checkpoint_every {
            self.checkpoint(&mut st, false)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Ok(());
        }
        if st.since_checkpoint > 0 {
            self.checkpoint(&mut st, false)?;
        }
        self.sync(&mut st)
    }

    fn name(&self) -> &str {
        "chained_log"
    }
}

impl Drop for ChainedLogSink {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The verdict on a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogStatus {
    /// Every line chains, every checkpoint verifies, and the log ends with the final
    /// checkpoint.
    Intact,
    /// The chain verifies but the log does not end with a final checkpoint: the writer
    /// crashed, or lines after the last checkpoint were cut off.
    Unsealed,
    /// A line was changed, deleted, inserted or reordered, or a checkpoint is forged.
    Tampered,
}

/// What [`verify_log`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogReport {
    /// The verdict.
    pub status: LogStatus,
    /// Event lines in the verified prefix.
    pub events: u64,
    /// Checkpoints in the verified prefix.
    pub checkpoints: u64,
    /// The sequence number of the last valid checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Events after the last valid checkpoint (chained, but not signed).
    pub unsigned_events: u64,
    /// Whether the file ends with a partial line (a crash while writing); it is left
    /// out of the verification.
    pub partial_last_line: bool,
    /// The first bad line (1-based) and why, when tampered.
    pub first_bad_line: Option<(u64, String)>,
}

impl LogReport {
    /// Whether the log is intact (the only case `audit_verify` exits 0).
    pub fn is_intact(&self) -> bool {
        self.status == LogStatus::Intact
    }
}

impl fmt::Display for LogReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            LogStatus::Intact => write!(
                f,
                "intact: {} events, {} checkpoints, sealed",
                self.events, self.checkpoints
            )?,
            LogStatus::Unsealed => write!(
                f,
                "unsealed: {} events verified, {} after the last checkpoint ({}); no final checkpoint (writer crashed, or the log was truncated after its last checkpoint)",
                self.events,
                self.unsigned_events,
                self.last_checkpoint
                    .map_or_else(|| "none".to_owned(), |s| format!("seq {s}"))
            )?,
            LogStatus::Tampered => {
                let (line, why) = self.first_bad_line.clone().unwrap_or_default();
                write!(
                    f,
                    "TAMPERED at line {line}: {why} ({} events verified before it)",
                    self.events
                )?;
            }
        }
        if self.partial_last_line {
            write!(
                f,
                "; the last line is partial (a crash while writing) and was not verified"
            )?;
        }
        Ok(())
    }
}

/// Verifies a log read from `input` against the public keys it may be signed with.
///
/// # Errors
///
/// An [`Error`] only if `input` cannot be read; every problem with the content is in
/// the report.
pub fn verify_log(input: impl Read, keys: &[AuditPublicKey]) -> Result<LogReport, Error> {
    let mut reader = BufReader::new(input);
    let mut report = LogReport {
        status: LogStatus::Unsealed,
        events: 0,
        checkpoints: 0,
        last_checkpoint: None,
        unsigned_events: 0,
        partial_last_line: false,
        first_bad_line: None,
    };
    let mut prev = GENESIS;
    let mut prev_was_event = false;
    let mut seq = 0u64;
    let mut sealed = false;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(audit_err("read audit log"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            report.partial_last_line = true;
            break;
        }
        buf.pop();
        let fail = |report: &mut LogReport, why: String| {
            report.status = LogStatus::Tampered;
            report.first_bad_line = Some((line_no, why));
        };
        if sealed {
            fail(&mut report, "line after the final checkpoint".into());
            return Ok(report);
        }
        let Ok(obj) = crate::identity::json::parse_object(&buf) else {
            fail(&mut report, "not a single JSON object".into());
            return Ok(report);
        };
        if obj.get("seq").and_then(Value::as_u64) != Some(seq) {
            fail(
                &mut report,
                format!("expected seq {seq} (a line was deleted, inserted or reordered)"),
            );
            return Ok(report);
        }
        if obj.get("prev").and_then(Value::as_str) != Some(hex(&prev).as_str()) {
            // The previous line no longer hashes to what this line recorded: the
            // previous line was changed (or this line's `prev` was). Report the
            // earlier one, and leave it out of the verified prefix.
            if line_no > 1 {
                if prev_was_event {
                    report.events -= 1;
                    report.unsigned_events = report.unsigned_events.saturating_sub(1);
                } else {
                    report.checkpoints = report.checkpoints.saturating_sub(1);
                }
            }
            report.status = LogStatus::Tampered;
            report.first_bad_line = Some((
                line_no.saturating_sub(1).max(1),
                format!(
                    "line changed: its hash does not match the prev recorded in line {line_no}"
                ),
            ));
            return Ok(report);
        }
        match (obj.get("event"), obj.get("checkpoint")) {
            (Some(Value::Object(_)), None) => {
                report.events += 1;
                report.unsigned_events += 1;
                prev_was_event = true;
            }
            (None, Some(Value::Object(cp))) => {
                let kid = cp.get("key_id").and_then(Value::as_str).unwrap_or("");
                let fin = cp.get("final").and_then(Value::as_bool).unwrap_or(false);
                let sig = cp.get("sig").and_then(Value::as_str).unwrap_or("");
                let Some(key) = keys.iter().find(|k| k.kid == kid) else {
                    fail(
                        &mut report,
                        format!("checkpoint signed with unknown key id {kid:?}"),
                    );
                    return Ok(report);
                };
                if !key.verify(&checkpoint_message(seq, &hex(&prev), kid, fin), sig) {
                    fail(&mut report, "checkpoint signature does not verify".into());
                    return Ok(report);
                }
                report.checkpoints += 1;
                report.last_checkpoint = Some(seq);
                report.unsigned_events = 0;
                sealed = fin;
                prev_was_event = false;
            }
            _ => {
                fail(&mut report, "neither an event nor a checkpoint".into());
                return Ok(report);
            }
        }
        let d = ring::digest::digest(&ring::digest::SHA256, &buf);
        prev.copy_from_slice(d.as_ref());
        seq += 1;
    }
    report.status = if sealed && !report.partial_last_line {
        LogStatus::Intact
    } else {
        LogStatus::Unsealed
    };
    Ok(report)
}
