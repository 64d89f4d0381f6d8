//! What the gateway decides itself: tokens, CORS, rate limits, body size, live config.

use std::time::Duration;

use base64::Engine;
use gateway::live::Live;
use platform::testing::expect_problem;

use crate::support::{Edge, Upstream};

#[tokio::test]
async fn missing_forged_expired_and_unsigned_tokens_are_401_before_any_service() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let url = edge.url("/api/v1/cart");
    expect_problem(edge.client.get(&url).send().await.unwrap(), 401).await;
    let forged = platform::testing::TestIdentity::new()
        .token(uuid::Uuid::now_v7(), platform::auth::Role::Admin);
    expect_problem(
        edge.client
            .get(&url)
            .bearer_auth(forged)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let good = edge.token();
    let payload = good.split('.').nth(1).unwrap();
    let none =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    expect_problem(
        edge.client
            .get(&url)
            .bearer_auth(format!("{none}.{payload}."))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"] = (chrono_now() - 60).into();
    let tampered = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
        good.split('.').nth(2).unwrap()
    );
    expect_problem(
        edge.client
            .get(&url)
            .bearer_auth(tampered)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    // Genuinely expired: signed by the right key, past its `exp`.
    let expired = edge
        .identity
        .expired_token(uuid::Uuid::now_v7(), platform::auth::Role::Customer);
    expect_problem(
        edge.client
            .get(&url)
            .bearer_auth(expired)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(cart.hits(), 0, "no request reached the service");
    assert_eq!(
        edge.client
            .get(&url)
            .bearer_auth(good)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_token_of_a_key_users_has_just_published_is_accepted_at_its_first_request() {
    use platform::testing::{JwksStandIn, TestIdentity};
    let (old, new) = (TestIdentity::new(), TestIdentity::new());
    let users = JwksStandIn::start(&[&old]).await;
    let discovery = users.as_users().await;
    // No keys in config: the gateway takes users' and follows them.
    let mut edge = Edge::start_on(discovery, &[("jwt_public_keys", "")]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let url = edge.url("/api/v1/cart");
    let user = uuid::Uuid::now_v7();
    let with = |identity: &TestIdentity| {
        edge.client
            .get(&url)
            .bearer_auth(identity.token(user, platform::auth::Role::Customer))
            .send()
    };
    assert_eq!(with(&old).await.unwrap().status(), 200);

    users.publish(&[&new, &old]);
    assert_eq!(with(&new).await.unwrap().status(), 200);
    assert_eq!(with(&old).await.unwrap().status(), 200);
    assert_eq!(cart.hits(), 3);
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let mut edge = Edge::start(&[]).await;
    let products = Upstream::new();
    edge.add("products", &products).await;
    assert_eq!(
        edge.get_anonymous("/api/v1/products/abc").await.status(),
        200
    );
    expect_problem(
        edge.client
            .post(edge.url("/api/v1/products"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_only_and_preflights_at_the_gateway() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let allowed = edge
        .client
        .get(edge.url("/api/v1/cart"))
        .bearer_auth(edge.token())
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let denied = edge
        .client
        .get(edge.url("/api/v1/cart"))
        .bearer_auth(edge.token())
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
    let hits = cart.hits();
    let preflight = edge
        .client
        .request(reqwest::Method::OPTIONS, edge.url("/api/v1/cart"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PUT")
    );
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let refused = edge
        .client
        .request(reqwest::Method::OPTIONS, edge.url("/api/v1/cart"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    expect_problem(refused, 403).await;
    assert_eq!(cart.hits(), hits, "preflights are answered at the gateway");
}

#[tokio::test]
async fn a_changed_cors_origin_applies_without_a_restart() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    use platform::config::ConfigSource;
    edge.config
        .set(
            "micromart/gateway/cors_allowed_origins",
            "https://shop.example",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = edge
            .client
            .get(edge.url("/api/v1/cart"))
            .bearer_auth(edge.token())
            .header("origin", "https://shop.example")
            .send()
            .await
            .unwrap();
        if resp
            .headers()
            .get("access-control-allow-origin")
            .is_some_and(|v| v == "https://shop.example")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new origin was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        edge.gateway.live().cors_origins,
        vec!["https://shop.example".to_owned()]
    );
}

#[tokio::test]
async fn a_cors_origin_changed_in_consul_applies_through_its_blocking_watch() {
    use platform::config::ConfigSource;
    use platform::consul::Consul;
    use platform::testing::consul_double::ConsulDouble;

    let double = ConsulDouble::with_kv_seed().await;
    let consul = std::sync::Arc::new(Consul::new(&double.url(), None).unwrap());
    let identity = platform::testing::TestIdentity::new();
    let watch_wait = Duration::from_secs(5);
    let stop = platform::CancellationToken::new();
    let (_gateway, serving) = gateway::testing::start_on_source(
        consul.clone(),
        consul.clone(),
        &[
            ("jwt_public_keys", identity.jwks.as_str()),
            ("watch_wait_seconds", "5"),
            ("workers", "1"),
        ],
        &stop,
    )
    .await;
    let client = reqwest::Client::new();
    let preflight = || {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/cart", serving.url()),
            )
            .header("origin", "https://shop.example")
            .header("access-control-request-method", "PUT")
            .send()
    };
    assert_eq!(preflight().await.unwrap().status(), 403, "not listed yet");
    consul
        .set(
            "micromart/gateway/cors_allowed_origins",
            "https://shop.example",
        )
        .await
        .unwrap();
    let changed = tokio::time::Instant::now();
    while preflight().await.unwrap().status() != 204 {
        assert!(
            changed.elapsed() < watch_wait,
            "the new origin was not applied within the watch's wait"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sooner than the wait: the blocking query answered the change, no poll at its end did.
    assert!(changed.elapsed() < watch_wait, "{:?}", changed.elapsed());
    stop.cancel();
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let mut edge = Edge::start(&[("rate_limit_per_second", "1"), ("rate_limit_burst", "3")]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let token = edge.token();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = edge
            .client
            .get(edge.url("/api/v1/cart"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            expect_problem(resp, 429).await;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let other = edge
        .client
        .get(edge.url("/api/v1/cart"))
        .bearer_auth(edge.token())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "limits are per client");
    // Callers refused for their token count against their address: a forged or missing token
    // is not tried faster than the limit allows.
    let mut refused = Vec::new();
    for _ in 0..5 {
        let resp = edge
            .client
            .get(edge.url("/api/v1/cart"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        refused.push(resp.status().as_u16());
    }
    assert_eq!(refused, [401, 401, 401, 429, 429]);
    // How many clients the limiter holds, swept of idle ones in the background.
    let metrics = edge.metrics().await;
    assert!(metrics.contains("gateway_rate_limit_clients"), "{metrics}");
}

#[tokio::test]
async fn on_a_public_route_a_signed_in_user_is_limited_by_id_and_anyone_else_by_address() {
    let mut edge = Edge::start(&[("rate_limit_per_second", "1"), ("rate_limit_burst", "3")]).await;
    let products = Upstream::new();
    edge.add("products", &products).await;
    let statuses = async |token: Option<&str>, n| {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let req = edge.client.get(edge.url("/api/v1/products"));
            let req = match token {
                Some(token) => req.bearer_auth(token),
                None => req,
            };
            statuses.push(req.send().await.unwrap().status().as_u16());
        }
        statuses
    };
    // Two users from one address (as behind a NAT), then anonymous callers from it, each with
    // a bucket of their own.
    let (ada, bob) = (edge.token(), edge.token());
    assert_eq!(statuses(Some(&ada), 4).await, [200, 200, 200, 429]);
    assert_eq!(statuses(Some(&bob), 3).await, [200, 200, 200]);
    assert_eq!(statuses(None, 4).await, [200, 200, 200, 429]);
    // A token that does not verify counts against the address, whose bucket is spent.
    assert_eq!(statuses(Some("not-a-token"), 1).await, [429]);
    // Logging in (public, but no catalog read) with a valid token counts against the address
    // too: one account's token does not take attempts on others past the address's limit.
    let carol = edge.token();
    assert_eq!(statuses(Some(&carol), 1).await, [200]);
    let login = edge
        .client
        .post(edge.url("/api/v1/users/login"))
        .bearer_auth(&carol)
        .json(&serde_json::json!({"email": "x@example.com", "password": "guess"}))
        .send()
        .await
        .unwrap();
    expect_problem(login, 429).await;
}

#[tokio::test]
async fn a_malformed_body_is_400_and_no_failure_of_the_upstream() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    // A chunked body whose second chunk size is not hexadecimal: the caller's mistake.
    let request = format!(
        "PUT /api/v1/cart/items/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\nzz\r\n",
        edge.token()
    );
    for _ in 0..10 {
        let answer = edge.raw(&request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
    }
    cart_not_blamed(&edge, "ten malformed bodies are not ten failures of cart").await;
}

#[tokio::test]
async fn the_documents_are_rate_limited_and_probes_are_not() {
    let edge = Edge::start(&[("rate_limit_per_second", "1"), ("rate_limit_burst", "3")]).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = edge.get_anonymous("/docs").await;
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let resp = edge.get_anonymous("/openapi/products.json").await;
    expect_problem(resp, 429).await;
    for path in ["/health", "/ready", "/metrics"] {
        let resp = edge.get_anonymous(path).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_413_at_the_gateway() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    // Larger than loopback's socket buffers: had the gateway closed the connection with the
    // body unread, the client would see a reset instead of the 413 (14 of 20 runs).
    let resp = put_cart_item(&edge, vec![b'x'; 12 * 1024 * 1024]).await;
    expect_problem(resp, 413).await;
    assert_eq!(cart.hits(), 0);
}

#[tokio::test]
async fn a_request_head_too_large_to_parse_is_a_431_problem_at_the_gateway() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let resp = edge
        .client
        .get(edge.url("/api/v1/cart"))
        .header(
            "x-padding",
            "p".repeat(2 * platform::runtime::MAX_CONNECTION_BUFFER),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 431).await;
    assert_eq!(cart.hits(), 0);
}

/// Asserts that what went wrong (`why` it is not cart's failure) left cart's breaker closed
/// and cart still called.
async fn cart_not_blamed(edge: &Edge, why: &str) {
    assert_eq!(edge.breaker("cart").await, "closed", "{why}");
    assert_eq!(put_cart_item(edge, "{}").await.status(), 200);
}

/// A cart PUT with `body`, as the signed-in customer.
async fn put_cart_item(edge: &Edge, body: impl Into<reqwest::Body>) -> reqwest::Response {
    edge.client
        .put(edge.url("/api/v1/cart/items/x"))
        .bearer_auth(edge.token())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A cart PUT of `bytes` sent chunked: no Content-Length to refuse up front, so a limit is
/// met while the body streams.
async fn put_chunked(edge: &Edge, bytes: usize) -> reqwest::Response {
    let chunk = 64 * 1024;
    let chunks = (0..bytes / chunk).map(move |_| Ok::<_, std::io::Error>(vec![b'x'; chunk]));
    put_cart_item(
        edge,
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
    )
    .await
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_at_the_gateway() {
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let problem = expect_problem(put_chunked(&edge, 2 * 1024 * 1024).await, 413).await;
    assert_eq!(
        problem["detail"],
        "the request body is larger than the limit of 1048576 bytes"
    );
    assert_eq!(
        edge.breaker("cart").await,
        "closed",
        "a caller's oversized body is not the upstream's failure"
    );
}

#[tokio::test]
async fn a_service_refusing_a_body_under_the_gateway_limit_is_heard_as_413() {
    let mut edge = Edge::start(&[]).await;
    // The services' own limit (256 KiB) is below the gateway's (1 MiB): the service refuses
    // first, and its answer, not a broken connection, reaches the caller.
    let cart = Upstream::with_body_limit(256 * 1024);
    edge.add("cart", &cart).await;
    let service_detail = "the request body is larger than the limit of 262144 bytes";
    let gateway_detail = "the request body is larger than the limit of 1048576 bytes";
    for _ in 0..10 {
        let declared = put_cart_item(&edge, vec![b'x'; 512 * 1024]).await;
        let problem = expect_problem(declared, 413).await;
        assert_eq!(problem["detail"], service_detail);
        let problem = expect_problem(put_chunked(&edge, 2 * 1024 * 1024).await, 413).await;
        // Whichever limit is met first refuses: the service's as it reads, or the
        // gateway's as it forwards.
        assert!(
            [service_detail, gateway_detail].contains(&problem["detail"].as_str().unwrap()),
            "{problem}"
        );
    }
    assert_eq!(
        edge.breaker("cart").await,
        "closed",
        "a caller's oversized body is not the upstream's failure"
    );
}

#[tokio::test]
async fn a_body_outgrowing_the_limit_beside_an_answer_under_way_is_not_the_upstreams_failure() {
    use futures::StreamExt;
    // One failure would open the breaker; the answer's pause is within the upstream limit.
    let mut edge = Edge::start(&[("upstream_timeout_ms", "5000"), ("breaker_window", "1")]).await;
    let cart = Upstream::new();
    cart.answer_before_bodies(true);
    cart.pause_mid_body(Duration::from_secs(2));
    edge.add("cart", &cart).await;
    // The answer's head comes back before the body outgrows the gateway's limit (1 MiB),
    // which then breaks the exchange off mid-answer.
    let chunk = 64 * 1024;
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(vec![b'x'; chunk]) });
    let rest = futures::stream::once(tokio::time::sleep(Duration::from_millis(300)))
        .flat_map(move |()| futures::stream::iter((0..32).map(move |_| Ok(vec![b'x'; chunk]))));
    let resp = put_cart_item(&edge, reqwest::Body::wrap_stream(first.chain(rest))).await;
    assert_eq!(resp.status(), 200, "answered before the body had gone");
    assert!(
        resp.bytes().await.is_err(),
        "the answer was broken off with the body"
    );
    cart.answer_before_bodies(false);
    cart.pause_mid_body(Duration::ZERO);
    cart_not_blamed(&edge, "the caller's body outgrew the limit").await;
}

/// A cart PUT whose body's second kilobyte follows its first after `pause`.
async fn put_with_a_pause(edge: &Edge, pause: Duration) -> reqwest::Response {
    use futures::StreamExt;
    let halves = futures::stream::iter([Duration::ZERO, pause]).then(|wait| async move {
        tokio::time::sleep(wait).await;
        Ok::<_, std::io::Error>(vec![b'x'; 1024])
    });
    put_cart_item(edge, reqwest::Body::wrap_stream(halves)).await
}

#[tokio::test]
async fn the_upstream_limit_counts_from_when_the_body_has_all_been_sent() {
    // The upstream limit is 300 ms; the caller takes 600 ms to send its body.
    let mut edge = Edge::start(&[]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    for _ in 0..3 {
        assert_eq!(
            put_with_a_pause(&edge, Duration::from_millis(600))
                .await
                .status(),
            200
        );
    }
    assert_eq!(cart.hits(), 3);
    assert_eq!(edge.breaker("cart").await, "closed");
}

#[tokio::test]
async fn a_caller_too_slow_to_send_its_body_is_408_and_not_the_upstreams_failure() {
    use futures::StreamExt;
    let mut edge = Edge::start(&[("caller_body_timeout_ms", "300")]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    // More than enough to open the breaker, were they counted as the upstream's failures.
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let problem =
            expect_problem(put_with_a_pause(&edge, Duration::from_secs(3)).await, 408).await;
        assert_eq!(
            problem["detail"],
            "the request body did not arrive within 300 ms"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered before the body ended"
        );
    }
    // A caller still sending, a byte every 50 ms, reads its 408 too.
    let trickle = futures::stream::iter(0..60).then(|_| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, std::io::Error>(vec![b' '])
    });
    let started = std::time::Instant::now();
    let resp = put_cart_item(&edge, reqwest::Body::wrap_stream(trickle)).await;
    expect_problem(resp, 408).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before the body ended"
    );
    cart_not_blamed(&edge, "a slow caller is not the upstream's failure").await;
}

#[tokio::test]
async fn a_caller_whose_body_the_upstream_does_not_take_reads_its_504() {
    use platform::discovery::Registration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An instance that accepts connections and never reads them, with a small receive
    // buffer: most of a 12 MiB body is still with the caller when the limit is reached.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(16).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    let edge = Edge::start(&[
        ("caller_body_timeout_ms", "500"),
        ("max_body_bytes", "33554432"),
    ])
    .await;
    edge.discovery
        .register(&Registration::new("cart", "127.0.0.1", port))
        .await
        .unwrap();
    edge.wait_for_instances("cart", 1).await;
    let body = vec![b' '; 12 * 1024 * 1024];
    // (A reset would fail the send inside put_cart_item.)
    let problem = expect_problem(put_cart_item(&edge, body.clone()).await, 504).await;
    assert_eq!(
        problem["detail"],
        "cart did not take the request body within 500 ms"
    );
    // A caller that reads only once it has sent its whole request (as many simple clients
    // do) reads it too: the gateway reads on and throws the rest away.
    let raw_caller = async {
        let mut conn = tokio::net::TcpStream::connect(edge.server.addr)
            .await
            .unwrap();
        let head = format!(
            "PUT /api/v1/cart/items/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
            edge.token(),
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body)
            .await
            .expect("the whole body is taken, not reset");
        let mut answer = vec![0; 1024];
        let n = conn
            .read(&mut answer)
            .await
            .expect("an answer, not a reset");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), raw_caller)
        .await
        .expect("answered within 10 s");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    drop(socket);
}

#[tokio::test]
async fn docs_list_every_service_document() {
    let mut edge = Edge::start(&[]).await;
    let users = Upstream::new();
    edge.add("users", &users).await;
    let page = edge.get_anonymous("/docs").await.text().await.unwrap();
    for service in [
        "users",
        "products",
        "inventory",
        "cart",
        "orders",
        "payment",
        "notification",
    ] {
        assert!(
            page.contains(&format!(
                r#"<option value="/openapi/{service}.json">{service}</option>"#
            )),
            "{service} is in the definition picker"
        );
    }
    // The picker drives Swagger UI, which starts on the first document and keeps the token.
    for wiring in [
        "const ui = SwaggerUIBundle({",
        "url: definition.value, persistAuthorization: true,",
        "ui.specActions.download(definition.value)",
    ] {
        assert_eq!(page.matches(wiring).count(), 1, "{wiring}");
    }
    let doc = edge.get_anonymous("/openapi/users.json").await;
    assert_eq!(doc.status(), 200);
    assert_eq!(users.hits(), 1, "the document comes from the service");
    expect_problem(edge.get_anonymous("/openapi/nothing.json").await, 404).await;
}

/// Sets a gateway key in the running gateway's config source and waits until `applied`
/// reports the new number in force.
async fn change_live(edge: &Edge, key: &str, value: &str, applied: impl Fn(&Live) -> bool) {
    use platform::config::ConfigSource;
    edge.config
        .set(&format!("micromart/gateway/{key}"), value)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !applied(&edge.gateway.live()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} = {value} was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn changed_timeout_rate_limit_and_breaker_numbers_apply_without_a_restart() {
    let mut edge = Edge::start(&[("upstream_timeout_ms", "2000")]).await;
    let cart = Upstream::new();
    edge.add("cart", &cart).await;
    let token = edge.token();
    let get = || {
        edge.client
            .get(edge.url("/api/v1/cart"))
            .bearer_auth(&token)
            .send()
    };

    // A 300 ms answer is within 2 s; once the limit is 100 ms it is a 504.
    cart.delay(Duration::from_millis(300));
    assert_eq!(get().await.unwrap().status(), 200);
    change_live(&edge, "upstream_timeout_ms", "100", |l| {
        l.upstream_timeout == Duration::from_millis(100)
    })
    .await;
    expect_problem(get().await.unwrap(), 504).await;
    cart.delay(Duration::ZERO);

    // A window of 2 opens the breaker at the first failure of two (the default needs 10).
    change_live(&edge, "breaker_window", "2", |l| l.breaker.window == 2).await;
    change_live(&edge, "breaker_open_ms", "60000", |l| {
        l.breaker.open_for == Duration::from_secs(60)
    })
    .await;
    cart.answer(500);
    assert_eq!(get().await.unwrap().status(), 500);
    let hits = cart.hits();
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 503, "open after 2 calls");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        cart.hits(),
        hits,
        "an open breaker does not call the upstream"
    );
    assert_eq!(
        edge.gateway.breaker_state("cart"),
        Some(gateway::breaker::StateName::Open)
    );

    // A burst of 2 at 1 per second: the third request at once is 429.
    change_live(&edge, "rate_limit_burst", "2", |l| l.rate_burst == 2).await;
    change_live(&edge, "rate_limit_per_second", "1", |l| {
        l.rate_per_second == 1
    })
    .await;
    let statuses: Vec<u16> = futures::future::join_all((0..3).map(|_| get()))
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
}
