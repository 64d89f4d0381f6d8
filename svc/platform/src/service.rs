//! What every service but users connects to at start: its database, Redis, and the keys that
//! verify access tokens.

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, EndpointExt, Response};
use poem_openapi::{OpenApi, OpenApiService};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::CancellationToken;
use crate::auth::{InternalToken, JwtVerifier, KeySet};
use crate::config::{ConfigError, Settings};
use crate::consumer::{Consumer, ConsumerConfig, EventHandler};
use crate::discovery::Discovery;
use crate::http::ServiceClient;
use crate::redis::Redis;
use crate::retention::{self, Retention};
use crate::runtime::Background;
use crate::web::{self, ReadyCheck};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error(transparent)]
    Redis(#[from] crate::redis::RedisError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("the public keys cannot be fetched from users: {0}")]
    Keys(String),
}

/// The settings every service shares.
#[derive(Clone, Debug)]
pub struct BaseConfig {
    pub service: &'static str,
    pub database_url: String,
    pub database_max_connections: u32,
    pub redis_url: String,
    pub redis_prefix: String,
    /// JWKS of the access-token keys; empty means "ask users' /.well-known/jwks.json".
    pub jwt_public_keys: String,
    /// The shared secret of internal routes (`X-Internal-Token`).
    pub internal_token: String,
    pub max_body_bytes: usize,
    /// Limit of every call to another service.
    pub call_timeout: Duration,
    /// A stream entry pending this long with a consumer is claimed by another.
    pub stream_claim_idle: Duration,
    /// A stream entry delivered this many times goes to the dead-letter stream.
    pub stream_max_deliveries: usize,
    /// How long relayed and applied events are kept.
    pub retention: Retention,
}

impl BaseConfig {
    pub fn from_settings(service: &'static str, s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            service,
            database_url: s.require("database_url")?,
            database_max_connections: s.get_or("database_max_connections", 10)?,
            redis_url: s.require("redis_url")?,
            redis_prefix: s.get_or("redis_prefix", String::new())?,
            jwt_public_keys: s.get_or("jwt_public_keys", String::new())?,
            internal_token: s.require("internal_token")?,
            max_body_bytes: s.get_or("max_body_bytes", web::DEFAULT_MAX_BODY_BYTES)?,
            call_timeout: s.millis("call_timeout_ms", 2000)?,
            stream_claim_idle: s.millis("stream_claim_idle_ms", 30_000)?,
            stream_max_deliveries: s.get_or("stream_max_deliveries", 5)?,
            retention: Retention::from_settings(s)?,
        })
    }
}

/// Connections and identity shared by a service's handlers and tasks.
#[derive(Clone)]
pub struct Base {
    pub service: &'static str,
    pub pool: PgPool,
    pub redis: Redis,
    pub verifier: JwtVerifier,
    pub internal_token: InternalToken,
    pub config: Arc<BaseConfig>,
    discovery: Arc<dyn Discovery>,
}

impl Base {
    /// The tasks every service runs besides its own: following users' key set, when the
    /// keys come from users rather than from config, and deleting old relayed and applied
    /// events.
    pub fn background(&self) -> Background {
        self.background_pruning(Vec::new())
    }

    /// [`Base::background`], whose retention passes also prune the service's `own` tables.
    pub fn background_pruning(&self, own: Vec<retention::OwnRows>) -> Background {
        let mut tasks = key_set_tasks(
            &self.config.jwt_public_keys,
            &self.verifier,
            &self.discovery,
            self.config.call_timeout,
        );
        tasks.extend(retention::task(
            &self.pool,
            &self.config.retention,
            self.service,
            own,
        ));
        tasks
    }
    /// A client of another service, found through discovery, with this service's call
    /// timeout and internal credential.
    pub fn client(&self, service: &str) -> ServiceClient {
        ServiceClient::new(
            service,
            self.discovery.clone(),
            self.config.call_timeout,
            &self.config.internal_token,
        )
    }

    /// The consumer of `streams` in this service's consumer group `group`. The group must be
    /// one contracts lists for each stream: producers trim only past what those acknowledged.
    pub fn consumer(
        &self,
        group: &str,
        streams: &[&str],
        handler: Arc<dyn EventHandler>,
    ) -> Consumer {
        for stream in streams {
            assert!(
                contracts::events::streams::consumer_groups(stream).contains(&group),
                "{group} reads {stream} but is not among its consumer groups in contracts"
            );
        }
        let mut config = ConsumerConfig::new(group, streams);
        config.claim_idle = self.config.stream_claim_idle;
        config.max_deliveries = self.config.stream_max_deliveries;
        Consumer::new(self.pool.clone(), self.redis.clone(), config, handler)
    }

    /// Connects to the database (creating it and applying migrations) and Redis, and loads
    /// the token-verifying keys (from config, else from users through discovery).
    pub async fn connect(
        config: BaseConfig,
        migrations: &Migrator,
        discovery: Arc<dyn Discovery>,
    ) -> Result<Self, StartError> {
        let pool = crate::db::connect(
            &config.database_url,
            config.database_max_connections,
            migrations,
        )
        .await?;
        let redis = Redis::connect(&config.redis_url, &config.redis_prefix)?;
        let verifier = load_verifier(
            &config.jwt_public_keys,
            discovery.as_ref(),
            config.call_timeout,
        )
        .await?;
        Ok(Self {
            service: config.service,
            pool,
            redis,
            verifier,
            internal_token: InternalToken::new(&config.internal_token),
            config: Arc::new(config),
            discovery,
        })
    }

    /// The service's HTTP app: `api` plus the operational routes, with the verifier and the
    /// internal credential available to the security schemes.
    pub fn routes<T: OpenApi + 'static>(
        &self,
        api: OpenApiService<T, ()>,
    ) -> impl Endpoint<Output = Response> + use<T> {
        let checks: Vec<Arc<dyn ReadyCheck>> =
            vec![Arc::new(self.pool.clone()), Arc::new(self.redis.clone())];
        web::routes(self.service, api, checks, self.config.max_body_bytes)
            .data(self.verifier.clone())
            .data(self.internal_token.clone())
    }
}

/// The verifier of access tokens: the keys of `configured_jwks`, or, when it is empty, those
/// users publishes (see [`key_set_tasks`]).
pub async fn load_verifier(
    configured_jwks: &str,
    discovery: &dyn Discovery,
    timeout: Duration,
) -> Result<JwtVerifier, StartError> {
    let keys = if configured_jwks.trim().is_empty() {
        fetch_key_set(discovery, timeout).await?
    } else {
        KeySet::from_jwks(configured_jwks)?
    };
    Ok(JwtVerifier::from_key_set(keys))
}

/// For a verifier made by [`load_verifier`] from users' keys (none configured), the task that
/// follows users' key set ([`follow_jwks`]); none for configured keys.
pub fn key_set_tasks(
    configured_jwks: &str,
    verifier: &JwtVerifier,
    discovery: &Arc<dyn Discovery>,
    timeout: Duration,
) -> Background {
    let mut tasks = Background::default();
    if configured_jwks.trim().is_empty() {
        let (verifier, discovery) = (verifier.clone(), discovery.clone());
        tasks.add("key set follower", move |shutdown| {
            follow_jwks(verifier, discovery, timeout, JWKS_REFETCH_GAP, shutdown)
        });
    }
    tasks
}

/// The keys users publishes, found through discovery; waits up to 30 s for users to come up.
async fn fetch_key_set(discovery: &dyn Discovery, timeout: Duration) -> Result<KeySet, StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match fetch_key_set_once(discovery, timeout).await {
            Ok(keys) => return Ok(keys),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(StartError::Keys(e)),
            Err(e) => {
                tracing::info!(error = %e, "waiting for users to publish its keys");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Every key some users instance publishes, asked of all of them at once: in a rolling
/// restart with a new signing key, instances still running publish the old set and restarted
/// ones the new, and tokens of both are in use. Instances that do not answer (dead, say, and
/// not yet known to discovery as gone), answer with an unusable set, or answer more than
/// [`KEY_SET_GRACE`] after the first usable answer, are left out; an error only when no
/// instance answers usably.
async fn fetch_key_set_once(
    discovery: &dyn Discovery,
    timeout: Duration,
) -> Result<KeySet, String> {
    use futures::StreamExt;
    let instances = discovery
        .resolve("users")
        .await
        .map_err(|e| e.to_string())?;
    if instances.is_empty() {
        return Err("no users instance is registered".into());
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let mut unanswered: Vec<String> = instances.iter().map(|i| i.base_url()).collect();
    let mut answers: futures::stream::FuturesUnordered<_> = unanswered
        .iter()
        .map(|url| instance_key_set(&client, url.clone()))
        .collect();
    let mut sets = Vec::new();
    let mut failures = Vec::new();
    let mut grace_over = None;
    loop {
        let next = match grace_over {
            None => answers.next().await,
            Some(at) => tokio::time::timeout_at(at, answers.next())
                .await
                .unwrap_or(None),
        };
        let Some((url, answer)) = next else { break };
        unanswered.retain(|u| *u != url);
        match answer {
            Ok(set) => {
                grace_over.get_or_insert_with(|| tokio::time::Instant::now() + KEY_SET_GRACE);
                sets.push(set);
            }
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    failures.extend(
        unanswered
            .iter()
            .map(|url| format!("{url}: no answer within {KEY_SET_GRACE:?} of another instance's")),
    );
    let Some(keys) = KeySet::union_of(sets) else {
        if failures.is_empty() {
            return Err(
                "every kid the instances publish names different keys in different \
                        instances' sets"
                    .into(),
            );
        }
        return Err(failures.join("; "));
    };
    if !failures.is_empty() {
        tracing::warn!(
            failures = %failures.join("; "),
            "some users instances did not give their key sets; using the others'"
        );
    }
    Ok(keys)
}

/// Once one users instance has given its key set, how much longer the others are waited for:
/// a token signed by a new key waits (2 s) for the fetch, which one hung instance must not
/// hold up until its timeout.
const KEY_SET_GRACE: Duration = Duration::from_millis(500);

/// `url`'s key set, with `url` to tell the answers apart.
async fn instance_key_set(
    client: &reqwest::Client,
    url: String,
) -> (String, Result<KeySet, String>) {
    let answer = async {
        let resp = client
            .get(format!("{url}/.well-known/jwks.json"))
            .send()
            .await?
            .error_for_status()?;
        resp.text().await
    };
    // reqwest's own message leaves out why (refused, timed out, reset): its sources say.
    let set = match answer.await {
        Ok(jwks) => KeySet::from_jwks(&jwks).map_err(|e| e.to_string()),
        Err(e) => Err(
            std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": "),
        ),
    };
    (url, set)
}

/// How often a service fetches users' key set again.
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches that tokens signed by unknown keys ask for: anyone can
/// send such tokens, and they must not make every service call users for each.
pub const JWKS_REFETCH_GAP: Duration = Duration::from_secs(10);

/// Keeps `verifier`'s keys those users publishes, until `shutdown`: fetched again every
/// [`JWKS_REFRESH`], and soon after a token signed by a key not in the set arrives (users
/// has a new signing key), so that a rotation needs no restart of the services that verify.
/// A fetch that fails, or brings an unusable set, keeps the keys in force. Fetches that
/// unknown keys ask for are `refetch_gap` apart at least ([`JWKS_REFETCH_GAP`] in services).
///
/// The verifier counts as followed from the call on, before the returned future first runs.
pub fn follow_jwks(
    verifier: JwtVerifier,
    discovery: Arc<dyn Discovery>,
    timeout: Duration,
    refetch_gap: Duration,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    verifier.set_followed(true);
    let following = Following(verifier.clone());
    following_jwks(
        following,
        verifier,
        discovery,
        timeout,
        refetch_gap,
        shutdown,
    )
}

/// Ends the following when dropped (stopped, panicking, or never run): tokens waiting for an
/// answer get it, and later ones do not wait for a follower that is gone.
struct Following(JwtVerifier);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.set_followed(false);
        self.0.answer_unknown_keys();
    }
}

async fn following_jwks(
    _following: Following,
    verifier: JwtVerifier,
    discovery: Arc<dyn Discovery>,
    timeout: Duration,
    refetch_gap: Duration,
    shutdown: CancellationToken,
) {
    let mut last_fetch: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(JWKS_REFRESH) => {}
            _ = verifier.unknown_key_seen() => {
                if let Some(last) = last_fetch.filter(|last| last.elapsed() < refetch_gap) {
                    // Tokens waiting for a fetch within the gap are refused at once rather
                    // than held (`JwtVerifier::verify_awaiting_new_keys`).
                    verifier.answer_unknown_keys();
                    let gap_over = tokio::time::sleep_until(last + refetch_gap);
                    tokio::pin!(gap_over);
                    loop {
                        tokio::select! {
                            _ = &mut gap_over => break,
                            _ = verifier.unknown_key_seen() => verifier.answer_unknown_keys(),
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
            _ = shutdown.cancelled() => return,
        }
        last_fetch = Some(tokio::time::Instant::now());
        let fetched = fetch_key_set_once(discovery.as_ref(), timeout)
            .await
            .map(|keys| verifier.replace_key_set(keys));
        verifier.answer_unknown_keys();
        if let Err(error) = fetched {
            tracing::warn!(%error, "cannot refresh users' key set; keeping the keys in force");
        }
    }
}
