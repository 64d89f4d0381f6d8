//! Request bodies under a size limit, and what happens to a refused one: it is read to its
//! end and discarded. A server that closes a connection while the caller is still sending
//! makes the caller's kernel see a reset, and the caller may never read the 413 it was sent;
//! nginx reads on for a while for the same reason ("lingering close"). The services and the
//! gateway both refuse this way.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};

/// At most this much of a refused body is read and discarded…
const DISCARD_BYTES: usize = 16 * 1024 * 1024;
/// …for at most this long.
const DISCARD_TIME: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CappedBodyError<E> {
    #[error("the request body went over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body failed: {0}")]
    Inner(E),
}

/// A request body streamed as it arrives, failing once it exceeds the limit (a chunked
/// upload declares no length to check beforehand); what is left of it then is discarded.
pub struct CappedBody<B> {
    inner: Option<B>,
    max: usize,
    seen: usize,
}

impl<B> CappedBody<B> {
    pub fn new(inner: B, max: usize) -> Self {
        Self {
            inner: Some(inner),
            max,
            seen: 0,
        }
    }
}

impl<B: Body> CappedBody<B> {
    /// What is left of the body, unless it has all been read (or refused).
    pub fn take_unfinished(&mut self) -> Option<B> {
        self.inner.take_if(|inner| !inner.is_end_stream())
    }
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = CappedBodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(CappedBodyError::TooLarge(this.max))));
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(CappedBodyError::Inner(e)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        this.seen += frame.data_ref().map_or(0, Bytes::len);
        if this.seen > this.max {
            if let Some(rest) = this.inner.take() {
                discard(rest);
            }
            return Poll::Ready(Some(Err(CappedBodyError::TooLarge(this.max))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, B::size_hint)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LateBodyError<E> {
    #[error("the request body did not all arrive within {} s", .0.as_secs())]
    Late(Duration),
    #[error("{0}")]
    Inner(E),
}

/// A request body that must all have arrived by a deadline. A client that sends part of a
/// body and then nothing, or a byte now and then, would otherwise hold its handler, and its
/// connection (not idle while a request is in flight), for good.
pub struct BodyWithDeadline<B> {
    inner: B,
    deadline: tokio::time::Instant,
    limit: Duration,
    /// Armed the first time the body has to wait: most bodies never do.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    late: bool,
}

impl<B> BodyWithDeadline<B> {
    /// `inner`, failing unless it has all arrived within `limit` from now.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::Instant::now() + limit,
            limit,
            timer: None,
            late: false,
        }
    }
}

impl<B: Body + Unpin> Body for BodyWithDeadline<B> {
    type Data = B::Data;
    type Error = LateBodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.late {
            return Poll::Ready(Some(Err(LateBodyError::Late(this.limit))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(polled) => Poll::Ready(polled.map(|r| r.map_err(LateBodyError::Inner))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.late = true;
                Poll::Ready(Some(Err(LateBodyError::Late(this.limit))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.late && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads what remains of a refused request's body in the background and throws it away
/// (bounded in size and time), so that the caller can finish sending and read the answer.
pub fn discard<B>(mut body: B)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    // Outside a runtime (a body dropped at shutdown) there is no one left to answer.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if body.is_end_stream() {
        return;
    }
    runtime.spawn(async move {
        let drain = async {
            let mut seen = 0;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DISCARD_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}
