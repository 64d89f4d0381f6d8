//! The gateway's handler of one worker: its own routes through poem, every other request
//! proxied as hyper hands it over (converting each request and response into poem's types
//! and back was a measurable share of a proxied request), inside the same context the
//! services give their requests: request id, problem+json, metrics, access log; plus CORS.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use poem::endpoint::BoxEndpoint;
use poem::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use platform::body_limit;
use platform::context;
use platform::metrics::{RouteMetrics, method_label};
use platform::problem::Problem;
use platform::runtime::{ConnectionAddrs, Handler, PoemHandler, ResponseBody};

use crate::forward::UpstreamClient;
use crate::live::ClientKey;
use crate::proxy::{self, Forwarding, Refused, WorkerUpstreams};
use crate::{Gateway, SERVICE};

/// The route label of requests that reach no service.
const NO_ROUTE: &str = "other";

pub struct GatewayHandler {
    gateway: Gateway,
    own_routes: PoemHandler<BoxEndpoint<'static>>,
    /// This worker's upstream connections, and the instances.
    upstreams: Arc<WorkerUpstreams>,
    metrics: RouteMetrics,
}

impl GatewayHandler {
    /// A worker's handler, with upstream connections of its own.
    pub(crate) fn new(gateway: Gateway, own_routes: BoxEndpoint<'static>) -> Self {
        let upstreams = Arc::new(WorkerUpstreams {
            client: UpstreamClient::default(),
            upstreams: gateway.upstreams.clone(),
        });
        Self {
            gateway,
            own_routes: PoemHandler::new(own_routes),
            upstreams,
            metrics: RouteMetrics::new(SERVICE),
        }
    }
}

/// The paths the gateway answers itself.
fn is_own_route(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics") || is_document_route(path)
}

/// The Swagger UI and the services' documents it shows.
fn is_document_route(path: &str) -> bool {
    path == "/docs" || path.starts_with("/docs/") || path.starts_with("/openapi/")
}

impl Handler for GatewayHandler {
    async fn handle(
        &self,
        req: Request<Incoming>,
        addrs: ConnectionAddrs,
    ) -> Response<ResponseBody> {
        if is_own_route(req.uri().path()) {
            // The documents are pages for people, and each costs a call to a service: limited
            // per address as proxied requests are. Probes and metric scrapes are not.
            if is_document_route(req.uri().path())
                && let Err(problem) =
                    proxy::within_rate(&self.gateway, ClientKey::address(addrs.remote.ip()))
            {
                return problem_response(&problem, context::request_id_of(req.headers()).as_str());
            }
            return self.own_routes.handle(req, addrs).await;
        }
        let started = Instant::now();
        let request_id = context::request_id_of(req.headers());
        let method = method_label(req.method());
        let live = self.gateway.live();
        let allowed_origin = req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| {
                live.cors_origins
                    .iter()
                    .any(|a| a.as_bytes() == o.as_bytes())
            })
            .cloned();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let answer = if preflight {
            preflight_response(req.headers(), allowed_origin.is_some())
                .map(|resp| (resp, NO_ROUTE))
                .map_err(Refused::from)
        } else if let Some(too_large) =
            context::declared_body_too_large(req.headers(), self.gateway.max_body_bytes())
        {
            body_limit::discard(req.into_body());
            Err(Refused::from(too_large))
        } else {
            let about = Forwarding {
                live: &live,
                request_id: &request_id,
                client: addrs.remote.ip(),
            };
            proxy::forward(&self.gateway, &self.upstreams, req, about).await
        };
        let (mut resp, route) = answer.unwrap_or_else(|refused| {
            (
                problem_response(&refused.problem, request_id.as_str()),
                refused.service.unwrap_or(NO_ROUTE),
            )
        });
        let headers = resp.headers_mut();
        if let Some(origin) = allowed_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("etag, location, retry-after, x-request-id"),
            );
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(context::REQUEST_ID, request_id.header_value());
        let status = resp.status().as_u16();
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.record(method, route, status, elapsed);
        tracing::info!(target: "access", service = SERVICE, request_id = %request_id, method, route, status, elapsed_ms = elapsed * 1000.0);
        resp
    }
}

/// The answer to a CORS preflight: what may be sent, or 403 for an origin not listed.
fn preflight_response(
    headers: &HeaderMap,
    allowed: bool,
) -> Result<Response<ResponseBody>, Problem> {
    if !allowed {
        return Err(Problem::forbidden(
            "this origin is not allowed to call the API from a browser",
        ));
    }
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
    Ok(resp)
}

fn problem_response(problem: &Problem, request_id: &str) -> Response<ResponseBody> {
    problem
        .http_response(Some(request_id.to_owned()))
        .map(|body| {
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed()
        })
}
