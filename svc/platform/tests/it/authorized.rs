//! An operation that needs an authority tells a caller without it 403 before it reads anything
//! else of the request: what such a caller sends wrong is none of its business.

use platform::auth::{Authorized, JwtVerifier, Role, SigningKey, TokenIssuer, needs};
use platform::problem::ApiResult;
use platform::testing::TestServer;
use platform::web;
use poem::EndpointExt;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::{Value, json};

#[derive(Object)]
#[oai(deny_unknown_fields)]
struct Price {
    cents: u32,
}

struct Api;

#[OpenApi]
impl Api {
    #[oai(path = "/prices/:id", method = "put", operation_id = "set_price")]
    async fn set(
        &self,
        auth: Authorized<needs::ProductWrite>,
        id: Path<uuid::Uuid>,
        dry_run: Query<Option<bool>>,
        body: Json<Price>,
    ) -> ApiResult<Json<Value>> {
        Ok(Json(json!({
            "by": auth.0.id,
            "id": id.0,
            "cents": body.0.cents,
            "dry_run": dry_run.0.unwrap_or(false),
        })))
    }
}

struct Shop {
    server: TestServer,
    issuer: TokenIssuer,
}

impl Shop {
    async fn start() -> Self {
        let pem = SigningKey::generate_pem();
        let verifier = JwtVerifier::from_jwks(&SigningKey::from_pem(&pem).unwrap().jwks()).unwrap();
        let app = web::routes(
            "prices",
            web::openapi_service(Api, "prices"),
            vec![],
            1024 * 1024,
        )
        .data(verifier);
        Self {
            server: TestServer::start(app).await,
            issuer: TokenIssuer::new(
                SigningKey::from_pem(&pem).unwrap(),
                std::time::Duration::from_secs(60),
            ),
        }
    }

    /// PUTs `body` to `path` as a caller with `roles` (none: no token); the status and the
    /// answer's JSON.
    async fn put(&self, roles: Option<&[Role]>, path: &str, body: &str) -> (u16, Value) {
        let mut put = reqwest::Client::new()
            .put(format!("{}{path}", self.server.url()))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(roles) = roles {
            put = put.bearer_auth(self.issuer.issue(uuid::Uuid::now_v7(), roles).unwrap());
        }
        let resp = put.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }
}

#[tokio::test]
async fn a_caller_without_the_authority_is_403_whatever_else_it_got_wrong() {
    let shop = Shop::start().await;
    let id = uuid::Uuid::now_v7();
    let customer = Some(&[Role::Customer][..]);
    let manager = Some(&[Role::Manager][..]);
    let wrong = [
        (format!("/prices/{id}"), "{not json"),
        (format!("/prices/{id}"), r#"{"cents": 5, "admin": true}"#),
        (format!("/prices/{id}?dry_run=maybe"), r#"{"cents": 5}"#),
        ("/prices/not-an-id".to_owned(), r#"{"cents": 5}"#),
    ];
    for (path, body) in &wrong {
        let (status, problem) = shop.put(customer, path, body).await;
        assert_eq!(status, 403, "{path} {body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("product:write"),
            "names the authority: {problem}"
        );
        // Who holds it is told what is wrong.
        let (status, problem) = shop.put(manager, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {problem}");
        // And who has no token at all, that one is needed.
        let (status, problem) = shop.put(None, path, body).await;
        assert_eq!(status, 401, "{path} {body}: {problem}");
    }
    let (status, answer) = shop
        .put(
            manager,
            &format!("/prices/{id}?dry_run=true"),
            r#"{"cents": 5}"#,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], id.to_string());
    assert_eq!(answer["cents"], 5);
    assert_eq!(answer["dry_run"], true);
    let (status, answer) = shop
        .put(customer, &format!("/prices/{id}"), r#"{"cents": 5}"#)
        .await;
    assert_eq!(status, 403, "{answer}");
}

#[test]
fn it_is_documented_as_the_bearer_scheme() {
    let spec: Value =
        serde_json::from_str(&poem_openapi::OpenApiService::new(Api, "prices", "1").spec())
            .unwrap();
    assert_eq!(
        spec["paths"]["/prices/{id}"]["put"]["security"],
        json!([{ "BearerAuth": [] }])
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["BearerAuth"]["scheme"],
        "bearer"
    );
}
