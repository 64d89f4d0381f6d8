use std::time::Duration;

use platform::CancellationToken;
use platform::auth::SigningKey;
use platform::config::{LocalConfig, Settings, default_seed_path};
use platform::testing::{self, TestDb, TestServer};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use users::{Users, UsersConfig};

pub const ADMIN_EMAIL: &str = "boss@micromart.test";
/// The password the admin sets through the reset link mailed when the account is made ADMIN.
pub const ADMIN_PASSWORD: &str = "the admin's own password";

pub struct Shop {
    pub users: Users,
    pub server: TestServer,
    pub signing_pem: String,
    pub client: Client,
    pub shutdown: CancellationToken,
    _db: TestDb,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The users config as the seed gives it, pointed at a fresh database and Redis prefix.
pub async fn config(db: &TestDb, signing_pem: &str) -> UsersConfig {
    let source = LocalConfig::from_seed(&default_seed_path()).unwrap();
    let settings = Settings::load(&source, "users")
        .await
        .unwrap()
        .with("database_url", db.url.clone())
        .with("redis_url", testing::redis_url())
        .with("redis_prefix", testing::redis_prefix())
        .with("jwt_signing_key", signing_pem)
        .with("internal_token", testing::INTERNAL_TOKEN)
        .with("admin_email", ADMIN_EMAIL)
        .with("login_max_failures", "3");
    UsersConfig::from_settings(&settings).unwrap()
}

impl Shop {
    pub async fn start() -> Self {
        Self::start_with(|c| c).await
    }

    pub async fn start_with(tweak: impl FnOnce(UsersConfig) -> UsersConfig) -> Self {
        Self::start_running(tweak, true).await
    }

    /// The service without its background tasks (the relay, retention): a test that runs
    /// them itself is not raced by them.
    pub async fn start_without_background() -> Self {
        Self::start_running(|c| c, false).await
    }

    async fn start_running(
        tweak: impl FnOnce(UsersConfig) -> UsersConfig,
        background: bool,
    ) -> Self {
        let db = TestDb::new("users");
        let signing_pem = SigningKey::generate_pem();
        let config = tweak(config(&db, &signing_pem).await);
        let (users, app) = users::app(config)
            .await
            .expect("users starts (Postgres and Redis must be running)");
        let shutdown = CancellationToken::new();
        if background {
            users.background().spawn(&shutdown);
        }
        let server = TestServer::start(app).await;
        Self {
            users,
            server,
            signing_pem,
            client: Client::new(),
            shutdown,
            _db: db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str, body: Value) -> RequestBuilder {
        self.client.post(self.url(path)).json(&body)
    }

    pub async fn register(&self, email: &str, password: &str) -> Value {
        let resp = self
            .post(
                "/api/v1/users/register",
                json!({"email": email, "password": password, "name": "Test Person"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "register {email}");
        resp.json().await.unwrap()
    }

    /// A login presenting `device_token`.
    pub async fn login_on(&self, device_token: &str, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/users/login",
            json!({"email": email, "password": password, "device_token": device_token}),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/users/login",
            json!({"email": email, "password": password}),
        )
        .send()
        .await
        .unwrap()
    }

    /// GET /api/v1/users/me with `access`.
    pub async fn me(&self, access: &str) -> Value {
        self.get("/api/v1/users/me")
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn tokens(&self, email: &str, password: &str) -> Value {
        let resp = self.login(email, password).await;
        assert_eq!(resp.status(), 200, "login {email}");
        resp.json().await.unwrap()
    }

    /// A registered, logged-in customer: (user, access token).
    pub async fn customer(&self, name: &str) -> (Value, String) {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        let user = self.register(&email, "correct horse battery").await;
        let tokens = self.tokens(&email, "correct horse battery").await;
        (user, tokens["access_token"].as_str().unwrap().to_owned())
    }

    /// The admin named in config, verified, logged in: its access token.
    pub async fn admin(&self) -> String {
        let user = self.register(ADMIN_EMAIL, "admin password 1").await;
        let id = user["id"].as_str().unwrap();
        self.follow_link(id, "UserRegistered").await;
        // Made ADMIN, the account's password is set again through the reset link mailed to it.
        self.reset_password(id, ADMIN_PASSWORD).await;
        let tokens = self.tokens(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        tokens["access_token"].as_str().unwrap().to_owned()
    }

    /// Opens the link in the newest `kind` event for `user_id` (an email's link), as its
    /// reader would; its answer must be 200.
    pub async fn follow_link(&self, user_id: &str, kind: &str) -> Value {
        let token = self.one_time_link_token(user_id, kind).await;
        let resp = self
            .get(&format!("/api/v1/users/verify?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Asks for new tokens with the refresh token among `tokens`.
    pub async fn refresh(&self, tokens: &Value) -> Response {
        self.post(
            "/api/v1/users/token/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .send()
        .await
        .unwrap()
    }

    /// Sets `user_id`'s password to `password` with the newest reset link mailed to it.
    pub async fn reset_password(&self, user_id: &str, password: &str) {
        let token = self
            .one_time_link_token(user_id, "PasswordResetRequested")
            .await;
        let resp = self
            .client
            .post(self.url("/api/v1/users/password-reset/confirm"))
            .json(&serde_json::json!({"token": token, "new_password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }

    /// The newest event of `kind` for `user_id`, as the outbox holds it.
    pub async fn event(&self, user_id: &str, kind: &str) -> Value {
        let payload: sqlx::types::Json<Value> = sqlx::query_scalar(
            "SELECT payload FROM outbox WHERE event_type = $1 AND payload->'data'->>'user_id' = $2
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(kind)
        .bind(user_id)
        .fetch_one(self.users.pool())
        .await
        .unwrap();
        payload.0
    }

    /// The token in the link an event carries (verification or reset).
    pub async fn one_time_link_token(&self, user_id: &str, kind: &str) -> String {
        let event = self.event(user_id, kind).await;
        let url = event["data"]["verification_url"]
            .as_str()
            .or(event["data"]["reset_url"].as_str())
            .unwrap()
            .to_owned();
        url.split("token=").nth(1).unwrap().to_owned()
    }
}

pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    platform::testing::eventually_within(Duration::from_secs(10), what, f).await;
}

/// Asserts a problem+json answer with `status`; returns its body.
pub async fn problem(resp: Response, status: u16) -> Value {
    let url = resp.url().clone();
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "status of {url}: {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{url}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], status);
    assert!(
        !body["detail"].as_str().unwrap_or("").is_empty(),
        "a problem says what was wrong"
    );
    body
}
