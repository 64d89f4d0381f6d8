//! The breaker through the gateway, against a controllable upstream.

use std::time::{Duration, Instant};

use platform::testing::expect_problem;

use crate::support::{Edge, Upstream};

/// A gateway routing products to one controllable upstream.
async fn products_behind_a_gateway() -> (Edge, Upstream) {
    products_behind_a_gateway_with(&[]).await
}

/// As [`products_behind_a_gateway`], with the test's own settings over the tests' defaults.
async fn products_behind_a_gateway_with(overrides: &[(&str, &str)]) -> (Edge, Upstream) {
    let mut edge = Edge::start(overrides).await;
    let products = Upstream::new();
    edge.add("products", &products).await;
    (edge, products)
}

/// A gateway whose breaker for products was opened by 10 failures, with its clock stepped to
/// the end of the open period: the next calls are trials.
async fn past_the_open_period() -> (Edge, Upstream) {
    past_the_open_period_with(&[]).await
}

/// As [`past_the_open_period`], with the test's own settings over the tests' defaults.
async fn past_the_open_period_with(overrides: &[(&str, &str)]) -> (Edge, Upstream) {
    let (edge, products) = products_behind_a_gateway_with(overrides).await;
    edge.calls(&products, &[500; 10]).await;
    assert_eq!(edge.breaker("products").await, "open");
    edge.gateway.advance_breaker_clock(OPEN_PERIOD);
    (edge, products)
}

/// The seed's open period (`micromart/gateway/breaker_open_ms`), which the tests' gateways keep.
const OPEN_PERIOD: Duration = Duration::from_secs(10);
/// How far before the open period's end a test steps first: more than the real time its
/// requests take meanwhile, on a loaded machine too.
const BEFORE_THE_END: Duration = Duration::from_secs(3);

/// Refused at once, without a call to the upstream: the breaker is open. The problem, and the
/// seconds Retry-After asks the caller to wait.
async fn refused_while_open(edge: &Edge, products: &Upstream) -> (serde_json::Value, u64) {
    let hits = products.hits();
    let resp = edge.get("/api/v1/products").await;
    let retry_after = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let problem = expect_problem(resp, 503).await;
    assert_eq!(
        products.hits(),
        hits,
        "an open breaker does not call the upstream"
    );
    (problem, retry_after)
}

#[tokio::test]
async fn an_idle_breaker_whose_open_period_is_over_is_shown_half_open() {
    let (edge, products) = past_the_open_period().await;
    let hits = products.hits();
    assert_eq!(edge.breaker("products").await, "half_open");
    assert_eq!(products.hits(), hits, "no call was needed to show it");
}

/// Five good calls after five failures: the window of 10 is full, half failures, and opens.
async fn five_successes_complete_a_window_that_opens_it(edge: &Edge, products: &Upstream) {
    edge.calls(products, &[200; 5]).await;
    assert_eq!(
        edge.breaker("products").await,
        "open",
        "5 failures of 10 opened it"
    );
}

#[tokio::test]
async fn five_failures_of_ten_open_it_and_open_answers_503_without_calling_the_upstream() {
    let (edge, products) = products_behind_a_gateway().await;
    edge.calls(
        &products,
        &[500, 200, 503, 200, 500, 200, 502, 200, 200, 500],
    )
    .await;
    assert_eq!(products.hits(), 10);
    products.answer(200);
    let (problem, retry_after) = refused_while_open(&edge, &products).await;
    assert!(problem["detail"].as_str().unwrap().contains("products"));
    assert_eq!(retry_after, 10, "the open period's rest, rounded up");
    assert_eq!(edge.breaker("products").await, "open");
    // Requests by route and status, the upstream's latencies, the breaker's state and its
    // transitions. (Every gateway in this test process shares one registry: only series
    // are checked, not values other tests move too.)
    let metrics = edge.metrics().await;
    for (name, labels) in [
        (
            "http_requests_total",
            &[("route", "products"), ("status", "503")][..],
        ),
        (
            "http_requests_total",
            &[("route", "products"), ("status", "502")],
        ),
        (
            "gateway_upstream_duration_seconds",
            &[("upstream", "products")],
        ),
        ("gateway_breaker_state", &[("upstream", "products")]),
        (
            "gateway_breaker_transitions_total",
            &[("upstream", "products"), ("to", "open")],
        ),
        (
            "gateway_breaker_rejected_total",
            &[("upstream", "products")],
        ),
    ] {
        assert!(
            has_series(&metrics, name, labels),
            "{name} {labels:?} in\n{metrics}"
        );
    }
    assert!(!has_series(
        &metrics,
        "http_requests_total",
        &[("route", "products"), ("status", "418")]
    ));
}

/// Whether the Prometheus text `metrics` has a sample of `name` with every one of `labels`.
fn has_series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    metrics.lines().any(|line| {
        line.strip_prefix(name)
            .and_then(|rest| {
                rest.strip_prefix('{')
                    .or_else(|| rest.strip_prefix("_count{"))
            })
            .is_some_and(|rest| {
                labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
    })
}

#[tokio::test]
async fn a_switch_of_protocols_nobody_asked_for_is_502_and_a_failure() {
    let (edge, products) = products_behind_a_gateway().await;
    products.answer(101);
    for _ in 0..5 {
        expect_problem(edge.get("/api/v1/products").await, 502).await;
    }
    products.answer(200);
    five_successes_complete_a_window_that_opens_it(&edge, &products).await;
}

#[tokio::test]
async fn an_answer_broken_off_mid_body_is_a_failure() {
    let (edge, products) = products_behind_a_gateway().await;
    products.cut_bodies(true);
    for _ in 0..5 {
        let resp = edge.get("/api/v1/products").await;
        assert_eq!(resp.status(), 200, "the head came whole");
        assert!(resp.bytes().await.is_err(), "the body did not");
    }
    products.cut_bodies(false);
    five_successes_complete_a_window_that_opens_it(&edge, &products).await;
}

#[tokio::test]
async fn four_failures_of_ten_and_any_number_of_4xx_keep_it_closed() {
    let (edge, products) = products_behind_a_gateway().await;
    edge.calls(
        &products,
        &[500, 500, 500, 500, 200, 200, 200, 200, 200, 200],
    )
    .await;
    edge.calls(&products, &[404; 12]).await;
    edge.calls(&products, &[400, 401, 403, 409, 422, 429]).await;
    assert_eq!(edge.breaker("products").await, "closed");
}

#[tokio::test]
async fn ten_seconds_after_opening_three_trials_pass_a_concurrent_fourth_is_refused_and_successes_close_it()
 {
    // The trials are held at the upstream while the test looks on: a limit that a loaded
    // machine cannot reach meanwhile.
    let (edge, products) = products_behind_a_gateway_with(&[("upstream_timeout_ms", "5000")]).await;
    edge.calls(&products, &[500; 10]).await;
    assert_eq!(edge.gateway.live().breaker.open_for, OPEN_PERIOD);
    // Shortly before the end (the test's own time runs on the real clock besides).
    edge.gateway
        .advance_breaker_clock(OPEN_PERIOD - BEFORE_THE_END);
    let (_, retry_after) = refused_while_open(&edge, &products).await;
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    edge.gateway.advance_breaker_clock(BEFORE_THE_END);
    products.answer(200);
    // The trials reach the upstream and wait there: a fourth caller comes while all three
    // are out, and is refused without waiting for them.
    products.hold();
    let trials = futures::future::join_all((0..3).map(|_| edge.get("/api/v1/products")));
    let fourth = async {
        products.until_hits(13).await;
        expect_problem(edge.get("/api/v1/products").await, 503).await;
        assert_eq!(edge.breaker("products").await, "half_open");
        products.release();
    };
    let (trials, ()) = tokio::join!(trials, fourth);
    for trial in trials {
        assert_eq!(trial.status(), 200, "three trials pass");
        trial.bytes().await.expect("the answer's body came whole");
    }
    assert_eq!(products.hits(), 13);
    assert_eq!(edge.breaker("products").await, "closed");
}

#[tokio::test]
async fn two_successful_trials_of_three_close_it_with_a_fresh_window() {
    let (edge, products) = past_the_open_period().await;
    edge.calls(&products, &[200, 500, 200]).await;
    assert_eq!(edge.breaker("products").await, "closed");
    // The failures before it opened are forgotten: the next window needs 10 calls of its own.
    edge.calls(&products, &[500; 5]).await;
    assert_eq!(edge.breaker("products").await, "closed");
    five_successes_complete_a_window_that_opens_it(&edge, &products).await;
}

/// `times` requests for products, each given up by its caller `after` it was sent, before any
/// answer, and each known to have reached the upstream.
async fn given_up(edge: &Edge, products: &Upstream, times: usize, after: Duration) {
    let client = reqwest::Client::builder().timeout(after).build().unwrap();
    let before = products.hits();
    for _ in 0..times {
        let gave_up = client
            .get(edge.url("/api/v1/products"))
            .bearer_auth(edge.token())
            .send()
            .await
            .unwrap_err();
        assert!(gave_up.is_timeout(), "{gave_up}");
    }
    // A request given up before the gateway sent it on is no call at all: each must have gone.
    products.until_hits(before + times).await;
}

#[tokio::test]
async fn trials_whose_callers_hang_up_are_judged_by_the_answers_they_would_have_had() {
    // A limit well beyond the time the trials are held below.
    let (edge, products) = past_the_open_period_with(&[("upstream_timeout_ms", "3000")]).await;
    products.answer(200);
    products.hold();
    // Three callers take the three trials and hang up before the answer: the exchanges go on
    // without them, and keep their places until the instance answers.
    given_up(&edge, &products, 3, Duration::from_millis(300)).await;
    refused_while_open(&edge, &products).await;
    assert_eq!(edge.breaker("products").await, "half_open");
    // The instance answers them, whole: three successes close the breaker.
    products.release();
    platform::testing::eventually_within(Duration::from_secs(2), "the trials judged", || async {
        edge.breaker("products").await == "closed"
    })
    .await;
    assert_eq!(products.hits(), 10 + 3);
}

#[tokio::test]
async fn a_hanging_upstream_whose_callers_give_up_first_counts_as_failing() {
    // Callers that give up before the gateway's limit (1 s here): each exchange is followed
    // to the limit, and counts as the 504 a caller still there got.
    let (edge, products) = products_behind_a_gateway_with(&[("upstream_timeout_ms", "1000")]).await;
    products.delay(Duration::from_secs(5));
    given_up(&edge, &products, 5, Duration::from_millis(300)).await;
    // Past the last one's limit, with time to spare.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    products.delay(Duration::ZERO);
    edge.calls(&products, &[200; 5]).await;
    assert_eq!(
        edge.breaker("products").await,
        "open",
        "5 given-up calls to a hanging instance of 10 opened it"
    );
    // Their callers got no answer, so no request count has them: this one does.
    assert!(has_series(
        &edge.metrics().await,
        "gateway_given_up_calls_total",
        &[("upstream", "products"), ("followed", "true")]
    ));
}

/// Five calls to products whose callers give up, then answered by the instance (with what
/// it answers by then), and time for them to be judged.
async fn answered_after_their_callers_gave_up(edge: &Edge, products: &Upstream) {
    products.hold();
    given_up(edge, products, 5, Duration::from_millis(300)).await;
    products.release();
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn calls_whose_callers_give_up_and_which_the_instance_answers_count_as_succeeding() {
    // A limit far beyond the answers' time, on a loaded machine too.
    let (edge, products) = products_behind_a_gateway_with(&[("upstream_timeout_ms", "3000")]).await;
    answered_after_their_callers_gave_up(&edge, &products).await;
    // Counted as failures, these would open it now (9 of 10); not counted, the window would
    // not be full at the next failure.
    edge.calls(&products, &[500, 500, 500, 500, 200]).await;
    assert_eq!(edge.breaker("products").await, "closed", "4 failures of 10");
    edge.calls(&products, &[500]).await;
    assert_eq!(
        edge.breaker("products").await,
        "open",
        "the last 10: 4 given-up successes, 5 failures and a success"
    );
}

#[tokio::test]
async fn a_long_answer_to_a_caller_gone_is_not_read_through_and_has_no_outcome() {
    let (edge, products) = products_behind_a_gateway_with(&[("upstream_timeout_ms", "3000")]).await;
    // Answers longer than the gateway reads for callers who have gone (1 MiB).
    products.pad_answers(4 << 20);
    answered_after_their_callers_gave_up(&edge, &products).await;
    products.pad_answers(0);
    // Counted as successes or as failures, these would make the window full (and open it)
    // at the fifth failure.
    edge.calls(&products, &[500; 5]).await;
    assert_eq!(
        edge.breaker("products").await,
        "closed",
        "5 outcomes in all"
    );
}

#[tokio::test]
async fn trials_whose_callers_hang_up_mid_answer_have_no_outcome_and_give_their_places_back() {
    let (edge, products) = past_the_open_period().await;
    products.answer(200);
    products.pause_mid_body(Duration::from_millis(200));
    // Three callers take the three trials, get the head and the first part of the answer,
    // and hang up: the instance did nothing wrong, nor has it shown it answers whole.
    for _ in 0..3 {
        let mut resp = edge.get("/api/v1/products").await;
        assert_eq!(resp.status(), 200);
        resp.chunk().await.expect("the first part came");
    }
    assert_eq!(
        edge.breaker("products").await,
        "half_open",
        "answers not all delivered are no outcome"
    );
    // Past the pause, each answer would have ended had its caller stayed: still no outcome.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        edge.breaker("products").await,
        "half_open",
        "answers not all delivered are no outcome"
    );
    products.pause_mid_body(Duration::ZERO);
    edge.calls(&products, &[200; 3]).await;
    assert_eq!(edge.breaker("products").await, "closed");
}

#[tokio::test]
async fn trials_whose_callers_leave_their_answers_untaken_give_their_places_to_new_trials() {
    // An upstream limit, and so a wait on callers, long enough that a loaded machine lets the
    // four calls below in well within it.
    let (edge, products) = past_the_open_period_with(&[("upstream_timeout_ms", "1500")]).await;
    products.answer(200);
    // Far more than loopback's socket buffers hold: an answer its caller does not read stops
    // going out, and waits on its caller.
    products.pad_answers(64 << 20);
    let mut untaken = Vec::new();
    for _ in 0..3 {
        let resp = edge.get("/api/v1/products").await;
        assert_eq!(resp.status(), 200);
        untaken.push(resp);
    }
    expect_problem(edge.get("/api/v1/products").await, 503).await;
    // Past the limit of waiting on their callers, the three give their places to the next
    // callers, whose answers decide.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    products.pad_answers(0);
    edge.calls(&products, &[200; 3]).await;
    assert_eq!(edge.breaker("products").await, "closed");
    drop(untaken);
}

#[tokio::test]
async fn two_failed_trials_reopen_it_for_another_open_period() {
    let (edge, products) = past_the_open_period().await;
    edge.calls(&products, &[500, 200, 500]).await;
    assert_eq!(edge.breaker("products").await, "open");
    refused_while_open(&edge, &products).await;
    // Shortly before the end (the test's own time runs on the real clock besides).
    edge.gateway
        .advance_breaker_clock(OPEN_PERIOD - BEFORE_THE_END);
    refused_while_open(&edge, &products).await;
    edge.gateway.advance_breaker_clock(BEFORE_THE_END);
    edge.calls(&products, &[200; 3]).await;
    assert_eq!(edge.breaker("products").await, "closed");
}

/// A call to products answered 504 after a time within `range`.
async fn timed_out_after(edge: &Edge, range: std::ops::Range<Duration>) {
    let started = Instant::now();
    let resp = edge.get("/api/v1/products").await;
    let elapsed = started.elapsed();
    expect_problem(resp, 504).await;
    assert!(range.contains(&elapsed), "{elapsed:?}");
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_at_the_time_limit_and_counts_as_a_failure() {
    let (edge, products) = products_behind_a_gateway().await;
    products.delay(Duration::from_secs(5));
    for _ in 0..5 {
        timed_out_after(
            &edge,
            Duration::from_millis(290)..Duration::from_millis(1500),
        )
        .await;
    }
    products.delay(Duration::ZERO);
    edge.calls(&products, &[200; 5]).await;
    assert_eq!(
        edge.breaker("products").await,
        "open",
        "5 timeouts of 10 opened it"
    );
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_at_the_seeds_5_s_and_counts_as_a_failure() {
    use platform::config::{ConfigSource, LocalConfig, default_seed_path};
    let seed = LocalConfig::from_seed(&default_seed_path()).unwrap();
    let limit = seed
        .get("micromart/gateway/upstream_timeout_ms")
        .await
        .unwrap()
        .expect("the seed sets the upstream limit");
    assert_eq!(limit, "5000");
    // A window of 2: one success and one timeout are half failures, and open it.
    let (edge, products) =
        products_behind_a_gateway_with(&[("upstream_timeout_ms", &limit), ("breaker_window", "2")])
            .await;
    edge.calls(&products, &[200]).await;
    products.delay(Duration::from_secs(8));
    timed_out_after(&edge, Duration::from_secs(5)..Duration::from_millis(6500)).await;
    assert_eq!(
        edge.breaker("products").await,
        "open",
        "the timeout counted"
    );
}
