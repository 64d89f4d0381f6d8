//! The payment service: one session per order, a hosted payment page, a provider behind a
//! trait reporting through a signed webhook, and the payment events every other service acts on.

mod api;
mod page;
pub mod provider;
mod refunds;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contracts::events::{Envelope, OrderCancelled, streams};
use platform::CancellationToken;
use platform::config::{ConfigError, Settings};
use platform::consumer::{Consumer, EventHandler, HandlerError};
use platform::discovery::Discovery;
use platform::http::ServiceClient;
use platform::outbox::OutboxRelay;
use platform::retention::OwnRows;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;
use sqlx::PgConnection;

pub use api::PaymentApi;

pub const SERVICE: &str = "payment";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct PaymentConfig {
    pub base: BaseConfig,
    /// How long a session can be paid.
    pub session_ttl: Duration,
    pub sweep_interval: Duration,
    /// The HMAC secret of provider callbacks (a secret: from config, never the seed).
    pub webhook_secret: String,
    /// Where payment links point (the gateway).
    pub public_base_url: String,
}

impl PaymentConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
            session_ttl: s.seconds("session_ttl_seconds", 900)?,
            sweep_interval: s.millis("session_sweep_interval_ms", 5000)?,
            webhook_secret: s.require("webhook_secret")?,
            public_base_url: s.get_or("public_base_url", "http://localhost:7082".to_owned())?,
        })
    }
}

#[derive(Clone)]
pub struct Payment {
    pub(crate) base: Base,
    pub(crate) relay: OutboxRelay,
    pub(crate) provider: Arc<dyn provider::PaymentProvider>,
    pub(crate) config: Arc<PaymentConfig>,
    /// Asked to agree to each refund (`refunds`).
    pub(crate) orders: ServiceClient,
}

impl Payment {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.base.pool
    }

    pub fn relay(&self) -> &OutboxRelay {
        &self.relay
    }

    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// Expires unpaid sessions (each with `PaymentExpired`), in batches until none is left;
    /// returns how many. One batch a round would leave a backlog (after an outage, say) to
    /// close later than its reservations lapse.
    pub async fn expire_sessions(&self) -> Result<usize, sqlx::Error> {
        const BATCH: usize = 100;
        let mut expired = 0;
        loop {
            let mut tx = self.base.pool.begin().await?;
            let n = store::expire_sessions(&mut tx, BATCH as i64).await?;
            tx.commit().await?;
            expired += n;
            if n > 0 {
                self.relay.wake();
            }
            if n < BATCH {
                return Ok(expired);
            }
        }
    }

    async fn sweep(self, shutdown: CancellationToken) {
        let interval = self.config.sweep_interval;
        let failed = "session expiry sweep failed";
        platform::periodic::every(interval, &shutdown, failed, || self.expire_sessions()).await;
    }

    async fn sweep_refunds(self, shutdown: CancellationToken) {
        let interval = self.config.sweep_interval;
        let failed = "refund sweep failed";
        platform::periodic::every(interval, &shutdown, failed, || self.settle_refunds_asked())
            .await;
    }

    /// What retention deletes of payment's own tables.
    pub fn expired_rows(&self) -> Vec<OwnRows> {
        vec![store::old_webhook_events(
            self.base.config.retention.applied_events,
        )]
    }

    /// The consumer of `orders.events` (a cancelled order's session closes).
    pub fn consumer(&self) -> Consumer {
        self.base
            .consumer(SERVICE, &[streams::ORDERS], Arc::new(OrderEvents))
    }

    /// The outbox relay, the session-expiry and refund sweepers, the order-event consumer,
    /// and retention, which also deletes old records of provider callbacks.
    pub fn background(&self) -> Background {
        let mut tasks = self.base.background_pruning(self.expired_rows());
        let relay = self.relay.clone();
        tasks.add("outbox relay", move |shutdown| relay.run(shutdown));
        let sweeper = self.clone();
        tasks.add("session expiry", move |shutdown| sweeper.sweep(shutdown));
        let refunds = self.clone();
        tasks.add("refund sweep", move |shutdown| {
            refunds.sweep_refunds(shutdown)
        });
        let consumer = self.consumer();
        tasks.add("orders.events consumer", move |shutdown| {
            consumer.run(shutdown)
        });
        tasks
    }
}

struct OrderEvents;

#[async_trait]
impl EventHandler for OrderEvents {
    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        if let Some(cancelled) = event.open::<OrderCancelled>() {
            let cancelled = cancelled.map_err(|e| HandlerError::Failed(e.to_string()))?;
            store::close_cancelled_order(tx, cancelled.order_id).await?;
        }
        Ok(())
    }
}

pub fn openapi(state: Payment) -> OpenApiService<PaymentApi, ()> {
    platform::web::openapi_service(PaymentApi { state }, "MicroMart payment")
}

pub async fn app(
    config: PaymentConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Payment, impl Endpoint<Output = Response>), StartError> {
    let base = Base::connect(config.base.clone(), &MIGRATIONS, discovery).await?;
    let payment = Payment {
        relay: OutboxRelay::new(base.pool.clone(), base.redis.clone(), SERVICE)
            .trimming(contracts::events::streams::PAYMENT),
        orders: base.client("orders"),
        base,
        provider: Arc::new(provider::SandboxProvider),
        config: Arc::new(config),
    };
    let app = payment.app();
    Ok((payment, app))
}
