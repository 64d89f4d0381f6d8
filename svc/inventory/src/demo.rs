//! Demo stock for local runs (`scripts/up`). Never called by a deployment.

use uuid::Uuid;

use crate::Inventory;

/// Gives each product some stock unless it already has a record; returns how many were set.
pub async fn seed_stock(inventory: &Inventory, products: &[Uuid]) -> Result<u64, sqlx::Error> {
    let mut created = 0;
    for (i, product) in products.iter().enumerate() {
        let on_hand = on_hand_of(i, products.len());
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

/// The demo stock of the `i`th of `count` products seeded. Mostly well stocked, a few nearly
/// sold out, so low-stock has something to show; never the last one seeded, which the catalog
/// lists first (newest first) and the README's walkthrough puts in a cart two at a time.
fn on_hand_of(i: usize, count: usize) -> i32 {
    if i % 10 == 4 && i + 1 < count {
        2
    } else {
        20 + (i as i32 * 7) % 80
    }
}

#[cfg(test)]
mod tests {
    use super::on_hand_of;

    #[test]
    fn a_few_products_are_nearly_sold_out_but_not_the_one_listed_first() {
        let stock_of = |count| (0..count).map(|i| on_hand_of(i, count)).collect::<Vec<_>>();
        assert_eq!(stock_of(50).iter().filter(|&&n| n <= 2).count(), 5);
        for count in [1, 5, 45, 50] {
            let stock = stock_of(count);
            assert!(stock[count - 1] >= 20, "{count}: {stock:?}");
        }
    }
}
