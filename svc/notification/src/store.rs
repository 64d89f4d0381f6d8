//! The notification database: contacts kept from UserRegistered, and one row per message
//! from queued to sent or failed.

use chrono::{DateTime, Utc};
use platform::retention::OwnRows;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::channel::Message;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Contact {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub user_id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_via: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, event_id, event_type, user_id, channel, recipient, subject, body, status, \
     attempts, last_error, sent_via, next_attempt_at, created_at, sent_at";

/// Records that the customer is told of `order`'s refund.
pub async fn record_refund(tx: &mut PgConnection, order: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refunded_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(order)
        .execute(tx)
        .await?;
    Ok(())
}

/// Refunds told more than `keep` ago (applied events' time: `applied_events_keep_seconds`),
/// pruned with the outbox. A refund's record stops a late success of the same payment from
/// confirming the order; a success comes later than the refund only when it waited for a
/// retry, or as a dead letter replayed, which the applied events' record is kept for as long.
pub fn old_refunds(keep: std::time::Duration) -> OwnRows {
    OwnRows::aged("refunded_orders", "order_id", "created_at", keep)
}

/// Records that the customer is told `order` was cancelled; false if they already were.
pub async fn first_cancellation(tx: &mut PgConnection, order: Uuid) -> Result<bool, sqlx::Error> {
    let recorded =
        sqlx::query("INSERT INTO cancelled_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(order)
            .execute(tx)
            .await?;
    Ok(recorded.rows_affected() == 1)
}

/// Cancellations told more than `keep` ago, pruned as refunds told are: a second notice of
/// one comes later only when it waited for a retry, or as a dead letter replayed.
pub fn old_cancellations(keep: std::time::Duration) -> OwnRows {
    OwnRows::aged("cancelled_orders", "order_id", "created_at", keep)
}

/// Whether the customer has been told of `order`'s refund.
pub async fn is_refunded(tx: &mut PgConnection, order: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refunded_orders WHERE order_id = $1)")
        .bind(order)
        .fetch_one(tx)
        .await
}

/// Records (or refreshes) how to reach a user.
pub async fn upsert_contact(tx: &mut PgConnection, contact: &Contact) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO contacts (user_id, email, name, phone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE
         SET email = EXCLUDED.email, name = EXCLUDED.name, phone = EXCLUDED.phone, updated_at = now()",
    )
    .bind(contact.user_id)
    .bind(&contact.email)
    .bind(&contact.name)
    .bind(&contact.phone)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn contact(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Option<Contact>, sqlx::Error> {
    sqlx::query_as("SELECT user_id, email, name, phone FROM contacts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await
}

/// Queues `message` for the sender. A second call for the same event and channel does
/// nothing: that unique key is what makes one event send each message once.
pub async fn queue(
    tx: &mut PgConnection,
    event_id: Uuid,
    event_type: &str,
    user_id: Uuid,
    message: &Message,
) -> Result<bool, sqlx::Error> {
    insert(tx, event_id, event_type, user_id, message, "queued", None).await
}

/// Records a message that cannot be sent at all (no address to send it to), as failed.
pub async fn record_unsendable(
    tx: &mut PgConnection,
    event_id: Uuid,
    event_type: &str,
    user_id: Uuid,
    message: &Message,
    reason: &str,
) -> Result<(), sqlx::Error> {
    insert(
        tx,
        event_id,
        event_type,
        user_id,
        message,
        "failed",
        Some(reason),
    )
    .await?;
    Ok(())
}

/// One row per event and channel; true when this call wrote it.
async fn insert(
    tx: &mut PgConnection,
    event_id: Uuid,
    event_type: &str,
    user_id: Uuid,
    message: &Message,
    status: &str,
    last_error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO notifications (id, event_id, event_type, user_id, channel, recipient, subject, body,
                                    status, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (event_id, channel) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(event_type)
    .bind(user_id)
    .bind(message.medium.as_str())
    .bind(&message.recipient)
    .bind(&message.subject)
    .bind(&message.body)
    .bind(status)
    .bind(last_error)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// One queued row that is due and not in `skip`, locked for this transaction; rows another
/// sender holds are skipped, so several instances never send the same row at once.
pub async fn lock_due(
    tx: &mut PgConnection,
    skip: &[Uuid],
) -> Result<Option<NotificationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE status = 'queued' AND next_attempt_at <= now() AND NOT (id = ANY($1))
         ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(skip)
    .fetch_optional(tx)
    .await
}

pub async fn mark_sent(tx: &mut PgConnection, id: Uuid, via: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications
         SET status = 'sent', attempts = attempts + 1, sent_via = $2, sent_at = now(), last_error = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(via)
    .execute(tx)
    .await?;
    Ok(())
}

/// Counts a failed attempt: back to the queue for `retry_in`, or failed for good when
/// `give_up`.
pub async fn mark_attempt_failed(
    tx: &mut PgConnection,
    id: Uuid,
    reason: &str,
    give_up: bool,
    retry_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications
         SET attempts = attempts + 1, last_error = $2,
             status = CASE WHEN $3 THEN 'failed' ELSE 'queued' END,
             next_attempt_at = now() + make_interval(secs => $4)
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .bind(give_up)
    .bind(retry_in.as_secs_f64())
    .execute(tx)
    .await?;
    Ok(())
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this user's rows (`None`: everyone's, for admins).
    pub user_id: Option<Uuid>,
    pub status: Option<&'static str>,
    /// Rows older than this id (the cursor).
    pub before: Option<Uuid>,
}

/// Newest first (ids are UUIDv7, so id order is creation order).
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE ($1::uuid IS NULL OR user_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(filter.user_id)
    .bind(filter.status)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(db)
    .await
}
