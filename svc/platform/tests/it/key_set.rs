//! A service follows users' key set: a rotated signing key is accepted without a restart,
//! from its first token on, and tokens naming unknown keys cannot make it call users for
//! each, nor be held waiting.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::CancellationToken;
use platform::auth::{AuthError, JwtVerifier, KeySet, Role};
use platform::testing::{JwksStandIn, TestIdentity, users_at};

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

/// A verifier of `users`' keys, following them with `gap` between the fetches unknown keys
/// ask for, until `stop`.
async fn following(
    users: &JwksStandIn,
    first: &TestIdentity,
    gap: Duration,
    stop: &CancellationToken,
) -> (JwtVerifier, tokio::task::JoinHandle<()>) {
    let verifier = JwtVerifier::from_jwks(&first.jwks).unwrap();
    let task = tokio::spawn(platform::service::follow_jwks(
        verifier.clone(),
        users.as_users().await,
        Duration::from_secs(2),
        gap,
        stop.clone(),
    ));
    (verifier, task)
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_a_restart_and_unknown_keys_do_not_flood_users() {
    let (old, new) = (TestIdentity::new(), TestIdentity::new());
    let users = JwksStandIn::start(&[&old]).await;
    let stop = CancellationToken::new();
    let (verifier, following) = following(&users, &old, GAP, &stop).await;
    let user = uuid::Uuid::new_v4();
    let old_token = old.token(user, Role::Customer);
    let new_token = new.token(user, Role::Customer);
    assert!(verifier.verify(&old_token).is_ok());

    // Users signs with a new key and publishes the previous one beside it: the first token
    // signed by it is accepted, having waited for the one fetch it asked for.
    users.publish(&[&new, &old]);
    let first = verifier.verify_awaiting_new_keys(&new_token).await;
    assert_eq!(first.unwrap().id, user);
    tokio::time::sleep(GAP * 2).await;
    assert_eq!(
        users.fetched_at().len(),
        1,
        "one fetch, none asked for after it"
    );
    assert!(
        verifier.verify(&old_token).is_ok(),
        "the previous key, still published, still verifies"
    );

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

#[tokio::test]
async fn within_the_gap_a_new_keys_token_is_refused_at_once_and_without_a_follower_too() {
    let (old, new, newer) = (
        TestIdentity::new(),
        TestIdentity::new(),
        TestIdentity::new(),
    );
    let users = JwksStandIn::start(&[&old]).await;
    let stop = CancellationToken::new();
    // A gap longer than the test: the second key cannot be fetched in it.
    let (verifier, following) = following(&users, &old, Duration::from_secs(60), &stop).await;
    let user = uuid::Uuid::new_v4();
    users.publish(&[&new, &old]);
    assert!(
        verifier
            .verify_awaiting_new_keys(&new.token(user, Role::Customer))
            .await
            .is_ok()
    );

    users.publish(&[&newer, &new, &old]);
    let asked = Instant::now();
    let refused = verifier
        .verify_awaiting_new_keys(&newer.token(user, Role::Customer))
        .await;
    assert!(matches!(refused, Err(AuthError::UnknownKey)), "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "held {:?} for a fetch the gap does not allow",
        asked.elapsed()
    );
    assert_eq!(users.fetched_at().len(), 1);

    // Once the follower has stopped, and for a verifier never followed, unknown keys are
    // refused at once too.
    stop.cancel();
    following.await.unwrap();
    let unfollowed = JwtVerifier::from_jwks(&old.jwks).unwrap();
    for verifier in [&verifier, &unfollowed] {
        let asked = Instant::now();
        let refused = verifier
            .verify_awaiting_new_keys(&newer.token(user, Role::Customer))
            .await;
        assert!(matches!(refused, Err(AuthError::UnknownKey)), "{refused:?}");
        assert!(asked.elapsed() < Duration::from_secs(1));
    }
}

/// A port bound and not listening, so that connecting to it is refused; bound until the
/// socket is dropped, so that no other test's server gets it meanwhile.
fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// A port whose connections are taken (by the kernel's backlog) and never answered: an
/// instance hung, or behind a firewall that drops.
async fn hanging_port() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[tokio::test]
async fn keys_are_those_of_every_users_instance_that_answers() {
    // A rolling restart onto a new signing key: one instance still publishes the old set,
    // one the new; one has died without leaving discovery, one hangs (both listed first).
    let (old, new) = (TestIdentity::new(), TestIdentity::new());
    let (still_old, restarted) = (
        JwksStandIn::start(&[&old]).await,
        JwksStandIn::start(&[&new, &old]).await,
    );
    let (_dead, dead_port) = refusing_port();
    let (_hung, hung_port) = hanging_port().await;
    let discovery = users_at(&[
        dead_port,
        hung_port,
        still_old.server.port(),
        restarted.server.port(),
    ])
    .await;
    // A timeout longer than a new key's token waits for a fetch: the hung instance must not
    // hold a fetch that long.
    let timeout = Duration::from_secs(5);
    let started = Instant::now();
    let verifier = platform::service::load_verifier("", discovery.as_ref(), timeout)
        .await
        .expect("the answering instances' keys");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for instances that do not answer",
        started.elapsed()
    );
    let user = uuid::Uuid::new_v4();
    for identity in [&old, &new] {
        assert_eq!(
            verifier
                .verify(&identity.token(user, Role::Customer))
                .unwrap()
                .id,
            user
        );
    }

    // The follower asks them all too: a key only the restarted instance publishes arrives,
    // and its first token is accepted.
    let newest = TestIdentity::new();
    restarted.publish(&[&newest, &new]);
    let stop = CancellationToken::new();
    let following = tokio::spawn(platform::service::follow_jwks(
        verifier.clone(),
        discovery,
        timeout,
        GAP,
        stop.clone(),
    ));
    let accepted = verifier
        .verify_awaiting_new_keys(&newest.token(user, Role::Customer))
        .await;
    assert_eq!(accepted.unwrap().id, user);
    assert!(
        verifier.verify(&old.token(user, Role::Customer)).is_ok(),
        "still published by the instance not yet restarted"
    );
    assert_eq!(
        (still_old.fetched_at().len(), restarted.fetched_at().len()),
        (2, 2)
    );
    stop.cancel();
    following.await.unwrap();
}

/// `identity`'s key set with its key published under `kid` instead of its own.
fn published_as(identity: &TestIdentity, kid: &str) -> serde_json::Value {
    let mut set: serde_json::Value = serde_json::from_str(&identity.jwks).unwrap();
    set["keys"][0]["kid"] = kid.into();
    set["keys"][0].clone()
}

#[tokio::test]
async fn a_kid_that_instances_publish_for_different_keys_is_refused_and_the_rest_kept() {
    let (a, b) = (TestIdentity::new(), TestIdentity::new());
    let user = uuid::Uuid::new_v4();
    let token_of_a = a.token(user, Role::Customer);
    let kid_of_a = jsonwebtoken::decode_header(&token_of_a)
        .unwrap()
        .kid
        .unwrap();
    let one = KeySet::from_jwks(&a.jwks).unwrap();
    // Another instance publishes b's key under a's kid (a mistyped previous key, say), and b's.
    let other = serde_json::json!({"keys": [published_as(&b, &kid_of_a), serde_json::from_str::<serde_json::Value>(&b.jwks).unwrap()["keys"][0]]});
    let other = KeySet::from_jwks(&other.to_string()).unwrap();
    let verifier = JwtVerifier::from_key_set(KeySet::union_of([one, other]).unwrap());
    assert!(matches!(
        verifier.verify(&token_of_a),
        Err(AuthError::UnknownKey)
    ));
    assert_eq!(
        verifier.verify(&b.token(user, Role::Customer)).unwrap().id,
        user
    );

    // Within one set, one kid for two keys makes the set unusable.
    let both = serde_json::json!({"keys": [published_as(&a, "k"), published_as(&b, "k")]});
    assert!(KeySet::from_jwks(&both.to_string()).is_err());
    // Nothing left: no set.
    let only_a = || {
        KeySet::from_jwks(&serde_json::json!({"keys": [published_as(&a, "k")]}).to_string())
            .unwrap()
    };
    let only_b =
        KeySet::from_jwks(&serde_json::json!({"keys": [published_as(&b, "k")]}).to_string())
            .unwrap();
    assert!(KeySet::union_of([only_a(), only_b]).is_none());
    assert!(KeySet::union_of([only_a(), only_a()]).is_some());
}
