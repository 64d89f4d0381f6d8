//! Every error a client can cause, raised by us or by poem, answers problem+json; the
//! operational routes answer.

use platform::auth::BearerAuth;
use platform::problem::{ApiResult, Problem};
use platform::testing::TestServer;
use platform::web;
use poem::EndpointExt;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Object)]
#[oai(deny_unknown_fields)]
struct Thing {
    name: String,
    count: u32,
}

struct Api;

#[OpenApi]
impl Api {
    #[oai(path = "/things", method = "post", operation_id = "create_thing")]
    async fn create(&self, body: Json<Thing>) -> ApiResult<Json<Value>> {
        if body.0.count == 0 {
            return Err(Problem::invalid(vec![platform::problem::FieldError::new(
                "count",
                "must be positive",
            )]));
        }
        Ok(Json(serde_json::json!({ "name": body.0.name })))
    }

    /// Answers after a minute: a client gives up first.
    #[oai(path = "/things/slow", method = "get", operation_id = "slow_thing")]
    async fn slow(&self) -> Json<Value> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Json(serde_json::json!({}))
    }

    #[oai(path = "/things/:id", method = "get", operation_id = "get_thing")]
    async fn get(&self, _auth: BearerAuth, id: Path<uuid::Uuid>) -> ApiResult<Json<Value>> {
        Err(Problem::not_found(format!("no thing {}", id.0)))
    }
}

async fn server() -> TestServer {
    server_with_idle_limit(platform::runtime::CLIENT_IDLE_LIMIT).await
}

async fn server_with_idle_limit(idle_limit: Duration) -> TestServer {
    TestServer::start_with_idle_limit(app(), idle_limit).await
}

fn app() -> impl poem::Endpoint<Output = poem::Response> {
    let key =
        platform::auth::SigningKey::from_pem(&platform::auth::SigningKey::generate_pem()).unwrap();
    let verifier = platform::auth::JwtVerifier::from_jwks(&key.jwks()).unwrap();
    web::routes(
        "things",
        web::openapi_service(Api, "things"),
        vec![],
        1024 * 1024,
    )
    .data(verifier)
}

/// A POST of a thing whose body's first part comes at once and its rest after `pause`
/// (never: none).
fn post_with_a_pause(pause: Option<Duration>) -> poem::Request {
    use futures::StreamExt;
    let part = |text: &'static str| {
        Ok::<_, std::io::Error>(hyper::body::Bytes::from_static(text.as_bytes()))
    };
    let first = futures::stream::iter([part(r#"{"name": "a"#)]);
    let rest = futures::stream::once(async move {
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => std::future::pending().await,
        }
        part(r#"", "count": 1}"#)
    });
    poem::Request::builder()
        .method(poem::http::Method::POST)
        .uri(poem::http::Uri::from_static("/things"))
        .content_type("application/json")
        .body(poem::Body::from_bytes_stream(first.chain(rest)))
}

#[tokio::test(start_paused = true)]
async fn a_body_that_has_not_all_come_within_the_limit_is_408() {
    use poem::Endpoint;
    let limit = platform::runtime::CLIENT_IDLE_LIMIT;
    let app = app();
    let started = tokio::time::Instant::now();
    let resp = tokio::time::timeout(limit * 2, app.get_response(post_with_a_pause(None)))
        .await
        .expect("answered, not left waiting for the body");
    assert_eq!(started.elapsed(), limit);
    assert_eq!(resp.status(), 408);
    assert_eq!(resp.content_type(), Some("application/problem+json"));
    let body: Value = serde_json::from_slice(&resp.into_body().into_vec().await.unwrap()).unwrap();
    assert_eq!(
        body["detail"],
        format!(
            "the request body did not all arrive within {} s",
            limit.as_secs()
        )
    );
    // A slow body that has all come within the limit is served.
    let resp = app
        .get_response(post_with_a_pause(Some(limit - Duration::from_secs(1))))
        .await;
    assert_eq!(resp.status(), 200);
}

async fn expect_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    assert!(!body["title"].as_str().unwrap().is_empty());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    assert_eq!(
        body["instance"],
        request_id.as_str(),
        "instance is the request id"
    );
    body
}

#[tokio::test]
async fn a_request_head_over_the_connection_buffer_is_431_and_one_within_it_is_served() {
    let s = server().await;
    let url = format!("{}/health", s.url());
    let head_of = |header_bytes: usize| {
        reqwest::Client::new()
            .get(&url)
            .header("x-padding", "p".repeat(header_bytes))
            .send()
    };
    let max = platform::runtime::MAX_CONNECTION_BUFFER;
    assert_eq!(head_of(max / 2).await.unwrap().status(), 200);
    let too_large = head_of(max + 1).await.unwrap();
    assert_eq!(too_large.status(), 431);
    // hyper's own answer, made a problem (see a_head_hyper_cannot_parse_…).
    assert_eq!(
        too_large.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = too_large.json().await.unwrap();
    assert_eq!(problem["status"], 431);
}

#[tokio::test]
async fn client_mistakes_get_problem_json_with_the_right_status() {
    let s = server().await;
    let c = reqwest::Client::new();
    let url = format!("{}/things", s.url());
    let post = |body: &'static str, ct: &'static str| {
        c.post(&url).header("content-type", ct).body(body).send()
    };

    let body = expect_problem(post("{not json", "application/json").await.unwrap(), 400).await;
    assert!(body["detail"].as_str().unwrap().contains("parse"), "{body}");
    expect_problem(
        post(r#"{"name": "a", "count": "many"}"#, "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    let body = expect_problem(
        post(
            r#"{"name": "a", "count": 1, "admin": true}"#,
            "application/json",
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("admin"),
        "names the unknown field: {body}"
    );
    expect_problem(
        post(r#"{"name": "a", "count": 1}"#, "text/plain")
            .await
            .unwrap(),
        415,
    )
    .await;
    let body = expect_problem(
        post(r#"{"name": "a", "count": 0}"#, "application/json")
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "count");

    let huge = format!(
        r#"{{"name": "{}", "count": 1}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 413).await;

    expect_problem(
        c.get(format!("{}/nowhere", s.url())).send().await.unwrap(),
        404,
    )
    .await;
    expect_problem(
        c.get(format!("{}/things/not-a-uuid", s.url()))
            .bearer_auth("x")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    expect_problem(
        c.get(format!("{}/things/{}", s.url(), uuid::Uuid::nil()))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_declared_or_streamed_and_the_caller_reads_it() {
    let s = server().await;
    let c = reqwest::Client::new();
    let url = format!("{}/things", s.url());
    let limit_detail = "the request body is larger than the limit of 1048576 bytes";
    // 12 MiB: more than loopback's socket buffers hold, so a server that closed the
    // connection with the body unread would leave the client a reset, not an answer.
    let big = 12 * 1024 * 1024;
    let declared = c
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; big])
        .send()
        .await
        .expect("the caller reads the answer to a declared oversized body");
    let body = expect_problem(declared, 413).await;
    assert_eq!(body["detail"], limit_detail);

    let chunks = (0..big / (64 * 1024)).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
    let streamed = c
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("the caller reads the answer to a streamed oversized body");
    let body = expect_problem(streamed, 413).await;
    assert_eq!(body["detail"], limit_detail);
}

#[tokio::test]
async fn a_request_id_is_kept_and_returned() {
    let s = server().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/nowhere", s.url()))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 404).await;
    assert_eq!(body["instance"], "abc-123");
}

#[tokio::test]
async fn a_request_without_a_usable_id_gets_a_new_time_ordered_one() {
    let s = server().await;
    for sent in [None, Some("not an id!"), Some("")] {
        let mut req = reqwest::Client::new().get(format!("{}/nowhere", s.url()));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let given = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let id = uuid::Uuid::parse_str(&given).expect("a UUID");
        assert_eq!(id.get_version_num(), 7, "{given} for {sent:?}");
        assert_eq!(given, id.hyphenated().to_string(), "lower-case, hyphenated");
        let body = expect_problem(resp, 404).await;
        assert_eq!(body["instance"], given.as_str());
    }
}

#[tokio::test]
async fn operational_routes_answer() {
    let s = server().await;
    let c = reqwest::Client::new();
    let health: Value = c
        .get(format!("{}/health", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "UP");
    let ready = c.get(format!("{}/ready", s.url())).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let spec: Value = c
        .get(format!("{}/openapi.json", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["paths"]["/things"]["post"]["operationId"],
        "create_thing"
    );
    // A thing refuses fields it does not name (the unknown-field check above), and says so.
    assert_eq!(
        spec["components"]["schemas"]["Thing"]["additionalProperties"],
        false
    );
    let docs = c
        .get(format!("{}/docs", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("swagger"), "Swagger UI is served");
    assert!(
        docs.contains(r#""additionalProperties": false"#),
        "showing the document as served"
    );
    c.post(format!("{}/things", s.url()))
        .json(&serde_json::json!({"name": "a", "count": 1}))
        .send()
        .await
        .unwrap();
    let metrics = c
        .get(format!("{}/metrics", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"create_thing\"")
            && l.contains("status=\"200\"")),
        "{metrics}"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn a_request_whose_client_went_away_is_logged_and_counted_as_499() {
    let s = server().await;
    let went_away = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("http_requests_total")
                    && l.contains("service=\"things\"")
                    && l.contains("status=\"499\"")
            })
            .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
    };
    let scrape = || async {
        reqwest::get(format!("{}/metrics", s.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = went_away(&scrape().await);
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"GET /things/slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while went_away(&scrape().await) != before + 1 {
        assert!(
            Instant::now() < deadline,
            "no 499 counted: {}",
            scrape().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_sends_no_whole_request_in_time_is_disconnected() {
    let idle_limit = Duration::from_millis(300);
    let s = server_with_idle_limit(idle_limit).await;
    let half_a_head = "GET /health HTTP/1.1\r\nHost: x\r\n";
    let idle_after_an_answer = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    for (what, sent, answered) in [
        ("nothing", "", false),
        ("half a head", half_a_head, false),
        // hyper reads these bytes to tell HTTP/2 from HTTP/1, with no limit of its own.
        (
            "the start of an HTTP/2 preface",
            "PRI * HTTP/2.0\r\n",
            false,
        ),
        // Told to go away, it must answer a ping before the connection closes: it never does.
        (
            "an HTTP/2 preface and no request",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
            false,
        ),
        (
            "nothing after its first request",
            idle_after_an_answer,
            true,
        ),
    ] {
        let started = Instant::now();
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(sent.as_bytes()).await.unwrap();
        let mut received = Vec::new();
        // Closed, or reset: either ends the read.
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("a client that sent {what} is still connected after 10 s"));
        let waited = started.elapsed();
        assert!(
            waited >= idle_limit,
            "a client that sent {what} was let go after {waited:?}"
        );
        let received = String::from_utf8_lossy(&received);
        assert_eq!(
            received.starts_with("HTTP/1.1 200"),
            answered,
            "a client that sent {what} got: {received:?}"
        );
    }
}

/// An HTTP/2 (prior knowledge) connection to `addr`, driven by a task that ends when the
/// connection does; and when it was opened.
async fn http2_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
    Instant,
) {
    let opened = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    (send, tokio::spawn(connection), opened)
}

async fn http2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    url: String,
) -> (u16, hyper::body::Bytes) {
    use http_body_util::BodyExt;
    let req = poem::http::Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("an HTTP/2 answer");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn an_http2_connection_with_no_request_in_flight_is_closed_after_the_limit() {
    let idle_limit = Duration::from_millis(300);
    let s = server_with_idle_limit(idle_limit).await;
    // One that never asks, and one that asks once then waits: both closed, neither early.
    for requests in [0, 1] {
        let (mut send, connection, opened) = http2_connection(s.addr).await;
        let mut last_answered = opened;
        for _ in 0..requests {
            let (status, _) = http2_get(&mut send, format!("{}/health", s.url())).await;
            assert_eq!(status, 200);
            last_answered = Instant::now();
        }
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .unwrap_or_else(|_| {
                panic!("an HTTP/2 connection after {requests} requests is open after 10 s")
            })
            .unwrap()
            .expect("a graceful close");
        let idle = last_answered.elapsed();
        assert!(
            idle >= idle_limit,
            "closed after {idle:?} with no request in flight"
        );
    }
}

#[tokio::test]
async fn an_http2_client_that_gives_its_answer_no_window_is_disconnected() {
    let idle_limit = Duration::from_millis(300);
    let s = server_with_idle_limit(idle_limit).await;
    // Asking for more answers now and then does not hide the one left waiting.
    for keeps_asking in [false, true] {
        // A window of 0 for every stream: the answer's one part waits for room that never
        // comes.
        let stream = TcpStream::connect(s.addr).await.unwrap();
        let (mut send, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(0)
                .handshake::<_, http_body_util::Empty<hyper::body::Bytes>>(
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await
                .expect("an HTTP/2 handshake");
        let connection = tokio::spawn(connection);
        let url = format!("{}/health", s.url());
        let get = move || {
            poem::http::Request::get(url.clone())
                .body(http_body_util::Empty::new())
                .unwrap()
        };
        let resp = send.send_request(get()).await.expect("the answer's head");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body();
        // The sender is kept (dropped, the client would close the connection itself).
        let asking = tokio::spawn(async move {
            let mut held = Vec::new();
            if keeps_asking {
                loop {
                    tokio::time::sleep(idle_limit * 2 / 3).await;
                    match send.send_request(get()).await {
                        Ok(resp) => held.push(resp),
                        Err(_) => break,
                    }
                }
            }
            std::future::pending::<()>().await;
            drop((send, held));
        });
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .unwrap_or_else(|_| {
                panic!("held open (asking again: {keeps_asking}), not dropped within the limits")
            })
            .unwrap()
            .expect_err("dropped, not closed gracefully");
        drop(body);
        asking.abort();
    }
}

#[tokio::test]
async fn a_request_taking_longer_than_the_limit_is_answered_over_either_protocol() {
    let idle_limit = Duration::from_millis(300);
    let slow = poem::endpoint::make(move |_| async move {
        tokio::time::sleep(idle_limit * 2).await;
        "done"
    });
    let s = TestServer::start_with_idle_limit(slow, idle_limit).await;
    let resp = reqwest::get(format!("{}/slow", s.url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    let (mut send, connection, _) = http2_connection(s.addr).await;
    let (status, body) = http2_get(&mut send, format!("{}/slow", s.url())).await;
    assert_eq!((status, &body[..]), (200, &b"done"[..]));
    // Used again after the wait, it still answers.
    let (status, _) = http2_get(&mut send, format!("{}/slow", s.url())).await;
    assert_eq!(status, 200);
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn a_response_streaming_for_longer_than_the_limit_is_sent_whole_over_either_protocol() {
    use futures::StreamExt;
    let idle_limit = Duration::from_millis(300);
    // Ten parts, 100 ms apart: the body takes over three times the limit.
    let streaming = poem::endpoint::make(|_| async {
        let parts = futures::stream::iter(0..10).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(i.to_string())
        });
        poem::Body::from_bytes_stream(parts)
    });
    let s = TestServer::start_with_idle_limit(streaming, idle_limit).await;
    let resp = reqwest::get(format!("{}/stream", s.url())).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "0123456789");
    let (mut send, _, _) = http2_connection(s.addr).await;
    let (status, body) = http2_get(&mut send, format!("{}/stream", s.url())).await;
    assert_eq!((status, &body[..]), (200, &b"0123456789"[..]));
}

/// How long the long answer is: far more than loopback's socket buffers hold.
const LONG_ANSWER: usize = 16 << 20;

/// A server whose limits are `idle_limit`, answering every request with `LONG_ANSWER`
/// bytes streamed (chunked, over HTTP/1.1) in 64 KiB parts.
async fn server_of_long_answers(idle_limit: Duration) -> TestServer {
    use futures::StreamExt;
    let long = poem::endpoint::make(|_| async {
        let parts = futures::stream::iter(0..LONG_ANSWER / (64 << 10))
            .map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 << 10]));
        poem::Body::from_bytes_stream(parts)
    });
    TestServer::start_with_idle_limit(long, idle_limit).await
}

/// An HTTP/1.1 connection that has asked for the long answer, with a small receive buffer.
async fn asked_for_a_long_answer(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn a_client_that_stops_taking_its_answer_is_disconnected_and_a_slow_one_is_not() {
    let idle_limit = Duration::from_millis(300);
    let s = server_of_long_answers(idle_limit).await;

    // One that reads in bursts with pauses well within the limit (a loaded machine may
    // stretch them) gets it all.
    let mut slow = asked_for_a_long_answer(s.addr).await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    // Until the chunked body's last chunk: a count of bytes could stop short of it.
    while !received.ends_with(b"\r\n0\r\n\r\n") {
        tokio::time::sleep(idle_limit / 3).await;
        // A burst: what has arrived, and what follows within 20 ms.
        while let Ok(read) =
            tokio::time::timeout(Duration::from_millis(20), slow.read(&mut buf)).await
        {
            let n = read.expect("the slow reader's connection stays open");
            assert!(
                n > 0,
                "closed after {} bytes of a slow reader's answer",
                received.len()
            );
            received.extend_from_slice(&buf[..n]);
        }
    }
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        received.len() > LONG_ANSWER + head_end,
        "the whole answer arrived"
    );

    // One that never reads is dropped within two limits of its answer stalling: reading
    // afterwards finds the answer cut short.
    let mut stalled = asked_for_a_long_answer(s.addr).await;
    tokio::time::sleep(idle_limit * 4).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut received))
        .await
        .expect("a stalled client's connection is closed");
    assert!(
        received.len() < LONG_ANSWER,
        "a client that stopped reading was kept: {} bytes, then {read:?}",
        received.len()
    );

    // Over HTTP/2: an answer whose body is left unread (its stream window full) is cut.
    let (mut send, connection, _) = http2_connection(s.addr).await;
    let req = poem::http::Request::get(format!("{}/long", s.url()))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("an HTTP/2 answer");
    assert_eq!(resp.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("a stalled HTTP/2 connection is closed");
    assert!(
        ended.unwrap().is_err(),
        "the connection was dropped, not closed gracefully"
    );
    drop(resp);
}

/// Sends `head` on a connection of its own and reads what comes back until the server closes.
async fn answer_to_raw(addr: std::net::SocketAddr, head: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection after its answer")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// One answer's head and body out of `answer`, which must hold it whole.
fn head_and_body(answer: &str) -> (&str, &str) {
    let (head, rest) = answer.split_once("\r\n\r\n").expect("a whole head");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a length")
        .parse()
        .unwrap();
    assert!(rest.len() >= length, "the whole body: {answer}");
    (head, &rest[..length])
}

#[tokio::test]
async fn a_head_hyper_cannot_parse_is_answered_with_problem_json() {
    let s = server().await;
    let too_many_fields: String = (0..101).map(|i| format!("x-field-{i}: {i}\r\n")).collect();
    for (head, status, said) in [
        (
            "GET /health HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed",
        ),
        (
            "GET /health HTTP/9.9\r\nhost: x\r\n\r\n".to_owned(),
            "400 Bad Request",
            "malformed",
        ),
        (
            format!("GET /health HTTP/1.1\r\nhost: x\r\n{too_many_fields}\r\n"),
            "431 Request Header Fields Too Large",
            "100 header fields",
        ),
    ] {
        let answer = answer_to_raw(s.addr, head.as_bytes()).await;
        let (head, body) = head_and_body(&answer);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{answer}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/problem+json\r\n"),
            "{answer}"
        );
        let problem: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            problem["status"].as_u64(),
            status[..3].parse::<u64>().ok(),
            "{body}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(said), "{detail}");
        // An id to quote, the problem's instance.
        let request_id = head
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("an x-request-id: {answer}"));
        assert_eq!(problem["instance"], request_id, "{answer}");
    }
}

/// A body of known length, sent in two parts: the second a moment after the first has been
/// taken, so that it is written on its own.
struct TwoParts {
    parts: std::collections::VecDeque<hyper::body::Bytes>,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    length: u64,
}

impl hyper::body::Body for TwoParts {
    type Data = hyper::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.parts.len() == 1 {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            std::task::ready!(pause.as_mut().poll(cx));
        }
        std::task::Poll::Ready(
            this.parts
                .pop_front()
                .map(|p| Ok(hyper::body::Frame::data(p))),
        )
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.length)
    }
}

#[tokio::test]
async fn a_body_ending_as_hypers_answer_to_a_bad_head_would_is_sent_as_it_is() {
    use http_body_util::BodyExt;
    const FIRST: &str = "what follows looks like hyper's answer to a bad head: ";
    const LAST: &str = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 19:36:45 GMT\r\n\r\n";
    let endpoint = poem::endpoint::make(|_| async {
        let body = TwoParts {
            parts: [FIRST, LAST].map(hyper::body::Bytes::from).into(),
            pause: None,
            length: (FIRST.len() + LAST.len()) as u64,
        };
        poem::Body::from(body.map_err(std::io::Error::other).boxed())
    });
    let s = TestServer::start(endpoint).await;
    let expected = format!("{FIRST}{LAST}");

    // On a connection that goes on: the next requests are answered too, one at a time and
    // two sent at once.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    for at_once in [1, 2, 1] {
        conn.write_all(&b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".repeat(at_once))
            .await
            .unwrap();
        let mut answers = Vec::new();
        let mut buf = [0u8; 4096];
        let whole = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("the answers arrive")
                .unwrap();
            assert!(n > 0, "closed after {answers:?}");
            answers.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answers);
            if text.matches(&expected).count() == at_once && text.ends_with(&expected) {
                break text.into_owned();
            }
        };
        assert_eq!(whole.matches("HTTP/1.1 200 OK\r\n").count(), at_once);
        let (head, body) = head_and_body(&whole);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{whole}");
        assert_eq!(body, expected);
    }

    // On a connection closed after it.
    let answer = answer_to_raw(
        s.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = head_and_body(&answer);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(body, expected);
}
