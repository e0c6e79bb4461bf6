//! The SSE relay: a streamed answer passed through the guard, the same for every
//! framework (the adapter only moves bytes).

use std::fmt;
use std::task::{Context, Poll};

use crate::guard::SseGuard;
use crate::step::BoxFuture;

/// Relays a streamed OpenAI chat completion through an [`SseGuard`]: feed it the
/// upstream's chunks, send on what it returns. Answers are rebuilt event by event
/// from validated text and tool calls (fields the guard does not know, such as
/// `logprobs` or `refusal` deltas, are not relayed); a block ends the stream with an
/// error event and no `[DONE]`; an upstream that ends without `[DONE]` is an aborted
/// stream.
///
/// [`poll_relay`](Self::poll_relay) drives it from any upstream that can be polled
/// for chunks (an `http_body::Body`, a `futures` `Stream`): it returns the next bytes
/// to send, or `None` when the response is over.
pub struct SseRelay {
    /// Boxed once: each chunk's future takes it and gives it back (a pointer, not
    /// the guard's 664 bytes, moves).
    sse: Option<Box<SseGuard>>,
    /// A chunk being validated by a validator that returned a future: it owns the
    /// guard until it is done.
    busy: Option<Work>,
}

/// One chunk's validation: gives back the guard (none once the stream is closed)
/// and the bytes to send.
type Work = BoxFuture<'static, (Option<Box<SseGuard>>, Vec<u8>)>;

impl fmt::Debug for SseRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRelay")
            .field("sse", &self.sse)
            .field("busy", &self.busy.is_some())
            .finish()
    }
}

impl SseRelay {
    pub(super) fn new(sse: SseGuard) -> Self {
        Self {
            sse: Some(Box::new(sse)),
            busy: None,
        }
    }

    /// Takes a chunk from upstream; returns the bytes to send now (maybe none).
    /// Synchronous: a validator that returns a future fails the stream closed
    /// (see [`StreamGuard::push`](crate::StreamGuard::push));
    /// [`poll_relay`](Self::poll_relay) awaits them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.sse.as_mut().map(|s| s.push(chunk)).unwrap_or_default()
    }

    /// The upstream ended (or failed): returns the last bytes to send.
    pub fn end(&mut self) -> Vec<u8> {
        self.sse.take().map(|s| s.close()).unwrap_or_default()
    }

    /// Whether nothing more will be sent.
    pub fn is_done(&self) -> bool {
        self.busy.is_none() && self.sse.as_ref().is_none_or(|s| s.is_ended())
    }

    /// Polls `upstream` for chunks until there are bytes to send (`Some`), the
    /// response is over (`None`), or the upstream (or a validator) is pending. An
    /// upstream error ends the stream as an aborted one. Validators that return a
    /// future (a model-backed one) are awaited here, chunk by chunk.
    pub fn poll_relay<D, E>(
        &mut self,
        cx: &mut Context<'_>,
        mut upstream: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<D, E>>>,
    ) -> Poll<Option<Vec<u8>>>
    where
        D: AsRef<[u8]>,
    {
        loop {
            if let Some(busy) = &mut self.busy {
                let Poll::Ready((sse, out)) = busy.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.busy = None;
                self.sse = sse;
                if !out.is_empty() {
                    return Poll::Ready(Some(out));
                }
                continue;
            }
            if self.is_done() {
                // Nothing more is sent once the stream is over (or blocked);
                // dropping the upstream closes it.
                self.sse = None;
                return Poll::Ready(None);
            }
            let Some(mut sse) = self.sse.take() else {
                return Poll::Ready(None);
            };
            let work: Work = match upstream(cx) {
                Poll::Pending => {
                    self.sse = Some(sse);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(data))) => {
                    let data = data.as_ref().to_vec();
                    Box::pin(async move {
                        let out = sse.push_async(&data).await;
                        (Some(sse), out)
                    })
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    Box::pin(async move { (None, sse.close_async().await) })
                }
            };
            self.busy = Some(work);
        }
    }
}
