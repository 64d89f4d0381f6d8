//! The caller's request body at the gateway: streamed upstream under the size limit, and,
//! when refused, read to its end and discarded. A server that closes a connection while the
//! caller is still sending makes the caller's kernel see a reset, and the caller may never
//! read the 413 it was sent; nginx reads on for a while for the same reason ("lingering
//! close").

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// At most this much of a refused body is read and discarded…
const DISCARD_BYTES: usize = 16 * 1024 * 1024;
/// …for at most this long.
const DISCARD_TIME: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ForwardBodyError {
    #[error("the request body went over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body failed: {0}")]
    Incoming(#[from] hyper::Error),
}

/// A request body on its way upstream: the caller's, streamed as it arrives, failing once
/// it exceeds the limit (a chunked upload declares no length to check beforehand); what is
/// left of it then is discarded.
pub struct CappedBody {
    inner: Option<Incoming>,
    max: usize,
    seen: usize,
}

impl CappedBody {
    pub fn new(inner: Incoming, max: usize) -> Self {
        Self {
            inner: Some(inner),
            max,
            seen: 0,
        }
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = ForwardBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(ForwardBodyError::TooLarge(this.max))));
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        this.seen += frame.data_ref().map_or(0, Bytes::len);
        if this.seen > this.max {
            if let Some(rest) = this.inner.take() {
                discard(rest);
            }
            return Poll::Ready(Some(Err(ForwardBodyError::TooLarge(this.max))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, Incoming::size_hint)
    }
}

/// Reads what remains of a refused request's body in the background and throws it away
/// (bounded in size and time), so that the caller can finish sending and read the answer.
pub fn discard(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
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
