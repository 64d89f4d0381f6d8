//! The request context: request id, W3C traceparent, per-route metrics, access log, and
//! the conversion of every error into problem+json inside the request's scope (so the
//! problem's `instance` is the request id).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use poem::http::HeaderValue;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::OperationId;

use crate::body_limit::{self, BodyWithDeadline, CappedBody, CappedBodyError, LateBodyError};
use crate::metrics::RouteMetrics;
use crate::problem::{Problem, into_problem_response};

pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: RequestInfo;
}

#[derive(Clone, Debug)]
struct RequestInfo {
    request_id: String,
    traceparent: Option<String>,
}

/// The id of the request being served, if any.
pub fn request_id() -> Option<String> {
    CURRENT.try_with(|c| c.request_id.clone()).ok()
}

/// The W3C traceparent of the request being served, if any.
pub fn traceparent() -> Option<String> {
    CURRENT.try_with(|c| c.traceparent.clone()).ok().flatten()
}

/// Middleware that gives every request an id, limits the body, measures it and turns errors
/// into problem+json.
pub struct RequestContext {
    service: &'static str,
    max_body_bytes: usize,
    metrics: Arc<RouteMetrics>,
}

impl RequestContext {
    pub fn new(service: &'static str, max_body_bytes: usize) -> Self {
        Self {
            service,
            max_body_bytes,
            metrics: Arc::new(RouteMetrics::new(service)),
        }
    }
}

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        RequestContextEndpoint {
            inner,
            service: self.service,
            max_body_bytes: self.max_body_bytes,
            metrics: self.metrics.clone(),
        }
    }
}

pub struct RequestContextEndpoint<E> {
    inner: E,
    service: &'static str,
    max_body_bytes: usize,
    metrics: Arc<RouteMetrics>,
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let request_id = request_id_of(req.headers());
        let traceparent = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let method = crate::metrics::method_label(req.method());
        let mut access = AccessRecord {
            service: self.service,
            metrics: &self.metrics,
            request_id: &request_id,
            method,
            started,
            recorded: false,
        };
        let info = RequestInfo {
            request_id: request_id.as_str().to_owned(),
            traceparent,
        };
        let max = self.max_body_bytes;
        let resp = CURRENT
            .scope(info, async move {
                let body = req.take_body();
                if let Some(too_large) = declared_body_too_large(req.headers(), max) {
                    body_limit::discard(BoxBody::from(body));
                    return too_large.into_response();
                }
                // An empty body (most requests) has no limit to go over.
                let refusal = (!body.is_empty()).then(|| {
                    let refusal = Arc::new(OnceLock::new());
                    req.set_body(capped_body(body, max, refusal.clone()));
                    refusal
                });
                let mut resp = match self.inner.call(req).await {
                    Ok(resp) => resp.into_response(),
                    Err(err) => {
                        let operation = err.data::<OperationId>().copied();
                        let mut resp = into_problem_response(err);
                        if let Some(op) = operation {
                            resp.set_data(op);
                        }
                        resp
                    }
                };
                if let Some(refused) = refusal.and_then(|r| r.get().copied()) {
                    // The handler saw its body fail as it read it, and answered that; the
                    // caller needs to hear why.
                    let operation = resp.data::<OperationId>().copied();
                    resp = match refused {
                        Refused::TooLarge => Problem::body_too_large(max),
                        Refused::TooSlow => body_too_slow(),
                    }
                    .into_response();
                    if let Some(op) = operation {
                        resp.set_data(op);
                    }
                }
                resp
            })
            .await;
        let mut resp = resp;
        resp.headers_mut()
            .insert(REQUEST_ID, request_id.header_value());
        access.record(crate::metrics::route_label(&resp), resp.status().as_u16());
        Ok(resp)
    }
}

/// Status recorded for a request whose client went away before its answer was ready (nginx
/// logs the same).
const CLIENT_WENT_AWAY: u16 = 499;

/// A request's line in the access log and count in the metrics, made once: when its answer
/// is ready, or, should its client go away first (the handler is then dropped where it
/// was), as `CLIENT_WENT_AWAY`, so operators see the requests callers gave up on.
struct AccessRecord<'a> {
    service: &'static str,
    metrics: &'a RouteMetrics,
    request_id: &'a RequestId,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

impl AccessRecord<'_> {
    fn record(&mut self, route: &'static str, status: u16) {
        self.recorded = true;
        let elapsed = self.started.elapsed().as_secs_f64();
        self.metrics.record(self.method, route, status, elapsed);
        tracing::info!(target: "access", service = self.service, request_id = %self.request_id, method = self.method, route, status, elapsed_ms = elapsed * 1000.0);
    }
}

impl Drop for AccessRecord<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.record("other", CLIENT_WENT_AWAY);
        }
    }
}

/// The id a request goes by, as text and as the header value it travels in (made once: a
/// proxied request sends it upstream and back to its caller).
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only valid ids (ASCII) are made.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id a request goes by: the caller's `X-Request-Id` when it is a sensible one, else a
/// new one.
pub fn request_id_of(headers: &poem::http::HeaderMap) -> RequestId {
    headers
        .get(REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(valid_request_id))
        .map_or_else(new_request_id, |v| RequestId(v.clone()))
}

/// 413 for a request whose declared length (Content-Length) is over `max` bytes, before
/// any of its body is read.
pub fn declared_body_too_large(headers: &poem::http::HeaderMap, max: usize) -> Option<Problem> {
    headers
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|declared| declared > max)
        .then(|| Problem::body_too_large(max))
}

/// A time-ordered id (UUIDv7) whose random part comes from the thread-local generator:
/// `Uuid::now_v7` asks the kernel for randomness on every call, a system call per request.
pub(crate) fn new_request_id() -> RequestId {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id =
        uuid::Builder::from_unix_timestamp_millis(millis, &rand::random::<[u8; 10]>()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    RequestId(
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .expect("hex digits and dashes"),
    )
}

/// How long a request's body may take to arrive, from when the request came: as long as a
/// connection may go without one ([`crate::runtime::CLIENT_IDLE_LIMIT`]).
const BODY_TIME_LIMIT: Duration = crate::runtime::CLIENT_IDLE_LIMIT;

/// Why a request's body was refused as the handler read it.
#[derive(Clone, Copy)]
enum Refused {
    TooLarge,
    TooSlow,
}

/// 408 for a request whose body has not all come within `BODY_TIME_LIMIT`.
fn body_too_slow() -> Problem {
    Problem::request_timeout(format!(
        "the request body did not all arrive within {} s",
        BODY_TIME_LIMIT.as_secs()
    ))
}

/// The request body, failing once it has produced more than `max` bytes (for chunked
/// uploads that declare no length), with the rest then discarded, or once it has taken longer
/// than `BODY_TIME_LIMIT` to arrive; `refusal` tells which, the first time.
fn capped_body(body: Body, max: usize, refusal: Arc<OnceLock<Refused>>) -> Body {
    let timed = BodyWithDeadline::new(BoxBody::from(body), BODY_TIME_LIMIT);
    let capped = CappedBody::new(timed, max).map_err(move |e| match e {
        CappedBodyError::TooLarge(max) => {
            let _ = refusal.set(Refused::TooLarge);
            std::io::Error::other(Problem::body_too_large(max).detail)
        }
        CappedBodyError::Inner(LateBodyError::Late(_)) => {
            let _ = refusal.set(Refused::TooSlow);
            std::io::Error::other(body_too_slow().detail)
        }
        CappedBodyError::Inner(LateBodyError::Inner(e)) => e,
    });
    Body::from(BoxBody::new(capped))
}
