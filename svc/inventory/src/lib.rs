//! The inventory service: stock per product, reservations per order, and the audit trail.

mod api;
pub mod demo;
mod events;
pub mod store;
mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use platform::config::{ConfigError, Settings};
use platform::discovery::Discovery;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;

pub use api::InventoryApi;

pub const SERVICE: &str = "inventory";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct InventoryConfig {
    pub base: BaseConfig,
    /// `low-stock` lists products whose available stock is at or below this.
    pub low_stock_threshold: i32,
    /// How often expired reservations are looked for.
    pub sweep_interval: Duration,
    /// The longest a reservation may be held.
    pub max_reservation: Duration,
}

impl InventoryConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
            low_stock_threshold: s.get_or("low_stock_threshold", 5)?,
            sweep_interval: s.millis("reservation_sweep_interval_ms", 5000)?,
            max_reservation: s.seconds("max_reservation_seconds", 24 * 3600)?,
        })
    }
}

#[derive(Clone)]
pub struct Inventory {
    pub(crate) base: Base,
    pub(crate) config: Arc<InventoryConfig>,
}

impl Inventory {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.base.pool
    }

    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// The consumer of `payment.events` and `orders.events`.
    pub fn consumer(&self) -> platform::consumer::Consumer {
        use contracts::events::streams;
        self.base.consumer(
            SERVICE,
            &[streams::PAYMENT, streams::ORDERS],
            Arc::new(events::StockEvents),
        )
    }

    /// The reservation sweeper and the event consumer.
    pub fn background(&self) -> Background {
        let mut tasks = self.base.background();
        let consumer = self.consumer();
        tasks.add("stock events consumer", move |shutdown| {
            consumer.run(shutdown)
        });
        let sweeper = sweeper::Sweeper::new(self.clone());
        tasks.add("reservation sweeper", move |shutdown| sweeper.run(shutdown));
        tasks
    }

    /// Releases every held reservation past its expiry; returns how many.
    pub async fn release_expired(&self) -> Result<usize, sqlx::Error> {
        sweeper::Sweeper::new(self.clone()).sweep_once().await
    }
}

pub fn openapi(state: Inventory) -> OpenApiService<InventoryApi, ()> {
    platform::web::openapi_service(InventoryApi { state }, "MicroMart inventory")
}

pub async fn app(
    config: InventoryConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Inventory, impl Endpoint<Output = Response>), StartError> {
    let base = Base::connect(config.base.clone(), &MIGRATIONS, discovery).await?;
    let inventory = Inventory {
        base,
        config: Arc::new(config),
    };
    let app = inventory.app();
    Ok((inventory, app))
}
