use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use platform::CancellationToken;
use platform::auth::Role;
use platform::config::LocalConfig;
use platform::discovery::{Discovery, LocalDiscovery};
use platform::runtime::{Serving, serve};
use platform::testing::TestIdentity;
use poem::{EndpointExt, Request, Response};
use uuid::Uuid;

/// An upstream whose answers the test controls: status, delay; it counts its hits and
/// echoes the headers it received.
#[derive(Clone, Default)]
pub struct Upstream {
    pub hits: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
    /// Whether answers break off after the first part of their body, the connection dropped.
    pub cut_bodies: Arc<AtomicBool>,
    /// How long answers pause after the first part of their body (0: they do not).
    pub pause_mid_body_ms: Arc<AtomicU64>,
    /// How many bytes of padding follow each answer, sent as they are asked for.
    pub padding: Arc<AtomicUsize>,
    /// Whether requests are answered at once, their bodies read while the answer goes out.
    pub early_answers: Arc<AtomicBool>,
    /// The request-body limit a service applies (none: reads any body).
    pub body_limit: Option<usize>,
    /// While true, requests are counted as they arrive and answered once it turns false.
    pub held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Upstream {
    pub fn new() -> Self {
        let u = Self::default();
        u.status.store(200, Ordering::SeqCst);
        u
    }

    /// An upstream that limits request bodies as the services do.
    pub fn with_body_limit(max: usize) -> Self {
        Self {
            body_limit: Some(max),
            ..Self::new()
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers from now on break off mid-body (`true`), or come whole.
    pub fn cut_bodies(&self, cut: bool) {
        self.cut_bodies.store(cut, Ordering::SeqCst);
    }

    /// Answers from now on pause for `d` after the first part of their body.
    pub fn pause_mid_body(&self, d: Duration) {
        self.pause_mid_body_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests from now on are answered at once (`true`), their bodies read while the answer
    /// goes out; or once their bodies have been read.
    pub fn answer_before_bodies(&self, early: bool) {
        self.early_answers.store(early, Ordering::SeqCst);
    }

    /// Requests from now on are counted as they arrive but not answered until [`Self::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Answers the requests held, and from now on answers at once.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Waits until `n` requests have arrived in all.
    pub async fn until_hits(&self, n: usize) {
        let what = format!("{n} requests to arrive");
        platform::testing::eventually_within(Duration::from_secs(10), &what, || async {
            self.hits() >= n
        })
        .await;
    }

    /// Answers from now on end with `bytes` of padding (rounded up to 64 KiB; 0: none).
    pub fn pad_answers(&self, bytes: usize) {
        self.padding.store(bytes, Ordering::SeqCst);
    }

    fn endpoint(&self) -> poem::endpoint::BoxEndpoint<'static, Response> {
        let this = self.clone();
        let route = poem::Route::new()
            .at("/health", poem::endpoint::make_sync(|_| "ok"))
            .at(
                "/*path",
                poem::endpoint::make(move |mut req: Request| {
                    let this = this.clone();
                    async move {
                        this.hits.fetch_add(1, Ordering::SeqCst);
                        // Read as a service reads it; a failed read is the test's to see.
                        let body = req.take_body().into_bytes();
                        if this.early_answers.load(Ordering::SeqCst) {
                            tokio::spawn(body);
                        } else {
                            let _ = body.await;
                        }
                        let mut held = this.held.subscribe();
                        let _ = held.wait_for(|held| !held).await;
                        let delay = this.delay_ms.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                            .collect();
                        let body = serde_json::json!({ "path": req.uri().to_string(), "headers": headers }).to_string();
                        let padding = this.padding.load(Ordering::SeqCst);
                        let cut = this.cut_bodies.load(Ordering::SeqCst);
                        let pause = this.pause_mid_body_ms.load(Ordering::SeqCst);
                        let body = if padding > 0 {
                            // Made as it goes out: the head is not held up by its size.
                            use futures::StreamExt;
                            static PAD: [u8; 64 << 10] = [b' '; 64 << 10];
                            let pad = futures::stream::repeat(hyper::body::Bytes::from_static(&PAD))
                                .take(padding.div_ceil(PAD.len()))
                                .map(Ok::<_, std::io::Error>);
                            let first = futures::stream::once(async move { Ok(body.into()) });
                            poem::Body::from_bytes_stream(first.chain(pad))
                        } else if cut || pause > 0 {
                            // The head and first part go out; after a pause, the rest, or a
                            // failure (hyper drops the connection without ending the
                            // chunked body).
                            use futures::StreamExt;
                            let first = futures::stream::once(async move { Ok(body) });
                            let rest = futures::stream::once(async move {
                                tokio::time::sleep(Duration::from_millis(pause.max(50))).await;
                                if cut {
                                    Err(std::io::Error::other("the instance broke off"))
                                } else {
                                    Ok("\n".to_owned())
                                }
                            });
                            poem::Body::from_bytes_stream(first.chain(rest))
                        } else {
                            body.into()
                        };
                        Response::builder()
                            .status(poem::http::StatusCode::from_u16(this.status.load(Ordering::SeqCst)).unwrap())
                            .content_type("application/json")
                            .header("connection", "x-secret")
                            .header("x-secret", "hop")
                            .body(body)
                    }
                }),
            );
        match self.body_limit {
            Some(max) => route
                .with(platform::context::RequestContext::new("upstream", max))
                .map_to_response()
                .boxed(),
            None => route.boxed(),
        }
    }
}

/// An instance served on a runtime of its own, to be killed.
pub struct Crashable {
    runtime: tokio::runtime::Runtime,
    _serving: Serving,
}

impl Crashable {
    /// Ends the instance as a killed process ends: returns once its runtime's threads, and
    /// every socket they held, are gone.
    pub async fn crash(self) {
        tokio::task::spawn_blocking(move || drop(self.runtime))
            .await
            .unwrap();
    }
}

pub struct Edge {
    pub gateway: gateway::Gateway,
    pub server: Serving,
    pub discovery: Arc<dyn Discovery>,
    pub config: LocalConfig,
    pub identity: TestIdentity,
    pub client: reqwest::Client,
    stop: CancellationToken,
    instances: Vec<(Serving, CancellationToken)>,
    registered: std::collections::HashMap<String, usize>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.cancel();
        for (_, stop) in &self.instances {
            stop.cancel();
        }
    }
}

impl Edge {
    /// A gateway with a short upstream limit (300 ms: a hanging upstream's test need not
    /// wait 5 s) and the seed's breaker numbers, whose periods a test steps through on the
    /// breakers' clock ([`gateway::Gateway::advance_breaker_clock`]); `overrides` over these.
    pub async fn start(overrides: &[(&str, &str)]) -> Self {
        Self::start_on(Arc::new(LocalDiscovery::new()), overrides).await
    }

    /// As [`Self::start`], finding its upstreams (and registering those the test adds) in
    /// `discovery`.
    pub async fn start_on(discovery: Arc<dyn Discovery>, overrides: &[(&str, &str)]) -> Self {
        let identity = TestIdentity::new();
        let mut settings = vec![
            ("jwt_public_keys", identity.jwks.as_str()),
            ("upstream_timeout_ms", "300"),
            ("workers", "1"),
            ("watch_wait_seconds", "1"),
            ("rate_limit_per_second", "10000"),
            ("rate_limit_burst", "10000"),
        ];
        settings.extend_from_slice(overrides);
        let stop = CancellationToken::new();
        let started = gateway::testing::start(discovery.clone(), &settings, &stop).await;
        Self {
            gateway: started.gateway,
            server: started.serving,
            discovery,
            config: started.config,
            identity,
            client: reqwest::Client::new(),
            stop,
            instances: Vec::new(),
            registered: Default::default(),
        }
    }

    /// The state `/ready` gives `service`'s breaker ("closed", "open", "half_open").
    pub async fn breaker(&self, service: &str) -> serde_json::Value {
        self.ready().await["upstreams"][service]["breaker"].take()
    }

    /// Serves `upstream` as an instance of `service`, registered in discovery; returns its index.
    pub async fn add(&mut self, service: &str, upstream: &Upstream) -> usize {
        let stop = CancellationToken::new();
        let d: Arc<dyn Discovery> = self.discovery.clone();
        let serving = serve(
            service,
            upstream.endpoint(),
            "127.0.0.1:0",
            "127.0.0.1",
            d,
            stop.clone(),
        )
        .await
        .unwrap();
        self.instances.push((serving, stop));
        self.wait_for_one_more(service).await;
        self.instances.len() - 1
    }

    /// Waits until the gateway knows one more instance of `service` than before.
    async fn wait_for_one_more(&mut self, service: &str) {
        let known = self.registered.entry(service.to_owned()).or_default();
        *known += 1;
        let n = *known;
        self.wait_for_instances(service, n).await;
    }

    /// Serves `upstream` as an instance of `service`, registered in `discovery` (a client of
    /// its own: the instance's connections die with it), on a runtime of its own that
    /// [`Crashable::crash`] ends as a killed process ends: every socket closed at once, and
    /// no leaving discovery.
    pub async fn add_crashable(
        &mut self,
        service: &str,
        upstream: &Upstream,
        discovery: Arc<dyn Discovery>,
    ) -> Crashable {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (name, endpoint) = (service.to_owned(), upstream.endpoint());
        let serving = runtime.spawn(async move {
            serve(
                &name,
                endpoint,
                "127.0.0.1:0",
                "127.0.0.1",
                discovery,
                CancellationToken::new(),
            )
            .await
            .unwrap()
        });
        let serving = serving.await.unwrap();
        self.wait_for_one_more(service).await;
        Crashable {
            runtime,
            _serving: serving,
        }
    }

    pub async fn ready(&self) -> serde_json::Value {
        self.client
            .get(self.url("/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `request` (head and body, as it goes on the wire) sent on a new connection, and the
    /// whole answer: for requests HTTP clients would not send as they are.
    pub async fn raw(&self, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.server.addr)
            .await
            .unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).send().await.unwrap();
        resp.text().await.unwrap()
    }

    pub async fn wait_for_instances(&self, service: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let ready = self.ready().await;
            if ready["upstreams"][service]["instances"] == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not see {n} instances of {service}: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops instance `i` the way a shutdown does: it leaves discovery, then stops.
    pub fn kill(&self, i: usize) {
        self.instances[i].1.cancel();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn token(&self) -> String {
        self.identity.token(Uuid::now_v7(), Role::Customer)
    }

    /// GETs of products that `upstream` answers with `statuses` in turn, each passed through
    /// (the breaker closed) and read to its end, where a call is judged.
    pub async fn calls(&self, upstream: &Upstream, statuses: &[u16]) {
        for status in statuses {
            upstream.answer(*status);
            let resp = self.get("/api/v1/products").await;
            assert_eq!(
                resp.status().as_u16(),
                *status,
                "passed through while closed"
            );
            resp.bytes().await.expect("the answer's body came whole");
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_with_headers(path, &[]).await
    }

    /// A GET with no token.
    pub async fn get_anonymous(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A GET as a signed-in customer, with `headers` added.
    pub async fn get_with_headers(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let req = self.client.get(self.url(path)).bearer_auth(self.token());
        headers
            .iter()
            .fold(req, |req, (name, value)| req.header(*name, *value))
            .send()
            .await
            .unwrap()
    }
}
