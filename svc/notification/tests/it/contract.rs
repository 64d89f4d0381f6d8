//! What the rest of the shop relies on: the committed OpenAPI document, health and readiness.

use platform::testing::assert_served_openapi_matches;
use serde_json::Value;

use crate::support::{Options, Service};

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let svc = Service::start(Options::default()).await;
    let served = assert_served_openapi_matches("notification", &svc.server.url()).await;
    let list = &served["paths"]["/api/v1/notifications"]["get"];
    assert_eq!(list["operationId"], "list_notifications");
    assert_eq!(list["tags"], serde_json::json!(["Notifications"]));
    assert!(
        list["security"].as_array().is_some_and(|s| !s.is_empty()),
        "the listing needs a bearer token"
    );
    let params: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["status", "user_id", "limit", "cursor"] {
        assert!(params.contains(&name), "{name} is documented: {params:?}");
    }
}

#[tokio::test]
async fn health_and_readiness_report_the_database_and_redis() {
    let svc = Service::start(Options::default()).await;
    let health: Value = reqwest::get(format!("{}/health", svc.server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "UP");
    let ready: Value = reqwest::get(format!("{}/ready", svc.server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["database"]["status"], "UP");
    assert_eq!(ready["checks"]["redis"]["status"], "UP");
}
