//! What the rest of the shop relies on: the committed OpenAPI document, discovery on port 0,
//! health and readiness.

use std::sync::Arc;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery};

use crate::support::Shop;

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let shop = Shop::start().await;
    let served: serde_json::Value = shop
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/users.json");
    let rendered = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "openapi/users.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p users the_committed_openapi` and commit it"
    );
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op.get("operationId").is_some(),
                "{method} {path} has an operationId"
            );
        }
    }
}

#[tokio::test]
async fn users_on_port_zero_is_found_through_discovery() {
    let shop = Shop::start().await;
    let discovery = Arc::new(LocalDiscovery::new());
    let shutdown = CancellationToken::new();
    let serving = platform::runtime::serve(
        "users",
        shop.users.app(),
        "127.0.0.1:0",
        "127.0.0.1",
        discovery.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_ne!(serving.addr.port(), 0);
    let found = discovery.resolve("users").await.unwrap();
    assert_eq!(found.len(), 1);
    let health: serde_json::Value = reqwest::get(format!("{}/health", found[0].base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "UP");
    let ready = reqwest::get(format!("{}/ready", found[0].base_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["database"]["status"], "UP");
    assert_eq!(ready["checks"]["redis"]["status"], "UP");

    shutdown.cancel();
    serving.task.await.unwrap().unwrap();
    assert!(
        discovery.resolve("users").await.unwrap().is_empty(),
        "deregistered on shutdown"
    );
}
