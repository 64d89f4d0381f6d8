use std::sync::Arc;
use std::time::Duration;

use platform::CancellationToken;
use platform::auth::Role;
use platform::discovery::{Discovery, LocalDiscovery, Registration};
use platform::runtime::Serving;
use platform::testing::{TestDb, TestIdentity, settings};
use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};
use uuid::Uuid;

/// Products, inventory and cart on port 0, found through one in-process registry.
pub struct Shop {
    pub cart: cart::Cart,
    pub discovery: Arc<LocalDiscovery>,
    pub identity: TestIdentity,
    pub client: Client,
    pub manager: String,
    pub cart_url: String,
    pub products_url: String,
    pub inventory_url: String,
    pub inventory_stop: CancellationToken,
    stop: CancellationToken,
    _servers: Vec<Serving>,
    _dbs: Vec<TestDb>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop.cancel();
        self.inventory_stop.cancel();
    }
}

impl Shop {
    pub async fn start() -> Self {
        Self::start_with_call_timeout(Duration::from_secs(2)).await
    }

    pub async fn start_with_call_timeout(timeout: Duration) -> Self {
        let identity = TestIdentity::new();
        let discovery = Arc::new(LocalDiscovery::new());
        let d: Arc<dyn Discovery> = discovery.clone();
        let stop = CancellationToken::new();
        let inventory_stop = CancellationToken::new();
        let (pdb, idb, cdb) = (
            TestDb::new("products"),
            TestDb::new("inventory"),
            TestDb::new("cart"),
        );

        let s = settings("products", &pdb, &identity).await;
        let (_, products_app) = products::app(
            products::ProductsConfig::from_settings(&s).unwrap(),
            d.clone(),
        )
        .await
        .unwrap();
        let products =
            platform::testing::serve_registered("products", products_app, d.clone(), &stop).await;

        let s = settings("inventory", &idb, &identity).await;
        let (_, inventory_app) = inventory::app(
            inventory::InventoryConfig::from_settings(&s).unwrap(),
            d.clone(),
        )
        .await
        .unwrap();
        let inventory = platform::testing::serve_registered(
            "inventory",
            inventory_app,
            d.clone(),
            &inventory_stop,
        )
        .await;

        let s = settings("cart", &cdb, &identity)
            .await
            .with("call_timeout_ms", timeout.as_millis().to_string());
        let (cart_state, cart_app) =
            cart::app(cart::CartConfig::from_settings(&s).unwrap(), d.clone())
                .await
                .unwrap();
        let cart = platform::testing::serve_registered("cart", cart_app, d.clone(), &stop).await;

        Self {
            cart: cart_state,
            manager: identity.token(Uuid::now_v7(), Role::Manager),
            identity,
            discovery,
            client: Client::new(),
            cart_url: cart.url(),
            products_url: products.url(),
            inventory_url: inventory.url(),
            inventory_stop,
            stop,
            _servers: vec![products, inventory, cart],
            _dbs: vec![pdb, idb, cdb],
        }
    }

    pub fn customer(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        (id, self.identity.token(id, Role::Customer))
    }

    pub fn cart(&self, method: reqwest::Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.cart_url))
            .bearer_auth(token)
    }

    /// A product on sale at `price` cents with `stock` units available.
    pub async fn product(&self, name: &str, price: i64, stock: i32) -> Uuid {
        let category = format!("c{}", &Uuid::new_v4().simple().to_string()[..8]);
        let resp = self
            .client
            .post(format!("{}/api/v1/products/categories", self.products_url))
            .bearer_auth(&self.manager)
            .json(&json!({"slug": category, "name": "Things"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        let resp = self
            .client
            .post(format!("{}/api/v1/products", self.products_url))
            .bearer_auth(&self.manager)
            .json(&json!({
                "sku": format!("SKU-{}", Uuid::new_v4().simple()),
                "name": name, "description": format!("A {name}"),
                "price": {"amount": price, "currency": "EUR"},
                "category": category, "image_urls": [], "attributes": {}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let product: Value = resp.json().await.unwrap();
        let id: Uuid = product["id"].as_str().unwrap().parse().unwrap();
        let resp = self
            .client
            .put(format!("{}/api/v1/inventory/{id}", self.inventory_url))
            .bearer_auth(&self.manager)
            .json(&json!({"on_hand": stock, "safety_stock": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        id
    }

    /// Registers an inventory instance that accepts connections and never answers.
    pub async fn hung_inventory(&self) -> tokio::net::TcpListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        self.discovery
            .register(&Registration::new("inventory", "127.0.0.1", port))
            .await
            .unwrap();
        listener
    }
}
