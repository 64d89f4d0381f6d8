//! Central configuration: one trait, read from Consul KV in deployments and from the same
//! KV seed files (`consul/kv.json`, in `consul kv import` format) in local runs and tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Every key lives under this root, then the service name (or `shared`).
pub const ROOT: &str = "micromart";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config source unreachable: {0}")]
    Unreachable(String),
    #[error("the KV seed {path} cannot be read: {reason}")]
    Seed { path: PathBuf, reason: String },
    #[error("config key {key} is missing")]
    Missing { key: String },
    #[error("config key {key} has an invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: String,
}

/// The answer of a blocking read: the index to pass to the next call and the pairs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub index: u64,
    pub pairs: Vec<KvPair>,
}

#[async_trait]
pub trait ConfigSource: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, ConfigError>;
    /// Every pair whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>, ConfigError>;
    async fn set(&self, key: &str, value: &str) -> Result<(), ConfigError>;
    /// Waits until something under `prefix` changed after `index`, or `wait` elapsed
    /// (a Consul blocking query); `index` 0 answers at once.
    async fn watch(&self, prefix: &str, index: u64, wait: Duration)
    -> Result<Watched, ConfigError>;
}

/// One entry of the `consul kv import` format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedEntry {
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    /// Base64, as `consul kv export` writes it.
    pub value: String,
}

/// Reads a KV seed file in `consul kv import` format.
pub fn read_seed(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let seed_err = |reason: String| ConfigError::Seed {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| seed_err(e.to_string()))?;
    let entries: Vec<SeedEntry> =
        serde_json::from_str(&text).map_err(|e| seed_err(e.to_string()))?;
    entries
        .into_iter()
        .map(|e| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&e.value)
                .map_err(|err| seed_err(format!("{}: {err}", e.key)))?;
            let value =
                String::from_utf8(bytes).map_err(|err| seed_err(format!("{}: {err}", e.key)))?;
            Ok((e.key, value))
        })
        .collect()
}

/// The seed shipped in the repository.
pub fn default_seed_path() -> PathBuf {
    if let Ok(p) = std::env::var("MICROMART_KV_SEED") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../consul/kv.json")
}

/// The environment variable that overrides a key: `micromart/users/http_port` →
/// `MICROMART_USERS_HTTP_PORT`.
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

struct LocalState {
    seed: BTreeMap<String, String>,
    overrides: BTreeMap<String, String>,
    seed_modified: Option<SystemTime>,
}

/// Local config: the KV seed file, overridden by environment variables, then by values
/// set in-process. The seed file is re-read when it changes.
#[derive(Clone)]
pub struct LocalConfig {
    state: Arc<RwLock<LocalState>>,
    index: Arc<watch::Sender<u64>>,
    seed_path: Option<PathBuf>,
}

impl LocalConfig {
    pub fn from_seed(path: &Path) -> Result<Self, ConfigError> {
        let seed = read_seed(path)?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self::build(seed, Some(path.to_owned()), modified))
    }

    /// A source with no seed file: only what is set in-process (and the environment).
    pub fn empty() -> Self {
        Self::build(BTreeMap::new(), None, None)
    }

    fn build(
        seed: BTreeMap<String, String>,
        seed_path: Option<PathBuf>,
        modified: Option<SystemTime>,
    ) -> Self {
        Self {
            state: Arc::new(RwLock::new(LocalState {
                seed,
                overrides: BTreeMap::new(),
                seed_modified: modified,
            })),
            index: Arc::new(watch::channel(1).0),
            seed_path,
        }
    }

    fn lookup(state: &LocalState, key: &str) -> Option<String> {
        state
            .overrides
            .get(key)
            .cloned()
            .or_else(|| std::env::var(env_name(key)).ok())
            .or_else(|| state.seed.get(key).cloned())
    }

    fn snapshot(&self, prefix: &str) -> Vec<KvPair> {
        let state = self.state.read().expect("config lock poisoned");
        let mut keys: Vec<&String> = state
            .seed
            .keys()
            .chain(state.overrides.keys())
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                Self::lookup(&state, k).map(|value| KvPair {
                    key: k.clone(),
                    value,
                })
            })
            .collect()
    }

    /// Re-reads the seed file if it changed on disk; bumps the index when it did.
    pub fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let Some(path) = &self.seed_path else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified
            == self
                .state
                .read()
                .expect("config lock poisoned")
                .seed_modified
        {
            return Ok(false);
        }
        let seed = read_seed(path)?;
        {
            let mut state = self.state.write().expect("config lock poisoned");
            state.seed = seed;
            state.seed_modified = modified;
        }
        self.index.send_modify(|i| *i += 1);
        Ok(true)
    }

    /// Polls the seed file so that an edit applies without a restart.
    pub fn spawn_file_watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = this.reload_if_changed() {
                    tracing::warn!(error = %err, "the KV seed changed but cannot be read; keeping the previous values");
                }
            }
        })
    }
}

#[async_trait]
impl ConfigSource for LocalConfig {
    async fn get(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let state = self.state.read().expect("config lock poisoned");
        Ok(Self::lookup(&state, key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>, ConfigError> {
        Ok(self.snapshot(prefix))
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.state
            .write()
            .expect("config lock poisoned")
            .overrides
            .insert(key.to_owned(), value.to_owned());
        self.index.send_modify(|i| *i += 1);
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Watched, ConfigError> {
        let mut rx = self.index.subscribe();
        let before = self.snapshot(prefix);
        let current = *rx.borrow_and_update();
        if index == 0 || current > index {
            return Ok(Watched {
                index: current,
                pairs: before,
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Like Consul, only answer early when something under this prefix really changed.
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    let now = self.snapshot(prefix);
                    let idx = *rx.borrow_and_update();
                    if now != before {
                        return Ok(Watched {
                            index: idx,
                            pairs: now,
                        });
                    }
                }
                _ => {
                    let idx = *rx.borrow();
                    return Ok(Watched {
                        index: idx.max(index),
                        pairs: before,
                    });
                }
            }
        }
    }
}

/// The configuration of one service: `micromart/shared/*` overlaid by `micromart/<service>/*`,
/// keys relative to those prefixes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub service: String,
    values: BTreeMap<String, String>,
}

impl Settings {
    pub async fn load(source: &dyn ConfigSource, service: &str) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        for scope in ["shared", service] {
            let prefix = format!("{ROOT}/{scope}/");
            for pair in source.list(&prefix).await? {
                values.insert(pair.key[prefix.len()..].to_owned(), pair.value);
            }
            // The environment overrides whatever the source says, Consul's KV included, and
            // can add keys the source lacks (secrets rendered by a Nomad template).
            let env_prefix = env_name(&prefix);
            for (name, value) in std::env::vars() {
                if let Some(key) = name.strip_prefix(&env_prefix)
                    && !key.is_empty()
                {
                    values.insert(key.to_ascii_lowercase(), value);
                }
            }
        }
        Ok(Self {
            service: service.to_owned(),
            values,
        })
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.values.insert(key.to_owned(), value.into());
        self
    }

    pub fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{ROOT}/{}/{key}", self.service)
    }

    pub fn require<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(key).ok_or_else(|| ConfigError::Missing {
            key: self.full_key(key),
        })?;
        raw.trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                key: self.full_key(key),
                value: raw.to_owned(),
                reason: e.to_string(),
            })
    }

    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(_) => self.require(key),
        }
    }

    pub fn seconds(&self, key: &str, default: u64) -> Result<Duration, ConfigError> {
        self.get_or(key, default).map(Duration::from_secs)
    }

    pub fn millis(&self, key: &str, default: u64) -> Result<Duration, ConfigError> {
        self.get_or(key, default).map(Duration::from_millis)
    }
}
