use std::time::{Duration, Instant};

use platform::testing::{INTERNAL_TOKEN, assert_served_openapi_matches, expect_problem};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::Shop;

async fn put_item(shop: &Shop, token: &str, product: Uuid, quantity: Value) -> reqwest::Response {
    shop.cart(Method::PUT, &format!("/api/v1/cart/items/{product}"), token)
        .json(&json!({"quantity": quantity}))
        .send()
        .await
        .unwrap()
}

async fn cart_of(shop: &Shop, token: &str) -> Value {
    let resp = shop
        .cart(Method::GET, "/api/v1/cart", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_customer_fills_reads_and_empties_a_priced_cart() {
    let shop = Shop::start().await;
    let (_, alice) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    let tea = shop.product("tea", 499, 3).await;
    let line: Value = put_item(&shop, &alice, mug, json!(2))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        line["line_total"],
        json!({"amount": 2500, "currency": "EUR"})
    );
    assert_eq!(put_item(&shop, &alice, tea, json!(3)).await.status(), 200);
    assert_eq!(
        put_item(&shop, &alice, mug, json!(4)).await.status(),
        200,
        "setting again replaces the quantity"
    );
    let cart = cart_of(&shop, &alice).await;
    assert_eq!(cart["lines"].as_array().unwrap().len(), 2);
    assert_eq!(cart["lines"][0]["name"], "mug");
    assert_eq!(cart["lines"][0]["quantity"], 4);
    assert_eq!(
        cart["lines"][0]["unit_price"],
        json!({"amount": 1250, "currency": "EUR"})
    );
    assert_eq!(
        cart["totals"],
        json!([{"amount": 4 * 1250 + 3 * 499, "currency": "EUR"}])
    );
    assert_eq!(cart["item_count"], 7);

    let removed = shop
        .cart(Method::DELETE, &format!("/api/v1/cart/items/{tea}"), &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(
        cart_of(&shop, &alice).await["lines"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        shop.cart(Method::DELETE, "/api/v1/cart", &alice)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(cart_of(&shop, &alice).await["lines"], json!([]));
}

#[tokio::test]
async fn not_enough_stock_is_a_409_that_says_how_many_are_left() {
    let shop = Shop::start().await;
    let (_, bob) = shop.customer();
    let lamp = shop.product("lamp", 3000, 2).await;
    let body = expect_problem(put_item(&shop, &bob, lamp, json!(3)).await, 409).await;
    assert!(
        body["detail"].as_str().unwrap().contains("2 available"),
        "{body}"
    );
    assert_eq!(cart_of(&shop, &bob).await["lines"], json!([]));
}

#[tokio::test]
async fn lines_that_became_unavailable_are_flagged_and_left_out_of_the_total() {
    let shop = Shop::start().await;
    let (_, carol) = shop.customer();
    let kept = shop.product("kept", 100, 5).await;
    let gone = shop.product("gone", 200, 5).await;
    let sold_out = shop.product("sold out", 300, 5).await;
    for p in [kept, gone, sold_out] {
        assert_eq!(put_item(&shop, &carol, p, json!(2)).await.status(), 200);
    }
    let resp = shop
        .client
        .delete(format!("{}/api/v1/products/{gone}", shop.products_url))
        .bearer_auth(&shop.manager)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = shop
        .client
        .put(format!(
            "{}/api/v1/inventory/{sold_out}",
            shop.inventory_url
        ))
        .bearer_auth(&shop.manager)
        .json(&json!({"on_hand": 1, "safety_stock": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cart = cart_of(&shop, &carol).await;
    let flags: Vec<(bool, Value)> = cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["available"].as_bool().unwrap(),
                l["unavailable_reason"].clone(),
            )
        })
        .collect();
    assert_eq!(flags[0], (true, Value::Null));
    assert!(!flags[1].0);
    assert!(!flags[2].0);
    assert_eq!(cart["totals"], json!([{"amount": 200, "currency": "EUR"}]));
    expect_problem(put_item(&shop, &carol, gone, json!(1)).await, 409).await;
}

#[tokio::test]
async fn a_customer_can_never_see_or_change_another_customers_cart() {
    let shop = Shop::start().await;
    let (alice_id, alice) = shop.customer();
    let (_, bob) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    assert_eq!(put_item(&shop, &alice, mug, json!(2)).await.status(), 200);
    assert_eq!(
        cart_of(&shop, &bob).await["lines"],
        json!([]),
        "bob sees only his own cart"
    );
    assert_eq!(
        shop.cart(Method::DELETE, "/api/v1/cart", &bob)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        shop.cart(Method::DELETE, &format!("/api/v1/cart/items/{mug}"), &bob)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        cart_of(&shop, &alice).await["lines"][0]["quantity"],
        2,
        "bob's deletes touched only his cart"
    );
    // The internal route needs the service credential; a customer's token is not one.
    let resp = shop
        .cart(Method::GET, &format!("/internal/carts/{alice_id}"), &bob)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    let internal: Value = shop
        .client
        .get(format!("{}/internal/carts/{alice_id}", shop.cart_url))
        .header("x-internal-token", INTERNAL_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        internal["lines"],
        json!([{"product_id": mug, "quantity": 2}])
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_problem_json() {
    let shop = Shop::start().await;
    let (_, dan) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    for q in [json!(0), json!(100), json!(-1)] {
        expect_problem(put_item(&shop, &dan, mug, q).await, 422).await;
    }
    expect_problem(put_item(&shop, &dan, mug, json!(1.5)).await, 400).await;
    expect_problem(put_item(&shop, &dan, mug, json!("two")).await, 400).await;
    expect_problem(put_item(&shop, &dan, Uuid::now_v7(), json!(1)).await, 404).await;
    let resp = shop
        .cart(Method::PUT, "/api/v1/cart/items/not-a-uuid", &dan)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400).await;
    let resp = shop
        .cart(Method::PUT, &format!("/api/v1/cart/items/{mug}"), &dan)
        .json(&json!({"quantity": 1, "price": 1}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400).await;
    expect_problem(
        shop.client
            .get(format!("{}/api/v1/cart", shop.cart_url))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let manager_without_shop = shop
        .cart(Method::GET, "/api/v1/cart", &shop.manager)
        .send()
        .await
        .unwrap();
    assert_eq!(manager_without_shop.status(), 200, "managers shop too");
    assert_eq!(cart_of(&shop, &dan).await["lines"], json!([]));
}

#[tokio::test]
async fn with_inventory_stopped_adding_answers_503_at_once() {
    let shop = Shop::start().await;
    let (_, erin) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    shop.inventory_stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let resp = put_item(&shop, &erin, mug, json!(1)).await;
    assert!(resp.headers().contains_key("retry-after"));
    expect_problem(resp, 503).await;
    assert!(started.elapsed() < Duration::from_secs(2), "no hang");
    assert_eq!(
        cart_of(&shop, &erin).await["lines"],
        json!([]),
        "nothing was added"
    );
}

#[tokio::test]
async fn with_inventory_hung_adding_fails_within_the_call_timeout() {
    let shop = Shop::start_with_call_timeout(Duration::from_millis(500)).await;
    let (_, fay) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    shop.inventory_stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _hung = shop.hung_inventory().await;
    let started = Instant::now();
    let resp = put_item(&shop, &fay, mug, json!(1)).await;
    let elapsed = started.elapsed();
    expect_problem(resp, 504).await;
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn idle_carts_are_removed_by_the_sweeper() {
    let shop = Shop::start().await;
    let (idle_id, idle) = shop.customer();
    let (_, active) = shop.customer();
    let mug = shop.product("mug", 1250, 10).await;
    assert_eq!(put_item(&shop, &idle, mug, json!(1)).await.status(), 200);
    assert_eq!(put_item(&shop, &active, mug, json!(1)).await.status(), 200);
    sqlx::query("UPDATE carts SET updated_at = now() - interval '31 days' WHERE user_id = $1")
        .bind(idle_id)
        .execute(shop.cart.pool())
        .await
        .unwrap();
    assert_eq!(shop.cart.remove_idle_carts().await.unwrap(), 1);
    assert_eq!(cart_of(&shop, &idle).await["lines"], json!([]));
    assert_eq!(
        cart_of(&shop, &active).await["lines"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let shop = Shop::start().await;
    let served = assert_served_openapi_matches("cart", &shop.cart_url).await;
    let sent = platform::testing::assert_closed_bodies_refuse_unnamed_fields(
        &shop.cart_url,
        &served,
        &shop.manager,
    )
    .await;
    assert!(sent >= 1, "every JSON body of cart is closed: {sent}");
}

#[tokio::test]
async fn a_cart_holds_no_more_products_than_it_can_be_priced_and_checked_out_with() {
    use contracts::internal::MAX_LINES;
    let shop = Shop::start().await;
    let (_, alice) = shop.customer();
    let mut products = Vec::with_capacity(MAX_LINES + 1);
    for i in 0..=MAX_LINES {
        products.push(shop.product(&format!("thing {i}"), 100, 5).await);
    }
    let (first, last_two) = products.split_at(MAX_LINES - 1);
    for &product in first {
        assert_eq!(
            put_item(&shop, &alice, product, json!(1)).await.status(),
            200
        );
    }
    // Two new products at once for the one free line: one is taken, the other refused.
    let (a, b) = tokio::join!(
        put_item(&shop, &alice, last_two[0], json!(1)),
        put_item(&shop, &alice, last_two[1], json!(1)),
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let refused = if a.status() == 409 { a } else { b };
    let body = expect_problem(refused, 409).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{MAX_LINES} different products")),
        "{body}"
    );
    let cart = cart_of(&shop, &alice).await;
    assert_eq!(
        cart["lines"].as_array().unwrap().len(),
        MAX_LINES,
        "a full cart is priced"
    );
    assert_eq!(
        put_item(&shop, &alice, first[0], json!(3)).await.status(),
        200,
        "a line the full cart holds can still change"
    );
    let removed = shop
        .cart(
            Method::DELETE,
            &format!("/api/v1/cart/items/{}", first[1]),
            &alice,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let in_cart: Vec<String> = cart_of(&shop, &alice).await["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["product_id"].as_str().unwrap().to_owned())
        .collect();
    let left_out = last_two
        .iter()
        .find(|p| !in_cart.contains(&p.to_string()))
        .expect("one of the two was refused");
    assert_eq!(
        put_item(&shop, &alice, *left_out, json!(1)).await.status(),
        200,
        "a line given up makes room for another"
    );
}
