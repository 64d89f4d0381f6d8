//! What inventory does with payment and order events: commit a paid order's reservation,
//! release an unpaid or cancelled one, restock a refunded one. Each happens once: the
//! reservation's status only moves forward.

use async_trait::async_trait;
use contracts::events::{
    Envelope, Event, OrderCancelled, PaymentExpired, PaymentFailed, PaymentRefunded,
    PaymentSucceeded,
};
use platform::consumer::{EventHandler, HandlerError};
use sqlx::PgConnection;

use crate::store;

pub struct StockEvents;

fn payload<E: Event>(event: &Envelope) -> Option<Result<E, HandlerError>> {
    event
        .open::<E>()
        .map(|r| r.map_err(|e| HandlerError::Failed(e.to_string())))
}

#[async_trait]
impl EventHandler for StockEvents {
    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        if let Some(e) = payload::<PaymentSucceeded>(event) {
            store::finish_reservation(tx, e?.order_id, true, "paid").await?;
        } else if let Some(e) = payload::<PaymentFailed>(event) {
            store::finish_reservation(tx, e?.order_id, false, "payment failed").await?;
        } else if let Some(e) = payload::<PaymentExpired>(event) {
            store::finish_reservation(tx, e?.order_id, false, "payment expired").await?;
        } else if let Some(e) = payload::<OrderCancelled>(event) {
            store::finish_reservation(tx, e?.order_id, false, "order cancelled").await?;
        } else if let Some(e) = payload::<PaymentRefunded>(event) {
            let e = e?;
            if e.charged_after_close {
                // Never paid: nothing was sold, so the reservation is released, if this
                // consumer has not yet applied the session's expiry or the cancellation.
                store::finish_reservation(
                    tx,
                    e.order_id,
                    false,
                    "charged after its session closed; refunded",
                )
                .await?;
            } else {
                store::restock(tx, e.order_id).await?;
            }
        }
        Ok(())
    }
}
