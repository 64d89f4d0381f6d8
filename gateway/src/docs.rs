//! `/ready` (every upstream's instances and breaker), `/docs` (one Swagger UI over every
//! service's document) and `/openapi/{service}.json` (each document, fetched from the service).

use poem::http::StatusCode;
use poem::web::{Html, Json};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::{OpenApi, OpenApiService};
use serde_json::json;

use platform::problem::Problem;

use crate::{Gateway, routes};

pub fn ready(gateway: Gateway) -> impl Endpoint<Output = Response> {
    poem::endpoint::make(move |_| {
        let gateway = gateway.clone();
        async move {
            let mut upstreams = serde_json::Map::new();
            for service in routes::services() {
                let instances = gateway.upstreams.instances(service).len();
                let breaker = gateway
                    .breaker_state(service)
                    .map(|s| s.as_str())
                    .unwrap_or("closed");
                upstreams.insert(
                    service.to_owned(),
                    json!({ "instances": instances, "breaker": breaker }),
                );
            }
            Json(json!({ "status": "UP", "upstreams": upstreams })).into_response()
        }
    })
}

/// An API with no operations: only a way to get poem-openapi's bundled Swagger UI page.
struct NoApi;

#[OpenApi]
impl NoApi {}

pub fn swagger(_gateway: Gateway) -> impl Endpoint<Output = Response> {
    let page = OpenApiService::new(NoApi, "MicroMart", env!("CARGO_PKG_VERSION")).swagger_ui_html();
    let urls: Vec<serde_json::Value> = routes::services()
        .into_iter()
        .map(|s| json!({ "url": format!("/openapi/{s}.json"), "name": s }))
        .collect();
    // Swagger UI lists several documents with `urls` instead of one inline `spec`.
    let page = page.replacen(
        "spec: spec,",
        &format!(
            "urls: {}, \"urls.primaryName\": \"users\", persistAuthorization: true,",
            serde_json::Value::from(urls)
        ),
        1,
    );
    poem::endpoint::make_sync(move |_| Html(page.clone()).into_response())
}

pub fn document(gateway: Gateway) -> impl Endpoint<Output = Response> {
    poem::endpoint::make(move |req: Request| {
        let gateway = gateway.clone();
        async move {
            let name = req.path_params::<String>().unwrap_or_default();
            let service = name.strip_suffix(".json").unwrap_or(&name).to_owned();
            let Some(service) = routes::services().into_iter().find(|s| *s == service) else {
                return Problem::not_found("no such service document").into_response();
            };
            let Some(instance) = gateway.upstreams.pick(service) else {
                return Problem::unavailable(format!("no instance of {service} is available"), 5)
                    .into_response();
            };
            let fetched = gateway
                .http
                .get(format!("{}/openapi.json", instance.base_url()))
                .timeout(gateway.live().upstream_timeout)
                .send()
                .await;
            match fetched {
                Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                    Ok(body) => Response::builder()
                        .content_type("application/json")
                        .body(body.to_vec()),
                    Err(_) => {
                        Problem::unavailable(format!("{service} did not send its document"), 5)
                            .into_response()
                    }
                },
                _ => Problem::unavailable(format!("{service} did not send its document"), 5)
                    .into_response(),
            }
        }
    })
}
