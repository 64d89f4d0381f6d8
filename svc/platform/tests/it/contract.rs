//! One suite for `Discovery` and `ConfigSource`, run against every implementation: the local
//! one, Consul through the HTTP double, and a real Consul agent when `CONSUL_HTTP_ADDR` is set.

use std::sync::Arc;
use std::time::Duration;

use platform::config::{ConfigSource, KvPair, LocalConfig};
use platform::consul::Consul;
use platform::discovery::{Discovery, LocalDiscovery, Registration};
use platform::testing::TestServer;
use platform::testing::consul_double::ConsulDouble;
use poem::{Route, get, handler};

#[handler]
fn ok() -> &'static str {
    "ok"
}

/// A live `/health` for registrations to point their checks at.
pub async fn healthy_target() -> TestServer {
    TestServer::start(Route::new().at("/health", get(ok))).await
}

pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    platform::testing::eventually_within(Duration::from_secs(20), what, f).await;
}

pub async fn discovery_contract(d: Arc<dyn Discovery>) {
    let service = format!("contract-{}", uuid::Uuid::new_v4().simple());
    let target = healthy_target().await;
    assert!(
        d.resolve(&service).await.unwrap().is_empty(),
        "an unknown service has no instances"
    );

    let a = Registration::new(&service, "127.0.0.1", target.port());
    let b = Registration::new(&service, "127.0.0.1", target.port());
    d.register(&a).await.unwrap();
    d.register(&b).await.unwrap();
    eventually("both instances pass", || async {
        d.resolve(&service).await.unwrap().len() == 2
    })
    .await;
    let instances = d.resolve(&service).await.unwrap();
    let mut ids: Vec<_> = instances.iter().map(|i| i.id.clone()).collect();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        instances
            .iter()
            .all(|i| i.port == target.port() && i.address == "127.0.0.1")
    );

    // A blocking watch returns when the set changes.
    let now = d.watch(&service, 0, Duration::ZERO).await.unwrap();
    assert_eq!(now.instances.len(), 2);
    let d2 = d.clone();
    let b_id = b.id.clone();
    let remover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d2.deregister(&b_id).await.unwrap();
    });
    let changed = d
        .watch(&service, now.index, Duration::from_secs(10))
        .await
        .unwrap();
    remover.await.unwrap();
    assert!(changed.index > now.index, "the index moves on a change");
    assert_eq!(changed.instances.len(), 1);
    assert_eq!(changed.instances[0].id, a.id);

    // With nothing changing, the watch answers when its wait is over, with the same set.
    let started = tokio::time::Instant::now();
    let same = d
        .watch(&service, changed.index, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a watch without change waits"
    );
    assert_eq!(same.instances, changed.instances);

    d.deregister(&a.id).await.unwrap();
    d.deregister("never-registered").await.unwrap();
    assert!(d.resolve(&service).await.unwrap().is_empty());
}

pub async fn config_contract(c: Arc<dyn ConfigSource>) {
    let prefix = format!("micromart/contract-{}/", uuid::Uuid::new_v4().simple());
    assert_eq!(c.get(&format!("{prefix}missing")).await.unwrap(), None);
    assert!(c.list(&prefix).await.unwrap().is_empty());

    c.set(&format!("{prefix}b"), "two").await.unwrap();
    c.set(&format!("{prefix}a"), "one = ü").await.unwrap();
    c.set(&format!("{prefix}ab"), "").await.unwrap();
    assert_eq!(
        c.get(&format!("{prefix}a")).await.unwrap().as_deref(),
        Some("one = ü")
    );
    assert_eq!(
        c.get(&format!("{prefix}ab")).await.unwrap().as_deref(),
        Some("")
    );
    let listed = c.list(&prefix).await.unwrap();
    assert_eq!(
        listed,
        vec![
            KvPair {
                key: format!("{prefix}a"),
                value: "one = ü".into()
            },
            KvPair {
                key: format!("{prefix}ab"),
                value: "".into()
            },
            KvPair {
                key: format!("{prefix}b"),
                value: "two".into()
            },
        ]
    );

    let now = c.watch(&prefix, 0, Duration::ZERO).await.unwrap();
    assert_eq!(now.pairs, listed);
    let c2 = c.clone();
    let key = format!("{prefix}b");
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.set(&key, "three").await.unwrap();
    });
    let changed = c
        .watch(&prefix, now.index, Duration::from_secs(10))
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(changed.index > now.index);
    assert_eq!(changed.pairs.last().unwrap().value, "three");
}

#[tokio::test]
async fn local_discovery_meets_the_contract() {
    discovery_contract(Arc::new(LocalDiscovery::new())).await;
}

#[tokio::test]
async fn consul_discovery_meets_the_contract_against_the_double() {
    let double = ConsulDouble::start().await;
    discovery_contract(Arc::new(Consul::new(&double.url(), None).unwrap())).await;
}

#[tokio::test]
async fn local_config_meets_the_contract() {
    config_contract(Arc::new(LocalConfig::empty())).await;
}

#[tokio::test]
async fn consul_config_meets_the_contract_against_the_double() {
    let double = ConsulDouble::start().await;
    config_contract(Arc::new(Consul::new(&double.url(), None).unwrap())).await;
}

/// The one allowed skip: a real agent is not installable on our machines.
#[tokio::test]
async fn consul_meets_the_contract_against_a_real_agent() {
    let Some(consul) = Consul::from_env() else {
        eprintln!(
            "SKIPPED consul_meets_the_contract_against_a_real_agent: CONSUL_HTTP_ADDR is not set"
        );
        return;
    };
    let consul = Arc::new(consul.expect("CONSUL_HTTP_ADDR names a usable agent"));
    discovery_contract(consul.clone()).await;
    config_contract(consul).await;
}
