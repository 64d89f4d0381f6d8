//! What only the Consul implementation does: the registration it sends, health-check
//! filtering, and reading the KV seed as imported into Consul.

use std::sync::Arc;
use std::time::Duration;

use platform::config::{ConfigSource, LocalConfig, Settings, default_seed_path};
use platform::consul::Consul;
use platform::discovery::{Discovery, Registration};
use platform::testing::consul_double::ConsulDouble;

use crate::contract::{eventually, healthy_target};

#[tokio::test]
async fn registration_carries_an_http_check_on_health_and_a_deregister_timeout() {
    let double = ConsulDouble::start().await;
    let consul = Consul::new(&double.url(), None).unwrap();
    let target = healthy_target().await;
    let reg = Registration::new("users", "127.0.0.1", target.port());
    consul.register(&reg).await.unwrap();
    let sent = double.registrations();
    assert_eq!(sent.len(), 1);
    let body = &sent[0];
    assert_eq!(body["ID"], reg.id.as_str());
    assert_eq!(body["Name"], "users");
    assert_eq!(body["Port"], target.port());
    assert_eq!(
        body["Check"]["HTTP"],
        format!("http://127.0.0.1:{}/health", target.port())
    );
    assert_eq!(body["Check"]["Interval"], "5s");
    assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "60s");
}

#[tokio::test]
async fn an_instance_whose_check_fails_is_no_longer_resolved() {
    let double = ConsulDouble::start().await;
    let consul = Consul::new(&double.url(), None).unwrap();
    let staying = healthy_target().await;
    let dying = healthy_target().await;
    consul
        .register(&Registration::new("cart", "127.0.0.1", staying.port()))
        .await
        .unwrap();
    consul
        .register(&Registration::new("cart", "127.0.0.1", dying.port()))
        .await
        .unwrap();
    eventually("both pass", || async {
        consul.resolve("cart").await.unwrap().len() == 2
    })
    .await;
    let before = Discovery::watch(&consul, "cart", 0, Duration::ZERO)
        .await
        .unwrap();
    dying.stop();
    let after = Discovery::watch(&consul, "cart", before.index, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(after.instances.len(), 1);
    assert_eq!(after.instances[0].port, staying.port());
}

#[tokio::test]
async fn the_kv_seed_imported_into_consul_reads_as_the_local_files_do() {
    let double = ConsulDouble::with_kv_seed().await;
    let consul: Arc<dyn ConfigSource> = Arc::new(Consul::new(&double.url(), None).unwrap());
    let local: Arc<dyn ConfigSource> =
        Arc::new(LocalConfig::from_seed(&default_seed_path()).unwrap());
    assert_eq!(
        consul.list("micromart/").await.unwrap(),
        local.list("micromart/").await.unwrap()
    );
    let from_consul = Settings::load(consul.as_ref(), "users").await.unwrap();
    let from_files = Settings::load(local.as_ref(), "users").await.unwrap();
    assert_eq!(
        from_consul.keys().collect::<Vec<_>>(),
        from_files.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        from_consul.raw("database_url"),
        from_files.raw("database_url")
    );
    assert_eq!(from_consul.raw("redis_url"), Some("redis://127.0.0.1:6379"));
}

#[tokio::test]
async fn a_consul_that_never_answers_fails_the_watches_after_their_wait() {
    // Accepts connections and never answers: as a connection lost without a reset looks.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let consul = Consul::new(&url, None).unwrap();
    let wait = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let config = ConfigSource::watch(&consul, "micromart/", 1, wait);
    fails_in_time(config).await;
    fails_in_time(Discovery::watch(&consul, "users", 1, wait)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= wait * 2,
        "each waited its wait first: {elapsed:?}"
    );
    held.abort();
}

/// Asserts that `watch` fails rather than waits for good (10 s, far past its limit).
async fn fails_in_time<T, E>(watch: impl Future<Output = Result<T, E>>) {
    let answered = tokio::time::timeout(Duration::from_secs(10), watch).await;
    assert!(answered.expect("not held").is_err());
}

#[test]
fn the_kv_seed_is_generated_from_the_documented_keys() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("consul/KEYS.md")).unwrap();
    let documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `")?;
            let (key, rest) = rest.split_once("` | `")?;
            let (value, _) = rest.split_once("` |")?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect();
    let seed = platform::config::read_seed(&root.join("consul/kv.json")).unwrap();
    let seeded: Vec<(String, String)> = seed.into_iter().collect();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    assert_eq!(
        seeded, documented_sorted,
        "run python3 consul/seed.py after editing consul/KEYS.md"
    );
}
