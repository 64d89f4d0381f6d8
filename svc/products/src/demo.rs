//! A demo catalog for local runs (`scripts/up`): five categories and fifty products, created
//! when missing. Never called by a deployment.

use uuid::Uuid;

use crate::{Products, store};

const CATEGORIES: [(&str, &str); 5] = [
    ("mugs", "Mugs"),
    ("t-shirts", "T-shirts"),
    ("books", "Books"),
    ("stickers", "Stickers"),
    ("posters", "Posters"),
];

const STYLES: [&str; 10] = [
    "Classic",
    "Rusty",
    "Ferris",
    "Async",
    "Borrowed",
    "Lifetime",
    "Unsafe",
    "Cargo",
    "Trait",
    "Zero-cost",
];

/// The SKU of the `n`th demo product (1-based): `DEMO-001` … `DEMO-050`.
pub fn sku(n: usize) -> String {
    format!("DEMO-{n:03}")
}

pub const PRODUCT_COUNT: usize = 50;

/// Creates whatever of the demo catalog is missing (an existing SKU or slug is left as it is);
/// returns (id, SKU) of all fifty demo products, in SKU order.
pub async fn seed_catalog(products: &Products) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let mut tx = products.pool().begin().await?;
    let mut category_ids = Vec::new();
    for (slug, name) in CATEGORIES {
        store::insert_category(&mut *tx, Uuid::now_v7(), slug, name).await?;
        let id = store::category_id_by_slug(&mut *tx, slug)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        category_ids.push((id, name));
    }
    let mut seeded = Vec::with_capacity(PRODUCT_COUNT);
    for n in 1..=PRODUCT_COUNT {
        let sku = sku(n);
        let (category_id, category_name) = category_ids[(n - 1) % CATEGORIES.len()];
        let style = STYLES[(n - 1) / CATEGORIES.len() % STYLES.len()];
        let kind = category_name.trim_end_matches('s');
        let name = format!("{style} {kind}");
        let description = format!(
            "A {} {} for people who write Rust. Demo product number {n}.",
            style.to_lowercase(),
            kind.to_lowercase()
        );
        let attributes = serde_json::json!({ "demo": true, "edition": n });
        store::insert_product(
            &mut *tx,
            &store::NewProduct {
                id: Uuid::now_v7(),
                sku: &sku,
                name: &name,
                description: &description,
                price_amount: 499 + 100 * n as i64,
                currency: "EUR",
                category_id,
                image_urls: &[format!("https://images.micromart.local/demo/{sku}.png")],
                attributes: &attributes,
            },
        )
        .await?;
        let product = store::product_by_sku(&mut *tx, &sku)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        seeded.push((product.id, sku));
    }
    tx.commit().await?;
    Ok(seeded)
}
