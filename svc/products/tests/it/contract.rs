//! What the rest of the shop relies on: the committed OpenAPI document, discovery on port 0,
//! health and readiness.

use std::sync::Arc;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery};
use platform::testing::assert_served_openapi_matches;
use serde_json::Value;

use crate::support::Shop;

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let shop = Shop::start().await;
    let served = assert_served_openapi_matches("products", &shop.server.url()).await;
    let sent = platform::testing::assert_closed_bodies_refuse_unnamed_fields(
        &shop.server.url(),
        &served,
        &shop.manager,
    )
    .await;
    assert!(sent >= 5, "every JSON body of products is closed: {sent}");
    let paths = served["paths"].as_object().unwrap();
    for path in [
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/products/sku/{sku}",
        "/api/v1/products/categories",
        "/api/v1/products/categories/{slug}",
        "/internal/products/lookup",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let patch = &served["paths"]["/api/v1/products/{id}"]["patch"];
    let if_match = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "If-Match")
        .expect("If-Match is documented");
    assert_eq!(if_match["in"], "header");
    assert_eq!(if_match["required"], true);
    // poem-openapi writes response header names in upper case; HTTP does not mind.
    let headers = served["paths"]["/api/v1/products/{id}"]["get"]["responses"]["200"]["headers"]
        .as_object()
        .expect("response headers are documented");
    assert!(
        headers.keys().any(|h| h.eq_ignore_ascii_case("etag")),
        "the ETag header is documented: {headers:?}"
    );
}

#[tokio::test]
async fn health_and_readiness_report_the_database_and_redis() {
    let shop = Shop::start().await;
    assert_eq!(shop.get_json("/health").await["status"], "UP");
    let ready = shop.get_json("/ready").await;
    assert_eq!(ready["checks"]["database"]["status"], "UP");
    assert_eq!(ready["checks"]["redis"]["status"], "UP");
}

#[tokio::test]
async fn products_on_port_zero_is_found_through_discovery_and_leaves_it_on_shutdown() {
    let shop = Shop::start().await;
    let discovery = Arc::new(LocalDiscovery::new());
    let shutdown = CancellationToken::new();
    let serving = platform::testing::serve_registered(
        products::SERVICE,
        shop.products.app(),
        discovery.clone(),
        &shutdown,
    )
    .await;
    assert_ne!(serving.addr.port(), 0);
    let found = discovery.resolve(products::SERVICE).await.unwrap();
    assert_eq!(found.len(), 1);
    let categories: Value = reqwest::get(format!(
        "{}/api/v1/products/categories",
        found[0].base_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(categories["items"], serde_json::json!([]));
    shutdown.cancel();
    serving.task.await.unwrap().unwrap();
    assert!(
        discovery
            .resolve(products::SERVICE)
            .await
            .unwrap()
            .is_empty(),
        "deregistered on shutdown"
    );
}
