//! Test support shared by every crate's tests: a fresh database per test, a Redis key prefix
//! per test, and servers on port 0. Postgres and Redis must be running; nothing here skips.

use std::net::SocketAddr;

use poem::IntoEndpoint;
use tokio_util::sync::CancellationToken;

mod closed_bodies;
pub mod consul_double;
pub mod redis_server;
pub mod smtp;

pub use closed_bodies::assert_closed_bodies_refuse_unnamed_fields;

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
        Self::start_with_idle_limit(app, crate::runtime::CLIENT_IDLE_LIMIT).await
    }

    /// [`TestServer::start`] with `idle_limit` for the limits of
    /// [`crate::runtime::CLIENT_IDLE_LIMIT`].
    pub async fn start_with_idle_limit<E>(app: E, idle_limit: std::time::Duration) -> Self
    where
        E: IntoEndpoint,
        E::Endpoint: 'static,
    {
        // The services' own accept loop, never stopped: dropping the handle aborts it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a TCP address");
        let handler = crate::runtime::PoemHandler::new(app);
        let task = tokio::spawn(async move {
            let _ = crate::runtime::serve_connections_with(
                listener,
                handler,
                CancellationToken::new(),
                idle_limit,
            )
            .await;
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

/// The internal credential the tests' services share.
pub const INTERNAL_TOKEN: &str = "test-internal-token";

/// Serves `app` as `service` on a port the OS picks on loopback, registered with
/// `discovery`, until `stop`: how a test runs a service for others to find.
pub async fn serve_registered<E>(
    service: &str,
    app: E,
    discovery: std::sync::Arc<dyn crate::discovery::Discovery>,
    stop: &CancellationToken,
) -> crate::runtime::Serving
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    crate::runtime::serve(
        service,
        app,
        "127.0.0.1:0",
        "127.0.0.1",
        discovery,
        stop.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("{service} serves: {e}"))
}

/// A signing key of the tests' own, standing in for users: mints access tokens that the
/// services under test verify with `jwks`.
pub struct TestIdentity {
    issuer: crate::auth::TokenIssuer,
    pub jwks: String,
    /// The private key, for a users service under test to sign with.
    pub signing_pem: String,
}

impl Default for TestIdentity {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIdentity {
    pub fn new() -> Self {
        let signing_pem = crate::auth::SigningKey::generate_pem();
        let key = crate::auth::SigningKey::from_pem(&signing_pem).expect("a generated key parses");
        let jwks = key.jwks();
        Self {
            issuer: crate::auth::TokenIssuer::new(key, std::time::Duration::from_secs(900)),
            jwks,
            signing_pem,
        }
    }

    /// An access token for `user` with `role`.
    pub fn token(&self, user: uuid::Uuid, role: crate::auth::Role) -> String {
        self.issuer.issue(user, &[role]).expect("a token signs")
    }

    /// A correctly signed token whose expiry passed a minute ago.
    pub fn expired_token(&self, user: uuid::Uuid, role: crate::auth::Role) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = crate::auth::Claims {
            sub: user,
            iss: crate::auth::ISSUER.to_owned(),
            aud: crate::auth::AUDIENCE.to_owned(),
            exp: now - 60,
            nbf: now - 960,
            iat: now - 960,
            jti: uuid::Uuid::now_v7(),
            roles: vec![role.as_str().to_owned()],
            authorities: crate::auth::authorities_of(&[role]),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.issuer.key().kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.signing_pem.as_bytes())
            .expect("the key is PEM");
        jsonwebtoken::encode(&header, &claims, &key).expect("a token signs")
    }
}

/// A stand-in for users' `/.well-known/jwks.json`: publishes the key set the test sets, and
/// notes when it was fetched.
pub struct JwksStandIn {
    published: std::sync::Arc<std::sync::Mutex<String>>,
    fetched_at: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    pub server: TestServer,
}

impl JwksStandIn {
    /// Serving `identities`' keys on a port of its own.
    pub async fn start(identities: &[&TestIdentity]) -> Self {
        use poem::EndpointExt;
        let published = std::sync::Arc::new(std::sync::Mutex::new(key_set(identities)));
        let fetched_at = std::sync::Arc::<std::sync::Mutex<Vec<_>>>::default();
        let (p, f) = (published.clone(), fetched_at.clone());
        let jwks = poem::endpoint::make_sync(move |_| {
            f.lock()
                .expect("fetch log lock")
                .push(std::time::Instant::now());
            p.lock().expect("key set lock").clone()
        });
        let server = TestServer::start(
            poem::Route::new().at("/.well-known/jwks.json", jwks.map_to_response()),
        )
        .await;
        Self {
            published,
            fetched_at,
            server,
        }
    }

    /// A local registry listing this stand-in as the one instance of users.
    pub async fn as_users(&self) -> std::sync::Arc<crate::discovery::LocalDiscovery> {
        users_at(&[self.server.port()]).await
    }

    /// Publishes `identities`' keys from now on.
    pub fn publish(&self, identities: &[&TestIdentity]) {
        *self.published.lock().expect("key set lock") = key_set(identities);
    }

    /// When the key set was fetched, in order.
    pub fn fetched_at(&self) -> Vec<std::time::Instant> {
        self.fetched_at.lock().expect("fetch log lock").clone()
    }
}

/// A local registry listing each of `ports` as an instance of users, in that order (the
/// registry lists instances by id).
pub async fn users_at(ports: &[u16]) -> std::sync::Arc<crate::discovery::LocalDiscovery> {
    use crate::discovery::Discovery;
    let discovery = std::sync::Arc::new(crate::discovery::LocalDiscovery::new());
    for (i, port) in ports.iter().enumerate() {
        let mut users = crate::discovery::Registration::new("users", "127.0.0.1", *port);
        users.id = format!("users-{i}");
        discovery
            .register(&users)
            .await
            .expect("a local registry takes a registration");
    }
    discovery
}

/// One key set holding the keys of every one of `identities`.
pub fn key_set(identities: &[&TestIdentity]) -> String {
    let keys: Vec<serde_json::Value> = identities
        .iter()
        .flat_map(|id| {
            let set: serde_json::Value =
                serde_json::from_str(&id.jwks).expect("an identity's key set is JSON");
            set["keys"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A service's settings as the KV seed gives them, pointed at `db`, a fresh Redis prefix,
/// the tests' identity and internal credential.
pub async fn settings(
    service: &str,
    db: &TestDb,
    identity: &TestIdentity,
) -> crate::config::Settings {
    let source = crate::config::LocalConfig::from_seed(&crate::config::default_seed_path())
        .expect("the KV seed reads");
    crate::config::Settings::load(&source, service)
        .await
        .expect("settings load")
        .with("database_url", db.url.clone())
        .with("redis_url", redis_url())
        .with("redis_prefix", redis_prefix())
        .with("jwt_public_keys", identity.jwks.clone())
        .with("internal_token", INTERNAL_TOKEN)
        // Many services run in one test process against one Postgres: keep each pool small.
        .with("database_max_connections", "3")
}

/// Waits until `check` holds, asking every 20 ms; fails the test with `what` once `limit`
/// has passed.
pub async fn eventually_within<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Asserts a problem+json answer with `status`; returns its body.
pub async fn expect_problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    let url = resp.url().clone();
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "status of {url}: {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{url}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON problem");
    assert_eq!(body["status"], status);
    assert!(
        !body["detail"].as_str().unwrap_or("").is_empty(),
        "a problem says what was wrong"
    );
    body
}

/// Fails the test unless the served OpenAPI document equals `openapi/<name>.json`;
/// `UPDATE_OPENAPI=1` rewrites the file instead.
/// Fetches `{base_url}/openapi.json` as served, checks that it declares no key twice (strict
/// tools such as Swagger UI reject such a document, lenient parsers hide it) and that it
/// matches the committed `openapi/{name}.json`; returns it.
pub async fn assert_served_openapi_matches(name: &str, base_url: &str) -> serde_json::Value {
    let text = reqwest::get(format!("{base_url}/openapi.json"))
        .await
        .expect("the service answers")
        .text()
        .await
        .expect("the document reads");
    if let Err(e) = serde_json::from_str::<crate::json_keys::NoDuplicateKeys>(&text) {
        panic!("the served openapi document of {name} is not valid as OpenAPI: {e}");
    }
    let served: serde_json::Value = serde_json::from_str(&text).expect("the document is JSON");
    assert_openapi_matches(name, &served);
    served
}

fn assert_openapi_matches(name: &str, served: &serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../openapi")
        .join(format!("{name}.json"));
    let rendered = serde_json::to_string_pretty(served).expect("JSON renders") + "\n";
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(&path, &rendered).expect("openapi/ is writable");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "openapi/{name}.json is out of date: run `UPDATE_OPENAPI=1 cargo test` and commit it"
    );
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                op.get("operationId").is_some(),
                "{method} {path} has an operationId"
            );
        }
    }
}
