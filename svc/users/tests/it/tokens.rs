use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::SigningKey;
use serde_json::{Value, json};

use crate::support::{Shop, problem};

fn claims(sub: &str, aud: &str, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": sub, "iss": "micromart-users", "aud": aud,
        "exp": now + exp_offset, "nbf": now - 10, "iat": now - 10,
        "jti": uuid::Uuid::now_v7(), "roles": ["ADMIN"],
        "authorities": ["shop", "user:manage"],
    })
}

fn sign(pem: &str, claims: &Value) -> String {
    let key = SigningKey::from_pem(pem).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_unsigned_and_misaddressed_tokens_are_401() {
    let shop = Shop::start().await;
    let (user, _) = shop.customer("mallory").await;
    let sub = user["id"].as_str().unwrap();
    let me = |token: String| shop.get("/api/v1/users/me").bearer_auth(token).send();

    // Sanity: a token we sign with the service's own key and valid claims works.
    let good = sign(&shop.signing_pem, &claims(sub, "micromart", 300));
    assert_eq!(me(good.clone()).await.unwrap().status(), 200);

    // Signed by another key, even with the service's kid.
    let other_pem = SigningKey::generate_pem();
    let own_kid = SigningKey::from_pem(&shop.signing_pem).unwrap().kid;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(own_kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(sub, "micromart", 300),
        &EncodingKey::from_ed_pem(other_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    problem(me(forged).await.unwrap(), 401).await;
    problem(
        me(sign(&other_pem, &claims(sub, "micromart", 300)))
            .await
            .unwrap(),
        401,
    )
    .await;

    // alg: none, with the good token's claims and no signature.
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": own_kid}).to_string());
    let payload = good.split('.').nth(1).unwrap();
    problem(me(format!("{header}.{payload}.")).await.unwrap(), 401).await;

    // HS256 keyed with the public key (the algorithm-confusion attack).
    let x = SigningKey::from_pem(&shop.signing_pem).unwrap().jwk()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(own_kid);
    let confused = jsonwebtoken::encode(
        &hs,
        &claims(sub, "micromart", 300),
        &EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    problem(me(confused).await.unwrap(), 401).await;

    problem(
        me(sign(&shop.signing_pem, &claims(sub, "micromart", -120)))
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        me(sign(
            &shop.signing_pem,
            &claims(sub, "another-audience", 300),
        ))
        .await
        .unwrap(),
        401,
    )
    .await;
    problem(me("not.a.token".into()).await.unwrap(), 401).await;
    problem(shop.get("/api/v1/users/me").send().await.unwrap(), 401).await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_of_a_spent_token_revokes_the_family() {
    let shop = Shop::start().await;
    let email = "rita@example.com";
    shop.register(email, "correct horse battery").await;
    let first = shop.tokens(email, "correct horse battery").await;
    let other_session = shop.tokens(email, "correct horse battery").await;
    let refresh = |t: &Value| {
        shop.post(
            "/api/v1/users/token/refresh",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .send()
    };
    let second: Value = refresh(&first).await.unwrap().json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(
        shop.get("/api/v1/users/me")
            .bearer_auth(second["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The spent token comes back: the whole family dies, the newest token too.
    problem(refresh(&first).await.unwrap(), 401).await;
    problem(refresh(&second).await.unwrap(), 401).await;
    // Another login's family is untouched.
    assert_eq!(refresh(&other_session).await.unwrap().status(), 200);
    problem(
        shop.post(
            "/api/v1/users/token/refresh",
            json!({"refresh_token": "made-up"}),
        )
        .send()
        .await
        .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn logout_revokes_the_refresh_family() {
    let shop = Shop::start().await;
    let email = "lou@example.com";
    shop.register(email, "correct horse battery").await;
    let t = shop.tokens(email, "correct horse battery").await;
    let resp = shop
        .post(
            "/api/v1/users/logout",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    problem(shop.refresh(&t).await, 401).await;
}

#[tokio::test]
async fn jwks_publishes_the_verifying_key() {
    let shop = Shop::start().await;
    let jwks: Value = shop
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = SigningKey::from_pem(&shop.signing_pem).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], key.kid.as_str());
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    // Another service verifies with only this document.
    let verifier = platform::auth::JwtVerifier::from_jwks(&jwks.to_string()).unwrap();
    let (user, token) = shop.customer("vera").await;
    let caller = verifier.verify(&token).unwrap();
    assert_eq!(caller.id.to_string(), user["id"].as_str().unwrap());
    assert!(caller.has("shop"));
}
