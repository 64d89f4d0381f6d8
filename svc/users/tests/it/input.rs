use serde_json::json;

use crate::support::{Shop, problem};

#[tokio::test]
async fn malformed_wrongly_typed_oversized_and_unknown_input_is_4xx_problem_json() {
    let shop = Shop::start().await;
    let url = shop.url("/api/v1/users/register");
    let raw = |body: String| {
        shop.client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    problem(raw("{\"email\": ".into()).await.unwrap(), 400).await;
    problem(
        raw(r#"{"email": ["a@example.com"], "password": "correct horse", "name": "X"}"#.into())
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        raw(r#"{"email": "a@example.com", "password": null, "name": "X"}"#.into())
            .await
            .unwrap(),
        400,
    )
    .await;
    // A JSON number or boolean where a string is expected is malformed, not read as its text
    // (poem-openapi's String would register the password "123456789012").
    for not_text in [
        r#"{"email": 42, "password": "correct horse", "name": "X"}"#,
        r#"{"email": "n@example.com", "password": 123456789012, "name": "X"}"#,
        r#"{"email": "n@example.com", "password": "correct horse", "name": true}"#,
        r#"{"email": "n@example.com", "password": "correct horse", "name": "X", "phone": 4915112345678}"#,
    ] {
        let refused = problem(raw(not_text.into()).await.unwrap(), 400).await;
        assert!(
            refused["detail"]
                .as_str()
                .unwrap()
                .contains("Expected input type \"string\""),
            "{not_text}: {refused}"
        );
    }
    let unknown = problem(
        raw(r#"{"email": "a@example.com", "password": "correct horse", "name": "X", "roles": ["ADMIN"]}"#.into()).await.unwrap(),
        400,
    )
    .await;
    assert!(unknown["detail"].as_str().unwrap().contains("roles"));
    let big = format!(
        r#"{{"email": "a@example.com", "password": "correct horse", "name": "{}"}}"#,
        "n".repeat(2 * 1024 * 1024)
    );
    problem(raw(big).await.unwrap(), 413).await;

    let long_pw = "p".repeat(129);
    let body = problem(
        shop.post(
            "/api/v1/users/register",
            json!({"email": "a@example.com", "password": long_pw, "name": "X"}),
        )
        .send()
        .await
        .unwrap(),
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "password");
    let body = problem(
        shop.post(
            "/api/v1/users/register",
            json!({"email": "not-an-email", "password": "short", "name": "", "phone": "call me"}),
        )
        .send()
        .await
        .unwrap(),
        422,
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["email", "password", "name", "phone"],
        "every wrong field is named at once"
    );

    let (_, token) = shop.customer("ivan").await;
    problem(
        shop.get("/api/v1/users/not-a-uuid")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    // An admin is told what is wrong with the query (a customer, that the route is not theirs:
    // admin.rs).
    problem(
        shop.get("/api/v1/users?limit=lots")
            .bearer_auth(shop.admin().await)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(shop.get("/api/v1/users/verify").send().await.unwrap(), 400).await;
    problem(
        shop.client
            .post(&url)
            .header("content-type", "text/plain")
            .body("hi")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    problem(
        shop.get("/api/v1/users/no/such/route")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let nothing_created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'a@example.com'")
            .fetch_one(shop.users.pool())
            .await
            .unwrap();
    assert_eq!(nothing_created, 0);
}
