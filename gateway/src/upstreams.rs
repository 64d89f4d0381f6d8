//! The healthy instances of each upstream, kept fresh by discovery watches, and picked
//! round-robin. Each is kept as the authority and Host header requests to it carry, parsed
//! once per change instead of once per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use platform::CancellationToken;
use platform::discovery::{Discovery, Instance};
use poem::http::HeaderValue;
use poem::http::uri::Authority;

/// Where a request to one instance goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub authority: Authority,
    /// The Host header for it.
    pub host: HeaderValue,
}

impl Target {
    fn of(instance: &Instance) -> Result<Self, poem::http::Error> {
        let authority = Authority::try_from(instance.authority())?;
        let host = HeaderValue::from_str(authority.as_str())?;
        Ok(Self { authority, host })
    }
}

/// The instances of one service, and where its round-robin stands. Each service turns its
/// own: with one counter for all, a client alternating between two services would send each
/// to the same instance every time.
struct Instances {
    targets: Vec<Target>,
    next: AtomicUsize,
}

#[derive(Clone)]
pub struct Upstreams {
    discovery: Arc<dyn Discovery>,
    instances: Arc<RwLock<foldhash::HashMap<String, Arc<Instances>>>>,
}

impl Upstreams {
    pub fn new(discovery: Arc<dyn Discovery>) -> Self {
        Self {
            discovery,
            instances: Arc::default(),
        }
    }

    /// The next instance of `service`, round-robin; None when none is healthy.
    pub fn pick(&self, service: &str) -> Option<Target> {
        self.pick_other(service, &[])
    }

    /// The next instance of `service`, round-robin, that is not one of `tried`; None when
    /// every healthy one has been.
    pub fn pick_other(&self, service: &str, tried: &[Authority]) -> Option<Target> {
        let instances = self.instances.read().expect("upstreams lock poisoned");
        let of = instances.get(service)?;
        let n = of.targets.len();
        let start = of.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &of.targets[(start + i) % n])
            .find(|t| !tried.iter().any(|a| a.as_str() == t.authority.as_str()))
            .cloned()
    }

    /// How many healthy instances of `service` are known.
    pub fn count(&self, service: &str) -> usize {
        self.instances
            .read()
            .expect("upstreams lock poisoned")
            .get(service)
            .map_or(0, |of| of.targets.len())
    }

    fn set(&self, service: &str, instances: Vec<Instance>) {
        let targets = instances
            .iter()
            .filter_map(|instance| {
                Target::of(instance)
                    .inspect_err(|e| {
                        tracing::warn!(service, instance = %instance.id, error = %e, "instance address is not a valid authority; skipped");
                    })
                    .ok()
            })
            .collect();
        self.instances
            .write()
            .expect("upstreams lock poisoned")
            .insert(
                service.to_owned(),
                Arc::new(Instances {
                    targets,
                    next: AtomicUsize::new(0),
                }),
            );
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
