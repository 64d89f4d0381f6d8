//! Releases reservations whose order was never paid before they expired.

use platform::CancellationToken;

use crate::{Inventory, store};

pub struct Sweeper {
    state: Inventory,
}

impl Sweeper {
    pub fn new(state: Inventory) -> Self {
        Self { state }
    }

    pub async fn sweep_once(&self) -> Result<usize, sqlx::Error> {
        let mut released = 0;
        loop {
            let mut tx = self.state.base.pool.begin().await?;
            let expired = store::expired_reservations(&mut tx, 100).await?;
            if expired.is_empty() {
                return Ok(released);
            }
            for order in &expired {
                if store::finish_reservation(&mut tx, *order, false, "expired").await? {
                    released += 1;
                }
            }
            tx.commit().await?;
            metrics::counter!("reservations_expired_total").increment(expired.len() as u64);
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interval = self.state.config.sweep_interval;
        let failed = "reservation sweep failed; retrying next round";
        platform::periodic::every(interval, &shutdown, failed, || self.sweep_once()).await;
    }
}
