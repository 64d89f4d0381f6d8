//! The users service: accounts, credentials and the tokens every other service trusts.

mod api;
pub mod demo;
mod passwords;
mod store;
mod tokens;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use platform::auth::{InternalToken, JwtVerifier, SigningKey, TokenIssuer};
use platform::config::{ConfigError, Settings};
use platform::outbox::OutboxRelay;
use platform::redis::Redis;
use platform::retention::{self, OwnRows, Retention};
use platform::runtime::Background;
use platform::web::{self, ReadyCheck};
use poem::{Endpoint, EndpointExt, Response};
use poem_openapi::OpenApiService;
use sqlx::PgPool;

pub use api::UsersApi;

pub const SERVICE: &str = "users";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Everything the service reads from config (`micromart/users/*` over `micromart/shared/*`).
#[derive(Clone, Debug)]
pub struct UsersConfig {
    pub database_url: String,
    pub database_max_connections: u32,
    pub redis_url: String,
    pub redis_prefix: String,
    /// The Ed25519 signing key, PKCS#8 PEM. A secret: from Nomad variables or a file
    /// generated outside the repository, never from the KV seed.
    pub signing_key_pem: String,
    /// The credential of service-to-service routes (a secret, like the signing key).
    pub internal_token: String,
    /// Further public keys (JWKS) still accepted during a key rotation.
    pub previous_public_keys: Option<String>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub verification_ttl: Duration,
    pub password_reset_ttl: Duration,
    /// The account registered with this email becomes ADMIN once the email is verified.
    pub admin_email: Option<String>,
    /// Where links in emails point (the gateway's public URL).
    pub public_base_url: String,
    pub login_max_failures: i32,
    pub login_failure_window: Duration,
    pub login_lockout: Duration,
    /// A device an account signed in on, with no login made with it this long, is forgotten:
    /// its logins are then judged by the email's failures again.
    pub login_device_ttl: Duration,
    pub max_body_bytes: usize,
    /// How long refresh and one-time tokens are kept once expired.
    pub expired_tokens_keep: Duration,
    /// How long relayed events are kept in the outbox.
    pub retention: Retention,
}

impl UsersConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let admin_email: String = s.get_or("admin_email", String::new())?;
        let previous: String = s.get_or("jwt_previous_public_keys", String::new())?;
        Ok(Self {
            database_url: s.require("database_url")?,
            database_max_connections: s.get_or("database_max_connections", 10)?,
            redis_url: s.require("redis_url")?,
            redis_prefix: s.get_or("redis_prefix", String::new())?,
            signing_key_pem: s.require("jwt_signing_key")?,
            internal_token: s.require("internal_token")?,
            previous_public_keys: (!previous.trim().is_empty()).then_some(previous),
            access_token_ttl: s.seconds("access_token_ttl_seconds", 900)?,
            refresh_token_ttl: s.seconds("refresh_token_ttl_seconds", 30 * 24 * 3600)?,
            verification_ttl: s.seconds("verification_ttl_seconds", 48 * 3600)?,
            password_reset_ttl: s.seconds("password_reset_ttl_seconds", 3600)?,
            admin_email: (!admin_email.trim().is_empty())
                .then(|| validate::normalise_email(&admin_email)),
            public_base_url: s.get_or("public_base_url", "http://localhost:7082".to_owned())?,
            login_max_failures: s.get_or("login_max_failures", 5)?,
            login_failure_window: s.seconds("login_failure_window_seconds", 900)?,
            login_lockout: s.seconds("login_lockout_seconds", 900)?,
            login_device_ttl: s.seconds("login_device_ttl_seconds", 90 * 24 * 3600)?,
            max_body_bytes: s.get_or("max_body_bytes", web::DEFAULT_MAX_BODY_BYTES)?,
            expired_tokens_keep: s.seconds("expired_tokens_keep_seconds", 7 * 24 * 3600)?,
            retention: Retention::from_settings(s)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] platform::db::DbError),
    #[error(transparent)]
    Redis(#[from] platform::redis::RedisError),
    #[error(transparent)]
    Auth(#[from] platform::auth::AuthError),
}

/// The service's shared state.
#[derive(Clone)]
pub struct Users {
    pub(crate) pool: PgPool,
    pub(crate) redis: Redis,
    pub(crate) relay: OutboxRelay,
    pub(crate) issuer: Arc<TokenIssuer>,
    pub(crate) verifier: JwtVerifier,
    pub(crate) config: Arc<UsersConfig>,
}

impl Users {
    pub async fn connect(config: UsersConfig) -> Result<Self, StartError> {
        let pool = platform::db::connect(
            &config.database_url,
            config.database_max_connections,
            &MIGRATIONS,
        )
        .await?;
        let redis = Redis::connect(&config.redis_url, &config.redis_prefix)?;
        let key = SigningKey::from_pem(&config.signing_key_pem)?;
        let verifier =
            JwtVerifier::from_jwks(&jwks_json(&key, config.previous_public_keys.as_deref()))?;
        let issuer = Arc::new(TokenIssuer::new(key, config.access_token_ttl));
        let relay = OutboxRelay::new(pool.clone(), redis.clone(), SERVICE)
            .trimming(contracts::events::streams::USERS);
        Ok(Self {
            pool,
            redis,
            relay,
            issuer,
            verifier,
            config: Arc::new(config),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn redis_prefix(&self) -> &str {
        self.redis.prefix()
    }

    pub fn relay(&self) -> &OutboxRelay {
        &self.relay
    }

    /// The HTTP app: the API plus `/health`, `/ready`, `/metrics`, `/docs`.
    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        let checks: Vec<Arc<dyn ReadyCheck>> =
            vec![Arc::new(self.pool.clone()), Arc::new(self.redis.clone())];
        web::routes(
            SERVICE,
            openapi(self.clone()),
            checks,
            self.config.max_body_bytes,
        )
        .data(self.verifier.clone())
        .data(InternalToken::new(&self.config.internal_token))
    }

    /// The rows of users' own tables that retention deletes: tokens expired
    /// `expired_tokens_keep` ago, failed-login counts that no longer count, and devices with
    /// no login for `login_device_ttl`.
    pub fn expired_rows(&self) -> Vec<OwnRows> {
        store::expired_rows(
            self.config.expired_tokens_keep,
            self.config.login_failure_window,
            self.config.login_device_ttl,
        )
    }

    /// What runs beside the HTTP app: the outbox relay, and retention: events relayed long
    /// ago and the rows of [`Users::expired_rows`].
    pub fn background(&self) -> Background {
        let own = self.expired_rows();
        let mut tasks = retention::task(&self.pool, &self.config.retention, SERVICE, own);
        let relay = self.relay.clone();
        tasks.add("outbox relay", move |shutdown| relay.run(shutdown));
        tasks
    }
}

/// The current key plus any previous ones still accepted.
fn jwks_json(key: &SigningKey, previous: Option<&str>) -> String {
    let mut keys = vec![key.jwk()];
    if let Some(prev) = previous.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        && let Some(list) = prev.get("keys").and_then(|k| k.as_array())
    {
        keys.extend(list.iter().cloned());
    }
    serde_json::json!({ "keys": keys }).to_string()
}

/// The OpenAPI service of the users API (also what `openapi/users.json` is generated from).
pub fn openapi(state: Users) -> OpenApiService<UsersApi, ()> {
    web::openapi_service(UsersApi { state }, "MicroMart users")
}

/// Starts the service from its config: state, app and background tasks.
pub async fn app(
    config: UsersConfig,
) -> Result<(Users, impl Endpoint<Output = Response>), StartError> {
    let users = Users::connect(config).await?;
    let app = users.app();
    Ok((users, app))
}
