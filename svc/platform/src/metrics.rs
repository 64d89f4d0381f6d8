//! Prometheus metrics: one recorder per process, rendered by every service's `/metrics`.

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::Response;
use poem::http::Method;
use poem_openapi::OperationId;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle; installs the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("duration_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .expect("static bucket list is not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        let upkeep = handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// The route label of a response: the OpenAPI operation id, so that ids in paths do not
/// explode the label set.
pub fn route_label(resp: &Response) -> &'static str {
    resp.data::<OperationId>().map_or("other", |op| op.0)
}

/// The method label: the standard methods by name, anything else as `OTHER`, so that a
/// client cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    static STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|m| *m == method)
        .map_or("OTHER", Method::as_str)
}

type RouteKey = (&'static str, &'static str, u16);

/// The request count and latency of a service by method, route and status. Each label set
/// is registered once and its handles kept: building a labelled key on every request
/// allocates and hashes the labels, a measurable share of a proxied request.
pub struct RouteMetrics {
    service: &'static str,
    handles: RwLock<foldhash::HashMap<RouteKey, (Counter, Histogram)>>,
}

impl RouteMetrics {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            handles: RwLock::default(),
        }
    }

    pub fn record(&self, method: &'static str, route: &'static str, status: u16, seconds: f64) {
        let key = (method, route, status);
        let known = self
            .handles
            .read()
            .expect("route metrics lock poisoned")
            .get(&key)
            .cloned();
        let (count, latency) = known.unwrap_or_else(|| {
            let status = status.to_string();
            let labels = [
                ("service", self.service.to_owned()),
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status),
            ];
            let handles = (
                metrics::counter!("http_requests_total", &labels),
                metrics::histogram!("http_request_duration_seconds", &labels),
            );
            self.handles
                .write()
                .expect("route metrics lock poisoned")
                .insert(key, handles.clone());
            handles
        });
        count.increment(1);
        latency.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_keep_their_name_and_others_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "OTHER"
        );
    }
}
