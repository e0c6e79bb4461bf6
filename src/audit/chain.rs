//! The tamper-evident audit log and its verifier; see [`ChainedLogSink`].

use std::fmt;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde_json::Value;

use super::AuditEvent;
use crate::codec::hex;
use crate::error::{Error, ErrorKind};
use crate::stage::AuditSink;

const GENESIS: [u8; 32] = [0; 32];

/// What a checkpoint's signature covers.
struct CheckpointFields<'a> {
    log_id: &'a str,
    n: u64,
    seq: u64,
    prev: &'a str,
    time: u64,
    prev_checkpoint: &'a str,
    kid: &'a str,
    fin: bool,
}

fn checkpoint_message(c: &CheckpointFields<'_>) -> String {
    format!(
        "inference-guard audit checkpoint v2\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        c.log_id, c.n, c.seq, c.prev, c.time, c.prev_checkpoint, c.kid, c.fin
    )
}

/// A checkpoint named outside the log, to check the log against: a **witness**
/// (the latest checkpoint an operator shipped to another system, from
/// [`ChainedLogSink::witness`]) or a **seal** (a closed file's final checkpoint, from
/// [`ChainedLogSink::seal`], which the next file of a rotation starts from).
///
/// Text form: `igw1.<log id>.<checkpoint number>.<seq>.<unix time>.<final>.<SHA-256 of
/// the checkpoint line, hex>`, one line with no secret in it.
///
/// ```
/// use inference_guard::audit::Witness;
/// let w: Witness = "igw1.0f1e2d3c4b5a69788796a5b4c3d2e1f0.3.120.1764633600.false.9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
/// assert_eq!(w.checkpoint(), 3);
/// assert_eq!(w.to_string().parse::<Witness>()?, w);
/// # Ok::<(), inference_guard::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    log_id: String,
    n: u64,
    seq: u64,
    time: u64,
    fin: bool,
    digest: [u8; 32],
}

impl Witness {
    /// The log's identity (chosen at random when the log was created).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The checkpoint's number in its log (from 0).
    pub fn checkpoint(&self) -> u64 {
        self.n
    }

    /// The checkpoint line's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the checkpoint was written (seconds since the Unix epoch).
    pub fn unix_time(&self) -> u64 {
        self.time
    }

    /// Whether it is the log's final checkpoint (a seal).
    pub fn is_final(&self) -> bool {
        self.fin
    }
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "igw1.{}.{}.{}.{}.{}.{}",
            self.log_id,
            self.n,
            self.seq,
            self.time,
            self.fin,
            hex(&self.digest)
        )
    }
}

impl std::str::FromStr for Witness {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::new(
                ErrorKind::Other,
                "not a witness line (igw1.<log id>.<n>.<seq>.<time>.<final>.<sha256>)",
            )
        };
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [tag, log_id, n, seq, time, fin, digest] = parts.as_slice() else {
            return Err(bad());
        };
        if *tag != "igw1" || log_id.is_empty() || !log_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let d = crate::codec::unhex32(digest).ok_or_else(bad)?;
        Ok(Self {
            log_id: (*log_id).to_owned(),
            n: n.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
            time: time.parse().map_err(|_| bad())?,
            fin: fin.parse().map_err(|_| bad())?,
            digest: d,
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    out: super::LineFile,
    seq: u64,
    prev: [u8; 32],
    events: u64,
    since_checkpoint: u64,
    closed: bool,
    /// Checkpoints written so far.
    checkpoints: u64,
    /// The last checkpoint line's digest (for the first one: the previous file's
    /// seal, or zeros).
    last_checkpoint: [u8; 32],
    /// The last checkpoint, as a witness.
    witness: Option<Witness>,
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
///  {"seq":n,"prev":"<hex SHA-256 of line n-1>","checkpoint":{"log_id":"<32 hex>","n":k,"time":<unix seconds>,"prev_checkpoint":"<hex SHA-256 of checkpoint k-1's line>","key_id":"k","final":false,"sig":"<base64url>"}}
///  ```
///
///  The hash of a line is SHA-256 over its bytes as written, without the newline (the
///  writer's serialization is the canonical one). Line 0 has `prev` of 64 zeros. A
///  checkpoint's signature (Ed25519) covers
///  `"inference-guard audit checkpoint v2\n{log_id}\n{n}\n{seq}\n{prev}\n{time}\n{prev_checkpoint}\n{key_id}\n{final}"`:
///  the log's identity (random, chosen when the log is created), the checkpoint's
///  number, every line before it (through `prev`) and the checkpoint before it. The
///  first checkpoint's `prev_checkpoint` is 64 zeros, or the previous file's seal for
///  a log that continues another ([`ChainedLogSink::create_after`]). The writer adds a
///  checkpoint every `checkpoint_every` events, at every flush, and a final one when
///  the log is closed.
///
///  # Completeness
///
///  A log cut right after a checkpoint, or a whole file replaced by another signed
///  with the same key, verifies on its own. To catch both, ship the latest checkpoint
///  somewhere else as it is written ([`ChainedLogSink::witness`], one line) and verify
///  against it ([`verify_log_with`]): a different log id is a substituted file, a
///  witnessed checkpoint that is missing is a truncation. Rotated files chain by
///  their seals ([`ChainedLogSink::seal`], [`ChainedLogSink::create_after`]).
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
    log_id: String,
    key: AuditSigningKey,
    checkpoint_every: u64,
    durable: AtomicU64,
}

impl fmt::Debug for ChainedLogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedLogSink")
            .field("log_id", &self.log_id)
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
        Self::open(path.as_ref(), key, None)
    }

    /// Creates a new log at `path` that continues the log sealed by `seal` (its
    /// final checkpoint, from [`seal`](Self::seal)): its first checkpoint commits to
    /// that seal, so a verifier given the seal ([`verify_log_with`]) knows this file
    /// follows that one and nothing was dropped between them.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the file exists or cannot be created, or `seal` is not a final
    /// checkpoint.
    pub fn create_after(
        path: impl AsRef<Path>,
        key: AuditSigningKey,
        seal: &Witness,
    ) -> Result<Self, Error> {
        if !seal.fin {
            return Err(Error::new(
                ErrorKind::Other,
                "a log continues only a sealed one (a final checkpoint)",
            ));
        }
        Self::open(path.as_ref(), key, Some(seal.digest))
    }

    fn open(path: &Path, key: AuditSigningKey, after: Option<[u8; 32]>) -> Result<Self, Error> {
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| Error::new(ErrorKind::Internal, "system random generator failed"))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(audit_err("create audit log"))?;
        Ok(Self {
            state: Mutex::new(ChainState {
                out: super::LineFile::new(file).map_err(audit_err("create audit log"))?,
                seq: 0,
                prev: GENESIS,
                events: 0,
                since_checkpoint: 0,
                closed: false,
                checkpoints: 0,
                last_checkpoint: after.unwrap_or(GENESIS),
                witness: None,
            }),
            log_id: hex(&id),
            key,
            checkpoint_every: 1000,
            durable: AtomicU64::new(0),
        })
    }

    /// The log's identity: 128 random bits, hex.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The latest checkpoint as a witness line, to ship to another system (a
    /// different host, an object store with retention) each time it changes: the
    /// verifier then detects a log cut at or before it, or replaced. `None` before
    /// the first checkpoint.
    pub fn witness(&self) -> Option<Witness> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .witness
            .clone()
    }

    /// The final checkpoint once the log is closed ([`close`](Self::close)): the
    /// seal the next file of a rotation starts from ([`create_after`](Self::create_after)).
    pub fn seal(&self) -> Option<Witness> {
        self.witness().filter(|w| w.fin)
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
            .write_line(&buf)
            .map_err(audit_err("write audit log"))?;
        let d = ring::digest::digest(&ring::digest::SHA256, line);
        st.prev.copy_from_slice(d.as_ref());
        st.seq += 1;
        Ok(())
    }

    fn checkpoint(&self, st: &mut ChainState, fin: bool) -> Result<(), Error> {
        let prev = hex(&st.prev);
        let prev_checkpoint = hex(&st.last_checkpoint);
        let time = unix_now();
        let fields = CheckpointFields {
            log_id: &self.log_id,
            n: st.checkpoints,
            seq: st.seq,
            prev: &prev,
            time,
            prev_checkpoint: &prev_checkpoint,
            kid: &self.key.kid,
            fin,
        };
        let sig = self.key.sign(&checkpoint_message(&fields));
        let line = serde_json::json!({
            "seq": st.seq,
            "prev": prev,
            "checkpoint": {
                "log_id": self.log_id,
                "n": st.checkpoints,
                "time": time,
                "prev_checkpoint": prev_checkpoint,
                "key_id": self.key.kid,
                "final": fin,
                "sig": sig,
            },
        })
        .to_string();
        let seq = st.seq;
        Self::write_line(st, line.as_bytes())?;
        let digest = st.prev;
        st.witness = Some(Witness {
            log_id: self.log_id.clone(),
            n: st.checkpoints,
            seq,
            time,
            fin,
            digest,
        });
        st.last_checkpoint = digest;
        st.checkpoints += 1;
        st.since_checkpoint = 0;
        Ok(())
    }

    fn sync(&self, st: &mut ChainState) -> Result<(), Error> {
        st.out.flush().map_err(audit_err("flush audit log"))?;
        st.out
            .file()
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
    /// The log ends before a checkpoint its witness saw ([`verify_log_with`]): it was
    /// cut at or before that checkpoint.
    Truncated,
    /// The log is not the one its witness or its predecessor's seal names: another
    /// log id, a witnessed checkpoint that differs, or a first checkpoint that does
    /// not follow the seal.
    Substituted,
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
    /// The log's identity, from its first checkpoint.
    pub log_id: Option<String>,
    /// When the last valid checkpoint was written (seconds since the Unix epoch).
    pub last_checkpoint_time: Option<u64>,
    /// The last valid checkpoint as a witness line (what the writer would have
    /// shipped last).
    pub witness: Option<Witness>,
    /// Why the log is truncated or substituted.
    pub anchor_problem: Option<String>,
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
            LogStatus::Truncated | LogStatus::Substituted => {
                let what = if self.status == LogStatus::Truncated {
                    "TRUNCATED"
                } else {
                    "SUBSTITUTED"
                };
                write!(
                    f,
                    "{what}: {} ({} events, {} checkpoints in the file)",
                    self.anchor_problem.as_deref().unwrap_or(""),
                    self.events,
                    self.checkpoints
                )?;
            }
        }
        if let (Some(seq), Some(t)) = (self.last_checkpoint, self.last_checkpoint_time) {
            write!(f, "; last checkpoint at seq {seq}, unix time {t}")?;
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
    verify_log_with(input, keys, None, None)
}

/// Verifies a log as [`verify_log`] does, and against checkpoints named elsewhere:
/// `witness`, the latest checkpoint the writer shipped to another system
/// ([`ChainedLogSink::witness`]); `after`, the seal of the file this one continues
/// ([`ChainedLogSink::create_after`]). A log that verifies on its own but is not the
/// witnessed log, or lacks the witnessed checkpoint, or does not follow the seal, is
/// [`LogStatus::Substituted`] or [`LogStatus::Truncated`].
///
/// ```
/// use inference_guard::audit::{AuditSigningKey, ChainedLogSink, LogStatus, verify_log_with};
///
/// let dir = std::env::temp_dir().join(format!("ig-witness-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let key = AuditSigningKey::generate("k1")?;
/// let public = key.public_key();
/// let log = ChainedLogSink::create(dir.join("a.jsonl"), key)?;
/// // ... events; every flush signs a checkpoint ...
/// log.close()?;                          // the final checkpoint
/// let witness = log.witness().unwrap();  // shipped elsewhere as it is written
/// let file = std::fs::File::open(dir.join("a.jsonl"))?;
/// let report = verify_log_with(file, &[public], Some(&witness), None)?;
/// assert_eq!(report.status, LogStatus::Intact);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// An [`Error`] only if `input` cannot be read.
pub fn verify_log_with(
    input: impl Read,
    keys: &[AuditPublicKey],
    witness: Option<&Witness>,
    after: Option<&Witness>,
) -> Result<LogReport, Error> {
    let mut report = verify_chain(input, keys, after)?;
    if report.status != LogStatus::Intact && report.status != LogStatus::Unsealed {
        return Ok(report.into());
    }
    if let Some(w) = witness {
        let problem = match report.log_id.as_deref() {
            None => Some((
                LogStatus::Truncated,
                format!(
                    "no checkpoint, but the witness saw checkpoint {} of log {}",
                    w.n, w.log_id
                ),
            )),
            Some(id) if id != w.log_id => Some((
                LogStatus::Substituted,
                format!("log id {id}, but the witness is of log {}", w.log_id),
            )),
            Some(_) => None,
        };
        let problem = problem.or_else(|| match report.seen.get(usize::try_from(w.n).unwrap_or(usize::MAX)) {
            None => Some((
                LogStatus::Truncated,
                format!(
                    "the witness saw checkpoint {} (seq {}, unix time {}); the file ends after checkpoint {}",
                    w.n,
                    w.seq,
                    w.time,
                    report.checkpoints.checked_sub(1).map_or_else(|| "none".to_owned(), |n| n.to_string())
                ),
            )),
            Some(d) if *d != w.digest => Some((
                LogStatus::Substituted,
                format!("checkpoint {} differs from the witnessed one", w.n),
            )),
            Some(_) => None,
        });
        if let Some((status, why)) = problem {
            report.status = status;
            report.anchor_problem = Some(why);
        }
    }
    Ok(report.into())
}

/// The chain's verdict, with every checkpoint's digest (for witnesses).
struct Verified {
    report: LogReport,
    seen: Vec<[u8; 32]>,
}

impl std::ops::Deref for Verified {
    type Target = LogReport;
    fn deref(&self) -> &LogReport {
        &self.report
    }
}

impl std::ops::DerefMut for Verified {
    fn deref_mut(&mut self) -> &mut LogReport {
        &mut self.report
    }
}

impl From<Verified> for LogReport {
    fn from(v: Verified) -> Self {
        v.report
    }
}

fn verify_chain(
    input: impl Read,
    keys: &[AuditPublicKey],
    after: Option<&Witness>,
) -> Result<Verified, Error> {
    let mut reader = BufReader::new(input);
    let mut report = LogReport {
        status: LogStatus::Unsealed,
        events: 0,
        checkpoints: 0,
        last_checkpoint: None,
        unsigned_events: 0,
        partial_last_line: false,
        first_bad_line: None,
        log_id: None,
        last_checkpoint_time: None,
        witness: None,
        anchor_problem: None,
    };
    let mut seen: Vec<[u8; 32]> = Vec::new();
    let mut last_checkpoint = after.map_or(GENESIS, |w| w.digest);
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
            return Ok(Verified { report, seen });
        }
        let Ok(obj) = crate::codec::parse_object(&buf) else {
            fail(&mut report, "not a single JSON object".into());
            return Ok(Verified { report, seen });
        };
        if obj.get("seq").and_then(Value::as_u64) != Some(seq) {
            fail(
                &mut report,
                format!("expected seq {seq} (a line was deleted, inserted or reordered)"),
            );
            return Ok(Verified { report, seen });
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
            return Ok(Verified { report, seen });
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
                let log_id = cp.get("log_id").and_then(Value::as_str).unwrap_or("");
                let n = cp.get("n").and_then(Value::as_u64);
                let time = cp.get("time").and_then(Value::as_u64).unwrap_or(0);
                let prev_cp = cp
                    .get("prev_checkpoint")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(key) = keys.iter().find(|k| k.kid == kid) else {
                    fail(
                        &mut report,
                        format!("checkpoint signed with unknown key id {kid:?}"),
                    );
                    return Ok(Verified { report, seen });
                };
                let fields = CheckpointFields {
                    log_id,
                    n: n.unwrap_or(u64::MAX),
                    seq,
                    prev: &hex(&prev),
                    time,
                    prev_checkpoint: prev_cp,
                    kid,
                    fin,
                };
                if !key.verify(&checkpoint_message(&fields), sig) {
                    fail(&mut report, "checkpoint signature does not verify".into());
                    return Ok(Verified { report, seen });
                }
                if report.log_id.as_deref().is_some_and(|id| id != log_id) {
                    fail(&mut report, format!("checkpoint of another log ({log_id})"));
                    return Ok(Verified { report, seen });
                }
                if n != Some(report.checkpoints) {
                    let why = format!(
                        "expected checkpoint {} (a checkpoint was removed or inserted)",
                        report.checkpoints
                    );
                    fail(&mut report, why);
                    return Ok(Verified { report, seen });
                }
                // The first checkpoint of a file that continues another commits to
                // that file's seal: checked when the seal is given.
                let first_unanchored = report.checkpoints == 0 && after.is_none();
                if !first_unanchored && prev_cp != hex(&last_checkpoint) {
                    if report.checkpoints == 0 {
                        report.status = LogStatus::Substituted;
                        report.anchor_problem =
                            Some("its first checkpoint does not follow the given seal".to_owned());
                        report.log_id = Some(log_id.to_owned());
                        return Ok(Verified { report, seen });
                    }
                    fail(
                        &mut report,
                        "checkpoint does not follow the one before it".into(),
                    );
                    return Ok(Verified { report, seen });
                }
                let d = ring::digest::digest(&ring::digest::SHA256, &buf);
                last_checkpoint.copy_from_slice(d.as_ref());
                seen.push(last_checkpoint);
                report.log_id = Some(log_id.to_owned());
                report.witness = Some(Witness {
                    log_id: log_id.to_owned(),
                    n: report.checkpoints,
                    seq,
                    time,
                    fin,
                    digest: last_checkpoint,
                });
                report.checkpoints += 1;
                report.last_checkpoint = Some(seq);
                report.last_checkpoint_time = Some(time);
                report.unsigned_events = 0;
                sealed = fin;
                prev_was_event = false;
            }
            _ => {
                fail(&mut report, "neither an event nor a checkpoint".into());
                return Ok(Verified { report, seen });
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
    Ok(Verified { report, seen })
}
