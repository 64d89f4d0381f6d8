//! Demo stock for local runs (`scripts/up`). Never called by a deployment.

use uuid::Uuid;

use crate::Inventory;

/// Gives each product some stock unless it already has a record; returns how many were set.
pub async fn seed_stock(inventory: &Inventory, products: &[Uuid]) -> Result<u64, sqlx::Error> {
    let mut created = 0;
    for (i, product) in products.iter().enumerate() {
        // Mostly well stocked, a few nearly sold out, so low-stock has something to show.
        let on_hand = if i % 10 == 9 {
            2
        } else {
            20 + (i as i32 * 7) % 80
        };
        let mut tx = inventory.base.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO stock (product_id, on_hand, safety_stock) VALUES ($1, $2, 1)
             ON CONFLICT (product_id) DO NOTHING",
        )
        .bind(product)
        .bind(on_hand)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            sqlx::query(
                "INSERT INTO stock_movements (product_id, on_hand_delta, reserved_delta, reason)
                 VALUES ($1, $2, 0, 'demo seed')",
            )
            .bind(product)
            .bind(on_hand)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        created += inserted;
    }
    Ok(created)
}
