//! Cart empties the ordered lines once the order is paid.

use async_trait::async_trait;
use contracts::events::{Envelope, PaymentSucceeded};
use contracts::internal::StockLine;
use platform::consumer::{EventHandler, HandlerError};
use sqlx::PgConnection;

use crate::store;

pub struct PaidOrders;

#[async_trait]
impl EventHandler for PaidOrders {
    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        if let Some(paid) = event.open::<PaymentSucceeded>() {
            let paid = paid.map_err(|e| HandlerError::Failed(e.to_string()))?;
            let lines: Vec<StockLine> = paid
                .lines
                .iter()
                .map(|l| StockLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                })
                .collect();
            store::remove_ordered(tx, paid.user_id, &lines).await?;
        }
        Ok(())
    }
}
