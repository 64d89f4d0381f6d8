//! Cancels orders whose checkout never finished: written, but no payment session opened (the
//! checkout failed, or its process died, after the order and before the session, and was not
//! retried). No PaymentExpired will ever come for them, so without this they would stay
//! PENDING for good, unpayable, with their customer unable to tell why.

use platform::CancellationToken;

use crate::{Orders, store};

/// Why such an order is cancelled.
const REASON: &str = "checkout did not finish";

impl Orders {
    /// Cancels the orders left without a payment session for longer than a reservation lasts
    /// (their stock is no longer held by then); how many.
    pub async fn cancel_abandoned_once(&self) -> Result<usize, sqlx::Error> {
        let mut cancelled = 0;
        loop {
            let mut tx = self.base.pool.begin().await?;
            let abandoned =
                store::abandoned_orders(&mut tx, self.config.reservation_ttl, 100).await?;
            if abandoned.is_empty() {
                return Ok(cancelled);
            }
            for order in &abandoned {
                if store::cancel(&mut tx, order, REASON).await? {
                    cancelled += 1;
                }
            }
            tx.commit().await?;
            self.relay.wake();
            metrics::counter!("orders_abandoned_total").increment(abandoned.len() as u64);
        }
    }

    /// Looks for abandoned orders every quarter of a reservation's lifetime (at most every
    /// minute) until `shutdown`.
    pub async fn cancel_abandoned(self, shutdown: CancellationToken) {
        let every = (self.config.reservation_ttl / 4).min(std::time::Duration::from_secs(60));
        let failed = "looking for abandoned orders failed; retrying next round";
        platform::periodic::every(every, &shutdown, failed, || self.cancel_abandoned_once()).await;
    }
}
