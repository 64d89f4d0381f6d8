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
                let instances = gateway.upstreams.count(service);
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

/// poem-openapi's Swagger UI page (its bundled Swagger UI, no CDN) turned into one page over
/// every service's document: a definition picker above it loads the chosen document through
/// Swagger UI's own spec actions. Swagger UI's `urls` option would need its standalone
/// preset, which poem-openapi does not bundle. The bearer token entered under "Authorize"
/// is kept (`persistAuthorization`) across documents and reloads.
pub fn swagger(_gateway: Gateway) -> impl Endpoint<Output = Response> {
    let page = OpenApiService::new(NoApi, "MicroMart", env!("CARGO_PKG_VERSION")).swagger_ui_html();
    let options: String = routes::services()
        .into_iter()
        .map(|s| format!(r#"<option value="/openapi/{s}.json">{s}</option>"#))
        .collect();
    let picker = format!(
        r#"<div style="font-family: sans-serif; padding: 10px 20px; background: #1b1b1b; color: #fff">
<label for="definition">MicroMart API, select a definition: </label>
<select id="definition">{options}</select>
</div>
<div id="ui"></div>"#
    );
    // Only the page's own markup and script, after `<body>`, are edited: the bundled Swagger
    // UI script in `<head>` contains some of the same words.
    let body_at = page
        .rfind("<body>")
        .expect("poem-openapi's page has a body");
    let (head, body) = page.split_at(body_at);
    let body = body
        .replacen(r#"<div id="ui"></div>"#, &picker, 1)
        .replacen(
            "let spec = ",
            r#"const definition = document.getElementById("definition");
    const chosen = new URLSearchParams(window.location.search).get("definition");
    if (chosen) definition.value = "/openapi/" + chosen + ".json";
    let spec = "#,
            1,
        )
        .replacen("SwaggerUIBundle({", "const ui = SwaggerUIBundle({", 1)
        .replacen(
            "spec: spec,",
            "url: definition.value, persistAuthorization: true,",
            1,
        )
        .replacen(
            "</body>",
            r#"<script>
    definition.addEventListener("change", () => {
        const name = definition.value.replace("/openapi/", "").replace(".json", "");
        history.replaceState(null, "", "?definition=" + name);
        ui.specActions.updateUrl(definition.value);
        ui.specActions.download(definition.value);
    });
</script>
</body>"#,
            1,
        );
    let page = format!("{head}{body}");
    poem::endpoint::make_sync(move |_| Html(page.clone()).into_response())
}

/// A service's document as the gateway shows it: without `/internal/**`, which the gateway
/// never routes, nor the internal credential's security scheme, which only those use.
fn public_document(mut doc: serde_json::Value) -> serde_json::Value {
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.retain(|path, _| path != "/internal" && !path.starts_with("/internal/"));
    }
    // The schemes some remaining operation's security requirement names.
    let used: std::collections::HashSet<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(|item| item.as_object())
        .flat_map(|item| item.values())
        .filter_map(|op| op["security"].as_array())
        .flatten()
        .filter_map(|requirement| requirement.as_object())
        .flat_map(|requirement| requirement.keys().cloned())
        .collect();
    if let Some(schemes) = doc
        .pointer_mut("/components/securitySchemes")
        .and_then(|s| s.as_object_mut())
    {
        schemes.retain(|name, _| used.contains(name));
    }
    doc
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
            let Some(target) = gateway.upstreams.pick(service) else {
                return Problem::unavailable(format!("no instance of {service} is available"), 5)
                    .into_response();
            };
            let fetched = gateway
                .http
                .get(format!("http://{}/openapi.json", target.authority))
                .timeout(gateway.live().upstream_timeout)
                .send()
                .await;
            match fetched {
                Ok(resp) if resp.status() == StatusCode::OK => match resp.json().await {
                    Ok(doc) => Json(public_document(doc)).into_response(),
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

#[cfg(test)]
mod tests {
    use super::public_document;
    use serde_json::json;

    #[test]
    fn internal_routes_are_left_out_of_the_documents_the_gateway_shows() {
        let doc = json!({"openapi": "3.0.0", "paths": {
            "/api/v1/cart": {"get": {"security": [{"BearerAuth": []}]}},
            "/internal/carts/{user_id}": {"get": {"security": [{"InternalAuth": []}]}},
            "/internalish": {"get": {}},
        }, "components": {"securitySchemes": {"BearerAuth": {}, "InternalAuth": {}}}});
        let shown = public_document(doc);
        let paths: Vec<&String> = shown["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/api/v1/cart", "/internalish"]);
        let schemes: Vec<&String> = shown["components"]["securitySchemes"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            schemes,
            ["BearerAuth"],
            "the internal credential is not offered"
        );
        assert_eq!(shown["openapi"], "3.0.0");
    }
}
