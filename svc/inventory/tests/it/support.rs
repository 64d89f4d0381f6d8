use std::sync::Arc;

use platform::auth::Role;
use platform::discovery::LocalDiscovery;
use platform::testing::{INTERNAL_TOKEN, TestDb, TestIdentity, TestServer, settings};
use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};
use uuid::Uuid;

pub struct Shop {
    pub inventory: inventory::Inventory,
    pub server: TestServer,
    pub client: Client,
    pub manager: String,
    pub customer: String,
    _db: TestDb,
}

impl Shop {
    pub async fn start() -> Self {
        let db = TestDb::new("inventory");
        let identity = TestIdentity::new();
        let s = settings("inventory", &db, &identity).await;
        let config = inventory::InventoryConfig::from_settings(&s).unwrap();
        let (state, app) = inventory::app(config, Arc::new(LocalDiscovery::new()))
            .await
            .expect("inventory starts (Postgres and Redis must be running)");
        let server = TestServer::start(app).await;
        Self {
            inventory: state,
            server,
            manager: identity.token(Uuid::now_v7(), Role::Manager),
            customer: identity.token(Uuid::now_v7(), Role::Customer),
            client: Client::new(),
            _db: db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn internal(&self, path: &str, body: Value) -> RequestBuilder {
        self.client
            .post(self.url(path))
            .header("x-internal-token", INTERNAL_TOKEN)
            .json(&body)
    }

    /// Sets stock as a manager; returns the product id.
    pub async fn stocked(&self, on_hand: i32, safety_stock: i32) -> Uuid {
        let product = Uuid::now_v7();
        let resp = self
            .client
            .put(self.url(&format!("/api/v1/inventory/{product}")))
            .bearer_auth(&self.manager)
            .json(&json!({"on_hand": on_hand, "safety_stock": safety_stock}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        product
    }

    /// The full view of a product's stock.
    pub async fn stock(&self, product: Uuid) -> Value {
        self.get(&format!("/api/v1/inventory/{product}"))
            .bearer_auth(&self.manager)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn reserve(
        &self,
        order: Uuid,
        lines: Value,
        expires_in_secs: i64,
    ) -> reqwest::Response {
        let expires_at = chrono::Utc::now() + chrono::Duration::seconds(expires_in_secs);
        self.internal(
            "/internal/inventory/reservations",
            json!({"order_id": order, "lines": lines, "expires_at": expires_at}),
        )
        .send()
        .await
        .unwrap()
    }

    /// Lets `order`'s reservation expire (moved in the database rather than waited for).
    pub async fn expire(&self, order: Uuid) {
        sqlx::query(
            "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE order_id = $1",
        )
        .bind(order)
        .execute(self.inventory.pool())
        .await
        .unwrap();
    }
}
