//! Calls to other services: instances found through discovery, spread round-robin, every
//! call limited in time, retried on another instance only when the call is idempotent, with
//! the request id, traceparent, internal credential and (where given) the caller's token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::INTERNAL_TOKEN_HEADER;
use crate::context;
use crate::discovery::Discovery;
use crate::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{service} is unavailable: {reason}")]
    Unavailable { service: String, reason: String },
    #[error("{service} did not answer within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    /// The other service answered with an error status.
    #[error("{service} answered {status}: {body}")]
    Status {
        service: String,
        status: u16,
        body: String,
    },
    #[error("{service} answered something unreadable: {reason}")]
    Decode { service: String, reason: String },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A dependency failure as the client of this service sees it: 503 with `Retry-After` when
/// it is down, 504 when it is too slow; anything else it said is our fault (500).
impl From<CallError> for Problem {
    fn from(err: CallError) -> Self {
        match &err {
            CallError::Unavailable { service, .. } => {
                tracing::warn!(error = %err, "dependency unavailable");
                Problem::unavailable(format!("{service} is unavailable; try again shortly"), 5)
            }
            CallError::Timeout { service, .. } => {
                tracing::warn!(error = %err, "dependency timed out");
                Problem::timeout(format!(
                    "{service} did not answer in time; try again shortly"
                ))
            }
            CallError::Status {
                service, status, ..
            } if *status >= 500 => {
                tracing::warn!(error = %err, "dependency failed");
                Problem::unavailable(format!("{service} is failing; try again shortly"), 5)
            }
            _ => Problem::internal(err),
        }
    }
}

/// A client of one service.
#[derive(Clone)]
pub struct ServiceClient {
    service: String,
    discovery: Arc<dyn Discovery>,
    http: reqwest::Client,
    timeout: Duration,
    internal_token: String,
    next: Arc<AtomicUsize>,
}

impl ServiceClient {
    pub fn new(
        service: &str,
        discovery: Arc<dyn Discovery>,
        timeout: Duration,
        internal_token: &str,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(crate::runtime::IDLE_CONNECTION_REUSE)
            .build()
            .expect("the HTTP client builds");
        Self {
            service: service.to_owned(),
            discovery,
            http,
            timeout,
            internal_token: internal_token.to_owned(),
            next: Arc::default(),
        }
    }

    /// GET, retried on another instance if the first fails to connect or times out.
    pub async fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<R, CallError> {
        self.call::<(), R>(Method::GET, path, None, bearer, true)
            .await
    }

    /// POST; `idempotent` says whether repeating it is harmless (lookups, checks, calls
    /// keyed by an idempotency id), and so whether it may be retried.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
        idempotent: bool,
    ) -> Result<R, CallError> {
        self.call(Method::POST, path, Some(body), bearer, idempotent)
            .await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        bearer: Option<&str>,
        idempotent: bool,
    ) -> Result<R, CallError> {
        let unavailable = |reason: String| CallError::Unavailable {
            service: self.service.clone(),
            reason,
        };
        let instances = self
            .discovery
            .resolve(&self.service)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if instances.is_empty() {
            return Err(unavailable("no healthy instance".into()));
        }
        let attempts = if idempotent {
            instances.len().min(2)
        } else {
            1
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = unavailable("not called".into());
        for attempt in 0..attempts {
            let instance = &instances[(start + attempt) % instances.len()];
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", instance.base_url()))
                .timeout(self.timeout)
                .header(INTERNAL_TOKEN_HEADER, &self.internal_token);
            if let Some(id) = context::request_id() {
                req = req.header(context::REQUEST_ID, id);
            }
            if let Some(tp) = context::traceparent() {
                req = req.header(context::TRACEPARENT, tp);
            }
            if let Some(token) = bearer {
                req = req.bearer_auth(token);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
                    return serde_json::from_slice(&bytes).map_err(|e| CallError::Decode {
                        service: self.service.clone(),
                        reason: e.to_string(),
                    });
                }
                Ok(resp) if resp.status().is_server_error() && idempotent => {
                    last = unavailable(format!("answered {}", resp.status()));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    return Err(CallError::Status {
                        service: self.service.clone(),
                        status,
                        body,
                    });
                }
                Err(e) => last = self.transport(e),
            }
        }
        Err(last)
    }

    fn transport(&self, e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout {
                service: self.service.clone(),
                timeout: self.timeout,
            }
        } else {
            CallError::Unavailable {
                service: self.service.clone(),
                reason: e.to_string(),
            }
        }
    }
}
