use std::sync::Arc;

use platform::auth::Role;
use platform::discovery::LocalDiscovery;
use platform::testing::{self, TestDb, TestIdentity, TestServer};
use products::{Products, ProductsConfig};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use uuid::Uuid;

pub struct Shop {
    pub products: Products,
    pub server: TestServer,
    pub client: Client,
    /// A `MANAGER` access token (holds `product:write`).
    pub manager: String,
    /// A `CUSTOMER` access token.
    pub customer: String,
    _identity: TestIdentity,
    _db: TestDb,
}

impl Shop {
    pub async fn start() -> Self {
        let db = TestDb::new("products");
        let identity = TestIdentity::new();
        let settings = testing::settings(products::SERVICE, &db, &identity).await;
        let config = ProductsConfig::from_settings(&settings).unwrap();
        let (products, app) = products::app(config, Arc::new(LocalDiscovery::new()))
            .await
            .expect("products starts (Postgres and Redis must be running)");
        let server = TestServer::start(app).await;
        Self {
            products,
            server,
            client: Client::new(),
            manager: identity.token(Uuid::now_v7(), Role::Manager),
            customer: identity.token(Uuid::now_v7(), Role::Customer),
            _identity: identity,
            _db: db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    /// A manager's request with a JSON body.
    pub fn manage(&self, method: reqwest::Method, path: &str, body: Value) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.manager)
            .json(&body)
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    pub async fn create_category(&self, slug: &str, name: &str) -> Value {
        let resp = self
            .manage(
                reqwest::Method::POST,
                "/api/v1/products/categories",
                json!({"slug": slug, "name": name}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create category {slug}");
        resp.json().await.unwrap()
    }

    pub async fn try_create_product(&self, body: Value) -> Response {
        self.manage(reqwest::Method::POST, "/api/v1/products", body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a product (201 expected) and returns it.
    pub async fn create_product(&self, body: Value) -> Value {
        let resp = self.try_create_product(body.clone()).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 201, "create product {body}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Patches a product with `If-Match: if_match` (none when `None`).
    pub async fn patch_product(&self, id: &str, if_match: Option<&str>, body: Value) -> Response {
        let mut req = self.manage(
            reqwest::Method::PATCH,
            &format!("/api/v1/products/{id}"),
            body,
        );
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        req.send().await.unwrap()
    }

    pub async fn delete_product(&self, id: &str) -> Response {
        self.client
            .delete(self.url(&format!("/api/v1/products/{id}")))
            .bearer_auth(&self.manager)
            .send()
            .await
            .unwrap()
    }
}

/// A valid product body in `category`.
pub fn product(sku: &str, name: &str, amount: i64, category: &str) -> Value {
    json!({
        "sku": sku,
        "name": name,
        "description": format!("The {name}, a fine thing."),
        "price": {"amount": amount, "currency": "EUR"},
        "category": category,
        "image_urls": [format!("https://img.example.com/{sku}.png")],
        "attributes": {"colour": "blue", "size": 3},
    })
}

/// The ETag header of a response.
pub fn etag(resp: &Response) -> String {
    resp.headers()
        .get("etag")
        .expect("an ETag header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `field`s of a listing page's items.
pub fn field_of(page: &Value, field: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a listing, following `next_cursor`: the skus in order and the page count.
pub async fn walk(shop: &Shop, query: &str) -> (Vec<String>, usize) {
    let mut skus = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/products?{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = shop.get_json(&path).await;
        pages += 1;
        skus.extend(field_of(&page, "sku"));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 1000, "the listing ends");
    }
    (skus, pages)
}
