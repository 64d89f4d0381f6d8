//! The cart database.

use contracts::internal::StockLine;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The customer's lines, oldest first.
pub async fn lines(db: impl PgExecutor<'_>, user: Uuid) -> Result<Vec<StockLine>, sqlx::Error> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT product_id, quantity FROM cart_items WHERE user_id = $1 ORDER BY added_at, product_id",
    )
    .bind(user)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(product_id, quantity)| StockLine {
            product_id,
            quantity,
        })
        .collect())
}

/// What setting a line's quantity did.
#[derive(Debug, PartialEq, Eq)]
pub enum LineSet {
    Set,
    /// The product was not in the cart, and the cart already holds `max_lines` others.
    CartFull,
}

pub async fn set_quantity(
    tx: &mut PgConnection,
    user: Uuid,
    product: Uuid,
    quantity: i32,
    max_lines: usize,
) -> Result<LineSet, sqlx::Error> {
    // The upsert locks the cart's row until the transaction ends, so that two additions of
    // the customer's at once cannot both take the cart's last free line.
    touch(&mut *tx, user).await?;
    let changed =
        sqlx::query("UPDATE cart_items SET quantity = $3 WHERE user_id = $1 AND product_id = $2")
            .bind(user)
            .bind(product)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
    if changed.rows_affected() == 1 {
        return Ok(LineSet::Set);
    }
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM cart_items WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
    if usize::try_from(lines).is_ok_and(|n| n >= max_lines) {
        return Ok(LineSet::CartFull);
    }
    sqlx::query(
        "INSERT INTO cart_items (user_id, product_id, quantity) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = $3",
    )
    .bind(user)
    .bind(product)
    .bind(quantity)
    .execute(tx)
    .await?;
    Ok(LineSet::Set)
}

async fn touch(db: impl PgExecutor<'_>, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO carts (user_id) VALUES ($1) ON CONFLICT (user_id) DO UPDATE SET updated_at = now()",
    )
    .bind(user)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn remove_line(
    tx: &mut PgConnection,
    user: Uuid,
    product: Uuid,
) -> Result<(), sqlx::Error> {
    touch(&mut *tx, user).await?;
    sqlx::query("DELETE FROM cart_items WHERE user_id = $1 AND product_id = $2")
        .bind(user)
        .bind(product)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn clear(db: impl PgExecutor<'_>, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM carts WHERE user_id = $1")
        .bind(user)
        .execute(db)
        .await?;
    Ok(())
}

/// Removes the ordered quantities from the cart: a line the customer changed since keeps
/// what exceeds the order, so nothing added after checkout is lost.
pub async fn remove_ordered(
    tx: &mut PgConnection,
    user: Uuid,
    ordered: &[StockLine],
) -> Result<(), sqlx::Error> {
    for line in ordered {
        sqlx::query(
            "DELETE FROM cart_items WHERE user_id = $1 AND product_id = $2 AND quantity <= $3",
        )
        .bind(user)
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE cart_items SET quantity = quantity - $3 WHERE user_id = $1 AND product_id = $2 AND quantity > $3",
        )
        .bind(user)
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Deletes carts untouched for longer than `idle_seconds`; returns how many.
pub async fn delete_idle(db: impl PgExecutor<'_>, idle_seconds: i64) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM carts WHERE updated_at < now() - make_interval(secs => $1)")
            .bind(idle_seconds as f64)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
