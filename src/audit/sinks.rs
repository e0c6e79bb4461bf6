//! Sinks that write files, run in the background, or emit `tracing` events.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{AuditEvent, AuditRecord};
use crate::error::{Error, ErrorKind};
use crate::stage::AuditSink;

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::with_source(ErrorKind::Audit, what, e)
}

/// JSON Lines to a file, rotated by size: when a write would take the file past
/// `max_bytes`, `FILE` becomes `FILE.1` (and `FILE.1` becomes `FILE.2`, ...), keeping
/// `keep` old files.
///
/// Events are written through a buffer; [`AuditSink::flush`] writes it out and calls
/// `fsync`.
///
/// ```
/// use inference_guard::audit::RotatingFileSink;
/// let dir = std::env::temp_dir().join(format!("ig-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let sink = RotatingFileSink::new(dir.join("audit.jsonl"), 10 * 1024 * 1024, 5)?;
/// # drop(sink); std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RotatingFileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    state: Mutex<(super::LineFile, u64)>,
}

impl fmt::Debug for RotatingFileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingFileSink")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("keep", &self.keep)
            .finish()
    }
}

impl RotatingFileSink {
    /// Appends to `path` (created if missing), rotating past `max_bytes`.
    ///
    /// # Errors
    ///
    /// An [`Error`] if the file cannot be opened.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> Result<Self, Error> {
        let path = path.into();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open audit log"))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            max_bytes: max_bytes.max(1),
            keep,
            state: Mutex::new((
                super::LineFile::new(file).map_err(io_err("open audit log"))?,
                len,
            )),
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&self, state: &mut (super::LineFile, u64)) -> Result<(), Error> {
        state.0.flush().map_err(io_err("flush audit log"))?;
        state
            .0
            .file()
            .sync_data()
            .map_err(io_err("sync audit log"))?;
        if self.keep == 0 {
            fs::remove_file(&self.path).map_err(io_err("remove audit log"))?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1)).map_err(io_err("rotate audit log"))?;
                }
            }
            fs::rename(&self.path, self.rotated(1)).map_err(io_err("rotate audit log"))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err("open audit log"))?;
        *state = (
            super::LineFile::new(file).map_err(io_err("open audit log"))?,
            0,
        );
        Ok(())
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AuditSink for RotatingFileSink {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let mut line = serde_json::to_vec(event)
            .map_err(|e| Error::with_source(ErrorKind::Audit, "serialize", e))?;
        line.push(b'\n');
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 > 0 && st.1 + line.len() as u64 > self.max_bytes {
            self.rotate(&mut st)?;
        }
        st.0.write_line(&line).map_err(io_err("write audit log"))?;
        st.1 += line.len() as u64;
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0.flush().map_err(io_err("flush audit log"))?;
        st.0.file().sync_data().map_err(io_err("sync audit log"))
    }

    fn name(&self) -> &str {
        "rotating_file"
    }
}

/// What a [`BackgroundSink`] does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait for room: no event is lost, the request path may stall.
    Block,
    /// Drop the event and count it ([`BackgroundStats::dropped`]).
    DropAndCount,
    /// Refuse new requests while the queue is full: the guard asks
    /// [`AuditSink::ready`] before admitting a request and answers `503` (fail closed).
    Reject,
}

/// Counters of a [`BackgroundSink`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackgroundStats {
    /// Events put on the queue.
    pub accepted: u64,
    /// Events the inner sink recorded.
    pub written: u64,
    /// Events dropped because the queue was full ([`Overflow::DropAndCount`]), or
    /// refused after shutdown.
    pub dropped: u64,
    /// Events lost because the inner sink kept failing while more events than the
    /// queue's capacity waited to be retried.
    pub failed: u64,
    /// Events the inner sink refused that wait to be written again (in order, every
    /// 100 ms, ahead of newer ones).
    pub retrying: u64,
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(SyncSender<Result<(), Error>>),
}

struct Shared {
    pending: AtomicUsize,
    accepted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retrying: AtomicU64,
    /// The inner sink's last write or flush failed and has not succeeded since.
    failing: AtomicBool,
    last_error: Mutex<Option<Error>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.failing.store(true, Ordering::Release);
    }
}

/// Takes audit events off the request path: the event is copied to an owned
/// [`AuditRecord`] and put on a bounded queue, and a background thread hands it to the
/// inner sink (serializing, writing, signing). After each batch the thread flushes
/// the inner sink, so a durable sink (for example [`ChainedLogSink`](super::ChainedLogSink))
/// is synced batch by batch. The writer polls the queue and sleeps 2 ms when it is
/// empty, so recording never has to wake it: an event reaches the inner sink within
/// about 2 ms plus the time to write the events before it.
///
/// Shutdown ([`shutdown`](Self::shutdown), or drop) flushes everything accepted.
///
/// # When the inner sink fails
///
/// Write and flush failures are never silent. An event the inner sink refuses (a
/// full disk, a lost connection) is kept and written again every 100 ms, in order and
/// ahead of newer events, until the sink takes it; the error is kept
/// ([`last_error`](Self::last_error)) and returned by [`flush`](AuditSink::flush).
/// While the sink fails, [`ready`](AuditSink::ready) refuses: the guard answers new
/// requests `503` before calling the model, so no new answer goes out whose record
/// could not be written, and it admits them again once the writes succeed. Requests
/// already admitted when the first write failed still get their answers; their
/// records wait for the retries (at most the queue's capacity of them; beyond it they
/// are lost and counted in [`BackgroundStats::failed`]).
/// [`fail_open`](Self::fail_open) keeps admitting while the sink fails.
///
/// A background sink answers before the record is written, so it cannot promise
/// that no answer goes out without a record; a synchronous sink can (the guard
/// replaces the answer with a `503` when `record` fails).
///
/// ```
/// use inference_guard::audit::{BackgroundSink, Overflow};
/// use inference_guard::MemorySink;
///
/// let memory = MemorySink::new();
/// let sink = BackgroundSink::new(memory.clone(), 10_000, Overflow::Block);
/// sink.shutdown();
/// ```
pub struct BackgroundSink {
    tx: Mutex<Option<SyncSender<Msg>>>,
    capacity: usize,
    overflow: Overflow,
    fail_open: bool,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for BackgroundSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundSink")
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .field("fail_open", &self.fail_open)
            .field("stats", &self.stats())
            .finish()
    }
}

impl BackgroundSink {
    /// Starts the background thread in front of `inner`, with a queue of `capacity`
    /// events.
    pub fn new(inner: impl AuditSink, capacity: usize, overflow: Overflow) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(None),
        });
        let s2 = shared.clone();
        let worker = std::thread::Builder::new()
            .name("inference-guard-audit".into())
            .spawn(move || run(inner, rx, &s2, capacity))
            .ok();
        Self {
            tx: Mutex::new(worker.is_some().then_some(tx)),
            capacity,
            overflow,
            fail_open: false,
            shared,
            worker: Mutex::new(worker),
        }
    }

    /// Keeps admitting requests while the inner sink fails (their events wait for
    /// the retries, and are lost beyond the queue's capacity). The default refuses
    /// them (`503`) until the sink writes again.
    ///
    /// ```
    /// use inference_guard::audit::{BackgroundSink, Overflow};
    /// use inference_guard::NoopSink;
    /// let sink = BackgroundSink::new(NoopSink, 1000, Overflow::Reject).fail_open();
    /// # drop(sink);
    /// ```
    #[must_use]
    pub fn fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// The counters.
    pub fn stats(&self) -> BackgroundStats {
        let s = &self.shared;
        BackgroundStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            retrying: s.retrying.load(Ordering::Relaxed),
        }
    }

    /// The inner sink's last error, while it fails (`None` once a write succeeds
    /// again).
    pub fn last_error(&self) -> Option<Error> {
        if !self.shared.failing.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events waiting in the queue.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Stops accepting events, waits until every accepted event is recorded and the
    /// inner sink flushed, and stops the thread. Later events are dropped and counted.
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(h) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }

    fn sender(&self) -> Option<SyncSender<Msg>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long the writer sleeps when the queue is empty. The writer polls instead of
/// blocking on the queue so that a request never pays for waking it (a futex wake
/// costs more than everything else the request path does here).
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// How often the writer retries events the inner sink refused.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

fn run(inner: impl AuditSink, rx: Receiver<Msg>, shared: &Shared, capacity: usize) {
    let mut acks: Vec<SyncSender<Result<(), Error>>> = Vec::new();
    // Events the inner sink refused, oldest first: written before any newer one.
    let mut retry: std::collections::VecDeque<Box<AuditRecord>> = std::collections::VecDeque::new();
    let mut flush_failed = false;
    loop {
        let (mut records, mut written, mut lost) = (0usize, 0u64, 0u64);
        let mut disconnected = false;
        let mut error = None;
        // The refused events first, in order, until one is refused again.
        while let Some(rec) = retry.front() {
            match inner.record(&rec.event()) {
                Ok(()) => {
                    retry.pop_front();
                    written += 1;
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        // Then what is queued (bounded, so a flood still gets flushed regularly).
        while records < 4096 {
            match rx.try_recv() {
                Ok(Msg::Record(rec)) => {
                    records += 1;
                    if !retry.is_empty() {
                        // Behind the refused ones, to keep the order.
                        retry.push_back(rec);
                        continue;
                    }
                    match inner.record(&rec.event()) {
                        Ok(()) => written += 1,
                        Err(e) => {
                            error = Some(e);
                            retry.push_back(rec);
                        }
                    }
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        while retry.len() > capacity {
            retry.pop_front();
            lost += 1;
        }
        if records > 0 {
            shared.pending.fetch_sub(records, Ordering::Relaxed);
        }
        shared.written.fetch_add(written, Ordering::Relaxed);
        shared.failed.fetch_add(lost, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            if lost > 0 {
                metrics::counter!("inference_guard_audit_lost_total").increment(lost);
            }
            metrics::gauge!("inference_guard_audit_retrying").set(retry.len() as f64);
        }
        shared.retrying.store(retry.len() as u64, Ordering::Relaxed);
        let mut flushed = Ok(());
        if written > 0 || records > 0 || flush_failed || !acks.is_empty() || disconnected {
            flushed = inner.flush();
            flush_failed = flushed.is_err();
        }
        if let Some(e) = error.or_else(|| flushed.as_ref().err().cloned()) {
            #[cfg(feature = "metrics")]
            metrics::counter!("inference_guard_audit_write_errors_total").increment(1);
            shared.fail(e);
        } else if retry.is_empty() {
            shared.failing.store(false, Ordering::Release);
        }
        let failing = shared.failing.load(Ordering::Acquire);
        for ack in acks.drain(..) {
            let r = match (&flushed, failing) {
                (Err(e), _) => Err(e.clone()),
                (Ok(()), true) => Err(shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| Error::new(ErrorKind::Audit, "audit sink failing"))),
                (Ok(()), false) => Ok(()),
            };
            let _ = ack.send(r);
        }
        if disconnected {
            // Shutting down: the refused events get no more chances.
            shared
                .failed
                .fetch_add(retry.len() as u64, Ordering::Relaxed);
            shared.retrying.store(0, Ordering::Relaxed);
            return;
        }
        if failing {
            std::thread::sleep(RETRY_EVERY);
        } else if records == 0 {
            std::thread::sleep(IDLE_POLL);
        }
    }
}

impl AuditSink for BackgroundSink {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let Some(tx) = self.sender() else {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Error::new(ErrorKind::Audit, "audit sink is shut down"));
        };
        let msg = Msg::Record(Box::new(event.to_record()));
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        let sent = match self.overflow {
            Overflow::Block => tx.send(msg).map_err(|_| None),
            Overflow::DropAndCount | Overflow::Reject => tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => Some(()),
                TrySendError::Disconnected(_) => None,
            }),
        };
        #[cfg(feature = "metrics")]
        metrics::gauge!("inference_guard_audit_queue_depth").set(self.pending() as f64);
        match sent {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(full) => {
                self.shared.pending.fetch_sub(1, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                metrics::counter!("inference_guard_audit_dropped_total").increment(1);
                match (full, self.overflow) {
                    (Some(()), Overflow::DropAndCount) => Ok(()),
                    (Some(()), _) => Err(Error::new(ErrorKind::Audit, "audit queue full")),
                    (None, _) => Err(Error::new(ErrorKind::Audit, "audit thread stopped")),
                }
            }
        }
    }

    fn ready(&self) -> Result<(), Error> {
        if self.overflow == Overflow::Reject && self.pending() >= self.capacity {
            return Err(Error::new(ErrorKind::Audit, "audit queue full"));
        }
        if !self.fail_open && self.shared.failing.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Audit,
                "audit sink failing: events wait to be written again",
            ));
        }
        Ok(())
    }

    /// Waits until everything queued before the call is recorded and flushed.
    fn flush(&self) -> Result<(), Error> {
        let Some(tx) = self.sender() else {
            return Ok(());
        };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Flush(ack_tx))
            .map_err(|_| Error::new(ErrorKind::Audit, "audit thread stopped"))?;
        ack_rx
            .recv()
            .map_err(|_| Error::new(ErrorKind::Audit, "audit thread stopped"))?
    }

    fn name(&self) -> &str {
        "background"
    }
}

impl Drop for BackgroundSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Emits each audit event as a `tracing` event (target `inference_guard::audit`,
/// level INFO) with the main fields as structured fields and the whole record as
/// `record`.
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

#[cfg(feature = "tracing")]
impl AuditSink for TracingSink {
    fn record(&self, event: &AuditEvent<'_>) -> Result<(), Error> {
        let rejection = event.rejection();
        tracing::info!(
            target: "inference_guard::audit",
            request_id = %event.request_id(),
            outcome = event.outcome().as_str(),
            principal = event.principal().map(crate::Principal::id),
            model = event.model(),
            route = event.route(),
            status = rejection.map(crate::Rejection::status),
            reason = rejection.map(|r| r.reason().as_str()),
            stage = rejection.and_then(crate::Rejection::stage).map(crate::Stage::as_str),
            record = %event.to_json(),
            "inference request audited"
        );
        Ok(())
    }

    fn name(&self) -> &str {
        "tracing"
    }
}
