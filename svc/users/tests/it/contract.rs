//! What the rest of the shop relies on: the committed OpenAPI document, discovery on port 0,
//! health and readiness.

use std::sync::Arc;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery};

use crate::support::Shop;

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let shop = Shop::start().await;
    let served =
        platform::testing::assert_served_openapi_matches("users", &shop.server.url()).await;
    let sent = platform::testing::assert_closed_bodies_refuse_unnamed_fields(
        &shop.server.url(),
        &served,
        &shop.admin().await,
    )
    .await;
    assert!(sent >= 7, "every JSON body of users is closed: {sent}");
}

#[tokio::test]
async fn users_on_port_zero_is_found_through_discovery() {
    let shop = Shop::start().await;
    let discovery = Arc::new(LocalDiscovery::new());
    let shutdown = CancellationToken::new();
    let serving = platform::testing::serve_registered(
        "users",
        shop.users.app(),
        discovery.clone(),
        &shutdown,
    )
    .await;
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

/// The operators' path without Nomad: the KV seed imported into Consul (here its HTTP double),
/// the service configured from Consul KV and registered in Consul, found by a resolve.
#[tokio::test]
async fn users_runs_in_consul_mode_from_the_imported_kv_seed() {
    use platform::config::{ConfigSource, Settings};
    use platform::consul::Consul;
    use platform::testing::consul_double::ConsulDouble;

    let double = ConsulDouble::with_kv_seed().await;
    let consul = Arc::new(Consul::new(&double.url(), None).unwrap());
    let db = platform::testing::TestDb::new("users_consul");
    // What a deployment puts in KV for its own environment (the signing key would come from a
    // Nomad variable through the environment; KV stands in for it here).
    for (key, value) in [
        ("micromart/users/database_url", db.url.clone()),
        ("micromart/shared/redis_url", platform::testing::redis_url()),
        (
            "micromart/shared/redis_prefix",
            platform::testing::redis_prefix(),
        ),
        (
            "micromart/users/jwt_signing_key",
            platform::auth::SigningKey::generate_pem(),
        ),
        (
            "micromart/shared/internal_token",
            platform::testing::INTERNAL_TOKEN.to_owned(),
        ),
    ] {
        consul.set(key, &value).await.unwrap();
    }
    let settings = Settings::load(consul.as_ref(), "users").await.unwrap();
    assert_eq!(
        settings.raw("login_max_failures"),
        Some("5"),
        "defaults come from the imported seed"
    );
    let (_, app) = users::app(users::UsersConfig::from_settings(&settings).unwrap())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let serving =
        platform::testing::serve_registered("users", app, consul.clone(), &shutdown).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let instance = loop {
        if let Some(i) = consul.resolve("users").await.unwrap().into_iter().next() {
            break i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "users never passed its Consul check"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(instance.port, serving.addr.port());
    let registered = reqwest::Client::new()
        .post(format!("{}/api/v1/users/register", instance.base_url()))
        .json(&serde_json::json!({"email": "consul@example.com", "password": "correct horse battery", "name": "C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    shutdown.cancel();
    serving.task.await.unwrap().unwrap();
    assert!(
        consul.resolve("users").await.unwrap().is_empty(),
        "deregistered from Consul on shutdown"
    );
}
