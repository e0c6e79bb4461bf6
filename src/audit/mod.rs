//! Audit events and the built-in sinks.
//!
//! The guard records exactly one [`AuditEvent`] for every request: completed,
//! rejected at any stage, output blocked, stream aborted, model failed, admission
//! dropped, or cancelled while being checked. The event borrows from the guard's
//! per-request state, so building it costs no copies; sinks that keep it serialize it
//! ([`AuditEvent::to_json`]).
//!
//! # What an event never contains
//!
//! Credentials, prompt text, answer text, matched secrets and request metadata. It
//! holds ids, reason codes, rule ids, categories, byte spans, counts and timings.
//! Strings that come from callers (route, model, trace id) are escaped by the JSON
//! serializer, so CR/LF in them cannot forge a record in a JSON Lines log.

mod chain;
mod ocsf;
mod sinks;

pub use chain::{
    AuditPublicKey, AuditSigningKey, ChainedLogSink, LogReport, LogStatus, Witness, verify_log,
    verify_log_with,
};
pub use ocsf::{OCSF_VERSION, OcsfSink, to_ocsf};
#[cfg(feature = "tracing")]
pub use sinks::TracingSink;
pub use sinks::{BackgroundSink, BackgroundStats, Overflow, RotatingFileSink};

pub use crate::record::{
    AUDIT_SCHEMA_VERSION, AuditEvent, AuditRecord, Outcome, StageOutcome, StageRecord,
};

use std::fmt;
use std::io::Write;
use std::sync::Mutex;

use crate::error::{Error, ErrorKind};
use crate::stage::AuditSink;

/// A sink that discards every event. Use it to disable auditing explicitly.
///
/// ```
/// use inference_guard::{InferenceGuard, NoopSink};
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().audit_sink(NoopSink);
/// assert!(b.build().is_ok());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopSink;

impl AuditSink for NoopSink {
    fn record(&self, _event: &AuditEvent<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn name(&self) -> &str {
        "noop"
    }
}

/// A sink that keeps every event in memory as a JSON line; for tests and demos.
///
/// Clones share the same store.
///
/// ```
/// use inference_guard::MemorySink;
/// let sink = MemorySink::new();
/// assert!(sink.is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events recorded so far, as JSON lines.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// The events recorded so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lock()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The number of events recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no event was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Removes and returns the recorded events.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let line = event.to_json();
        self.lock().push(line);
        Ok(())
    }
    fn name(&self) -> &str {
        "memory"
    }
}

/// A sink that writes each event as one line of JSON to a writer.
///
/// Each event is serialized first and written under a lock, so lines never
/// interleave. A write that fails part way (a full disk) leaves part of a line: the
/// next event ends it first, so that it starts a line of its own and every line but
/// the torn one parses. The writer is not flushed per event; call
/// [`AuditSink::flush`] (wrap a file in a `BufWriter` for throughput).
///
/// ```
/// use inference_guard::JsonLinesSink;
/// let sink = JsonLinesSink::new(Vec::<u8>::new());
/// # let _ = sink;
/// ```
pub struct JsonLinesSink<W> {
    writer: Mutex<Lines<W>>,
}

impl<W: Write + Send + 'static> JsonLinesSink<W> {
    /// A sink writing to `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer: Mutex::new(Lines::new(writer)),
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

/// A writer of whole lines: a write that fails part way (a full disk) leaves part
/// of a line, which the next write ends first, so that each write starts a line.
pub(crate) struct Lines<W> {
    pub(crate) w: W,
    /// Whether the last write stopped inside a line.
    torn: bool,
}

impl<W: Write> Lines<W> {
    pub(crate) fn new(w: W) -> Self {
        Self { w, torn: false }
    }

    /// Writes `lines` (ending with a line break) whole, after a line break when the
    /// last write was torn.
    pub(crate) fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.write_some(b"\n").map_err(|(_, e)| e)?;
            self.torn = false;
        }
        self.write_some(lines).map_err(|(written, e)| {
            self.torn = written > 0;
            e
        })
    }

    /// `write_all`, and on failure how many bytes were written before it.
    fn write_some(&mut self, mut buf: &[u8]) -> Result<(), (usize, std::io::Error)> {
        let mut written = 0;
        while !buf.is_empty() {
            match self.w.write(buf) {
                Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    written += n;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }
}

/// Whole lines appended to a file, buffered (8 KiB): a write that fails part way
/// (a full disk) is cut off the file again, so the file holds whole lines only
/// (a `BufWriter` writes a line longer than its buffer straight through, and a
/// line torn there had the next one appended to it).
pub(crate) struct LineFile {
    file: std::fs::File,
    /// Whole lines not yet written.
    pending: Vec<u8>,
    /// The file's length with every line written so far.
    len: u64,
}

/// [`LineFile`] writes once this much is pending.
const LINE_FILE_BUFFER: usize = 8 * 1024;

impl LineFile {
    pub(crate) fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            pending: Vec::with_capacity(LINE_FILE_BUFFER),
            len,
        })
    }

    /// Adds `line` (with its line break); written once the buffer is full. When
    /// that write fails, this line is dropped (its caller learns it was not
    /// recorded and may write it again) and the lines before it stay pending; the
    /// file is as it was.
    pub(crate) fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let before = self.pending.len();
        self.pending.extend_from_slice(line);
        if self.pending.len() >= LINE_FILE_BUFFER {
            if let Err(e) = self.write_out() {
                self.pending.truncate(before);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes what is pending (kept when the write fails; the file as it was).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.write_out()
    }

    /// The file.
    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Cut what part of it went out (shortening needs no room), and write
                // next where the whole lines end (a file not opened for appending
                // would leave a hole of zeros).
                let _ = self.file.set_len(self.len);
                let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }
}

impl<W> fmt::Debug for JsonLinesSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonLinesSink")
    }
}

impl<W: Write + Send + 'static> AuditSink for JsonLinesSink<W> {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let mut buf = serde_json::to_vec(event)
            .map_err(|e| Error::with_source(ErrorKind::Audit, "serialize audit event", e))?;
        buf.push(b'\n');
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write(&buf)
            .map_err(|e| Error::with_source(ErrorKind::Audit, "write audit event", e))
    }

    fn flush(&self) -> Result<(), Error> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.w.flush()
            .map_err(|e| Error::with_source(ErrorKind::Audit, "flush audit log", e))
    }

    fn name(&self) -> &str {
        "json_lines"
    }
}
