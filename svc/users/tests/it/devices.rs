//! Known devices: failed logins from elsewhere lock an email out, but not its owner on a
//! device the account has signed in on (OWASP's device cookie).

use serde_json::{Value, json};

use crate::support::{Shop, problem};

const PASSWORD: &str = "correct horse battery";

fn device_token(pair: &Value) -> String {
    pair["device_token"]
        .as_str()
        .expect("a login gives a device token")
        .to_owned()
}

/// Fails `times` logins of `email` (on `device`, if given).
async fn fail(shop: &Shop, email: &str, device: Option<&str>, times: usize) {
    for _ in 0..times {
        let resp = match device {
            Some(token) => shop.login_on(token, email, "bad guess!").await,
            None => shop.login(email, "bad guess!").await,
        };
        problem(resp, 401).await;
    }
}

#[tokio::test]
async fn failures_elsewhere_do_not_lock_the_owner_out_of_a_known_device() {
    // The tests' config: 3 failures lock for 15 minutes.
    let shop = Shop::start().await;
    let email = "owner@example.com";
    shop.register(email, PASSWORD).await;
    let first = shop.tokens(email, PASSWORD).await;
    let device = device_token(&first);
    let refreshed: Value = shop.refresh(&first).await.json().await.unwrap();
    assert!(
        refreshed.get("device_token").is_none(),
        "a refresh gives none"
    );

    // Someone else guesses: the email is locked for them and for any new device.
    fail(&shop, email, None, 3).await;
    problem(shop.login(email, PASSWORD).await, 429).await;
    // The owner's device is not.
    let resp = shop.login_on(&device, email, PASSWORD).await;
    assert_eq!(resp.status(), 200);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(
        device_token(&again),
        device,
        "a known device keeps its token"
    );
    assert_eq!(
        shop.me(again["access_token"].as_str().unwrap()).await["email"],
        email
    );
    // Its success leaves the email's lockout as it was.
    problem(shop.login(email, PASSWORD).await, 429).await;

    // The device's own failures lock it out (guessing from a stolen device token is limited
    // too); it is then judged by the email's count, locked here.
    fail(&shop, email, Some(&device), 2).await;
    assert_eq!(
        shop.login_on(&device, email, PASSWORD).await.status(),
        200,
        "a success clears the device's count"
    );
    fail(&shop, email, Some(&device), 3).await;
    problem(shop.login_on(&device, email, PASSWORD).await, 429).await;
}

#[tokio::test]
async fn a_devices_failures_leave_the_emails_count_alone_until_it_is_locked_out() {
    let shop = Shop::start().await;
    let email = "dana@example.com";
    shop.register(email, PASSWORD).await;
    let device = device_token(&shop.tokens(email, PASSWORD).await);
    fail(&shop, email, Some(&device), 3).await;
    // The email is not locked: a login without the token gets in.
    assert_eq!(shop.login(email, PASSWORD).await.status(), 200);
    // The locked-out device is judged by the email's count, which its failures now add to.
    fail(&shop, email, Some(&device), 3).await;
    problem(shop.login(email, PASSWORD).await, 429).await;
}

#[tokio::test]
async fn a_device_unused_past_its_time_is_no_longer_known() {
    let shop = Shop::start().await;
    let email = "olaf@example.com";
    shop.register(email, PASSWORD).await;
    let device = device_token(&shop.tokens(email, PASSWORD).await);
    // Not yet deleted by retention, but unused for longer than the 90 days a device is known.
    sqlx::query("UPDATE login_devices SET last_used_at = now() - interval '91 days'")
        .execute(shop.users.pool())
        .await
        .unwrap();
    fail(&shop, email, None, 3).await;
    problem(shop.login_on(&device, email, PASSWORD).await, 429).await;
}

#[tokio::test]
async fn a_device_token_counts_only_for_its_account_and_until_the_password_changes() {
    let shop = Shop::start().await;
    let [bob, carol] = ["bob@example.com", "carol@example.com"];
    shop.register(bob, PASSWORD).await;
    shop.register(carol, PASSWORD).await;
    let bobs = shop.tokens(bob, PASSWORD).await;
    let bobs_device = device_token(&bobs);
    shop.tokens(carol, PASSWORD).await;

    // Another account's device, or a made-up token, is no device of carol's.
    fail(&shop, carol, None, 3).await;
    for token in [bobs_device.as_str(), "made-up"] {
        problem(shop.login_on(token, carol, PASSWORD).await, 429).await;
    }
    // Failures with a token that is no device of the account count against the email: this
    // one, on bob's email, starts its count.
    fail(&shop, bob, Some("made-up"), 3).await;
    problem(shop.login(bob, PASSWORD).await, 429).await;
    let resp = shop.login_on(&bobs_device, bob, PASSWORD).await;
    assert_eq!(resp.status(), 200);

    // A password change forgets the account's devices.
    let access = bobs["access_token"].as_str().unwrap();
    let changed = shop
        .client
        .patch(shop.url("/api/v1/users/me"))
        .bearer_auth(access)
        .json(&json!({"password": "a new password", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    problem(
        shop.login_on(&bobs_device, bob, "a new password").await,
        429,
    )
    .await;
}

#[tokio::test]
async fn an_account_knows_its_ten_most_recently_used_devices() {
    let shop = Shop::start().await;
    let email = "many@example.com";
    shop.register(email, PASSWORD).await;
    let mut devices = Vec::new();
    for _ in 0..11 {
        devices.push(device_token(&shop.tokens(email, PASSWORD).await));
    }
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM login_devices")
        .fetch_one(shop.users.pool())
        .await
        .unwrap();
    assert_eq!(known, 10);
    fail(&shop, email, None, 3).await;
    // The first device, unused the longest, was forgotten; the second is still known.
    problem(shop.login_on(&devices[0], email, PASSWORD).await, 429).await;
    assert_eq!(
        shop.login_on(&devices[1], email, PASSWORD).await.status(),
        200
    );
}
