use std::sync::Arc;
use std::time::Duration;

use platform::CancellationToken;
use platform::auth::Role;
use platform::discovery::{Discovery, LocalDiscovery};
use platform::runtime::{Background, Serving};
use platform::testing::smtp::SmtpServer;
use platform::testing::{TestDb, TestIdentity, redis_prefix, settings};
use poem::EndpointExt;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{Value, json};
use uuid::Uuid;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

const SERVICES: [&str; 7] = [
    "products",
    "inventory",
    "cart",
    "orders",
    "payment",
    "users",
    "notification",
];

/// Starts service crate `$krate` from `$settings` (given `$discovery` when its `app` takes
/// one): its state, its app, and a maker of its background tasks.
macro_rules! started {
    ($krate:ident :: $config:ident, $settings:expr $(, $discovery:expr)?) => {{
        let (state, app) =
            $krate::app($krate::$config::from_settings($settings).unwrap() $(, $discovery.clone())?)
                .await
                .unwrap();
        let for_tasks = state.clone();
        let tasks: BackgroundOf = Arc::new(move || for_tasks.background());
        (state, app.boxed(), tasks)
    }};
}

/// Makes a service's background tasks afresh, as a restarted process would.
type BackgroundOf = Arc<dyn Fn() -> Background + Send + Sync>;

/// How to start a service's background tasks, and the ones running now.
type RunningTasks = (BackgroundOf, Vec<tokio::task::JoinHandle<()>>);

/// A saga runs seven services, each with its own database pool: a few at a time keep the
/// tests within Postgres's connection limit.
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

pub struct Saga {
    pub identity: TestIdentity,
    pub client: Client,
    pub manager: String,
    /// Each service's own address (for what the gateway never routes, like `/openapi.json`).
    pub urls: std::collections::HashMap<&'static str, String>,
    /// The gateway in front of them: every customer and staff call goes through it.
    pub gateway: String,
    pub payment: payment::Payment,
    pub orders: orders::Orders,
    /// Where the services find each other.
    discovery: Arc<dyn Discovery>,
    /// Each service's background tasks (relay, consumers, sweepers), kept so that a test can
    /// kill and restart them.
    tasks: std::sync::Mutex<std::collections::HashMap<&'static str, RunningTasks>>,
    pub smtp: SmtpServer,
    /// The Redis every service uses, under this saga's key prefix.
    pub redis: platform::redis::Redis,
    stop: CancellationToken,
    _servers: Vec<Serving>,
    _dbs: Vec<TestDb>,
    /// Last, so that it is released only once the databases are gone.
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl Drop for Saga {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Saga {
    pub async fn start() -> Self {
        Self::start_with_redis(platform::testing::redis_url()).await
    }

    /// A saga whose services all use the Redis at `redis_url`.
    pub async fn start_with_redis(redis_url: String) -> Self {
        Self::start_with(redis_url, &[]).await
    }

    /// A saga whose stock reservations last `seconds`, lapsed ones released at once.
    pub async fn with_reservations_of(seconds: u32) -> Self {
        Self::start_with(
            platform::testing::redis_url(),
            &[
                ("reservation_ttl_seconds", &seconds.to_string()),
                ("reservation_sweep_interval_ms", "100"),
            ],
        )
        .await
    }

    /// A saga whose consumers claim an entry a dead instance took once it is idle 0.5 s.
    pub async fn claiming_quickly() -> Self {
        Self::start_with(
            platform::testing::redis_url(),
            &[("stream_claim_idle_ms", "500")],
        )
        .await
    }

    /// A saga with `overrides` of every service's settings.
    pub async fn start_with(redis_url: String, overrides: &[(&str, &str)]) -> Self {
        let turn = RUNNING
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let identity = TestIdentity::new();
        let discovery: Arc<dyn Discovery> = Arc::new(LocalDiscovery::new());
        let stop = CancellationToken::new();
        let prefix = redis_prefix();
        let smtp = SmtpServer::start().await;
        let dbs: Vec<TestDb> = SERVICES.iter().map(|n| TestDb::new(n)).collect();
        let mut conf = std::collections::HashMap::new();
        for (name, db) in SERVICES.iter().zip(&dbs) {
            let mut service_settings = settings(name, db, &identity).await;
            for (key, value) in overrides {
                service_settings = service_settings.with(key, *value);
            }
            conf.insert(
                *name,
                service_settings
                    .with("redis_url", redis_url.clone())
                    .with("redis_prefix", prefix.clone())
                    .with("webhook_secret", WEBHOOK_SECRET)
                    .with("jwt_signing_key", identity.signing_pem.clone())
                    .with("smtp_host", "127.0.0.1")
                    .with("smtp_port", smtp.port.to_string())
                    .with("send_interval_ms", "100"),
            );
        }
        // users and notification first: customers register before anything else happens.
        let (_, users, users_tasks) = started!(users::UsersConfig, &conf["users"]);
        let (_, notification, notification_tasks) = started!(
            notification::NotificationConfig,
            &conf["notification"],
            discovery
        );
        let (_, products, products_tasks) =
            started!(products::ProductsConfig, &conf["products"], discovery);
        let (_, inventory, inventory_tasks) =
            started!(inventory::InventoryConfig, &conf["inventory"], discovery);
        let (_, cart, cart_tasks) = started!(cart::CartConfig, &conf["cart"], discovery);
        let (orders_state, orders, orders_tasks) =
            started!(orders::OrdersConfig, &conf["orders"], discovery);
        let (payment_state, payment, payment_tasks) =
            started!(payment::PaymentConfig, &conf["payment"], discovery);
        let services = [
            ("users", users, users_tasks),
            ("notification", notification, notification_tasks),
            ("products", products, products_tasks),
            ("inventory", inventory, inventory_tasks),
            ("cart", cart, cart_tasks),
            ("orders", orders, orders_tasks),
            ("payment", payment, payment_tasks),
        ];

        let mut servers = Vec::new();
        let mut urls = std::collections::HashMap::new();
        let mut tasks = std::collections::HashMap::new();
        for (name, app, background) in services {
            tasks.insert(name, (background.clone(), background().spawn(&stop)));
            let server =
                platform::testing::serve_registered(name, app, discovery.clone(), &stop).await;
            urls.insert(name, server.url());
            servers.push(server);
        }
        let gateway = start_gateway(&identity, &discovery, &stop).await;
        Self {
            gateway: gateway.url(),
            manager: identity.token(Uuid::now_v7(), Role::Manager),
            identity,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            urls,
            _turn: turn,
            tasks: std::sync::Mutex::new(tasks),
            payment: payment_state,
            orders: orders_state,
            discovery: discovery.clone(),
            redis: platform::redis::Redis::connect(&redis_url, &prefix).unwrap(),
            smtp,
            stop,
            _servers: {
                servers.push(gateway);
                servers
            },
            _dbs: dbs,
        }
    }

    pub fn customer(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        (id, self.identity.token(id, Role::Customer))
    }

    /// A call through the gateway; `service` is the one the path belongs to (the gateway
    /// finds it by the path).
    pub fn call(&self, service: &str, method: Method, path: &str, token: &str) -> RequestBuilder {
        debug_assert!(
            self.urls.contains_key(service),
            "{service} runs in the saga"
        );
        self.client
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(token)
    }

    /// A call without a body through the gateway, sent.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.call(service, method, path, token)
            .send()
            .await
            .unwrap()
    }

    /// A product with `stock` units available; returns its id.
    pub async fn product(&self, price: i64, stock: i32) -> Uuid {
        let slug = format!("c{}", &Uuid::new_v4().simple().to_string()[..8]);
        let r = self
            .call(
                "products",
                Method::POST,
                "/api/v1/products/categories",
                &self.manager,
            )
            .json(&json!({"slug": slug, "name": "Things"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = self.call("products", Method::POST, "/api/v1/products", &self.manager)
            .json(&json!({"sku": format!("S-{}", Uuid::new_v4().simple()), "name": "Mug", "description": "A mug",
                "price": {"amount": price, "currency": "EUR"}, "category": slug, "image_urls": [], "attributes": {}}))
            .send().await.unwrap();
        assert_eq!(r.status(), 201);
        let id: Uuid = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let r = self
            .call(
                "inventory",
                Method::PUT,
                &format!("/api/v1/inventory/{id}"),
                &self.manager,
            )
            .json(&json!({"on_hand": stock, "safety_stock": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        id
    }

    pub async fn add_to_cart(&self, token: &str, product: Uuid, quantity: i32) {
        let r = self
            .call(
                "cart",
                Method::PUT,
                &format!("/api/v1/cart/items/{product}"),
                token,
            )
            .json(&json!({"quantity": quantity}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    pub async fn checkout(&self, token: &str, key: &str) -> reqwest::Response {
        self.call("orders", Method::POST, "/api/v1/orders/checkout", token)
            .header("idempotency-key", key)
            .json(&json!({"shipping_address": "1 Main St, Springfield"}))
            .send()
            .await
            .unwrap()
    }

    /// Pays a placed order (the checkout's answer) with `card` on the hosted page, which
    /// answers every payment, accepted or declined, with a 303 to its result page.
    pub async fn pay(&self, placed: &Value, card: &str) {
        let payment_url = placed["payment_url"].as_str().unwrap();
        let path = payment_url.split("/pay/").nth(1).unwrap();
        let page = self
            .client
            .get(format!("{}/pay/{path}", self.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<form"));
        let status = self
            .client
            .post(format!("{}/pay/{path}", self.gateway))
            .form(&card_form(card))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 303);
    }

    pub async fn order(&self, token: &str, id: &str) -> Value {
        self.call(
            "orders",
            Method::GET,
            &format!("/api/v1/orders/{id}"),
            token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    }

    /// The statuses an order went through, in order.
    pub async fn history(&self, token: &str, id: &str) -> Vec<String> {
        self.order(token, id).await["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["to"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn stock(&self, product: Uuid) -> Value {
        self.call(
            "inventory",
            Method::GET,
            &format!("/api/v1/inventory/{product}"),
            &self.manager,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    }

    pub async fn cart_lines(&self, token: &str) -> usize {
        let cart: Value = self
            .call("cart", Method::GET, "/api/v1/cart", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cart["lines"].as_array().unwrap().len()
    }

    /// Waits until `check` holds (the events have fanned out), at most 10 s.
    pub async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.eventually_within(Duration::from_secs(10), what, check)
            .await
    }

    /// Waits until `check` holds, at most `limit`.
    pub async fn eventually_within<F, Fut>(&self, limit: Duration, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        platform::testing::eventually_within(limit, what, check).await;
    }
}

impl Saga {
    /// The status of a GET of the payment page (410 once it cannot be paid).
    pub async fn pay_again(&self, payment_url: &str) -> u16 {
        let path = payment_url.split("/pay/").nth(1).unwrap();
        self.client
            .get(format!("{}/pay/{path}", self.gateway))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Saga {
    /// A customer registered through users (so notification knows the email), logged in:
    /// (email, access token).
    pub async fn registered_customer(&self, name: &str) -> (String, String) {
        let email = format!("{name}-{}@example.com", Uuid::new_v4().simple());
        let users = &self.gateway;
        let r = self
            .client
            .post(format!("{users}/api/v1/users/register"))
            .json(&json!({"email": email, "password": "correct horse battery", "name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let tokens: Value = self
            .client
            .post(format!("{users}/api/v1/users/login"))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (email, tokens["access_token"].as_str().unwrap().to_owned())
    }
}

/// The gateway over `discovery`, with the per-client rate limit lifted (a saga test sends
/// hundreds of calls from one address; the limit has its own tests in the gateway suite).
async fn start_gateway(
    identity: &TestIdentity,
    discovery: &Arc<dyn Discovery>,
    stop: &CancellationToken,
) -> Serving {
    let overrides = [
        ("jwt_public_keys", identity.jwks.as_str()),
        ("rate_limit_per_second", "1000000"),
        ("rate_limit_burst", "1000000"),
    ];
    gateway::testing::start(discovery.clone(), &overrides, stop)
        .await
        .serving
}

impl Saga {
    /// Ends a service's background tasks at once, as a `kill -9` would: no last relay pass,
    /// nothing acknowledged that was not yet.
    pub fn kill_tasks(&self, service: &str) {
        for task in self
            .tasks
            .lock()
            .unwrap()
            .get_mut(service)
            .unwrap()
            .1
            .drain(..)
        {
            task.abort();
        }
    }

    /// Takes the next entry of `stream` for consumer `group` as an instance that dies at once
    /// would: read, never acknowledged (the group's others claim it once it is idle).
    pub async fn take_and_drop_next_event(&self, group: &str, stream: &str) {
        let mut conn = self.redis.conn().await.unwrap();
        let taken: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("an-instance-that-died")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(self.redis.key(stream))
            .arg(">")
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            taken.keys.len(),
            1,
            "{group} had an entry of {stream} to take"
        );
    }

    /// The payments of the caller `token` is for, as payment lists them.
    pub async fn payments(&self, token: &str) -> Value {
        self.send("payment", Method::GET, "/api/v1/payments", token)
            .await
            .json()
            .await
            .unwrap()
    }

    /// A token of a new admin.
    pub fn admin(&self) -> String {
        self.identity.token(Uuid::now_v7(), Role::Admin)
    }

    /// The number of entries of `stream` that consumer `group` has read and not acknowledged.
    pub async fn pending_entries(&self, group: &str, stream: &str) -> i64 {
        let mut conn = self.redis.conn().await.unwrap();
        let summary: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(self.redis.key(stream))
            .arg(group)
            .query_async(&mut *conn)
            .await
            .unwrap();
        summary.count() as i64
    }

    /// The number of entries in `stream`.
    pub async fn stream_length(&self, stream: &str) -> usize {
        let mut conn = self.redis.conn().await.unwrap();
        redis::cmd("XLEN")
            .arg(self.redis.key(stream))
            .query_async(&mut *conn)
            .await
            .unwrap()
    }

    /// The provider's callback `id`, that `session` was paid, signed now and delivered to
    /// payment: what payment made of it.
    pub async fn provider_reports_paid(&self, id: &str, session: &str) -> payment::store::Applied {
        let body = serde_json::to_vec(&json!({
            "id": id,
            "type": "payment.succeeded",
            "session_id": session,
            "card_brand": "visa",
            "card_last4": "4242",
        }))
        .unwrap();
        let signature =
            payment::provider::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &body);
        self.payment
            .receive_webhook(&signature, &body)
            .await
            .unwrap()
    }

    /// Takes `service`'s instances out of discovery, as when they are down: the other
    /// services can no longer reach it. Returns what [`Saga::show`] puts back.
    pub async fn hide(&self, service: &str) -> Vec<platform::discovery::Instance> {
        let instances = self.discovery.resolve(service).await.unwrap();
        for instance in &instances {
            self.discovery.deregister(&instance.id).await.unwrap();
        }
        instances
    }

    /// Registers `instances` of `service` again.
    pub async fn show(&self, service: &str, instances: &[platform::discovery::Instance]) {
        for instance in instances {
            let registration = platform::discovery::Registration {
                id: instance.id.clone(),
                ..platform::discovery::Registration::new(service, &instance.address, instance.port)
            };
            self.discovery.register(&registration).await.unwrap();
        }
    }

    /// With orders' and inventory's consumers stopped (`kill_tasks`) and two payment events
    /// published: an instance of each took the first and died before handling it, and they
    /// restart, so the second reaches them first (the first is claimed once idle).
    pub async fn second_payment_event_first(&self) {
        let stream = "payment.events";
        self.eventually("both payment events are published", || async {
            self.stream_length(stream).await >= 2
        })
        .await;
        for service in ["orders", "inventory"] {
            self.take_and_drop_next_event(service, stream).await;
            self.restart_tasks(service);
        }
    }

    /// Waits until orders' and inventory's groups have no entry of `payment.events` left
    /// unacknowledged.
    pub async fn payment_events_all_handled(&self) {
        self.eventually(
            "the dead instances' entries are claimed and handled",
            || async {
                self.pending_entries("orders", "payment.events").await == 0
                    && self.pending_entries("inventory", "payment.events").await == 0
            },
        )
        .await;
    }

    /// Starts a service's background tasks again, as a restarted process does.
    pub fn restart_tasks(&self, service: &str) {
        let mut tasks = self.tasks.lock().unwrap();
        let (background, running) = tasks.get_mut(service).unwrap();
        *running = background().spawn(&self.stop);
    }
}

impl Saga {
    /// Waits until the order has `status` (its events have been applied), at most 10 s.
    pub async fn wait_for_status(&self, token: &str, order_id: &str, status: &str) {
        self.eventually(&format!("the order is {status}"), || async {
            self.order(token, order_id).await["status"] == status
        })
        .await;
    }

    /// Waits until `product` has `on_hand` units and none reserved (`what` says why), at
    /// most 10 s.
    pub async fn wait_for_stock(&self, product: Uuid, on_hand: i64, what: &str) {
        self.eventually(what, || async {
            let s = self.stock(product).await;
            s["on_hand"] == on_hand && s["reserved"] == 0
        })
        .await;
    }

    /// Emails to `email` at the SMTP server that mention `order_id`.
    pub fn confirmations(&self, email: &str, order_id: &str) -> usize {
        self.emails_about(email, order_id).len()
    }

    /// Waits (at most 10 s) until one email about `order_id` reached `email`, and checks that
    /// its subject says `subject_word`.
    pub async fn expect_one_email(&self, email: &str, order_id: &str, subject_word: &str) {
        self.eventually(&format!("the {subject_word} email arrived"), || async {
            self.confirmations(email, order_id) == 1
        })
        .await;
        let subjects = self.emails_about(email, order_id);
        assert!(subjects[0].contains(subject_word), "{subjects:?}");
    }

    /// The subjects of the emails to `email` at the SMTP server that mention `order_id`.
    pub fn emails_about(&self, email: &str, order_id: &str) -> Vec<String> {
        self.smtp
            .messages_to(email)
            .into_iter()
            .filter(|m| m["body"].as_str().unwrap_or("").contains(order_id))
            .map(|m| m["subject"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Puts `product` in the cart, checks out and pays with the card that succeeds; returns
    /// the order id.
    pub async fn buy(&self, token: &str, product: Uuid, key: &str) -> String {
        self.add_to_cart(token, product, 1).await;
        let resp = self.checkout(token, key).await;
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        let placed: Value = resp.json().await.unwrap();
        self.pay(&placed, "4242 4242 4242 4242").await;
        placed["order"]["id"].as_str().unwrap().to_owned()
    }
}

impl Saga {
    /// Checks the end state every crash test must reach: each order PAID exactly once (one
    /// history row), `product`'s stock deducted once per order, each cart empty and one
    /// confirmation email per order.
    pub async fn assert_each_paid_once(
        &self,
        product: Uuid,
        stock_before: i64,
        orders: &[(String, String, String)],
        within: std::time::Duration,
    ) {
        for (_, token, order_id) in orders {
            self.eventually_within(within, "every order is PAID", || async {
                self.order(token, order_id).await["status"] == "PAID"
            })
            .await;
        }
        let paid = orders.len() as i64;
        self.eventually_within(within, "the stock is deducted once per order", || async {
            let s = self.stock(product).await;
            s["on_hand"] == stock_before - paid && s["reserved"] == 0
        })
        .await;
        self.eventually_within(within, "one confirmation per order", || async {
            orders
                .iter()
                .all(|(email, _, id)| self.confirmations(email, id) == 1)
        })
        .await;
        for (_, token, _) in orders {
            self.eventually_within(within, "every cart is empty", || async {
                self.cart_lines(token).await == 0
            })
            .await;
        }
        // Whatever is still in flight has had time to arrive twice, if it were going to.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for (email, token, order_id) in orders {
            assert_eq!(
                self.confirmations(email, order_id),
                1,
                "one email for {order_id}"
            );
            assert_eq!(
                self.history(token, order_id).await,
                ["PENDING", "PAID"],
                "{order_id} paid once"
            );
        }
        let s = self.stock(product).await;
        assert_eq!(
            (s["on_hand"].as_i64(), s["reserved"].as_i64()),
            (Some(stock_before - paid), Some(0)),
            "deducted exactly once per order"
        );
    }
}

/// The hosted payment page's form filled in with `card` (any expiry, CVC and name pass).
pub fn card_form(card: &str) -> [(&'static str, &str); 4] {
    [
        ("card_number", card),
        ("expiry", "12/30"),
        ("cvc", "123"),
        ("name", "Ada L"),
    ]
}
