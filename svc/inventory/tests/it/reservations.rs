use platform::testing::expect_problem;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::Shop;

#[tokio::test]
async fn fifty_concurrent_orders_for_the_last_ten_units_reserve_exactly_ten() {
    let shop = Shop::start().await;
    let product = shop.stocked(10, 0).await;
    let attempts = (0..50).map(|_| {
        shop.reserve(
            Uuid::now_v7(),
            json!([{"product_id": product, "quantity": 1}]),
            600,
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        40,
        "{statuses:?}"
    );
    let stock = shop.stock(product).await;
    assert_eq!(stock["on_hand"], 10);
    assert_eq!(stock["reserved"], 10);
    assert_eq!(stock["available"], 0);
}

#[tokio::test]
async fn a_reservation_is_all_or_nothing_and_names_the_short_lines() {
    let shop = Shop::start().await;
    let plenty = shop.stocked(10, 0).await;
    let scarce = shop.stocked(1, 0).await;
    let resp = shop
        .reserve(
            Uuid::now_v7(),
            json!([{"product_id": plenty, "quantity": 5}, {"product_id": scarce, "quantity": 2}]),
            600,
        )
        .await;
    let body = expect_problem(resp, 409).await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 1);
    assert_eq!(body["errors"][0]["field"], scarce.to_string());
    assert_eq!(
        shop.stock(plenty).await["reserved"],
        0,
        "nothing was reserved"
    );
    assert_eq!(shop.stock(scarce).await["reserved"], 0);
}

#[tokio::test]
async fn replaying_a_reservation_with_the_same_order_id_changes_nothing() {
    let shop = Shop::start().await;
    let product = shop.stocked(10, 0).await;
    let order = Uuid::now_v7();
    let lines = json!([{"product_id": product, "quantity": 3}]);
    assert_eq!(shop.reserve(order, lines.clone(), 600).await.status(), 201);
    let replay = shop.reserve(order, lines, 600).await;
    assert_eq!(replay.status(), 200);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["status"], "held");
    assert_eq!(shop.stock(product).await["reserved"], 3);
    let other = shop
        .reserve(order, json!([{"product_id": product, "quantity": 4}]), 600)
        .await;
    expect_problem(other, 409).await;
    assert_eq!(shop.stock(product).await["reserved"], 3);
}

#[tokio::test]
async fn the_sweeper_releases_an_expired_reservation() {
    let shop = Shop::start().await;
    let product = shop.stocked(5, 0).await;
    let order = Uuid::now_v7();
    assert_eq!(
        shop.reserve(order, json!([{"product_id": product, "quantity": 2}]), 600)
            .await
            .status(),
        201
    );
    assert_eq!(
        shop.inventory.release_expired().await.unwrap(),
        0,
        "not expired yet"
    );
    shop.expire(order).await;
    assert_eq!(shop.inventory.release_expired().await.unwrap(), 1);
    let stock = shop.stock(product).await;
    assert_eq!(stock["reserved"], 0);
    assert_eq!(stock["on_hand"], 5);
    assert_eq!(
        shop.inventory.release_expired().await.unwrap(),
        0,
        "released once"
    );
}

#[tokio::test]
async fn committing_deducts_once_and_releasing_returns_stock_once() {
    let shop = Shop::start().await;
    let product = shop.stocked(5, 0).await;
    let (paid, cancelled) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [paid, cancelled] {
        assert_eq!(
            shop.reserve(order, json!([{"product_id": product, "quantity": 2}]), 600)
                .await
                .status(),
            201
        );
    }
    let pool = shop.inventory.pool();
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        inventory::store::finish_reservation(&mut tx, paid, true, "paid")
            .await
            .unwrap();
        inventory::store::finish_reservation(&mut tx, cancelled, false, "cancelled")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let stock = shop.stock(product).await;
    assert_eq!(stock["on_hand"], 3, "committed once");
    assert_eq!(stock["reserved"], 0);
}

#[tokio::test]
async fn on_hand_cannot_be_set_below_what_is_reserved() {
    let shop = Shop::start().await;
    let product = shop.stocked(5, 0).await;
    assert_eq!(
        shop.reserve(
            Uuid::now_v7(),
            json!([{"product_id": product, "quantity": 4}]),
            600
        )
        .await
        .status(),
        201
    );
    let resp = shop
        .client
        .put(shop.url(&format!("/api/v1/inventory/{product}")))
        .bearer_auth(&shop.manager)
        .json(&json!({"on_hand": 3, "safety_stock": 0}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 409).await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(5);
    let resp = shop
        .internal(
            "/internal/inventory/reservations",
            json!({"order_id": Uuid::now_v7(), "lines": [{"product_id": product, "quantity": 1}], "expires_at": past}),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422).await;
}

/// Runs one of inventory's event effects in a transaction of its own.
async fn in_tx<F>(shop: &Shop, effect: F)
where
    F: for<'c> FnOnce(
        &'c mut sqlx::PgConnection,
    ) -> futures::future::BoxFuture<'c, Result<bool, sqlx::Error>>,
{
    let mut tx = shop.inventory.pool().begin().await.unwrap();
    effect(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_refund_handled_before_its_payment_leaves_the_stock_as_if_they_came_in_order() {
    let shop = Shop::start().await;
    let product = shop.stocked(10, 0).await;
    // held: the payment's event not seen yet. released: it lapsed (or was cancelled) before.
    let (held, released) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [held, released] {
        assert_eq!(
            shop.reserve(order, json!([{"product_id": product, "quantity": 2}]), 600)
                .await
                .status(),
            201
        );
    }
    in_tx(&shop, |tx| {
        Box::pin(inventory::store::finish_reservation(
            tx, released, false, "expired",
        ))
    })
    .await;
    for order in [held, released] {
        in_tx(&shop, |tx| Box::pin(inventory::store::restock(tx, order))).await;
        // The payment's event comes last, and again.
        for _ in 0..2 {
            in_tx(&shop, |tx| {
                Box::pin(inventory::store::finish_reservation(
                    tx, order, true, "paid",
                ))
            })
            .await;
        }
    }
    let stock = shop.stock(product).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(10), Some(0)),
        "nothing is taken for good, nothing stays reserved"
    );
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM reservations WHERE order_id = ANY($1) ORDER BY order_id",
    )
    .bind(vec![held, released])
    .fetch_all(shop.inventory.pool())
    .await
    .unwrap();
    assert_eq!(statuses, ["restocked", "refunded"]);
}
