//! A service follows users' key set: a rotated signing key is accepted without a restart,
//! and tokens naming unknown keys cannot make it call users for each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::CancellationToken;
use platform::auth::{JwtVerifier, Role};
use platform::discovery::{Discovery, LocalDiscovery, Registration};
use platform::testing::{TestIdentity, TestServer, eventually_within};
use poem::web::Data;
use poem::{EndpointExt, Route, get, handler};

/// What the stand-in for users publishes, and how often it was asked.
#[derive(Clone, Default)]
struct Published {
    jwks: Arc<Mutex<String>>,
    fetched_at: Arc<Mutex<Vec<Instant>>>,
}

#[handler]
fn jwks(published: Data<&Published>) -> String {
    published.fetched_at.lock().unwrap().push(Instant::now());
    published.jwks.lock().unwrap().clone()
}

/// One key set holding the keys of every one of `identities`.
fn key_set(identities: &[&TestIdentity]) -> String {
    let keys: Vec<serde_json::Value> = identities
        .iter()
        .flat_map(|id| {
            let set: serde_json::Value = serde_json::from_str(&id.jwks).unwrap();
            set["keys"].as_array().unwrap().clone()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A token whose header names a key nobody has (its signature is never looked at).
fn token_of_unknown_key(i: usize) -> String {
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": format!("nobody-{i}")});
    format!(
        "{}.e30.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(header.to_string())
    )
}

/// The least time between two fetches that unknown keys ask for, in this test (the services'
/// is `JWKS_REFETCH_GAP`, 10 s).
const GAP: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_rotated_key_is_accepted_without_a_restart_and_unknown_keys_do_not_flood_users() {
    let (old, new) = (TestIdentity::new(), TestIdentity::new());
    let published = Published::default();
    *published.jwks.lock().unwrap() = old.jwks.clone();
    let users = TestServer::start(
        Route::new()
            .at("/.well-known/jwks.json", get(jwks))
            .data(published.clone()),
    )
    .await;
    let discovery = Arc::new(LocalDiscovery::new());
    discovery
        .register(&Registration::new("users", "127.0.0.1", users.port()))
        .await
        .unwrap();
    let verifier = JwtVerifier::from_jwks(&old.jwks).unwrap();
    let stop = CancellationToken::new();
    let following = tokio::spawn(platform::service::follow_jwks(
        verifier.clone(),
        discovery,
        Duration::from_secs(2),
        GAP,
        stop.clone(),
    ));
    let user = uuid::Uuid::new_v4();
    let old_token = old.token(user, Role::Customer);
    let new_token = new.token(user, Role::Customer);
    assert!(verifier.verify(&old_token).is_ok());

    // Users signs with a new key and publishes the previous one beside it.
    *published.jwks.lock().unwrap() = key_set(&[&new, &old]);
    assert!(
        verifier.verify(&new_token).is_err(),
        "a key not fetched yet is unknown"
    );
    let (v, token) = (&verifier, &new_token);
    eventually_within(
        Duration::from_secs(5),
        "the new key fetched",
        || async move { v.verify(token).is_ok() },
    )
    .await;
    assert_eq!(verifier.verify(&new_token).unwrap().id, user);
    assert!(
        verifier.verify(&old_token).is_ok(),
        "the previous key, still published, still verifies"
    );
    // Tokens naming keys nobody has, arriving for a while: fetches come, but never two
    // within the gap, however many such tokens arrive.
    let before = published.fetched_at.lock().unwrap().len();
    for i in 0..100 {
        assert!(verifier.verify(&token_of_unknown_key(i)).is_err());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(GAP * 2).await;
    let at = published.fetched_at.lock().unwrap().clone();
    assert!(at.len() > before, "unknown keys ask for a fetch");
    // Seen here, a fetch arrives a request's time after it leaves: allow for that to vary.
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= GAP - Duration::from_millis(100),
            "two fetches {:?} apart: {} in all",
            pair[1] - pair[0],
            at.len()
        );
    }
    stop.cancel();
    following.await.unwrap();
}
