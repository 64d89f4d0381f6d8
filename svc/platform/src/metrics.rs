//! Prometheus metrics: one recorder per process, rendered by every service's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::Response;
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
pub fn route_label(resp: &Response) -> String {
    resp.data::<OperationId>()
        .map(|op| op.0.to_string())
        .unwrap_or_else(|| "other".to_string())
}
