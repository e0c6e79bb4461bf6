//! [`OnnxClassifier`]: a transformer classifier run in-process by ONNX Runtime.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::session::{RunOptions, Session};
use ort::value::{Tensor, TensorElementType, ValueType};

use super::Classifier;
use crate::error::{BuildError, Error, ErrorKind, StageError};
use crate::finding::{Action, Category, Finding, Location, Severity};
use crate::response::GuardResponse;
use crate::stage::{InputScanner, OutputValidator, StageContext, StreamValidator, StreamVerdict};
use crate::step::Step;

/// A transformer classifier (Prompt Guard class models) run in-process by ONNX
/// Runtime, as an input stage and an answer validator.
///
/// in-process by ONNX Runtime, as an input stage and an answer validator.
///
/// Feature `onnx`. The runtime is the `onnxruntime` shared library, loaded when the
/// first classifier is built (from [`OnnxClassifierBuilder::runtime`] or the
/// `ORT_DYLIB_PATH` environment variable); nothing is downloaded at build or run
/// time. Tokenization is the `tokenizers` crate, pure Rust, from the model's
/// `tokenizer.json`.
///
/// # How it runs
///
/// - **Off the executor.** Tokenizing and inference run on the classifier's own
///   worker threads (each with its own session), never on the caller's thread. The
///   queue in front of them is bounded: when it is full the call fails at once with
///   [`ErrorKind::Overloaded`], which the guard answers `503` with `Retry-After`
///   (see [`GuardBuilder::unavailable_retry_after`]), never an unbounded wait.
/// - **A deadline per call** ([`deadline`](OnnxClassifierBuilder::deadline)): a
///   call that has not finished by then fails with [`ErrorKind::Timeout`] and its
///   inference is terminated. Like every stage error, this fails the request closed
///   (`503`) unless the stage is fail-open ([`GuardBuilder::fail_open`]).
/// - **Windows.** A text is tokenized once; windows of
///   [`max_tokens`](OnnxClassifierBuilder::max_tokens) (with the model's special
///   tokens) overlapping by [`overlap`](OnnxClassifierBuilder::overlap) tokens are
///   classified in batches, and for every label mapped to a category the worst
///   window decides. The finding's span is that window's bytes, its confidence the
///   label's probability: [`Action::Block`] at or above the label's block
///   threshold, [`Action::Flag`] at or above its flag threshold.
/// - **Only where it adds information** ([`only_when_uncertain`]): the built-in
///   [`Classifier`] scores each text first (tens of microseconds) and the model
///   runs only for texts whose score falls in a band, with no thread hand-off for
///   the others.
/// - **Streams.** As an answer validator it validates streamed answers segment by
///   segment: a window is classified once it is complete, and text is released
///   only when every window that will ever contain it has been classified, so a
///   streamed answer gets the verdict its whole text gets (for tokenizers that
///   split at whitespace: WordPiece, SentencePiece, byte-level BPE). A label may be
///   reported more than once on a stream, each time with a higher probability.
///   Tool-call arguments are not classified.
///
/// The guard drives this stage asynchronously: use the `_async` methods
/// ([`InferenceGuard::check_request_async`], [`StreamGuard::push_async`]); the
/// synchronous ones fail closed with [`ErrorKind::WouldBlock`].
///
/// ```no_run
/// use inference_guard::scan::OnnxClassifier;
/// use inference_guard::{Category, InferenceGuard, NoopSink};
///
/// // Prompt Guard 2 (86M or 22M) exported to ONNX: label 1 is "malicious".
/// let model = OnnxClassifier::builder("prompt-guard-2/model.onnx", "prompt-guard-2/tokenizer.json")
///     .runtime("/opt/onnxruntime/lib/libonnxruntime.so")
///     .label(1, Category::PromptInjection, 0.5, 0.9)
///     .workers(2)
///     .build()?;
/// let mut b = InferenceGuard::builder();
/// b.allow_anonymous().authorize_all().input_scanner(model).audit_sink(NoopSink);
/// let guard = b.build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`only_when_uncertain`]: OnnxClassifierBuilder::only_when_uncertain
/// [`GuardBuilder::unavailable_retry_after`]: crate::GuardBuilder::unavailable_retry_after
/// [`GuardBuilder::fail_open`]: crate::GuardBuilder::fail_open
/// [`InferenceGuard::check_request_async`]: crate::InferenceGuard::check_request_async
/// [`StreamGuard::push_async`]: crate::StreamGuard::push_async
/// [`Action::Block`]: crate::Action::Block
/// [`Action::Flag`]: crate::Action::Flag
///
/// An [`InputScanner`] (every message the caller wrote; the operator's own with
/// [`scan_operator_messages`](OnnxClassifierBuilder::scan_operator_messages)) and an
/// [`OutputValidator`] (the answer's text, streamed or whole). Cheap to clone: clones
/// share the workers.
#[derive(Clone)]
pub struct OnnxClassifier {
    inner: Arc<Shared>,
}

struct Shared {
    model: Arc<Model>,
    pool: Pool,
    deadline: Duration,
    gate: Option<(Classifier, f32, f32)>,
    operator_messages: bool,
    segment_bytes: usize,
    texts: AtomicU64,
    model_texts: AtomicU64,
}

/// How many texts an [`OnnxClassifier`] was asked about and how many it sent to
/// the model (the others fell outside the uncertain band).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OnnxStats {
    /// Texts the stage was given (non-empty messages or answers).
    pub texts: u64,
    /// Texts the model classified.
    pub model_texts: u64,
}

impl fmt::Debug for OnnxClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxClassifier")
            .field("name", &self.inner.model.name)
            .field("max_tokens", &self.inner.model.max_tokens())
            .field("workers", &self.inner.pool.threads.len())
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

/// A label of the model's output mapped to a category.
#[derive(Clone, Debug)]
struct Label {
    category: Category,
    flag: f32,
    block: f32,
    rule_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdType {
    I64,
    I32,
}

/// The tokenizer and the model's contract: everything a worker needs but its session.
struct Model {
    name: String,
    tokenizer: tokenizers::Tokenizer,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    pad: u32,
    /// Content tokens per window (without the special tokens).
    content: usize,
    /// Tokens between the starts of consecutive windows.
    step: usize,
    labels: Vec<Option<Label>>,
    n_labels: usize,
    sigmoid: bool,
    batch: usize,
    max_windows: usize,
    id_type: IdType,
    attention_mask: bool,
    token_type_ids: bool,
    output: String,
}

/// Builds an [`OnnxClassifier`]: model and tokenizer paths, label mapping, windows,
/// workers and deadline. Consumed by [`build`](Self::build), which loads the runtime,
/// the tokenizer and one session per worker, and checks the model's inputs.
#[derive(Clone, Debug)]
#[must_use]
pub struct OnnxClassifierBuilder {
    model: PathBuf,
    tokenizer: PathBuf,
    runtime: Option<PathBuf>,
    name: String,
    labels: Vec<(usize, Category, f32, f32)>,
    max_tokens: usize,
    overlap: usize,
    batch: usize,
    max_windows: usize,
    workers: usize,
    queue: Option<usize>,
    intra_threads: usize,
    deadline: Duration,
    sigmoid: bool,
    pad: Option<u32>,
    gate: Option<(Classifier, f32, f32)>,
    operator_messages: bool,
    segment_bytes: usize,
}

impl OnnxClassifier {
    /// A builder for the model at `model` (an `.onnx` file) with the tokenizer at
    /// `tokenizer` (a `tokenizer.json`).
    ///
    /// ```
    /// use inference_guard::Category;
    /// use inference_guard::scan::OnnxClassifier;
    ///
    /// let mut b = OnnxClassifier::builder("model.onnx", "tokenizer.json");
    /// b.label(1, Category::PromptInjection, 0.5, 0.9);
    /// // No such files here: build() says which one is missing.
    /// let err = b.build().unwrap_err();
    /// assert!(err.message().contains("onnx"));
    /// ```
    pub fn builder(model: impl AsRef<Path>, tokenizer: impl AsRef<Path>) -> OnnxClassifierBuilder {
        OnnxClassifierBuilder {
            model: model.as_ref().to_owned(),
            tokenizer: tokenizer.as_ref().to_owned(),
            runtime: None,
            name: "onnx".to_owned(),
            labels: Vec::new(),
            max_tokens: 512,
            overlap: 64,
            batch: 8,
            max_windows: 64,
            workers: 1,
            queue: None,
            intra_threads: 1,
            deadline: Duration::from_secs(2),
            sigmoid: false,
            pad: None,
            gate: None,
            operator_messages: false,
            segment_bytes: 1024,
        }
    }

    /// Texts seen and texts sent to the model since the classifier was built.
    pub fn stats(&self) -> OnnxStats {
        OnnxStats {
            texts: self.inner.texts.load(Ordering::Relaxed),
            model_texts: self.inner.model_texts.load(Ordering::Relaxed),
        }
    }

    /// Classifies one text now, on the calling thread's wait (not through the
    /// queue's back-pressure): the findings the stage would report for it at
    /// `location`. For tools and tests; a server uses the stage.
    ///
    /// # Errors
    ///
    /// As the stage: tokenizer or runtime failures, the deadline, a full queue.
    pub fn classify(&self, text: &str, location: Location) -> Result<Vec<Finding>, Error> {
        let model = self.inner.model.clone();
        let text = text.to_owned();
        let wait = self.inner.pool.submit(self.inner.deadline, move |s, run| {
            model.judge(&text, location, s, run)
        })?;
        block_on(wait)
    }

    /// Whether the uncertain band lets `text` through to the model.
    fn wanted(&self, text: &str) -> bool {
        if text.trim().is_empty() {
            return false;
        }
        self.inner.texts.fetch_add(1, Ordering::Relaxed);
        let run = match &self.inner.gate {
            None => true,
            Some((c, low, high)) => {
                let p = c.score(text).probability;
                p >= *low && p < *high
            }
        };
        if run {
            self.inner.model_texts.fetch_add(1, Ordering::Relaxed);
        }
        run
    }

    fn judge_all(
        &self,
        texts: Vec<(Location, String)>,
    ) -> Step<'static, Result<Vec<Finding>, StageError>> {
        if texts.is_empty() {
            return Step::ready(Ok(Vec::new()));
        }
        let model = self.inner.model.clone();
        let submitted = self.inner.pool.submit(self.inner.deadline, move |s, run| {
            let mut out = Vec::new();
            for (at, text) in &texts {
                out.extend(model.judge(text, *at, s, run)?);
            }
            Ok(out)
        });
        match submitted {
            Ok(wait) => Step::future(async move { wait.await.map_err(StageError::from) }),
            Err(e) => Step::ready(Err(e.into())),
        }
    }
}

impl OnnxClassifierBuilder {
    /// The ONNX Runtime shared library (`libonnxruntime.so`, `.dylib`, `.dll`).
    /// Default: the `ORT_DYLIB_PATH` environment variable. The library is loaded
    /// once per process; a second classifier must name the same file.
    pub fn runtime(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.runtime = Some(path.as_ref().to_owned());
        self
    }

    /// The prefix of the findings' rule ids (default `onnx`): a label mapped to
    /// [`Category::PromptInjection`] reports `onnx.prompt_injection`.
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = name.into();
        self
    }

    /// Maps the model's output `index` to `category`, flagged from probability
    /// `flag` and blocked from `block` (`0 < flag <= block <= 1`). Labels not
    /// mapped (the benign class) report nothing. Adds to the labels mapped so far;
    /// mapping an index again replaces it.
    pub fn label(&mut self, index: usize, category: Category, flag: f32, block: f32) -> &mut Self {
        self.labels.retain(|l| l.0 != index);
        self.labels.push((index, category, flag, block));
        self
    }

    /// Tokens per window, special tokens included (default 512, the usual maximum
    /// of BERT-class models).
    pub fn max_tokens(&mut self, n: usize) -> &mut Self {
        self.max_tokens = n;
        self
    }

    /// Tokens shared by consecutive windows (default 64), so that an instruction
    /// cut by a window boundary is whole in one of them.
    pub fn overlap(&mut self, n: usize) -> &mut Self {
        self.overlap = n;
        self
    }

    /// Windows per inference call (default 8).
    pub fn batch(&mut self, n: usize) -> &mut Self {
        self.batch = n;
        self
    }

    /// The most windows one text may need (default 64, about 28,000 tokens with
    /// the defaults). A longer text is blocked (`onnx.too_long`, category
    /// [`Category::Limit`]) rather than judged in part.
    pub fn max_windows(&mut self, n: usize) -> &mut Self {
        self.max_windows = n;
        self
    }

    /// Worker threads, each with its own session (default 1). Memory grows with
    /// each: a session holds the model's weights.
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// Calls that may wait for a worker (default 4 per worker). One more fails at
    /// once with [`ErrorKind::Overloaded`]: the guard answers `503` with
    /// `Retry-After`.
    pub fn queue(&mut self, n: usize) -> &mut Self {
        self.queue = Some(n);
        self
    }

    /// Threads ONNX Runtime uses inside one inference (default 1: the workers are
    /// the parallelism).
    pub fn intra_threads(&mut self, n: usize) -> &mut Self {
        self.intra_threads = n;
        self
    }

    /// How long a call may take, waiting in the queue included (default 2 s).
    /// Later, it fails with [`ErrorKind::Timeout`] and its inference is terminated.
    pub fn deadline(&mut self, d: Duration) -> &mut Self {
        self.deadline = d;
        self
    }

    /// Reads the outputs as independent sigmoids (multi-label models) instead of
    /// one softmax (the default, as Prompt Guard's classes).
    pub fn sigmoid(&mut self, on: bool) -> &mut Self {
        self.sigmoid = on;
        self
    }

    /// The padding token id (default: the tokenizer's padding token, `[PAD]`,
    /// `<pad>`, or 0). Padding is masked out where the model takes an attention
    /// mask.
    pub fn pad_token_id(&mut self, id: u32) -> &mut Self {
        self.pad = Some(id);
        self
    }

    /// Calls the model only for texts that `classifier` (usually
    /// [`Classifier::builtin`]) scores at or above `low` and below `high`: below,
    /// the built-in scanners are confident it is benign; above, they block it
    /// anyway (when the built-in [`Scanner`](super::Scanner) runs too). Texts
    /// outside the band cost one built-in scoring and no thread hand-off. A
    /// streamed answer is scored when it ends (the band is a property of the whole
    /// text), so with a band the stage holds streamed text back until the end.
    pub fn only_when_uncertain(
        &mut self,
        classifier: Classifier,
        low: f32,
        high: f32,
    ) -> &mut Self {
        self.gate = Some((classifier, low, high));
        self
    }

    /// Whether messages the application marked as its own
    /// ([`Message::operator`](crate::Message::operator)) are classified too
    /// (default: no, as the built-in scanner).
    pub fn scan_operator_messages(&mut self, on: bool) -> &mut Self {
        self.operator_messages = on;
        self
    }

    /// How much a streamed answer grows before it is classified again (default
    /// 1 KiB, or an eighth of what was classified, whichever is more). Windows
    /// are classified once, when complete; this bounds the re-tokenizing.
    pub fn stream_segment_bytes(&mut self, n: usize) -> &mut Self {
        self.segment_bytes = n;
        self
    }

    /// Loads the runtime, the tokenizer and the model (once per worker) and checks
    /// the configuration.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming what is wrong: no runtime library, a file that does
    /// not load, a model without `input_ids` or with inputs other than
    /// `input_ids`, `attention_mask` and `token_type_ids` (int64 or int32), a label
    /// index beyond the model's outputs, thresholds out of order, windows too small
    /// for the overlap, no label mapped.
    pub fn build(&self) -> Result<OnnxClassifier, BuildError> {
        let err = |m: String| BuildError::invalid("onnx", m);
        if self.labels.is_empty() {
            return Err(err(
                "no output label is mapped to a category (label(..))".into()
            ));
        }
        for (i, _, flag, block) in &self.labels {
            if !(*flag > 0.0 && flag <= block && *block <= 1.0) {
                return Err(err(format!(
                    "label {i}: thresholds must satisfy 0 < flag <= block <= 1"
                )));
            }
        }
        if self.workers == 0 || self.batch == 0 || self.max_windows == 0 {
            return Err(err(
                "workers, batch and max_windows must be at least 1".into()
            ));
        }
        if self.deadline.is_zero() {
            return Err(err("the deadline must be more than zero".into()));
        }
        for (what, p) in [("model", &self.model), ("tokenizer", &self.tokenizer)] {
            if !p.is_file() {
                return Err(err(format!("{what} file not found: {}", p.display())));
            }
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&self.tokenizer)
            .map_err(|e| err(format!("tokenizer {}: {e}", self.tokenizer.display())))?;
        // The special tokens a single sequence gets, found by post-processing one
        // ordinary token: what comes before it is the prefix, after it the suffix.
        let probe = tokenizers::Encoding::new(
            vec![u32::MAX],
            vec![0],
            vec!["x".to_owned()],
            vec![None],
            vec![(0, 0)],
            vec![0],
            vec![1],
            Vec::new(),
            Default::default(),
        );
        let probe = tokenizer
            .post_process(probe, None, true)
            .map_err(|e| err(format!("tokenizer post-processor: {e}")))?;
        let at = probe
            .get_ids()
            .iter()
            .position(|&id| id == u32::MAX)
            .ok_or_else(|| err("tokenizer post-processor drops the sequence".into()))?;
        let prefix = probe.get_ids()[..at].to_vec();
        let suffix = probe.get_ids()[at + 1..].to_vec();
        let specials = prefix.len() + suffix.len();
        if self.max_tokens <= specials + self.overlap {
            return Err(err(format!(
                "max_tokens ({}) must exceed the special tokens ({specials}) plus the overlap ({})",
                self.max_tokens, self.overlap
            )));
        }
        let content = self.max_tokens - specials;
        let pad = self.pad.unwrap_or_else(|| {
            tokenizer
                .get_padding()
                .map(|p| p.pad_id)
                .or_else(|| tokenizer.token_to_id("[PAD]"))
                .or_else(|| tokenizer.token_to_id("<pad>"))
                .unwrap_or(0)
        });

        let env = environment(self.runtime.as_deref()).map_err(err)?;
        let open = || -> Result<Session, BuildError> {
            let fail = |e: String| err(format!("model {}: {e}", self.model.display()));
            let b = Session::builder(&env).map_err(|e| fail(e.to_string()))?;
            let mut b = b
                .with_intra_threads(self.intra_threads.max(1))
                .map_err(|e| fail(e.to_string()))?;
            b.commit_from_file(&self.model)
                .map_err(|e| fail(e.to_string()))
        };
        let first = open()?;
        let mut id_type = None;
        let (mut attention_mask, mut token_type_ids) = (false, false);
        for input in first.inputs() {
            let ty = match input.dtype() {
                ValueType::Tensor {
                    ty: TensorElementType::Int64,
                    ..
                } => IdType::I64,
                ValueType::Tensor {
                    ty: TensorElementType::Int32,
                    ..
                } => IdType::I32,
                other => {
                    return Err(err(format!(
                        "input {} has type {other}; int64 or int32 token tensors are supported",
                        input.name()
                    )));
                }
            };
            match input.name() {
                "input_ids" => id_type = Some(ty),
                "attention_mask" => attention_mask = true,
                "token_type_ids" => token_type_ids = true,
                other => {
                    return Err(err(format!(
                        "unsupported model input {other} (input_ids, attention_mask and token_type_ids are)"
                    )));
                }
            }
        }
        let id_type = id_type.ok_or_else(|| err("the model has no input_ids input".into()))?;
        let Some(output) = first.outputs().first() else {
            return Err(err("the model has no output".into()));
        };
        let output_name = output.name().to_owned();
        let n_labels = match output.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } => shape.last().copied().filter(|&n| n > 0).map(|n| n as usize),
            other => {
                return Err(err(format!(
                    "output {output_name} has type {other}; float32 logits are expected"
                )));
            }
        };
        let n_labels =
            n_labels.unwrap_or_else(|| self.labels.iter().map(|l| l.0 + 1).max().unwrap_or(1));
        let mut labels = vec![None; n_labels];
        for (i, category, flag, block) in self.labels.clone() {
            if i >= n_labels {
                return Err(err(format!(
                    "label {i} is beyond the model's {n_labels} outputs"
                )));
            }
            let rule_id = format!("{}.{}", self.name, category.as_str());
            labels[i] = Some(Label {
                category,
                flag,
                block,
                rule_id,
            });
        }
        let mut sessions = vec![first];
        for _ in 1..self.workers {
            sessions.push(open()?);
        }
        let model = Arc::new(Model {
            name: self.name.clone(),
            tokenizer,
            prefix,
            suffix,
            pad,
            content,
            step: content - self.overlap,
            labels,
            n_labels,
            sigmoid: self.sigmoid,
            batch: self.batch,
            max_windows: self.max_windows,
            id_type,
            attention_mask,
            token_type_ids,
            output: output_name,
        });
        let queue = self.queue.unwrap_or(4 * self.workers);
        let pool = Pool::new(sessions, queue).map_err(|e| err(e.to_string()))?;
        Ok(OnnxClassifier {
            inner: Arc::new(Shared {
                model,
                pool,
                deadline: self.deadline,
                gate: self.gate.clone(),
                operator_messages: self.operator_messages,
                segment_bytes: self.segment_bytes.max(1),
                texts: AtomicU64::new(0),
                model_texts: AtomicU64::new(0),
            }),
        })
    }
}

/// The process's ONNX Runtime environment, loaded from `path` (or `ORT_DYLIB_PATH`)
/// by the first classifier built.
fn environment(path: Option<&Path>) -> Result<ort::environment::Environment, String> {
    static ENV: OnceLock<Mutex<Option<(PathBuf, ort::environment::Environment)>>> = OnceLock::new();
    let path = match path {
        Some(p) => p.to_owned(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .ok_or_else(|| {
                "no ONNX Runtime library: give its path (runtime(..)) or set ORT_DYLIB_PATH"
                    .to_owned()
            })?,
    };
    let mut slot = ENV
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((loaded, env)) = slot.as_ref() {
        if *loaded != path {
            return Err(format!(
                "ONNX Runtime is already loaded from {}; cannot also load {}",
                loaded.display(),
                path.display()
            ));
        }
        return Ok(env.clone());
    }
    if !path.is_file() {
        return Err(format!(
            "ONNX Runtime library not found: {}",
            path.display()
        ));
    }
    let env = ort::init_from(&path)
        .map_err(|e| format!("ONNX Runtime library {}: {e}", path.display()))?
        .with_name("inference-guard")
        .build()
        .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
    *slot = Some((path, env.clone()));
    Ok(env)
}

/// A text's tokens without special tokens, with their byte offsets.
struct Tokens {
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
}

/// The windows of `n` tokens: starts every `step`, `content` long, the last one
/// the first to reach the end. `complete_only` keeps the windows that end before
/// `n` or exactly at it (a streamed text's tokens past `n` are not known yet).
fn windows(
    n: usize,
    content: usize,
    step: usize,
    from: usize,
    complete_only: bool,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    for k in from.. {
        // Window k exists when the one before it did not reach the end.
        if k > 0 && (k - 1) * step + content >= n {
            break;
        }
        let start = k * step;
        if complete_only && start + content > n {
            break;
        }
        out.push(start..(start + content).min(n));
    }
    out
}

/// The judgement of some windows: per label, the worst window and its probability.
type Worst = Vec<Option<(f32, Range<usize>)>>;

impl Model {
    fn max_tokens(&self) -> usize {
        self.content + self.prefix.len() + self.suffix.len()
    }

    fn encode(&self, text: &str) -> Result<Tokens, Error> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::new(ErrorKind::Backend, format!("onnx tokenizer: {e}")))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Classifies the windows `ranges` of `tokens`; folds them into `worst`
    /// (byte spans).
    fn infer(
        &self,
        tokens: &Tokens,
        ranges: &[Range<usize>],
        session: &mut Session,
        run: &RunOptions,
        worst: &mut Worst,
    ) -> Result<(), Error> {
        let fail = |e: ort::Error| Error::new(ErrorKind::Backend, format!("onnx runtime: {e}"));
        for chunk in ranges.chunks(self.batch) {
            let len = chunk.iter().map(|r| r.len()).max().unwrap_or(0)
                + self.prefix.len()
                + self.suffix.len();
            let rows = chunk.len();
            let mut ids = Vec::with_capacity(rows * len);
            let mut mask = Vec::with_capacity(rows * len);
            for r in chunk {
                let real = r.len() + self.prefix.len() + self.suffix.len();
                ids.extend_from_slice(&self.prefix);
                ids.extend_from_slice(&tokens.ids[r.clone()]);
                ids.extend_from_slice(&self.suffix);
                ids.resize(ids.len() + (len - real), self.pad);
                mask.resize(mask.len() + real, 1u32);
                mask.resize(mask.len() + (len - real), 0);
            }
            let shape = [rows, len];
            let mut inputs: Vec<(&str, ort::value::DynValue)> = Vec::with_capacity(3);
            let tensor = |v: &[u32]| -> Result<ort::value::DynValue, ort::Error> {
                Ok(match self.id_type {
                    IdType::I64 => Tensor::from_array((
                        shape,
                        v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
                    ))?
                    .into_dyn(),
                    IdType::I32 => Tensor::from_array((
                        shape,
                        v.iter()
                            .map(|&x| i32::try_from(x).unwrap_or(i32::MAX))
                            .collect::<Vec<_>>(),
                    ))?
                    .into_dyn(),
                })
            };
            inputs.push(("input_ids", tensor(&ids).map_err(fail)?));
            if self.attention_mask {
                inputs.push(("attention_mask", tensor(&mask).map_err(fail)?));
            }
            if self.token_type_ids {
                inputs.push((
                    "token_type_ids",
                    tensor(&vec![0; rows * len]).map_err(fail)?,
                ));
            }
            let outputs = session.run_with_options(inputs, run).map_err(fail)?;
            let (_, logits) = outputs[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(fail)?;
            if logits.len() != rows * self.n_labels {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "onnx runtime: {} outputs for {rows} windows of {} labels",
                        logits.len(),
                        self.n_labels
                    ),
                ));
            }
            for (row, r) in logits.chunks(self.n_labels).zip(chunk) {
                let probs = self.activate(row);
                let span = tokens.offsets[r.start].0..tokens.offsets[r.end - 1].1;
                for (i, p) in probs.into_iter().enumerate() {
                    if self.labels[i].is_none() || !p.is_finite() {
                        continue;
                    }
                    if worst[i].as_ref().is_none_or(|(q, _)| p > *q) {
                        worst[i] = Some((p, span.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    fn activate(&self, logits: &[f32]) -> Vec<f32> {
        if self.sigmoid {
            return logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        exps.into_iter().map(|e| e / sum).collect()
    }

    /// The findings for the worst windows, where they reach a label's flag
    /// threshold (above `floor` per label, for streams).
    fn findings(&self, worst: &Worst, at: Location, floor: &mut [f32]) -> Vec<Finding> {
        let mut out = Vec::new();
        for (i, w) in worst.iter().enumerate() {
            let (Some((p, span)), Some(label)) = (w, &self.labels[i]) else {
                continue;
            };
            if *p < label.flag || *p <= floor[i] {
                continue;
            }
            floor[i] = *p;
            let (severity, action) = if *p >= label.block {
                (Severity::High, Action::Block)
            } else {
                (Severity::Medium, Action::Flag)
            };
            out.push(
                Finding::new(
                    label.rule_id.clone(),
                    label.category.clone(),
                    severity,
                    at,
                    span.clone(),
                )
                .with_action(action)
                .with_confidence(*p),
            );
        }
        out
    }

    fn too_long(&self, at: Location, len: usize) -> Finding {
        Finding::new(
            format!("{}.too_long", self.name),
            Category::Limit,
            Severity::High,
            at,
            0..len,
        )
        .with_action(Action::Block)
    }

    /// Every window of a whole text.
    fn judge(
        &self,
        text: &str,
        at: Location,
        session: &mut Session,
        run: &RunOptions,
    ) -> Result<Vec<Finding>, Error> {
        let tokens = self.encode(text)?;
        let ranges = windows(tokens.ids.len(), self.content, self.step, 0, false);
        if ranges.len() > self.max_windows {
            return Ok(vec![self.too_long(at, text.len())]);
        }
        let mut worst = vec![None; self.n_labels];
        self.infer(&tokens, &ranges, session, run, &mut worst)?;
        Ok(self.findings(&worst, at, &mut vec![f32::NEG_INFINITY; self.n_labels]))
    }
}

// ---------------------------------------------------------------------------
// The stages.

impl InputScanner for OnnxClassifier {
    fn scan<'a>(&'a self, cx: StageContext<'a>) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let request = cx.request();
        let texts: Vec<(Location, String)> = request
            .messages()
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_operator() || self.inner.operator_messages)
            .filter(|(_, m)| self.wanted(m.content()))
            .map(|(i, m)| (Location::Message(i), m.content().to_owned()))
            .collect();
        self.judge_all(texts)
    }

    fn name(&self) -> &str {
        &self.inner.model.name
    }
}

impl OutputValidator for OnnxClassifier {
    fn validate<'a>(
        &'a self,
        _cx: StageContext<'a>,
        response: &'a GuardResponse,
    ) -> Step<'a, Result<Vec<Finding>, StageError>> {
        let text = response.text();
        let texts = if self.wanted(text) {
            vec![(Location::Output, text.to_owned())]
        } else {
            Vec::new()
        };
        self.judge_all(texts)
    }

    fn stream(&self, _cx: StageContext<'_>) -> Option<Box<dyn StreamValidator>> {
        Some(Box::new(OnnxStream {
            classifier: self.clone(),
            next_window: 0,
            safe: 0,
            classified: 0,
            floor: vec![f32::NEG_INFINITY; self.inner.model.n_labels],
        }))
    }

    fn name(&self) -> &str {
        &self.inner.model.name
    }
}

/// A streamed answer, classified window by window as the windows complete.
struct OnnxStream {
    classifier: OnnxClassifier,
    /// The first window not classified yet.
    next_window: usize,
    /// Bytes that no window still to come contains.
    safe: usize,
    /// Bytes classified at the last call (the stable prefix then).
    classified: usize,
    /// Per label, the highest probability already reported.
    floor: Vec<f32>,
}

impl StreamValidator for OnnxStream {
    fn advance<'a>(
        &'a mut self,
        text: &'a str,
        end_of_stream: bool,
    ) -> Step<'a, Result<StreamVerdict, StageError>> {
        let shared = &self.classifier.inner;
        if shared.gate.is_some() {
            // With an uncertain band the whole answer is scored at the end (the band
            // is a property of the whole text): until then nothing is released.
            if !end_of_stream {
                return Step::ready(Ok(StreamVerdict::default()));
            }
            let texts = if self.classifier.wanted(text) {
                vec![(Location::Output, text.to_owned())]
            } else {
                Vec::new()
            };
            return self.classifier.judge_all(texts).map(|r| {
                r.map(|findings| StreamVerdict {
                    safe_up_to: text.len(),
                    findings,
                })
            });
        }
        // Only text up to the last whitespace is stable: the word after it may
        // still grow and tokenize differently.
        let stable = if end_of_stream {
            text.len()
        } else {
            text.trim_end_matches(|c: char| !c.is_whitespace())
                .trim_end()
                .len()
        };
        let grown = stable.saturating_sub(self.classified);
        let needed = shared.segment_bytes.max(self.classified / 8);
        if !end_of_stream && grown < needed {
            return Step::ready(Ok(StreamVerdict {
                safe_up_to: self.safe,
                findings: Vec::new(),
            }));
        }
        if end_of_stream {
            shared.texts.fetch_add(1, Ordering::Relaxed);
            shared.model_texts.fetch_add(1, Ordering::Relaxed);
        }
        let model = shared.model.clone();
        let prefix = text[..stable].to_owned();
        let from = self.next_window;
        let submitted = shared.pool.submit(shared.deadline, move |s, run| {
            let tokens = model.encode(&prefix)?;
            let n = tokens.ids.len();
            let ranges = windows(n, model.content, model.step, from, !end_of_stream);
            let next = from + ranges.len();
            if next > model.max_windows {
                return Ok((next, prefix.len(), None));
            }
            let mut worst = vec![None; model.n_labels];
            model.infer(&tokens, &ranges, s, run, &mut worst)?;
            // Text before the next window's first token is in no later window.
            let safe = if end_of_stream {
                prefix.len()
            } else {
                tokens.offsets.get(next * model.step).map_or(0, |o| o.0)
            };
            Ok((next, safe, Some(worst)))
        });
        let wait = match submitted {
            Ok(w) => w,
            Err(e) => return Step::ready(Err(e.into())),
        };
        Step::future(async move {
            let (next, safe, worst) = wait.await?;
            let model = &self.classifier.inner.model;
            let findings = match worst {
                Some(w) => model.findings(&w, Location::Output, &mut self.floor),
                None => vec![model.too_long(Location::Output, text.len())],
            };
            self.next_window = next;
            self.safe = self.safe.max(safe);
            self.classified = stable;
            Ok(StreamVerdict {
                safe_up_to: self.safe,
                findings,
            })
        })
    }
}

// ---------------------------------------------------------------------------
// The worker pool: bounded queue, a session per worker, deadlines.

type Job = Box<dyn FnOnce(&mut Session) + Send>;

struct Pool {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    watch: Arc<Watch>,
}

impl Pool {
    fn new(sessions: Vec<Session>, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for (i, mut session) in sessions.into_iter().enumerate() {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("inference-guard-onnx-{i}"))
                    .spawn(move || {
                        while let Some(job) = next_job(&rx) {
                            job(&mut session);
                        }
                    })?,
            );
        }
        let watch = Arc::new(Watch {
            state: Mutex::new(WatchState {
                entries: Vec::new(),
                wakes_at: None,
                shutdown: false,
            }),
            cv: Condvar::new(),
        });
        let w = watch.clone();
        std::thread::Builder::new()
            .name("inference-guard-onnx-deadlines".to_owned())
            .spawn(move || w.run())?;
        Ok(Self {
            tx: Some(tx),
            threads,
            watch,
        })
    }

    /// Queues `work` for a worker; fails at once if the queue is full.
    fn submit<T: Send + 'static>(
        &self,
        deadline: Duration,
        work: impl FnOnce(&mut Session, &RunOptions) -> Result<T, Error> + Send + 'static,
    ) -> Result<Wait<T>, Error> {
        let run = RunOptions::new()
            .map_err(|e| Error::new(ErrorKind::Backend, format!("onnx runtime: {e}")))?;
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                value: None,
                waker: None,
                done: false,
            }),
            done: Condvar::new(),
            run,
        });
        let s = slot.clone();
        let job: Job = Box::new(move |session| {
            if s.is_done() {
                // Expired while it waited in the queue.
                return;
            }
            let r = catch_unwind(AssertUnwindSafe(|| work(session, &s.run)))
                .unwrap_or_else(|_| Err(Error::panicked("onnx classifier")));
            s.complete(r);
        });
        let Some(tx) = &self.tx else {
            return Err(Error::new(
                ErrorKind::Internal,
                "onnx classifier: pool shut down",
            ));
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    "onnx classifier: every worker is busy and the queue is full",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "onnx classifier: workers gone",
                ));
            }
        }
        let weak: Weak<dyn Expire> = Arc::downgrade(&(slot.clone() as Arc<dyn Expire>));
        // A deadline past what an `Instant` holds (`Duration::MAX`: no deadline)
        // is never watched.
        if let Some(at) = Instant::now().checked_add(deadline) {
            self.watch.add(at, weak);
        }
        Ok(Wait(slot))
    }
}

/// The next call for a worker, `None` once the pool is dropped. (Polling for a
/// while before sleeping was tried: it did not shorten the bench's round trip.)
fn next_job(rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    rx.recv().ok()
}

impl Drop for Pool {
    /// Closes the queue and stops the watcher without waiting: a worker finishes
    /// the call it is running and exits (a drop on an async executor never blocks
    /// on an inference).
    fn drop(&mut self) {
        self.tx = None;
        {
            let mut s = self
                .watch
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.shutdown = true;
        }
        self.watch.cv.notify_all();
    }
}

/// Where a call's result lands: set once, by the worker or by the deadline.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    done: Condvar,
    run: RunOptions,
}

struct SlotState<T> {
    value: Option<Result<T, Error>>,
    waker: Option<Waker>,
    done: bool,
}

impl<T> Slot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_done(&self) -> bool {
        self.lock().done
    }

    fn complete(&self, value: Result<T, Error>) {
        let waker = {
            let mut s = self.lock();
            if s.done {
                return;
            }
            s.done = true;
            s.value = Some(value);
            s.waker.take()
        };
        self.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

trait Expire: Send + Sync {
    fn expire(&self);
    fn finished(&self) -> bool;
}

impl<T: Send> Expire for Slot<T> {
    fn expire(&self) {
        if self.is_done() {
            return;
        }
        self.complete(Err(Error::new(
            ErrorKind::Timeout,
            "onnx classifier: deadline exceeded",
        )));
        // Stops an inference in progress; the worker's own result is then ignored.
        let _ = self.run.terminate();
    }

    fn finished(&self) -> bool {
        self.is_done()
    }
}

/// The future of a queued call.
struct Wait<T>(Arc<Slot<T>>);

impl<T> Future for Wait<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None if s.done => Poll::Ready(Err(Error::new(
                ErrorKind::Internal,
                "onnx classifier: result taken twice",
            ))),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Waits for a call on the current thread.
fn block_on<T>(wait: Wait<T>) -> Result<T, Error> {
    let slot = wait.0;
    let mut s = slot.lock();
    while s.value.is_none() && !s.done {
        s = slot
            .done
            .wait(s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    s.value.take().unwrap_or_else(|| {
        Err(Error::new(
            ErrorKind::Internal,
            "onnx classifier: no result",
        ))
    })
}

/// The deadline watcher: one thread per pool, expiring calls that overrun.
struct Watch {
    state: Mutex<WatchState>,
    cv: Condvar,
}

struct WatchState {
    entries: Vec<(Instant, Weak<dyn Expire>)>,
    /// When the watcher wakes next by itself (`None`: only when notified).
    wakes_at: Option<Instant>,
    shutdown: bool,
}

impl Watch {
    fn add(&self, at: Instant, slot: Weak<dyn Expire>) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.entries.len() >= 64 {
            s.entries
                .retain(|(_, w)| w.upgrade().is_some_and(|e| !e.finished()));
        }
        s.entries.push((at, slot));
        // Wake the watcher only when it sleeps past this deadline (with one deadline
        // for every call, a new call's is never the earliest: no wake-up per call).
        let wake = s.wakes_at.is_none_or(|w| at < w);
        drop(s);
        if wake {
            self.cv.notify_one();
        }
    }

    fn run(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if s.shutdown {
                return;
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut expired = Vec::new();
            s.entries.retain(|(at, w)| {
                let Some(e) = w.upgrade() else { return false };
                if e.finished() {
                    return false;
                }
                if *at <= now {
                    expired.push(e);
                    return false;
                }
                next = Some(next.map_or(*at, |n| n.min(*at)));
                true
            });
            if !expired.is_empty() {
                drop(s);
                for e in expired {
                    e.expire();
                }
                s = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            s.wakes_at = next;
            s = match next {
                Some(at) => {
                    self.cv
                        .wait_timeout(s, at.saturating_duration_since(now))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => self
                    .cv
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_cover_every_token_and_stop_at_the_first_that_reaches_the_end() {
        assert!(windows(0, 10, 8, 0, false).is_empty());
        assert_eq!(windows(5, 10, 8, 0, false), vec![0..5]);
        assert_eq!(windows(10, 10, 8, 0, false), vec![0..10]);
        assert_eq!(windows(11, 10, 8, 0, false), vec![0..10, 8..11]);
        assert_eq!(windows(26, 10, 8, 0, false), vec![0..10, 8..18, 16..26]);
        // Complete windows only: what a stream may classify before its end.
        assert_eq!(windows(25, 10, 8, 0, true), vec![0..10, 8..18]);
        assert_eq!(windows(26, 10, 8, 2, true), vec![16..26]);
        assert!(windows(5, 10, 8, 0, true).is_empty());
    }

    #[test]
    fn streamed_windows_are_the_whole_text_windows() {
        // Whatever prefix a stream has seen, the complete windows it classifies,
        // then the rest at the end, are exactly the whole text's windows.
        for n in 1..60 {
            let whole = windows(n, 10, 7, 0, false);
            for seen in 0..=n {
                let mut got = windows(seen, 10, 7, 0, true);
                let rest = windows(n, 10, 7, got.len(), false);
                got.extend(rest);
                assert_eq!(got, whole, "n {n}, seen {seen}");
            }
        }
    }
}
