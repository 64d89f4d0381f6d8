//! The cart service: one cart per customer, checked against inventory and priced by products.

mod api;
mod events;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use platform::CancellationToken;
use platform::config::{ConfigError, Settings};
use platform::discovery::Discovery;
use platform::http::ServiceClient;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;

pub use api::CartApi;

pub const SERVICE: &str = "cart";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct CartConfig {
    pub base: BaseConfig,
    /// Carts untouched this long are removed.
    pub idle_after: Duration,
    pub sweep_interval: Duration,
}

impl CartConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
            idle_after: Duration::from_secs(s.get_or::<u64>("idle_cart_days", 30)? * 24 * 3600),
            sweep_interval: s.seconds("idle_cart_sweep_seconds", 3600)?,
        })
    }
}

#[derive(Clone)]
pub struct Cart {
    pub(crate) base: Base,
    pub(crate) products: ServiceClient,
    pub(crate) inventory: ServiceClient,
    pub(crate) config: Arc<CartConfig>,
}

impl Cart {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.base.pool
    }

    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// The consumer of `payment.events`.
    pub fn consumer(&self) -> platform::consumer::Consumer {
        self.base.consumer(
            SERVICE,
            &[contracts::events::streams::PAYMENT],
            Arc::new(events::PaidOrders),
        )
    }

    /// The idle-cart sweeper and the event consumer.
    pub fn background(&self) -> Background {
        let mut tasks = self.base.background();
        let consumer = self.consumer();
        tasks.add("payment.events consumer", move |shutdown| {
            consumer.run(shutdown)
        });
        let state = self.clone();
        tasks.add("idle cart sweeper", move |shutdown| state.sweep(shutdown));
        tasks
    }

    /// Removes carts idle past the configured time; returns how many.
    pub async fn remove_idle_carts(&self) -> Result<u64, sqlx::Error> {
        store::delete_idle(&self.base.pool, self.config.idle_after.as_secs() as i64).await
    }

    async fn sweep(self, shutdown: CancellationToken) {
        let interval = self.config.sweep_interval;
        platform::periodic::every(interval, &shutdown, "idle cart sweep failed", || async {
            let removed = self.remove_idle_carts().await?;
            if removed > 0 {
                tracing::info!(removed, "idle carts removed");
            }
            Ok::<_, sqlx::Error>(())
        })
        .await;
    }
}

pub fn openapi(state: Cart) -> OpenApiService<CartApi, ()> {
    platform::web::openapi_service(CartApi { state }, "MicroMart cart")
}

pub async fn app(
    config: CartConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Cart, impl Endpoint<Output = Response>), StartError> {
    let base = Base::connect(config.base.clone(), &MIGRATIONS, discovery).await?;
    let cart = Cart {
        products: base.client("products"),
        inventory: base.client("inventory"),
        base,
        config: Arc::new(config),
    };
    let app = cart.app();
    Ok((cart, app))
}
