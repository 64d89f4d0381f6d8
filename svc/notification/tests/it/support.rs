use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use contracts::internal::UserContact;
use platform::discovery::{Discovery, Registration};

use contracts::events::{Envelope, Event, UserRegistered};
use notification::{Notification, NotificationConfig};
use platform::auth::Role;
use platform::discovery::LocalDiscovery;
use platform::outbox::{self, OutboxRelay};
use platform::redis::Redis;
use platform::testing::{self, TestDb, TestIdentity, TestServer};
use reqwest::{Client, Response};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub use platform::testing::smtp::{SmtpServer, free_port};

/// The SMS provider: records each `POST /sms` body.
pub struct SmsProvider {
    pub server: TestServer,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl SmsProvider {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = received.clone();
        let app = poem::Route::new().at(
            "/sms",
            poem::post(poem::endpoint::make(move |mut req: poem::Request| {
                let sink = sink.clone();
                async move {
                    let body: Value = req.take_body().into_json().await.unwrap();
                    sink.lock().unwrap().push(body);
                    poem::Response::builder()
                        .status(poem::http::StatusCode::ACCEPTED)
                        .finish()
                }
            })),
        );
        Self {
            server: TestServer::start(app).await,
            received,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/sms", self.server.url())
    }

    pub fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// Users as notification asks it for a contact: knows what the test tells it, answers 404
/// for anyone else, 503 while `down`, and nothing while `hold` keeps it.
pub struct UsersDouble {
    _server: TestServer,
    known: Arc<Mutex<HashMap<Uuid, UserContact>>>,
    down: Arc<AtomicBool>,
    /// Each request takes a read guard before answering: a write guard held holds them.
    answering: Arc<tokio::sync::RwLock<()>>,
    asked: Arc<tokio::sync::Notify>,
}

impl UsersDouble {
    async fn start(discovery: &LocalDiscovery) -> Self {
        let known: Arc<Mutex<HashMap<Uuid, UserContact>>> = Arc::default();
        let down: Arc<AtomicBool> = Arc::default();
        let answering: Arc<tokio::sync::RwLock<()>> = Arc::default();
        let asked: Arc<tokio::sync::Notify> = Arc::default();
        let (k, d, a, n) = (
            known.clone(),
            down.clone(),
            answering.clone(),
            asked.clone(),
        );
        let app = poem::Route::new().at(
            "/internal/users/:id/contact",
            poem::get(poem::endpoint::make(move |req: poem::Request| {
                let (k, d, a, n) = (k.clone(), d.clone(), a.clone(), n.clone());
                async move {
                    use poem::IntoResponse;
                    assert_eq!(
                        req.header("x-internal-token"),
                        Some(testing::INTERNAL_TOKEN),
                        "notification sends the internal credential"
                    );
                    n.notify_one();
                    let _answering = a.read().await;
                    if d.load(Ordering::SeqCst) {
                        return poem::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let id: Uuid = req.path_params::<Uuid>().unwrap();
                    match k.lock().unwrap().get(&id) {
                        Some(c) => poem::web::Json(c.clone()).into_response(),
                        None => poem::http::StatusCode::NOT_FOUND.into_response(),
                    }
                }
            })),
        );
        let server = TestServer::start(app).await;
        discovery
            .register(&Registration::new("users", "127.0.0.1", server.addr.port()))
            .await
            .unwrap();
        Self {
            _server: server,
            known,
            down,
            answering,
            asked,
        }
    }

    /// Holds every answer until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.answering.clone().write_owned().await
    }

    /// Returns once a request has reached users (or had, since the last call).
    pub async fn asked(&self) {
        self.asked.notified().await;
    }

    /// Users knows the user `registered` names (its UserRegistered has not reached
    /// notification).
    pub fn knows(&self, registered: &UserRegistered) {
        let contact = UserContact {
            user_id: registered.user_id,
            email: registered.email.clone(),
            name: registered.name.clone(),
            phone: registered.phone.clone(),
        };
        self.known.lock().unwrap().insert(contact.user_id, contact);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// A producing service as far as notification can tell: its own outbox, relayed into the
/// Redis prefix the service under test reads.
pub struct Producer {
    _db: TestDb,
    pool: PgPool,
    relay: OutboxRelay,
    redis: Redis,
}

impl Producer {
    pub async fn new(redis_prefix: &str) -> Self {
        let db = TestDb::new("producer");
        let pool = platform::db::connect(
            &db.url,
            3,
            &sqlx::migrate::Migrator::with_migrations(vec![]),
        )
        .await
        .expect("Postgres must be running");
        let redis = Redis::connect(&testing::redis_url(), redis_prefix).unwrap();
        let relay = OutboxRelay::new(pool.clone(), redis.clone(), "producer");
        Self {
            _db: db,
            pool,
            relay,
            redis,
        }
    }

    /// Writes `event` to the outbox and relays it to its stream.
    pub async fn publish<E: Event>(&self, event: &E) -> Envelope {
        let mut tx = self.pool.begin().await.unwrap();
        let envelope = outbox::enqueue(&mut tx, event, "producer", None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(self.relay.relay_once().await.unwrap(), 1);
        envelope
    }

    /// Adds the stream entry of an already relayed event once more, as a relay that
    /// crashed between XADD and marking the row sent does.
    pub async fn redeliver(&self, envelope: &Envelope, stream: &str) {
        let payload: String = sqlx::query_scalar("SELECT payload::text FROM outbox WHERE id = $1")
            .bind(envelope.id)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        self.xadd(stream, &envelope.id.to_string(), &envelope.kind, &payload)
            .await;
    }

    /// An entry in the relay's field format.
    pub async fn xadd(&self, stream: &str, id: &str, kind: &str, envelope: &str) {
        let mut conn = self.redis.conn().await.unwrap();
        let _: String = redis::cmd("XADD")
            .arg(self.redis.key(stream))
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("type")
            .arg(kind)
            .arg("envelope")
            .arg(envelope)
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
}

/// The notification service on port 0 with its own database and Redis prefix, sending to
/// `smtp_port` and the SMS provider (when given).
pub struct Service {
    pub notification: Notification,
    pub server: TestServer,
    pub producer: Producer,
    pub client: Client,
    pub identity: TestIdentity,
    pub users: UsersDouble,
    _db: TestDb,
}

pub struct Options {
    /// None: no SMTP server configured (emails are logged).
    pub smtp_port: Option<u16>,
    pub sms_url: Option<String>,
    pub retry_base_delay_ms: u64,
    pub max_attempts: i32,
    /// How long a failed entry waits before another consumer claims it.
    pub claim_idle_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            smtp_port: None,
            sms_url: None,
            retry_base_delay_ms: 50,
            max_attempts: 5,
            claim_idle_ms: 30_000,
        }
    }
}

impl Service {
    pub async fn start(options: Options) -> Self {
        let db = TestDb::new("notification");
        let identity = TestIdentity::new();
        let mut settings = testing::settings(notification::SERVICE, &db, &identity)
            .await
            .with(
                "retry_base_delay_ms",
                options.retry_base_delay_ms.to_string(),
            )
            .with("max_attempts", options.max_attempts.to_string())
            .with("stream_claim_idle_ms", options.claim_idle_ms.to_string())
            .with("send_interval_ms", "50")
            .with("shop_base_url", "https://shop.example.test");
        if let Some(port) = options.smtp_port {
            settings = settings
                .with("smtp_host", "127.0.0.1")
                .with("smtp_port", port.to_string());
        }
        if let Some(url) = options.sms_url {
            settings = settings.with("sms_url", url);
        }
        let config = NotificationConfig::from_settings(&settings).unwrap();
        let discovery = Arc::new(LocalDiscovery::new());
        let users = UsersDouble::start(&discovery).await;
        let (notification, app) = notification::app(config, discovery)
            .await
            .expect("notification starts (Postgres and Redis must be running)");
        let producer = Producer::new(notification.redis().prefix()).await;
        Self {
            notification,
            server: TestServer::start(app).await,
            producer,
            client: Client::new(),
            identity,
            users,
            _db: db,
        }
    }

    /// Handles every event waiting in the streams; returns how many entries were handled.
    pub async fn consume(&self) -> usize {
        self.notification
            .consumer()
            .run_until_idle()
            .await
            .expect("the consumer reads the streams")
    }

    pub async fn send_due(&self) -> usize {
        self.notification.send_due().await.unwrap()
    }

    pub fn token(&self, user: Uuid, role: Role) -> String {
        self.identity.token(user, role)
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.server.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let resp = self.get(path, token).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// How many of the database's sessions are inside a transaction, waiting on their
    /// client.
    pub async fn transactions_waiting(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(self.notification.pool())
        .await
        .unwrap()
    }

    /// The stored notifications of `user`, oldest first: (channel, status, attempts).
    pub async fn rows_of(&self, user: Uuid) -> Vec<Row> {
        sqlx::query_as(
            "SELECT channel, status, attempts, recipient, last_error, sent_via, event_type
             FROM notifications WHERE user_id = $1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(self.notification.pool())
        .await
        .unwrap()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub channel: String,
    pub status: String,
    pub attempts: i32,
    pub recipient: String,
    pub last_error: Option<String>,
    pub sent_via: Option<String>,
    pub event_type: String,
}

/// A UserRegistered of a fresh user.
pub fn registered(name: &str, phone: Option<&str>) -> UserRegistered {
    let user_id = Uuid::now_v7();
    UserRegistered {
        user_id,
        email: format!("{name}.{}@example.com", user_id.simple()),
        name: name.to_owned(),
        phone: phone.map(str::to_owned),
        verification_url: Some(format!(
            "https://shop.example.test/api/v1/users/verify?token={}",
            Uuid::new_v4().simple()
        )),
    }
}
