//! The Consul implementations of [`Discovery`] and [`ConfigSource`], over consulrs.

use std::time::Duration;

use async_trait::async_trait;
use consulrs::api::Features;
use consulrs::api::check::common::AgentServiceCheckBuilder;
use consulrs::api::features::{Blocking, FeaturedEndpoint};
use consulrs::api::kv::requests::{ReadKeyRequest, SetKeyRequest};
use consulrs::api::service::requests::RegisterServiceRequestBuilder;
use consulrs::client::{ConsulClient, ConsulClientSettingsBuilder};
use consulrs::error::ClientError;
use rustify_derive::Endpoint;
use serde::Deserialize;

use crate::config::{ConfigError, ConfigSource, KvPair, Watched};
use crate::discovery::{Discovery, DiscoveryError, Instance, Registration, Resolved};

/// A client of one Consul agent (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`).
pub struct Consul {
    client: ConsulClient,
}

impl Consul {
    pub fn new(address: &str, token: Option<String>) -> Result<Self, DiscoveryError> {
        let mut settings = ConsulClientSettingsBuilder::default();
        settings.address(address.trim_end_matches('/').to_owned());
        if let Some(token) = token {
            settings.token(token);
        }
        let settings = settings
            .build()
            .map_err(|e| DiscoveryError::Refused(e.to_string()))?;
        let client =
            ConsulClient::new(settings).map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        Ok(Self { client })
    }

    /// From `CONSUL_HTTP_ADDR` (and `CONSUL_HTTP_TOKEN`), when set.
    pub fn from_env() -> Option<Result<Self, DiscoveryError>> {
        let addr = std::env::var("CONSUL_HTTP_ADDR").ok()?;
        let addr = if addr.starts_with("http") {
            addr
        } else {
            format!("http://{addr}")
        };
        Some(Self::new(&addr, std::env::var("CONSUL_HTTP_TOKEN").ok()))
    }
}

fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

fn blocking(index: u64, wait: Duration) -> Option<Features> {
    (index > 0).then(|| Features {
        blocking: Some(Blocking {
            index,
            wait: Some(go_duration(wait)),
        }),
        ..Default::default()
    })
}

/// How long the answer to a query may take before its connection is taken for dead: Consul
/// holds a blocking query for its wait plus up to a sixteenth of it (its jitter), and this
/// margin covers the rest. consulrs's HTTP client sets no limit of its own, so a connection
/// lost without a reset (a partition, a NAT entry dropped) would hold a watch for good.
fn answer_limit(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(2)
}

/// `query`, or an error once it has taken longer than [`answer_limit`] of `wait`.
async fn answered<T>(wait: Duration, query: impl Future<Output = T>) -> Result<T, String> {
    let limit = answer_limit(wait);
    tokio::time::timeout(limit, query)
        .await
        .map_err(|_| format!("Consul did not answer within {limit:?}"))
}

fn parse_index(index: Option<&String>) -> u64 {
    index.and_then(|i| i.parse().ok()).unwrap_or(0)
}

fn is_not_found(err: &ClientError) -> bool {
    matches!(err, ClientError::APIError { code: 404, .. })
}

/// consulrs has no `/v1/health/service/:name`, the lookup that filters on passing checks,
/// so it is added here in consulrs' own style: a rustify endpoint run through its client.
#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "health/service/{self.service}", response = "Vec<ServiceEntry>")]
struct HealthServiceRequest {
    #[endpoint(skip)]
    features: Option<Features>,
    #[endpoint(skip)]
    service: String,
    #[endpoint(query)]
    passing: Option<bool>,
}

impl FeaturedEndpoint for HealthServiceRequest {
    fn features(&self) -> Option<Features> {
        self.features.clone()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: NodeEntry,
    service: ServiceInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeEntry {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceInfo {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
}

impl From<ServiceEntry> for Instance {
    fn from(e: ServiceEntry) -> Self {
        // Consul leaves the service address empty when it is the node's.
        let address = if e.service.address.is_empty() {
            e.node.address
        } else {
            e.service.address
        };
        Instance {
            id: e.service.id,
            address,
            port: e.service.port,
        }
    }
}

impl Consul {
    async fn health(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Resolved, DiscoveryError> {
        let endpoint = HealthServiceRequest {
            features: blocking(index, wait),
            service: service.to_owned(),
            passing: Some(true),
        };
        let res = answered(
            wait,
            consulrs::api::exec_with_result(&self.client, endpoint),
        )
        .await
        .map_err(DiscoveryError::Unreachable)?
        .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        let mut instances: Vec<Instance> = res.response.into_iter().map(Instance::from).collect();
        instances.sort();
        Ok(Resolved {
            index: parse_index(res.index.as_ref()),
            instances,
        })
    }
}

#[async_trait]
impl Discovery for Consul {
    async fn register(&self, r: &Registration) -> Result<(), DiscoveryError> {
        let check = AgentServiceCheckBuilder::default()
            .name(format!("{} health", r.service))
            .http(format!("http://{}:{}{}", r.address, r.port, r.health_path))
            .interval(go_duration(r.check_interval))
            .timeout("2s")
            .deregister_critical_service_after(go_duration(r.deregister_after))
            .build()
            .map_err(|e| DiscoveryError::Refused(e.to_string()))?;
        let mut opts = RegisterServiceRequestBuilder::default();
        opts.id(r.id.clone())
            .address(r.address.clone())
            .port(u64::from(r.port))
            .check(check);
        consulrs::service::register(&self.client, &r.service, Some(&mut opts))
            .await
            .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError> {
        match consulrs::service::deregister(&self.client, instance_id, None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DiscoveryError::Unreachable(e.to_string())),
        }
    }

    async fn resolve(&self, service: &str) -> Result<Vec<Instance>, DiscoveryError> {
        Ok(self.health(service, 0, Duration::ZERO).await?.instances)
    }

    async fn watch(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Resolved, DiscoveryError> {
        self.health(service, index, wait).await
    }
}

impl Consul {
    async fn read_prefix(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Watched, ConfigError> {
        let endpoint = ReadKeyRequest {
            features: blocking(index, wait),
            key: prefix.to_owned(),
            recurse: Some(true),
            ..Default::default()
        };
        let answer = answered(
            wait,
            consulrs::api::exec_with_result(&self.client, endpoint),
        )
        .await
        .map_err(ConfigError::Unreachable)?;
        match answer {
            Ok(res) => {
                let mut pairs = Vec::new();
                for kv in res.response {
                    let value: String = match kv.value {
                        Some(v) => v
                            .try_into()
                            .map_err(|e: ClientError| ConfigError::Unreachable(e.to_string()))?,
                        None => String::new(),
                    };
                    pairs.push(KvPair { key: kv.key, value });
                }
                pairs.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(Watched {
                    index: parse_index(res.index.as_ref()),
                    pairs,
                })
            }
            // Consul answers 404 for a prefix with no keys; consulrs drops its index header,
            // so a watch of an empty prefix degrades to polling every `wait`.
            Err(e) if is_not_found(&e) => {
                if index > 0 {
                    tokio::time::sleep(wait).await;
                }
                Ok(Watched {
                    index: index.max(1),
                    pairs: Vec::new(),
                })
            }
            Err(e) => Err(ConfigError::Unreachable(e.to_string())),
        }
    }
}

#[async_trait]
impl ConfigSource for Consul {
    async fn get(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let pairs = self.read_prefix(key, 0, Duration::ZERO).await?.pairs;
        Ok(pairs.into_iter().find(|p| p.key == key).map(|p| p.value))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>, ConfigError> {
        Ok(self.read_prefix(prefix, 0, Duration::ZERO).await?.pairs)
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let endpoint = SetKeyRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        consulrs::api::exec_with_result(&self.client, endpoint)
            .await
            .map_err(|e| ConfigError::Unreachable(e.to_string()))?;
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Watched, ConfigError> {
        self.read_prefix(prefix, index, wait).await
    }
}
