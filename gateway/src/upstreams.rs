//! The healthy instances of each upstream, kept fresh by discovery watches, and picked
//! round-robin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use platform::CancellationToken;
use platform::discovery::{Discovery, Instance};

#[derive(Clone)]
pub struct Upstreams {
    discovery: Arc<dyn Discovery>,
    instances: Arc<RwLock<HashMap<String, Arc<Vec<Instance>>>>>,
    next: Arc<AtomicUsize>,
}

impl Upstreams {
    pub fn new(discovery: Arc<dyn Discovery>) -> Self {
        Self {
            discovery,
            instances: Arc::default(),
            next: Arc::default(),
        }
    }

    /// The next instance of `service`, round-robin; None when none is healthy.
    pub fn pick(&self, service: &str) -> Option<Instance> {
        let all = self.instances(service);
        if all.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(all[i % all.len()].clone())
    }

    pub fn instances(&self, service: &str) -> Arc<Vec<Instance>> {
        self.instances
            .read()
            .expect("upstreams lock poisoned")
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    fn set(&self, service: &str, instances: Vec<Instance>) {
        self.instances
            .write()
            .expect("upstreams lock poisoned")
            .insert(service.to_owned(), Arc::new(instances));
    }

    /// Follows `service` with blocking queries until cancelled: a new or dead instance is
    /// seen as soon as discovery knows it.
    pub async fn follow(self, service: &'static str, wait: Duration, shutdown: CancellationToken) {
        let mut index = 0;
        loop {
            let next = tokio::select! {
                r = self.discovery.watch(service, index, wait) => r,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Ok(resolved) => {
                    // An index that goes backwards means discovery restarted: start over.
                    index = if resolved.index < index {
                        0
                    } else {
                        resolved.index
                    };
                    self.set(service, resolved.instances);
                }
                Err(err) => {
                    tracing::warn!(service, error = %err, "discovery watch failed; retrying");
                    index = 0;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}
