//! Serving on worker threads: every worker answers on the one registered port, and a stop
//! deregisters the instance, lets the request in flight finish and closes the port. With a
//! grace period, the instance answers new requests for that long after leaving discovery.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery};
use platform::runtime::{PoemHandler, Shutdown};
use poem::{Route, handler};

#[handler]
fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

#[handler]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "finished"
}

#[tokio::test]
async fn workers_share_one_port_and_stop_after_the_request_in_flight() {
    let discovery: Arc<dyn Discovery> = Arc::new(LocalDiscovery::new());
    let shutdown = CancellationToken::new();
    let serving = platform::workers::serve_on_workers(
        "things",
        2,
        || PoemHandler::new(Route::new().at("/thread", thread_name).at("/slow", slow)),
        "127.0.0.1:0",
        "127.0.0.1",
        discovery.clone(),
        shutdown.clone(),
    )
    .await
    .expect("workers start");
    let url = serving.url();
    let registered = discovery.resolve("things").await.unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].port, serving.addr.port());

    // The kernel spreads new connections across the workers' sockets by their addresses:
    // over 40 fresh connections both workers answer (all on one: probability 2^-39).
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let client = reqwest::Client::new();
        let resp = client.get(format!("{url}/thread")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        seen.insert(resp.text().await.unwrap());
    }
    assert_eq!(
        seen,
        HashSet::from(["things-worker-0".to_owned(), "things-worker-1".to_owned()])
    );

    let in_flight = tokio::spawn(reqwest::get(format!("{url}/slow")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.text().await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(5), serving.task)
        .await
        .expect("the workers stop")
        .unwrap()
        .expect("the workers stop cleanly");
    assert!(discovery.resolve("things").await.unwrap().is_empty());
    assert!(
        reqwest::get(format!("{url}/thread")).await.is_err(),
        "the port is closed after the stop"
    );
}

#[tokio::test]
async fn after_leaving_discovery_an_instance_answers_through_its_grace_period() {
    let discovery: Arc<dyn Discovery> = Arc::new(LocalDiscovery::new());
    let token = CancellationToken::new();
    let grace = Duration::from_secs(2);
    let serving = platform::workers::serve_on_workers(
        "things",
        1,
        || PoemHandler::new(Route::new().at("/thread", thread_name)),
        "127.0.0.1:0",
        "127.0.0.1",
        discovery.clone(),
        Shutdown {
            token: token.clone(),
            grace,
        },
    )
    .await
    .expect("the worker starts");
    let url = serving.url();
    // A caller's connection from before the stop, as the gateway keeps them.
    let kept = reqwest::Client::new();
    assert_eq!(
        kept.get(format!("{url}/thread"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let stopped_at = std::time::Instant::now();
    token.cancel();
    while !discovery.resolve("things").await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Out of discovery, and still answering: on the kept connection and on a new one.
    let on_kept = kept.get(format!("{url}/thread")).send().await.unwrap();
    assert_eq!(on_kept.status(), 200);
    let on_new = reqwest::Client::new()
        .get(format!("{url}/thread"))
        .send()
        .await;
    assert_eq!(on_new.expect("a new connection is answered").status(), 200);
    assert!(
        stopped_at.elapsed() < grace,
        "the checks above outlasted the grace period; they prove nothing"
    );

    tokio::time::timeout(Duration::from_secs(5), serving.task)
        .await
        .expect("the worker stops")
        .unwrap()
        .expect("the worker stops cleanly");
    assert!(
        stopped_at.elapsed() >= grace,
        "stopped before the grace period ended"
    );
    assert!(
        reqwest::get(format!("{url}/thread")).await.is_err(),
        "the port is closed after the grace period"
    );
}
