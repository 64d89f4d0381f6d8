use contracts::money::Money;
use platform::testing::{INTERNAL_TOKEN, expect_problem};
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::support::{Shop, product};

async fn count_products(shop: &Shop) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(shop.products.pool())
        .await
        .unwrap()
}

/// Sends `body` as it is (not necessarily JSON) as a manager.
async fn raw(shop: &Shop, method: Method, path: &str, body: String) -> Response {
    shop.client
        .request(method, shop.url(path))
        .bearer_auth(&shop.manager)
        .header("content-type", "application/json")
        .header("if-match", "*")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn creating_a_product_refuses_malformed_invalid_and_oversized_input() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let with = |change: Value| {
        let mut body = product("MUG-1", "Mug", 500, "mugs");
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let post = |body: String| raw(&shop, Method::POST, "/api/v1/products", body);

    // Malformed: 400.
    expect_problem(post("{\"sku\": ".into()).await, 400).await;
    let decimal = expect_problem(
        shop.try_create_product(with(json!({"price": {"amount": 19.99, "currency": "EUR"}})))
            .await,
        400,
    )
    .await;
    assert!(
        decimal["detail"].as_str().unwrap().contains("integer"),
        "{decimal}"
    );
    expect_problem(
        shop.try_create_product(with(json!({"price": "19.99 EUR"})))
            .await,
        400,
    )
    .await;
    expect_problem(
        shop.try_create_product(with(json!({"attributes": [1, 2]})))
            .await,
        400,
    )
    .await;
    expect_problem(
        shop.try_create_product(with(json!({"attributes": "big"})))
            .await,
        400,
    )
    .await;
    // Postgres cannot store U+0000, in text or in jsonb.
    for nul in [
        json!({"name": "Mug\u{0}"}),
        json!({"attributes": {"colour": "red\u{0}"}}),
    ] {
        let problem = expect_problem(shop.try_create_product(with(nul)).await, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("U+0000"),
            "{problem}"
        );
    }
    // A number or a boolean where text belongs is not read as its text (poem-openapi's
    // String would name the product "false").
    for not_text in [
        json!({"name": false}),
        json!({"sku": 12345}),
        json!({"category": true}),
        json!({"image_urls": [7]}),
        json!({"price": {"amount": 500, "currency": 978}}),
    ] {
        let problem =
            expect_problem(shop.try_create_product(with(not_text.clone())).await, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Expected input type \"string\""),
            "{not_text}: {problem}"
        );
    }
    let category = raw(
        &shop,
        Method::POST,
        "/api/v1/products/categories",
        json!({"slug": "false", "name": false}).to_string(),
    );
    expect_problem(category.await, 400).await;
    expect_problem(
        shop.try_create_product(with(json!({"image_urls": "x"})))
            .await,
        400,
    )
    .await;
    let unknown = expect_problem(
        shop.try_create_product(with(json!({"stock": 5}))).await,
        400,
    )
    .await;
    assert!(unknown["detail"].as_str().unwrap().contains("stock"));
    let mut no_price = product("MUG-1", "Mug", 500, "mugs");
    no_price.as_object_mut().unwrap().remove("price");
    expect_problem(shop.try_create_product(no_price).await, 400).await;
    expect_problem(
        shop.client
            .post(shop.url("/api/v1/products"))
            .bearer_auth(&shop.manager)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;

    // Too large for the 256 KiB body limit: 413, before anything reads it.
    let huge = with(json!({"description": "d".repeat(1024 * 1024)}));
    expect_problem(shop.try_create_product(huge).await, 413).await;

    // Well-formed but invalid: 422, naming each field.
    let negative = expect_problem(
        shop.try_create_product(with(json!({"price": {"amount": -1, "currency": "EUR"}})))
            .await,
        422,
    )
    .await;
    assert_eq!(fields(&negative), ["price.amount"]);
    // A price an order's total could not be added up with.
    let too_dear = expect_problem(
        shop.try_create_product(with(
            json!({"price": {"amount": Money::MAX_PRICE + 1, "currency": "EUR"}}),
        ))
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&too_dear), ["price.amount"]);
    for currency in ["eur", "EURO", "E1R", ""] {
        let p = expect_problem(
            shop.try_create_product(with(
                json!({"price": {"amount": 100, "currency": currency}}),
            ))
            .await,
            422,
        )
        .await;
        assert_eq!(fields(&p), ["price.currency"], "{currency:?}");
    }
    let all = expect_problem(
        shop.try_create_product(json!({
            "sku": "has space",
            "name": " ",
            "description": "d".repeat(10_001),
            "price": {"amount": -5, "currency": "eur"},
            "category": "mugs",
            "image_urls": ["ftp://example.com/a.png"],
        }))
        .await,
        422,
    )
    .await;
    assert_eq!(
        fields(&all),
        [
            "sku",
            "name",
            "description",
            "price.amount",
            "price.currency",
            "image_urls"
        ],
        "every wrong field is named at once"
    );
    let long_name = expect_problem(
        shop.try_create_product(with(json!({"name": "n".repeat(201)})))
            .await,
        422,
    )
    .await;
    assert_eq!(fields(&long_name), ["name"]);
    let category = expect_problem(
        shop.try_create_product(with(json!({"category": "cups"})))
            .await,
        422,
    )
    .await;
    assert_eq!(fields(&category), ["category"]);
    assert_eq!(count_products(&shop).await, 0, "nothing was created");

    // The limits themselves are fine.
    let edge = shop
        .create_product(with(
            json!({"name": "n".repeat(200), "description": "d".repeat(10_000),
                                    "price": {"amount": 0, "currency": "JPY"}}),
        ))
        .await;
    assert_eq!(edge["price"], json!({"amount": 0, "currency": "JPY"}));
    expect_problem(shop.try_create_product(with(json!({}))).await, 409).await;
    assert_eq!(count_products(&shop).await, 1);
}

#[tokio::test]
async fn listing_parameters_are_checked() {
    let shop = Shop::start().await;
    for (query, status) in [
        ("limit=0", 422),
        ("limit=101", 422),
        ("limit=-1", 400),
        ("limit=lots", 400),
        ("sort=cheapest", 400),
        ("sort=relevance", 422),
        ("sort=relevance&q=%20%20", 422),
        ("cursor=%%%", 400),
        ("cursor=eyJzIjoibmFtZSJ9", 400),
        (&format!("q={}", "a".repeat(201)), 422),
        // Postgres text cannot hold U+0000.
        ("q=mug%00", 400),
        ("category=mu%00gs", 400),
    ] {
        let problem = expect_problem(
            shop.get(&format!("/api/v1/products?{query}"))
                .send()
                .await
                .unwrap(),
            status,
        )
        .await;
        if status == 422 {
            assert!(!fields(&problem).is_empty(), "{query}");
        }
    }
    for query in [
        "limit=1",
        "limit=100",
        "sort=name",
        "sort=price",
        "sort=newest",
        "q=mug&sort=relevance",
    ] {
        let resp = shop
            .get(&format!("/api/v1/products?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{query}");
    }
}

#[tokio::test]
async fn paths_updates_categories_and_lookups_refuse_bad_input() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    let id = mug["id"].as_str().unwrap();
    let product_path = format!("/api/v1/products/{id}");

    // Malformed ids: 400 on every product route that takes one.
    expect_problem(
        shop.get("/api/v1/products/not-a-uuid")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_problem(
        shop.patch_product("not-a-uuid", Some("*"), json!({"name": "X"}))
            .await,
        400,
    )
    .await;
    expect_problem(shop.delete_product("not-a-uuid").await, 400).await;
    expect_problem(
        shop.get("/api/v1/products/no/such/route")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // Updates.
    expect_problem(
        raw(&shop, Method::PATCH, &product_path, "{\"name\": ".into()).await,
        400,
    )
    .await;
    expect_problem(
        shop.patch_product(id, Some("*"), json!({"sku": "MUG-2"}))
            .await,
        400,
    )
    .await;
    expect_problem(
        shop.patch_product(
            id,
            Some("*"),
            json!({"price": {"amount": 1.5, "currency": "EUR"}}),
        )
        .await,
        400,
    )
    .await;
    let empty = expect_problem(shop.patch_product(id, Some("*"), json!({})).await, 422).await;
    assert_eq!(fields(&empty), ["body"]);
    let bad = expect_problem(
        shop.patch_product(
            id,
            Some("*"),
            json!({"name": "", "price": {"amount": -1, "currency": "EUR"}}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["name", "price.amount"]);
    let cat = expect_problem(
        shop.patch_product(id, Some("*"), json!({"category": "cups"}))
            .await,
        422,
    )
    .await;
    assert_eq!(fields(&cat), ["category"]);
    expect_problem(
        raw(
            &shop,
            Method::PATCH,
            &product_path,
            format!("{{\"description\": \"{}\"}}", "d".repeat(1024 * 1024)),
        )
        .await,
        413,
    )
    .await;
    let now = shop.get_json(&product_path).await;
    assert_eq!(now["version"], 1, "no refused update changed the product");
    let dearest = shop
        .patch_product(
            id,
            Some("*"),
            json!({"price": {"amount": Money::MAX_PRICE, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(dearest.status(), 200, "the highest price is taken");

    // Categories.
    let post_category = |body: Value| {
        shop.manage(Method::POST, "/api/v1/products/categories", body)
            .send()
    };
    let slug = expect_problem(
        post_category(json!({"slug": "Big Mugs", "name": "Big mugs"}))
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(fields(&slug), ["slug"]);
    let both = expect_problem(
        post_category(json!({"slug": "", "name": ""}))
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(fields(&both), ["slug", "name"]);
    expect_problem(
        post_category(json!({"slug": "cups", "name": "Cups", "parent": "mugs"}))
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_problem(post_category(json!({"slug": "cups"})).await.unwrap(), 400).await;
    expect_problem(
        raw(
            &shop,
            Method::POST,
            "/api/v1/products/categories",
            "[]".into(),
        )
        .await,
        400,
    )
    .await;
    let rename = |body: Value| {
        shop.manage(Method::PATCH, "/api/v1/products/categories/mugs", body)
            .send()
    };
    expect_problem(
        rename(json!({"name": "Cups", "slug": "cups"}))
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_problem(rename(json!({"name": "x".repeat(101)})).await.unwrap(), 422).await;
    assert_eq!(
        shop.get_json("/api/v1/products/categories").await["items"][0]["name"],
        "Mugs"
    );

    // The internal lookup.
    let lookup = |body: String| {
        shop.client
            .post(shop.url("/internal/products/lookup"))
            .header("x-internal-token", INTERNAL_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_problem(
        lookup("{\"ids\": [\"not-a-uuid\"]}".into()).await.unwrap(),
        400,
    )
    .await;
    expect_problem(
        lookup("{\"ids\": [], \"all\": true}".into()).await.unwrap(),
        400,
    )
    .await;
    expect_problem(lookup("{\"ids\": ".into()).await.unwrap(), 400).await;
    expect_problem(lookup("{}".into()).await.unwrap(), 400).await;
}
