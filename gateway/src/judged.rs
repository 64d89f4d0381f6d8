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
            // A body of known length ends with its last frame, and trailers are always the
            // last: hyper does not ask again after either.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.body.is_end_stream() => {
                this.judge(true)
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Bytes;
    use poem::http::HeaderMap;

    use super::*;
    use crate::Upstream;
    use crate::breaker::{Breaker, BreakerConfig, StateName};

    type Frames = [Result<Frame<Bytes>, std::io::Error>; 2];

    /// An upstream whose breaker is half-open with one trial place: the next call's outcome
    /// alone decides.
    async fn half_open_upstream() -> Arc<Upstream> {
        let config = BreakerConfig {
            window: 1,
            half_open_calls: 1,
            ..BreakerConfig::default()
        };
        let upstream = Arc::new(Upstream::new("products", Breaker::new(config)));
        upstream.acquire().unwrap().record(false);
        tokio::time::advance(config.open_for).await;
        upstream
    }

    /// A trial call to `upstream` whose answer's body is `frames`.
    fn trial(
        upstream: &Arc<Upstream>,
        frames: Frames,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let call = upstream.acquire().expect("a trial place is free");
        JudgedBody::new(StreamBody::new(futures::stream::iter(frames)), Some(call))
    }

    fn broken_off() -> Frames {
        [
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("the instance broke off")),
        ]
    }

    fn state(upstream: &Upstream) -> StateName {
        upstream.breaker().state()
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ending_with_trailers_is_a_success() {
        let upstream = half_open_upstream().await;
        let frames = [
            Ok(Frame::data(Bytes::from_static(b"answer"))),
            Ok(Frame::trailers(HeaderMap::new())),
        ];
        let mut body = std::pin::pin!(trial(&upstream, frames));
        // hyper stops at the trailers, and drops the body without asking for more.
        while !body.frame().await.unwrap().unwrap().is_trailers() {}
        assert_eq!(state(&upstream), StateName::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_in_part_is_no_outcome_and_one_broken_off_a_failure() {
        let upstream = half_open_upstream().await;
        {
            let mut body = std::pin::pin!(trial(&upstream, broken_off()));
            body.frame().await.unwrap().unwrap();
        }
        assert_eq!(state(&upstream), StateName::HalfOpen, "no outcome");
        let mut body = std::pin::pin!(trial(&upstream, broken_off()));
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap_err();
        assert_eq!(state(&upstream), StateName::Open);
    }
}
