use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::consul::Consul;
use platform::discovery::Discovery;
use platform::testing::consul_double::ConsulDouble;
use platform::testing::expect_problem;
use serde_json::Value;

use crate::support::{Edge, Upstream};

#[tokio::test]
async fn two_instances_share_the_load_and_a_stopped_one_gets_no_more_traffic() {
    let mut edge = Edge::start(&[]).await;
    let (a, b) = (Upstream::new(), Upstream::new());
    let first = edge.add("cart", &a).await;
    edge.add("cart", &b).await;
    for _ in 0..20 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (10, 10), "round-robin");
    edge.kill(first);
    edge.wait_for_instances("cart", 1).await;
    for _ in 0..10 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (10, 20));
}

/// Consul's check interval for our instances (`Registration::check_interval`).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn an_instance_killed_without_leaving_consul_gets_no_traffic_once_its_check_fails() {
    let consul = ConsulDouble::start().await;
    let discovery =
        || -> Arc<dyn Discovery> { Arc::new(Consul::new(&consul.url(), None).unwrap()) };
    let mut edge = Edge::start_on(discovery(), &[]).await;
    let (a, b) = (Upstream::new(), Upstream::new());
    let doomed = edge.add_crashable("cart", &a, discovery()).await;
    edge.add("cart", &b).await;
    for _ in 0..4 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (2, 2), "round-robin");
    doomed.crash().await;
    // Consul's check of the instance fails (the double checks every half second), and the
    // gateway's blocking query on the passing instances returns with one fewer.
    let killed = Instant::now();
    edge.wait_for_instances("cart", 1).await;
    let noticed_in = killed.elapsed();
    for _ in 0..10 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (2, 12));
    assert!(
        noticed_in < CHECK_INTERVAL,
        "noticed {noticed_in:?} after the kill"
    );
}

#[tokio::test]
async fn requests_for_an_instance_that_cannot_be_reached_go_to_another() {
    // The local registry runs no checks: a killed instance stays listed, and every request
    // routed to it finds it gone.
    let mut edge = Edge::start(&[]).await;
    let (a, b, c) = (Upstream::new(), Upstream::new(), Upstream::new());
    let first_doomed = edge.add_crashable("cart", &a, edge.discovery.clone()).await;
    let second_doomed = edge.add_crashable("cart", &b, edge.discovery.clone()).await;
    edge.add("cart", &c).await;
    for _ in 0..3 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 1), "round-robin");
    first_doomed.crash().await;
    second_doomed.crash().await;
    let token = edge.token();
    for i in 0..6 {
        // Nothing reached the dead instances: a POST with a body is as safe to send on as a GET.
        let resp = if i % 2 == 0 {
            edge.get("/api/v1/cart").await
        } else {
            edge.client
                .post(edge.url("/api/v1/cart/items"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"product_id": "p", "quantity": 1}))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 7));
    assert_eq!(
        edge.ready().await["upstreams"]["cart"]["instances"],
        3,
        "still listed"
    );
    assert_eq!(edge.breaker("cart").await, "closed");
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("gateway_upstream_failovers_total{upstream=\"cart\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_service_takes_its_own_turns() {
    let mut edge = Edge::start(&[]).await;
    let carts = (Upstream::new(), Upstream::new());
    let orders = (Upstream::new(), Upstream::new());
    for (service, (a, b)) in [("cart", &carts), ("orders", &orders)] {
        edge.add(service, a).await;
        edge.add(service, b).await;
    }
    // A client alternating between two services: each still shares its load.
    for _ in 0..4 {
        assert_eq!(edge.get("/api/v1/cart").await.status(), 200);
        assert_eq!(edge.get("/api/v1/orders").await.status(), 200);
    }
    assert_eq!((carts.0.hits(), carts.1.hits()), (2, 2));
    assert_eq!((orders.0.hits(), orders.1.hits()), (2, 2));
}

#[tokio::test]
async fn calls_made_while_no_instance_is_known_do_not_open_the_breaker() {
    let mut edge = Edge::start(&[]).await;
    for _ in 0..10 {
        let problem = expect_problem(edge.get("/api/v1/orders").await, 503).await;
        assert!(problem["detail"].as_str().unwrap().contains("no instance"));
    }
    // The instance registers (a restart's gap is over): it is called at once.
    let orders = Upstream::new();
    edge.add("orders", &orders).await;
    assert_eq!(edge.get("/api/v1/orders").await.status(), 200);
    assert_eq!(edge.breaker("orders").await, "closed");
}

#[tokio::test]
async fn unknown_and_internal_routes_are_404_and_reach_no_service() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    expect_problem(edge.get("/nowhere").await, 404).await;
    expect_problem(edge.get("/internal/carts/123").await, 404).await;
    expect_problem(edge.get("/api/v1/cartography").await, 404).await;
    assert_eq!(cart.hits(), 0);
    expect_problem(edge.get("/api/v1/orders").await, 503).await;
}

#[tokio::test]
async fn a_path_with_dot_segments_is_400_and_reaches_no_service() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    for path in [
        "/api/v1/cart/../../internal/carts/1",
        "/api/v1/cart/%2e%2e/%2E%2e/internal/carts/1",
        "/api/v1/cart/./items",
    ] {
        let answer = raw_get(&edge, path, "x").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("application/problem+json") && answer.contains("segment"),
            "{path}: {answer}"
        );
    }
    assert_eq!(cart.hits(), 0);
    // The same request resolved is forwarded.
    assert_eq!(edge.get("/api/v1/cart/items").await.status(), 200);
    assert_eq!(cart.hits(), 1);
}

#[tokio::test]
async fn forwarded_requests_carry_ids_and_forwarding_headers_but_no_hop_by_hop_ones() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let resp = edge
        .get_with_headers(
            "/api/v1/cart/items?x=1",
            &[
                ("x-request-id", "req-42"),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "1"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert!(
        !resp.headers().contains_key("x-secret"),
        "hop-by-hop response headers are dropped"
    );
    assert!(
        resp.headers().contains_key("content-length")
            && !resp.headers().contains_key("transfer-encoding"),
        "a response of known length keeps it: {:?}",
        resp.headers()
    );
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["path"], "/api/v1/cart/items?x=1");
    let headers = headers_of(&echoed);
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    let gateway_host = edge.server.addr.to_string();
    assert_eq!(headers["x-forwarded-host"], gateway_host);
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(
        headers["host"].starts_with("127.0.0.1:") && headers["host"] != gateway_host,
        "the instance is addressed as itself: {}",
        headers["host"]
    );
    let traceparent: Vec<&str> = headers["traceparent"].split('-').collect();
    assert!(
        matches!(traceparent[..], ["00", trace, span, "01"]
            if trace.len() == 32 && span.len() == 16
                && [trace, span].iter().all(|id| id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
                && [trace, span].iter().all(|id| id.bytes().any(|b| b != b'0'))),
        "a W3C traceparent: {}",
        headers["traceparent"]
    );
    assert!(
        headers.contains_key("authorization"),
        "services check the token again"
    );
    assert!(!headers.contains_key("x-drop-me"));

    // A caller behind another proxy, naming no header in Connection, in a trace of its own.
    let callers_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = edge
        .get_with_headers(
            "/api/v1/cart/items",
            &[
                ("traceparent", callers_trace),
                ("x-forwarded-for", "10.0.0.7"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("te", "trailers"),
            ],
        )
        .await;
    let headers = headers_the_instance_saw(resp).await;
    assert_eq!(headers["x-forwarded-for"], "10.0.0.7, 127.0.0.1");
    assert_eq!(
        headers["traceparent"], callers_trace,
        "the caller's trace goes on"
    );
    assert!(
        !headers.contains_key("proxy-authorization") && !headers.contains_key("te"),
        "hop-by-hop request headers are dropped: {headers:?}"
    );
}

#[tokio::test]
async fn the_host_asked_for_in_an_absolute_target_or_http2_authority_is_forwarded() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    // HTTP/1.1 to a proxy: the target's host outranks Host (RFC 9112 §3.2.2).
    let answer = raw_get(
        &edge,
        "http://shop.example/api/v1/cart/items",
        "other.example",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echoed: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(headers_of(&echoed)["x-forwarded-host"], "shop.example");
    assert_eq!(echoed["path"], "/api/v1/cart/items");

    // HTTP/2: no Host header, the host is the :authority.
    let stream = tokio::net::TcpStream::connect(edge.server.addr)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let req = hyper::Request::get("http://shop.example/api/v1/cart/items")
        .header("authorization", format!("Bearer {}", edge.token()))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echoed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers_of(&echoed)["x-forwarded-host"], "shop.example");

    // HTTP/1.0 without Host names no host: the caller's own X-Forwarded-Host is not passed on.
    let answer = edge
        .raw(&format!(
            "GET /api/v1/cart/items HTTP/1.0\r\nx-forwarded-host: evil.example\r\nauthorization: Bearer {}\r\n\r\n",
            edge.token()
        ))
        .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let echoed: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        !headers_of(&echoed).contains_key("x-forwarded-host"),
        "{echoed}"
    );
}

/// A customer's GET of `target` with `host`, written by hand (HTTP clients would resolve dot
/// segments and send origin-form targets), and the whole answer.
async fn raw_get(edge: &Edge, target: &str, host: &str) -> String {
    edge.raw(&format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        edge.token()
    ))
    .await
}

/// The request headers the test instance echoed.
fn headers_of(echoed: &Value) -> HashMap<String, String> {
    serde_json::from_value(echoed["headers"].clone()).unwrap()
}

async fn headers_the_instance_saw(resp: reqwest::Response) -> HashMap<String, String> {
    assert_eq!(resp.status(), 200);
    headers_of(&resp.json().await.unwrap())
}

#[tokio::test]
async fn users_on_an_os_chosen_port_is_reached_through_discovery() {
    let mut edge = Edge::start(&[]).await;
    let users = Upstream::new();
    edge.add("users", &users).await;
    let resp = edge
        .client
        .post(edge.url("/api/v1/users/login"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(users.hits(), 1);
    let _ = Duration::ZERO;
}
