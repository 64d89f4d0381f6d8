//! What orders does with the payment events: each moves a PENDING (or PAID) order once;
//! a replay, or an event for an order that already moved on, leaves it as it is.

use async_trait::async_trait;
use contracts::events::{
    Envelope, PaymentExpired, PaymentFailed, PaymentRefunded, PaymentSucceeded,
};
use platform::consumer::{EventHandler, HandlerError};
use sqlx::PgConnection;

use crate::store;

pub struct PaymentEvents;

fn payload<E: contracts::events::Event>(event: &Envelope) -> Option<Result<E, HandlerError>> {
    event
        .open::<E>()
        .map(|r| r.map_err(|e| HandlerError::Failed(e.to_string())))
}

#[async_trait]
impl EventHandler for PaymentEvents {
    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        if let Some(e) = payload::<PaymentSucceeded>(event) {
            store::transition(tx, e?.order_id, &["PENDING"], "PAID", "payment succeeded").await?;
        } else if let Some(e) = payload::<PaymentFailed>(event) {
            let e = e?;
            store::transition(
                tx,
                e.order_id,
                &["PENDING"],
                "CANCELLED",
                &format!("payment failed: {}", e.reason),
            )
            .await?;
        } else if let Some(e) = payload::<PaymentExpired>(event) {
            store::transition(
                tx,
                e?.order_id,
                &["PENDING"],
                "CANCELLED",
                "payment expired",
            )
            .await?;
        } else if let Some(e) = payload::<PaymentRefunded>(event) {
            let e = e?;
            let order = e.order_id;
            if e.charged_after_close {
                // Never paid: the order is cancelled, if this consumer has not yet applied the
                // session's expiry or the cancellation.
                store::transition(
                    tx,
                    order,
                    &["PENDING"],
                    "CANCELLED",
                    "payment expired (charged after its session closed; refunded)",
                )
                .await?;
                return Ok(());
            }
            // A refunded payment succeeded, but its event may come second (it failed once and
            // waits for a retry): the order is paid as of now, and the payment's event, when
            // it comes, finds it moved on.
            store::transition(
                tx,
                order,
                &["PENDING"],
                "PAID",
                "payment succeeded (its refund told first)",
            )
            .await?;
            // Orders agrees to each admin's refund before payment makes it (`internal_refund`),
            // so the order is REFUNDED already; SHIPPED and DELIVERED are for refunds made
            // before payment asked: the money is back with the customer, and the order says so.
            // Payment also refunds, unasked, a payment whose order was cancelled: the order is
            // CANCELLED, and stays so.
            store::transition(
                tx,
                order,
                &["PAID", "SHIPPED", "DELIVERED"],
                "REFUNDED",
                "payment refunded",
            )
            .await?;
        }
        Ok(())
    }
}
