//! A service follows users' key set: a rotated signing key is accepted without a restart,
//! from its first token on, and tokens naming unknown keys cannot make it call users for
//! each, nor be held waiting.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::CancellationToken;
use platform::auth::{AuthError, JwtVerifier, Role};
use platform::testing::{JwksStandIn, TestIdentity, eventually_within};

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
    let users = JwksStandIn::start(&[&old]).await;
    let discovery = users.as_users().await;
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

    // Users signs with a new key and publishes the previous one beside it: the first token
    // signed by it is accepted, having waited for the fetch it asked for.
    users.publish(&[&new, &old]);
    let first = verifier.verify_awaiting_new_keys(&new_token).await;
    assert_eq!(first.unwrap().id, user);
    assert_eq!(users.fetched_at().len(), 1);
    assert!(
        verifier.verify(&old_token).is_ok(),
        "the previous key, still published, still verifies"
    );

    // Another key published within the gap: its first token is refused at once, not held
    // for the set to be fetched again, and accepted after the gap.
    let newer = TestIdentity::new();
    let newer_token = newer.token(user, Role::Customer);
    users.publish(&[&newer, &new, &old]);
    let asked = Instant::now();
    let refused = verifier.verify_awaiting_new_keys(&newer_token).await;
    assert!(
        matches!(refused, Err(AuthError::UnknownKey(_))),
        "{refused:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "held {:?} for a fetch the gap does not allow",
        asked.elapsed()
    );
    let (v, token) = (&verifier, &newer_token);
    eventually_within(
        Duration::from_secs(5),
        "the newer key fetched after the gap",
        || async move { v.verify_awaiting_new_keys(token).await.is_ok() },
    )
    .await;
    // Tokens naming keys nobody has, arriving for a while: fetches come, but never two
    // within the gap, however many such tokens arrive.
    let before = users.fetched_at().len();
    for i in 0..100 {
        assert!(verifier.verify(&token_of_unknown_key(i)).is_err());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(GAP * 2).await;
    let at = users.fetched_at();
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
