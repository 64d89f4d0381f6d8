use serde_json::json;

use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, Shop, problem};

#[tokio::test]
async fn a_customer_cannot_read_another_user_and_gets_403_on_admin_routes() {
    let shop = Shop::start().await;
    let (alice, alice_token) = shop.customer("alice").await;
    let (bob, _) = shop.customer("bob").await;
    let bob_id = bob["id"].as_str().unwrap();

    problem(
        shop.get(&format!("/api/v1/users/{bob_id}"))
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let own = shop
        .get(&format!("/api/v1/users/{}", alice["id"].as_str().unwrap()))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    problem(
        shop.get("/api/v1/users")
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let promote = shop
        .client
        .put(shop.url(&format!(
            "/api/v1/users/{}/roles",
            alice["id"].as_str().unwrap()
        )))
        .bearer_auth(&alice_token)
        .json(&json!({"roles": ["ADMIN"]}))
        .send()
        .await
        .unwrap();
    problem(promote, 403).await;
    // A malformed query or body is none of a customer's business on an admin route.
    problem(
        shop.get("/api/v1/users?limit=many")
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let malformed = shop
        .client
        .put(shop.url("/api/v1/users/not-an-id/roles"))
        .bearer_auth(&alice_token)
        .json(&json!({"roles": "ADMIN"}))
        .send()
        .await
        .unwrap();
    problem(malformed, 403).await;
    let roles = shop
        .get(&format!("/api/v1/users/{bob_id}"))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(roles.status(), 404);
}

#[tokio::test]
async fn the_configured_admin_email_becomes_admin_only_after_verification() {
    let shop = Shop::start().await;
    shop.register(ADMIN_EMAIL, "admin password 1").await;
    let unverified = shop.tokens(ADMIN_EMAIL, "admin password 1").await;
    problem(
        shop.get("/api/v1/users")
            .bearer_auth(unverified["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
}

#[tokio::test]
async fn whoever_registered_the_admin_email_cannot_sign_in_as_admin_with_their_password() {
    let shop = Shop::start().await;
    // Anyone may register the configured email, before its owner does, with their own password.
    let squatter = shop.register(ADMIN_EMAIL, "squatter's password").await;
    let id = squatter["id"].as_str().unwrap();
    let before = shop.tokens(ADMIN_EMAIL, "squatter's password").await;
    // The owner (or a mail scanner) opens the link in the welcome mail.
    let verified = shop.follow_link(id, "UserRegistered").await;
    assert_eq!(verified["roles"], json!(["CUSTOMER", "ADMIN"]));
    // The squatter's password no longer signs in, nor does their earlier session go on.
    problem(shop.login(ADMIN_EMAIL, "squatter's password").await, 401).await;
    problem(shop.refresh(&before).await, 401).await;
    // The mailbox's owner sets the password through the reset link mailed to it.
    shop.reset_password(id, ADMIN_PASSWORD).await;
    let admin = shop.tokens(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let claims = decode_claims(admin["access_token"].as_str().unwrap());
    assert!(
        claims["authorities"]
            .as_array()
            .unwrap()
            .contains(&json!("user:manage"))
    );
}

#[tokio::test]
async fn an_admin_lists_searches_and_sets_roles() {
    let shop = Shop::start().await;
    let admin = shop.admin().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let user = shop
            .register(&format!("staff{n}@shop.example"), "correct horse battery")
            .await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    let page: serde_json::Value = shop
        .get("/api/v1/users?email=shop.example&limit=3")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: serde_json::Value = shop
        .get(&format!(
            "/api/v1/users?email=shop.example&limit=3&cursor={cursor}"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());
    problem(
        shop.get("/api/v1/users?limit=101")
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;

    let set = |roles: serde_json::Value| {
        shop.client
            .put(shop.url(&format!("/api/v1/users/{}/roles", ids[0])))
            .bearer_auth(&admin)
            .json(&json!({"roles": roles}))
            .send()
    };
    let managed: serde_json::Value = set(json!(["MANAGER"])).await.unwrap().json().await.unwrap();
    assert_eq!(managed["roles"], json!(["MANAGER"]));
    problem(set(json!(["KING"])).await.unwrap(), 422).await;
    problem(set(json!([])).await.unwrap(), 422).await;
    let manager = shop
        .tokens("staff0@shop.example", "correct horse battery")
        .await;
    let claims = decode_claims(manager["access_token"].as_str().unwrap());
    assert_eq!(claims["roles"], json!(["MANAGER"]));
    assert!(
        claims["authorities"]
            .as_array()
            .unwrap()
            .contains(&json!("product:write"))
    );
    assert!(
        !claims["authorities"]
            .as_array()
            .unwrap()
            .contains(&json!("user:manage"))
    );
    let missing = shop
        .client
        .put(shop.url(&format!("/api/v1/users/{}/roles", uuid::Uuid::now_v7())))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["MANAGER"]}))
        .send()
        .await
        .unwrap();
    problem(missing, 404).await;
}

fn decode_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_last_active_admin_keeps_the_role_and_the_account() {
    let shop = Shop::start().await;
    let first = shop.admin().await;
    let first_id = shop.me(&first).await["id"].as_str().unwrap().to_owned();
    let set_roles = |token: String, id: String, roles: serde_json::Value| {
        shop.client
            .put(shop.url(&format!("/api/v1/users/{id}/roles")))
            .bearer_auth(token)
            .json(&json!({"roles": roles}))
            .send()
    };
    let deactivate = |token: String| {
        shop.client
            .delete(shop.url("/api/v1/users/me"))
            .bearer_auth(token)
            .send()
    };
    let alone = problem(
        set_roles(first.clone(), first_id.clone(), json!(["MANAGER"]))
            .await
            .unwrap(),
        409,
    )
    .await;
    assert!(
        alone["detail"]
            .as_str()
            .unwrap()
            .contains("only active admin"),
        "{alone}"
    );
    problem(deactivate(first.clone()).await.unwrap(), 409).await;
    let kept = set_roles(first.clone(), first_id.clone(), json!(["ADMIN", "MANAGER"]))
        .await
        .unwrap();
    assert_eq!(kept.status(), 200, "a change that keeps the role is made");

    let second_user = shop
        .register("second-admin@shop.example", "correct horse battery")
        .await;
    let second_id = second_user["id"].as_str().unwrap().to_owned();
    let made = set_roles(first.clone(), second_id.clone(), json!(["ADMIN"]))
        .await
        .unwrap();
    assert_eq!(made.status(), 200);
    let second = shop
        .tokens("second-admin@shop.example", "correct horse battery")
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Each takes the role from the other at once: one of them must keep it.
    let (a, b) = tokio::join!(
        set_roles(first.clone(), second_id.clone(), json!(["CUSTOMER"])),
        set_roles(second.clone(), first_id.clone(), json!(["CUSTOMER"])),
    );
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let mut admins = Vec::new();
    for id in [&first_id, &second_id] {
        let user: serde_json::Value = shop
            .get(&format!("/api/v1/users/{id}"))
            .bearer_auth(&first)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if user["roles"].as_array().unwrap().contains(&json!("ADMIN")) {
            admins.push(id.clone());
        }
    }
    assert_eq!(admins.len(), 1, "exactly one admin is left: {admins:?}");
}
