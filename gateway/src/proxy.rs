//! One proxied request: CORS, route, edge auth, rate limit, breaker, timeout, forward.

use poem::http::uri::{Authority, PathAndQuery, Scheme};
use poem::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;

use platform::context;
use platform::problem::Problem;

use crate::forward::{self, ForwardBody};
use crate::live::ClientKey;
use crate::{Gateway, routes};

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

pub struct Proxy {
    pub(crate) gateway: Gateway,
}

impl Endpoint for Proxy {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let live = self.gateway.live();
        let allowed_origin = origin.filter(|o| live.cors_origins.iter().any(|a| a == o));
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut resp = if preflight {
            preflight_response(&req, allowed_origin.is_some())
        } else {
            match self.forward(req, &live).await {
                Ok(resp) => resp,
                Err(problem) => problem.into_response(),
            }
        };
        if let Some(origin) = allowed_origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("etag, location, retry-after, x-request-id"),
            );
        }
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
        Ok(resp)
    }
}

fn preflight_response(req: &Request, allowed: bool) -> Response {
    if !allowed {
        return Problem::forbidden("this origin is not allowed to call the API from a browser")
            .into_response();
    }
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        )
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, requested)
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .finish()
}

impl Proxy {
    async fn forward(&self, req: Request, live: &crate::live::Live) -> Result<Response, Problem> {
        let path = req.uri().path().to_owned();
        if path == "/internal" || path.starts_with("/internal/") {
            return Err(Problem::not_found("no such resource"));
        }
        let Some(service) = routes::service_for(&path) else {
            return Err(Problem::not_found("no such resource"));
        };
        let caller = if routes::is_public(req.method(), &path) {
            None
        } else {
            let caller = platform::auth::optional_caller(&req)?
                .ok_or_else(|| Problem::unauthorized("a valid bearer access token is required"))?;
            Some(caller)
        };
        let client_key = match &caller {
            Some(c) => ClientKey::User(c.id),
            None => req
                .remote_addr()
                .as_socket_addr()
                .map_or(ClientKey::Unknown, |a| ClientKey::Address(a.ip())),
        };
        if let Err(wait) = self.gateway.limiter().check_key(&client_key) {
            let secs = wait.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(Problem::too_many_requests(
                "too many requests from this client; slow down",
                secs.as_secs().max(1),
            ));
        }
        let upstream = self.gateway.upstream(service);
        let permit = upstream.acquire().map_err(|wait| {
            Problem::unavailable(
                format!("{service} is failing and calls to it are paused"),
                wait.as_secs().max(1),
            )
        })?;
        let Some(authority) = self.gateway.upstreams.pick(service) else {
            upstream.record(permit, false);
            return Err(Problem::unavailable(
                format!("no instance of {service} is available"),
                5,
            ));
        };
        let outgoing = self.build_request(req, authority)?;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            live.upstream_timeout,
            self.gateway.forward.request(outgoing),
        )
        .await;
        upstream.record_latency(started.elapsed());
        let answer = match result {
            Err(_) => {
                upstream.record(permit, false);
                return Err(Problem::timeout(format!(
                    "{service} did not answer within {} ms",
                    live.upstream_timeout.as_millis()
                )));
            }
            Ok(Err(err)) => {
                upstream.record(permit, false);
                tracing::warn!(service, error = %err, "upstream call failed");
                return Err(Problem::unavailable(
                    format!("{service} could not be reached"),
                    5,
                ));
            }
            Ok(Ok(resp)) => resp,
        };
        upstream.record(permit, !answer.status().is_server_error());
        let (parts, body) = answer.into_parts();
        let mut resp = Response::builder()
            .status(parts.status)
            .body(forward::response_body(body));
        *resp.headers_mut() = parts.headers;
        strip_hop_by_hop(resp.headers_mut());
        resp.set_data(OperationId(service));
        Ok(resp)
    }

    /// The request to send upstream: the caller's, re-addressed, hop-by-hop headers dropped,
    /// forwarding and tracing headers set, the body streamed as it arrives.
    fn build_request(
        &self,
        req: Request,
        authority: Authority,
    ) -> Result<hyper::Request<ForwardBody>, Problem> {
        let ip = client_ip(&req);
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(target)
            .build()
            .map_err(|_| Problem::bad_request("the request target cannot be forwarded"))?;
        let mut headers = parts.headers;
        let has_body = headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING);
        strip_hop_by_hop(&mut headers);
        if let Some(host) = headers.remove(header::HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(id) = context::request_id().and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert(X_REQUEST_ID, id);
        }
        if !headers.contains_key(&TRACEPARENT)
            && let Ok(v) = HeaderValue::from_str(&new_traceparent())
        {
            headers.insert(TRACEPARENT, v);
        }
        let body = if has_body {
            ForwardBody::from(body)
        } else {
            forward::empty_body()
        };
        let mut outgoing = hyper::Request::new(body);
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;
        Ok(outgoing)
    }
}

fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A W3C traceparent for a request that arrived without one (ids from the thread-local RNG:
/// no system call per request; all-zero ids are invalid, hence `max(1)`).
fn new_traceparent() -> String {
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}
