//! RFC 9457 problem details: the one error shape every service and the gateway answer with.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};
use serde::{Deserialize, Serialize};

use crate::context;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of a problem response (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none, rename = "Problem")]
pub struct ProblemBody {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong, in words a client developer can act on.
    pub detail: String,
    /// The request id of the failed request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// For validation errors: each field that was wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[oai(default, skip_serializing_if_is_empty)]
    pub errors: Vec<FieldError>,
}

/// An error answered as `application/problem+json`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after_seconds: Option<u64>,
    pub allow: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_seconds: None,
            allow: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", detail)
    }
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            detail,
        )
    }
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
    }
    /// A request body over the limit of `max_bytes`.
    pub fn body_too_large(max_bytes: usize) -> Self {
        Self::payload_too_large(format!(
            "the request body is larger than the limit of {max_bytes} bytes"
        ))
    }
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            detail,
        )
    }
    /// A well-formed request whose values are not acceptable, field by field.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail)
        }
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", detail)
    }
    /// A wait as Retry-After's whole seconds, rounded up: a client that waits as told must
    /// not come back just before the time (9.8 s left sent as 9 would be refused again); at
    /// least 1.
    pub fn seconds_to_wait(wait: std::time::Duration) -> u64 {
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after_seconds: Some(retry_after_seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
        }
    }
    pub fn unavailable(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after_seconds: Some(retry_after_seconds),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                detail,
            )
        }
    }
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "dependency-timeout", detail)
    }
    /// A dependency answered with something that cannot be passed on.
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "dependency-invalid-answer", detail)
    }
    /// The caller took too long to send its request.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", detail)
    }

    /// An unexpected failure: logged in full with the request id, answered without internals.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, request_id = context::request_id().as_deref().unwrap_or("-"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred; quote the instance id when reporting it",
        )
    }

    /// The body, its `instance` the id of the request being served.
    pub fn body(&self) -> ProblemBody {
        self.body_for(context::request_id())
    }

    /// The body for the request `instance` (for code outside a request's scope).
    pub fn body_for(&self, instance: Option<String>) -> ProblemBody {
        ProblemBody {
            kind: format!("https://micromart.dev/problems/{}", self.kind),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            instance,
            errors: self.errors.clone(),
        }
    }

    /// Maps poem's own errors (bad JSON, wrong content type, unknown route, …) to a problem.
    pub fn from_poem(err: &poem::Error) -> Self {
        let status = err.status();
        let detail = err.to_string();
        match status {
            StatusCode::BAD_REQUEST => Self::bad_request(detail),
            StatusCode::UNAUTHORIZED => {
                Self::unauthorized("a valid bearer access token is required")
            }
            StatusCode::NOT_FOUND => Self::not_found("no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::new(status, "method-not-allowed", "method not allowed here")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::unsupported_media_type(detail),
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(detail),
            s if s.is_client_error() => Self::new(s, "client-error", detail),
            _ => Self::internal(detail),
        }
    }
}

impl Problem {
    /// The problem as an HTTP response for the request `instance`: status, problem+json body,
    /// and `Retry-After` or `Allow` where they apply.
    pub fn http_response(&self, instance: Option<String>) -> poem::http::Response<Vec<u8>> {
        let body = serde_json::to_vec(&self.body_for(instance)).unwrap_or_default();
        let mut resp = poem::http::Response::new(body);
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.as_deref().and_then(|a| a.parse().ok()) {
            headers.insert(header::ALLOW, allow);
        }
        resp
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (parts, body) = self.http_response(context::request_id()).into_parts();
        let mut resp = Response::from(body);
        resp.set_status(parts.status);
        *resp.headers_mut() = parts.headers;
        resp
    }
}

impl poem::error::ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn as_response(&self) -> Response {
        self.clone().into_response()
    }
}

/// The statuses a handler's `Problem` may carry, as listed in the OpenAPI document.
const DOCUMENTED: &[(u16, &str)] = &[
    (400, "Malformed request"),
    (401, "Missing, invalid or expired token"),
    (403, "Not allowed for this caller"),
    (404, "Not found"),
    (409, "Conflict with the current state"),
    (422, "Well-formed but invalid"),
    (429, "Rate limited"),
    (503, "A dependency is unavailable"),
];

/// The rarer client errors, documented together as `4XX` rather than each on every operation.
const OTHER_CLIENT_ERRORS: &str = "Another client error, as problem+json: 408 (the request body \
     took too long to arrive), 410 (a link or session that expired or was used), 412 (If-Match \
     names a version that is no longer current), 413 (the body is larger than the limit), 415 \
     (the body is not of the type the operation takes), 428 (the operation needs If-Match)";

impl ApiResponse for Problem {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: DOCUMENTED
                .iter()
                .map(|(status, description)| (Some(*status), None, *description))
                .chain([(None, Some("4XX".to_owned()), OTHER_CLIENT_ERRORS)])
                .map(|(status, status_range, description)| MetaResponse {
                    description,
                    status,
                    status_range,
                    content: vec![MetaMediaType {
                        content_type: CONTENT_TYPE,
                        schema: ProblemBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ProblemBody::register(registry);
    }
}

/// Every error leaving a service becomes problem+json, whoever raised it.
pub fn into_problem_response(err: poem::Error) -> Response {
    if let Some(problem) = err.downcast_ref::<Problem>() {
        return problem.clone().into_response();
    }
    if err.is_from_response() {
        return err.into_response();
    }
    Problem::from_poem(&err).into_response()
}

pub type ApiResult<T> = Result<T, Problem>;

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        // Postgres text cannot hold U+0000 (22021; a Rust string is valid UTF-8 otherwise),
        // nor jsonb its escape (22P05): the caller sent it, in a parameter or a body.
        match err.as_database_error().and_then(|e| e.code()).as_deref() {
            Some("22021" | "22P05") => Problem::bad_request(
                "text in the request contains the NUL character (U+0000), which is not accepted",
            ),
            _ => Problem::internal(err),
        }
    }
}

/// Field checks of one request, collected so that a client sees every problem at once.
#[derive(Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    /// Records `problem` (a message) against `field` when there is one.
    pub fn check(&mut self, field: &str, problem: Option<String>) -> &mut Self {
        if let Some(message) = problem {
            self.0.push(FieldError::new(field, message));
        }
        self
    }

    /// 422 naming every failed field, or Ok.
    pub fn finish(&mut self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::invalid(std::mem::take(&mut self.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_rounded_up_to_whole_seconds() {
        for (wait_ms, seconds) in [(9_800, 10), (10_000, 10), (10_001, 11), (200, 1), (0, 1)] {
            assert_eq!(
                Problem::seconds_to_wait(std::time::Duration::from_millis(wait_ms)),
                seconds,
                "{wait_ms} ms"
            );
        }
    }
}
