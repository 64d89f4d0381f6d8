//! What `/metrics` alone shows of a breaker. Its own test binary: the metrics registry is one
//! per process, and other tests' gateways would move the same series meanwhile.

// Shared with the black-box tests, of which this one uses a part.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use std::time::Duration;

use support::{Edge, Upstream};

/// The value of the sample of `name` whose labels are exactly `labels`, in Prometheus text.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().unwrap())
}

/// An open breaker whose open period is over is half-open, and `/metrics` says so on its
/// own: no call and no `/ready` is needed to move its state gauge and count the transition.
#[tokio::test]
async fn metrics_alone_show_an_open_breaker_half_open_once_its_open_period_is_over() {
    let mut edge = Edge::start(&[]).await;
    let products = Upstream::new();
    edge.add("products", &products).await;
    edge.calls(&products, &[500; 10]).await;
    let metrics = edge.metrics().await;
    let state = |metrics: &str| sample(metrics, "gateway_breaker_state", r#"upstream="products""#);
    let transitions = |metrics: &str, to: &str| {
        sample(
            metrics,
            "gateway_breaker_transitions_total",
            &format!(r#"upstream="products",to="{to}""#),
        )
    };
    assert_eq!(state(&metrics), Some(1.0), "open:\n{metrics}");
    assert_eq!(transitions(&metrics, "open"), Some(1.0));
    assert_eq!(transitions(&metrics, "half_open"), None);

    // The breakers' clock also runs in real time: 3 s before the end leaves the requests
    // meanwhile more than they take on a loaded machine.
    edge.gateway.advance_breaker_clock(Duration::from_secs(7));
    let metrics = edge.metrics().await;
    assert_eq!(state(&metrics), Some(1.0), "still open 7 s on:\n{metrics}");

    let hits = products.hits();
    edge.gateway.advance_breaker_clock(Duration::from_secs(3));
    let metrics = edge.metrics().await;
    assert_eq!(state(&metrics), Some(2.0), "half-open at 10 s:\n{metrics}");
    assert_eq!(transitions(&metrics, "half_open"), Some(1.0));
    assert_eq!(products.hits(), hits, "no call was needed to show it");
}
