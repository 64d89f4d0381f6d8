//! The outbox relay and the consumer runner against real Postgres and Redis, with crashes
//! injected at exact points (fail-rs failpoints).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use contracts::events::{Envelope, UserRegistered};
use platform::CancellationToken;
use platform::consumer::{
    Consumer, ConsumerConfig, EventHandler, HandlerError, dead_letter_stream,
};
use platform::outbox::{self, OutboxRelay};
use platform::redis::Redis;
use platform::testing::{self, TestDb};
use sqlx::{PgConnection, PgPool};

/// Failpoints are process-wide: tests that relay or consume take turns.
static FAILPOINTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    _db: TestDb,
    pool: PgPool,
    redis: Redis,
}

async fn fixture() -> Fixture {
    let db = TestDb::new("events");
    let pool = platform::db::connect(
        &db.url,
        5,
        &sqlx::migrate::Migrator::with_migrations(vec![]),
    )
    .await
    .expect("Postgres must be running (scripts/test starts it)");
    sqlx::query("CREATE TABLE effects (grp TEXT NOT NULL, event_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let redis = Redis::connect(&testing::redis_url(), &testing::redis_prefix()).unwrap();
    redis
        .ping()
        .await
        .expect("Redis must be running (scripts/test starts it)");
    Fixture {
        _db: db,
        pool,
        redis,
    }
}

/// Records one effect row per applied event.
struct RecordEffect(String);

#[async_trait]
impl EventHandler for RecordEffect {
    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (grp, event_id) VALUES ($1, $2)")
            .bind(&self.0)
            .bind(event.id)
            .execute(tx)
            .await?;
        Ok(())
    }
}

struct AlwaysFails;

#[async_trait]
impl EventHandler for AlwaysFails {
    async fn handle(&self, _: &mut PgConnection, _: &Envelope) -> Result<(), HandlerError> {
        Err(HandlerError::Failed("poison".into()))
    }
}

fn registered(n: usize) -> UserRegistered {
    UserRegistered {
        user_id: uuid::Uuid::now_v7(),
        email: format!("u{n}@example.com"),
        name: "U".into(),
        phone: None,
        verification_url: Some("http://x/verify".into()),
    }
}

async fn enqueue(pool: &PgPool, n: usize) -> Envelope {
    let mut tx = pool.begin().await.unwrap();
    let env = outbox::enqueue(&mut tx, &registered(n), "users", None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    env
}

/// Enqueues `count` events and relays them to the stream.
async fn publish(f: &Fixture, count: usize) {
    for n in 0..count {
        enqueue(&f.pool, n).await;
    }
    OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users")
        .relay_once()
        .await
        .unwrap();
}

fn consumer(f: &Fixture, group: &str, handler: Arc<dyn EventHandler>) -> Consumer {
    Consumer::new(
        f.pool.clone(),
        f.redis.clone(),
        quick_config(group),
        handler,
    )
}

/// A consumer's config for these tests: idle entries claimed at once, two deliveries before
/// the dead-letter stream, short pauses between retries.
fn quick_config(group: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group, &[contracts::events::streams::USERS]);
    config.claim_idle = Duration::ZERO;
    config.max_deliveries = 2;
    config.retry_pause = Duration::from_millis(5);
    config
}

async fn effects(pool: &PgPool, group: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE grp = $1")
        .bind(group)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn xlen(redis: &Redis, stream: &str) -> i64 {
    let mut conn = redis.conn().await.unwrap();
    redis::cmd("XLEN")
        .arg(redis.key(stream))
        .query_async(&mut *conn)
        .await
        .unwrap()
}

async fn pending(redis: &Redis, group: &str) -> i64 {
    let mut conn = redis.conn().await.unwrap();
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(redis.key(contracts::events::streams::USERS))
        .arg(group)
        .query_async(&mut *conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(v) => match &v[0] {
            redis::Value::Int(n) => *n,
            other => panic!("unexpected XPENDING count {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_crash_after_xadd_still_applies_each_event_once_per_consumer() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    let event = enqueue(&f.pool, 1).await;
    // The service crashed right after commit: nothing was sent yet.
    assert_eq!(xlen(&f.redis, "users.events").await, 0);

    let relay = OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users");
    fail::cfg("outbox::after_xadd_before_mark", "return").unwrap();
    let crashed = relay.relay_once().await;
    fail::remove("outbox::after_xadd_before_mark");
    assert!(crashed.is_err(), "the injected crash interrupts the relay");
    assert_eq!(
        relay.unsent().await.unwrap(),
        1,
        "the row is not marked sent"
    );

    // The restarted relay sends it again: the stream now holds it twice.
    let restarted = OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users");
    assert_eq!(restarted.relay_once().await.unwrap(), 1);
    assert_eq!(restarted.unsent().await.unwrap(), 0);
    assert_eq!(xlen(&f.redis, "users.events").await, 2);

    for group in ["notification", "audit"] {
        let c = consumer(&f, group, Arc::new(RecordEffect(group.into())));
        assert_eq!(
            c.run_until_idle().await.unwrap(),
            2,
            "{group} reads both copies"
        );
        assert_eq!(
            effects(&f.pool, group).await,
            1,
            "{group} applies the event once"
        );
        assert_eq!(
            pending(&f.redis, group).await,
            0,
            "{group} acknowledged both copies"
        );
    }
    let applied: uuid::Uuid = sqlx::query_scalar("SELECT event_id FROM effects LIMIT 1")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(applied, event.id);
}

#[tokio::test]
async fn a_consumer_crash_after_commit_before_ack_is_redelivered_without_effect() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 1).await;

    let first = consumer(&f, "orders", Arc::new(RecordEffect("orders".into())));
    fail::cfg("consumer::after_commit_before_ack", "return").unwrap();
    first.run_until_idle().await.unwrap();
    fail::remove("consumer::after_commit_before_ack");
    assert_eq!(
        effects(&f.pool, "orders").await,
        1,
        "the effect was committed"
    );
    assert_eq!(
        pending(&f.redis, "orders").await,
        1,
        "but never acknowledged"
    );

    // Another instance of the same service claims the entry and finds it processed.
    let second = consumer(&f, "orders", Arc::new(RecordEffect("orders".into())));
    second.run_until_idle().await.unwrap();
    assert_eq!(
        effects(&f.pool, "orders").await,
        1,
        "the redelivery changed nothing"
    );
    assert_eq!(pending(&f.redis, "orders").await, 0);
}

#[tokio::test]
async fn an_entry_that_keeps_failing_goes_to_the_dead_letter_stream() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 1).await;
    let c = consumer(&f, "poisoned", Arc::new(AlwaysFails));
    for _ in 0..4 {
        c.run_until_idle().await.unwrap();
    }
    assert_eq!(
        pending(&f.redis, "poisoned").await,
        0,
        "the entry left the pending list"
    );
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 1);
    let rendered = platform::metrics::handle().render();
    assert!(
        rendered.contains("stream_dead_letters_total"),
        "dead letters are counted"
    );
}

#[tokio::test]
async fn replayed_dead_letters_are_handled_by_the_groups_that_gave_up_and_skipped_by_the_rest() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 2).await;
    let applied = consumer(&f, "applied", Arc::new(RecordEffect("applied".into())));
    assert_eq!(applied.run_until_idle().await.unwrap(), 2);
    for group in ["buggy", "buggier"] {
        let buggy = consumer(&f, group, Arc::new(AlwaysFails));
        for _ in 0..4 {
            buggy.run_until_idle().await.unwrap();
        }
    }
    let dead = dead_letter_stream("users.events");
    assert_eq!(
        xlen(&f.redis, &dead).await,
        4,
        "each group gave up on each event"
    );
    // And one with no event in it: replayed, it would only come back.
    let mut conn = f.redis.conn().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(f.redis.key(&dead))
        .arg("*")
        .arg("reason")
        .arg("no envelope field")
        .query_async(&mut *conn)
        .await
        .unwrap();
    // And one of an event older than the groups' records of what they applied.
    let long_ago = chrono::Utc::now() - chrono::TimeDelta::days(100);
    let old_event = serde_json::json!({
        "id": uuid::Uuid::new_v4(), "type": "UserRegistered", "version": 1,
        "occurred_at": long_ago, "source": "users", "correlation_id": null, "data": {}
    });
    let _: String = redis::cmd("XADD")
        .arg(f.redis.key(&dead))
        .arg("*")
        .arg("type")
        .arg("UserRegistered")
        .arg("envelope")
        .arg(old_event.to_string())
        .query_async(&mut *conn)
        .await
        .unwrap();
    let records_kept_since = Some(chrono::Utc::now() - chrono::TimeDelta::days(90));

    // The bug is fixed; the operator replays.
    let replayed = platform::dead_letters::replay(&f.redis, "users.events", records_kept_since)
        .await
        .unwrap();
    assert_eq!(
        replayed,
        platform::dead_letters::Replayed {
            events: 2,
            copies: 2,
            left: 1,
            too_old: 1
        }
    );
    assert_eq!(xlen(&f.redis, &dead).await, 2);
    for group in ["buggy", "buggier"] {
        let fixed = consumer(&f, group, Arc::new(RecordEffect(group.into())));
        fixed.run_until_idle().await.unwrap();
        assert_eq!(
            effects(&f.pool, group).await,
            2,
            "{group} applied each once"
        );
    }
    applied.run_until_idle().await.unwrap();
    assert_eq!(effects(&f.pool, "applied").await, 2, "each applied once");
    let again = platform::dead_letters::replay(&f.redis, "users.events", records_kept_since)
        .await
        .unwrap();
    assert_eq!(
        (again.events, again.left, again.too_old),
        (0, 1, 1),
        "nothing more to replay"
    );
    // Asked to, it replays the old event too.
    let old_too = platform::dead_letters::replay(&f.redis, "users.events", None)
        .await
        .unwrap();
    assert_eq!((old_too.events, old_too.left, old_too.too_old), (1, 1, 0));
    assert_eq!(xlen(&f.redis, &dead).await, 1);
}

/// Says the service it needs is out of reach `for_attempts` times, then records the effect.
struct OutOfReachAtFirst {
    attempts: AtomicUsize,
    /// How many attempts find the service out of reach; the test may lower it meanwhile.
    for_attempts: AtomicUsize,
}

impl OutOfReachAtFirst {
    fn for_attempts(attempts: usize) -> Arc<Self> {
        Arc::new(Self {
            attempts: AtomicUsize::new(0),
            for_attempts: AtomicUsize::new(attempts),
        })
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventHandler for OutOfReachAtFirst {
    async fn prepare(&self, _: &PgPool, _: &Envelope) -> Result<(), HandlerError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.for_attempts.load(Ordering::SeqCst) {
            return Err(HandlerError::Unavailable("users is down".into()));
        }
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        RecordEffect("waited".into()).handle(tx, event).await
    }
}

#[tokio::test]
async fn an_entry_waiting_out_an_outage_is_retried_past_max_deliveries_and_applied_once() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 1).await;
    let handler = OutOfReachAtFirst::for_attempts(6);
    // max_deliveries is 2: six deferrals in a row would have dead-lettered it, were they
    // counted.
    let c = consumer(&f, "waited", handler.clone());
    assert_eq!(c.run_until_idle().await.unwrap(), 1);
    assert_eq!(handler.attempts(), 7);
    assert_eq!(effects(&f.pool, "waited").await, 1);
    assert_eq!(pending(&f.redis, "waited").await, 0, "it was acknowledged");
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 0);
}

#[tokio::test]
async fn an_entry_waiting_on_a_service_too_long_fails_and_is_dead_lettered_in_the_end() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 1).await;
    let handler = OutOfReachAtFirst::for_attempts(usize::MAX);
    let mut config = quick_config("stuck");
    config.max_wait_for_service = Duration::from_millis(50);
    let c = Consumer::new(f.pool.clone(), f.redis.clone(), config, handler);
    for _ in 0..4 {
        c.run_until_idle().await.unwrap();
    }
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 1);
    assert_eq!(pending(&f.redis, "stuck").await, 0);
}

#[tokio::test]
async fn a_consumer_that_loses_its_redis_connection_while_holding_an_entry_counts_no_delivery() {
    let _turn = FAILPOINTS.lock().await;
    // A Redis of its own, whose client connections the test can cut without touching other
    // tests'.
    let server = platform::testing::redis_server::RedisServer::start().await;
    let f = Fixture {
        redis: Redis::connect(&server.url(), &testing::redis_prefix()).unwrap(),
        ..fixture().await
    };
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    publish(&f, 1).await;
    let handler = OutOfReachAtFirst::for_attempts(usize::MAX);
    let mut config = quick_config("reconnecting");
    // What it holds is kept claimed every second, and never claimed idle meanwhile.
    config.claim_idle = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let consumer = Consumer::new(f.pool.clone(), f.redis.clone(), config, handler.clone());
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    // max_deliveries is 2: three reconnections re-reading the entry would have
    // dead-lettered it, were they counted as deliveries.
    for _ in 0..3 {
        let tries = handler.attempts();
        testing::eventually_within(
            Duration::from_secs(10),
            "the entry is being tried",
            || async { handler.attempts() > tries },
        )
        .await;
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
        // Its pooled connection and its own reading one, beside this test's.
        testing::eventually_within(
            Duration::from_secs(10),
            "the consumer connected again",
            || connected_clients(admin.clone(), 3),
        )
        .await;
    }
    let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(f.redis.key(contracts::events::streams::USERS))
        .arg("reconnecting")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(pending.ids.len(), 1);
    assert_eq!(
        pending.ids[0].times_delivered, 1,
        "read once, however often re-read"
    );

    handler.for_attempts.store(0, Ordering::SeqCst);
    testing::eventually_within(Duration::from_secs(10), "the event was applied", || async {
        effects(&f.pool, "waited").await == 1
    })
    .await;
    testing::eventually_within(Duration::from_secs(10), "it was acknowledged", || async {
        self::pending(&f.redis, "reconnecting").await == 0
    })
    .await;
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 0);
    shutdown.cancel();
    running.await.unwrap();
}

/// Whether `admin`'s Redis has at least `count` clients connected, `admin` included.
async fn connected_clients(mut admin: redis::aio::MultiplexedConnection, count: usize) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut admin)
        .await
        .unwrap();
    let connected: usize = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO clients names connected_clients");
    connected >= count
}

#[tokio::test]
async fn a_database_out_of_reach_defers_entries_and_dead_letters_none() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    publish(&f, 3).await;
    // A port nothing listens on: every connection is refused, as while Postgres restarts.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy(&format!(
            "postgres://micromart@127.0.0.1:{closed_port}/none"
        ))
        .unwrap();
    let config = quick_config("outage");
    let cut_off = Consumer::new(
        unreachable,
        f.redis.clone(),
        config.clone(),
        Arc::new(RecordEffect("outage".into())),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(cut_off.run(stop.clone()));
    // It reads the first entry, and tries it again and again (each try the pool's 200 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(pending(&f.redis, "outage").await, 3, "all three still wait");
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 0);
    let rendered = platform::metrics::handle().render();
    assert!(
        rendered
            .lines()
            .any(|l| l.contains("group=\"outage\"") && l.contains("outcome=\"deferred\"")),
        "the tries are counted as deferred"
    );
    // The database is back: the same consumer, now with a pool that reaches it.
    let back = Consumer::new(
        f.pool.clone(),
        f.redis.clone(),
        config,
        Arc::new(RecordEffect("outage".into())),
    );
    back.run_until_idle().await.unwrap();
    assert_eq!(effects(&f.pool, "outage").await, 3);
    assert_eq!(pending(&f.redis, "outage").await, 0);
    assert_eq!(xlen(&f.redis, &dead_letter_stream("users.events")).await, 0);
}

#[tokio::test]
async fn a_consumer_that_was_down_catches_up_on_everything_it_missed() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    let c = consumer(&f, "late", Arc::new(RecordEffect("late".into())));
    c.ensure_groups().await.unwrap();
    for n in 0..100 {
        enqueue(&f.pool, n).await;
    }
    let relay = OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users");
    while relay.relay_once().await.unwrap() > 0 {}
    assert_eq!(c.run_until_idle().await.unwrap(), 100);
    assert_eq!(effects(&f.pool, "late").await, 100);
}

#[tokio::test]
async fn running_relay_and_blocking_consumer_deliver_within_seconds() {
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users");
    let mut config = ConsumerConfig::new("live", &[contracts::events::streams::USERS]);
    config.block = Duration::from_secs(2);
    let c = Consumer::new(
        f.pool.clone(),
        f.redis.clone(),
        config,
        Arc::new(RecordEffect("live".into())),
    );
    c.ensure_groups().await.unwrap();
    let tasks = [
        tokio::spawn(relay.clone().run(shutdown.clone())),
        tokio::spawn(c.run(shutdown.clone())),
    ];
    // Longer than the pooled connections' 500 ms reply timeout: the blocking read survives it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    enqueue(&f.pool, 1).await;
    relay.wake();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while effects(&f.pool, "live").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(effects(&f.pool, "live").await, 1);
}

/// Ids of the stream's entries from `from` on.
async fn ids_from(redis: &Redis, stream: &str, from: &str) -> Vec<String> {
    let mut conn = redis.conn().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redis.key(stream))
        .arg(from)
        .arg("+")
        .query_async(&mut *conn)
        .await
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

/// Reads up to `count` new entries as consumer "a1" of `group` without acknowledging them.
async fn read_new(redis: &Redis, stream: &str, group: &str, count: usize) -> Vec<String> {
    let mut conn = redis.conn().await.unwrap();
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("a1")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(redis.key(stream))
        .arg(">")
        .query_async(&mut *conn)
        .await
        .unwrap();
    reply.keys[0].ids.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn a_stream_is_trimmed_only_past_what_every_group_acknowledged() {
    use platform::stream_trim::{EntryId, Trim};
    let _turn = FAILPOINTS.lock().await;
    let f = fixture().await;
    let stream = contracts::events::streams::USERS;
    let relay = OutboxRelay::new(f.pool.clone(), f.redis.clone(), "users").trimming(stream);
    for n in 0..300 {
        enqueue(&f.pool, n).await;
    }
    while relay.relay_once().await.unwrap() > 0 {}
    let all = ids_from(&f.redis, stream, "-").await;
    assert_eq!(all.len(), 300);

    // Before the stream's consumer group (notification's) exists, nothing is trimmed.
    assert_eq!(
        relay.trim_once().await.unwrap(),
        Some(Trim::WaitingFor(vec!["notification".into()]))
    );
    assert_eq!(xlen(&f.redis, stream).await, 300);

    // notification reads and acknowledges everything; another group ("audit") has
    // acknowledged the first 200 and holds the next 50 unacknowledged.
    let notification = consumer(&f, "notification", Arc::new(RecordEffect("n".into())));
    assert_eq!(notification.run_until_idle().await.unwrap(), 300);
    let audit = consumer(&f, "audit", Arc::new(RecordEffect("a".into())));
    audit.ensure_groups().await.unwrap();
    let mut conn = f.redis.conn().await.unwrap();
    let key = f.redis.key(stream);
    let read = read_new(&f.redis, stream, "audit", 200).await;
    let _: i64 = redis::cmd("XACK")
        .arg(&key)
        .arg("audit")
        .arg(&read)
        .query_async(&mut *conn)
        .await
        .unwrap();
    read_new(&f.redis, stream, "audit", 50).await;

    let Some(Trim::Trimmed { floor, removed }) = relay.trim_once().await.unwrap() else {
        panic!("every group exists, so the stream is trimmed");
    };
    // audit: 50 entries never delivered, 50 delivered and unacknowledged.
    let rendered = platform::metrics::handle().render();
    for (gauge, value) in [("stream_consumer_lag", 50), ("stream_consumer_pending", 50)] {
        let line = rendered
            .lines()
            .find(|l| l.starts_with(&format!("{gauge}{{")) && l.contains("group=\"audit\""))
            .unwrap_or_else(|| panic!("{gauge} of audit in {rendered}"));
        assert!(line.ends_with(&format!(" {value}")), "{line}");
    }
    assert_eq!(
        floor,
        EntryId::parse(&all[200]).unwrap(),
        "audit's oldest pending entry"
    );
    assert!(removed > 0 && removed <= 200, "removed {removed}");
    assert_eq!(xlen(&f.redis, stream).await, 300 - removed as i64);
    assert_eq!(
        ids_from(&f.redis, stream, &all[200]).await,
        all[200..].to_vec()
    );

    // Once audit has caught up too, everything but the last delivered entry may go.
    audit.run_until_idle().await.unwrap();
    assert_eq!(effects(&f.pool, "a").await, 100);
    let Some(Trim::Trimmed { floor, .. }) = relay.trim_once().await.unwrap() else {
        panic!("every group exists, so the stream is trimmed");
    };
    assert_eq!(floor, EntryId::parse(&all[299]).unwrap());
    assert_eq!(
        ids_from(&f.redis, stream, &all[299]).await,
        vec![all[299].clone()]
    );
    assert!(xlen(&f.redis, stream).await < 300 - removed as i64);
}
