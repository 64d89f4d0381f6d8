//! Redis: a pooled connection for commands and dedicated connections for blocking reads,
//! every key under the service's prefix (so tests and tenants never collide).

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected redis reply: {0}")]
    Parse(String),
    #[error("redis pool: {0}")]
    Pool(String),
}

#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    client: redis::Client,
    prefix: String,
}

impl Redis {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let manager = Manager::new(url)?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            client: redis::Client::open(url)?,
            prefix: prefix.to_owned(),
        })
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub async fn conn(&self) -> Result<deadpool_redis::Connection, RedisError> {
        self.pool
            .get()
            .await
            .map_err(|e| RedisError::Pool(e.to_string()))
    }

    /// A connection of its own with no response timeout: the pooled ones time a reply out
    /// after 500 ms, which would break `XREADGROUP … BLOCK`.
    pub async fn blocking_conn(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut *conn).await?;
        Ok(())
    }
}
