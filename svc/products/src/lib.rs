//! The products service: the catalog (products and categories), its search, and the lookup
//! that cart and orders use for current names and prices.

mod api;
pub mod demo;
pub mod listing;
mod precondition;
mod store;
mod validate;

use std::sync::Arc;

use platform::config::{ConfigError, Settings};
use platform::discovery::Discovery;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use platform::web;
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;
use sqlx::PgPool;

pub use api::ProductsApi;

pub const SERVICE: &str = "products";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Everything the service reads from config (`micromart/products/*` over `micromart/shared/*`).
#[derive(Clone, Debug)]
pub struct ProductsConfig {
    pub base: BaseConfig,
}

impl ProductsConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
        })
    }
}

/// The service's shared state.
#[derive(Clone)]
pub struct Products {
    pub(crate) base: Base,
}

impl Products {
    pub fn pool(&self) -> &PgPool {
        &self.base.pool
    }

    /// The HTTP app: the API plus `/health`, `/ready`, `/metrics`, `/docs`.
    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// What runs beside the HTTP app: nothing yet (products neither publishes nor consumes
    /// events).
    pub fn background(&self) -> Background {
        self.base.background()
    }
}

/// The OpenAPI service of the products API (also what `openapi/products.json` is generated
/// from).
pub fn openapi(state: Products) -> OpenApiService<ProductsApi, ()> {
    web::openapi_service(ProductsApi { state }, "MicroMart products")
}

/// Starts the service from its config: state and app (the API plus `/health`, `/ready`,
/// `/metrics`, `/docs`).
pub async fn app(
    config: ProductsConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Products, impl Endpoint<Output = Response>), StartError> {
    let base = Base::connect(config.base, &MIGRATIONS, discovery).await?;
    let products = Products { base };
    let app = products.app();
    Ok((products, app))
}
