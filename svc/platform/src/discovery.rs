//! Service discovery: one trait, Consul in deployments, an in-process registry locally.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery unreachable: {0}")]
    Unreachable(String),
    #[error("discovery refused the request: {0}")]
    Refused(String),
}

/// What a service instance tells discovery about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Unique per instance, e.g. `users-<uuid>`.
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    /// Path of the HTTP health check, polled by Consul.
    pub health_path: String,
    pub check_interval: Duration,
    /// Consul removes an instance whose check stayed critical this long.
    pub deregister_after: Duration,
}

impl Registration {
    pub fn new(service: &str, address: &str, port: u16) -> Self {
        Self {
            id: format!("{service}-{}", uuid::Uuid::new_v4()),
            service: service.to_owned(),
            address: address.to_owned(),
            port,
            health_path: "/health".to_owned(),
            check_interval: Duration::from_secs(5),
            deregister_after: Duration::from_secs(60),
        }
    }
}

/// A healthy instance to send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub port: u16,
}

impl Instance {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority())
    }

    /// `host:port`, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// The answer of a blocking resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub index: u64,
    pub instances: Vec<Instance>,
}

#[async_trait]
pub trait Discovery: Send + Sync {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError>;
    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError>;
    /// The instances of `service` whose health checks pass, sorted by id.
    async fn resolve(&self, service: &str) -> Result<Vec<Instance>, DiscoveryError>;
    /// Waits until the healthy instances of `service` changed after `index`, or `wait`
    /// elapsed (a Consul blocking query); `index` 0 answers at once.
    async fn watch(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Resolved, DiscoveryError>;
}

/// An in-process registry shared by every service running in the same process.
#[derive(Clone)]
pub struct LocalDiscovery {
    services: Arc<Mutex<BTreeMap<String, BTreeMap<String, Instance>>>>,
    index: Arc<watch::Sender<u64>>,
}

impl Default for LocalDiscovery {
    fn default() -> Self {
        Self {
            services: Arc::default(),
            index: Arc::new(watch::channel(1).0),
        }
    }
}

impl LocalDiscovery {
    pub fn new() -> Self {
        Self::default()
    }

    fn instances(&self, service: &str) -> Vec<Instance> {
        self.services
            .lock()
            .expect("registry lock poisoned")
            .get(service)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Discovery for LocalDiscovery {
    async fn register(&self, r: &Registration) -> Result<(), DiscoveryError> {
        self.services
            .lock()
            .expect("registry lock poisoned")
            .entry(r.service.clone())
            .or_default()
            .insert(
                r.id.clone(),
                Instance {
                    id: r.id.clone(),
                    address: r.address.clone(),
                    port: r.port,
                },
            );
        self.index.send_modify(|i| *i += 1);
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError> {
        let removed = self
            .services
            .lock()
            .expect("registry lock poisoned")
            .values_mut()
            .any(|m| m.remove(instance_id).is_some());
        if removed {
            self.index.send_modify(|i| *i += 1);
        }
        Ok(())
    }

    async fn resolve(&self, service: &str) -> Result<Vec<Instance>, DiscoveryError> {
        Ok(self.instances(service))
    }

    async fn watch(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Resolved, DiscoveryError> {
        let mut rx = self.index.subscribe();
        let before = self.instances(service);
        let current = *rx.borrow_and_update();
        if index == 0 || current > index {
            return Ok(Resolved {
                index: current,
                instances: before,
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    let now = self.instances(service);
                    let idx = *rx.borrow_and_update();
                    if now != before {
                        return Ok(Resolved {
                            index: idx,
                            instances: now,
                        });
                    }
                }
                _ => {
                    let idx = *rx.borrow();
                    return Ok(Resolved {
                        index: idx.max(index),
                        instances: before,
                    });
                }
            }
        }
    }
}

/// A registry of no use, for tests of what the servers do when discovery fails them: it
/// answers no call (`Hangs`), or refuses every one (`Refuses`).
#[cfg(test)]
pub(crate) enum BrokenRegistry {
    Hangs,
    Refuses,
}

#[cfg(test)]
impl BrokenRegistry {
    async fn fail<T>(&self) -> Result<T, DiscoveryError> {
        match self {
            Self::Hangs => std::future::pending().await,
            Self::Refuses => Err(DiscoveryError::Refused("this registry refuses".into())),
        }
    }
}

#[cfg(test)]
#[async_trait]
impl Discovery for BrokenRegistry {
    async fn register(&self, _: &Registration) -> Result<(), DiscoveryError> {
        self.fail().await
    }
    async fn deregister(&self, _: &str) -> Result<(), DiscoveryError> {
        self.fail().await
    }
    async fn resolve(&self, _: &str) -> Result<Vec<Instance>, DiscoveryError> {
        self.fail().await
    }
    async fn watch(&self, _: &str, _: u64, _: Duration) -> Result<Resolved, DiscoveryError> {
        self.fail().await
    }
}
