//! The transactional outbox: events are written in the same transaction as the state change
//! and moved to their Redis stream by a relay, at least once.

use std::sync::Arc;
use std::time::Duration;

use contracts::events::{Envelope, Event};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::redis::{Redis, RedisError};
use crate::stream_trim::{Trim, trim_acknowledged};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("injected failure: {0}")]
    Injected(String),
}

impl From<redis::RedisError> for OutboxError {
    fn from(e: redis::RedisError) -> Self {
        OutboxError::Redis(e.into())
    }
}

/// Writes `event` to the outbox inside the caller's transaction.
pub async fn enqueue<E: Event>(
    tx: &mut PgConnection,
    event: &E,
    source: &str,
    correlation_id: Option<String>,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::wrap(event, source, correlation_id);
    sqlx::query("INSERT INTO outbox (id, stream, event_type, payload) VALUES ($1, $2, $3, $4)")
        .bind(envelope.id)
        .bind(E::STREAM)
        .bind(&envelope.kind)
        .bind(sqlx::types::Json(&envelope))
        .execute(tx)
        .await?;
    Ok(envelope)
}

/// Moves unsent outbox rows to their streams.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    redis: Redis,
    service: &'static str,
    wake: Arc<Notify>,
    batch: i64,
    poll: Duration,
    /// The stream this relay trims past what its consumer groups acknowledged.
    trims: Option<&'static str>,
    trim_every: Duration,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, redis: Redis, service: &'static str) -> Self {
        crate::metrics::handle();
        Self {
            pool,
            redis,
            service,
            wake: Arc::new(Notify::new()),
            batch: 100,
            poll: Duration::from_millis(200),
            trims: None,
            trim_every: Duration::from_secs(10),
        }
    }

    /// Also trims `stream` (the producer's own) every few seconds, only past what every
    /// group of `contracts::events::streams::consumer_groups` acknowledged.
    pub fn trimming(mut self, stream: &'static str) -> Self {
        self.trims = Some(stream);
        self
    }

    /// One trimming pass over the relay's stream.
    pub async fn trim_once(&self) -> Result<Option<Trim>, RedisError> {
        let Some(stream) = self.trims else {
            return Ok(None);
        };
        let groups = contracts::events::streams::consumer_groups(stream);
        let trim = trim_acknowledged(&self.redis, stream, groups).await?;
        match &trim {
            Trim::Trimmed { removed, .. } => {
                metrics::counter!("stream_trimmed_entries_total", "stream" => stream)
                    .increment(*removed);
            }
            Trim::WaitingFor(groups) if !groups.is_empty() => {
                tracing::info!(
                    stream,
                    ?groups,
                    "stream not trimmed: consumer groups not created yet"
                );
            }
            _ => {}
        }
        Ok(Some(trim))
    }

    /// Call after committing an outbox row so that it goes out without waiting for the poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Sends one batch; returns how many rows went out.
    pub async fn relay_once(&self) -> Result<usize, OutboxError> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED lets several instances relay in parallel without sending a row twice.
        let rows = sqlx::query(
            "SELECT id, stream, event_type, payload::text AS payload FROM outbox
             WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut conn = self.redis.conn().await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.get("id");
            let stream: String = row.get("stream");
            let kind: String = row.get("event_type");
            let payload: String = row.get("payload");
            let _: String = redis::cmd("XADD")
                .arg(self.redis.key(&stream))
                .arg("*")
                .arg("id")
                .arg(id.to_string())
                .arg("type")
                .arg(&kind)
                .arg("envelope")
                .arg(payload)
                .query_async(&mut *conn)
                .await?;
            ids.push(id);
        }
        fail::fail_point!("outbox::after_xadd_before_mark", |_| Err(
            OutboxError::Injected("outbox::after_xadd_before_mark".into())
        ));
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("outbox_sent_total", "service" => self.service)
            .increment(ids.len() as u64);
        Ok(ids.len())
    }

    /// Rows not yet sent: the outbox lag.
    pub async fn unsent(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// Relays until cancelled, then makes one last pass so that nothing committed waits
    /// for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut last_trim = tokio::time::Instant::now();
        loop {
            if last_trim.elapsed() >= self.trim_every {
                last_trim = tokio::time::Instant::now();
                if let Err(err) = self.trim_once().await {
                    tracing::warn!(service = self.service, error = %err, "stream trimming failed; retrying later");
                }
            }
            match self.relay_once().await {
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    if n > 0 {
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(service = self.service, error = %err, "outbox relay failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if let Ok(n) = self.unsent().await {
                metrics::gauge!("outbox_unsent", "service" => self.service).set(n as f64);
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        while let Ok(n) = self.relay_once().await {
            if n == 0 {
                break;
            }
        }
    }
}
