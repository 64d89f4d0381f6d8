use platform::testing::expect_problem;
use serde_json::{Value, json};

use crate::support::{Shop, etag, product};

#[tokio::test]
async fn an_update_needs_if_match_428_without_it_and_412_when_stale() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    let id = mug["id"].as_str().unwrap();

    let missing = expect_problem(
        shop.patch_product(id, None, json!({"name": "Big mug"}))
            .await,
        428,
    )
    .await;
    assert!(missing["detail"].as_str().unwrap().contains("If-Match"));

    let ok = shop
        .patch_product(id, Some("\"1\""), json!({"name": "Big mug"}))
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(etag(&ok), "\"2\"");

    // Someone else read version 1 and tries to write over the change.
    let stale = expect_problem(
        shop.patch_product(id, Some("\"1\""), json!({"name": "Small mug"}))
            .await,
        412,
    )
    .await;
    assert!(
        stale["detail"].as_str().unwrap().contains("\"2\""),
        "names the current ETag"
    );
    // A weak tag never matches (If-Match compares strongly), a list matches any member.
    expect_problem(
        shop.patch_product(id, Some("W/\"2\""), json!({"name": "Small mug"}))
            .await,
        412,
    )
    .await;
    let listed = shop
        .patch_product(
            id,
            Some("\"7\", \"2\""),
            json!({"description": "Holds tea."}),
        )
        .await;
    assert_eq!(listed.status(), 200);
    assert_eq!(etag(&listed), "\"3\"");
    let star = shop
        .patch_product(
            id,
            Some("*"),
            json!({"price": {"amount": 650, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(star.status(), 200);
    assert_eq!(etag(&star), "\"4\"");

    let now = shop
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&now), "\"4\"");
    let now: Value = now.json().await.unwrap();
    assert_eq!(
        now["name"], "Big mug",
        "the refused updates changed nothing"
    );
    assert_eq!(now["description"], "Holds tea.");
    assert_eq!(now["price"]["amount"], 650);
    assert_eq!(now["version"], 4);
}

#[tokio::test]
async fn of_two_concurrent_updates_from_the_same_version_exactly_one_wins() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    let id = mug["id"].as_str().unwrap();
    for round in 1..=5 {
        let tag = format!("\"{round}\"");
        let (a, b) = tokio::join!(
            shop.patch_product(id, Some(&tag), json!({"name": format!("A{round}")})),
            shop.patch_product(id, Some(&tag), json!({"name": format!("B{round}")})),
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "round {round}");
        let winner = if a.status() == 200 { "A" } else { "B" };
        let now = shop.get_json(&format!("/api/v1/products/{id}")).await;
        assert_eq!(now["name"], format!("{winner}{round}"));
        assert_eq!(now["version"], round + 1);
    }
}
