//! The stream consumer runner: one consumer group per consuming service, at-least-once
//! delivery made exactly-once in effect by recording each event id in `processed_events`
//! in the same transaction as the handler's effect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use contracts::events::Envelope;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamPendingId, StreamRangeReply,
    StreamReadReply,
};
use redis::{FromRedisValue, Value};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::redis::{Redis, RedisError};

/// What a consuming service does with one event, inside the transaction that also records
/// the event as processed. An error rolls both back; the entry is retried.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// What an event needs done before its transaction opens: a call to another service,
    /// which must not keep a transaction (and a pooled connection) open while it waits. It
    /// may run more than once for one event (a redelivery, a duplicate), so what it stores
    /// must bear repeating. An error retries the entry later, as one from `handle` does.
    async fn prepare(&self, _db: &PgPool, _event: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError>;
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Failed(String),
    /// Something the event needs is out of reach for now (another service, say): the entry
    /// is tried again in place, for up to `max_wait_for_service` of the outage, and fails
    /// after that.
    #[error("{0}")]
    Unavailable(String),
}

impl HandlerError {
    /// Whether the failure says nothing about the event: it would succeed once the database
    /// or the service it waits for is back.
    fn is_transient(&self) -> bool {
        match self {
            HandlerError::Database(e) => is_transient(e),
            HandlerError::Unavailable(_) => true,
            HandlerError::Failed(_) => false,
        }
    }
}

/// Whether a database error is the database's state rather than the statement's: no
/// connection, an overloaded or restarting server, a transaction that lost a race.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE: connection exceptions (not a protocol violation, which a statement meets
        // every time); too many connections; admin or crash shutdown, cannot connect now;
        // serialization failure, deadlock.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                "08000"
                    | "08001"
                    | "08003"
                    | "08004"
                    | "08006"
                    | "53300"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "40001"
                    | "40P01"
            )
        }),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl From<redis::RedisError> for ConsumerError {
    fn from(e: redis::RedisError) -> Self {
        ConsumerError::Redis(e.into())
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group: the consuming service's name.
    pub group: String,
    /// This instance within the group.
    pub consumer: String,
    /// Stream names (without the Redis prefix).
    pub streams: Vec<String>,
    pub block: Duration,
    pub batch: usize,
    /// Entries pending longer than this are claimed from whichever consumer holds them.
    pub claim_idle: Duration,
    /// An entry delivered this many times goes to the dead-letter stream.
    pub max_deliveries: usize,
    /// How long an entry that waits out an outage waits before its first retry; doubling
    /// after each, up to 5 s.
    pub retry_pause: Duration,
    /// How long an entry waits in place for another service its handler needs (a database
    /// outage is waited out however long it lasts: nothing else could go on meanwhile).
    pub max_wait_for_service: Duration,
}

impl ConsumerConfig {
    pub fn new(group: &str, streams: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            consumer: format!("{group}-{}", uuid::Uuid::new_v4()),
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            block: Duration::from_secs(2),
            batch: 50,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            retry_pause: Duration::from_millis(100),
            max_wait_for_service: Duration::from_secs(10 * 60),
        }
    }
}

/// The longest wait between two tries of an entry that waits out an outage.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The dead-letter stream of a stream.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dead")
}

#[derive(Clone, Copy)]
struct ServiceOutage {
    since: tokio::time::Instant,
    last: tokio::time::Instant,
}

pub struct Consumer {
    pool: PgPool,
    redis: Redis,
    config: ConsumerConfig,
    handler: Arc<dyn EventHandler>,
    /// The service outage handlers meet: since when, and when last. One outage is waited out
    /// once, not again by each entry that meets it.
    service_outage: Mutex<Option<ServiceOutage>>,
    /// When the entries this consumer holds were last kept from being claimed.
    kept_claimed_at: Mutex<tokio::time::Instant>,
}

/// What is known of an entry's deliveries when it is handled: whether they must be checked
/// against `max_deliveries`, and whether they were just counted.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// Read new (`>`), or tried once already: nothing to check.
    First,
    /// Taken up again by the consumer that held it, delivered this many times (its pending
    /// entry, read just before).
    Counted(usize),
    /// Claimed from an idle consumer: its deliveries are asked for.
    Claimed,
}

enum Outcome {
    Applied,
    Duplicate,
    DeadLettered,
    /// The handler failed: retried when next claimed, a delivery counted against it.
    Failed,
    /// The database (`by_service` false) or a service the handler needs was out of reach:
    /// tried again in place.
    Deferred {
        by_service: bool,
    },
}

impl Consumer {
    pub fn new(
        pool: PgPool,
        redis: Redis,
        config: ConsumerConfig,
        handler: Arc<dyn EventHandler>,
    ) -> Self {
        crate::metrics::handle();
        Self {
            pool,
            redis,
            config,
            handler,
            service_outage: Mutex::new(None),
            kept_claimed_at: Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn keys(&self) -> Vec<String> {
        self.config
            .streams
            .iter()
            .map(|s| self.redis.key(s))
            .collect()
    }

    /// Creates the group on every stream (and the stream itself) if missing.
    pub async fn ensure_groups(&self) -> Result<(), ConsumerError> {
        let mut conn = self.redis.conn().await?;
        for key in self.keys() {
            let res: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(&self.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut *conn)
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads and handles entries until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = tokio::select! {
                r = self.run_connected(&shutdown) => r,
                _ = shutdown.cancelled() => return,
            };
            match res {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(group = %self.config.group, error = %err, "consumer lost its connection; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn run_connected(&self, shutdown: &CancellationToken) -> Result<(), ConsumerError> {
        self.ensure_groups().await?;
        let mut conn = self.redis.blocking_conn().await?;
        // Our own pending entries first: what a previous life of this consumer read but
        // never acknowledged.
        self.drain_pending(&mut conn).await?;
        let mut last_claim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if last_claim.elapsed() >= self.config.claim_idle / 2 {
                self.claim_idle(&mut conn).await?;
                last_claim = tokio::time::Instant::now();
            }
            let reply = self.read_new(&mut conn, Some(self.config.block)).await?;
            for key in reply.keys {
                for entry in key.ids {
                    self.process(&mut conn, &key.key, &entry, Delivery::First)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Handles what is already waiting, then returns: for tests and for catch-up.
    pub async fn run_until_idle(&self) -> Result<usize, ConsumerError> {
        self.ensure_groups().await?;
        let mut conn = self.redis.blocking_conn().await?;
        self.claim_idle(&mut conn).await?;
        let mut handled = self.drain_pending(&mut conn).await?;
        loop {
            let reply = self.read_new(&mut conn, None).await?;
            let entries: Vec<(String, StreamId)> = reply
                .keys
                .into_iter()
                .flat_map(|k| {
                    let key = k.key;
                    k.ids.into_iter().map(move |id| (key.clone(), id))
                })
                .collect();
            if entries.is_empty() {
                return Ok(handled);
            }
            for (key, entry) in entries {
                self.process(&mut conn, &key, &entry, Delivery::First)
                    .await?;
                handled += 1;
            }
        }
    }

    /// Handles again what this consumer holds (read before its connection was lost, or
    /// failed since), found with XPENDING and read with XRANGE: reading its own pending
    /// entries with XREADGROUP would count a delivery of each, and a few lost connections
    /// would then dead-letter entries whose handlers never failed.
    async fn drain_pending(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<usize, ConsumerError> {
        let mut handled = 0;
        for key in self.keys() {
            for pending in self.held(conn, &key).await? {
                // Another instance may have claimed it while this one handled earlier ones.
                let Some(delivered) = self.deliveries_if_held(conn, &key, &pending.id).await?
                else {
                    continue;
                };
                let found: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&pending.id)
                    .arg(&pending.id)
                    .query_async(conn)
                    .await?;
                match found.ids.first() {
                    Some(entry) => {
                        self.process(conn, &key, entry, Delivery::Counted(delivered))
                            .await?;
                    }
                    // Deleted from the stream by hand (XDEL, MAXLEN): nothing left to handle.
                    None => {
                        tracing::error!(group = %self.config.group, stream = key, entry = %pending.id, "a pending entry is no longer in its stream; it is acknowledged unhandled");
                        metrics::counter!("stream_entries_total", "group" => self.config.group.clone(), "outcome" => "gone").increment(1);
                        self.ack(conn, &key, &pending.id).await?;
                    }
                }
                handled += 1;
            }
        }
        Ok(handled)
    }

    /// How many times entry `id` of `key` was delivered, if this consumer still holds it.
    async fn deliveries_if_held(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &str,
    ) -> Result<Option<usize>, ConsumerError> {
        Ok(self
            .pending_entry(conn, key, id)
            .await?
            .filter(|p| p.consumer == self.config.consumer)
            .map(|p| p.times_delivered))
    }

    /// The entries of `key` this consumer holds, oldest first.
    async fn held(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<Vec<StreamPendingId>, ConsumerError> {
        let held: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(key)
            .arg(&self.config.group)
            .arg("-")
            .arg("+")
            // What it read (a batch per stream) and what it claimed (a batch at a time).
            .arg(self.config.batch * 4)
            .arg(&self.config.consumer)
            .query_async(conn)
            .await?;
        Ok(held.ids)
    }

    /// Entries of its streams no consumer of the group has read yet (`>`), a batch of them.
    async fn read_new(
        &self,
        conn: &mut MultiplexedConnection,
        block: Option<Duration>,
    ) -> Result<StreamReadReply, ConsumerError> {
        let keys = self.keys();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.batch);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&keys);
        for _ in &keys {
            cmd.arg(">");
        }
        let value: Value = cmd.query_async(conn).await?;
        if matches!(value, Value::Nil) {
            return Ok(StreamReadReply { keys: vec![] });
        }
        StreamReadReply::from_redis_value(value)
            .map_err(|e| ConsumerError::Redis(RedisError::Parse(e.to_string())))
    }

    async fn claim_idle(&self, conn: &mut MultiplexedConnection) -> Result<(), ConsumerError> {
        for key in self.keys() {
            let mut cursor = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(self.config.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.config.batch)
                    .query_async(conn)
                    .await?;
                for entry in &reply.claimed {
                    self.process(conn, &key, entry, Delivery::Claimed).await?;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(())
    }

    async fn deliveries(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &str,
    ) -> Result<usize, ConsumerError> {
        Ok(self
            .pending_entry(conn, key, id)
            .await?
            .map_or(0, |p| p.times_delivered))
    }

    /// Entry `id` of `key` in the group's pending list: who holds it, how often delivered.
    async fn pending_entry(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &str,
    ) -> Result<Option<StreamPendingId>, ConsumerError> {
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(key)
            .arg(&self.config.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(reply.ids.into_iter().next())
    }

    /// Keeps every entry this consumer holds (the one it waits on, and the rest of what it
    /// read with it) from being claimed by another: each made idle from now, its delivery
    /// count as it is.
    async fn keep_claimed(&self, conn: &mut MultiplexedConnection) -> Result<(), ConsumerError> {
        for key in self.keys() {
            let held = self.held(conn, &key).await?;
            if held.is_empty() {
                continue;
            }
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(&key)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(0);
            for pending in &held {
                claim.arg(&pending.id);
            }
            let _: Value = claim.arg("JUSTID").query_async(conn).await?;
        }
        Ok(())
    }

    async fn ack(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &str,
    ) -> Result<(), ConsumerError> {
        let _: i64 = redis::cmd("XACK")
            .arg(key)
            .arg(&self.config.group)
            .arg(id)
            .query_async(conn)
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
        reason: &str,
    ) -> Result<(), ConsumerError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(dead_letter_stream(key)).arg("*");
        let mut fields: Vec<(&String, &Value)> = entry.map.iter().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (field, value) in fields {
            cmd.arg(field)
                .arg(String::from_redis_value(value.clone()).unwrap_or_default());
        }
        cmd.arg("original_id")
            .arg(&entry.id)
            .arg("group")
            .arg(&self.config.group)
            .arg("reason")
            .arg(reason);
        let _: String = cmd.query_async(&mut *conn).await?;
        self.ack(conn, key, &entry.id).await?;
        metrics::counter!("stream_dead_letters_total", "group" => self.config.group.clone(), "stream" => key.to_owned())
            .increment(1);
        tracing::error!(group = %self.config.group, stream = key, entry = %entry.id, reason, "entry moved to the dead-letter stream");
        Ok(())
    }

    /// Handles one entry. One that waits out an outage (the database, or a service its
    /// handler needs, out of reach) is tried again in place, with pauses, for as long as the
    /// outage lasts: its delivery count does not move, and what comes after it waits too (it
    /// would meet the same outage, and its order is kept), every entry this consumer holds
    /// kept from being claimed by another about three times per `claim_idle`. A service's
    /// outage is waited out for `max_wait_for_service` in all: past that, an entry that finds
    /// it still out fails at once, as one whose handler fails does, and the consumer moves on
    /// to entries that may not need it (`service_out_too_long`).
    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
        delivery: Delivery,
    ) -> Result<Outcome, ConsumerError> {
        let mut pause = self.config.retry_pause;
        let mut delivery = delivery;
        let keep_every = self.config.claim_idle / 3;
        loop {
            let mut outcome = self.process_entry(conn, key, entry, delivery).await?;
            if matches!(outcome, Outcome::Deferred { by_service: true })
                && self.service_out_too_long()
            {
                tracing::error!(group = %self.config.group, stream = key, entry = %entry.id, "a service the event needs has been out of reach too long; the entry fails and will be retried later");
                outcome = Outcome::Failed;
            }
            let label = match outcome {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
                Outcome::DeadLettered => "dead_lettered",
                Outcome::Failed => "failed",
                Outcome::Deferred { .. } => "deferred",
            };
            metrics::counter!("stream_entries_total", "group" => self.config.group.clone(), "outcome" => label).increment(1);
            if !matches!(outcome, Outcome::Deferred { .. }) {
                return Ok(outcome);
            }
            // Its deliveries were checked on the first try; they have not moved since.
            delivery = Delivery::First;
            let kept_at = *self.kept_claimed_at.lock().expect("never poisoned");
            if kept_at.elapsed() + pause >= keep_every {
                self.keep_claimed(conn).await?;
                *self.kept_claimed_at.lock().expect("never poisoned") = tokio::time::Instant::now();
            }
            tokio::time::sleep(pause.min(keep_every.max(self.config.retry_pause))).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// Notes that a handler met a service out of reach now; true once that outage has lasted
    /// `max_wait_for_service`. An outage is a run of such meetings with no gap longer than
    /// an entry's retry and claim could leave (then the service answered in between).
    fn service_out_too_long(&self) -> bool {
        let now = tokio::time::Instant::now();
        let gap = self.config.claim_idle.max(MAX_RETRY_PAUSE * 2);
        let mut outage = self.service_outage.lock().expect("never poisoned");
        let current = match *outage {
            Some(o) if now - o.last <= gap => ServiceOutage { last: now, ..o },
            _ => ServiceOutage {
                since: now,
                last: now,
            },
        };
        *outage = Some(current);
        now - current.since >= self.config.max_wait_for_service
    }

    async fn process_entry(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
        delivery: Delivery,
    ) -> Result<Outcome, ConsumerError> {
        let deliveries = match delivery {
            Delivery::First => None,
            Delivery::Counted(times) => Some(times),
            Delivery::Claimed => Some(self.deliveries(conn, key, &entry.id).await?),
        };
        if deliveries.is_some_and(|times| times > self.config.max_deliveries) {
            self.dead_letter(conn, key, entry, "delivered too many times")
                .await?;
            return Ok(Outcome::DeadLettered);
        }
        let fields: HashMap<&str, String> = entry
            .map
            .iter()
            .filter_map(|(k, v)| {
                String::from_redis_value(v.clone())
                    .ok()
                    .map(|s| (k.as_str(), s))
            })
            .collect();
        let envelope = match fields
            .get("envelope")
            .map(|raw| serde_json::from_str::<Envelope>(raw))
        {
            Some(Ok(envelope)) => envelope,
            Some(Err(e)) => {
                self.dead_letter(conn, key, entry, &format!("unreadable envelope: {e}"))
                    .await?;
                return Ok(Outcome::DeadLettered);
            }
            None => {
                self.dead_letter(conn, key, entry, "no envelope field")
                    .await?;
                return Ok(Outcome::DeadLettered);
            }
        };
        let applied = match self.handler.prepare(&self.pool, &envelope).await {
            Ok(()) => self.apply(&envelope).await,
            Err(err) => Err(err),
        };
        match applied {
            Ok(outcome) => {
                fail::fail_point!("consumer::after_commit_before_ack", |_| Ok(Outcome::Failed));
                self.ack(conn, key, &entry.id).await?;
                Ok(outcome)
            }
            Err(err) if err.is_transient() => {
                tracing::warn!(group = %self.config.group, event = %envelope.id, kind = %envelope.kind, error = %err, "the event cannot be handled for now; it will be tried again");
                Ok(Outcome::Deferred {
                    by_service: matches!(err, HandlerError::Unavailable(_)),
                })
            }
            Err(err) => {
                tracing::warn!(group = %self.config.group, event = %envelope.id, kind = %envelope.kind, error = %err, "handling the event failed; the entry will be retried");
                Ok(Outcome::Failed)
            }
        }
    }

    /// Runs the handler in a transaction that also records the event as processed; a
    /// duplicate changes nothing.
    async fn apply(&self, envelope: &Envelope) -> Result<Outcome, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, event_type) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.config.group)
        .bind(envelope.id)
        .bind(&envelope.kind)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let outcome = if fresh {
            if let Err(err) = self.handler.handle(&mut tx, envelope).await {
                tx.rollback().await.ok();
                return Err(err);
            }
            Outcome::Applied
        } else {
            Outcome::Duplicate
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
