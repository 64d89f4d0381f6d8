use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{Shop, field_of, product, walk};

/// The rule the bulk catalog follows: every thousandth product is made of titanium.
fn titanium(i: i64) -> bool {
    i % 1000 == 0
}

const BULK: i64 = 10_000;

#[tokio::test]
async fn search_over_ten_thousand_products_finds_the_right_ones_and_uses_the_index() {
    let shop = Shop::start().await;
    let widgets = shop.create_category("widgets", "Widgets").await;
    shop.create_category("tools", "Tools").await;
    let done = sqlx::query(
        "INSERT INTO products (id, sku, name, description, price_amount, currency, category_id)
         SELECT gen_random_uuid(),
                'BULK-' || lpad(i::text, 5, '0'),
                'Widget ' || i,
                'An ordinary widget, number ' || i
                    || CASE WHEN i % 1000 = 0 THEN ', made of titanium' ELSE '' END,
                100 + i, 'EUR', $1
         FROM generate_series(1, $2::bigint) AS i",
    )
    .bind(uuid::Uuid::parse_str(widgets["id"].as_str().unwrap()).unwrap())
    .bind(BULK)
    .execute(shop.products.pool())
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), BULK as u64);
    // Through the API: titanium in the name (ranked above a mention in a description), in
    // another category, and an inactive one that no search may show.
    let spork = shop
        .create_product(product("TI-SPORK", "Titanium spork", 2500, "tools"))
        .await;
    let gone = shop
        .create_product(product("TI-GONE", "Titanium pan", 9900, "tools"))
        .await;
    assert_eq!(
        shop.delete_product(gone["id"].as_str().unwrap())
            .await
            .status(),
        204
    );
    sqlx::query("ANALYZE products")
        .execute(shop.products.pool())
        .await
        .unwrap();

    let bulk_titanium: Vec<String> = (1..=BULK)
        .filter(|i| titanium(*i))
        .map(|i| format!("BULK-{i:05}"))
        .collect();
    assert_eq!(bulk_titanium.len(), 10);

    let page = shop.get_json("/api/v1/products?q=titanium").await;
    let found = field_of(&page, "sku");
    assert_eq!(found.len(), 11, "{found:?}");
    assert_eq!(found[0], "TI-SPORK", "a match in the name ranks first");
    let rest: BTreeSet<&String> = found[1..].iter().collect();
    assert_eq!(
        rest,
        bulk_titanium.iter().collect(),
        "exactly the titanium widgets"
    );
    assert!(page.get("next_cursor").is_none());

    // Stemming: "Titanium" in any case and form; the search syntax's exclusion and phrases.
    assert_eq!(
        field_of(
            &shop.get_json("/api/v1/products?q=TITANIUM%20sporks").await,
            "sku"
        ),
        ["TI-SPORK"]
    );
    let without: Vec<String> = field_of(
        &shop
            .get_json("/api/v1/products?q=titanium%20-spork&sort=price")
            .await,
        "sku",
    );
    assert_eq!(
        without, bulk_titanium,
        "by price: the bulk prices follow their numbers"
    );
    let phrase = shop
        .get_json("/api/v1/products?q=%22number%204321%22")
        .await;
    assert_eq!(field_of(&phrase, "sku"), ["BULK-04321"]);
    let in_tools = shop
        .get_json("/api/v1/products?q=titanium&category=tools")
        .await;
    assert_eq!(field_of(&in_tools, "sku"), ["TI-SPORK"]);
    let none = shop.get_json("/api/v1/products?q=unobtainium").await;
    assert_eq!(none["items"], Value::Array(vec![]));

    // Relevance pages (by offset) cover every match once.
    let (pages, count) = walk(&shop, "q=titanium&limit=4").await;
    assert_eq!(count, 3);
    assert_eq!(pages, found);
    // A broad search pages through its 10,000 matches by cursor as well.
    let first = shop
        .get_json("/api/v1/products?q=widget&sort=price&limit=100")
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 100);
    assert_eq!(first["items"][0]["sku"], "BULK-00001");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = shop
        .get_json(&format!(
            "/api/v1/products?q=widget&sort=price&limit=100&cursor={cursor}"
        ))
        .await;
    assert_eq!(second["items"][0]["sku"], "BULK-00101");

    let plan = products::listing::explain_search(shop.products.pool(), "titanium")
        .await
        .unwrap();
    assert!(
        plan.contains("products_search_idx"),
        "the text search uses the GIN index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on products"),
        "no full scan:\n{plan}"
    );
    assert_eq!(spork["category"], "tools");
}
