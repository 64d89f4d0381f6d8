//! A gateway for tests of this crate and of the whole shop: configured from the KV seed with
//! a test's overrides, its watches running, served on port 0 on its worker threads as the
//! binary serves it.

use std::sync::Arc;

use platform::CancellationToken;
use platform::config::{ConfigSource, LocalConfig, Settings, default_seed_path};
use platform::discovery::Discovery;
use platform::runtime::Serving;

use crate::{Gateway, GatewayConfig};

pub struct TestGateway {
    pub gateway: Gateway,
    /// The config it watches: a test changes live numbers through it.
    pub config: LocalConfig,
    pub serving: Serving,
}

/// Starts a gateway over `discovery` with `overrides` (keys under `micromart/gateway/`)
/// applied to the seed, until `stop`.
pub async fn start(
    discovery: Arc<dyn Discovery>,
    overrides: &[(&str, &str)],
    stop: &CancellationToken,
) -> TestGateway {
    let config = LocalConfig::from_seed(&default_seed_path()).expect("the KV seed loads");
    let (gateway, serving) =
        start_on_source(discovery, Arc::new(config.clone()), overrides, stop).await;
    TestGateway {
        gateway,
        config,
        serving,
    }
}

/// As [`start`], configured from `source` (Consul's KV, say) with `overrides` set in it.
pub async fn start_on_source(
    discovery: Arc<dyn Discovery>,
    source: Arc<dyn ConfigSource>,
    overrides: &[(&str, &str)],
    stop: &CancellationToken,
) -> (Gateway, Serving) {
    for (key, value) in overrides {
        source
            .set(&format!("micromart/gateway/{key}"), value)
            .await
            .expect("a gateway key can be set");
    }
    let settings = Settings::load(source.as_ref(), crate::SERVICE)
        .await
        .expect("the gateway's settings load");
    let gateway = Gateway::connect(
        GatewayConfig::from_settings(&settings).expect("the gateway's settings are valid"),
        discovery.clone(),
        source,
    )
    .await
    .expect("the gateway starts");
    gateway.background().spawn(stop);
    let serving = gateway
        .serve("127.0.0.1:0", "127.0.0.1", discovery, stop.clone())
        .await
        .expect("the gateway serves");
    (gateway, serving)
}
