//! Events in, messages out: what each event sends, and that each is sent once.

use std::time::Duration;

use contracts::events::{
    OrderCancelled, OrderLine, PasswordResetRequested, PaymentExpired, PaymentFailed,
    PaymentRefunded, PaymentSucceeded, UserRegistered, streams,
};
use contracts::money::Money;
use platform::CancellationToken;
use uuid::Uuid;

use crate::support::{Options, Service, SmsProvider, SmtpServer, registered};

fn paid(user_id: Uuid, amount: i64) -> PaymentSucceeded {
    PaymentSucceeded {
        payment_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        user_id,
        amount: Money::new(amount, "EUR"),
        lines: vec![
            OrderLine {
                product_id: Uuid::now_v7(),
                quantity: 2,
            },
            OrderLine {
                product_id: Uuid::now_v7(),
                quantity: 1,
            },
        ],
    }
}

#[tokio::test]
async fn a_registered_user_gets_exactly_one_welcome_email_with_the_verification_link() {
    let smtp = SmtpServer::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    })
    .await;
    // The service as it runs in production: its consumer and sender in the background.
    let shutdown = CancellationToken::new();
    let tasks = svc.notification.background().spawn(&shutdown);
    let user = registered("Alice", None);
    svc.producer.publish(&user).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while svc
        .rows_of(user.user_id)
        .await
        .first()
        .is_none_or(|r| r.status != "sent")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the welcome email was not sent: {:?}",
            svc.rows_of(user.user_id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a second send, if there were one, time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "exactly one email: {mails:?}");
    let mail = &mails[0];
    assert_eq!(mail["rcpt_tos"], serde_json::json!([user.email]));
    assert_eq!(mail["mail_from"], "shop@micromart.local");
    assert!(
        mail["subject"].as_str().unwrap().contains("Welcome"),
        "{mail}"
    );
    let body = mail["body"].as_str().unwrap();
    let link = user.verification_url.as_deref().unwrap();
    assert!(body.contains(link), "{body}");
    assert!(body.contains("Alice"), "{body}");
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].channel, "email");
    assert_eq!(rows[0].attempts, 1);
    assert_eq!(rows[0].sent_via.as_deref(), Some("smtp"));
}

/// The service, sending email to an SMTP server and texts to an SMS provider.
async fn sending_email_and_sms() -> (SmtpServer, SmsProvider, Service) {
    let smtp = SmtpServer::start().await;
    let sms = SmsProvider::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        sms_url: Some(sms.url()),
        ..Options::default()
    })
    .await;
    (smtp, sms, svc)
}

#[tokio::test]
async fn a_paid_order_sends_one_confirmation_email_and_one_sms_when_the_customer_has_a_phone() {
    let (smtp, sms, svc) = sending_email_and_sms().await;
    let with_phone = registered("Bob", Some("+4915112345678"));
    let without_phone = registered("Carol", None);
    svc.producer.publish(&with_phone).await;
    svc.producer.publish(&without_phone).await;
    let bobs = paid(with_phone.user_id, 1999);
    let carols = paid(without_phone.user_id, 500);
    svc.producer.publish(&bobs).await;
    svc.producer.publish(&carols).await;

    assert_eq!(svc.consume().await, 4);
    // Two welcome emails, two confirmations, one SMS.
    assert_eq!(svc.send_due().await, 5);

    let to_bob = smtp.messages_to(&with_phone.email);
    assert_eq!(to_bob.len(), 2, "welcome and confirmation: {to_bob:?}");
    let confirmation = to_bob
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("confirmed"))
        .expect("an order confirmation email");
    let body = confirmation["body"].as_str().unwrap();
    assert!(body.contains("19.99 EUR"), "{body}");
    assert!(body.contains(&bobs.order_id.to_string()), "{body}");
    assert!(body.contains("3 item(s)"), "{body}");
    assert!(
        body.contains(&format!(
            "https://shop.example.test/api/v1/orders/{}",
            bobs.order_id
        )),
        "{body}"
    );

    let texts = sms.received();
    assert_eq!(
        texts.len(),
        1,
        "one SMS, for the customer with a phone: {texts:?}"
    );
    assert_eq!(texts[0]["to"], "+4915112345678");
    let text = texts[0]["body"].as_str().unwrap();
    assert!(text.contains("19.99 EUR"), "{text}");
    assert!(
        text.contains(&bobs.order_id.simple().to_string()[..8]),
        "{text}"
    );

    let to_carol = smtp.messages_to(&without_phone.email);
    assert_eq!(to_carol.len(), 2, "{to_carol:?}");
    assert!(
        to_carol
            .iter()
            .any(|m| m["body"].as_str().unwrap().contains("5.00 EUR"))
    );
    let carol_rows = svc.rows_of(without_phone.user_id).await;
    assert!(
        carol_rows.iter().all(|r| r.channel == "email"),
        "{carol_rows:?}"
    );
    let bob_rows = svc.rows_of(with_phone.user_id).await;
    let sms_row = bob_rows.iter().find(|r| r.channel == "sms").unwrap();
    assert_eq!(sms_row.status, "sent");
    assert_eq!(sms_row.sent_via.as_deref(), Some("http"));
    assert_eq!(sms_row.recipient, "+4915112345678");

    // Nothing is left to send.
    assert_eq!(svc.send_due().await, 0);
    assert_eq!(smtp.messages().len(), 4);
    assert_eq!(sms.received().len(), 1);
}

#[tokio::test]
async fn the_same_event_delivered_twice_sends_one_email() {
    let smtp = SmtpServer::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    })
    .await;
    let user = registered("Dave", None);
    let envelope = svc.producer.publish(&user).await;
    // The relay sent it twice (a crash between XADD and marking the row sent).
    svc.producer.redeliver(&envelope, streams::USERS).await;

    assert_eq!(svc.consume().await, 2, "both stream entries are read");
    assert_eq!(svc.send_due().await, 1);
    // And once more after it was sent.
    svc.producer.redeliver(&envelope, streams::USERS).await;
    assert_eq!(svc.consume().await, 1);
    assert_eq!(svc.send_due().await, 0);

    assert_eq!(
        smtp.messages_to(&user.email).len(),
        1,
        "{:?}",
        smtp.messages()
    );
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(svc.rows_of(user.user_id).await.len(), 1);
}

#[tokio::test]
async fn every_payment_and_order_outcome_and_a_password_reset_email_the_customer_once() {
    let smtp = SmtpServer::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    })
    .await;
    let user = registered("Erin", Some("+33612345678"));
    svc.producer.publish(&user).await;
    let order = Uuid::now_v7();
    let reset = PasswordResetRequested {
        user_id: user.user_id,
        email: user.email.clone(),
        reset_url: format!(
            "https://shop.example.test/reset?token={}",
            Uuid::new_v4().simple()
        ),
    };
    svc.producer.publish(&reset).await;
    svc.producer
        .publish(&PaymentFailed {
            payment_id: Uuid::now_v7(),
            order_id: order,
            user_id: user.user_id,
            reason: "card declined".into(),
        })
        .await;
    svc.producer
        .publish(&PaymentExpired {
            payment_id: Uuid::now_v7(),
            order_id: order,
            user_id: user.user_id,
        })
        .await;
    svc.producer
        .publish(&PaymentRefunded {
            payment_id: Uuid::now_v7(),
            order_id: order,
            user_id: user.user_id,
            amount: Money::new(4250, "EUR"),
            charged_after_close: false,
        })
        .await;
    // Another order: one order's expiry and cancellation are told once (see below).
    svc.producer
        .publish(&OrderCancelled {
            order_id: Uuid::now_v7(),
            user_id: user.user_id,
            reason: "cancelled by the customer".into(),
        })
        .await;

    assert_eq!(svc.consume().await, 6);
    assert_eq!(svc.send_due().await, 6, "one email per event, no SMS");
    let mails = smtp.messages_to(&user.email);
    assert_eq!(mails.len(), 6, "{mails:?}");
    let find = |needle: &str| {
        mails
            .iter()
            .find(|m| m["subject"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("an email about {needle:?}: {mails:?}"))["body"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(find("Reset your").contains(&reset.reset_url));
    assert!(find("failed").contains("card declined"));
    let expired = find("expired");
    assert!(expired.contains(&order.to_string()), "{expired}");
    // It may have been paid as it expired (payment then refunds it at once).
    assert!(!expired.contains("nothing was charged"), "{expired}");
    assert!(find("Refund").contains("42.50 EUR"));
    let cancelled = find("was cancelled");
    assert!(
        cancelled.contains("cancelled by the customer"),
        "{cancelled}"
    );
    // It may have been paid as it was cancelled (payment then refunds it).
    assert!(!cancelled.contains("Nothing was charged"), "{cancelled}");
    assert!(find("Refund").starts_with("Hello Erin,"));
    let rows = svc.rows_of(user.user_id).await;
    assert!(
        rows.iter()
            .all(|r| r.channel == "email" && r.status == "sent"),
        "{rows:?}"
    );
    let kinds: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "UserRegistered",
            "PasswordResetRequested",
            "PaymentFailed",
            "PaymentExpired",
            "PaymentRefunded",
            "OrderCancelled"
        ]
    );
}

#[tokio::test]
async fn an_order_cancelled_and_then_expired_is_told_once_whichever_comes_first() {
    let smtp = SmtpServer::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    })
    .await;
    let user = registered("Finn", None);
    svc.producer.publish(&user).await;
    // v4: two v7 ids made in the same millisecond share the 8 digits a subject shows.
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let cancelled = |order| OrderCancelled {
        order_id: order,
        user_id: user.user_id,
        reason: "cancelled by the customer".into(),
    };
    let expired = |order| PaymentExpired {
        payment_id: Uuid::now_v7(),
        order_id: order,
        user_id: user.user_id,
    };
    svc.producer.publish(&cancelled(first)).await;
    svc.producer.publish(&expired(first)).await;
    svc.producer.publish(&expired(second)).await;
    svc.producer.publish(&cancelled(second)).await;
    assert_eq!(svc.consume().await, 5);
    assert_eq!(
        svc.send_due().await,
        3,
        "the welcome and one notice per order"
    );
    let subjects = subjects_to(&smtp, &user.email);
    for order in [first, second] {
        let short = &order.simple().to_string()[..8];
        let told = subjects.iter().filter(|s| s.contains(short)).count();
        assert_eq!(told, 1, "{order}: {subjects:?}");
    }
}

#[tokio::test]
async fn events_notification_does_not_act_on_are_acknowledged_without_effect() {
    let svc = Service::start(Options::default()).await;
    let envelope = serde_json::json!({
        "id": Uuid::now_v7(),
        "type": "StockAdjusted",
        "version": 1,
        "occurred_at": "2025-01-01T00:00:00Z",
        "source": "inventory",
        "correlation_id": null,
        "data": {"product_id": Uuid::now_v7(), "delta": 3},
    });
    svc.producer
        .xadd(
            streams::ORDERS,
            envelope["id"].as_str().unwrap(),
            "StockAdjusted",
            &envelope.to_string(),
        )
        .await;
    assert_eq!(svc.consume().await, 1);
    assert_eq!(svc.consume().await, 0, "acknowledged, not pending");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(svc.notification.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
    let processed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events WHERE event_type = 'StockAdjusted'",
    )
    .fetch_one(svc.notification.pool())
    .await
    .unwrap();
    assert_eq!(processed, 1);
}

#[tokio::test]
async fn without_an_smtp_server_or_sms_provider_messages_are_logged_and_recorded_as_sent() {
    let svc = Service::start(Options::default()).await;
    let user = registered("Frank", Some("+4917000000000"));
    svc.producer.publish(&user).await;
    svc.producer.publish(&paid(user.user_id, 100)).await;
    assert_eq!(svc.consume().await, 2);
    assert_eq!(svc.send_due().await, 3);
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row.status, "sent");
        assert_eq!(row.sent_via.as_deref(), Some("log"));
    }
}

#[tokio::test]
async fn an_order_event_that_overtakes_the_registration_goes_to_the_address_users_gives() {
    let smtp = SmtpServer::start().await;
    let svc = Service::start(Options {
        smtp_port: Some(smtp.port),
        claim_idle_ms: 0,
        ..Options::default()
    })
    .await;
    let user = registered("Olga", None);
    svc.users.knows(&user);

    // users cannot answer: the event waits for it, nothing recorded, nothing lost.
    svc.users.set_down(true);
    svc.producer.publish(&paid(user.user_id, 1500)).await;
    let consuming = svc.consume();
    tokio::pin!(consuming);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut consuming)
            .await
            .is_err(),
        "the event waits while users is down"
    );
    assert!(svc.rows_of(user.user_id).await.is_empty());

    // Once it can, the confirmation goes to the address users gave, once.
    svc.users.set_down(false);
    let consumed = tokio::time::timeout(Duration::from_secs(20), consuming)
        .await
        .expect("the event goes through once users answers");
    assert_eq!(consumed, 1);
    svc.send_due().await;
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].status.as_str(), rows[0].recipient.as_str()),
        ("sent", user.email.as_str())
    );
    let mail = smtp.messages_to(&user.email);
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0]["body"].as_str().unwrap().contains("Hello Olga"),
        "{}",
        mail[0]["body"]
    );

    // The late UserRegistered still welcomes them; the order is not confirmed again.
    svc.producer.publish(&user).await;
    svc.consume().await;
    svc.send_due().await;
    assert_eq!(svc.rows_of(user.user_id).await.len(), 2);
    assert_eq!(smtp.messages_to(&user.email).len(), 2);
}

#[tokio::test]
async fn an_order_goes_to_the_contact_users_has_now_not_the_one_registered() {
    let (smtp, sms, svc) = sending_email_and_sms().await;
    let user = registered("Quinn", Some("+4915100000000"));
    svc.producer.publish(&user).await;
    // Since registering, the customer has removed their phone and changed their name.
    let now = UserRegistered {
        name: "Quinn Q".into(),
        phone: None,
        ..user.clone()
    };
    svc.users.knows(&now);
    svc.producer.publish(&paid(user.user_id, 1500)).await;
    assert_eq!(svc.consume().await, 2);
    assert_eq!(svc.send_due().await, 2, "welcome and confirmation emails");
    assert!(sms.received().is_empty(), "{:?}", sms.received());
    let mail = smtp.messages_to(&user.email);
    let confirmation = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("confirmed"))
        .expect("an order confirmation email");
    let body = confirmation["body"].as_str().unwrap();
    assert!(body.contains("Hello Quinn Q"), "{body}");

    // While users cannot be asked, the contact kept serves: nothing waits for users.
    svc.users.set_down(true);
    svc.producer.publish(&paid(user.user_id, 700)).await;
    assert_eq!(svc.consume().await, 1);
    assert_eq!(svc.send_due().await, 1);
    assert_eq!(smtp.messages_to(&user.email).len(), 3);
    assert!(sms.received().is_empty());
}

#[tokio::test]
async fn users_is_asked_for_a_contact_with_no_transaction_open() {
    let svc = Service::start(Options {
        claim_idle_ms: 0,
        ..Options::default()
    })
    .await;
    let user = registered("Pia", None);
    svc.users.knows(&user);
    // A slow users: a transaction open while it answers would hold a pooled connection and
    // the event's row for as long.
    let held = svc.users.hold().await;
    svc.producer.publish(&paid(user.user_id, 1500)).await;
    let while_asked = async {
        svc.users.asked().await;
        let waiting = svc.transactions_waiting().await;
        drop(held);
        waiting
    };
    let (handled, waiting) = tokio::join!(svc.consume(), while_asked);
    assert_eq!(
        waiting, 0,
        "a transaction stayed open while users was asked"
    );
    assert_eq!(handled, 1);
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].status.as_str(), rows[0].recipient.as_str()),
        ("queued", user.email.as_str())
    );
}

/// The subjects of the emails `address` got.
fn subjects_to(smtp: &SmtpServer, address: &str) -> Vec<String> {
    smtp.messages_to(address)
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_payment_handled_after_its_refund_does_not_confirm_the_order() {
    let (smtp, _sms, svc) = sending_email_and_sms().await;
    let user = registered("Ines", None);
    svc.users.knows(&user);
    svc.producer.publish(&user).await;
    let succeeded = paid(user.user_id, 4250);
    // The refund's event is handled first: the success waited for a retry.
    svc.producer
        .publish(&PaymentRefunded {
            payment_id: succeeded.payment_id,
            order_id: succeeded.order_id,
            user_id: user.user_id,
            amount: Money::new(4250, "EUR"),
            charged_after_close: false,
        })
        .await;
    svc.producer.publish(&succeeded).await;
    assert_eq!(svc.consume().await, 3);
    assert_eq!(svc.send_due().await, 2, "the welcome and the refund");
    let subjects = subjects_to(&smtp, &user.email);
    assert!(
        subjects.iter().any(|s| s.contains("Refund")),
        "{subjects:?}"
    );
    assert!(
        !subjects.iter().any(|s| s.contains("confirmed")),
        "{subjects:?}"
    );
}

#[tokio::test]
async fn refunds_told_longer_ago_than_applied_events_are_kept_are_forgotten_and_newer_ones_kept() {
    let (smtp, _sms, svc) = sending_email_and_sms().await;
    let user = registered("Jorge", None);
    svc.users.knows(&user);
    svc.producer.publish(&user).await;
    let (old, recent) = (paid(user.user_id, 1000), paid(user.user_id, 2000));
    for refunded in [&old, &recent] {
        svc.producer
            .publish(&PaymentRefunded {
                payment_id: refunded.payment_id,
                order_id: refunded.order_id,
                user_id: user.user_id,
                amount: refunded.amount.clone(),
                charged_after_close: false,
            })
            .await;
    }
    assert_eq!(svc.consume().await, 3);
    let pool = svc.notification.pool();
    let keep = svc.notification.expired_rows()[0].older_than;
    sqlx::query(
        "UPDATE refunded_orders SET created_at = now() - make_interval(secs => $2) - interval '1 hour'
         WHERE order_id = $1",
    )
    .bind(old.order_id)
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();

    let pruned = platform::retention::prune_own(pool, &svc.notification.expired_rows())
        .await
        .unwrap();
    assert_eq!(pruned, [("refunded_orders", 1), ("cancelled_orders", 0)]);
    let kept: Vec<Uuid> = sqlx::query_scalar("SELECT order_id FROM refunded_orders")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(kept, [recent.order_id]);
    // The refund still recorded keeps its payment's late success from confirming the order.
    svc.producer.publish(&recent).await;
    assert_eq!(svc.consume().await, 1);
    assert_eq!(svc.send_due().await, 3, "the welcome and the two refunds");
    let subjects = subjects_to(&smtp, &user.email);
    assert!(
        !subjects.iter().any(|s| s.contains("confirmed")),
        "{subjects:?}"
    );
}
