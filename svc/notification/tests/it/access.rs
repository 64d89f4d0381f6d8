//! Who sees which notifications.

use contracts::events::PaymentFailed;
use platform::auth::Role;
use platform::testing::expect_problem;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Options, Service, registered};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

fn failed_payment(user_id: Uuid) -> PaymentFailed {
    PaymentFailed {
        payment_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        user_id,
        reason: "card declined".into(),
    }
}

/// Alice (welcome + one failed payment), Bob (welcome) and a user notification knows no
/// contact for (one failed payment), all processed and sent through the log channel.
async fn populated() -> (Service, Uuid, Uuid, Uuid) {
    let svc = Service::start(Options::default()).await;
    let alice = registered("Alice", None);
    let bob = registered("Bob", None);
    let stranger = Uuid::now_v7();
    svc.producer.publish(&alice).await;
    svc.producer.publish(&bob).await;
    svc.producer.publish(&failed_payment(alice.user_id)).await;
    svc.producer.publish(&failed_payment(stranger)).await;
    assert_eq!(svc.consume().await, 4);
    assert_eq!(svc.send_due().await, 3);
    (svc, alice.user_id, bob.user_id, stranger)
}

#[tokio::test]
async fn a_customer_sees_only_their_own_notifications_newest_first_without_bodies() {
    let (svc, alice, bob, _) = populated().await;
    let token = svc.token(alice, Role::Customer);
    let page = svc.get_json("/api/v1/notifications", &token).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert!(items.iter().all(|n| n["user_id"] == alice.to_string()));
    assert_eq!(items[0]["event_type"], "PaymentFailed", "newest first");
    assert_eq!(items[1]["event_type"], "UserRegistered");
    assert!(
        items
            .iter()
            .all(|n| n["status"] == "sent" && n["attempts"] == 1)
    );
    assert!(
        items.iter().all(|n| n.get("body").is_none()),
        "bodies carry one-time links and are never returned: {page}"
    );
    assert!(page.get("next_cursor").is_none_or(Value::is_null));

    // Naming oneself is fine; naming someone else is 403.
    let own = svc
        .get_json(&format!("/api/v1/notifications?user_id={alice}"), &token)
        .await;
    assert_eq!(ids(&own), ids(&page));
    let resp = svc
        .get(&format!("/api/v1/notifications?user_id={bob}"), &token)
        .await;
    expect_problem(resp, 403).await;

    // A status filter applies to the customer's own notifications only.
    let failed = svc
        .get_json("/api/v1/notifications?status=failed", &token)
        .await;
    assert_eq!(failed["items"], serde_json::json!([]));
}

#[tokio::test]
async fn an_admin_lists_failed_notifications_across_users_and_any_users_notifications() {
    let (svc, alice, bob, stranger) = populated().await;
    let admin = svc.token(Uuid::now_v7(), Role::Admin);
    let failed = svc
        .get_json("/api/v1/notifications?status=failed", &admin)
        .await;
    let items = failed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{failed}");
    assert_eq!(items[0]["user_id"], stranger.to_string());
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["last_error"], "no contact for user");
    assert_eq!(items[0]["attempts"], 0);

    let bobs = svc
        .get_json(&format!("/api/v1/notifications?user_id={bob}"), &admin)
        .await;
    let items = bobs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["user_id"], bob.to_string());

    let everyone = svc.get_json("/api/v1/notifications", &admin).await;
    assert_eq!(everyone["items"].as_array().unwrap().len(), 4);
    let sent_of_alice = svc
        .get_json(
            &format!("/api/v1/notifications?user_id={alice}&status=sent"),
            &admin,
        )
        .await;
    assert_eq!(sent_of_alice["items"].as_array().unwrap().len(), 2);

    // A manager is not an admin.
    let manager = svc.token(Uuid::now_v7(), Role::Manager);
    let resp = svc
        .get(&format!("/api/v1/notifications?user_id={bob}"), &manager)
        .await;
    expect_problem(resp, 403).await;
}

#[tokio::test]
async fn pages_follow_the_cursor_newest_first_without_repeats() {
    let (svc, _, _, _) = populated().await;
    let admin = svc.token(Uuid::now_v7(), Role::Admin);
    let all = ids(&svc.get_json("/api/v1/notifications", &admin).await);
    assert_eq!(all.len(), 4);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(all, sorted, "newest (highest UUIDv7) first");

    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/notifications?limit=3&cursor={c}"),
            None => "/api/v1/notifications?limit=3".to_owned(),
        };
        let page = svc.get_json(&path, &admin).await;
        pages += 1;
        walked.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 2);
    assert_eq!(walked, all);
}
