//! An SMTP server that is down: attempts are counted, retried with backoff, and given up on
//! after the configured number.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::support::{Options, Service, SmtpServer, free_port, registered};

async fn next_attempt_at(svc: &Service, user: Uuid) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT next_attempt_at FROM notifications WHERE user_id = $1")
        .bind(user)
        .fetch_one(svc.notification.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_smtp_server_that_is_down_at_first_gets_the_email_after_retries() {
    let port = free_port();
    let svc = Service::start(Options {
        smtp_port: Some(port),
        retry_base_delay_ms: 300,
        max_attempts: 10,
        ..Options::default()
    })
    .await;
    let user = registered("Grace", None);
    svc.producer.publish(&user).await;
    assert_eq!(svc.consume().await, 1);

    // First attempt: nothing listens on the port.
    let before = Utc::now();
    assert_eq!(svc.send_due().await, 0);
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "queued");
    assert_eq!(rows[0].attempts, 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("SMTP")),
        "the reason is recorded: {rows:?}"
    );
    let first_retry = next_attempt_at(&svc, user.user_id).await;
    assert!(first_retry > before, "the retry waits");

    // Not due yet: a second pass right away does not try again.
    assert_eq!(svc.send_due().await, 0);
    assert_eq!(svc.rows_of(user.user_id).await[0].attempts, 1);

    // Second attempt, once due: still down, and the wait doubles.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second_at = Utc::now();
    assert_eq!(svc.send_due().await, 0);
    assert_eq!(svc.rows_of(user.user_id).await[0].attempts, 2);
    let second_retry = next_attempt_at(&svc, user.user_id).await;
    let wait = second_retry - second_at;
    assert!(
        wait > chrono::Duration::milliseconds(450) && wait <= chrono::Duration::milliseconds(900),
        "the second wait is about twice the base: {wait}"
    );

    // The server comes up; the next due attempt delivers.
    let smtp = SmtpServer::start_on(port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the email was never sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent = svc.send_due().await;
    }
    assert_eq!(sent, 1);
    let rows = svc.rows_of(user.user_id).await;
    assert_eq!(rows[0].status, "sent");
    assert_eq!(
        rows[0].attempts, 3,
        "two failed attempts and the one that worked"
    );
    assert_eq!(rows[0].last_error, None);
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0]["body"]
            .as_str()
            .unwrap()
            .contains(user.verification_url.as_deref().unwrap())
    );
    assert_eq!(svc.send_due().await, 0);
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_message_is_marked_failed_after_the_configured_attempts() {
    let port = free_port();
    let svc = Service::start(Options {
        smtp_port: Some(port),
        retry_base_delay_ms: 10,
        max_attempts: 3,
        ..Options::default()
    })
    .await;
    let user = registered("Heidi", None);
    svc.producer.publish(&user).await;
    assert_eq!(svc.consume().await, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(svc.send_due().await, 0);
        let row = svc.rows_of(user.user_id).await.remove(0);
        if row.status == "failed" {
            assert_eq!(row.attempts, 3);
            assert!(row.last_error.is_some_and(|e| !e.is_empty()));
            break;
        }
        assert_eq!(row.status, "queued");
        assert!(row.attempts < 3, "{row:?}");
        assert!(tokio::time::Instant::now() < deadline, "never gave up");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // A failed message is not tried again, even once the server is up.
    let smtp = SmtpServer::start_on(port).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(svc.send_due().await, 0);
    assert!(smtp.messages().is_empty());
    assert_eq!(svc.rows_of(user.user_id).await[0].attempts, 3);
}
