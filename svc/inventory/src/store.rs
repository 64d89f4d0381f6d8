//! The inventory database. Every change of stock writes a movement row in the same
//! transaction.

use chrono::{DateTime, Utc};
use contracts::internal::{StockCheckLine, StockLine};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StockRow {
    pub product_id: Uuid,
    pub on_hand: i32,
    pub reserved: i32,
    pub safety_stock: i32,
    pub updated_at: DateTime<Utc>,
}

impl StockRow {
    /// What can still be sold: never negative.
    pub fn available(&self) -> i32 {
        (self.on_hand - self.reserved - self.safety_stock).max(0)
    }
}

const AVAILABLE: &str = "GREATEST(on_hand - reserved - safety_stock, 0)";

pub async fn stock(
    db: impl PgExecutor<'_>,
    product: Uuid,
) -> Result<Option<StockRow>, sqlx::Error> {
    sqlx::query_as("SELECT product_id, on_hand, reserved, safety_stock, updated_at FROM stock WHERE product_id = $1")
        .bind(product)
        .fetch_optional(db)
        .await
}

pub async fn stock_of(
    db: impl PgExecutor<'_>,
    products: &[Uuid],
) -> Result<Vec<StockRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT product_id, on_hand, reserved, safety_stock, updated_at FROM stock WHERE product_id = ANY($1)",
    )
    .bind(products)
    .fetch_all(db)
    .await
}

async fn record_movement(
    tx: &mut PgConnection,
    product: Uuid,
    on_hand_delta: i32,
    reserved_delta: i32,
    reason: &str,
    order: Option<Uuid>,
    actor: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stock_movements (product_id, on_hand_delta, reserved_delta, reason, order_id, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(product)
    .bind(on_hand_delta)
    .bind(reserved_delta)
    .bind(reason)
    .bind(order)
    .bind(actor)
    .execute(tx)
    .await?;
    Ok(())
}

#[derive(Debug)]
pub enum StockChange {
    Done(StockRow),
    /// on_hand would fall below what is reserved (or below zero).
    BelowReserved {
        reserved: i32,
    },
    Missing,
}

/// Sets on_hand and safety stock (creating the record), refusing to go below what is reserved.
pub async fn set_stock(
    tx: &mut PgConnection,
    product: Uuid,
    on_hand: i32,
    safety_stock: i32,
    actor: Uuid,
) -> Result<StockChange, sqlx::Error> {
    let before: Option<(i32, i32)> =
        sqlx::query_as("SELECT on_hand, reserved FROM stock WHERE product_id = $1 FOR UPDATE")
            .bind(product)
            .fetch_optional(&mut *tx)
            .await?;
    let (old_on_hand, reserved) = before.unwrap_or((0, 0));
    if on_hand < reserved {
        return Ok(StockChange::BelowReserved { reserved });
    }
    let row: StockRow = sqlx::query_as(
        "INSERT INTO stock (product_id, on_hand, safety_stock) VALUES ($1, $2, $3)
         ON CONFLICT (product_id) DO UPDATE SET on_hand = $2, safety_stock = $3, updated_at = now()
         RETURNING product_id, on_hand, reserved, safety_stock, updated_at",
    )
    .bind(product)
    .bind(on_hand)
    .bind(safety_stock)
    .fetch_one(&mut *tx)
    .await?;
    record_movement(
        tx,
        product,
        on_hand - old_on_hand,
        0,
        "set",
        None,
        Some(actor),
    )
    .await?;
    Ok(StockChange::Done(row))
}

/// Adds `delta` to on_hand, refusing to go below what is reserved.
pub async fn adjust_stock(
    tx: &mut PgConnection,
    product: Uuid,
    delta: i32,
    reason: &str,
    actor: Uuid,
) -> Result<StockChange, sqlx::Error> {
    let Some((on_hand, reserved)): Option<(i32, i32)> =
        sqlx::query_as("SELECT on_hand, reserved FROM stock WHERE product_id = $1 FOR UPDATE")
            .bind(product)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(StockChange::Missing);
    };
    match on_hand.checked_add(delta) {
        Some(new) if new >= reserved => {}
        _ => return Ok(StockChange::BelowReserved { reserved }),
    }
    let row: StockRow = sqlx::query_as(
        "UPDATE stock SET on_hand = on_hand + $2, updated_at = now() WHERE product_id = $1
         RETURNING product_id, on_hand, reserved, safety_stock, updated_at",
    )
    .bind(product)
    .bind(delta)
    .fetch_one(&mut *tx)
    .await?;
    record_movement(tx, product, delta, 0, reason, None, Some(actor)).await?;
    Ok(StockChange::Done(row))
}

/// Products whose available stock is at or below `threshold`, by product id after `after`.
pub async fn low_stock(
    db: impl PgExecutor<'_>,
    threshold: i32,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<StockRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT product_id, on_hand, reserved, safety_stock, updated_at FROM stock
         WHERE {AVAILABLE} <= $1 AND ($2::uuid IS NULL OR product_id > $2)
         ORDER BY product_id LIMIT $3"
    )))
    .bind(threshold)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Each line with what is available for it now (unknown products have none).
pub async fn check(
    db: impl PgExecutor<'_>,
    lines: &[StockLine],
) -> Result<Vec<StockCheckLine>, sqlx::Error> {
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let rows = stock_of(db, &ids).await?;
    Ok(lines
        .iter()
        .map(|l| {
            let available = rows
                .iter()
                .find(|r| r.product_id == l.product_id)
                .map(StockRow::available)
                .unwrap_or(0);
            StockCheckLine {
                product_id: l.product_id,
                requested: l.quantity,
                available,
                sufficient: available >= l.quantity,
            }
        })
        .collect())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub status: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn reservation(
    db: &mut PgConnection,
    order: Uuid,
) -> Result<Option<(ReservationRow, Vec<StockLine>)>, sqlx::Error> {
    let Some(row): Option<ReservationRow> =
        sqlx::query_as("SELECT order_id, status, expires_at FROM reservations WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&mut *db)
            .await?
    else {
        return Ok(None);
    };
    let lines = reservation_lines(db, order).await?;
    Ok(Some((
        row,
        lines
            .into_iter()
            .map(|(product_id, quantity)| StockLine {
                product_id,
                quantity,
            })
            .collect(),
    )))
}

pub enum Reserve {
    Created,
    /// The order already holds a reservation (a replay).
    Exists,
    Short,
}

/// Reserves every line for the order, or none: lines are locked in product order (no
/// deadlock between concurrent orders) and each reservation is a conditional update, so
/// stock can never be oversold.
pub async fn reserve(
    tx: &mut PgConnection,
    order: Uuid,
    lines: &[StockLine],
    expires_at: DateTime<Utc>,
) -> Result<Reserve, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO reservations (order_id, status, expires_at) VALUES ($1, 'held', $2)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Reserve::Exists);
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by_key(|l| l.product_id);
    for line in &sorted {
        let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stock SET reserved = reserved + $2, updated_at = now()
             WHERE product_id = $1 AND {AVAILABLE} >= $2"
        )))
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Reserve::Short);
        }
        sqlx::query(
            "INSERT INTO reservation_lines (order_id, product_id, quantity) VALUES ($1, $2, $3)",
        )
        .bind(order)
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *tx)
        .await?;
        record_movement(
            tx,
            line.product_id,
            0,
            line.quantity,
            "reserve",
            Some(order),
            None,
        )
        .await?;
    }
    Ok(Reserve::Created)
}

/// Ends a held reservation: `commit` ships the goods (on_hand and reserved both drop),
/// otherwise it is released (reserved drops). Returns false when the reservation is not
/// held (unknown, already committed or released): replays change nothing.
pub async fn finish_reservation(
    tx: &mut PgConnection,
    order: Uuid,
    commit: bool,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let status = if commit { "committed" } else { "released" };
    let held = sqlx::query(
        "UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1 AND status = 'held'",
    )
    .bind(order)
    .bind(status)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if held == 0 {
        return if commit {
            commit_lapsed(tx, order).await
        } else {
            Ok(false)
        };
    }
    let lines = reservation_lines(tx, order).await?;
    let on_hand = if commit { -1 } else { 0 };
    move_stock(tx, order, &lines, on_hand, -1, reason).await?;
    Ok(true)
}

/// The lines of `order`'s reservation, by product.
async fn reservation_lines(
    db: &mut PgConnection,
    order: Uuid,
) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT product_id, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order)
    .fetch_all(db)
    .await
}

/// Moves each of `order`'s `lines` in stock: its on-hand and reserved counts change by the
/// line's quantity times `on_hand` and `reserved` (each -1, 0 or 1), recorded as a movement
/// with `reason`.
async fn move_stock(
    tx: &mut PgConnection,
    order: Uuid,
    lines: &[(Uuid, i32)],
    on_hand: i32,
    reserved: i32,
    reason: &str,
) -> Result<(), sqlx::Error> {
    for &(product, quantity) in lines {
        sqlx::query(
            "UPDATE stock SET on_hand = on_hand + $2 * $3, reserved = reserved + $2 * $4,
                 updated_at = now()
             WHERE product_id = $1",
        )
        .bind(product)
        .bind(quantity)
        .bind(on_hand)
        .bind(reserved)
        .execute(&mut *tx)
        .await?;
        record_movement(
            tx,
            product,
            quantity * on_hand,
            quantity * reserved,
            reason,
            Some(order),
            None,
        )
        .await?;
    }
    Ok(())
}

/// Commits the released reservation of an order paid all the same: its payment's event came
/// after the reservation had lapsed (the consumer behind, or down) or after its order was
/// cancelled (payment then refunds it, which restocks what is taken here). The order is paid,
/// so its units are taken from what is available now, all lines or none. With too few left
/// the stock was sold twice: nothing is taken, and operators are told (log and
/// `inventory_oversold_orders_total`) to restock or refund.
async fn commit_lapsed(tx: &mut PgConnection, order: Uuid) -> Result<bool, sqlx::Error> {
    let released = sqlx::query(
        "SELECT 1 FROM reservations WHERE order_id = $1 AND status = 'released' FOR UPDATE",
    )
    .bind(order)
    .fetch_optional(&mut *tx)
    .await?;
    if released.is_none() {
        return Ok(false);
    }
    let lines = reservation_lines(tx, order).await?;
    for (product, quantity) in &lines {
        let available: Option<i32> = sqlx::query_scalar(
            "SELECT on_hand - reserved FROM stock WHERE product_id = $1 FOR UPDATE",
        )
        .bind(product)
        .fetch_optional(&mut *tx)
        .await?;
        if available.is_none_or(|a| a < *quantity) {
            tracing::error!(order_id = %order, product_id = %product, quantity, available, "an order paid after its reservation was released finds too little stock: sold twice; restock or refund it");
            metrics::counter!("inventory_oversold_orders_total").increment(1);
            return Ok(false);
        }
    }
    sqlx::query(
        "UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = $1",
    )
    .bind(order)
    .execute(&mut *tx)
    .await?;
    move_stock(
        tx,
        order,
        &lines,
        -1,
        0,
        "paid after its reservation was released",
    )
    .await?;
    Ok(true)
}

/// Held reservations past their expiry, oldest first; locked so that two sweepers do not
/// release the same one.
pub async fn expired_reservations(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT order_id FROM reservations WHERE status = 'held' AND expires_at < now()
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Puts a refunded order's goods back on hand, once: the reservation moves from committed to
/// restocked. The refund's event may come before its payment's (that one failed once and
/// waits for a retry): a reservation still held is committed first, as the payment's event
/// would have; a released one (lapsed or cancelled, its late payment not yet seen or finding
/// too little stock) becomes refunded, which a late payment's event no longer takes stock for.
pub async fn restock(tx: &mut PgConnection, order: Uuid) -> Result<bool, sqlx::Error> {
    // Locked first: a sweeper or a cancellation releasing it meanwhile would otherwise turn
    // the commit below into a late payment's, with its movements and its oversold alarm.
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order)
            .fetch_optional(&mut *tx)
            .await?;
    // The window that lock closes (tests/restock_race.rs holds it open).
    fail::fail_point!("inventory::restock_after_lock");
    match status.as_deref() {
        Some("released") => {
            sqlx::query(
                "UPDATE reservations SET status = 'refunded', updated_at = now() WHERE order_id = $1",
            )
            .bind(order)
            .execute(&mut *tx)
            .await?;
            return Ok(false);
        }
        Some("held") => {
            finish_reservation(tx, order, true, "paid (its refund told first)").await?;
        }
        Some("committed") => {}
        _ => return Ok(false),
    }
    sqlx::query(
        "UPDATE reservations SET status = 'restocked', updated_at = now() WHERE order_id = $1",
    )
    .bind(order)
    .execute(&mut *tx)
    .await?;
    let lines = reservation_lines(tx, order).await?;
    move_stock(tx, order, &lines, 1, 0, "refund restock").await?;
    Ok(true)
}
