//! The composition root of a local run: every service and the gateway in one process, found
//! through the in-process registry, configured from the KV seed files under `consul/`.

use base64::Engine;
use platform::auth::{Role, SigningKey};
use platform::boot::{self, Environment};
use platform::config::{ConfigSource, LocalConfig, Settings, default_seed_path};
use platform::{CancellationToken, runtime};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    platform::telemetry::init();
    let config = LocalConfig::from_seed(&default_seed_path())?;
    let signing_pem = boot::dev_signing_key()?;
    let key = SigningKey::from_pem(&signing_pem)?;
    config
        .set("micromart/users/jwt_signing_key", &signing_pem)
        .await?;
    config
        .set("micromart/shared/jwt_public_keys", &key.jwks())
        .await?;
    let env = Environment::local(config);
    let shutdown = CancellationToken::new();
    let mut urls: Vec<(String, String)> = Vec::new();

    // users
    let settings = Settings::load(env.config.as_ref(), users::SERVICE).await?;
    let (state, app) = users::app(users::UsersConfig::from_settings(&settings)?).await?;
    let mut tasks = state.background().spawn(&shutdown);
    let bind: String = settings.get_or("http_bind", "0.0.0.0:0".to_owned())?;
    let advertise: String = settings.get_or("advertise_address", "127.0.0.1".to_owned())?;
    let serving = runtime::serve(
        users::SERVICE,
        app,
        &bind,
        &advertise,
        env.discovery.clone(),
        shutdown.clone(),
    )
    .await?;
    urls.push((
        users::SERVICE.into(),
        format!("http://127.0.0.1:{}", serving.addr.port()),
    ));
    let demo = seed_demo_accounts(&state).await?;
    let mut servers = vec![serving];

    print_banner(&urls, &demo);
    runtime::termination_signal().await;
    eprintln!("stopping…");
    shutdown.cancel();
    for s in servers.drain(..) {
        s.task.await.ok();
    }
    for t in tasks.drain(..) {
        t.await.ok();
    }
    Ok(())
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

fn print_banner(urls: &[(String, String)], demo: &[DemoAccount]) {
    println!();
    println!("MicroMart is running. Ctrl-C stops it.");
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
    if let Some((_, users)) = urls.iter().find(|(n, _)| n == "users") {
        println!(
            "  try: curl -s -X POST {users}/api/v1/users/login -H 'content-type: application/json' \\"
        );
        println!(
            "         -d '{{\"email\": \"customer@micromart.local\", \"password\": \"{}\"}}'",
            demo[1].password
        );
    }
    println!();
}
