//! The outcome of an upstream call that got an answer, known once the answer's body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

use crate::Call;
use crate::forward::BodyState;

/// An answer's body carrying the call it ends. The call is a success once the body has all
/// come, and a failure if the instance breaks off or stalls mid-body: judged at the head, an
/// instance that fails every answer halfway would never open its breaker. A body dropped
/// before its end (the caller hung up, or stopped taking it) says nothing of the instance,
/// and the call gives its place back; so does one broken off because the caller's own body,
/// still going out beside it, failed (outgrew the limit, or was broken off by the caller).
///
/// A half-open trial's answer also tells the breaker when it waits on its caller: from its
/// head, and from each part handed on, until it is asked for more. A trial whose caller
/// leaves it untaken too long gives its place to another (`BreakerConfig::trial_caller_wait`).
pub(crate) struct JudgedBody<B: Body> {
    body: B,
    call: Option<Call>,
    /// A trial whose breaker was told its answer waits on the caller.
    waiting_on_caller: bool,
    /// The caller's body going out beside the answer, if the request had one.
    callers_body: Option<Arc<BodyState>>,
}

impl<B: Body> JudgedBody<B> {
    /// `body`, judging `call` by how it ends; none: already judged. `callers_body`: the
    /// state of the request's body, if it had one.
    pub(crate) fn new(body: B, call: Option<Call>, callers_body: Option<Arc<BodyState>>) -> Self {
        let mut judged = Self {
            body,
            call,
            waiting_on_caller: false,
            callers_body,
        };
        judged.wait_on_caller(true);
        judged
    }

    /// For a trial still to be judged: tells its breaker whether its answer waits on the
    /// caller, when that changes. Other calls' answers cost nothing here.
    fn wait_on_caller(&mut self, waiting: bool) {
        if let Some(call) = self.call.as_ref().filter(|c| c.is_trial())
            && waiting != self.waiting_on_caller
        {
            self.waiting_on_caller = waiting;
            if !call.waits_on_caller(waiting) {
                // Its place has gone to another trial: nothing left to judge or tell.
                self.call = None;
            }
        }
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
        this.wait_on_caller(false);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) if this.callers_body.as_ref().is_some_and(|b| b.failed()) => {
                // The caller's fault, not the instance's: no outcome.
                if let Some(call) = this.call.take() {
                    call.release();
                }
            }
            Poll::Ready(Some(Err(_))) => this.judge(false),
            Poll::Ready(None) => this.judge(true),
            // A body of known length ends with its last frame, and trailers are always the
            // last: hyper does not ask again after either.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.body.is_end_stream() => {
                this.judge(true)
            }
            Poll::Ready(Some(Ok(_))) => this.wait_on_caller(true),
            Poll::Pending => {}
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
    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Bytes;
    use poem::http::HeaderMap;

    use super::*;
    use crate::Upstream;
    use crate::breaker::{BreakerConfig, StateName};

    type Frames = [Result<Frame<Bytes>, std::io::Error>; 2];

    /// An upstream whose breaker is half-open with one trial place: the next call's outcome
    /// alone decides.
    async fn half_open_upstream() -> Arc<Upstream> {
        let config = BreakerConfig {
            window: 1,
            half_open_calls: 1,
            ..BreakerConfig::default()
        };
        let upstream = Upstream::with_breaker(config);
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
        JudgedBody::new(
            StreamBody::new(futures::stream::iter(frames)),
            Some(call),
            None,
        )
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

    #[tokio::test(start_paused = true)]
    async fn a_trial_answer_its_caller_leaves_untaken_gives_its_place_to_another() {
        let upstream = half_open_upstream().await;
        let wait = BreakerConfig::default().trial_caller_wait;
        let mut untaken = std::pin::pin!(trial(&upstream, broken_off()));
        // The caller takes the first part, then takes nothing more.
        untaken.frame().await.unwrap().unwrap();
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(
            upstream.acquire().is_err(),
            "the place is kept while the caller may yet take the answer"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let replacement = upstream
            .acquire()
            .expect("the place of a trial left untaken goes to another");
        // The trial that lost its place is no longer judged, whatever its end.
        untaken.frame().await.unwrap().unwrap_err();
        assert_eq!(state(&upstream), StateName::HalfOpen);
        replacement.record(true);
        assert_eq!(state(&upstream), StateName::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_answer_not_yet_asked_for_is_left_untaken_too() {
        let upstream = half_open_upstream().await;
        let _untaken = trial(&upstream, broken_off());
        tokio::time::advance(BreakerConfig::default().trial_caller_wait).await;
        assert!(upstream.acquire().is_ok(), "its place went to another");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_answer_waiting_on_its_instance_keeps_its_place() {
        let upstream = half_open_upstream().await;
        let (more, rest) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let call = upstream.acquire().unwrap();
        let mut body = std::pin::pin!(JudgedBody::new(StreamBody::new(rest), Some(call), None));
        // The caller asks for the answer; the instance has sent nothing yet.
        assert!(futures::poll!(body.frame()).is_pending());
        tokio::time::advance(BreakerConfig::default().trial_caller_wait * 2).await;
        assert!(
            upstream.acquire().is_err(),
            "an instance slow to answer is no caller's delay"
        );
        drop(more);
        assert!(body.frame().await.is_none());
        assert_eq!(state(&upstream), StateName::Closed);
    }
}
