//! The SSE relay: a streamed answer passed through the guard, the same for every
//! framework (the adapter only moves bytes).

use std::task::{Context, Poll};

use crate::output::SseGuard;

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
#[derive(Debug)]
pub struct SseRelay {
    sse: Option<SseGuard>,
}

impl SseRelay {
    pub(super) fn new(sse: SseGuard) -> Self {
        Self { sse: Some(sse) }
    }

    /// Takes a chunk from upstream; returns the bytes to send now (maybe none).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.sse.as_mut().map(|s| s.push(chunk)).unwrap_or_default()
    }

    /// The upstream ended (or failed): returns the last bytes to send.
    pub fn end(&mut self) -> Vec<u8> {
        self.sse.take().map(SseGuard::close).unwrap_or_default()
    }

    /// Whether nothing more will be sent.
    pub fn is_done(&self) -> bool {
        self.sse.as_ref().is_none_or(SseGuard::is_ended)
    }

    /// Polls `upstream` for chunks until there are bytes to send (`Some`), the
    /// response is over (`None`), or the upstream is pending. An upstream error
    /// ends the stream as an aborted one.
    pub fn poll_relay<D, E>(
        &mut self,
        cx: &mut Context<'_>,
        mut upstream: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<D, E>>>,
    ) -> Poll<Option<Vec<u8>>>
    where
        D: AsRef<[u8]>,
    {
        loop {
            if self.is_done() {
                // Nothing more is sent once the stream is over (or blocked);
                // dropping the upstream closes it.
                self.sse = None;
                return Poll::Ready(None);
            }
            match upstream(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let out = self.push(data.as_ref());
                    if !out.is_empty() {
                        return Poll::Ready(Some(out));
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    let out = self.end();
                    return Poll::Ready((!out.is_empty()).then_some(out));
                }
            }
        }
    }
}
