//! Test support shared by every crate's tests: a fresh database per test, a Redis key prefix
//! per test, and servers on port 0. Postgres and Redis must be running; nothing here skips.

use std::net::SocketAddr;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, IntoEndpoint, Server};

pub mod consul_double;

/// Where tests reach Postgres: `MICROMART_TEST_DATABASE_URL` (a server URL without a
/// database), default the local server as `scripts/test` sets it up.
pub fn database_server_url() -> String {
    std::env::var("MICROMART_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://micromart@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

pub fn redis_url() -> String {
    std::env::var("MICROMART_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis prefix no other test uses.
pub fn redis_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A database of its own, dropped when the value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Only a name: the service creates the database itself, as it does in production.
    pub fn new(label: &str) -> Self {
        let name = format!("t_{label}_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", database_server_url());
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = database_server_url();
        let name = self.name.clone();
        // Drop runs outside any runtime we may block; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) =
                        sqlx::PgConnection::connect(&format!("{server}/postgres")).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Serves `app` on 127.0.0.1 with an OS-chosen port until the returned handle is dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start<E>(app: E) -> Self
    where
        E: IntoEndpoint,
        E::Endpoint: 'static,
    {
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind 127.0.0.1:0");
        let addr = *acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("a TCP address");
        let ep = app.into_endpoint().map_to_response();
        let task = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(ep).await;
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops serving (new connections are refused).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
