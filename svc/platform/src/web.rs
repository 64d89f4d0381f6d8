//! What every service serves beside its API: `/health`, `/ready`, `/metrics`, `/docs`,
//! `/openapi.json`, all behind the request context.

use std::sync::Arc;

use async_trait::async_trait;
use poem::http::StatusCode;
use poem::web::Json;
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Response, Route, handler};
use poem_openapi::{OpenApi, OpenApiService};
use serde_json::json;
use sqlx::PgPool;

use crate::context::RequestContext;
use crate::redis::Redis;

/// One dependency that `/ready` asks.
#[async_trait]
pub trait ReadyCheck: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), String>;
}

#[async_trait]
impl ReadyCheck for PgPool {
    fn name(&self) -> &'static str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(self)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl ReadyCheck for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<(), String> {
        self.ping().await.map_err(|e| e.to_string())
    }
}

#[handler]
fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "UP" }))
}

async fn ready(checks: &[Arc<dyn ReadyCheck>]) -> Response {
    let mut all_up = true;
    let mut report = serde_json::Map::new();
    for check in checks {
        let value =
            match tokio::time::timeout(std::time::Duration::from_secs(2), check.check()).await {
                Ok(Ok(())) => json!({ "status": "UP" }),
                Ok(Err(e)) => {
                    all_up = false;
                    json!({ "status": "DOWN", "error": e })
                }
                Err(_) => {
                    all_up = false;
                    json!({ "status": "DOWN", "error": "timed out" })
                }
            };
        report.insert(check.name().to_owned(), value);
    }
    let status = if all_up { "UP" } else { "DOWN" };
    Json(json!({ "status": status, "checks": report }))
        .with_status(if all_up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        })
        .into_response()
}

#[handler]
fn metrics_text() -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::handle().render())
}

/// The limit on request bodies unless a service's config says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// The OpenAPI document of an API, as committed under `openapi/`.
pub fn openapi_service<T: OpenApi>(api: T, title: &str) -> OpenApiService<T, ()> {
    // A relative server: "Try it out" goes to whoever serves the document (the service
    // itself, or the gateway that proxies it).
    OpenApiService::new(api, title, env!("CARGO_PKG_VERSION"))
        .server("/")
        .license(poem_openapi::LicenseObject::new("MIT"))
}

/// Mounts `api` at the root with the operational routes beside it.
pub fn routes<T: OpenApi + 'static>(
    service: &'static str,
    api: OpenApiService<T, ()>,
    checks: Vec<Arc<dyn ReadyCheck>>,
    max_body_bytes: usize,
) -> impl Endpoint<Output = Response> {
    crate::metrics::handle();
    let generated = api.spec();
    let spec = crate::document::served(&generated);
    let allowed = Arc::new(AllowedMethods::from_spec(&spec));
    let docs_page = crate::document::swagger_page(&api.swagger_ui_html(), &generated, &spec);
    let docs = Route::new().at(
        "/",
        poem::endpoint::make_sync(move |_| poem::web::Html(docs_page.clone())),
    );
    let checks = Arc::new(checks);
    Route::new()
        .at("/health", health)
        .at(
            "/ready",
            poem::endpoint::make(move |_| {
                let checks = checks.clone();
                async move { ready(&checks).await }
            }),
        )
        .at("/metrics", metrics_text)
        .nest("/docs", docs)
        .at(
            "/openapi.json",
            poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            }),
        )
        .nest("/", api.into_endpoint())
        .around(move |ep, req| {
            let allowed = allowed.clone();
            async move {
                let path = req.uri().path().to_owned();
                match ep.call(req).await {
                    Err(err) if err.status() == StatusCode::METHOD_NOT_ALLOWED => {
                        // RFC 9110: a 405 names the methods the resource has.
                        let mut problem = crate::problem::Problem::from_poem(&err);
                        problem.allow = allowed.for_path(&path);
                        Ok(problem.into_response())
                    }
                    other => other.map(IntoResponse::into_response),
                }
            }
        })
        .with(RequestContext::new(service, max_body_bytes))
}

/// The page size a list gives when asked for none.
const DEFAULT_PAGE_LIMIT: u32 = 20;
/// The most a list gives in one page.
const MAX_PAGE_LIMIT: u32 = 100;

/// A list's `?limit=`: read as a `u32` is, documented with its range and default (1 to 100,
/// 20) so that a client generated from the document knows them. The range is checked by the
/// list ([`page_limit`], or [`page_size_problem`] beside its other parameters' checks),
/// answering 422 that names the field, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(pub u32);

impl poem_openapi::types::Type for PageLimit {
    const IS_REQUIRED: bool = true;

    type RawValueType = u32;

    type RawElementValueType = u32;

    fn name() -> std::borrow::Cow<'static, str> {
        "integer(uint32)".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
            poem_openapi::registry::MetaSchema {
                minimum: Some(1.0),
                maximum: Some(f64::from(MAX_PAGE_LIMIT)),
                default: Some(json!(DEFAULT_PAGE_LIMIT)),
                ..poem_openapi::registry::MetaSchema::new_with_format("integer", "uint32")
            },
        ))
    }

    fn as_raw_value(&self) -> Option<&u32> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a u32> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl poem_openapi::types::ParseFromParameter for PageLimit {
    fn parse_from_parameter(value: &str) -> poem_openapi::types::ParseResult<Self> {
        <u32 as poem_openapi::types::ParseFromParameter>::parse_from_parameter(value)
            .map(Self)
            .map_err(poem_openapi::types::ParseError::propagate)
    }
}

/// The page size `limit` asks for: the default when it asks for none.
pub fn page_size(limit: Option<PageLimit>) -> u32 {
    limit.map_or(DEFAULT_PAGE_LIMIT, |l| l.0)
}

/// What is wrong with `size` as a page size, if anything: the `limit` field's check.
pub fn page_size_problem(size: u32) -> Option<String> {
    (!(1..=MAX_PAGE_LIMIT).contains(&size)).then(|| format!("must be 1 to {MAX_PAGE_LIMIT}"))
}

/// The page size of a list: `?limit=`, default 20, at most 100 (422 otherwise).
pub fn page_limit(limit: Option<PageLimit>) -> Result<u32, crate::problem::Problem> {
    let size = page_size(limit);
    crate::problem::Checks::default()
        .check("limit", page_size_problem(size))
        .finish()?;
    Ok(size)
}

/// Cuts `rows` (fetched with `limit + 1`) to the page and names the cursor of the next page,
/// the key of the page's last row, when there is one.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: u32,
    key: impl FnOnce(&T) -> String,
) -> Option<String> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(key)
}

/// The methods of each path of an OpenAPI document, for the `Allow` header of a 405.
struct AllowedMethods(Vec<(Vec<String>, String)>);

impl AllowedMethods {
    fn from_spec(spec: &str) -> Self {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        Self(
            paths
                .into_iter()
                .map(|(path, item)| {
                    let methods: Vec<String> = item
                        .as_object()
                        .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    (
                        path.split('/').map(str::to_owned).collect(),
                        methods.join(", "),
                    )
                })
                .collect(),
        )
    }

    /// The methods of the documented path that `path` matches (`{param}` matches a segment).
    fn for_path(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.0.iter().find_map(|(template, methods)| {
            let matches = template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s);
            matches.then(|| methods.clone())
        })
    }
}
