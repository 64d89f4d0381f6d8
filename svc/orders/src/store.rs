//! The orders database: orders, their lines and history, and checkout's idempotency keys.

use chrono::{DateTime, Utc};
use contracts::events::OrderCancelled;
use platform::outbox;
use platform::retention::OwnRows;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::SERVICE;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub total_amount: i64,
    pub currency: String,
    pub shipping_address: String,
    pub phone: Option<String>,
    pub payment_url: Option<String>,
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str = "id, user_id, status, total_amount, currency, shipping_address, phone, payment_url, status_reason, created_at, updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineRow {
    pub product_id: Uuid,
    pub name: String,
    pub unit_amount: i64,
    pub quantity: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryRow {
    pub from_status: Option<String>,
    pub to_status: String,
    pub cause: String,
    pub at: DateTime<Utc>,
}

pub struct NewOrder<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub total_amount: i64,
    pub currency: &'a str,
    pub shipping_address: &'a str,
    pub phone: Option<&'a str>,
    pub lines: &'a [LineRow],
}

/// Stores a PENDING order (a replay of the same id changes nothing).
pub async fn insert_order(tx: &mut PgConnection, o: &NewOrder<'_>) -> Result<bool, sqlx::Error> {
    let created = sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_amount, currency, shipping_address, phone)
         VALUES ($1, $2, 'PENDING', $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(o.id)
    .bind(o.user_id)
    .bind(o.total_amount)
    .bind(o.currency)
    .bind(o.shipping_address)
    .bind(o.phone)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !created {
        return Ok(false);
    }
    for l in o.lines {
        sqlx::query("INSERT INTO order_lines (order_id, product_id, name, unit_amount, quantity) VALUES ($1, $2, $3, $4, $5)")
            .bind(o.id)
            .bind(l.product_id)
            .bind(&l.name)
            .bind(l.unit_amount)
            .bind(l.quantity)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO order_history (order_id, from_status, to_status, cause) VALUES ($1, NULL, 'PENDING', 'checkout')")
        .bind(o.id)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

pub async fn set_payment_url(
    db: impl PgExecutor<'_>,
    order: Uuid,
    url: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET payment_url = $2, updated_at = now() WHERE id = $1")
        .bind(order)
        .bind(url)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn order(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn lines(db: impl PgExecutor<'_>, order: Uuid) -> Result<Vec<LineRow>, sqlx::Error> {
    sqlx::query_as("SELECT product_id, name, unit_amount, quantity FROM order_lines WHERE order_id = $1 ORDER BY product_id")
        .bind(order)
        .fetch_all(db)
        .await
}

pub async fn history(db: impl PgExecutor<'_>, order: Uuid) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as("SELECT from_status, to_status, cause, at FROM order_history WHERE order_id = $1 ORDER BY id")
        .bind(order)
        .fetch_all(db)
        .await
}

pub struct Filter {
    pub user: Option<Uuid>,
    pub status: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Orders newest first (ids are UUIDv7, so by creation).
pub async fn list(db: impl PgExecutor<'_>, f: &Filter) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
           AND ($5::uuid IS NULL OR id < $5)
         ORDER BY id DESC LIMIT $6"
    )))
    .bind(f.user)
    .bind(&f.status)
    .bind(f.from)
    .bind(f.to)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(db)
    .await
}

/// Moves the order from one of `from` to `to`, with a history row; false when the order is
/// not in one of `from` (the transition is not allowed, or was already made).
pub async fn transition(
    tx: &mut PgConnection,
    order: Uuid,
    from: &[&str],
    to: &str,
    cause: &str,
) -> Result<bool, sqlx::Error> {
    let previous: Option<String> = sqlx::query_scalar(
        "UPDATE orders o SET status = $3, status_reason = $4, updated_at = now()
         FROM (SELECT id, status FROM orders WHERE id = $1 AND status = ANY($2) FOR UPDATE) old
         WHERE o.id = old.id RETURNING old.status",
    )
    .bind(order)
    .bind(from)
    .bind(to)
    .bind(cause)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Ok(false);
    };
    sqlx::query("INSERT INTO order_history (order_id, from_status, to_status, cause) VALUES ($1, $2, $3, $4)")
        .bind(order)
        .bind(previous)
        .bind(to)
        .bind(cause)
        .execute(tx)
        .await?;
    Ok(true)
}

/// Cancels a PENDING order and writes `OrderCancelled`.
/// PENDING orders written longer than `age` ago and still without a payment session, oldest
/// first; locked so that two instances do not cancel the same one.
pub async fn abandoned_orders(
    tx: &mut PgConnection,
    age: std::time::Duration,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE status = 'PENDING' AND payment_url IS NULL AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    )))
    .bind(age.as_secs_f64())
    .bind(limit)
    .fetch_all(tx)
    .await
}

pub async fn cancel(
    tx: &mut PgConnection,
    order: &OrderRow,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    if !transition(tx, order.id, &["PENDING"], "CANCELLED", reason).await? {
        return Ok(false);
    }
    let event = OrderCancelled {
        order_id: order.id,
        user_id: order.user_id,
        reason: reason.to_owned(),
    };
    outbox::enqueue(tx, &event, SERVICE, Some(order.id.to_string())).await?;
    Ok(true)
}

// ---- idempotency keys ------------------------------------------------------------------

pub enum KeyClaim {
    /// This request owns the key now.
    Claimed,
    /// Another request with this key is running.
    Running,
    /// The key was used with another body.
    OtherBody,
    /// The first request finished: its response, to replay.
    Done {
        status: i32,
        body: serde_json::Value,
    },
}

/// How long a key is kept, and after how long a key left `running` by a crashed request may
/// be taken over.
pub const KEY_TTL_HOURS: i64 = 24;
pub const ABANDONED_AFTER_SECONDS: f64 = 60.0;

/// Keys past their lifetime, which `claim_key` would only delete when the same key came
/// again: pruned with the outbox (indexed by `idempotency_keys_age`).
pub fn expired_keys() -> OwnRows {
    OwnRows {
        table: "idempotency_keys",
        // Checked again outside the subquery: a key taken over meanwhile is new again.
        delete: "DELETE FROM idempotency_keys WHERE (user_id, key) IN (
                     SELECT user_id, key FROM idempotency_keys
                     WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)
                 AND created_at < now() - make_interval(secs => $1)"
            .into(),
        older_than: std::time::Duration::from_secs(KEY_TTL_HOURS as u64 * 3600),
    }
}

pub async fn claim_key(
    db: &sqlx::PgPool,
    user: Uuid,
    key: &str,
    hash: &str,
) -> Result<KeyClaim, sqlx::Error> {
    // A key deleted between the insert that met it and the read of it (by retention at its 24
    // hours, or released by the failed request that held it) is claimed again.
    for _ in 0..3 {
        if let Some(claim) = try_claim_key(db, user, key, hash).await? {
            return Ok(claim);
        }
    }
    Err(sqlx::Error::RowNotFound)
}

async fn try_claim_key(
    db: &sqlx::PgPool,
    user: Uuid,
    key: &str,
    hash: &str,
) -> Result<Option<KeyClaim>, sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at < now() - make_interval(hours => $3)")
        .bind(user)
        .bind(key)
        .bind(KEY_TTL_HOURS as i32)
        .execute(db)
        .await?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status) VALUES ($1, $2, $3, 'running')
         ON CONFLICT (user_id, key) DO UPDATE SET created_at = now()
         WHERE idempotency_keys.status = 'running' AND idempotency_keys.request_hash = $3
           AND idempotency_keys.created_at < now() - make_interval(secs => $4)",
    )
    .bind(user)
    .bind(key)
    .bind(hash)
    .bind(ABANDONED_AFTER_SECONDS)
    .execute(db)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Some(KeyClaim::Claimed));
    }
    let stored: Option<(String, String, Option<i32>, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT request_hash, status, response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db)
    .await?;
    let Some((stored_hash, status, code, body)) = stored else {
        return Ok(None);
    };
    Ok(Some(if stored_hash != hash {
        KeyClaim::OtherBody
    } else if status == "running" {
        KeyClaim::Running
    } else {
        KeyClaim::Done {
            status: code.unwrap_or(500),
            body: body.unwrap_or_default(),
        }
    }))
}

pub async fn finish_key(
    db: impl PgExecutor<'_>,
    user: Uuid,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET status = 'done', response_status = $3, response_body = $4 WHERE user_id = $1 AND key = $2")
        .bind(user)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(db)
        .await?;
    Ok(())
}

/// Frees the key after a failure the client may retry (a dependency was down).
pub async fn release_key(
    db: impl PgExecutor<'_>,
    user: Uuid,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status = 'running'",
    )
    .bind(user)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}
