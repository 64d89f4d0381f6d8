use serde_json::json;

use crate::support::{Shop, eventually, problem};

#[tokio::test]
async fn register_login_and_read_me() {
    let shop = Shop::start().await;
    let user = shop
        .register("  Ada@Example.COM ", "correct horse battery")
        .await;
    assert_eq!(user["email"], "ada@example.com", "emails are normalised");
    assert_eq!(user["roles"], json!(["CUSTOMER"]));
    assert_eq!(user["email_verified"], false);
    assert!(
        user.get("password_hash").is_none(),
        "the hash never leaves the service"
    );

    let tokens = shop
        .tokens("ada@example.com", "correct horse battery")
        .await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let me = shop.me(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(me["id"], user["id"]);

    let dup = shop
        .post(
            "/api/v1/users/register",
            json!({"email": "ADA@example.com", "password": "another password", "name": "Ada"}),
        )
        .send()
        .await
        .unwrap();
    problem(dup, 409).await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_answer_alike() {
    let shop = Shop::start().await;
    shop.register("bob@example.com", "correct horse battery")
        .await;
    let wrong = problem(shop.login("bob@example.com", "wrong password").await, 401).await;
    let unknown = problem(
        shop.login("nobody@example.com", "wrong password").await,
        401,
    )
    .await;
    assert_eq!(wrong["detail"], unknown["detail"]);
    assert_eq!(wrong["type"], unknown["type"]);
}

#[tokio::test]
async fn repeated_failures_lock_the_email_out_whether_or_not_it_exists() {
    let shop = Shop::start().await; // login_max_failures = 3 in the tests' config
    shop.register("carol@example.com", "correct horse battery")
        .await;
    for email in ["carol@example.com", "ghost@example.com"] {
        for _ in 0..3 {
            problem(shop.login(email, "bad guess!").await, 401).await;
        }
        let locked = shop.login(email, "correct horse battery").await;
        assert!(locked.headers().contains_key("retry-after"));
        problem(locked, 429).await;
    }
}

#[tokio::test]
async fn registration_publishes_user_registered_with_a_single_use_verification_link() {
    let shop = Shop::start().await;
    let user = shop
        .register("dora@example.com", "correct horse battery")
        .await;
    let id = user["id"].as_str().unwrap();
    let event = shop.event(id, "UserRegistered").await;
    assert_eq!(event["data"]["email"], "dora@example.com");
    assert_eq!(event["source"], "users");
    assert!(
        event["data"]["verification_url"]
            .as_str()
            .unwrap()
            .starts_with("http://localhost:7082/api/v1/users/verify?token=")
    );

    // The relay moves it to the users stream.
    let redis = redis::Client::open(platform::testing::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pool = shop.users.pool().clone();
    eventually("the outbox row is sent", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 0
        }
    })
    .await;
    let prefix_key: String = format!("{}users.events", shop_prefix(&shop).await);
    let len: i64 = redis::cmd("XLEN")
        .arg(&prefix_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);

    let token = shop.one_time_link_token(id, "UserRegistered").await;
    let verified: serde_json::Value = shop
        .get(&format!("/api/v1/users/verify?token={token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["email_verified"], true);
    assert_eq!(verified["roles"], json!(["CUSTOMER"]));
    let again = shop
        .get(&format!("/api/v1/users/verify?token={token}"))
        .send()
        .await
        .unwrap();
    problem(again, 410).await;
}

#[tokio::test]
async fn a_reset_link_mailed_before_the_password_was_set_again_no_longer_works() {
    let shop = Shop::start().await;
    let user = shop
        .register("finn@example.com", "correct horse battery")
        .await;
    let id = user["id"].as_str().unwrap();
    let ask = || {
        shop.post(
            "/api/v1/users/password-reset",
            json!({"email": "finn@example.com"}),
        )
        .send()
    };
    assert_eq!(ask().await.unwrap().status(), 202);
    let earlier = shop.one_time_link_token(id, "PasswordResetRequested").await;
    assert_eq!(ask().await.unwrap().status(), 202);
    shop.reset_password(id, "a brand new password").await;
    let resp = shop
        .post(
            "/api/v1/users/password-reset/confirm",
            json!({"token": earlier, "new_password": "someone else's password"}),
        )
        .send()
        .await
        .unwrap();
    problem(resp, 410).await;
    shop.tokens("finn@example.com", "a brand new password")
        .await;
}

async fn shop_prefix(shop: &Shop) -> String {
    shop.users.redis_prefix().to_owned()
}

#[tokio::test]
async fn password_reset_answers_202_for_anyone_and_works_once() {
    let shop = Shop::start().await;
    let user = shop
        .register("erin@example.com", "correct horse battery")
        .await;
    let before = shop
        .tokens("erin@example.com", "correct horse battery")
        .await;
    for email in ["erin@example.com", "nobody@example.com"] {
        let resp = shop
            .post("/api/v1/users/password-reset", json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let token = shop
        .one_time_link_token(user["id"].as_str().unwrap(), "PasswordResetRequested")
        .await;
    let confirm = |pw: &'static str| {
        shop.post(
            "/api/v1/users/password-reset/confirm",
            json!({"token": token, "new_password": pw}),
        )
        .send()
    };
    problem(confirm("short").await.unwrap(), 422).await;
    assert_eq!(confirm("a brand new password").await.unwrap().status(), 204);
    problem(confirm("yet another password").await.unwrap(), 410).await;
    problem(
        shop.login("erin@example.com", "correct horse battery")
            .await,
        401,
    )
    .await;
    shop.tokens("erin@example.com", "a brand new password")
        .await;
    problem(shop.refresh(&before).await, 401).await;
}

#[tokio::test]
async fn me_can_be_updated_and_a_new_password_needs_the_current_one() {
    let shop = Shop::start().await;
    let (_, token) = shop.customer("fred").await;
    let patch = |body: serde_json::Value| {
        shop.client
            .patch(shop.url("/api/v1/users/me"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let updated: serde_json::Value = patch(json!({"name": "Fred F.", "phone": "+4915112345678"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["name"], "Fred F.");
    assert_eq!(updated["phone"], "+4915112345678");
    let cleared: serde_json::Value = patch(json!({"phone": null}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["phone"], serde_json::Value::Null);
    assert_eq!(cleared["name"], "Fred F.");
    let body = problem(
        patch(json!({"password": "a new password"})).await.unwrap(),
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "current_password");
    problem(
        patch(json!({"password": "a new password", "current_password": "wrong one!"}))
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(patch(json!({"phone": "12345"})).await.unwrap(), 422).await;
    let ok =
        patch(json!({"password": "a new password", "current_password": "correct horse battery"}))
            .await
            .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_deactivated_account_cannot_log_in() {
    let shop = Shop::start().await;
    let email = "gina@example.com";
    shop.register(email, "correct horse battery").await;
    let tokens = shop.tokens(email, "correct horse battery").await;
    let access = tokens["access_token"].as_str().unwrap();
    let resp = shop
        .client
        .delete(shop.url("/api/v1/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    problem(shop.login(email, "correct horse battery").await, 401).await;
    problem(
        shop.get("/api/v1/users/me")
            .bearer_auth(access)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let refresh = shop
        .post(
            "/api/v1/users/token/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .send()
        .await
        .unwrap();
    problem(refresh, 401).await;
}

/// The roles `email` has once signed in with `password`.
async fn roles_of(shop: &Shop, email: &str, password: &str) -> serde_json::Value {
    let tokens = shop.tokens(email, password).await;
    shop.me(tokens["access_token"].as_str().unwrap()).await["roles"].clone()
}

#[tokio::test]
async fn a_demo_account_is_put_back_as_printed_when_the_shop_starts_again() {
    use platform::auth::Role;
    let shop = Shop::start().await;
    let (email, printed) = ("demo-admin@micromart.test", "the printed password");
    let ensure =
        || users::demo::ensure_account(&shop.users, email, printed, "Demo", &[Role::Admin]);
    assert!(ensure().await.unwrap(), "created at the first start");
    assert_eq!(roles_of(&shop, email, printed).await, json!(["ADMIN"]));

    // Trying the shop out: another password, with which someone signs in; at the next start
    // the printed one works again, the other does not, and its session is over.
    let access = shop.tokens(email, printed).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = shop
        .client
        .patch(shop.url("/api/v1/users/me"))
        .bearer_auth(&access)
        .json(&json!({"password": "a password of my own", "current_password": printed}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let own_session = shop.tokens(email, "a password of my own").await;
    assert!(!ensure().await.unwrap(), "found at the next start");
    problem(shop.refresh(&own_session).await, 401).await;
    problem(shop.login(email, "a password of my own").await, 401).await;

    // The ADMIN role taken away, the account closed, and then locked out by failed logins.
    let access = shop.tokens(email, printed).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE users SET roles = '{CUSTOMER}' WHERE email = $1")
        .bind(email)
        .execute(shop.users.pool())
        .await
        .unwrap();
    let closed = shop
        .client
        .delete(shop.url("/api/v1/users/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 204);
    for _ in 0..3 {
        problem(shop.login(email, "bad guess!").await, 401).await;
    }
    problem(shop.login(email, printed).await, 429).await;
    assert!(!ensure().await.unwrap());
    assert_eq!(roles_of(&shop, email, printed).await, json!(["ADMIN"]));
    // Unchanged, it is left as it is (the password is not hashed again).
    let hash = || async {
        let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(shop.users.pool())
            .await
            .unwrap();
        hash
    };
    let before = hash().await;
    assert!(!ensure().await.unwrap());
    assert_eq!(hash().await, before);
}
