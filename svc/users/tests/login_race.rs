//! A login whose password was checked just before the password changed. Its own test binary:
//! the failpoint it sets is global to the process, and no other test may stop at it.

// Shared with the black-box tests, of which this one uses a part.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use support::Shop;

const AFTER_CHECK: &str = "users::after_password_check";
const OLD_PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "a brand new password";

/// Removes the failpoint when dropped: the logins of a test that failed early stop no more.
struct Stops;

impl Drop for Stops {
    fn drop(&mut self) {
        fail::remove(AFTER_CHECK);
    }
}

/// A std receiver waited on off the runtime's threads, for at most 10 s.
async fn received(rx: &'static Mutex<mpsc::Receiver<()>>, what: &str) {
    let got = tokio::task::spawn_blocking(move || {
        rx.lock().unwrap().recv_timeout(Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(got.is_ok(), "{what}");
}

// Several worker threads: the stopped login holds one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_checked_before_a_password_change_gets_no_session_or_device() {
    let shop = Shop::start().await;
    let email = "racer@example.com";
    shop.register(email, OLD_PASSWORD).await;
    let first = shop.tokens(email, OLD_PASSWORD).await;

    // The next login stops right after its password check, until released.
    let (reached_tx, reached_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (reached_tx, release_rx) = (Mutex::new(reached_tx), Mutex::new(release_rx));
    // Only the first check stops (the password change checks the current password too). The
    // failpoint stays until the end: removed while a login is stopped in its callback, it
    // would drop the callback's channels with it.
    let first_login = AtomicBool::new(true);
    fail::cfg_callback(AFTER_CHECK, move || {
        if first_login.swap(false, Ordering::SeqCst) {
            reached_tx.lock().unwrap().send(()).unwrap();
            let _ = release_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
        }
    })
    .unwrap();
    let _stops = Stops;
    let racing = {
        let login = shop.post(
            "/api/v1/users/login",
            json!({"email": email, "password": OLD_PASSWORD}),
        );
        tokio::spawn(async move { login.send().await.unwrap() })
    };
    let reached_rx: &'static _ = Box::leak(Box::new(Mutex::new(reached_rx)));
    received(reached_rx, "the login reached the failpoint").await;

    // Meanwhile the password changes, which ends every session and forgets every device.
    let changed = shop
        .client
        .patch(shop.url("/api/v1/users/me"))
        .bearer_auth(first["access_token"].as_str().unwrap())
        .json(&json!({"password": NEW_PASSWORD, "current_password": OLD_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    release_tx.send(()).unwrap();

    // The login checked against the old password gets nothing that outlives the change.
    let resp = tokio::time::timeout(Duration::from_secs(10), racing)
        .await
        .expect("the released login answered")
        .unwrap();
    assert_eq!(resp.status(), 401, "{}", resp.text().await.unwrap());
    let pool = shop.users.pool();
    let live_sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM login_devices")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((live_sessions, devices), (0, 0));
    assert_eq!(shop.login(email, NEW_PASSWORD).await.status(), 200);
}
