//! The outcome of an upstream call that got an answer, known once the answer's body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

use crate::Call;

/// An answer's body carrying the call it ends. The call is a success once the body has all
/// come, and a failure if the instance breaks off or stalls mid-body: judged at the head, an
/// instance that fails every answer halfway would never open its breaker. A body dropped
/// before its end (the caller hung up, or stopped taking it) says nothing of the instance,
/// and the call gives its place back.
pub(crate) struct JudgedBody<B: Body> {
    body: B,
    call: Option<Call>,
}

impl<B: Body> JudgedBody<B> {
    /// `body`, judging `call` by how it ends; none: already judged.
    pub(crate) fn new(body: B, call: Option<Call>) -> Self {
        Self { body, call }
    }

    fn judge(&mut self, success: bool) {
        if let Some(call) = self.call.take() {
            call.record(success);
        }
    }
}

impl<B: Body + Unpin> Body for JudgedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.judge(false),
            Poll::Ready(None) => this.judge(true),
            // A body of known length ends with its last frame, and hyper may not ask again.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.judge(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> Drop for JudgedBody<B> {
    fn drop(&mut self) {
        // An empty body is never polled: it ended with the head.
        if self.body.is_end_stream() {
            self.judge(true);
        }
    }
}
