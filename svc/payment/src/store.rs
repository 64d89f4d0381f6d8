//! The payment database, and the one place a session's result is applied.

use chrono::{DateTime, Utc};
use contracts::events::{
    OrderLine, PaymentExpired, PaymentFailed, PaymentRefunded, PaymentSucceeded,
};
use contracts::internal::StockLine;
use contracts::money::Money;
use platform::outbox;
use platform::retention::OwnRows;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::SERVICE;
use crate::provider::ProviderEvent;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub lines: sqlx::types::Json<Vec<StockLine>>,
    pub status: String,
    pub expires_at: DateTime<Utc>,
}

const SESSION_COLUMNS: &str = "id, order_id, user_id, amount, currency, lines, status, expires_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub session_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub refunded_at: Option<DateTime<Utc>>,
}

const PAYMENT_COLUMNS: &str = "id, session_id, order_id, user_id, amount, currency, status, card_brand, card_last4, failure_reason, created_at, refunded_at";

/// The order's session, created on first request (one per order).
pub async fn open_session(
    tx: &mut PgConnection,
    order: Uuid,
    user: Uuid,
    amount: &Money,
    lines: &[StockLine],
    expires_at: DateTime<Utc>,
) -> Result<(SessionRow, bool), sqlx::Error> {
    let created = sqlx::query(
        "INSERT INTO sessions (id, order_id, user_id, amount, currency, lines, status, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'open', $7) ON CONFLICT (order_id) DO NOTHING",
    )
    // The id is the hosted page's link, which is all a customer's browser shows to pay: 122
    // random bits (v4), not a v7's 74 after a timestamp that says when the order was placed.
    .bind(Uuid::new_v4())
    .bind(order)
    .bind(user)
    .bind(amount.amount)
    .bind(amount.currency.as_str())
    .bind(sqlx::types::Json(lines))
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE order_id = $1"
    )))
    .bind(order)
    .fetch_one(&mut *tx)
    .await?;
    Ok((row, created))
}

pub async fn session(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

async fn session_for_update(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(tx)
    .await
}

pub async fn payment(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn payment_of_session(
    db: impl PgExecutor<'_>,
    session: Uuid,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE session_id = $1"
    )))
    .bind(session)
    .fetch_optional(db)
    .await
}

/// Payments newest first: the user's, or (with `user` None) everyone's, optionally of one order.
pub async fn list_payments(
    db: impl PgExecutor<'_>,
    user: Option<Uuid>,
    order: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR order_id = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(user)
    .bind(order)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The result was recorded and its event written.
    Recorded,
    /// The session was no longer open (paid, failed, expired or cancelled): nothing changed.
    NotOpen(String),
    /// The provider took the money for a session that had expired or been cancelled
    /// meanwhile: the payment was recorded as refunded at once, and `PaymentRefunded` written.
    RefundedLate,
    UnknownSession,
    /// The callback id was seen before: nothing changed.
    Replay,
}

/// Provider callbacks recorded more than `keep` ago (applied events' time:
/// `applied_events_keep_seconds`), pruned with the outbox. A callback's record only answers a
/// resend as a replay: any applied callback closes its session, so a resend no longer recorded
/// changes nothing either (and one signed more than `provider::TOLERANCE_SECONDS` ago is
/// refused before this).
pub fn old_webhook_events(keep: std::time::Duration) -> OwnRows {
    OwnRows::aged("webhook_events", "id", "received_at", keep)
}

/// Writes one of an order's payment events to the outbox, correlated by the order.
async fn publish<E: contracts::events::Event>(
    tx: &mut PgConnection,
    event: &E,
    order: Uuid,
) -> Result<(), sqlx::Error> {
    outbox::enqueue(tx, event, SERVICE, Some(order.to_string())).await?;
    Ok(())
}

/// Records the session's payment as the provider's callback reports it, with `status`
/// (`refunded` at once: `refund_late_charge`); returns its id.
async fn record_payment(
    tx: &mut PgConnection,
    session: &SessionRow,
    event: &ProviderEvent,
    status: &str,
) -> Result<Uuid, sqlx::Error> {
    let payment_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO payments (id, session_id, order_id, user_id, amount, currency, status, card_brand, card_last4, failure_reason, refunded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $7 = 'refunded' THEN now() END)",
    )
    .bind(payment_id)
    .bind(session.id)
    .bind(session.order_id)
    .bind(session.user_id)
    .bind(session.amount)
    .bind(&session.currency)
    .bind(status)
    .bind(&event.card_brand)
    .bind(&event.card_last4)
    .bind(&event.reason)
    .execute(&mut *tx)
    .await?;
    Ok(payment_id)
}

/// Records a charge the provider made for a session that had closed meanwhile (the customer
/// paid as it expired, or as its order was cancelled): nothing is sold for it, so it is
/// recorded as refunded, with `PaymentRefunded` and no `PaymentSucceeded` (no order is
/// confirmed, no stock taken; notification tells the customer of the refund). Dropped, the
/// customer would have paid for nothing, and nobody would know.
async fn refund_late_charge(
    tx: &mut PgConnection,
    session: &SessionRow,
    event: &ProviderEvent,
) -> Result<(), sqlx::Error> {
    tracing::warn!(session = %session.id, order_id = %session.order_id, status = %session.status, "a closed session was charged; refunding the payment");
    let payment_id = record_payment(tx, session, event, "refunded").await?;
    let refunded = PaymentRefunded {
        payment_id,
        order_id: session.order_id,
        user_id: session.user_id,
        amount: Money::new(session.amount, &session.currency),
        charged_after_close: true,
    };
    publish(&mut *tx, &refunded, session.order_id).await?;
    Ok(())
}

/// Applies a provider callback: at most one charge per session, whatever arrives twice.
pub async fn apply_provider_event(
    tx: &mut PgConnection,
    event: &ProviderEvent,
) -> Result<Applied, sqlx::Error> {
    let fresh = sqlx::query("INSERT INTO webhook_events (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&event.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        return Ok(Applied::Replay);
    }
    let Some(session) = session_for_update(tx, event.session_id).await? else {
        return Ok(Applied::UnknownSession);
    };
    let succeeded = event.kind == "payment.succeeded";
    if session.status != "open" {
        let charged_late = succeeded
            && matches!(session.status.as_str(), "expired" | "cancelled")
            && payment_of_session(&mut *tx, session.id).await?.is_none();
        if charged_late {
            refund_late_charge(tx, &session, event).await?;
            return Ok(Applied::RefundedLate);
        }
        return Ok(Applied::NotOpen(session.status));
    }
    let status = if succeeded { "succeeded" } else { "failed" };
    let payment_id = record_payment(tx, &session, event, status).await?;
    sqlx::query("UPDATE sessions SET status = $2 WHERE id = $1")
        .bind(session.id)
        .bind(status)
        .execute(&mut *tx)
        .await?;
    if succeeded {
        let event = PaymentSucceeded {
            payment_id,
            order_id: session.order_id,
            user_id: session.user_id,
            amount: Money::new(session.amount, &session.currency),
            lines: session
                .lines
                .0
                .iter()
                .map(|l| OrderLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                })
                .collect(),
        };
        publish(&mut *tx, &event, session.order_id).await?;
    } else {
        let event = PaymentFailed {
            payment_id,
            order_id: session.order_id,
            user_id: session.user_id,
            reason: event
                .reason
                .clone()
                .unwrap_or_else(|| "payment failed".into()),
        };
        publish(&mut *tx, &event, session.order_id).await?;
    }
    Ok(Applied::Recorded)
}

/// Expires open sessions past their time, each with a `PaymentExpired`; returns how many.
pub async fn expire_sessions(tx: &mut PgConnection, limit: i64) -> Result<usize, sqlx::Error> {
    let expired: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "UPDATE sessions SET status = 'expired'
         WHERE id IN (SELECT id FROM sessions WHERE status = 'open' AND expires_at < now()
                      ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, order_id, user_id",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    for (session, order, user) in &expired {
        let event = PaymentExpired {
            payment_id: *session,
            order_id: *order,
            user_id: *user,
        };
        publish(&mut *tx, &event, *order).await?;
    }
    Ok(expired.len())
}

/// Closes the order's session when the customer cancelled it, so it can no longer be paid.
/// Closes the payment side of a cancelled order: its open session can no longer be paid, and
/// a payment that succeeded all the same is refunded. The customer may pay on the page still
/// open after cancelling, before this service has heard of it; or pay first and cancel before
/// orders has heard of the payment (it cancels only a PENDING order). Either way the order
/// stays cancelled, and money must not be kept for it.
pub async fn close_cancelled_order(tx: &mut PgConnection, order: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET status = 'cancelled' WHERE order_id = $1 AND status = 'open'")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    let paid: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM payments WHERE order_id = $1 AND status = 'succeeded' FOR UPDATE",
    )
    .bind(order)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(payment) = paid {
        tracing::warn!(order_id = %order, payment_id = %payment, "an order cancelled was paid all the same; refunding the payment");
        refund(tx, payment).await?;
    }
    Ok(())
}

/// A refund's payment (refunded, or whose refund is asked for), or why there is none.
pub enum Refund {
    Payment(PaymentRow),
    NotRefundable(String),
    Missing,
}

/// The payment, locked until the transaction ends, if it can be refunded (it succeeded);
/// else why not.
async fn lock_refundable(tx: &mut PgConnection, id: Uuid) -> Result<Refund, sqlx::Error> {
    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        None => Refund::Missing,
        Some(row) if row.status != "succeeded" => Refund::NotRefundable(row.status),
        Some(row) => Refund::Payment(row),
    })
}

/// Records that a succeeded payment's refund was asked for (kept if it already was): the
/// payment, or why it cannot be refunded.
pub async fn ask_refund(tx: &mut PgConnection, id: Uuid) -> Result<Refund, sqlx::Error> {
    let row = match lock_refundable(tx, id).await? {
        Refund::Payment(row) => row,
        not_refundable => return Ok(not_refundable),
    };
    sqlx::query(
        "UPDATE payments SET refund_asked_at = coalesce(refund_asked_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(Refund::Payment(row))
}

/// Forgets a refund asked for that orders refused: the payment stays succeeded.
pub async fn give_up_refund(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET refund_asked_at = NULL WHERE id = $1 AND status = 'succeeded'",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Claims refunds asked for before `before` and not yet carried out or given up, oldest
/// first: each is marked asked now, so that no instance takes it up again before `before`
/// comes round again (another instance's sweep skips those being claimed).
pub async fn claim_refunds_asked(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE payments SET refund_asked_at = now()
         WHERE id IN (SELECT id FROM payments
                      WHERE status = 'succeeded' AND refund_asked_at IS NOT NULL
                        AND refund_asked_at < $1
                      ORDER BY refund_asked_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING {PAYMENT_COLUMNS}"
    )))
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Refunds a succeeded payment in full and writes `PaymentRefunded`; only once its order has
/// agreed (`refunds`).
pub async fn refund(tx: &mut PgConnection, id: Uuid) -> Result<Refund, sqlx::Error> {
    if let not_refundable @ (Refund::Missing | Refund::NotRefundable(_)) =
        lock_refundable(tx, id).await?
    {
        return Ok(not_refundable);
    }
    let row: PaymentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE payments SET status = 'refunded', refunded_at = now() WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    )))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let event = PaymentRefunded {
        payment_id: row.id,
        order_id: row.order_id,
        user_id: row.user_id,
        amount: Money::new(row.amount, &row.currency),
        charged_after_close: false,
    };
    publish(&mut *tx, &event, row.order_id).await?;
    Ok(Refund::Payment(row))
}
