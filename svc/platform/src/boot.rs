//! How a service's main finds its config and discovery: Consul when `CONSUL_HTTP_ADDR` is
//! set, the local seed files and an in-process registry otherwise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::SigningKey;
use crate::config::{ConfigError, ConfigSource, LocalConfig, default_seed_path};
use crate::consul::Consul;
use crate::discovery::{Discovery, DiscoveryError, LocalDiscovery};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Io(String),
}

/// What every binary does first: structured logs, and as many open files as the system lets
/// it have (see [`raise_open_files_limit`]).
pub fn init_process() {
    crate::telemetry::init();
    match raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit now
/// in force. Debian's default soft limit, 1024, would cap a gateway at about 500 clients
/// (each proxied connection holds two sockets) while the hard limit is ~500k; nginx has
/// `worker_rlimit_nofile` for this, and Go's runtime raises it at start.
pub fn raise_open_files_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Where discovery and config come from.
pub struct Environment {
    pub config: Arc<dyn ConfigSource>,
    pub discovery: Arc<dyn Discovery>,
    pub local: bool,
}

impl Environment {
    pub fn from_env() -> Result<Self, BootError> {
        match Consul::from_env() {
            Some(consul) => {
                let consul = Arc::new(consul?);
                Ok(Self {
                    config: consul.clone(),
                    discovery: consul,
                    local: false,
                })
            }
            None => Ok(Self::local(LocalConfig::from_seed(&default_seed_path())?)),
        }
    }

    /// The settings of `service` from this environment's config.
    pub async fn settings(&self, service: &str) -> Result<crate::config::Settings, ConfigError> {
        crate::config::Settings::load(self.config.as_ref(), service).await
    }

    pub fn local(config: LocalConfig) -> Self {
        config.spawn_file_watch(Duration::from_secs(2));
        Self {
            config: Arc::new(config),
            discovery: Arc::new(LocalDiscovery::new()),
            local: true,
        }
    }
}

/// Local state kept outside the repository (`MICROMART_HOME`, default
/// `~/.local/share/micromart`).
pub fn home() -> PathBuf {
    std::env::var_os("MICROMART_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            base.join(".local/share/micromart")
        })
}

/// A secret of a local run (the JWT signing key, the internal credential): generated at
/// first start, kept under `home()/secrets` with owner-only permissions, never in the
/// repository.
pub fn local_secret(name: &str, generate: impl FnOnce() -> String) -> Result<String, BootError> {
    let path = home().join("secrets").join(name);
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret);
    }
    let dir = path.parent().expect("the secret path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| BootError::Io(format!("{}: {e}", dir.display())))?;
    let secret = generate();
    write_private(&path, &secret).map_err(|e| BootError::Io(format!("{}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated a local secret");
    Ok(secret)
}

/// The development signing key of a local run.
pub fn dev_signing_key() -> Result<String, BootError> {
    local_secret("jwt-signing.pem", SigningKey::generate_pem)
}

/// The internal credential of a local run.
pub fn dev_internal_token() -> Result<String, BootError> {
    dev_random_secret("internal-token")
}

/// A random 256-bit secret of a local run, kept as `name`.
pub fn dev_random_secret(name: &str) -> Result<String, BootError> {
    local_secret(name, || {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    })
}

/// Writes a new file readable by its owner only.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())
}

/// Writes (or replaces) a file readable by its owner only.
pub fn write_private_replacing(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, contents)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lowered to half rather than to Debian's 1024: tests beside this one share the process.
        setrlimit(Resource::RLIMIT_NOFILE, hard / 2, hard).unwrap();
        assert_eq!(super::raise_open_files_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
