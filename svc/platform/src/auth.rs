//! Identity: EdDSA access tokens signed by users, verified everywhere from a pinned key set.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use poem::{Request, RequestBody};
use poem_openapi::auth::Bearer;
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::Problem;

pub const ISSUER: &str = "micromart-users";
pub const AUDIENCE: &str = "micromart";

/// What a role allows; services check these, never role names.
pub mod authority {
    pub const SHOP: &str = "shop";
    pub const PRODUCT_WRITE: &str = "product:write";
    pub const INVENTORY_WRITE: &str = "inventory:write";
    pub const ORDER_MANAGE: &str = "order:manage";
    pub const USER_MANAGE: &str = "user:manage";
    pub const PAYMENT_REFUND: &str = "payment:refund";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Customer,
    Manager,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Customer, Role::Manager, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "CUSTOMER",
            Role::Manager => "MANAGER",
            Role::Admin => "ADMIN",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn authorities(self) -> &'static [&'static str] {
        use authority::*;
        match self {
            Role::Customer => &[SHOP],
            Role::Manager => &[SHOP, PRODUCT_WRITE, INVENTORY_WRITE, ORDER_MANAGE],
            Role::Admin => &[
                SHOP,
                PRODUCT_WRITE,
                INVENTORY_WRITE,
                ORDER_MANAGE,
                USER_MANAGE,
                PAYMENT_REFUND,
            ],
        }
    }
}

/// The authorities granted by a set of roles, deduplicated and sorted.
pub fn authorities_of(roles: &[Role]) -> Vec<String> {
    let mut all: Vec<String> = roles
        .iter()
        .flat_map(|r| r.authorities().iter().map(|a| (*a).to_owned()))
        .collect();
    all.sort();
    all.dedup();
    all
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid signing key: {0}")]
    Key(String),
    #[error("invalid key set: {0}")]
    KeySet(String),
    #[error("token rejected: {0}")]
    Token(String),
    // Without the kid: it is the sender's to choose, and goes to the logs.
    #[error("token signed by a key not in the set")]
    UnknownKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: Uuid,
    pub roles: Vec<String>,
    pub authorities: Vec<String>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: Uuid,
    pub roles: Vec<String>,
    pub authorities: Vec<String>,
}

impl Caller {
    pub fn has(&self, authority: &str) -> bool {
        self.authorities.iter().any(|a| a == authority)
    }

    /// 403 unless the caller holds `authority`.
    pub fn require(&self, authority: &str) -> Result<(), Problem> {
        if self.has(authority) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this operation needs the `{authority}` authority"
            )))
        }
    }
}

/// An Ed25519 private key in PKCS#8 PEM, with the key id derived from its public half.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    public: [u8; 32],
}

impl SigningKey {
    /// A fresh key, as PKCS#8 PEM (to be stored outside the repository).
    pub fn generate_pem() -> String {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        key.to_pkcs8_pem(Default::default())
            .expect("an Ed25519 key encodes to PKCS#8")
            .to_string()
    }

    pub fn from_pem(pem: &str) -> Result<Self, AuthError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let public = key.verifying_key().to_bytes();
        let kid = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(public);
            URL_SAFE_NO_PAD.encode(&digest[..12])
        };
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public,
        })
    }

    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.public),
        })
    }

    /// A JWKS document holding this key's public half.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.jwk()] }).to_string()
    }
}

/// Signs access tokens (users only).
pub struct TokenIssuer {
    key: SigningKey,
    pub ttl: Duration,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, ttl: Duration) -> Self {
        Self { key, ttl }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn issue(&self, user: Uuid, roles: &[Role]) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            exp: now + self.ttl.as_secs() as i64,
            nbf: now,
            iat: now,
            jti: Uuid::now_v7(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            authorities: authorities_of(roles),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| AuthError::Token(e.to_string()))
    }
}

/// The public keys of a JWKS that verify access tokens (Ed25519 only), by `kid`; never empty.
pub struct KeySet(HashMap<String, PublishedKey>);

/// A key as published (its `x`, to tell whether two sets mean the same key by a kid), and as
/// tokens are checked with.
struct PublishedKey {
    x: String,
    key: DecodingKey,
}

impl KeySet {
    /// The keys of a JWKS document; an error if any key is not Ed25519, if one kid names two
    /// keys, or if there is none.
    pub fn from_jwks(jwks: &str) -> Result<Self, AuthError> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| AuthError::KeySet(e.to_string()))?;
        let mut keys: HashMap<String, PublishedKey> = HashMap::new();
        for jwk in set.keys {
            if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
                return Err(AuthError::KeySet(format!(
                    "key {} is not an Ed25519 key",
                    jwk.kid
                )));
            }
            let x = jwk
                .x
                .ok_or_else(|| AuthError::KeySet(format!("key {} has no x", jwk.kid)))?;
            let key = DecodingKey::from_ed_components(&x)
                .map_err(|e| AuthError::KeySet(e.to_string()))?;
            if keys.get(&jwk.kid).is_some_and(|known| known.x != x) {
                return Err(AuthError::KeySet(format!(
                    "kid {} names two different keys",
                    jwk.kid
                )));
            }
            keys.insert(jwk.kid, PublishedKey { x, key });
        }
        if keys.is_empty() {
            return Err(AuthError::KeySet("the key set is empty".into()));
        }
        Ok(Self(keys))
    }

    /// Every key of `sets` (several instances' of users), except those whose kid names
    /// different keys in different sets: users derives the kid of its signing key from the
    /// key, but previous keys are published as configured, and a token naming such a kid
    /// could be checked with either; it is refused rather than guessed. None if no key is left.
    pub fn union_of(sets: impl IntoIterator<Item = KeySet>) -> Option<KeySet> {
        let mut union: HashMap<String, PublishedKey> = HashMap::new();
        let mut conflicting = std::collections::HashSet::new();
        for set in sets {
            for (kid, published) in set.0 {
                if conflicting.contains(&kid) {
                    continue;
                }
                match union.get(&kid) {
                    None => {
                        union.insert(kid, published);
                    }
                    Some(known) if known.x == published.x => {}
                    Some(_) => {
                        tracing::error!(%kid, "users instances publish different keys under one kid; tokens naming it are refused");
                        union.remove(&kid);
                        conflicting.insert(kid);
                    }
                }
            }
        }
        (!union.is_empty()).then_some(Self(union))
    }

    fn into_decoding_keys(self) -> HashMap<String, DecodingKey> {
        self.0.into_iter().map(|(kid, k)| (kid, k.key)).collect()
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    crv: Option<String>,
    x: Option<String>,
}

/// Verifies access tokens against a pinned set of public keys, chosen by `kid` (RFC 8725):
/// algorithm pinned to EdDSA, `exp`, `nbf`, `iss`, `aud` and `sub` required.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Arc<RwLock<HashMap<String, DecodingKey>>>,
    // Shared: the verifier is cloned into every request, and a `Validation` holds sets.
    validation: Arc<Validation>,
    /// Told of each token signed by a key not in the set: users may have a new one
    /// (`service::follow_jwks`).
    unknown_key: Arc<tokio::sync::Notify>,
    /// Whether the set follows users' (`service::follow_jwks` runs for it).
    followed: Arc<AtomicBool>,
    /// Counts the follower's answers to unknown keys: a fetch of the set (made, or failed),
    /// or word that the set was fetched too recently to be fetched again yet.
    unknown_key_answers: Arc<tokio::sync::watch::Sender<u64>>,
}

/// How long a token signed by a key not in the followed set waits for the set to be fetched
/// again before it is refused.
const NEW_KEY_WAIT: Duration = Duration::from_secs(2);

impl JwtVerifier {
    pub fn from_jwks(jwks: &str) -> Result<Self, AuthError> {
        Ok(Self::from_key_set(KeySet::from_jwks(jwks)?))
    }

    pub fn from_key_set(keys: KeySet) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self {
            keys: Arc::new(RwLock::new(keys.into_decoding_keys())),
            validation: Arc::new(validation),
            unknown_key: Arc::default(),
            followed: Arc::default(),
            unknown_key_answers: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Swaps in a new key set (rotation): tokens signed by removed keys stop verifying.
    pub fn replace_key_set(&self, keys: KeySet) {
        *self.keys.write().expect("key lock poisoned") = keys.into_decoding_keys();
    }

    /// Resolves once a token signed by a key not in the set has been seen (since the last
    /// time this resolved).
    pub async fn unknown_key_seen(&self) {
        self.unknown_key.notified().await;
    }

    /// Marks the set as followed (`true`): from then on, tokens signed by unknown keys wait
    /// for the follower's answer (`verify_awaiting_new_keys`); or no longer followed.
    pub fn set_followed(&self, followed: bool) {
        self.followed.store(followed, Ordering::Release);
    }

    /// The follower's answer to the unknown keys seen so far: the set fetched (or the fetch
    /// failed), or it was fetched too recently to be fetched again yet.
    pub fn answer_unknown_keys(&self) {
        self.unknown_key_answers
            .send_modify(|answers| *answers += 1);
    }

    /// As [`JwtVerifier::verify`]; but while the set follows users', a token signed by a key
    /// not in it waits (up to 2 s) for the follower's next answer and is checked again then.
    /// That answer is the fetch the token asks for, so the first token signed by a key users
    /// has just published is accepted; or, when the set was fetched too recently to be
    /// fetched again (`service::JWKS_REFETCH_GAP`), word of that, given at once, and the
    /// token is refused. A fetch already under way when the token came answers it too, and
    /// may have missed a key published just before.
    pub async fn verify_awaiting_new_keys(&self, token: &str) -> Result<Caller, AuthError> {
        // Subscribed before the check that tells the follower: its answer cannot be missed.
        let answers = self
            .followed
            .load(Ordering::Acquire)
            .then(|| self.unknown_key_answers.subscribe());
        match (self.verify(token), answers) {
            (Err(AuthError::UnknownKey), Some(answers)) => {
                // Boxed: the common path keeps a small future.
                Box::pin(self.verify_after_answer(token, answers)).await
            }
            (checked, _) => checked,
        }
    }

    async fn verify_after_answer(
        &self,
        token: &str,
        mut answers: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Caller, AuthError> {
        let _ = tokio::time::timeout(NEW_KEY_WAIT, answers.changed()).await;
        // Not telling the follower again: that would ask for another fetch after this one.
        self.check(token, false)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        self.check(token, true)
    }

    /// The token's caller, if it verifies; a key not in the set is told to the follower if
    /// `tell_unknown_key`.
    fn check(&self, token: &str, tell_unknown_key: bool) -> Result<Caller, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Token(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Token("algorithm not allowed".into()));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Token("no kid".into()))?;
        let keys = self.keys.read().expect("key lock poisoned");
        let Some(key) = keys.get(&kid) else {
            if tell_unknown_key {
                self.unknown_key.notify_one();
            }
            return Err(AuthError::UnknownKey);
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Token(e.to_string()))?;
        Ok(Caller {
            id: data.claims.sub,
            roles: data.claims.roles,
            authorities: data.claims.authorities,
        })
    }
}

/// The bearer-token security scheme of every protected operation; yields the caller.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Caller);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let verifier = req
        .data::<JwtVerifier>()
        .ok_or_else(|| Problem::internal("no JwtVerifier in the app's data"))?;
    Ok(caller_of_token(&bearer.token, verifier).await?)
}

/// An authority an operation needs, as a type: `Authorized<needs::ProductWrite>`.
pub trait Authority: Send + Sync + 'static {
    const NAME: &'static str;
}

/// The authorities of [`authority`] as types, for [`Authorized`].
pub mod needs {
    macro_rules! authorities {
        ($($marker:ident => $name:ident),* $(,)?) => {$(
            pub struct $marker;
            impl super::Authority for $marker {
                const NAME: &'static str = super::authority::$name;
            }
        )*};
    }
    authorities!(
        Shop => SHOP,
        ProductWrite => PRODUCT_WRITE,
        InventoryWrite => INVENTORY_WRITE,
        OrderManage => ORDER_MANAGE,
        UserManage => USER_MANAGE,
        PaymentRefund => PAYMENT_REFUND,
    );
}

/// The caller of an operation that needs authority `A`, checked before the operation's path,
/// query, headers and body are parsed, as long as it is the operation's first argument after
/// `&self` (poem-openapi extracts arguments in the order they are declared): a caller without
/// it is told 403 whatever else it sent, not what its body or query got wrong on a route it
/// may not use. Documented as the one `BearerAuth` scheme.
pub struct Authorized<A>(pub Caller, PhantomData<A>);

impl<'a, A: Authority> ApiExtractor<'a> for Authorized<A> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        BearerAuth::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        BearerAuth::security_schemes()
    }

    async fn from_request(
        req: &'a Request,
        body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let BearerAuth(caller) = BearerAuth::from_request(req, body, param_opts).await?;
        caller.require(A::NAME)?;
        Ok(Self(caller, PhantomData))
    }
}

/// The shared secret that internal routes require in `X-Internal-Token`.
#[derive(Clone)]
pub struct InternalToken(Arc<str>);

impl InternalToken {
    pub fn new(secret: &str) -> Self {
        Self(Arc::from(secret))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so that timing reveals nothing of the secret.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        !self.0.is_empty() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

pub const INTERNAL_TOKEN_HEADER: &str = "X-Internal-Token";

/// Service-to-service calls: the internal credential from config.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-Internal-Token",
    key_in = "header",
    checker = "check_internal"
)]
pub struct InternalAuth(pub ());

async fn check_internal(req: &Request, key: poem_openapi::auth::ApiKey) -> poem::Result<()> {
    let token = req
        .data::<InternalToken>()
        .ok_or_else(|| Problem::internal("no InternalToken in the app's data"))?;
    if token.matches(&key.key) {
        Ok(())
    } else {
        // Internal routes do not exist for outsiders.
        Err(Problem::not_found("no such resource").into())
    }
}

/// The caller of a public route that shows more to those who authenticate: `None` without
/// an `Authorization` header, 401 with an invalid one.
pub async fn optional_caller(req: &Request) -> Result<Option<Caller>, Problem> {
    let Some(header) = req.headers().get(poem::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let verifier = req
        .data::<JwtVerifier>()
        .ok_or_else(|| Problem::internal("no JwtVerifier in the app's data"))?;
    caller_of(header, verifier).await.map(Some)
}

/// The caller an `Authorization` header names, checked by `verifier` (a token signed by a
/// key users has just published included: [`JwtVerifier::verify_awaiting_new_keys`]); 401
/// when it is not a valid bearer token.
pub async fn caller_of(
    header: &poem::http::HeaderValue,
    verifier: &JwtVerifier,
) -> Result<Caller, Problem> {
    let token = bearer_token(header).ok_or_else(|| {
        Problem::unauthorized("the Authorization header must be `Bearer <token>`")
    })?;
    caller_of_token(token, verifier).await
}

/// The token of a `Bearer <token>` Authorization header; none for any other.
pub fn bearer_token(header: &poem::http::HeaderValue) -> Option<&str> {
    header.to_str().ok()?.strip_prefix("Bearer ")
}

/// The caller `token` names, checked by `verifier` as every route checks it; 401 when it is
/// not valid.
async fn caller_of_token(token: &str, verifier: &JwtVerifier) -> Result<Caller, Problem> {
    verifier.verify_awaiting_new_keys(token).await.map_err(|e| {
        tracing::debug!(error = %e, "bearer token rejected");
        Problem::unauthorized("the access token is invalid or expired")
    })
}
