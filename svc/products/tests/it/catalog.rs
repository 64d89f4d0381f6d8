use platform::testing::expect_problem;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Shop, etag, field_of, product, walk};

#[tokio::test]
async fn a_manager_creates_reads_updates_and_soft_deletes_a_product() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    shop.create_category("books", "Books").await;

    let resp = shop
        .try_create_product(product("MUG-1", "Ferris mug", 1299, "mugs"))
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(etag(&resp), "\"1\"");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/products/{id}"));
    assert_eq!(created["sku"], "MUG-1");
    assert_eq!(created["name"], "Ferris mug");
    assert_eq!(created["price"], json!({"amount": 1299, "currency": "EUR"}));
    assert_eq!(created["category"], "mugs");
    assert_eq!(created["attributes"], json!({"colour": "blue", "size": 3}));
    assert_eq!(
        created["image_urls"],
        json!(["https://img.example.com/MUG-1.png"])
    );
    assert_eq!(created["active"], true);
    assert_eq!(created["version"], 1);

    let by_id = shop
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.status(), 200);
    assert_eq!(etag(&by_id), "\"1\"");
    let by_id: Value = by_id.json().await.unwrap();
    assert_eq!(by_id, created);
    let by_sku = shop.get_json("/api/v1/products/sku/MUG-1").await;
    assert_eq!(by_sku, created);

    let resp = shop
        .patch_product(
            &id,
            Some("\"1\""),
            json!({"price": {"amount": 999, "currency": "EUR"}, "category": "books",
                   "attributes": {"colour": "red"}, "image_urls": []}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(etag(&resp), "\"2\"");
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["price"]["amount"], 999);
    assert_eq!(updated["category"], "books");
    assert_eq!(updated["attributes"], json!({"colour": "red"}));
    assert_eq!(updated["image_urls"], json!([]));
    assert_eq!(
        updated["name"], "Ferris mug",
        "fields not sent stay as they were"
    );
    assert_eq!(updated["version"], 2);
    assert_eq!(
        shop.get_json(&format!("/api/v1/products/{id}")).await,
        updated
    );

    let deleted = shop.delete_product(&id).await;
    assert_eq!(deleted.status(), 204);
    let after = shop
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        200,
        "a deleted product stays readable for old orders"
    );
    assert_eq!(etag(&after), "\"3\"");
    let after: Value = after.json().await.unwrap();
    assert_eq!(after["active"], false);
    assert_eq!(after["price"]["amount"], 999);
    assert_eq!(
        shop.get_json("/api/v1/products/sku/MUG-1").await["active"],
        false
    );
    let listed = shop.get_json("/api/v1/products").await;
    assert_eq!(
        listed["items"],
        json!([]),
        "a deleted product is not listed"
    );
    assert_eq!(
        shop.delete_product(&id).await.status(),
        204,
        "deleting again is harmless"
    );

    let back = shop
        .patch_product(&id, Some("\"3\""), json!({"active": true}))
        .await;
    assert_eq!(back.status(), 200);
    assert_eq!(
        field_of(&shop.get_json("/api/v1/products").await, "id"),
        std::slice::from_ref(&id)
    );

    let ghost = uuid::Uuid::now_v7();
    expect_problem(
        shop.get(&format!("/api/v1/products/{ghost}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    expect_problem(
        shop.get("/api/v1/products/sku/NOPE-1")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    expect_problem(shop.delete_product(&ghost.to_string()).await, 404).await;
    expect_problem(
        shop.patch_product(&ghost.to_string(), Some("\"1\""), json!({"name": "x"}))
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn categories_are_created_listed_renamed_and_deleted() {
    let shop = Shop::start().await;
    let mugs = shop.create_category("mugs", "Mugs").await;
    assert_eq!(mugs["slug"], "mugs");
    assert_eq!(mugs["name"], "Mugs");
    shop.create_category("art-prints", "Art prints").await;
    let taken = shop
        .manage(
            Method::POST,
            "/api/v1/products/categories",
            json!({"slug": "mugs", "name": "Cups"}),
        )
        .send()
        .await
        .unwrap();
    expect_problem(taken, 409).await;

    let list = shop.get_json("/api/v1/products/categories").await;
    assert_eq!(field_of(&list, "slug"), ["art-prints", "mugs"], "by name");

    let renamed = shop
        .manage(
            Method::PATCH,
            "/api/v1/products/categories/mugs",
            json!({"name": "Cups and mugs"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!(renamed["slug"], "mugs");
    assert_eq!(renamed["name"], "Cups and mugs");
    assert_eq!(renamed["id"], mugs["id"]);
    let list = shop.get_json("/api/v1/products/categories").await;
    assert_eq!(field_of(&list, "name"), ["Art prints", "Cups and mugs"]);
    expect_problem(
        shop.manage(
            Method::PATCH,
            "/api/v1/products/categories/nope",
            json!({"name": "X"}),
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;

    let delete = |slug: &str| {
        shop.client
            .delete(shop.url(&format!("/api/v1/products/categories/{slug}")))
            .bearer_auth(&shop.manager)
            .send()
    };
    assert_eq!(delete("art-prints").await.unwrap().status(), 204);
    expect_problem(delete("art-prints").await.unwrap(), 404).await;
    let list = shop.get_json("/api/v1/products/categories").await;
    assert_eq!(field_of(&list, "slug"), ["mugs"]);
}

#[tokio::test]
async fn a_category_in_use_cannot_be_deleted_even_when_its_products_are_inactive() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    shop.create_category("books", "Books").await;
    let mug = shop
        .create_product(product("MUG-1", "Mug", 500, "mugs"))
        .await;
    let id = mug["id"].as_str().unwrap();
    let delete = || {
        shop.client
            .delete(shop.url("/api/v1/products/categories/mugs"))
            .bearer_auth(&shop.manager)
            .send()
    };
    let body = expect_problem(delete().await.unwrap(), 409).await;
    assert!(body["detail"].as_str().unwrap().contains("mugs"));
    assert_eq!(shop.delete_product(id).await.status(), 204);
    expect_problem(delete().await.unwrap(), 409).await;
    assert_eq!(
        field_of(&shop.get_json("/api/v1/products/categories").await, "slug"),
        ["books", "mugs"],
        "the category is still there"
    );
    let moved = shop
        .patch_product(id, Some("*"), json!({"category": "books"}))
        .await;
    assert_eq!(moved.status(), 200);
    assert_eq!(
        delete().await.unwrap().status(),
        204,
        "deletable once no product uses it"
    );
}

#[tokio::test]
async fn the_listing_filters_by_category_sorts_and_pages_with_a_cursor() {
    let shop = Shop::start().await;
    shop.create_category("mugs", "Mugs").await;
    shop.create_category("books", "Books").await;
    shop.create_category("empty", "Empty").await;
    // 23 products: names and prices in neither creation order, some equal (ties go by id).
    let mut made: Vec<Value> = Vec::new();
    for i in 0..23i64 {
        let letter = (b'a' + ((i * 7) % 23) as u8) as char;
        let name = if i == 5 {
            "Gadget q".to_owned()
        } else {
            format!("Gadget {letter}")
        };
        let category = if i % 3 == 0 { "books" } else { "mugs" };
        let price = 100 + (i * 37) % 10 * 50;
        made.push(
            shop.create_product(product(&format!("SKU-{i:02}"), &name, price, category))
                .await,
        );
    }
    // One inactive product, which no listing shows.
    let gone = shop
        .create_product(product("SKU-GONE", "Gadget a", 1, "mugs"))
        .await;
    assert_eq!(
        shop.delete_product(gone["id"].as_str().unwrap())
            .await
            .status(),
        204
    );

    let sku = |p: &Value| p["sku"].as_str().unwrap().to_owned();
    let id = |p: &Value| p["id"].as_str().unwrap().to_owned();

    let mut by_name = made.clone();
    by_name.sort_by_key(|p| (p["name"].as_str().unwrap().to_owned(), id(p)));
    let (skus, pages) = walk(&shop, "sort=name&limit=5").await;
    assert_eq!(skus, by_name.iter().map(sku).collect::<Vec<_>>());
    assert_eq!(pages, 5, "23 products in pages of 5");

    let mut by_price = made.clone();
    by_price.sort_by_key(|p| (p["price"]["amount"].as_i64().unwrap(), id(p)));
    let (skus, _) = walk(&shop, "sort=price&limit=4").await;
    assert_eq!(skus, by_price.iter().map(sku).collect::<Vec<_>>());

    let newest: Vec<String> = made.iter().rev().map(sku).collect();
    let (skus, _) = walk(&shop, "sort=newest&limit=7").await;
    assert_eq!(skus, newest);
    let (skus, pages) = walk(&shop, "").await;
    assert_eq!(skus, newest, "newest first by default");
    assert_eq!(pages, 2, "pages of 20 by default");
    let (skus, pages) = walk(&shop, "limit=100").await;
    assert_eq!((skus.len(), pages), (23, 1));

    let books: Vec<String> = by_price
        .iter()
        .filter(|p| p["category"] == "books")
        .map(sku)
        .collect();
    assert_eq!(books.len(), 8);
    let (skus, _) = walk(&shop, "category=books&sort=price&limit=3").await;
    assert_eq!(skus, books);
    let page = shop.get_json("/api/v1/products?category=empty").await;
    assert_eq!(page, json!({"items": []}));
    let page = shop
        .get_json("/api/v1/products?category=no-such-category")
        .await;
    assert_eq!(page["items"], json!([]));

    // A cursor only continues the order it came from.
    let first = shop.get_json("/api/v1/products?sort=name&limit=5").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    expect_problem(
        shop.get(&format!("/api/v1/products?sort=price&cursor={cursor}"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_problem(
        shop.get("/api/v1/products?cursor=bm9wZQ")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn the_demo_catalog_is_seeded_once_with_fifty_products_in_five_categories() {
    let shop = Shop::start().await;
    let first = products::demo::seed_catalog(&shop.products).await.unwrap();
    let again = products::demo::seed_catalog(&shop.products).await.unwrap();
    assert_eq!(first.len(), products::demo::PRODUCT_COUNT);
    assert_eq!(first, again, "seeding twice changes nothing");
    let skus: Vec<&str> = first.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(skus.first(), Some(&"DEMO-001"));
    assert_eq!(skus.last(), Some(&"DEMO-050"));
    let mut unique = skus.clone();
    unique.dedup();
    assert_eq!(unique.len(), 50);
    for (id, sku) in &first {
        let p = shop.get_json(&format!("/api/v1/products/{id}")).await;
        assert_eq!(p["sku"], sku.as_str());
        assert_eq!(p["active"], true);
    }
    let categories = shop.get_json("/api/v1/products/categories").await;
    assert_eq!(categories["items"].as_array().unwrap().len(), 5);
    let (listed, _) = walk(&shop, "limit=100").await;
    assert_eq!(listed.len(), 50);
}
