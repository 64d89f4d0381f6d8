//! Bad requests get problem+json, never a 500.

use platform::auth::Role;
use platform::testing::expect_problem;
use uuid::Uuid;

use crate::support::{Options, Service};

#[tokio::test]
async fn bad_query_parameters_get_a_problem() {
    let svc = Service::start(Options::default()).await;
    let admin = svc.token(Uuid::now_v7(), Role::Admin);
    for (query, status) in [
        ("limit=0", 422),
        ("limit=101", 422),
        ("limit=-1", 400),
        ("cursor=not-a-uuid", 400),
        ("user_id=12345", 400),
        ("status=bounced", 400),
    ] {
        let resp = svc
            .get(&format!("/api/v1/notifications?{query}"), &admin)
            .await;
        let body = expect_problem(resp, status).await;
        if status == 422 {
            assert_eq!(body["errors"][0]["field"], "limit", "{query}: {body}");
        }
    }
}

#[tokio::test]
async fn listing_needs_a_valid_access_token() {
    let svc = Service::start(Options::default()).await;
    let resp = svc
        .client
        .get(format!("{}/api/v1/notifications", svc.server.url()))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 401).await;
    let resp = svc.get("/api/v1/notifications", "not-a-token").await;
    expect_problem(resp, 401).await;
}
