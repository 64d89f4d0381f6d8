//! Drives the whole shop, started in-process, through the progenitor-generated clients only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clients::{cart, inventory, notification, orders, payment, products, users};
use platform::CancellationToken;
use platform::auth::Role;
use platform::discovery::{Discovery, LocalDiscovery};
use platform::runtime::{Background, Serving};
use platform::testing::smtp::SmtpServer;
use platform::testing::{TestDb, TestIdentity, redis_prefix, settings};
use uuid::Uuid;

const WEBHOOK_SECRET: &str = "test-webhook-secret";

struct Shop {
    identity: TestIdentity,
    urls: HashMap<&'static str, String>,
    stop: CancellationToken,
    _smtp: SmtpServer,
    _servers: Vec<Serving>,
    _dbs: Vec<TestDb>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shop {
    async fn start() -> Self {
        let identity = TestIdentity::new();
        let discovery: Arc<dyn Discovery> = Arc::new(LocalDiscovery::new());
        let stop = CancellationToken::new();
        let prefix = redis_prefix();
        let smtp = SmtpServer::start().await;
        let names = [
            "products",
            "inventory",
            "cart",
            "orders",
            "payment",
            "users",
            "notification",
        ];
        let dbs: Vec<TestDb> = names.iter().map(|n| TestDb::new(n)).collect();
        let mut conf = Vec::new();
        for (name, db) in names.iter().zip(&dbs) {
            conf.push(
                settings(name, db, &identity)
                    .await
                    .with("redis_prefix", prefix.clone())
                    .with("webhook_secret", WEBHOOK_SECRET)
                    .with("jwt_signing_key", identity.signing_pem.clone())
                    .with("smtp_host", "127.0.0.1")
                    .with("smtp_port", smtp.port.to_string())
                    .with("send_interval_ms", "100"),
            );
        }
        let mut servers = Vec::new();
        let (state, app) = ::users::app(::users::UsersConfig::from_settings(&conf[5]).unwrap())
            .await
            .unwrap();
        servers.push(launch("users", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::notification::app(
            ::notification::NotificationConfig::from_settings(&conf[6]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("notification", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::products::app(
            ::products::ProductsConfig::from_settings(&conf[0]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("products", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::inventory::app(
            ::inventory::InventoryConfig::from_settings(&conf[1]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("inventory", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::cart::app(
            ::cart::CartConfig::from_settings(&conf[2]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("cart", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::orders::app(
            ::orders::OrdersConfig::from_settings(&conf[3]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("orders", app, state.background(), &discovery, &stop).await);
        let (state, app) = ::payment::app(
            ::payment::PaymentConfig::from_settings(&conf[4]).unwrap(),
            discovery.clone(),
        )
        .await
        .unwrap();
        servers.push(launch("payment", app, state.background(), &discovery, &stop).await);
        let order = [
            "users",
            "notification",
            "products",
            "inventory",
            "cart",
            "orders",
            "payment",
        ];
        let urls = order
            .into_iter()
            .zip(servers.iter().map(Serving::url))
            .collect();
        Self {
            identity,
            urls,
            stop,
            _smtp: smtp,
            _servers: servers,
            _dbs: dbs,
        }
    }
}

/// A `reqwest::Client` that sends `Authorization: Bearer <token>` on every request.
fn http(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn launch<E>(
    name: &str,
    app: E,
    background: Background,
    discovery: &Arc<dyn Discovery>,
    stop: &CancellationToken,
) -> Serving
where
    E: poem::IntoEndpoint,
    E::Endpoint: 'static,
{
    background.spawn(stop);
    platform::testing::serve_registered(name, app, discovery.clone(), stop).await
}

#[tokio::test]
async fn a_customer_shops_through_the_generated_clients() {
    let shop = Shop::start().await;
    let url = |s: &str| shop.urls[s].clone();

    // Register and log in a customer.
    let anonymous = users::Client::new_with_client(&url("users"), http(None));
    let email = format!("ada-{}@example.com", Uuid::new_v4().simple());
    let password = "correct horse battery".to_owned();
    let user = anonymous
        .register(&users::types::RegisterRequest {
            email: email.clone(),
            name: "Ada".to_owned(),
            password: password.clone(),
            phone: None,
        })
        .await
        .unwrap();
    assert_eq!(user.status().as_u16(), 201);
    assert_eq!(user.email, email);
    let tokens = anonymous
        .login(&users::types::LoginRequest {
            email: email.clone(),
            password,
            device_token: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.token_type, "Bearer");
    assert!(
        tokens.device_token.is_some(),
        "a login gives a device token"
    );
    let token = tokens.access_token;
    let me = users::Client::new_with_client(&url("users"), http(Some(&token)))
        .get_me()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user.id);

    // A manager creates a category and a product, and stocks it.
    let manager = shop.identity.token(Uuid::now_v7(), Role::Manager);
    let catalogue = products::Client::new_with_client(&url("products"), http(Some(&manager)));
    let slug = format!("c{}", &Uuid::new_v4().simple().to_string()[..8]);
    let category = catalogue
        .create_category(&products::types::CreateCategoryRequest {
            slug: slug.clone(),
            name: "Things".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(category.status().as_u16(), 201);
    let product = catalogue
        .create_product(&products::types::CreateProductRequest {
            sku: format!("S-{}", Uuid::new_v4().simple()),
            name: "Mug".to_owned(),
            description: "A mug".to_owned(),
            price: products::types::Money {
                amount: 1250,
                currency: "EUR".to_owned(),
            },
            category: slug.clone(),
            image_urls: vec![],
            attributes: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(product.category, slug);
    assert_eq!(product.price.amount, 1250);
    let stock = inventory::Client::new_with_client(&url("inventory"), http(Some(&manager)))
        .set_stock(
            &product.id,
            &inventory::types::SetStock {
                on_hand: 5,
                safety_stock: 0,
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stock.product_id, product.id);
    assert_eq!(stock.available, 5);

    // Checking out an empty cart is a typed 422 Problem.
    let checkout_client = orders::Client::new_with_client(&url("orders"), http(Some(&token)));
    let request = orders::types::CheckoutRequest {
        phone: None,
        shipping_address: "1 Main St, Springfield".to_owned(),
    };
    match checkout_client
        .checkout(Some(&Uuid::new_v4().to_string()), &request)
        .await
    {
        Err(orders::Error::ErrorResponse(problem)) => {
            assert_eq!(problem.status().as_u16(), 422);
            assert_eq!(problem.status, 422);
            assert!(!problem.detail.is_empty(), "{problem:?}");
        }
        other => panic!("expected a 422 Problem, got {other:?}"),
    }

    // The customer puts two mugs in the cart.
    let basket = cart::Client::new_with_client(&url("cart"), http(Some(&token)));
    let line = basket
        .set_cart_item(&product.id, &cart::types::SetQuantity { quantity: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(line.product_id, product.id);
    assert_eq!(line.quantity, 2);
    let view = basket.get_cart().await.unwrap().into_inner();
    assert_eq!(view.lines.len(), 1);
    assert_eq!(view.lines[0].product_id, product.id);
    assert_eq!(view.lines[0].quantity, 2);

    // Checkout, then read the order back.
    let key = Uuid::new_v4().to_string();
    let result = checkout_client
        .checkout(Some(&key), &request)
        .await
        .unwrap()
        .into_inner();
    let order = result.order;
    assert_eq!(order.status, "PENDING");
    assert_eq!(order.total.amount, 2500);
    assert_eq!(order.total.currency, "EUR");
    assert_eq!(order.lines.len(), 1);
    assert_eq!(order.lines[0].product_id, product.id);
    assert_eq!(order.lines[0].quantity, 2);
    assert!(!result.payment_url.is_empty());
    let again = checkout_client
        .checkout(Some(&key), &request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.order.id, order.id,
        "the Idempotency-Key replays the order"
    );
    let read = checkout_client
        .get_order(&order.id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.id, order.id);
    assert_eq!(read.status, "PENDING");
    assert_eq!(read.total.amount, 2500);
    assert_eq!(read.shipping_address, "1 Main St, Springfield");

    // The caller's payments: a payment is recorded only once the hosted page (HTML and a
    // form, which the generated client leaves out) is paid, so a pending order has none yet.
    assert!(
        result.payment_url.contains("/pay/"),
        "{}",
        result.payment_url
    );
    let payments = payment::Client::new_with_client(&url("payment"), http(Some(&token)));
    let page = payments
        .list_payments(None, Some(10.try_into().unwrap()), Some(&order.id))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.items.is_empty(), "{:?}", page.items);
    assert_eq!(page.next_cursor, None);
    match payments.get_payment(&Uuid::now_v7()).await {
        Err(payment::Error::ErrorResponse(problem)) => {
            assert_eq!(problem.status().as_u16(), 404);
            assert!(!problem.detail.is_empty(), "{problem:?}");
        }
        other => panic!("expected a 404 Problem, got {other:?}"),
    }

    // The caller's notifications: the registration mail reaches the customer.
    let inbox = notification::Client::new_with_client(&url("notification"), http(Some(&token)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let notes = loop {
        let page = inbox
            .list_notifications(None, None, None, None)
            .await
            .unwrap()
            .into_inner();
        if !page.items.is_empty() || tokio::time::Instant::now() > deadline {
            break page.items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!notes.is_empty(), "no notification for the customer");
    assert!(notes.iter().all(|n| n.recipient == email), "{notes:?}");
}
