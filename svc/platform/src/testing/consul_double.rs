//! An HTTP double of the parts of Consul's API the shop uses, answering as Consul's documented
//! API does: `PUT /v1/agent/service/register` (with an HTTP check the double really runs),
//! `PUT /v1/agent/service/deregister/:id`, `GET /v1/health/service/:name` (`?passing`,
//! blocking `?index=&wait=`, `X-Consul-Index`), `GET/PUT /v1/kv/*` (`?recurse`, base64
//! values, 404 for a missing key, blocking queries).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use poem::http::{Method, StatusCode};
use poem::web::Json;
use poem::{Body, IntoResponse, Request, Response, Route};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::TestServer;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    check: Option<CheckBody>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "HTTP")]
    http: Option<String>,
    interval: Option<String>,
}

#[derive(Debug, Clone)]
struct ServiceState {
    id: String,
    name: String,
    address: String,
    port: u16,
    check_url: Option<String>,
    /// "passing" or "critical", as Consul reports check status.
    status: String,
    modify_index: u64,
}

#[derive(Debug, Clone)]
struct KvState {
    value: Vec<u8>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, ServiceState>,
    kv: BTreeMap<String, KvState>,
    /// Requests the double answered, by path, for tests that check what was sent.
    registrations: Vec<serde_json::Value>,
}

/// A running double; drop it to stop it.
pub struct ConsulDouble {
    server: TestServer,
    state: Arc<Mutex<State>>,
    index: Arc<watch::Sender<u64>>,
    checker: tokio::task::JoinHandle<()>,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

impl ConsulDouble {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let index = Arc::new(watch::channel(1u64).0);
        let app = {
            let state = state.clone();
            let index = index.clone();
            Route::new().nest(
                "/v1",
                poem::endpoint::make(move |req: Request| {
                    let state = state.clone();
                    let index = index.clone();
                    async move { route(req, state, index).await }
                }),
            )
        };
        let server = TestServer::start(app).await;
        let checker = tokio::spawn(run_checks(state.clone(), index.clone()));
        Self {
            server,
            state,
            index,
            checker,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The raw bodies of every registration received.
    pub fn registrations(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().registrations.clone()
    }

    /// A double holding the repository's KV seed, as `consul kv import @consul/kv.json`
    /// leaves an agent.
    pub async fn with_kv_seed() -> Self {
        let double = Self::start().await;
        let text = std::fs::read_to_string(crate::config::default_seed_path())
            .expect("the KV seed is readable");
        let seed: Vec<crate::config::SeedEntry> =
            serde_json::from_str(&text).expect("the KV seed parses");
        double.import(&seed);
        double
    }

    /// Loads a `consul kv import` file, as `consul kv import @file` would.
    pub fn import(&self, entries: &[crate::config::SeedEntry]) {
        let mut st = self.state.lock().unwrap();
        for e in entries {
            let value = base64::engine::general_purpose::STANDARD
                .decode(&e.value)
                .expect("seed values are base64");
            let idx = bump(&self.index);
            st.kv.insert(
                e.key.clone(),
                KvState {
                    value,
                    create_index: idx,
                    modify_index: idx,
                },
            );
        }
    }
}

fn bump(index: &watch::Sender<u64>) -> u64 {
    let mut new = 0;
    index.send_modify(|i| {
        *i += 1;
        new = *i;
    });
    new
}

/// Runs each HTTP check about every second, as a Consul agent does at its interval.
async fn run_checks(state: Arc<Mutex<State>>, index: Arc<watch::Sender<u64>>) {
    // A new connection for each check, as Consul's HTTP checks make (keep-alives off): an
    // instance that stops accepting fails its next check even if it would still serve a
    // connection it had kept open.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    loop {
        let targets: Vec<(String, String)> = state
            .lock()
            .unwrap()
            .services
            .values()
            .filter_map(|s| s.check_url.clone().map(|u| (s.id.clone(), u)))
            .collect();
        for (id, url) in targets {
            let status = check_status(&client, &url).await;
            let mut st = state.lock().unwrap();
            // Re-registered meanwhile with another check: this result is not its.
            if let Some(svc) = st.services.get_mut(&id)
                && svc.check_url.as_deref() == Some(url.as_str())
                && svc.status != status
            {
                svc.status = status.to_owned();
                svc.modify_index = bump(&index);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn check_status(client: &reqwest::Client, url: &str) -> &'static str {
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => "passing",
        _ => "critical",
    }
}

fn query_map(req: &Request) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Consul's wait format: "10s", "500ms", "1m".
fn parse_wait(w: Option<&String>) -> Duration {
    let Some(w) = w else {
        return Duration::from_secs(300);
    };
    let (num, unit) = w.split_at(w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len()));
    let n: u64 = num.parse().unwrap_or(0);
    match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n),
    }
    .min(Duration::from_secs(600))
}

/// Waits while the index is still `index` (a blocking query), at most `wait`.
async fn block(index: &watch::Sender<u64>, q: &BTreeMap<String, String>) {
    let Some(wanted) = q.get("index").and_then(|i| i.parse::<u64>().ok()) else {
        return;
    };
    let mut rx = index.subscribe();
    let deadline = tokio::time::Instant::now() + parse_wait(q.get("wait"));
    while *rx.borrow_and_update() <= wanted {
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn with_index(resp: impl IntoResponse, index: u64) -> Response {
    let mut resp = resp.into_response();
    resp.headers_mut()
        .insert("X-Consul-Index", index.to_string().parse().unwrap());
    resp.headers_mut()
        .insert("X-Consul-Knownleader", "true".parse().unwrap());
    resp.headers_mut()
        .insert("X-Consul-Lastcontact", "0".parse().unwrap());
    resp
}

async fn route(
    mut req: Request,
    state: Arc<Mutex<State>>,
    index: Arc<watch::Sender<u64>>,
) -> Response {
    let path = percent_decode(req.uri().path());
    let path = path.trim_start_matches("/v1").to_owned();
    let q = query_map(&req);
    let method = req.method().clone();
    let body = req.take_body();
    if method == Method::PUT && path == "/agent/service/register" {
        return register(body, &state, &index).await;
    }
    if method == Method::PUT
        && let Some(id) = path.strip_prefix("/agent/service/deregister/")
    {
        let removed = state.lock().unwrap().services.remove(id).is_some();
        if removed {
            bump(&index);
            return StatusCode::OK.into_response();
        }
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name.")).into_response();
    }
    if method == Method::GET
        && let Some(name) = path.strip_prefix("/health/service/")
    {
        block(&index, &q).await;
        let passing_only = q.contains_key("passing");
        let st = state.lock().unwrap();
        let entries: Vec<serde_json::Value> = st
            .services
            .values()
            .filter(|s| s.name == name && (!passing_only || s.status == "passing"))
            .map(|s| {
                json!({
                    "Node": { "ID": "double-node", "Node": "double", "Address": "127.0.0.1", "Datacenter": "dc1" },
                    "Service": { "ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port, "Tags": [], "Meta": {}, "ModifyIndex": s.modify_index },
                    "Checks": [
                        { "Node": "double", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "ServiceID": "" },
                        { "Node": "double", "CheckID": format!("service:{}", s.id), "Name": format!("Service '{}' check", s.name), "Status": s.status, "ServiceID": s.id }
                    ]
                })
            })
            .collect();
        return with_index(Json(entries), *index.borrow());
    }
    if let Some(key) = path.strip_prefix("/kv/") {
        let key = key.to_owned();
        if method == Method::PUT {
            let value = body.into_vec().await.unwrap_or_default();
            let idx = bump(&index);
            let mut st = state.lock().unwrap();
            let create_index = st.kv.get(&key).map(|k| k.create_index).unwrap_or(idx);
            st.kv.insert(
                key,
                KvState {
                    value,
                    create_index,
                    modify_index: idx,
                },
            );
            return Json(true).into_response();
        }
        if method == Method::GET {
            block(&index, &q).await;
            let recurse = q.contains_key("recurse");
            let st = state.lock().unwrap();
            let entries: Vec<serde_json::Value> = st
                .kv
                .iter()
                .filter(|(k, _)| if recurse { k.starts_with(&key) } else { **k == key })
                .map(|(k, v)| {
                    json!({
                        "Key": k,
                        "Flags": 0,
                        "Value": if v.value.is_empty() { serde_json::Value::Null } else {
                            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&v.value))
                        },
                        "CreateIndex": v.create_index,
                        "ModifyIndex": v.modify_index,
                        "LockIndex": 0,
                    })
                })
                .collect();
            let idx = *index.borrow();
            if entries.is_empty() {
                return with_index(StatusCode::NOT_FOUND, idx);
            }
            return with_index(Json(entries), idx);
        }
    }
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

async fn register(
    body: Body,
    state: &Arc<Mutex<State>>,
    index: &Arc<watch::Sender<u64>>,
) -> Response {
    let raw = body.into_vec().await.unwrap_or_default();
    let parsed: Result<RegisterBody, _> = serde_json::from_slice(&raw);
    let reg = match parsed {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: {e}"),
            )
                .into_response();
        }
    };
    if let Some(check) = &reg.check
        && check.http.is_some()
        && check.interval.is_none()
    {
        return (
            StatusCode::BAD_REQUEST,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, or TCP checks",
        )
            .into_response();
    }
    let check_url = reg.check.as_ref().and_then(|c| c.http.clone());
    // A new check starts critical until it first passes, as in Consul, whose agent runs it
    // after answering: run here, the check of a service that registers before it serves
    // (ours do) would wait for its own registration to end.
    let status = if check_url.is_some() {
        "critical"
    } else {
        "passing"
    };
    let idx = bump(index);
    let id = reg.id.clone().unwrap_or_else(|| reg.name.clone());
    let mut st = state.lock().unwrap();
    st.registrations
        .push(serde_json::from_slice(&raw).unwrap_or_default());
    st.services.insert(
        id.clone(),
        ServiceState {
            id,
            name: reg.name,
            address: reg.address,
            port: reg.port,
            check_url,
            status: status.to_owned(),
            modify_index: idx,
        },
    );
    StatusCode::OK.into_response()
}
