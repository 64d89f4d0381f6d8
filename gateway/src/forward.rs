//! The connections one worker keeps to upstream instances: hyper's HTTP/1.1 client
//! connections, one request at a time each, taken again for the next request once the
//! response body has been read to its end. Bodies pass through unbuffered and with their
//! sizes, so a request or response that has a Content-Length keeps it.
//!
//! Why not hyper-util's pooled client: it hands a connection back to its pool by spawning a
//! task per request that waits for the connection to become ready again, and every checkout
//! locks a pool that may be shared between threads and hashes a (scheme, authority) key.
//! A worker's connections are its own, and a connection is handed back by the response body
//! that read it to the end, with no task of its own.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use platform::body_limit::{CappedBody, CappedBodyError};
use poem::http::uri::Authority;
use poem::http::{Method, Request, Response};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// The caller's body on its way upstream: none, or the caller's under the gateway's size
/// limit, telling how far it has gone. A request without one can be copied and sent again.
#[derive(Default)]
pub enum ForwardBody {
    #[default]
    Empty,
    Capped {
        body: CappedBody<Incoming>,
        sent: Option<oneshot::Sender<()>>,
        state: Arc<BodyState>,
    },
}

/// What a caller's body on its way upstream tells those waiting on the exchange.
#[derive(Debug, Default)]
pub struct BodyState {
    /// Whether it waits for the caller's next bytes, rather than for the upstream to take the
    /// last ones (or for a connection to it).
    waiting_on_caller: AtomicBool,
    /// Whether it failed: it outgrew the limit, or could not be read (the caller gone
    /// mid-body, say). The exchange fails with it, an answer already under way included,
    /// through the caller's fault.
    failed: AtomicBool,
}

impl BodyState {
    /// A body that is, or is not, waiting for the caller's next bytes.
    #[cfg(test)]
    pub fn waiting(waiting_on_caller: bool) -> Self {
        Self {
            waiting_on_caller: AtomicBool::new(waiting_on_caller),
            failed: AtomicBool::new(false),
        }
    }

    pub fn waiting_on_caller(&self) -> bool {
        self.waiting_on_caller.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// How far a caller's body has gone upstream.
pub struct BodyProgress {
    /// Resolves once the body has all been sent; closed if it failed, or was dropped unsent.
    pub sent: oneshot::Receiver<()>,
    pub state: Arc<BodyState>,
}

impl BodyProgress {
    /// A body's progress, as `state` tells it, resolving when `sent` is.
    pub fn new(sent: oneshot::Receiver<()>, state: Arc<BodyState>) -> Self {
        Self { sent, state }
    }
}

impl ForwardBody {
    /// The body, and for one that is not empty, its progress.
    pub fn new(body: Incoming, max: usize) -> (Self, Option<BodyProgress>) {
        if body.is_end_stream() {
            return (Self::Empty, None);
        }
        let (sent, all_sent) = oneshot::channel();
        let state = Arc::new(BodyState::default());
        let body = Self::Capped {
            body: CappedBody::new(body, max),
            sent: Some(sent),
            state: state.clone(),
        };
        (body, Some(BodyProgress::new(all_sent, state)))
    }
}

impl Drop for ForwardBody {
    fn drop(&mut self) {
        // Dropped unfinished (its connection failed, or was given up or dropped while the
        // instance had not taken it all), the caller's body is read on and thrown away: a
        // connection closed on a caller still sending resets it, and it may never read its
        // answer.
        if let Self::Capped { body, .. } = self
            && let Some(rest) = body.take_unfinished()
        {
            platform::body_limit::discard(rest);
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = CappedBodyError<hyper::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Capped { body, sent, state } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                state
                    .waiting_on_caller
                    .store(polled.is_pending(), Ordering::Relaxed);
                if let Poll::Ready(Some(Err(_))) = polled {
                    // Before hyper sees the error, and fails the answer's body with one of
                    // its own that does not say whose it was.
                    state.failed.store(true, Ordering::Release);
                }
                // A body of known length may end with its last frame, not a final None.
                if (matches!(polled, Poll::Ready(None)) || body.is_end_stream())
                    && let Some(sent) = sent.take()
                {
                    let _ = sent.send(());
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Capped { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Capped { body, .. } => body.size_hint(),
        }
    }
}

/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection older than this is closed rather than reused (the instances close
/// theirs a little later).
const IDLE_TIMEOUT: Duration = platform::runtime::IDLE_CONNECTION_REUSE;
/// At most this many idle connections are kept per instance.
const MAX_IDLE_PER_INSTANCE: usize = 256;
/// A request goes out with a copy to send again (see `repeatable_copy`) only on a connection
/// idle at least this long. An instance closes a connection it keeps open for reuse only
/// once it has been idle for its keep-alive limit (seconds, at the least; ours are 30 s), or
/// when it shuts down, which it does only after leaving discovery and a grace period
/// (platform::runtime::Shutdown). A connection used moments ago is not about to be closed;
/// copying each request sent on one was 1.4k instructions of the 38k a proxied request takes.
const REPEAT_AFTER_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority} failed: {source}")]
    Connect {
        authority: Authority,
        source: std::io::Error,
    },
    #[error("connecting to {0} took longer than {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(Authority),
    #[error("the HTTP exchange with the instance failed: {0}")]
    Http(#[source] hyper::Error),
}

/// One connection to an instance: where requests go in, and the task that drives it.
struct Connection<B> {
    sender: SendRequest<B>,
    task: AbortOnDrop,
}

/// A connection's task, aborted when the connection is dropped, wherever that happens: given
/// up before its answer (the limit passed), its answer's body dropped unfinished, or taken out
/// of the idle ones (expired, closed, or one too many). Dropping the sender alone ends the task
/// only once the connection is idle; one still sending a body the instance does not take (it
/// answered without reading it, and does not read on) would hold its socket, and the caller's
/// body, for as long as the instance keeps the connection open.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct IdleConnection<B> {
    conn: Connection<B>,
    since: Instant,
}

impl<B> IdleConnection<B> {
    /// Neither closed by the instance nor idle for too long.
    fn is_usable(&self, now: Instant) -> bool {
        !self.conn.sender.is_closed() && now.duration_since(self.since) <= IDLE_TIMEOUT
    }
}

struct IdleConnections<B> {
    /// Per instance: a worker talks to a handful, found faster by a scan comparing bytes
    /// than by hashing an authority (which lowercases it byte by byte).
    by_instance: Vec<(Authority, Vec<IdleConnection<B>>)>,
    last_sweep: Option<Instant>,
}

impl<B> IdleConnections<B> {
    fn position(&self, authority: &Authority) -> Option<usize> {
        self.by_instance
            .iter()
            .position(|(a, _)| a.as_str() == authority.as_str())
    }

    fn of(&mut self, authority: &Authority) -> Option<&mut Vec<IdleConnection<B>>> {
        let i = self.position(authority)?;
        Some(&mut self.by_instance[i].1)
    }
}

/// One worker's connections to the upstream instances, sending request bodies of type `B`.
pub struct UpstreamClient<B = ForwardBody> {
    idle: Arc<Mutex<IdleConnections<B>>>,
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        Self {
            idle: self.idle.clone(),
        }
    }
}

impl<B> Default for UpstreamClient<B> {
    fn default() -> Self {
        Self {
            idle: Arc::new(Mutex::new(IdleConnections {
                by_instance: Vec::new(),
                last_sweep: None,
            })),
        }
    }
}

/// The idle connections themselves: taken out for a request, put back after its answer.
impl<B> UpstreamClient<B> {
    fn lock(&self) -> MutexGuard<'_, IdleConnections<B>> {
        self.idle
            .lock()
            .expect("upstream connections lock poisoned")
    }

    /// The most recently used idle connection to `authority` that is ready for a request,
    /// and how long it has been idle. Closed and expired ones are dropped; ones not ready
    /// yet (their connection task has not caught up with the end of the last response) stay
    /// for later.
    fn checkout(&self, authority: &Authority) -> Option<(Connection<B>, Duration)> {
        let mut idle = self.lock();
        let conns = idle.of(authority)?;
        let now = Instant::now();
        let mut not_ready = Vec::new();
        let mut found = None;
        while let Some(conn) = conns.pop() {
            if !conn.is_usable(now) {
                continue;
            }
            if conn.conn.sender.is_ready() {
                found = Some((conn.conn, now.duration_since(conn.since)));
                break;
            }
            not_ready.push(conn);
        }
        conns.extend(not_ready.into_iter().rev());
        found
    }

    /// Puts a connection whose answer has been read back among the idle ones.
    fn put_back(&self, authority: Authority, conn: Connection<B>) {
        let now = Instant::now();
        let mut idle = self.lock();
        // Connections to instances no longer asked for are not checked out again: drop the
        // closed and expired ones of every instance now and then.
        if idle
            .last_sweep
            .is_none_or(|at| now.duration_since(at) > IDLE_TIMEOUT)
        {
            idle.last_sweep = Some(now);
            for (_, conns) in &mut idle.by_instance {
                conns.retain(|c| c.is_usable(now));
            }
            idle.by_instance.retain(|(_, conns)| !conns.is_empty());
        }
        let i = idle.position(&authority).unwrap_or_else(|| {
            idle.by_instance.push((authority, Vec::new()));
            idle.by_instance.len() - 1
        });
        let conns = &mut idle.by_instance[i].1;
        if conns.len() >= MAX_IDLE_PER_INSTANCE {
            conns.remove(0);
        }
        conns.push(IdleConnection { conn, since: now });
    }
}

impl<B> UpstreamClient<B>
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `req` (origin-form URI, Host set) to the instance at `authority` on an idle
    /// connection to it, or on a new one.
    #[cfg(test)]
    pub async fn request(
        &self,
        authority: &Authority,
        req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        self.request_or_elsewhere(authority, req, |_, _, _| None)
            .await
    }

    /// As `request`; but when no connection to the instance can be made, and so nothing of
    /// the request has gone out, `elsewhere` may name another instance (having re-addressed
    /// the request for it), which is tried instead.
    pub async fn request_or_elsewhere(
        &self,
        authority: &Authority,
        mut req: Request<B>,
        mut elsewhere: impl FnMut(&mut Request<B>, &Authority, &UpstreamError) -> Option<Authority>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        let mut instead: Option<Authority> = None;
        loop {
            let authority = instead.as_ref().unwrap_or(authority);
            let (Connection { mut sender, task }, idle_for) = match self.checkout(authority) {
                Some((conn, idle_for)) => (conn, Some(idle_for)),
                None => match self.connect(authority).await {
                    Ok(conn) => (conn, None),
                    Err(unreachable) => match elsewhere(&mut req, authority, &unreachable) {
                        Some(other) => {
                            instead = Some(other);
                            continue;
                        }
                        None => return Err(unreachable),
                    },
                },
            };
            let reused = idle_for.is_some();
            let again = idle_for
                .filter(|idle_for| *idle_for >= REPEAT_AFTER_IDLE)
                .and_then(|_| repeatable_copy(&req))
                // Boxed: kept across the send, it would add a request's size to every
                // request's future, and it is rarely made.
                .map(Box::new);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        inner: body,
                        finished: false,
                        stall_limit: None,
                        stalled_at: None,
                        give_back: Some(GiveBack {
                            client: self.clone(),
                            authority: authority.clone(),
                            conn: Connection { sender, task },
                        }),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                // An idle connection the instance closed just as the request went out: the
                // request was not sent, so it goes again on another connection.
                Err(mut failed) if reused && failed.message().is_some() => {
                    req = failed.take_message().expect("checked above");
                }
                Err(failed) => {
                    // The instance closed an idle connection just after the request went out
                    // on it, before any answer (an instance shutting down does): a request
                    // that may be repeated goes again on another connection.
                    match again.filter(|_| failed.error().is_incomplete_message()) {
                        Some(copy) => req = *copy,
                        None => return Err(UpstreamError::Http(failed.into_error())),
                    }
                }
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Connection<B>, UpstreamError> {
        let connect_error = |source| UpstreamError::Connect {
            authority: authority.clone(),
            source,
        };
        let connecting = tokio::net::TcpStream::connect(authority.as_str());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(authority.clone()))?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        // One buffer written at once, as the gateway's server side does (see
        // platform::runtime::serve_connections_with).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        let task = AbortOnDrop(
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            })
            .abort_handle(),
        );
        Ok(Connection { sender, task })
    }
}

/// A copy of `req` to send again should its connection fail before any answer, when it may be
/// sent twice: an idempotent method (RFC 9110 §9.2.2) and no body.
fn repeatable_copy<B: Body + Default>(req: &Request<B>) -> Option<Request<B>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(B::default());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// What hands a connection back once its response has been read.
struct GiveBack<B> {
    client: UpstreamClient<B>,
    authority: Authority,
    conn: Connection<B>,
}

/// An upstream's response body: once read to its end, its connection goes back to the
/// worker's idle connections; dropped before that, the connection closes with it.
pub struct PooledBody<B = ForwardBody> {
    inner: Incoming,
    finished: bool,
    give_back: Option<GiveBack<B>>,
    /// How long the instance may go without sending any of the body, once it has been asked
    /// for more; none by default.
    stall_limit: Option<Duration>,
    /// Armed when the body is asked for more and has none yet, dropped when some comes.
    stalled_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why an answer's body could not be passed on whole.
#[derive(Debug, thiserror::Error)]
pub enum AnswerBodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the instance sent nothing more of its answer for {0:?}")]
    Stalled(Duration),
}

impl<B> PooledBody<B> {
    /// Fails the body once the instance has sent nothing of it for `limit` while more was
    /// wanted: an instance that sent the head and hangs would otherwise hold the caller (and
    /// the connection) for good. The timer is armed only when the body has to wait.
    pub fn limit_stalls(&mut self, limit: Duration) {
        self.stall_limit = Some(limit);
    }
}

impl<B> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = AnswerBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerBodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Pending => {
                if let Some(limit) = this.stall_limit {
                    let stalled_at = this
                        .stalled_at
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if stalled_at.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(AnswerBodyError::Stalled(limit))));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(polled) => {
                this.stalled_at = None;
                if polled.is_none() {
                    this.finished = true;
                }
                Poll::Ready(polled.map(|frame| frame.map_err(AnswerBodyError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for PooledBody<B> {
    fn drop(&mut self) {
        if (self.finished || self.inner.is_end_stream())
            && let Some(give_back) = self.give_back.take()
        {
            give_back
                .client
                .put_back(give_back.authority, give_back.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What an instance does after answering a connection's first request.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        /// Answers every request.
        AnswersAll,
        /// Closes the connection at once, without saying so, as an instance that timed an
        /// idle connection out would.
        Closes,
        /// Reads the next request and closes the connection without answering it: what the
        /// client sees when the instance closes an idle connection just as a request goes out
        /// on it (as an instance shutting down does).
        ClosesOnNextRequest,
    }

    /// An HTTP/1.1 instance that counts the connections it accepts and answers requests with
    /// `body`, as `then` says. It answers a request as soon as its head is in, before reading
    /// its body, as an instance refusing a body does.
    async fn instance_answering(then: Then, body: Bytes) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut answered = 0;
                    while let Some(end) = read_head(&mut stream, &mut received).await {
                        let body_len = content_length(&received[..end]);
                        received.drain(..end + 4);
                        if answered > 0 && then == Then::ClosesOnNextRequest {
                            return;
                        }
                        let written = stream.write_all(head.as_bytes()).await.is_ok()
                            && stream.write_all(&body).await.is_ok();
                        answered += 1;
                        if !written
                            || then == Then::Closes
                            || !read_body(&mut stream, &mut received, body_len).await
                        {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    /// Reads into `received` until it holds a request's head; where the head ends, or `None`
    /// once the client has closed.
    async fn read_head(stream: &mut TcpStream, received: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end);
            }
            if !read_more(stream, received).await {
                return None;
            }
        }
    }

    /// Reads and forgets a body of `len` bytes, of which `received` may hold a part; false
    /// if the client closed first.
    async fn read_body(stream: &mut TcpStream, received: &mut Vec<u8>, mut len: usize) -> bool {
        loop {
            let held = len.min(received.len());
            received.drain(..held);
            len -= held;
            if len == 0 {
                return true;
            }
            if !read_more(stream, received).await {
                return false;
            }
        }
    }

    /// Appends what the client sends next to `received`; false once it has closed.
    async fn read_more(stream: &mut TcpStream, received: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 64 * 1024];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    fn content_length(head: &[u8]) -> usize {
        String::from_utf8_lossy(head)
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0)
    }

    async fn instance(then: Then) -> (Authority, Arc<AtomicUsize>) {
        instance_answering(then, Bytes::from_static(b"ok")).await
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/x")
            .header("host", "upstream")
            .body(Empty::new())
            .unwrap()
    }

    async fn read_to_end<B>(resp: Response<PooledBody<B>>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_carries_the_next_request() {
        let (authority, accepted) = instance(Then::AnswersAll).await;
        let client = UpstreamClient::default();
        for _ in 0..5 {
            let resp = client.request(&authority, get()).await.unwrap();
            assert_eq!(read_to_end(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_unread_closes_its_connection() {
        let (authority, accepted) = instance(Then::AnswersAll).await;
        let client = UpstreamClient::default();
        let unread = client.request(&authority, get()).await.unwrap();
        assert_eq!(unread.status(), 200);
        drop(unread);
        let resp = client.request(&authority, get()).await.unwrap();
        assert_eq!(read_to_end(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_and_reuse_them() {
        let (authority, accepted) = instance(Then::AnswersAll).await;
        let client = UpstreamClient::default();
        for _ in 0..3 {
            // Four responses held at once need four connections; read, they serve the
            // next four.
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(client.request(&authority, get()).await.unwrap());
            }
            for resp in held {
                assert_eq!(read_to_end(resp).await, "ok");
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_used_again() {
        let (authority, accepted) = instance(Then::Closes).await;
        let client = UpstreamClient::default();
        for _ in 0..3 {
            let resp = client.request(&authority, get()).await.unwrap();
            assert_eq!(read_to_end(resp).await, "ok");
            // Time for the connection's task to see the instance's close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_long_body_read_to_its_end_carries_the_next_request() {
        // Many reads of the instance's socket before the connection is free again.
        let long = Bytes::from(vec![b'x'; 4 << 20]);
        let (authority, accepted) = instance_answering(Then::AnswersAll, long.clone()).await;
        let client = UpstreamClient::default();
        for _ in 0..3 {
            let resp = client.request(&authority, get()).await.unwrap();
            assert_eq!(read_to_end(resp).await, long);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_body_still_going_out_when_the_answer_has_ended_is_sent_on() {
        let (authority, accepted) = instance(Then::AnswersAll).await;
        let client = UpstreamClient::default();
        // Larger than loopback's socket buffers, and answered before it is read: most of it
        // is still to go when the answer has been read.
        let body = Bytes::from(vec![b'x'; 16 << 20]);
        for _ in 0..3 {
            let post = Request::post("/x")
                .header("host", "upstream")
                .body(Full::new(body.clone()))
                .unwrap();
            let resp = client.request(&authority, post).await.unwrap();
            assert_eq!(read_to_end(resp).await, "ok");
            // The connection is ready again once the whole body has gone out.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !client.lock().of(&authority).unwrap()[0]
                .conn
                .sender
                .is_ready()
            {
                assert!(
                    Instant::now() < deadline,
                    "the connection did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A request body that sends a first part and then never ends.
    #[derive(Default)]
    struct NeverEnding {
        first_sent: bool,
    }

    impl Body for NeverEnding {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.first_sent, true) {
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
        }
    }

    /// Expired, closed or one too many, an idle connection is dropped; one still sending a
    /// body the instance answered without reading is closed with it, not left sending on.
    #[tokio::test]
    async fn a_connection_dropped_while_still_sending_a_body_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let (closed, seen_closed) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            read_head(&mut stream, &mut received).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(answer).await.unwrap();
            while read_more(&mut stream, &mut received).await {}
            let _ = closed.send(());
        });
        let client = UpstreamClient::default();
        let post = Request::post("/x")
            .header("host", "upstream")
            .body(NeverEnding::default())
            .unwrap();
        let resp = client.request(&authority, post).await.unwrap();
        assert_eq!(read_to_end(resp).await, "ok");
        assert!(
            !client.lock().of(&authority).unwrap()[0]
                .conn
                .sender
                .is_ready(),
            "put back still sending its body"
        );
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), seen_closed)
            .await
            .expect("the instance saw its connection closed")
            .unwrap();
    }

    /// A client with one connection, idle long enough to be closed by an instance's
    /// keep-alive limit, which the instance will close unanswered as the next request goes
    /// out on it.
    async fn idle_connection_closing_on_next_request()
    -> (Authority, Arc<AtomicUsize>, UpstreamClient<Empty<Bytes>>) {
        let (authority, accepted) = instance(Then::ClosesOnNextRequest).await;
        let client = UpstreamClient::default();
        let resp = client.request(&authority, get()).await.unwrap();
        assert_eq!(read_to_end(resp).await, "ok");
        tokio::time::sleep(REPEAT_AFTER_IDLE).await;
        (authority, accepted, client)
    }

    #[tokio::test]
    async fn a_request_on_an_idle_connection_closed_as_it_was_sent_goes_again_on_a_new_one() {
        let (authority, accepted, client) = idle_connection_closing_on_next_request().await;
        let resp = client.request(&authority, get()).await.unwrap();
        assert_eq!(read_to_end(resp).await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "answered on a second connection"
        );
    }

    #[tokio::test]
    async fn a_post_on_an_idle_connection_closed_as_it_was_sent_is_not_sent_twice() {
        let (authority, accepted, client) = idle_connection_closing_on_next_request().await;
        let mut post = get();
        *post.method_mut() = Method::POST;
        // The instance may have acted on it: only the caller can tell whether to repeat it.
        let Err(err) = client.request(&authority, post).await else {
            panic!("a POST was sent again");
        };
        assert!(
            matches!(&err, UpstreamError::Http(e) if e.is_incomplete_message()),
            "{err:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_instance_that_is_gone_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        drop(listener);
        let client = UpstreamClient::default();
        let Err(err) = client.request(&authority, get()).await else {
            panic!("a request to a closed port was answered");
        };
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_answer_whose_instance_stops_sending_fails_after_the_stall_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream, &mut Vec::new()).await;
            let part = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
            stream.write_all(part).await.unwrap();
            // Nothing more, and the connection kept open.
            std::future::pending::<()>().await;
            drop(stream);
        });
        let client = UpstreamClient::default();
        let mut body = client.request(&authority, get()).await.unwrap().into_body();
        let limit = Duration::from_millis(200);
        body.limit_stalls(limit);
        let started = Instant::now();
        let err = body.collect().await.unwrap_err();
        assert!(matches!(err, AnswerBodyError::Stalled(_)), "{err:?}");
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
