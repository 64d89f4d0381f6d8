//! One proxied request: CORS, route, edge auth, rate limit, breaker, timeout, forward.

use futures::TryStreamExt;
use poem::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;

use platform::context;
use platform::problem::Problem;

use crate::{Gateway, routes};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().copied().map(str::to_owned).chain(named) {
        headers.remove(name.as_str());
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
            Some(c) => format!("user:{}", c.id),
            None => format!("ip:{}", client_ip(&req)),
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
        let permit = self.gateway.acquire(service).map_err(|wait| {
            Problem::unavailable(
                format!("{service} is failing and calls to it are paused"),
                wait.as_secs().max(1),
            )
        })?;
        let Some(instance) = self.gateway.upstreams.pick(service) else {
            self.gateway.record(service, permit, false);
            return Err(Problem::unavailable(
                format!("no instance of {service} is available"),
                5,
            ));
        };
        let url = format!(
            "{}{}",
            instance.base_url(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let outgoing = self.build_request(req, &url)?;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(live.upstream_timeout, outgoing.send()).await;
        metrics::histogram!("gateway_upstream_duration_seconds", "upstream" => service)
            .record(started.elapsed().as_secs_f64());
        let upstream = match result {
            Err(_) => {
                self.gateway.record(service, permit, false);
                return Err(Problem::timeout(format!(
                    "{service} did not answer within {} ms",
                    live.upstream_timeout.as_millis()
                )));
            }
            Ok(Err(err)) => {
                self.gateway.record(service, permit, false);
                tracing::warn!(service, error = %err, "upstream call failed");
                return Err(Problem::unavailable(
                    format!("{service} could not be reached"),
                    5,
                ));
            }
            Ok(Ok(resp)) => resp,
        };
        self.gateway
            .record(service, permit, !upstream.status().is_server_error());
        let mut resp = Response::builder().status(upstream.status()).finish();
        *resp.headers_mut() = upstream.headers().clone();
        strip_hop_by_hop(resp.headers_mut());
        resp.set_body(Body::from_bytes_stream(
            upstream.bytes_stream().map_err(std::io::Error::other),
        ));
        resp.set_data(OperationId(service));
        Ok(resp)
    }

    fn build_request(
        &self,
        mut req: Request,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, Problem> {
        let mut headers = req.headers().clone();
        strip_hop_by_hop(&mut headers);
        let host = headers.remove(header::HOST);
        if let Some(host) = host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        let ip = client_ip(&req);
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        if let Some(id) = context::request_id().and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert(HeaderName::from_static(context::REQUEST_ID), id);
        }
        if !headers.contains_key(context::TRACEPARENT)
            && let Ok(v) = HeaderValue::from_str(&new_traceparent())
        {
            headers.insert(HeaderName::from_static(context::TRACEPARENT), v);
        }
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|_| Problem::bad_request("unknown HTTP method"))?;
        let body = req.take_body();
        let has_body = headers.contains_key(header::CONTENT_LENGTH)
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        let mut builder = self.gateway.http.request(method, url).headers(headers);
        if has_body {
            builder = builder.body(reqwest::Body::wrap_stream(body.into_bytes_stream()));
        }
        Ok(builder)
    }
}

fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A W3C traceparent for a request that arrived without one.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}
