use platform::testing::{INTERNAL_TOKEN, expect_problem};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::support::{Shop, product};

/// Every manager route, with a valid body.
fn manager_routes(product_id: &str) -> Vec<(Method, String, Value)> {
    vec![
        (
            Method::POST,
            "/api/v1/products/categories".into(),
            json!({"slug": "cups", "name": "Cups"}),
        ),
        (
            Method::PATCH,
            "/api/v1/products/categories/mugs".into(),
            json!({"name": "Renamed"}),
        ),
        (
            Method::DELETE,
            "/api/v1/products/categories/spare".into(),
            json!({}),
        ),
        (
            Method::POST,
            "/api/v1/products".into(),
            product("NEW-1", "New", 100, "mugs"),
        ),
        (
            Method::PATCH,
            format!("/api/v1/products/{product_id}"),
            json!({"name": "Renamed"}),
        ),
        (
            Method::DELETE,
            format!("/api/v1/products/{product_id}"),
            json!({}),
        ),
    ]
}

fn request(shop: &Shop, method: &Method, path: &str, body: &Value) -> RequestBuilder {
    let req = shop
        .client
        .request(method.clone(), shop.url(path))
        .header("if-match", "\"1\"");
    if *method == Method::DELETE {
        req
    } else {
        req.json(body)
    }
}

#[tokio::test]
async fn a_customer_gets_403_and_an_anonymous_caller_401_on_every_manager_route() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    shop.create_category("spare", "Spare").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    let id = mug["id"].as_str().unwrap();

    for (method, path, body) in manager_routes(id) {
        let resp = request(&shop, &method, &path, &body)
            .bearer_auth(&shop.customer)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 403).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("product:write"),
            "{method} {path}"
        );
        expect_problem(
            request(&shop, &method, &path, &body).send().await.unwrap(),
            401,
        )
        .await;
        expect_problem(
            request(&shop, &method, &path, &body)
                .bearer_auth("not.a.token")
                .send()
                .await
                .unwrap(),
            401,
        )
        .await;
    }
    // Told 403, not what its body got wrong: the route is not the customer's to use.
    for (method, path, _) in manager_routes(id) {
        let resp = shop
            .client
            .request(method.clone(), shop.url(&path))
            .header("content-type", "application/json")
            .body(r#"{"name": 5, "admin": true"#)
            .bearer_auth(&shop.customer)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 403).await;
    }
    // Nothing changed.
    let now = shop.get_json(&format!("/api/v1/products/{id}")).await;
    assert_eq!(now["name"], "Mug");
    assert_eq!(now["active"], true);
    assert_eq!(now["version"], 1);
    let categories = shop.get_json("/api/v1/products/categories").await;
    assert_eq!(categories["items"].as_array().unwrap().len(), 2);
    assert_eq!(categories["items"][0]["name"], "Mugs");
    let listed = shop.get_json("/api/v1/products").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // The same routes work for a manager (so the 403s above were about the role).
    for (method, path, body) in manager_routes(id) {
        let resp = request(&shop, &method, &path, &body)
            .bearer_auth(&shop.manager)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
    }
}

#[tokio::test]
async fn reads_need_no_token() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    for path in [
        "/api/v1/products".to_owned(),
        format!("/api/v1/products/{}", mug["id"].as_str().unwrap()),
        "/api/v1/products/sku/MUG-1".to_owned(),
        "/api/v1/products/categories".to_owned(),
        "/api/v1/products?q=mug".to_owned(),
    ] {
        let resp = shop.get(&path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_internal_lookup_needs_the_internal_token_and_answers_current_products() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let a = shop
        .create_product(product("A-1", "Alpha", 100, "mugs"))
        .await;
    let b = shop
        .create_product(product("B-1", "Bravo", 250, "mugs"))
        .await;
    let c = shop
        .create_product(product("C-1", "Charlie", 999, "mugs"))
        .await;
    let b_id = b["id"].as_str().unwrap();
    let changed = shop
        .patch_product(
            b_id,
            Some("\"1\""),
            json!({"name": "Bravo II", "price": {"amount": 275, "currency": "USD"}}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(
        shop.delete_product(c["id"].as_str().unwrap())
            .await
            .status(),
        204
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let body = json!({"ids": [a["id"], b["id"], c["id"], unknown, b["id"]]});
    let lookup = || {
        shop.client
            .post(shop.url("/internal/products/lookup"))
            .json(&body)
    };

    let refused = lookup().send().await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    expect_problem(refused, 401).await;
    expect_problem(
        lookup()
            .header("x-internal-token", "guess")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    expect_problem(
        lookup().bearer_auth(&shop.manager).send().await.unwrap(),
        401,
    )
    .await;

    let resp = lookup()
        .header("x-internal-token", INTERNAL_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found: Value = resp.json().await.unwrap();
    let mut products = found["products"].as_array().unwrap().clone();
    products.sort_by_key(|p| p["sku"].as_str().unwrap().to_owned());
    assert_eq!(
        products,
        vec![
            json!({"id": a["id"], "sku": "A-1", "name": "Alpha", "price": {"amount": 100, "currency": "EUR"}, "active": true}),
            json!({"id": b["id"], "sku": "B-1", "name": "Bravo II", "price": {"amount": 275, "currency": "USD"}, "active": true}),
            json!({"id": c["id"], "sku": "C-1", "name": "Charlie", "price": {"amount": 999, "currency": "EUR"}, "active": false}),
        ],
        "current values, inactive ones flagged, unknown ids left out, duplicates once"
    );

    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let too_many = shop
        .client
        .post(shop.url("/internal/products/lookup"))
        .header("x-internal-token", INTERNAL_TOKEN)
        .json(&json!({"ids": many}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(too_many, 422).await;
    assert_eq!(problem["errors"][0]["field"], "ids");
    let hundred: Vec<String> = many[..100].to_vec();
    let ok = shop
        .client
        .post(shop.url("/internal/products/lookup"))
        .header("x-internal-token", INTERNAL_TOKEN)
        .json(&json!({"ids": hundred}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["products"], json!([]));
}
