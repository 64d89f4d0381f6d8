//! Sends queued notifications and records each attempt, retrying with exponential backoff.
//!
//! Each message is sent in a transaction of its own that holds the row's lock during the send
//! and marks the row sent after it. A crash between the server accepting the message and that
//! commit leaves the row queued, so it is sent again: delivery to the SMTP server (or the SMS
//! provider) is at least once, and a crash at that one point can send a message twice. A
//! two-phase handshake with a mail server does not exist, so this is the honest guarantee;
//! one row per (event, channel) keeps it to that window.

use std::sync::Arc;
use std::time::Duration;

use platform::CancellationToken;
use sqlx::PgPool;
use uuid::Uuid;

use crate::channel::{Channel, Medium, Message};
use crate::store::{self, NotificationRow};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

pub struct Sender {
    pool: PgPool,
    email: Arc<dyn Channel>,
    sms: Arc<dyn Channel>,
    max_attempts: i32,
    base_delay: Duration,
    poll: Duration,
}

/// The wait before the attempt after `attempts` failed ones: base, 2×base, 4×base, …
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 20) as u32;
    base.saturating_mul(2u32.pow(exponent)).min(MAX_BACKOFF)
}

impl Sender {
    pub fn new(
        pool: PgPool,
        email: Arc<dyn Channel>,
        sms: Arc<dyn Channel>,
        max_attempts: i32,
        base_delay: Duration,
        poll: Duration,
    ) -> Self {
        Self {
            pool,
            email,
            sms,
            max_attempts: max_attempts.max(1),
            base_delay,
            poll,
        }
    }

    /// Tries every message due now once; returns how many were sent.
    pub async fn send_due(&self) -> Result<usize, sqlx::Error> {
        let mut sent = 0;
        let mut tried: Vec<Uuid> = Vec::new();
        loop {
            let mut tx = self.pool.begin().await?;
            // One row per transaction: a crash resends at most the message in flight.
            let Some(row) = store::lock_due(&mut tx, &tried).await? else {
                tx.commit().await?;
                return Ok(sent);
            };
            tried.push(row.id);
            if self.attempt(&mut tx, &row).await? {
                sent += 1;
            }
            tx.commit().await?;
        }
    }

    /// Sends one row and records the outcome; true when it went out.
    async fn attempt(
        &self,
        tx: &mut sqlx::PgConnection,
        row: &NotificationRow,
    ) -> Result<bool, sqlx::Error> {
        let Some(medium) = Medium::parse(&row.channel) else {
            store::mark_attempt_failed(
                tx,
                row.id,
                &format!("unknown channel {:?}", row.channel),
                true,
                Duration::ZERO,
            )
            .await?;
            return Ok(false);
        };
        let channel = match medium {
            Medium::Email => &self.email,
            Medium::Sms => &self.sms,
        };
        let message = Message {
            medium,
            recipient: row.recipient.clone(),
            subject: row.subject.clone(),
            body: row.body.clone(),
        };
        match channel.send(&message).await {
            Ok(()) => {
                store::mark_sent(tx, row.id, channel.name()).await?;
                metrics::counter!("notifications_sent_total", "channel" => medium.as_str())
                    .increment(1);
                Ok(true)
            }
            Err(err) => {
                let attempts = row.attempts + 1;
                let give_up = err.permanent || attempts >= self.max_attempts;
                let retry_in = backoff(self.base_delay, attempts);
                store::mark_attempt_failed(tx, row.id, &err.reason, give_up, retry_in).await?;
                if give_up {
                    metrics::counter!("notifications_failed_total", "channel" => medium.as_str())
                        .increment(1);
                    tracing::error!(notification = %row.id, channel = medium.as_str(), attempts, error = %err, "notification failed for good");
                } else {
                    tracing::warn!(notification = %row.id, channel = medium.as_str(), attempts, retry_in_ms = retry_in.as_millis() as u64, error = %err, "notification not sent; will retry");
                }
                Ok(false)
            }
        }
    }

    /// Sends due messages until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let failed = "sending notifications failed; retrying next round";
        platform::periodic::every(self.poll, &shutdown, failed, || self.send_due()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(1000);
        assert_eq!(backoff(base, 1), Duration::from_millis(1000));
        assert_eq!(backoff(base, 2), Duration::from_millis(2000));
        assert_eq!(backoff(base, 4), Duration::from_millis(8000));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}
