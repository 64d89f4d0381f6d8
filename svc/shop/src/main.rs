//! The composition root of a local run: every service and the gateway in one process, found
//! through the in-process registry, configured from the KV seed files under `consul/`.

use base64::Engine;
use platform::auth::{Role, SigningKey};
use platform::boot::{self, Environment};
use platform::config::{ConfigSource, LocalConfig, Settings, default_seed_path};
use platform::{CancellationToken, runtime};

// The gateway's allocator (see gateway/src/main.rs): the gateway runs in this process too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    platform::boot::init_process();
    let config = LocalConfig::from_seed(&default_seed_path())?;
    let signing_pem = boot::dev_signing_key()?;
    let key = SigningKey::from_pem(&signing_pem)?;
    config
        .set("micromart/users/jwt_signing_key", &signing_pem)
        .await?;
    config
        .set("micromart/shared/jwt_public_keys", &key.jwks())
        .await?;
    config
        .set(
            "micromart/shared/internal_token",
            &boot::dev_internal_token()?,
        )
        .await?;
    config
        .set(
            "micromart/payment/webhook_secret",
            &boot::dev_random_secret("payment-webhook-secret")?,
        )
        .await?;
    let env = Environment::local(config);
    let shutdown = CancellationToken::new();
    let mut running = Running::default();

    let settings = env.settings(users::SERVICE).await?;
    let (users_state, app) = users::app(users::UsersConfig::from_settings(&settings)?).await?;
    running
        .start(
            &env,
            users::SERVICE,
            app,
            users_state.background(),
            &settings,
            "0.0.0.0:0",
            &shutdown,
        )
        .await?;

    let settings = env.settings(products::SERVICE).await?;
    let (products_state, app) = products::app(
        products::ProductsConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            products::SERVICE,
            app,
            products_state.background(),
            &settings,
            "0.0.0.0:7016",
            &shutdown,
        )
        .await?;

    let settings = env.settings(inventory::SERVICE).await?;
    let (inventory_state, app) = inventory::app(
        inventory::InventoryConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            inventory::SERVICE,
            app,
            inventory_state.background(),
            &settings,
            "0.0.0.0:7061",
            &shutdown,
        )
        .await?;

    let settings = env.settings(cart::SERVICE).await?;
    let (cart_state, app) = cart::app(
        cart::CartConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            cart::SERVICE,
            app,
            cart_state.background(),
            &settings,
            "0.0.0.0:7041",
            &shutdown,
        )
        .await?;

    let settings = env.settings(orders::SERVICE).await?;
    let (orders_state, app) = orders::app(
        orders::OrdersConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            orders::SERVICE,
            app,
            orders_state.background(),
            &settings,
            "0.0.0.0:7063",
            &shutdown,
        )
        .await?;

    let settings = env.settings(payment::SERVICE).await?;
    let (payment_state, app) = payment::app(
        payment::PaymentConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            payment::SERVICE,
            app,
            payment_state.background(),
            &settings,
            "0.0.0.0:7007",
            &shutdown,
        )
        .await?;

    // A run on one's own machine: emails and SMS with no server to go to are logged whole,
    // links included, for the one person who runs it to follow.
    let settings = env
        .settings(notification::SERVICE)
        .await?
        .with("log_message_bodies", "true");
    let (notification_state, app) = notification::app(
        notification::NotificationConfig::from_settings(&settings)?,
        env.discovery.clone(),
    )
    .await?;
    running
        .start(
            &env,
            notification::SERVICE,
            app,
            notification_state.background(),
            &settings,
            "0.0.0.0:7050",
            &shutdown,
        )
        .await?;

    let settings = env.settings(gateway::SERVICE).await?;
    let gateway_state = gateway::Gateway::connect(
        gateway::GatewayConfig::from_settings(&settings)?,
        env.discovery.clone(),
        env.config.clone(),
    )
    .await?;
    // On worker threads of its own, as the gateway binary serves.
    running
        .start_with(
            &env,
            gateway::SERVICE,
            gateway_state.background(),
            &settings,
            "0.0.0.0:7082",
            &shutdown,
            async |bind, advertise, discovery, shutdown| {
                gateway_state
                    .serve(&bind, &advertise, discovery, shutdown)
                    .await
            },
        )
        .await?;

    let demo = seed_demo_accounts(&users_state).await?;
    let catalog = products::demo::seed_catalog(&products_state).await?;
    let ids: Vec<uuid::Uuid> = catalog.iter().map(|(id, _)| *id).collect();
    inventory::demo::seed_stock(&inventory_state, &ids).await?;

    write_run_file(&running.urls, &demo)?;
    print_banner(&running.urls, &demo, catalog.len());
    runtime::termination_signal().await;
    eprintln!("stopping…");
    shutdown.cancel();
    for s in running.servers.drain(..) {
        s.task.await.ok();
    }
    for t in running.tasks.drain(..) {
        t.await.ok();
    }
    Ok(())
}

/// What the supervisor started.
#[derive(Default)]
struct Running {
    urls: Vec<(String, String)>,
    servers: Vec<runtime::Serving>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    #[allow(clippy::too_many_arguments)]
    async fn start<E>(
        &mut self,
        env: &Environment,
        service: &str,
        app: E,
        background: runtime::Background,
        settings: &Settings,
        default_bind: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), BoxError>
    where
        E: poem::IntoEndpoint,
        E::Endpoint: 'static,
    {
        self.start_with(
            env,
            service,
            background,
            settings,
            default_bind,
            shutdown,
            async |bind, advertise, discovery, shutdown| {
                runtime::serve(service, app, &bind, &advertise, discovery, shutdown).await
            },
        )
        .await
    }

    /// [`Running::start`] with the server started by `serve(bind, advertise, discovery,
    /// shutdown)`.
    #[allow(clippy::too_many_arguments)]
    async fn start_with(
        &mut self,
        env: &Environment,
        service: &str,
        background: runtime::Background,
        settings: &Settings,
        default_bind: &str,
        shutdown: &CancellationToken,
        serve: impl AsyncFnOnce(
            String,
            String,
            std::sync::Arc<dyn platform::discovery::Discovery>,
            CancellationToken,
        ) -> Result<runtime::Serving, runtime::ServeError>,
    ) -> Result<(), BoxError> {
        let bind: String = settings.get_or("http_bind", default_bind.to_owned())?;
        let advertise: String = settings.get_or("advertise_address", "127.0.0.1".to_owned())?;
        self.tasks.extend(background.spawn(shutdown));
        let serving = serve(bind, advertise, env.discovery.clone(), shutdown.clone()).await?;
        self.urls.push((
            service.to_owned(),
            format!("http://127.0.0.1:{}", serving.addr.port()),
        ));
        self.servers.push(serving);
        Ok(())
    }
}

struct DemoAccount {
    email: &'static str,
    password: String,
    role: &'static str,
}

/// A demo admin and customer whose passwords are generated at first start and kept under
/// `$MICROMART_HOME`, never in the repository.
async fn seed_demo_accounts(state: &users::Users) -> Result<Vec<DemoAccount>, BoxError> {
    let path = boot::home().join("demo-accounts");
    let passwords: Vec<String> = match std::fs::read_to_string(&path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => {
            let fresh: Vec<String> = (0..2)
                .map(|_| {
                    let mut bytes = [0u8; 12];
                    rand::fill(&mut bytes);
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                })
                .collect();
            boot::write_private(&path, &fresh.join("\n"))?;
            fresh
        }
    };
    let accounts = vec![
        DemoAccount {
            email: "admin@micromart.local",
            password: passwords[0].clone(),
            role: "ADMIN",
        },
        DemoAccount {
            email: "customer@micromart.local",
            password: passwords[1].clone(),
            role: "CUSTOMER",
        },
    ];
    for a in &accounts {
        let role = Role::parse(a.role).expect("a known role");
        users::demo::ensure_account(state, a.email, &a.password, "Demo", &[role]).await?;
    }
    Ok(accounts)
}

fn print_banner(urls: &[(String, String)], demo: &[DemoAccount], products: usize) {
    println!();
    println!("MicroMart is running with a demo catalog of {products} products. Ctrl-C stops it.");
    println!();
    for (name, url) in urls {
        println!("  {name:<13} {url:<28} Swagger UI: {url}/docs");
    }
    println!();
    for a in demo {
        println!(
            "  demo {:<8} {} / {}",
            a.role.to_lowercase(),
            a.email,
            a.password
        );
    }
    println!();
    // Customers and front ends use the gateway, not the services' own addresses.
    if let Some((_, gateway)) = urls.iter().find(|(n, _)| n == "gateway") {
        println!(
            "  try: curl -s -X POST {gateway}/api/v1/users/login -H 'content-type: application/json' \\"
        );
        println!(
            "         -d '{{\"email\": \"customer@micromart.local\", \"password\": \"{}\"}}'",
            demo[1].password
        );
    }
    println!();
}

/// `$MICROMART_HOME/shop.json`: where each service listens and the demo accounts, for
/// scripts (`scripts/bench`) to read instead of parsing the banner.
fn write_run_file(urls: &[(String, String)], demo: &[DemoAccount]) -> Result<(), BoxError> {
    let services: serde_json::Map<String, serde_json::Value> = urls
        .iter()
        .map(|(name, url)| (name.clone(), url.clone().into()))
        .collect();
    let accounts: serde_json::Map<String, serde_json::Value> = demo
        .iter()
        .map(|a| {
            (
                a.role.to_lowercase(),
                serde_json::json!({ "email": a.email, "password": a.password }),
            )
        })
        .collect();
    let doc = serde_json::json!({ "services": services, "demo": accounts });
    boot::write_private_replacing(&boot::home().join("shop.json"), &doc.to_string())?;
    Ok(())
}
