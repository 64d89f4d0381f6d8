//! One proxied request: route, edge auth, rate limit, breaker, timeout, forward. hyper's
//! request goes upstream as it came (re-addressed, headers adjusted, body streamed) and the
//! upstream's response comes back the same way.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use poem::http::uri::{Authority, PathAndQuery};
use poem::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};

use platform::body_limit::CappedBodyError;
use platform::context::{self, RequestId};
use platform::problem::Problem;
use platform::runtime::ResponseBody;

use crate::forward::{
    BodyProgress, BodyState, ForwardBody, PooledBody, UpstreamClient, UpstreamError,
};
use crate::judged::JudgedBody;
use crate::live::{ClientKey, Live};
use crate::upstreams::{Target, Upstreams};
use crate::{Call, Gateway, routes};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1). Names, not strings:
/// removing by a string parses it first.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(context::REQUEST_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static(context::TRACEPARENT);

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names (comparisons of known names are
    // cheap) instead of a hashed removal of each of the nine.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // A message sent chunked and with a length is framed by the chunks (RFC 9112 §6.3), and a
    // proxy must drop the length; hyper's client decodes the chunks but keeps the header, and
    // the answer passed on with it would be framed by a length its body does not have.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    // Headers named by Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A worker's way to the upstreams: its own connections, and the instances (shared by every
/// worker). One per worker, shared by its requests: a request's exchange holds it without
/// touching counters other workers' cores write.
pub struct WorkerUpstreams {
    pub client: UpstreamClient,
    pub upstreams: Upstreams,
}

/// What the proxy knows of a request besides the request itself.
pub struct Forwarding<'a> {
    /// The config in force when the request arrived.
    pub live: &'a Live,
    pub request_id: &'a RequestId,
    /// The address the request came from.
    pub client: IpAddr,
}

/// A request that was not forwarded, or whose upstream call failed: the problem, and the
/// service it was meant for, if any (the route label of its metrics).
pub struct Refused {
    pub problem: Problem,
    pub service: Option<&'static str>,
}

impl From<Problem> for Refused {
    fn from(problem: Problem) -> Self {
        Self {
            problem,
            service: None,
        }
    }
}

/// Forwards `req` to an instance of the service its path names; the answer, with the
/// service, or why there is none.
pub async fn forward(
    gateway: &Gateway,
    worker: &Arc<WorkerUpstreams>,
    req: Request<Incoming>,
    about: Forwarding<'_>,
) -> Result<(Response<ResponseBody>, &'static str), Refused> {
    let path = req.uri().path();
    if routes::has_dot_segment(path) {
        return Err(Problem::bad_request(
            "the path has a \".\" or \"..\" segment; send it resolved (RFC 3986, section 5.2.4)",
        )
        .into());
    }
    if path == "/internal" || path.starts_with("/internal/") {
        return Err(Problem::not_found("no such resource").into());
    }
    let Some(service) = routes::service_for(path) else {
        return Err(Problem::not_found("no such resource").into());
    };
    let refused = |problem| Refused {
        problem,
        service: Some(service),
    };
    let caller = if routes::is_public(req.method(), path) {
        // No token is asked for, but on a catalog read one that verifies at once counts its
        // user by id rather than by address, which users behind one NAT share. Any other is
        // left to the service (401 where a token would show more), its request counted against
        // the address.
        routes::is_catalog_read(req.method(), path)
            .then(|| req.headers().get(header::AUTHORIZATION))
            .flatten()
            .and_then(platform::auth::bearer_token)
            .and_then(|token| gateway.verifier().verify(token).ok())
    } else {
        let checked = match req.headers().get(header::AUTHORIZATION) {
            Some(header) => platform::auth::caller_of(header, gateway.verifier()).await,
            None => Err(Problem::unauthorized(
                "a valid bearer access token is required",
            )),
        };
        match checked {
            Ok(caller) => Some(caller),
            Err(unauthorized) => {
                // Refused callers count against their address too: tokens cannot be tried, nor
                // signatures made to be checked, faster than the rate limit allows.
                within_rate(gateway, ClientKey::address(about.client)).map_err(refused)?;
                return Err(refused(unauthorized));
            }
        }
    };
    let client_key = caller.map_or(ClientKey::address(about.client), |c| ClientKey::User(c.id));
    within_rate(gateway, client_key).map_err(refused)?;
    let upstream = gateway.upstream(service);
    let call = upstream.acquire().map_err(|wait| {
        refused(Problem::unavailable(
            format!("{service} is failing and calls to it are paused"),
            Problem::seconds_to_wait(wait),
        ))
    })?;
    let Some(target) = gateway.upstreams.pick(service) else {
        // No call was made: nothing for the breaker to judge. Counted, a restart of a single
        // instance would open the breaker and keep callers out for its open period after
        // the new instance had registered.
        call.release();
        return Err(refused(Problem::unavailable(
            format!("no instance of {service} is available"),
            5,
        )));
    };
    let (outgoing, body) = build_request(req, &target, &about, gateway.max_body_bytes());
    let started = std::time::Instant::now();
    let worker = worker.clone();
    // Boxed, and owning what it uses: should the caller give up, the exchange goes on to be
    // judged (`Exchange`). Boxed, it is also not copied whole into the futures awaiting it.
    let answer = Box::pin(async move {
        // An instance that cannot be connected to (killed, say, and not yet known to
        // discovery as gone) has been sent nothing: the request goes to another, whatever
        // its method.
        let mut unreachable = Vec::new();
        let elsewhere = |req: &mut Request<ForwardBody>, tried: &Authority, err: &UpstreamError| {
            unreachable.push(tried.clone());
            let other = worker.upstreams.pick_other(service, &unreachable)?;
            tracing::warn!(service, error = %err, instead = %other.authority, "instance unreachable; the request goes to another");
            metrics::counter!("gateway_upstream_failovers_total", "upstream" => service)
                .increment(1);
            req.headers_mut().insert(header::HOST, other.host);
            Some(other.authority)
        };
        worker
            .client
            .request_or_elsewhere(&target.authority, outgoing, elsewhere)
            .await
    });
    let mut exchange = Exchange {
        answer: Some(answer),
        call: Some(call),
        body,
        limit_from: None,
        upstream_timeout: about.live.upstream_timeout,
        service,
        started,
    };
    let answering = exchange.answer.as_mut().expect("just set").as_mut();
    let body = exchange.body.as_mut();
    let result = within_limits(answering, body, about.live, &mut exchange.limit_from).await;
    exchange.answer = None;
    let call = exchange.call.take().expect("taken only here");
    upstream.record_latency(started.elapsed());
    let answer = match result {
        Err(Late::Upstream) => {
            call.record(false);
            return Err(refused(Problem::timeout(format!(
                "{service} did not answer within {} ms",
                about.live.upstream_timeout.as_millis()
            ))));
        }
        Err(Late::UpstreamNotReading) => {
            call.record(false);
            return Err(refused(Problem::timeout(format!(
                "{service} did not take the request body within {} ms",
                about.live.caller_body_timeout.as_millis()
            ))));
        }
        Err(Late::Caller) => {
            // The caller's slowness, not the upstream's: the breaker does not count it.
            call.release();
            return Err(refused(Problem::request_timeout(format!(
                "the request body did not arrive within {} ms",
                about.live.caller_body_timeout.as_millis()
            ))));
        }
        Ok(Err(err)) if let Some(problem) = callers_fault(&err) => {
            // The caller's fault, not the upstream's: the breaker does not count it.
            call.release();
            return Err(refused(problem));
        }
        Ok(Err(err)) => {
            call.record(false);
            tracing::warn!(service, error = %err, "upstream call failed");
            return Err(refused(Problem::unavailable(
                format!("{service} could not be reached"),
                5,
            )));
        }
        Ok(Ok(resp)) => resp,
    };
    let call = if fails_its_call(answer.status()) {
        call.record(false);
        None
    } else {
        Some(call)
    };
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Passed on, it would end the caller's connection with nothing it could use.
        return Err(refused(Problem::bad_gateway(format!(
            "{service} switched protocols, which the gateway did not ask for"
        ))));
    }
    let (mut parts, mut body) = answer.into_parts();
    body.limit_stalls(about.live.upstream_timeout);
    strip_hop_by_hop(&mut parts.headers);
    let callers_body = exchange.body.as_ref().map(|b| b.state.clone());
    let body = JudgedBody::new(body, call, callers_body)
        .map_err(std::io::Error::other)
        .boxed();
    Ok((Response::from_parts(parts, body), service))
}

/// 429, if `client` has used up its rate.
pub(crate) fn within_rate(gateway: &Gateway, client: ClientKey) -> Result<(), Problem> {
    gateway.limiter().check_key(&client).map_err(|wait| {
        let secs = wait.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        Problem::too_many_requests(
            "too many requests from this client; slow down",
            Problem::seconds_to_wait(secs),
        )
    })
}

/// An upstream exchange under way, with the breaker's call it decides. Its caller may give up
/// first (hang up, or time out on its side): the exchange then goes on, in a task of its own,
/// until the instance answers or its limit passes, and the call is judged as it would have
/// been had the caller stayed. Dropped instead, an instance that hangs for every caller would
/// never count against its breaker when the callers' limits are shorter than the gateway's,
/// and every caller would go on waiting for it.
struct Exchange<F: Future<Output = UpstreamAnswer> + Send + 'static> {
    answer: Option<Pin<Box<F>>>,
    call: Option<Call>,
    /// How far the caller's body has gone, if it has one.
    body: Option<BodyProgress>,
    /// When the upstream's limit started: once the request's body had all gone. None while
    /// the caller's body is still coming: a caller gone mid-body says nothing of the upstream.
    limit_from: Option<tokio::time::Instant>,
    upstream_timeout: Duration,
    service: &'static str,
    started: std::time::Instant,
}

type UpstreamAnswer = Result<Response<PooledBody>, UpstreamError>;

impl<F: Future<Output = UpstreamAnswer> + Send + 'static> Drop for Exchange<F> {
    fn drop(&mut self) {
        // A panic's unwinding: the exchange is in no state to go on.
        if std::thread::panicking() {
            return;
        }
        let (Some(answer), Some(call)) = (self.answer.take(), self.call.take()) else {
            return;
        };
        // The caller gave up before the answer's head. Its caller got no answer, so this call
        // is in no count of requests: operators see such calls here, and whether they were
        // followed to be judged.
        let followed = self.follow(answer, call);
        metrics::counter!(
            "gateway_given_up_calls_total",
            "upstream" => self.service,
            "followed" => if followed { "true" } else { "false" }
        )
        .increment(1);
    }
}

impl<F: Future<Output = UpstreamAnswer> + Send + 'static> Exchange<F> {
    /// Goes on with the exchange of a caller gone, in a task of its own, to judge the call;
    /// false when it cannot be followed, and the call ends with no outcome.
    fn follow(&mut self, answer: Pin<Box<F>>, call: Call) -> bool {
        // The upstream's limit started once the body had all gone. A body whose last bytes
        // went just as the caller gave up, before `within_limits` saw them go, starts it now.
        // One that failed or was dropped unsent (`Closed`: the caller gone mid-body, say) says
        // nothing of the upstream: the call ends with no outcome.
        let from = self.limit_from.or_else(|| {
            let body = self.body.as_mut()?;
            body.sent
                .try_recv()
                .ok()
                .map(|()| tokio::time::Instant::now())
        });
        let Some(from) = from else { return false };
        // With all the upstream's places taken the call ends here with no outcome, and its
        // exchange with it: the ones followed are enough to judge the instance by.
        let Some(place) = call.follow() else {
            return false;
        };
        // Outside a runtime there is nothing to run it on (a runtime shutting down takes the
        // task and drops it at once): the call ends with no outcome.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let abandoned = Abandoned {
            call,
            callers_body: self.body.as_ref().map(|b| b.state.clone()),
            deadline: from + self.upstream_timeout,
            upstream_timeout: self.upstream_timeout,
            service: self.service,
            started: self.started,
        };
        runtime.spawn(async move {
            abandoned.judge(answer).await;
            drop(place);
        });
        true
    }
}

/// How much of the answer to a call whose caller gave up is read to judge it. An answer that
/// goes on past this, or past the upstream limit, leaves the call with no outcome (as a caller
/// hanging up mid-answer does), its connection closed, rather than the gateway reading on for
/// nobody.
const ABANDONED_ANSWER_BUDGET: usize = 1 << 20;

/// A call whose caller gave up, its exchange followed to the end.
struct Abandoned {
    call: Call,
    /// The state of the request's body, if it had one.
    callers_body: Option<Arc<BodyState>>,
    /// An answer's head not come by then is a failure, as a caller still there had 504.
    deadline: tokio::time::Instant,
    upstream_timeout: Duration,
    service: &'static str,
    started: std::time::Instant,
}

impl Abandoned {
    /// Judges the call by `answer`: a timeout, a 5xx or an unasked-for switch of protocols
    /// is a failure (the answer dropped unread, its connection closed); another answer is
    /// judged as one passed on is, by how its body ends, the body read (within the budget)
    /// and thrown away, which also hands the connection back.
    async fn judge<F: Future<Output = UpstreamAnswer>>(self, answer: Pin<Box<F>>) {
        let Self {
            call, callers_body, ..
        } = self;
        let answered = tokio::time::timeout_at(self.deadline, answer).await;
        call.record_latency(self.started.elapsed());
        let resp = match answered {
            Err(_) => return call.record(false),
            Ok(Err(err)) if callers_fault(&err).is_some() => return call.release(),
            Ok(Err(err)) => {
                tracing::warn!(service = self.service, error = %err, "upstream call failed (its caller had given up)");
                return call.record(false);
            }
            Ok(Ok(resp)) => resp,
        };
        if fails_its_call(resp.status()) {
            return call.record(false);
        }
        let mut body = resp.into_body();
        body.limit_stalls(self.upstream_timeout);
        let mut body = JudgedBody::new(body, Some(call), callers_body);
        let read_to_end = async {
            let mut read = 0;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |data| data.len());
                if read > ABANDONED_ANSWER_BUDGET {
                    return;
                }
            }
        };
        // Past the limit, or the budget, the body is dropped unfinished: no outcome.
        let _ = tokio::time::timeout(self.upstream_timeout, read_to_end).await;
    }
}

/// Whether an answer with `status` is its instance's failure whatever its body says: a server
/// error, or a switch of protocols, which the gateway never asks for (Upgrade is hop-by-hop,
/// dropped). Any other answer is judged by how its body ends. The one rule for an answer passed
/// on and for one whose caller gave up.
fn fails_its_call(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::SWITCHING_PROTOCOLS
}

/// Who made an upstream call take too long.
#[derive(Debug, PartialEq)]
enum Late {
    /// No answer within the limit once the body had gone.
    Upstream,
    /// The body not all taken by the upstream by the caller's deadline.
    UpstreamNotReading,
    /// The body not all sent by the caller by its deadline.
    Caller,
}

/// `answer`, unless the upstream takes longer than its limit once the request's body (if any)
/// has all been sent (an upstream is not bound to answer a request before it has read it; one
/// that does is answered at once), or the caller takes longer than its own limit to send that
/// body.
async fn within_limits<F: Future>(
    mut answer: Pin<&mut F>,
    body: Option<&mut BodyProgress>,
    limits: &Live,
    limit_from: &mut Option<tokio::time::Instant>,
) -> Result<F::Output, Late> {
    let limit = limits.upstream_timeout;
    let Some(body) = body else {
        *limit_from = Some(tokio::time::Instant::now());
        return tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| Late::Upstream);
    };
    let deadline = tokio::time::sleep(limits.caller_body_timeout);
    tokio::pin!(deadline);
    let mut sending = true;
    loop {
        tokio::select! {
            out = answer.as_mut() => return Ok(out),
            // Closed, the body failed or was dropped unsent: the answer, an error, is near.
            Ok(()) = &mut body.sent, if sending => {
                sending = false;
                let now = tokio::time::Instant::now();
                *limit_from = Some(now);
                deadline.as_mut().reset(now + limit);
            }
            // A body held up because the upstream does not take it is the upstream's delay.
            _ = &mut deadline => return Err(match (sending, body.state.waiting_on_caller()) {
                (true, true) => Late::Caller,
                (true, false) => Late::UpstreamNotReading,
                (false, _) => Late::Upstream,
            }),
        }
    }
}

/// The caller's part in a failed upstream call, if it had one: its body outgrew the limit
/// (413), or could not be read (400: a malformed chunk, say, or the caller gone mid-body).
fn callers_fault(err: &(dyn std::error::Error + 'static)) -> Option<Problem> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| {
        match e.downcast_ref::<CappedBodyError<hyper::Error>>()? {
            CappedBodyError::TooLarge(max) => Some(Problem::body_too_large(*max)),
            CappedBodyError::Inner(err) => Some(Problem::bad_request(format!(
                "the request body could not be read: {err}"
            ))),
        }
    })
}

/// The request to send upstream: the caller's, for the picked instance (origin-form target,
/// its Host), hop-by-hop headers dropped, forwarding and tracing headers set, the body
/// streamed as it arrives; and how far that body has gone.
fn build_request(
    req: Request<Incoming>,
    target: &Target,
    about: &Forwarding<'_>,
    max_body_bytes: usize,
) -> (Request<ForwardBody>, Option<BodyProgress>) {
    let (mut parts, body) = req.into_parts();
    // The host the caller asked for: an absolute-form target's (HTTP/1.1 sent to a proxy,
    // RFC 9112 §3.2.2, where it outranks Host) or HTTP/2's :authority, else Host.
    let mut asked_host = None;
    if parts.uri.scheme().is_some() {
        asked_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        // Such a target names the gateway: only its path and query go on.
        let origin_form = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(origin_form);
    }
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let host = headers.insert(header::HOST, target.host.clone());
    // The gateway is the edge: a caller's own X-Forwarded-Host is never passed on, even from
    // one that names no host (HTTP/1.0 without Host, HTTP/2 without :authority).
    match asked_host.or(host) {
        Some(asked) => headers.insert(X_FORWARDED_HOST, asked),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {}", about.client)).ok(),
        None => Some(address_header(about.client)),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(X_REQUEST_ID, about.request_id.header_value());
    if !headers.contains_key(&TRACEPARENT) {
        headers.insert(TRACEPARENT, new_traceparent());
    }
    // HTTP/2 from the caller, HTTP/1.1 to the upstream: the pool speaks HTTP/1.1.
    parts.version = poem::http::Version::HTTP_11;
    let (body, progress) = ForwardBody::new(body, max_body_bytes);
    (Request::from_parts(parts, body), progress)
}

/// `client` as a header value. The last one is kept per thread: a worker's requests mostly
/// come from a few clients (or one load balancer), and formatting an address is ~1.6k
/// instructions, a few percent of a proxied request.
fn address_header(client: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == client => value.clone(),
        _ => {
            let value =
                HeaderValue::try_from(client.to_string()).expect("an address is a header value");
            *last = Some((client, value.clone()));
            value
        }
    })
}

/// A W3C traceparent for a request that arrived without one (ids from the thread-local RNG:
/// no system call per request; all-zero ids are invalid, hence `max(1)`).
fn new_traceparent() -> HeaderValue {
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    // 00-<32 hex digits>-<16 hex digits>-01
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex::encode_to_slice(trace.to_be_bytes(), &mut text[3..35]).expect("32 digits fit");
    hex::encode_to_slice(span.to_be_bytes(), &mut text[36..52]).expect("16 digits fit");
    HeaderValue::from_bytes(&text).expect("hex digits and dashes")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use platform::config::Settings;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::*;

    fn limits() -> Live {
        let settings = Settings::default()
            .with("upstream_timeout_ms", "300")
            .with("caller_body_timeout_ms", "1000");
        Live::from_settings(&settings).unwrap()
    }

    fn progress(waiting_on_caller: bool) -> (oneshot::Sender<()>, BodyProgress) {
        let (sent, all_sent) = oneshot::channel();
        let progress = BodyProgress::new(all_sent, Arc::new(BodyState::waiting(waiting_on_caller)));
        (sent, progress)
    }

    /// Who was late, for an upstream that never answers.
    async fn never_answered(mut body: Option<BodyProgress>, live: &Live) -> Late {
        let answer = std::pin::pin!(std::future::pending::<()>());
        within_limits(answer, body.as_mut(), live, &mut None)
            .await
            .unwrap_err()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_coming_is_the_callers_delay_and_one_not_taken_the_upstreams() {
        let live = limits();
        for waiting_on_caller in [true, false] {
            let (_sent, body) = progress(waiting_on_caller);
            let started = Instant::now();
            let late = never_answered(Some(body), &live).await;
            let expected = if waiting_on_caller {
                Late::Caller
            } else {
                Late::UpstreamNotReading
            };
            assert_eq!(late, expected);
            assert_eq!(started.elapsed(), Duration::from_millis(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstream_limit_starts_when_the_body_has_gone() {
        let live = limits();
        let (sent, body) = progress(true);
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            sent.send(()).unwrap();
        });
        let late = never_answered(Some(body), &live).await;
        assert!(matches!(late, Late::Upstream));
        assert_eq!(started.elapsed(), Duration::from_millis(900 + 300));
        // Without a body the limit starts at once.
        let started = Instant::now();
        let late = never_answered(None, &live).await;
        assert!(matches!(late, Late::Upstream));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn each_client_gets_its_own_address_whatever_the_last_one_was() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for client in [v4, v4, v6, v4, v6, v6] {
            assert_eq!(address_header(client), client.to_string());
        }
    }

    /// The names of `headers` left after stripping.
    fn left_after_stripping(headers: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut map);
        map.keys().map(|name| name.as_str().to_owned()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped_and_the_rest_kept() {
        let left = left_after_stripping(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "hop"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn a_length_beside_chunked_framing_is_dropped_with_it() {
        let left = left_after_stripping(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(left, ["content-type"]);
        // A length alone is the message's framing and stays.
        assert_eq!(
            left_after_stripping(&[("content-length", "5")]),
            ["content-length"]
        );
    }

    /// Where a caller's body was when the caller gave up.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum BodyAtDrop {
        /// All sent, though `within_limits` had not seen it go.
        AllSent,
        StillComing,
        /// Failed, or dropped unsent (the caller gone mid-body, say).
        Failed,
    }

    /// A caller that gives up just as its body's last bytes go, before `within_limits` has seen
    /// them go, leaves a call that is followed and judged as any whose body had gone; one
    /// whose body was still coming, or failed, says nothing of the upstream.
    #[tokio::test(start_paused = true)]
    async fn a_caller_gone_as_its_body_went_leaves_a_call_that_is_judged() {
        for body_at_drop in [
            BodyAtDrop::AllSent,
            BodyAtDrop::StillComing,
            BodyAtDrop::Failed,
        ] {
            // One failure in a window of one opens the breaker.
            let upstream = crate::Upstream::with_breaker(crate::breaker::BreakerConfig {
                window: 1,
                ..Default::default()
            });
            let (answer_now, answered) = oneshot::channel::<()>();
            let answer = Box::pin(async move {
                let _ = answered.await;
                Err(UpstreamError::ConnectTimeout(Authority::from_static(
                    "127.0.0.1:1",
                )))
            });
            let (sent, body) = progress(false);
            let mut sent = Some(sent);
            match body_at_drop {
                BodyAtDrop::AllSent => sent.take().unwrap().send(()).unwrap(),
                BodyAtDrop::Failed => drop(sent.take()),
                BodyAtDrop::StillComing => {}
            }
            drop(Exchange {
                answer: Some(answer),
                call: Some(upstream.acquire().unwrap()),
                body: Some(body),
                limit_from: None,
                upstream_timeout: Duration::from_secs(5),
                service: "products",
                started: std::time::Instant::now(),
            });
            // Unfollowed, the answer is gone and nobody waits for it.
            let _ = answer_now.send(());
            // The followed exchange goes on in a task of its own.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                upstream.acquire().is_err(),
                body_at_drop == BodyAtDrop::AllSent,
                "breaker open after a caller gone with its body {body_at_drop:?}"
            );
            drop(sent);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_limits_is_passed_on() {
        let live = limits();
        let (_sent, mut body) = progress(false);
        let answer = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            42
        };
        assert_eq!(
            within_limits(std::pin::pin!(answer), Some(&mut body), &live, &mut None)
                .await
                .ok(),
            Some(42)
        );
    }
}
