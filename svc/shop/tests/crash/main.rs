//! Saga crash tests that inject failures through fail-rs failpoints. Failpoints are
//! process-wide, so these run in a test binary of their own, apart from the other sagas.

// The saga harness is shared with tests/it; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::time::Duration;

use support::Saga;

/// How many entries `group` found already applied (redeliveries), from the process's metrics.
fn duplicates_seen_by(group: &str) -> u64 {
    platform::metrics::handle()
        .render()
        .lines()
        .filter(|l| l.starts_with("stream_entries_total{"))
        .filter(|l| {
            l.contains(&format!("group=\"{group}\"")) && l.contains("outcome=\"duplicate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A checkout by `token` with `key` that dies at `failpoint` (503), as a killed process would.
async fn checkout_dying_at(saga: &Saga, token: &str, key: &str, failpoint: &str) {
    fail::cfg(failpoint, "1*return").unwrap();
    let first = saga.checkout(token, key).await;
    fail::remove(failpoint);
    assert_eq!(first.status(), 503);
}

/// A checkout refused with 409 because the stock it reserved is no longer held.
async fn refused_as_no_longer_held(checkout: reqwest::Response) {
    let problem = platform::testing::expect_problem(checkout, 409).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no longer held"),
        "{problem}"
    );
}

/// Failpoints are process-wide: one test at a time sets them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn consumers_killed_after_applying_before_xack_get_it_again_and_change_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Entries left unacknowledged are claimed again after 300 ms instead of 30 s.
    let saga = Saga::start_with(
        platform::testing::redis_url(),
        &[("stream_claim_idle_ms", "300")],
    )
    .await;
    let mug = saga.product(1250, 5).await;
    let (email, ann) = saga.registered_customer("ann").await;
    saga.eventually("the welcome email arrived", || async {
        !saga.smtp.messages_to(&email).is_empty()
    })
    .await;

    // Each of the four consumer groups of payment.events commits its effect of the payment
    // and then "dies" before XACK, as a killed process would.
    fail::cfg("consumer::after_commit_before_ack", "4*return").unwrap();
    let order = saga.buy(&ann, mug, "crash").await;
    saga.assert_each_paid_once(mug, 5, &[(email, ann, order)], Duration::from_secs(20))
        .await;
    for group in ["orders", "inventory", "cart", "notification"] {
        saga.eventually_within(
            Duration::from_secs(20),
            &format!("{group} got the payment again"),
            || async { duplicates_seen_by(group) >= 1 },
        )
        .await;
    }
    fail::remove("consumer::after_commit_before_ack");
}

#[tokio::test]
async fn a_retry_after_the_first_attempts_reservation_lapsed_is_refused() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let saga = Saga::with_reservations_of(1).await;
    let (_, cal) = saga.customer();
    let mug = saga.product(1250, 2).await;
    saga.add_to_cart(&cal, mug, 2).await;
    // The first attempt reserves the stock and fails before the order is written.
    checkout_dying_at(&saga, &cal, "again", "orders::after_reserve_before_insert").await;
    saga.eventually("the reservation lapsed", || async {
        saga.stock(mug).await["reserved"] == 0
    })
    .await;
    // Retried with the same key, it must not open a payment session on stock nobody holds.
    let retry = saga.checkout(&cal, "again").await;
    refused_as_no_longer_held(retry).await;
    // A new attempt reserves again.
    assert_eq!(saga.checkout(&cal, "anew").await.status(), 201);
}

#[tokio::test]
async fn a_reservation_lapsing_before_payment_opens_its_session_is_the_customers_409() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let saga = Saga::with_reservations_of(1).await;
    let (_, eve) = saga.customer();
    let mug = saga.product(1250, 2).await;
    saga.add_to_cart(&eve, mug, 2).await;
    // The checkout stalls after writing its order, past its 1 s reservation: payment then
    // refuses a session that would close in the past (its 422 names closes_by, a field the
    // customer never sent), and the customer is told the stock is no longer held.
    fail::cfg("orders::after_insert_before_session", "1*sleep(1500)").unwrap();
    let stalled = saga.checkout(&eve, "stalled").await;
    fail::remove("orders::after_insert_before_session");
    refused_as_no_longer_held(stalled).await;
    saga.wait_for_stock(mug, 2, "the lapsed reservation was released")
        .await;
    assert_eq!(
        saga.checkout(&eve, "anew").await.status(),
        201,
        "a new attempt reserves again"
    );
}

#[tokio::test]
async fn a_retry_after_the_order_was_written_pays_the_total_written_not_a_new_price() {
    use reqwest::Method;
    use serde_json::{Value, json};
    let _alone = ONE_AT_A_TIME.lock().await;
    let saga = Saga::start().await;
    let (_, dee) = saga.customer();
    let mug = saga.product(1250, 2).await;
    saga.add_to_cart(&dee, mug, 2).await;
    // The first attempt writes the order (2 × 12.50) and fails before its payment session.
    checkout_dying_at(&saga, &dee, "retry", "orders::after_insert_before_session").await;
    // The price goes up before the customer retries.
    let path = format!("/api/v1/products/{mug}");
    let current = saga
        .send("products", Method::GET, &path, &saga.manager)
        .await;
    let tag = current.headers()["etag"].to_str().unwrap().to_owned();
    let changed = saga
        .call("products", Method::PATCH, &path, &saga.manager)
        .header("if-match", tag)
        .json(&json!({"price": {"amount": 9900, "currency": "EUR"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let retry = saga.checkout(&dee, "retry").await;
    assert_eq!(retry.status(), 201);
    let placed: Value = retry.json().await.unwrap();
    assert_eq!(placed["order"]["total"]["amount"], 2500);
    saga.pay(&placed, "4242 4242 4242 4242").await;
    let payments = saga.payments(&dee).await;
    assert_eq!(
        payments["items"][0]["amount"]["amount"], 2500,
        "charged the order's total: {payments}"
    );
}

#[tokio::test]
async fn an_order_whose_checkout_never_finished_is_cancelled_once_its_reservation_lapsed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let saga = Saga::with_reservations_of(1).await;
    let (user, eve) = saga.customer();
    let mug = saga.product(1250, 2).await;
    saga.add_to_cart(&eve, mug, 1).await;
    // The order is written and the checkout dies before its payment session, never retried.
    checkout_dying_at(&saga, &eve, "left", "orders::after_insert_before_session").await;
    let id = orders::checkout::order_id(user, "left").to_string();
    assert_eq!(saga.order(&eve, &id).await["status"], "PENDING");
    saga.eventually("the abandoned order is cancelled", || async {
        saga.order(&eve, &id).await["status"] == "CANCELLED"
    })
    .await;
    saga.wait_for_stock(mug, 2, "its stock is free").await;
}
