//! The orders service: checkout (the saga's first step), the order status machine with its
//! history, and the payment events that move orders on.

mod abandoned;
mod api;
pub mod checkout;
mod events;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use contracts::events::streams;
use platform::config::{ConfigError, Settings};
use platform::consumer::Consumer;
use platform::discovery::Discovery;
use platform::http::ServiceClient;
use platform::outbox::OutboxRelay;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;

pub use api::OrdersApi;

pub const SERVICE: &str = "orders";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct OrdersConfig {
    pub base: BaseConfig,
    /// How long stock stays reserved for an unpaid order (longer than a payment session).
    pub reservation_ttl: Duration,
}

impl OrdersConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
            reservation_ttl: s.seconds("reservation_ttl_seconds", 20 * 60)?,
        })
    }
}

#[derive(Clone)]
pub struct Orders {
    pub(crate) base: Base,
    pub(crate) relay: OutboxRelay,
    pub(crate) cart: ServiceClient,
    pub(crate) products: ServiceClient,
    pub(crate) inventory: ServiceClient,
    pub(crate) payment: ServiceClient,
    pub(crate) config: Arc<OrdersConfig>,
}

impl Orders {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.base.pool
    }

    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// The consumer of `payment.events`.
    pub fn consumer(&self) -> Consumer {
        self.base.consumer(
            SERVICE,
            &[streams::PAYMENT],
            Arc::new(events::PaymentEvents),
        )
    }

    /// The outbox relay, the payment-event consumer, the abandoned-order sweeper, and
    /// retention, which also deletes expired idempotency keys.
    pub fn background(&self) -> Background {
        let mut tasks = self.base.background_pruning(vec![store::expired_keys()]);
        let relay = self.relay.clone();
        tasks.add("outbox relay", move |shutdown| relay.run(shutdown));
        let consumer = self.consumer();
        tasks.add("payment.events consumer", move |shutdown| {
            consumer.run(shutdown)
        });
        let sweeper = self.clone();
        tasks.add("abandoned orders", move |shutdown| {
            sweeper.cancel_abandoned(shutdown)
        });
        tasks
    }
}

pub fn openapi(state: Orders) -> OpenApiService<OrdersApi, ()> {
    platform::web::openapi_service(OrdersApi { state }, "MicroMart orders")
}

pub async fn app(
    config: OrdersConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Orders, impl Endpoint<Output = Response>), StartError> {
    let base = Base::connect(config.base.clone(), &MIGRATIONS, discovery).await?;
    let orders = Orders {
        relay: OutboxRelay::new(base.pool.clone(), base.redis.clone(), SERVICE)
            .trimming(contracts::events::streams::ORDERS),
        cart: base.client("cart"),
        products: base.client("products"),
        inventory: base.client("inventory"),
        payment: base.client("payment"),
        base,
        config: Arc::new(config),
    };
    let app = orders.app();
    Ok((orders, app))
}
