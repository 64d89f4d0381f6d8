//! The gateway: one public address for the shop. Routes by path to a healthy instance found
//! through discovery, with a circuit breaker and a time limit per upstream, CORS, edge JWT
//! checks and per-client rate limits, all tunable at run time through config.

pub mod breaker;
mod docs;
mod forward;
mod handler;
mod judged;
pub mod live;
mod proxy;
pub mod routes;
#[cfg(feature = "testing")]
pub mod testing;
mod upstreams;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::DefaultKeyedRateLimiter;
use platform::auth::JwtVerifier;
use platform::config::{ConfigError, ConfigSource, Settings};
use platform::context::RequestContext;
use platform::discovery::Discovery;
use platform::runtime::Background;
use platform::service::StartError;
use poem::endpoint::BoxEndpoint;
use poem::{EndpointExt, Response, Route};

use crate::breaker::{Breaker, Permit, StateName};
use crate::handler::GatewayHandler;
use crate::live::Live;
use crate::upstreams::Upstreams;

pub const SERVICE: &str = "gateway";

/// How long fetching users' key set may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the rate limiter forgets the clients whose buckets have refilled.
const FORGET_IDLE_CLIENTS_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub live: Live,
    /// JWKS of the access-token keys; empty means "ask users' /.well-known/jwks.json".
    pub jwt_public_keys: String,
    pub max_body_bytes: usize,
    /// How long a discovery or config watch blocks before asking again.
    pub watch_wait: Duration,
    /// Threads serving requests, each with its own runtime and upstream connections; 0 means
    /// one per core.
    pub workers: usize,
}

impl GatewayConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            live: Live::from_settings(s)?,
            jwt_public_keys: s.get_or("jwt_public_keys", String::new())?,
            max_body_bytes: s.get_or("max_body_bytes", 1024 * 1024)?,
            watch_wait: s.seconds("watch_wait_seconds", 30)?,
            workers: s.get_or("workers", 0)?,
        })
    }
}

/// The breakers' time: tokio's, ahead by an offset that only tests move
/// (`Gateway::advance_breaker_clock`), so that a test through the gateway steps past a 10 s
/// open period as the breaker's own tests do, without waiting for it.
#[derive(Clone, Default)]
pub(crate) struct BreakerClock {
    ahead_ns: Arc<AtomicU64>,
}

impl BreakerClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_nanos(self.ahead_ns.load(Ordering::Relaxed))
    }

    #[cfg(feature = "testing")]
    fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).expect("a test steps less than 584 years");
        self.ahead_ns.fetch_add(by, Ordering::Relaxed);
    }
}

/// What the gateway keeps per upstream service: its breaker and the handles of its metrics
/// (registered once, not looked up by label on every request).
pub(crate) struct Upstream {
    service: &'static str,
    breaker: Mutex<Breaker>,
    clock: BreakerClock,
    state: metrics::Gauge,
    latency: metrics::Histogram,
    /// How many calls whose callers gave up are being followed to their ends (`Call::follow`).
    followed: std::sync::atomic::AtomicUsize,
}

/// The most calls whose callers gave up that a gateway follows to their ends at once, per
/// upstream: enough to judge a hanging instance by, and a bound on the work callers who hang
/// up at once can leave the gateway and the instance doing for nobody.
const MAX_FOLLOWED_PER_UPSTREAM: usize = 64;

impl Upstream {
    fn new(service: &'static str, breaker: Breaker, clock: BreakerClock) -> Self {
        let state = metrics::gauge!("gateway_breaker_state", "upstream" => service);
        state.set(breaker.state().gauge());
        Self {
            service,
            breaker: Mutex::new(breaker),
            clock,
            state,
            latency: metrics::histogram!("gateway_upstream_duration_seconds", "upstream" => service),
            followed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock poisoned")
    }

    /// A call the breaker lets through, or how long until it lets calls through again.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Call, Duration> {
        let res = self.on_breaker(|breaker, now| breaker.try_acquire(now));
        if res.is_err() {
            metrics::counter!("gateway_breaker_rejected_total", "upstream" => self.service)
                .increment(1);
        }
        res.map(|permit| Call {
            upstream: self.clone(),
            permit: Some(permit),
        })
    }

    fn record(&self, permit: Permit, success: bool) {
        self.on_breaker(|breaker, now| breaker.record(permit, success, now));
    }

    /// The breaker's state as of now (see [`Breaker::advance`]), its gauge and transitions
    /// brought up to date with it.
    fn current_state(&self) -> StateName {
        self.on_breaker(|breaker, now| {
            breaker.advance(now);
            breaker.state()
        })
    }

    fn release(&self, permit: Permit) {
        self.breaker().release(permit);
    }

    pub(crate) fn record_latency(&self, elapsed: Duration) {
        self.latency.record(elapsed.as_secs_f64());
    }

    /// Runs `op` on the breaker at the breaker clock's now, and reports a change of state it
    /// made. The gauge is set under the lock: set after it, a change made meanwhile by another
    /// thread could be overwritten by this older one, and the gauge show a state the breaker
    /// has left.
    fn on_breaker<T>(&self, op: impl FnOnce(&mut Breaker, tokio::time::Instant) -> T) -> T {
        let (out, before, after) = {
            let mut breaker = self.breaker();
            let before = breaker.state();
            let out = op(&mut breaker, self.clock.now());
            let after = breaker.state();
            if before != after {
                self.state.set(after.gauge());
            }
            (out, before, after)
        };
        if before != after {
            tracing::warn!(
                upstream = self.service,
                from = before.as_str(),
                to = after.as_str(),
                "circuit breaker changed state"
            );
            metrics::counter!("gateway_breaker_transitions_total", "upstream" => self.service, "to" => after.as_str()).increment(1);
        }
        out
    }
}

#[cfg(test)]
impl Upstream {
    /// An upstream of products whose breaker runs `config` on its own clock.
    pub(crate) fn with_breaker(config: breaker::BreakerConfig) -> Arc<Self> {
        Arc::new(Self::new(
            "products",
            Breaker::new(config),
            BreakerClock::default(),
        ))
    }
}

/// A call to an upstream that its breaker let through. Its outcome is recorded with
/// [`Call::record`]; dropped unrecorded (the caller hung up mid-answer or mid-body, or a call
/// whose caller gave up could not be followed: see `proxy::Exchange`), it gives its place
/// back to the breaker. It lives as long
/// as the answer's body (see `judged::JudgedBody`), hence owned.
pub(crate) struct Call {
    upstream: Arc<Upstream>,
    permit: Option<Permit>,
}

impl Call {
    pub(crate) fn record(mut self, success: bool) {
        if let Some(permit) = self.permit.take() {
            self.upstream.record(permit, success);
        }
    }

    /// Ends a call whose outcome says nothing of the upstream (the caller's own fault or
    /// slowness): not counted, its place given back.
    pub(crate) fn release(self) {}

    /// One of the call's upstream's places for following calls whose callers gave up, held
    /// until the returned value is dropped; none when all are taken.
    pub(crate) fn follow(&self) -> Option<FollowedPlace> {
        use std::sync::atomic::Ordering;
        let followed = &self.upstream.followed;
        followed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now < MAX_FOLLOWED_PER_UPSTREAM).then_some(now + 1)
            })
            .ok()?;
        Some(FollowedPlace(self.upstream.clone()))
    }

    pub(crate) fn record_latency(&self, elapsed: Duration) {
        self.upstream.record_latency(elapsed);
    }

    /// A half-open trial, whose answer's progress the breaker follows.
    pub(crate) fn is_trial(&self) -> bool {
        self.permit.is_some_and(|p| p.is_trial())
    }

    /// Tells the breaker that this trial's answer waits on its caller from now on (`true`),
    /// or that the caller is taking it. False if the trial has lost its place: its outcome
    /// no longer counts.
    pub(crate) fn waits_on_caller(&self, waiting: bool) -> bool {
        self.permit.is_some_and(|permit| {
            let since = waiting.then(|| self.upstream.clock.now());
            self.upstream.breaker().trial_waits_on_caller(permit, since)
        })
    }
}

/// A place among an upstream's followed calls (`Call::follow`), given back when dropped.
pub(crate) struct FollowedPlace(Arc<Upstream>);

impl Drop for FollowedPlace {
    fn drop(&mut self) {
        self.0
            .followed
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.upstream.release(permit);
        }
    }
}

struct Inner {
    upstreams: foldhash::HashMap<&'static str, Arc<Upstream>>,
    #[cfg(feature = "testing")]
    breaker_clock: BreakerClock,
    /// Where users, whose key set the verifier follows, is found.
    discovery: Arc<dyn Discovery>,
    live: RwLock<Arc<Live>>,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<live::ClientKey>>>,
    verifier: JwtVerifier,
    config: GatewayConfig,
    source: Arc<dyn ConfigSource>,
}

#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    pub(crate) upstreams: Upstreams,
    /// For the gateway's own calls (the services' OpenAPI documents).
    pub(crate) http: reqwest::Client,
}

impl Gateway {
    pub async fn connect(
        config: GatewayConfig,
        discovery: Arc<dyn Discovery>,
        source: Arc<dyn ConfigSource>,
    ) -> Result<Self, StartError> {
        platform::metrics::handle();
        let verifier = platform::service::load_verifier(
            &config.jwt_public_keys,
            discovery.as_ref(),
            JWKS_FETCH_TIMEOUT,
        )
        .await?;
        let http = reqwest::Client::builder()
            .pool_idle_timeout(platform::runtime::IDLE_CONNECTION_REUSE)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StartError::Keys(e.to_string()))?;
        let upstreams = Upstreams::new(discovery.clone());
        let breaker_clock = BreakerClock::default();
        let upstream_state = routes::services()
            .into_iter()
            .map(|s| {
                let breaker = Breaker::new(config.live.breaker);
                (
                    s,
                    Arc::new(Upstream::new(s, breaker, breaker_clock.clone())),
                )
            })
            .collect();
        let inner = Inner {
            upstreams: upstream_state,
            #[cfg(feature = "testing")]
            breaker_clock,
            discovery,
            limiter: RwLock::new(config.live.limiter()),
            live: RwLock::new(Arc::new(config.live.clone())),
            verifier,
            config,
            source,
        };
        Ok(Self {
            inner: Arc::new(inner),
            upstreams,
            http,
        })
    }

    pub fn live(&self) -> Arc<Live> {
        self.inner.live.read().expect("live lock poisoned").clone()
    }

    pub(crate) fn verifier(&self) -> &JwtVerifier {
        &self.inner.verifier
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.inner.config.max_body_bytes
    }

    pub(crate) fn limiter(&self) -> Arc<DefaultKeyedRateLimiter<live::ClientKey>> {
        self.inner
            .limiter
            .read()
            .expect("limiter lock poisoned")
            .clone()
    }

    /// Applies changed numbers: breakers keep their state, the limiter starts afresh when
    /// its quota changed.
    pub fn apply(&self, live: Live) {
        let old = self.live();
        if old.rate_per_second != live.rate_per_second || old.rate_burst != live.rate_burst {
            *self.inner.limiter.write().expect("limiter lock poisoned") = live.limiter();
        }
        for upstream in self.inner.upstreams.values() {
            upstream.breaker().reconfigure(live.breaker);
        }
        *self.inner.live.write().expect("live lock poisoned") = Arc::new(live);
    }

    /// The breaker and metrics of a routed service.
    pub(crate) fn upstream(&self, service: &str) -> &Arc<Upstream> {
        self.inner
            .upstreams
            .get(service)
            .expect("every routed service has a breaker")
    }

    /// Moves the breakers' clock (and only theirs) ahead by `by`: a test passes an open
    /// period, or a trial's wait on its caller, without sleeping through it.
    #[cfg(feature = "testing")]
    pub fn advance_breaker_clock(&self, by: Duration) {
        self.inner.breaker_clock.advance(by);
    }

    pub fn breaker_state(&self, service: &str) -> Option<StateName> {
        self.inner
            .upstreams
            .get(service)
            .map(|upstream| upstream.current_state())
    }

    /// The routes the gateway answers itself: `/health`, `/ready`, `/metrics`, `/docs` and
    /// the services' documents under `/openapi/`.
    fn own_routes(&self) -> BoxEndpoint<'static> {
        let gateway = self.clone();
        Route::new()
            .at(
                "/health",
                poem::endpoint::make_sync(|_| poem::web::Json(serde_json::json!({"status": "UP"}))),
            )
            .at("/ready", docs::ready(self.clone()))
            .at(
                "/metrics",
                poem::endpoint::make_sync(move |_| {
                    // Breaker states as of now, not as of their last call.
                    for service in routes::services() {
                        gateway.breaker_state(service);
                    }
                    Response::builder()
                        .content_type("text/plain; version=0.0.4")
                        .body(platform::metrics::handle().render())
                }),
            )
            .nest("/docs", docs::swagger(self.clone()))
            .at("/openapi/:service", docs::document(self.clone()))
            .with(RequestContext::new(
                SERVICE,
                self.inner.config.max_body_bytes,
            ))
            .boxed()
    }

    /// The handler of one worker thread: the shared state (breakers, limiter, live config,
    /// instances) with upstream connections of its own, so that a request and the
    /// connection carrying it are driven by the same thread.
    fn worker_handler(&self) -> GatewayHandler {
        GatewayHandler::new(self.clone(), self.own_routes())
    }

    /// Serves on `config.workers` threads (see [`platform::workers`]) until `shutdown`.
    pub async fn serve(
        &self,
        bind: &str,
        advertise: &str,
        discovery: Arc<dyn Discovery>,
        shutdown: impl Into<platform::runtime::Shutdown>,
    ) -> Result<platform::runtime::Serving, platform::runtime::ServeError> {
        let gateway = self.clone();
        platform::workers::serve_on_workers(
            SERVICE,
            platform::workers::worker_count(self.inner.config.workers),
            move || gateway.worker_handler(),
            bind,
            advertise,
            discovery,
            shutdown,
        )
        .await
    }

    /// The follower of users' key set (keys from users), discovery watches for every upstream,
    /// the live-config watch and the rate limiter's sweep.
    pub fn background(&self) -> Background {
        let mut tasks = platform::service::key_set_tasks(
            &self.inner.config.jwt_public_keys,
            &self.inner.verifier,
            &self.inner.discovery,
            JWKS_FETCH_TIMEOUT,
        );
        let wait = self.inner.config.watch_wait;
        for service in routes::services() {
            let upstreams = self.upstreams.clone();
            tasks.add("upstream watch", move |shutdown| {
                upstreams.follow(service, wait, shutdown)
            });
        }
        let gateway = self.clone();
        let source = self.inner.source.clone();
        tasks.add("config watch", move |shutdown| {
            live::follow(gateway, source, wait, shutdown)
        });
        let gateway = self.clone();
        tasks.add("rate limit sweep", move |shutdown| async move {
            let mut every = tokio::time::interval(FORGET_IDLE_CLIENTS_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let held = live::forget_idle_clients(&gateway.limiter());
                        metrics::gauge!("gateway_rate_limit_clients").set(held as f64);
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;

    #[test]
    fn an_upstream_follows_at_most_its_share_of_given_up_calls_and_gets_places_back() {
        let config = BreakerConfig {
            window: 1000,
            ..BreakerConfig::default()
        };
        let upstream = Upstream::with_breaker(config);
        let call = upstream.acquire().unwrap();
        let places: Vec<FollowedPlace> = (0..MAX_FOLLOWED_PER_UPSTREAM)
            .map(|_| call.follow().expect("a place is free"))
            .collect();
        assert!(call.follow().is_none(), "all places are taken");
        drop(places);
        assert!(call.follow().is_some(), "places come back when dropped");
    }
}
