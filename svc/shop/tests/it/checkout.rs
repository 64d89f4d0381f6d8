use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use platform::stream_trim::Trim;
use platform::testing::expect_problem;

use crate::support::Saga;

async fn order_status(saga: &Saga, token: &str, id: &str) -> String {
    saga.order(token, id).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_paid_checkout_fans_out_to_orders_inventory_cart_and_one_email() {
    let saga = Saga::start().await;
    let (email, alice) = saga.registered_customer("alice").await;
    let mug = saga.product(1250, 5).await;
    saga.add_to_cart(&alice, mug, 2).await;
    let resp = saga.checkout(&alice, "key-1").await;
    assert_eq!(resp.status(), 201);
    let placed: Value = resp.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(placed["order"]["status"], "PENDING");
    assert_eq!(
        placed["order"]["total"]["amount"], 2500,
        "priced from products"
    );
    let stock = saga.stock(mug).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(5), Some(2))
    );

    let replay: Value = saga.checkout(&alice, "key-1").await.json().await.unwrap();
    assert_eq!(
        replay["order"]["id"],
        order_id.as_str(),
        "the same key answers the same order"
    );

    saga.pay(&placed, "4242 4242 4242 4242").await;
    saga.wait_for_status(&alice, &order_id, "PAID").await;
    saga.wait_for_stock(mug, 3, "stock is committed").await;
    saga.eventually("the cart is empty", || async {
        saga.cart_lines(&alice).await == 0
    })
    .await;
    let confirmations = || saga.confirmations(&email, &order_id);
    saga.eventually("the confirmation email arrived", || async {
        confirmations() == 1
    })
    .await;
    assert_eq!(saga.history(&alice, &order_id).await, ["PENDING", "PAID"]);
    // Every consumer group of payment.events exists (their names are the ones contracts
    // lists) and has acknowledged the payment, so the producer may trim the stream.
    let trim = saga.payment.relay().trim_once().await.unwrap();
    assert!(matches!(trim, Some(Trim::Trimmed { .. })), "{trim:?}");

    // The link is all it takes to see the page: its session id is random throughout (v4),
    // without a timestamp that says when the order was placed.
    let link = placed["payment_url"].as_str().unwrap();
    let session = link.rsplit('/').next().unwrap();
    assert_eq!(
        Uuid::parse_str(session).unwrap().get_version_num(),
        4,
        "{link}"
    );

    // Paying the same session again charges nothing more.
    assert_eq!(saga.pay_again(link).await, 410);
    let payments = saga.payments(&alice).await;
    assert_eq!(payments["items"].as_array().unwrap().len(), 1);
    assert_eq!(payments["items"][0]["card_last4"], "4242");
    expect_problem(
        saga.send(
            "orders",
            Method::POST,
            &format!("/api/v1/orders/{order_id}/cancel"),
            &alice,
        )
        .await,
        409,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(confirmations(), 1, "exactly one confirmation email");
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_releases_the_stock() {
    let saga = Saga::start().await;
    let (email, bob) = saga.registered_customer("bob").await;
    let lamp = saga.product(3000, 4).await;
    saga.add_to_cart(&bob, lamp, 1).await;
    let placed: Value = saga.checkout(&bob, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    saga.pay(&placed, "4000 0000 0000 0002").await;
    saga.wait_for_status(&bob, &order_id, "CANCELLED").await;
    saga.eventually("the stock is released", || async {
        saga.stock(lamp).await["reserved"] == 0
    })
    .await;
    assert_eq!(saga.stock(lamp).await["on_hand"], 4);
    assert_eq!(
        saga.cart_lines(&bob).await,
        1,
        "a failed payment keeps the cart"
    );
    let order = saga.order(&bob, &order_id).await;
    assert!(
        order["status_reason"]
            .as_str()
            .unwrap()
            .contains("declined")
    );
    saga.expect_one_email(&email, &order_id, "failed").await;
}

#[tokio::test]
async fn an_expired_session_cancels_the_order_and_releases_the_stock() {
    let saga = Saga::start().await;
    let (email, carol) = saga.registered_customer("carol").await;
    let tea = saga.product(499, 3).await;
    saga.add_to_cart(&carol, tea, 3).await;
    let placed: Value = saga.checkout(&carol, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(saga.payment.expire_sessions().await.unwrap(), 1);
    saga.wait_for_status(&carol, &order_id, "CANCELLED").await;
    saga.eventually("the stock is released", || async {
        saga.stock(tea).await["reserved"] == 0
    })
    .await;
    assert_eq!(
        saga.pay_again(placed["payment_url"].as_str().unwrap())
            .await,
        410,
        "an expired session cannot be paid"
    );
    saga.expect_one_email(&email, &order_id, "expired").await;
}

/// Checks out 2 of `product`: the order's id and its payment session's.
async fn order_of_two(saga: &Saga, token: &str, product: Uuid) -> (String, String) {
    saga.add_to_cart(token, product, 2).await;
    let placed: Value = saga.checkout(token, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let session = placed["payment_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    (order_id, session)
}

#[tokio::test]
async fn a_charge_for_a_session_that_expired_meanwhile_is_refunded_at_once() {
    let saga = Saga::start().await;
    let (email, kim) = saga.registered_customer("kim").await;
    let tea = saga.product(499, 3).await;
    let (order_id, session) = order_of_two(&saga, &kim, tea).await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(saga.payment.expire_sessions().await.unwrap(), 1);
    saga.wait_for_status(&kim, &order_id, "CANCELLED").await;
    saga.wait_for_stock(tea, 3, "the stock is released").await;

    // The provider charged the card as the session expired; its callback comes after.
    let applied = saga.provider_reports_paid("evt-late", &session).await;
    assert_eq!(applied, payment::store::Applied::RefundedLate);
    let payment = payment_of(&saga, &kim, &order_id).await;
    assert_eq!(payment["status"], "refunded", "{payment}");
    saga.eventually("the customer is told of the refund", || async {
        saga.emails_about(&email, &order_id)
            .iter()
            .any(|subject| subject.contains("Refund"))
    })
    .await;
    assert_eq!(order_status(&saga, &kim, &order_id).await, "CANCELLED");
    // Its resend, and another callback of the same session, change nothing more.
    let resent = saga.provider_reports_paid("evt-late", &session).await;
    assert_eq!(resent, payment::store::Applied::Replay);
    let again = saga.provider_reports_paid("evt-later", &session).await;
    assert_eq!(again, payment::store::Applied::NotOpen("expired".into()));
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(payments, 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let subjects = saga.emails_about(&email, &order_id);
    assert_eq!(subjects.len(), 2, "expired, then refunded: {subjects:?}");
    assert!(
        !subjects.iter().any(|subject| subject.contains("confirmed")),
        "no order is confirmed: {subjects:?}"
    );
    let stock = saga.stock(tea).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(3), Some(0)),
        "no stock taken for it"
    );
}

#[tokio::test]
async fn a_late_charge_refunded_before_its_expiry_is_applied_leaves_the_order_cancelled() {
    let saga = Saga::claiming_quickly().await;
    let (_, lee) = saga.customer();
    let tea = saga.product(499, 3).await;
    let (order_id, session) = order_of_two(&saga, &lee, tea).await;
    saga.kill_tasks("orders");
    saga.kill_tasks("inventory");
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(saga.payment.expire_sessions().await.unwrap(), 1);
    let applied = saga.provider_reports_paid("evt-late", &session).await;
    assert_eq!(applied, payment::store::Applied::RefundedLate);
    // An instance of orders and one of inventory each took the expiry and died before
    // handling it: the refund comes to the restarted ones first.
    saga.second_payment_event_first().await;
    saga.wait_for_status(&lee, &order_id, "CANCELLED").await;
    saga.wait_for_stock(tea, 3, "the stock is released").await;
    saga.payment_events_all_handled().await;
    assert_eq!(
        saga.history(&lee, &order_id).await,
        ["PENDING", "CANCELLED"],
        "never paid"
    );
    let stock = saga.stock(tea).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(3), Some(0))
    );
}

#[tokio::test]
async fn a_backlog_of_expired_sessions_is_closed_in_one_sweep() {
    let saga = Saga::start().await;
    // The sweep is run here, and what it writes is left in the outbox: nothing else acts on
    // these sessions, whose orders do not exist.
    saga.kill_tasks("payment");
    sqlx::query(
        "INSERT INTO sessions (id, order_id, user_id, amount, currency, lines, status, expires_at)
         SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 100, 'EUR', '[]', 'open',
                now() - interval '1 minute'
         FROM generate_series(1, 250)",
    )
    .execute(saga.payment.pool())
    .await
    .unwrap();
    assert_eq!(saga.payment.expire_sessions().await.unwrap(), 250);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE status = 'open'")
        .fetch_one(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(open, 0);
}

#[tokio::test]
async fn twenty_customers_race_for_the_last_five_units_and_exactly_five_orders_are_paid() {
    let saga = Saga::start().await;
    let last = saga.product(100, 5).await;
    let customers: Vec<(Uuid, String)> = (0..20).map(|_| saga.customer()).collect();
    for (_, token) in &customers {
        saga.add_to_cart(token, last, 1).await;
    }
    let attempts = customers.iter().map(|(_, t)| saga.checkout(t, "race"));
    let responses = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        15,
        "{statuses:?}"
    );
    let mut placed = Vec::new();
    for (resp, (_, token)) in responses.into_iter().zip(&customers) {
        if resp.status() == 201 {
            let body: Value = resp.json().await.unwrap();
            placed.push((token.clone(), body));
        }
    }
    for (_, body) in &placed {
        saga.pay(body, "4242424242424242").await;
    }
    for (token, body) in &placed {
        let id = body["order"]["id"].as_str().unwrap();
        saga.wait_for_status(token, id, "PAID").await;
    }
    saga.wait_for_stock(last, 0, "all five units are sold")
        .await;
}

#[tokio::test]
async fn checkout_refuses_bad_requests_and_changes_nothing() {
    let saga = Saga::start().await;
    let (_, dan) = saga.customer();
    let (_, eve) = saga.customer();
    let mug = saga.product(1250, 5).await;
    expect_problem(saga.checkout(&dan, "empty").await, 422).await;
    saga.add_to_cart(&dan, mug, 1).await;
    let no_key = saga
        .call("orders", Method::POST, "/api/v1/orders/checkout", &dan)
        .json(&serde_json::json!({"shipping_address": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(no_key, 400).await;
    let bad_key = saga
        .call("orders", Method::POST, "/api/v1/orders/checkout", &dan)
        .header("idempotency-key", "has space")
        .json(&serde_json::json!({"shipping_address": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(bad_key, 400).await;
    let placed: Value = saga.checkout(&dan, "k1").await.json().await.unwrap();
    let other_body = saga
        .call("orders", Method::POST, "/api/v1/orders/checkout", &dan)
        .header("idempotency-key", "k1")
        .json(&serde_json::json!({"shipping_address": "somewhere else"}))
        .send()
        .await
        .unwrap();
    expect_problem(other_body, 422).await;
    let order_id = placed["order"]["id"].as_str().unwrap();
    expect_problem(
        saga.send(
            "orders",
            Method::GET,
            &format!("/api/v1/orders/{order_id}"),
            &eve,
        )
        .await,
        404,
    )
    .await;
    expect_problem(
        saga.send(
            "orders",
            Method::POST,
            &format!("/api/v1/orders/{order_id}/cancel"),
            &eve,
        )
        .await,
        404,
    )
    .await;
    expect_problem(
        saga.send(
            "orders",
            Method::POST,
            &format!("/api/v1/orders/{order_id}/ship"),
            &dan,
        )
        .await,
        403,
    )
    .await;
    expect_problem(
        saga.send(
            "orders",
            Method::POST,
            "/api/v1/orders/not-an-id/ship",
            &dan,
        )
        .await,
        403,
    )
    .await;
    let pay_unknown = saga
        .client
        .get(format!("{}/pay/{}", saga.gateway, Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(pay_unknown.status(), 404);
    assert_eq!(
        saga.stock(mug).await["reserved"],
        1,
        "only the one order holds stock"
    );
    let eves: Value = saga
        .send("orders", Method::GET, "/api/v1/orders", &eve)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(eves["items"], serde_json::json!([]));
}

#[tokio::test]
async fn a_cart_with_nothing_to_pay_is_refused_at_checkout_and_nothing_is_held() {
    let saga = Saga::start().await;
    let (_, fay) = saga.customer();
    let sample = saga.product(0, 5).await;
    saga.add_to_cart(&fay, sample, 2).await;
    let problem = expect_problem(saga.checkout(&fay, "free").await, 422).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("total is 0 EUR"),
        "{problem}"
    );
    assert_eq!(saga.stock(sample).await["reserved"], 0, "nothing reserved");
    let orders: Value = saga
        .send("orders", Method::GET, "/api/v1/orders", &fay)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(orders["items"], serde_json::json!([]), "no order written");
}

#[tokio::test]
async fn idempotency_keys_past_their_day_are_deleted_and_the_others_still_replay() {
    let saga = Saga::start().await;
    // Retention runs here, not in orders' background, which could race the test's changes.
    saga.kill_tasks("orders");
    let mug = saga.product(1200, 10).await;
    let (_, dan) = saga.customer();
    let mut placed = Vec::new();
    for key in ["yesterday", "today"] {
        saga.add_to_cart(&dan, mug, 1).await;
        let resp = saga.checkout(&dan, key).await;
        assert_eq!(resp.status(), 201, "checkout with key {key}");
        placed.push(resp.json::<Value>().await.unwrap());
    }
    let pool = saga.orders.pool();
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'yesterday'",
    )
    .execute(pool)
    .await
    .unwrap();

    let pruned = platform::retention::prune_own(pool, &[orders::store::expired_keys()])
        .await
        .unwrap();
    assert_eq!(pruned, [("idempotency_keys", 1)]);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(keys, ["today"]);
    // The key still kept answers again with its order.
    let again: Value = saga.checkout(&dan, "today").await.json().await.unwrap();
    assert_eq!(again["order"]["id"], placed[1]["order"]["id"]);
}

#[tokio::test]
async fn provider_callbacks_recorded_long_ago_are_deleted_and_a_resend_still_changes_nothing() {
    let saga = Saga::start().await;
    let (_, erin) = saga.registered_customer("erin").await;
    let mug = saga.product(900, 5).await;
    for key in ["old", "new"] {
        saga.add_to_cart(&erin, mug, 1).await;
        let order: Value = saga.checkout(&erin, key).await.json().await.unwrap();
        saga.pay(&order, "4242 4242 4242 4242").await;
        // Else the paid order's line, removed from the cart once cart hears of the payment,
        // could be the one the next order put back.
        saga.eventually("the cart is emptied", || async {
            saga.cart_lines(&erin).await == 0
        })
        .await;
    }
    let pool = saga.payment.pool();
    // Paid one after the other: the first callback is the first payment's.
    let old_callback: String =
        sqlx::query_scalar("SELECT id FROM webhook_events ORDER BY received_at LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    let old_session: Uuid =
        sqlx::query_scalar("SELECT session_id FROM payments ORDER BY created_at LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    let keep = saga.payment.expired_rows()[0].older_than;
    sqlx::query(
        "UPDATE webhook_events SET received_at = now() - make_interval(secs => $2) - interval '1 hour'
         WHERE id = $1",
    )
    .bind(&old_callback)
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();

    let pruned = platform::retention::prune_own(pool, &saga.payment.expired_rows())
        .await
        .unwrap();
    assert_eq!(pruned, [("webhook_events", 1)]);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);

    // The provider sends the deleted callback again: its session is closed, so nothing changes.
    let applied = saga
        .provider_reports_paid(&old_callback, &old_session.to_string())
        .await;
    assert_eq!(
        applied,
        payment::store::Applied::NotOpen("succeeded".into())
    );
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(payments, 2, "one payment per session");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "one PaymentSucceeded per payment");
}

#[tokio::test]
async fn malformed_payment_links_and_forms_are_answered_with_a_page() {
    let saga = Saga::start().await;
    let answered_with_page = |resp: reqwest::Response, says: &'static str| async move {
        assert_eq!(resp.status(), 400);
        let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/html"), "{kind}");
        let page = resp.text().await.unwrap();
        assert!(page.contains(says), "{page}");
    };
    for path in ["/pay/not-a-session", "/pay/not-a-session/result"] {
        let resp = saga
            .client
            .get(format!("{}{path}", saga.gateway))
            .send()
            .await
            .unwrap();
        answered_with_page(resp, "This is not a payment link").await;
    }
    let resp = saga
        .client
        .post(format!("{}/pay/not-a-session", saga.gateway))
        .form(&crate::support::card_form("4242424242424242"))
        .send()
        .await
        .unwrap();
    answered_with_page(resp, "This is not a payment link").await;
    let resp = saga
        .client
        .post(format!("{}/pay/{}", saga.gateway, Uuid::now_v7()))
        .json(&serde_json::json!({"card_number": "4242424242424242"}))
        .send()
        .await
        .unwrap();
    answered_with_page(resp, "The form could not be read").await;
}

#[tokio::test]
async fn a_customer_cancels_a_pending_order_and_its_stock_returns() {
    let saga = Saga::start().await;
    let (_, fay) = saga.customer();
    let mug = saga.product(1250, 2).await;
    saga.add_to_cart(&fay, mug, 2).await;
    let placed: Value = saga.checkout(&fay, "k").await.json().await.unwrap();
    let id = placed["order"]["id"].as_str().unwrap();
    let resp = saga
        .send(
            "orders",
            Method::POST,
            &format!("/api/v1/orders/{id}/cancel"),
            &fay,
        )
        .await;
    assert_eq!(resp.status(), 200);
    saga.eventually("the stock is released", || async {
        saga.stock(mug).await["reserved"] == 0
    })
    .await;
    saga.eventually("the session is closed", || async {
        saga.pay_again(placed["payment_url"].as_str().unwrap())
            .await
            == 410
    })
    .await;
}

#[tokio::test]
async fn a_payment_made_on_an_order_just_cancelled_is_refunded() {
    let saga = Saga::start().await;
    let (_, gus) = saga.customer();
    let mug = saga.product(1250, 3).await;
    saga.add_to_cart(&gus, mug, 1).await;
    let placed: Value = saga.checkout(&gus, "k").await.json().await.unwrap();
    let id = placed["order"]["id"].as_str().unwrap().to_owned();
    // Payment has not heard of the cancellation yet when the customer pays on the page still
    // open.
    saga.kill_tasks("payment");
    let cancel = format!("/api/v1/orders/{id}/cancel");
    let resp = saga.send("orders", Method::POST, &cancel, &gus).await;
    assert_eq!(resp.status(), 200);
    saga.pay(&placed, "4242 4242 4242 4242").await;
    saga.restart_tasks("payment");
    saga.eventually("the payment is refunded", || async {
        let payments = saga.payments(&gus).await;
        payments["items"][0]["status"] == "refunded"
    })
    .await;
    assert_eq!(order_status(&saga, &gus, &id).await, "CANCELLED");
    saga.wait_for_stock(mug, 3, "the stock is all back").await;
}

#[tokio::test]
async fn a_payment_session_closes_when_the_stock_it_pays_for_stops_being_held() {
    let saga = Saga::with_reservations_of(5).await;
    let (_, gus) = saga.customer();
    let mug = saga.product(1250, 3).await;
    saga.add_to_cart(&gus, mug, 1).await;
    let placed: Value = saga.checkout(&gus, "k").await.json().await.unwrap();
    saga.eventually("the reservation lapsed", || async {
        saga.stock(mug).await["reserved"] == 0
    })
    .await;
    assert_eq!(
        saga.pay_again(placed["payment_url"].as_str().unwrap())
            .await,
        410,
        "the page no longer takes a payment"
    );
}

#[tokio::test]
async fn payment_closes_a_session_by_the_time_it_is_asked_to_and_refuses_a_time_past() {
    let saga = Saga::start().await;
    let open = |closes_by: chrono::DateTime<chrono::Utc>| {
        saga.client
            .post(format!(
                "{}/internal/payments/sessions",
                saga.urls["payment"]
            ))
            .header("x-internal-token", platform::testing::INTERNAL_TOKEN)
            .json(&json!({
                "order_id": Uuid::now_v7(),
                "user_id": Uuid::now_v7(),
                "amount": {"amount": 1250, "currency": "EUR"},
                "lines": [{"product_id": Uuid::now_v7(), "quantity": 1}],
                "closes_by": closes_by,
            }))
            .send()
    };
    let by = chrono::Utc::now() + chrono::TimeDelta::minutes(2);
    let opened = open(by).await.unwrap();
    assert_eq!(opened.status(), 201);
    let session: Value = opened.json().await.unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        session["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires_at.timestamp_millis(),
        by.timestamp_millis(),
        "two minutes, not payment's fifteen"
    );
    let refused = open(chrono::Utc::now() - chrono::TimeDelta::seconds(1))
        .await
        .unwrap();
    let problem = expect_problem(refused, 422).await;
    assert!(problem.to_string().contains("closes_by"), "{problem}");
}

#[tokio::test]
async fn an_order_paid_after_its_reservation_lapsed_still_takes_its_stock() {
    let saga = Saga::with_reservations_of(5).await;
    let (_, hal) = saga.customer();
    let mug = saga.product(1250, 3).await;
    saga.add_to_cart(&hal, mug, 2).await;
    let placed: Value = saga.checkout(&hal, "k").await.json().await.unwrap();
    let id = placed["order"]["id"].as_str().unwrap().to_owned();
    // Paid while the stock is held, but payment's relay is down: inventory hears of it only
    // after the reservation lapsed.
    saga.kill_tasks("payment");
    saga.pay(&placed, "4242 4242 4242 4242").await;
    saga.eventually("the reservation lapsed", || async {
        saga.stock(mug).await["reserved"] == 0
    })
    .await;
    saga.restart_tasks("payment");
    saga.wait_for_status(&hal, &id, "PAID").await;
    saga.wait_for_stock(mug, 1, "the paid units are taken")
        .await;
}

#[tokio::test]
async fn a_refund_whose_event_overtakes_its_payment_event_still_refunds_and_restocks() {
    let saga = Saga::claiming_quickly().await;
    let (_, hal) = saga.customer();
    let admin = saga.admin();
    let mug = saga.product(1250, 5).await;
    saga.add_to_cart(&hal, mug, 2).await;
    let placed: Value = saga.checkout(&hal, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    saga.kill_tasks("orders");
    saga.kill_tasks("inventory");
    saga.pay(&placed, "4242424242424242").await;
    let payments = saga.payments(&hal).await;
    let refund = format!(
        "/api/v1/payments/{}/refund",
        payments["items"][0]["id"].as_str().unwrap()
    );
    let refunded = saga
        .call("payment", Method::POST, &refund, &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);
    // An instance of orders and one of inventory each took the payment's event and died
    // before handling it: the refund's comes to the restarted ones first.
    saga.second_payment_event_first().await;
    saga.wait_for_status(&hal, &order_id, "REFUNDED").await;
    saga.wait_for_stock(mug, 5, "the refunded units are back on hand")
        .await;
    assert_eq!(
        saga.history(&hal, &order_id).await,
        ["PENDING", "PAID", "REFUNDED"]
    );
    saga.payment_events_all_handled().await;
    // The payment's own event, handled last, changed nothing.
    assert_eq!(order_status(&saga, &hal, &order_id).await, "REFUNDED");
    let stock = saga.stock(mug).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(5), Some(0))
    );
}

#[tokio::test]
async fn the_committed_openapi_documents_of_orders_and_payment_match_the_code() {
    let saga = Saga::start().await;
    let admin = saga
        .identity
        .token(Uuid::now_v7(), platform::auth::Role::Admin);
    for (service, bodies) in [("orders", 1), ("payment", 1)] {
        let served =
            platform::testing::assert_served_openapi_matches(service, &saga.urls[service]).await;
        let sent = platform::testing::assert_closed_bodies_refuse_unnamed_fields(
            &saga.urls[service],
            &served,
            &admin,
        )
        .await;
        assert!(
            sent >= bodies,
            "every JSON body of {service} is closed: {sent}"
        );
    }
}

#[tokio::test]
async fn payment_killed_after_committing_a_payment_publishes_it_once_after_restart() {
    let saga = Saga::start().await;
    let (email, gus) = saga.registered_customer("gus").await;
    let mug = saga.product(1250, 5).await;
    saga.add_to_cart(&gus, mug, 1).await;
    let placed: Value = saga.checkout(&gus, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    saga.kill_tasks("payment");
    saga.pay(&placed, "4242 4242 4242 4242").await;
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(saga.payment.pool())
        .await
        .unwrap();
    assert_eq!(
        unsent, 1,
        "the payment is committed with its event, which nobody sent"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(order_status(&saga, &gus, &order_id).await, "PENDING");

    saga.restart_tasks("payment");
    saga.wait_for_status(&gus, &order_id, "PAID").await;
    saga.eventually("stock is deducted", || async {
        saga.stock(mug).await["on_hand"] == 4
    })
    .await;
    let confirmations = || saga.confirmations(&email, &order_id);
    saga.eventually("the confirmation email arrived", || async {
        confirmations() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(confirmations(), 1, "one email");
    let stock = saga.stock(mug).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(4), Some(0)),
        "deducted once"
    );
}

#[tokio::test]
async fn an_admin_refunds_once_and_customers_cannot_see_each_others_payments() {
    let saga = Saga::start().await;
    let (_, hal) = saga.customer();
    let (_, ivy) = saga.customer();
    let admin = saga.admin();
    let mug = saga.product(1250, 5).await;
    saga.add_to_cart(&hal, mug, 2).await;
    let placed: Value = saga.checkout(&hal, "k").await.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    saga.pay(&placed, "4242424242424242").await;
    saga.wait_for_status(&hal, &order_id, "PAID").await;
    saga.eventually("stock is deducted", || async {
        saga.stock(mug).await["on_hand"] == 3
    })
    .await;
    let payments = saga.payments(&hal).await;
    let payment_id = payments["items"][0]["id"].as_str().unwrap().to_owned();

    expect_problem(
        saga.send(
            "payment",
            Method::GET,
            &format!("/api/v1/payments/{payment_id}"),
            &ivy,
        )
        .await,
        404,
    )
    .await;
    let ivys = saga.payments(&ivy).await;
    assert_eq!(ivys["items"], serde_json::json!([]));
    let refund = format!("/api/v1/payments/{payment_id}/refund");
    expect_problem(
        saga.call("payment", Method::POST, &refund, &hal)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    expect_problem(
        saga.call(
            "payment",
            Method::POST,
            "/api/v1/payments/not-an-id/refund",
            &hal,
        )
        .send()
        .await
        .unwrap(),
        403,
    )
    .await;

    let refunded = saga
        .call("payment", Method::POST, &refund, &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);
    expect_problem(
        saga.call("payment", Method::POST, &refund, &admin)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    saga.wait_for_status(&hal, &order_id, "REFUNDED").await;
    saga.eventually("the goods are back on hand", || async {
        saga.stock(mug).await["on_hand"] == 5
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(saga.stock(mug).await["on_hand"], 5, "restocked once");
}

/// The payment of `order`, as its customer sees it.
async fn payment_of(saga: &Saga, token: &str, order: &str) -> Value {
    let payments = saga.payments(token).await;
    payments["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["order_id"] == order)
        .unwrap_or_else(|| panic!("a payment of {order}: {payments}"))
        .clone()
}

#[tokio::test]
async fn a_shipped_order_is_not_refunded_and_a_refund_left_unsettled_is_settled_by_the_sweep() {
    let saga = Saga::start().await;
    let (_, jo) = saga.customer();
    let admin = saga.admin();
    let mug = saga.product(1250, 5).await;
    let shipped = saga.buy(&jo, mug, "k1").await;
    saga.wait_for_status(&jo, &shipped, "PAID").await;
    saga.eventually("the cart is emptied", || async {
        saga.cart_lines(&jo).await == 0
    })
    .await;
    let ship = saga
        .send(
            "orders",
            Method::POST,
            &format!("/api/v1/orders/{shipped}/ship"),
            &saga.manager,
        )
        .await;
    assert_eq!(ship.status(), 200);
    saga.wait_for_stock(mug, 4, "the shipped mug is deducted")
        .await;
    let shipped_payment = payment_of(&saga, &jo, &shipped).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refund = |payment: &str| {
        saga.call(
            "payment",
            Method::POST,
            &format!("/api/v1/payments/{payment}/refund"),
            &admin,
        )
        .send()
    };
    let refused = expect_problem(refund(&shipped_payment).await.unwrap(), 409).await;
    assert!(
        refused["detail"].as_str().unwrap().contains("SHIPPED"),
        "{refused}"
    );
    assert_eq!(order_status(&saga, &jo, &shipped).await, "SHIPPED");
    assert_eq!(
        payment_of(&saga, &jo, &shipped).await["status"],
        "succeeded"
    );

    // A refund asked for by a payment instance that stopped before it asked orders.
    let paid = saga.buy(&jo, mug, "k2").await;
    saga.wait_for_status(&jo, &paid, "PAID").await;
    saga.eventually("the cart is emptied", || async {
        saga.cart_lines(&jo).await == 0
    })
    .await;
    saga.wait_for_stock(mug, 3, "the second mug is deducted")
        .await;
    let paid_payment = payment_of(&saga, &jo, &paid).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for payment in [&paid_payment, &shipped_payment] {
        sqlx::query(
            "UPDATE payments SET refund_asked_at = now() - interval '1 minute' WHERE id = $1::uuid",
        )
        .bind(payment)
        .execute(saga.payment.pool())
        .await
        .unwrap();
    }
    saga.payment.settle_refunds_asked().await.unwrap();
    saga.wait_for_status(&jo, &paid, "REFUNDED").await;
    saga.eventually("the unshipped order's payment is refunded", || async {
        payment_of(&saga, &jo, &paid).await["status"] == "refunded"
    })
    .await;
    saga.wait_for_stock(mug, 4, "the unshipped mug is back on hand")
        .await;
    let left: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT refund_asked_at FROM payments WHERE id = $1::uuid")
            .bind(&shipped_payment)
            .fetch_one(saga.payment.pool())
            .await
            .unwrap();
    assert_eq!(left, None, "the shipped order's refund is given up");
    assert_eq!(
        payment_of(&saga, &jo, &shipped).await["status"],
        "succeeded"
    );
    assert_eq!(order_status(&saga, &jo, &shipped).await, "SHIPPED");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        saga.stock(mug).await["on_hand"],
        4,
        "restocked once, the shipped mug not"
    );

    // Orders down when the refund is asked for: 503, and the sweep carries it out later.
    let third = saga.buy(&jo, mug, "k3").await;
    saga.wait_for_status(&jo, &third, "PAID").await;
    saga.wait_for_stock(mug, 3, "the third mug is deducted")
        .await;
    let third_payment = payment_of(&saga, &jo, &third).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let orders = saga.hide("orders").await;
    let waiting = expect_problem(refund(&third_payment).await.unwrap(), 503).await;
    assert!(
        waiting["detail"]
            .as_str()
            .unwrap()
            .contains("goes ahead by itself"),
        "{waiting}"
    );
    assert_eq!(payment_of(&saga, &jo, &third).await["status"], "succeeded");
    saga.show("orders", &orders).await;
    sqlx::query(
        "UPDATE payments SET refund_asked_at = refund_asked_at - interval '1 minute' WHERE id = $1::uuid",
    )
    .bind(&third_payment)
    .execute(saga.payment.pool())
    .await
    .unwrap();
    saga.payment.settle_refunds_asked().await.unwrap();
    saga.wait_for_status(&jo, &third, "REFUNDED").await;
    saga.wait_for_stock(mug, 4, "the third mug is back on hand")
        .await;
    assert_eq!(payment_of(&saga, &jo, &third).await["status"], "refunded");
}

#[tokio::test]
async fn consumers_down_while_100_payments_succeed_catch_up_and_apply_each_once() {
    let saga = Saga::start().await;
    let stock = 150;
    let mug = saga.product(900, stock as i32).await;
    let mut customers = Vec::new();
    for n in 0..10 {
        customers.push(saga.registered_customer(&format!("c{n}")).await);
    }
    // Every consumer of payment.events is down (their processes killed; their HTTP APIs,
    // needed for checkout, stay up as another instance's would).
    let consumers = ["orders", "inventory", "cart", "notification"];
    for service in consumers {
        saga.kill_tasks(service);
    }
    let bought = futures::future::join_all(customers.iter().map(|(email, token)| {
        let saga = &saga;
        async move {
            let mut orders = Vec::new();
            for n in 0..10 {
                let id = saga.buy(token, mug, &format!("order-{n}")).await;
                orders.push((email.clone(), token.clone(), id));
            }
            orders
        }
    }))
    .await;
    let orders: Vec<(String, String, String)> = bought.into_iter().flatten().collect();
    assert_eq!(orders.len(), 100);
    let payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'succeeded'")
            .fetch_one(saga.payment.pool())
            .await
            .unwrap();
    assert_eq!(payments, 100, "100 payments succeeded");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (_, token, order_id) in &orders[..3] {
        assert_eq!(
            order_status(&saga, token, order_id).await,
            "PENDING",
            "nobody consumed yet"
        );
    }

    for service in consumers {
        saga.restart_tasks(service);
    }
    saga.assert_each_paid_once(mug, stock, &orders, std::time::Duration::from_secs(60))
        .await;
}

#[tokio::test]
async fn redis_restarting_mid_flow_loses_nothing_and_applies_nothing_twice() {
    let mut redis = platform::testing::redis_server::RedisServer::start().await;
    let saga = Saga::start_with_redis(redis.url()).await;
    let mug = saga.product(1250, 10).await;
    let (ann_email, ann) = saga.registered_customer("ann").await;
    let (ben_email, ben) = saga.registered_customer("ben").await;
    let before = saga.buy(&ann, mug, "before").await;
    saga.wait_for_status(&ann, &before, "PAID").await;

    // Redis dies with ben's checkout under way; his payment commits while it is down.
    saga.add_to_cart(&ben, mug, 1).await;
    let placed: Value = saga.checkout(&ben, "during").await.json().await.unwrap();
    let during = placed["order"]["id"].as_str().unwrap().to_owned();
    redis.kill().await;
    saga.pay(&placed, "4242 4242 4242 4242").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(order_status(&saga, &ben, &during).await, "PENDING");
    redis.restart().await;

    let after = saga.buy(&ann, mug, "after").await;
    let orders = [
        (ann_email.clone(), ann.clone(), before),
        (ben_email, ben, during),
        (ann_email, ann, after),
    ];
    saga.assert_each_paid_once(mug, 10, &orders, std::time::Duration::from_secs(30))
        .await;
}
