//! Retention deletes tokens expired a week ago, failed-login counts that no longer count and
//! devices no longer known; nothing still in use goes, and no caller is answered differently
//! for it.

use platform::retention::prune_own;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool};

use crate::support::{Shop, problem};

const PASSWORD: &str = "correct horse battery";

/// Sets the expiry of the token `token` in `table` to `days_ago` days ago.
async fn expire(pool: &PgPool, table: &str, token: &str, days_ago: i32) {
    // `table` is one of the test's own names.
    let updated = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET expires_at = now() - make_interval(days => $2)
         WHERE token_hash = sha256(convert_to($1, 'UTF8'))"
    )))
    .bind(token)
    .bind(days_ago)
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1, "{table} holds the token");
}

async fn kept(pool: &PgPool, table: &str, token: &str) -> bool {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE token_hash = sha256(convert_to($1, 'UTF8')))"
    )))
    .bind(token)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn prune(shop: &Shop) -> Vec<(&'static str, u64)> {
    prune_own(shop.users.pool(), &shop.users.expired_rows())
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_expired_a_week_ago_are_deleted_and_refused_as_before() {
    let shop = Shop::start_without_background().await;
    let pool = shop.users.pool();
    let user = shop.register("ursula@example.com", PASSWORD).await;
    let link = shop
        .one_time_link_token(user["id"].as_str().unwrap(), "UserRegistered")
        .await;
    let mut sessions = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..3 {
        let pair = shop.tokens("ursula@example.com", PASSWORD).await;
        sessions.push(pair["refresh_token"].as_str().unwrap().to_owned());
        devices.push(pair["device_token"].as_str().unwrap().to_owned());
    }
    // One device unused for longer than the 90 days a device is known.
    sqlx::query(
        "UPDATE login_devices SET last_used_at = now() - interval '91 days'
         WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&devices[0])
    .execute(pool)
    .await
    .unwrap();
    let [long_expired, lately_expired, live] = <[String; 3]>::try_from(sessions).unwrap();
    expire(pool, "refresh_tokens", &long_expired, 8).await;
    expire(pool, "refresh_tokens", &lately_expired, 6).await;
    expire(pool, "one_time_tokens", &link, 8).await;
    let refresh = |token: &str| {
        shop.post(
            "/api/v1/users/token/refresh",
            json!({ "refresh_token": token }),
        )
        .send()
    };
    let verify = || {
        shop.get(&format!("/api/v1/users/verify?token={link}"))
            .send()
    };
    let refused: Value = problem(refresh(&long_expired).await.unwrap(), 401).await;
    let link_refused = problem(verify().await.unwrap(), 410).await;

    assert_eq!(
        prune(&shop).await,
        [
            ("refresh_tokens", 1),
            ("one_time_tokens", 1),
            ("login_failures", 0),
            ("login_devices", 1)
        ]
    );
    assert!(!kept(pool, "refresh_tokens", &long_expired).await);
    assert!(kept(pool, "refresh_tokens", &lately_expired).await);
    assert!(kept(pool, "refresh_tokens", &live).await);
    assert!(!kept(pool, "one_time_tokens", &link).await);
    assert!(!kept(pool, "login_devices", &devices[0]).await);
    assert!(kept(pool, "login_devices", &devices[1]).await);

    // Deleted, they are refused as they were.
    let refused_after = problem(refresh(&long_expired).await.unwrap(), 401).await;
    assert_eq!(refused_after["detail"], refused["detail"]);
    let link_refused_after = problem(verify().await.unwrap(), 410).await;
    assert_eq!(link_refused_after["detail"], link_refused["detail"]);
    problem(refresh(&lately_expired).await.unwrap(), 401).await;
    assert_eq!(refresh(&live).await.unwrap().status(), 200);
    // A second pass finds nothing more.
    assert_eq!(
        prune(&shop).await,
        [
            ("refresh_tokens", 0),
            ("one_time_tokens", 0),
            ("login_failures", 0),
            ("login_devices", 0)
        ]
    );
}

/// Moves `email`'s failure count back: its window began `window_began_minutes_ago`, and its
/// lockout (if any) ends `lockout_ends_in_minutes` from now (negative: ended).
async fn age_failures(
    pool: &PgPool,
    email: &str,
    window_began_minutes_ago: i32,
    lockout_ends_in_minutes: Option<i32>,
) {
    let updated = sqlx::query(
        "UPDATE login_failures SET first_at = now() - make_interval(mins => $2),
                locked_until = now() + make_interval(mins => $3)
         WHERE email = $1",
    )
    .bind(email)
    .bind(window_began_minutes_ago)
    .bind(lockout_ends_in_minutes)
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1, "{email} has failures counted");
}

async fn counted(pool: &PgPool, email: &str) -> Option<i32> {
    sqlx::query_scalar("SELECT failures FROM login_failures WHERE email = $1")
        .bind(email)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_login_counts_go_once_their_window_and_lockout_are_over() {
    // The tests' config: 3 failures within 15 minutes lock an email out for 15 minutes.
    let shop = Shop::start_without_background().await;
    let pool = shop.users.pool();
    let [stale, served, serving, recent] = [
        "stale@example.com",
        "served@example.com",
        "serving@example.com",
        "recent@example.com",
    ];
    for email in [stale, served, serving, recent] {
        shop.register(email, PASSWORD).await;
    }
    for (email, failures) in [(stale, 2), (served, 3), (serving, 3), (recent, 2)] {
        for _ in 0..failures {
            problem(shop.login(email, "bad guess!").await, 401).await;
        }
    }
    age_failures(pool, stale, 16, None).await;
    age_failures(pool, served, 40, Some(-1)).await;
    age_failures(pool, serving, 20, Some(10)).await;

    assert_eq!(
        prune(&shop).await,
        [
            ("refresh_tokens", 0),
            ("one_time_tokens", 0),
            ("login_failures", 2),
            ("login_devices", 0)
        ]
    );
    assert_eq!(counted(pool, stale).await, None);
    assert_eq!(counted(pool, served).await, None);
    assert_eq!(counted(pool, serving).await, Some(3));
    assert_eq!(counted(pool, recent).await, Some(2));

    // The lockout still running holds; the recent count goes on to lock its email.
    problem(shop.login(serving, PASSWORD).await, 429).await;
    problem(shop.login(recent, "bad guess!").await, 401).await;
    problem(shop.login(recent, PASSWORD).await, 429).await;
    // Deleted counts start again from nothing, as they would have anyway.
    for email in [stale, served] {
        problem(shop.login(email, "bad guess!").await, 401).await;
        assert_eq!(counted(pool, email).await, Some(1));
        assert_eq!(shop.login(email, PASSWORD).await.status(), 200);
    }
}
