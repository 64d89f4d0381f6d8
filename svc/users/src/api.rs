//! The users API, as SPEC.md describes it.

use chrono::{DateTime, Utc};
use contracts::Text;
use contracts::events::{PasswordResetRequested, UserRegistered};
use contracts::internal::UserContact;
use platform::auth::{Authorized, BearerAuth, Caller, InternalAuth, Role, authority, needs};
use platform::context;
use platform::outbox;
use platform::problem::{ApiResult, FieldError, Problem};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::store::{self, Purpose, UserRow};
use crate::validate;
use crate::{Users, passwords, tokens};
use platform::problem::Checks;

#[derive(Tags)]
enum Tag {
    /// Registration, login and tokens
    Auth,
    /// The caller's own account
    Account,
    /// Administration of accounts
    Admin,
    /// Service-to-service calls, never routed by the gateway
    Internal,
}

pub struct UsersApi {
    pub(crate) state: Users,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
struct RegisterRequest {
    email: Text,
    password: Text,
    name: Text,
    phone: Option<Text>,
}

/// The devices of one account that are known at once; signing in on another forgets the one
/// unused the longest.
const KNOWN_DEVICES_PER_ACCOUNT: i64 = 10;

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct LoginRequest {
    email: Text,
    password: Text,
    /// The `device_token` an earlier login on this device was given for this account. Failed
    /// logins lock an email out for a while; a login with its device's token is judged by that
    /// device's own failures instead, so failures elsewhere cannot lock its owner out.
    device_token: Option<Text>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: Text,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct PasswordResetRequest {
    email: Text,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct PasswordResetConfirm {
    token: Text,
    new_password: Text,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
struct UpdateMeRequest {
    name: Option<Text>,
    /// A new phone number, or null to remove it.
    phone: MaybeUndefined<Text>,
    /// A new password; needs `current_password`.
    password: Option<Text>,
    current_password: Option<Text>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct RolesRequest {
    /// Any of CUSTOMER, MANAGER, ADMIN.
    roles: Vec<Text>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct User {
    id: Uuid,
    email: String,
    name: String,
    phone: Option<String>,
    roles: Vec<String>,
    email_verified: bool,
    active: bool,
    created_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            phone: u.phone,
            roles: u.roles,
            email_verified: u.email_verified,
            active: u.active,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Object)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Given at login: keep it on this device for this account, and send it as
    /// `device_token` at its next login. Known until no login is made with it for
    /// `login_device_ttl_seconds` (90 days by default; a refresh does not count), or until
    /// the password changes or the account is closed. Absent when a token is refreshed.
    #[oai(skip_serializing_if_is_none)]
    device_token: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct UserPage {
    items: Vec<User>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Object)]
struct Accepted {
    message: String,
}

#[derive(ApiResponse)]
enum CreatedUser {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<User>),
}

#[derive(ApiResponse)]
enum AcceptedResponse {
    /// Accepted; see the message.
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
}

#[derive(ApiResponse)]
enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

impl UsersApi {
    fn db(&self) -> &sqlx::PgPool {
        &self.state.pool
    }

    /// The caller's account, which must still exist and be active.
    async fn caller_account(&self, caller: &Caller) -> ApiResult<UserRow> {
        match store::user_by_id(self.db(), caller.id).await? {
            Some(u) if u.active => Ok(u),
            _ => Err(Problem::unauthorized(
                "this account no longer exists or was deactivated",
            )),
        }
    }

    async fn issue_pair(
        &self,
        tx: &mut sqlx::PgConnection,
        user: &UserRow,
        family: Uuid,
    ) -> ApiResult<TokenPair> {
        let access = self
            .state
            .issuer
            .issue(user.id, &user.roles())
            .map_err(Problem::internal)?;
        let refresh = tokens::generate();
        let expires = Utc::now() + self.state.config.refresh_token_ttl;
        store::insert_refresh_token(
            &mut *tx,
            &tokens::digest(&refresh),
            user.id,
            family,
            expires,
        )
        .await?;
        Ok(TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer".into(),
            expires_in: self.state.config.access_token_ttl.as_secs(),
            device_token: None,
        })
    }

    /// Mails `user` a password-reset link (through the outbox, with `tx`).
    async fn send_reset_link(&self, tx: &mut sqlx::PgConnection, user: &UserRow) -> ApiResult<()> {
        let token = self
            .new_one_time_token(
                &mut *tx,
                user.id,
                Purpose::PasswordReset,
                self.state.config.password_reset_ttl,
            )
            .await?;
        let event = PasswordResetRequested {
            user_id: user.id,
            email: user.email.clone(),
            reset_url: format!(
                "{}/reset-password?token={token}",
                self.state.config.public_base_url.trim_end_matches('/')
            ),
        };
        outbox::enqueue(&mut *tx, &event, crate::SERVICE, context::request_id()).await?;
        Ok(())
    }

    async fn new_one_time_token(
        &self,
        tx: &mut sqlx::PgConnection,
        user: Uuid,
        purpose: Purpose,
        ttl: std::time::Duration,
    ) -> ApiResult<String> {
        let token = tokens::generate();
        store::insert_one_time_token(
            &mut *tx,
            &tokens::digest(&token),
            user,
            purpose,
            Utc::now() + ttl,
        )
        .await?;
        Ok(token)
    }
}

/// 409 when `leaving` is the last active admin: no account could then manage users or refund
/// payments, nor be made admin again but in the database.
async fn keep_an_admin(tx: &mut sqlx::PgConnection, leaving: Uuid, doing: &str) -> ApiResult<()> {
    if store::lock_active_admins(tx).await? == [leaving] {
        return Err(Problem::conflict(format!(
            "this is the only active admin account: make another account admin before {doing}"
        )));
    }
    Ok(())
}

fn parse_roles(raw: &[Text]) -> ApiResult<Vec<Role>> {
    if raw.is_empty() {
        return Err(Problem::invalid(vec![FieldError::new(
            "roles",
            "must name at least one role",
        )]));
    }
    let mut roles = Vec::new();
    for r in raw {
        match Role::parse(r) {
            Some(role) if !roles.contains(&role) => roles.push(role),
            Some(_) => {}
            None => {
                return Err(Problem::invalid(vec![FieldError::new(
                    "roles",
                    format!("unknown role {r:?}; roles are CUSTOMER, MANAGER, ADMIN"),
                )]));
            }
        }
    }
    Ok(roles)
}

#[OpenApi]
impl UsersApi {
    /// Create an account. The email gets a verification link.
    #[oai(
        path = "/api/v1/users/register",
        method = "post",
        operation_id = "register",
        tag = "Tag::Auth"
    )]
    async fn register(&self, body: Json<RegisterRequest>) -> ApiResult<CreatedUser> {
        let req = body.0;
        let email = validate::normalise_email(&req.email);
        Checks::default()
            .check("email", validate::email(&email))
            .check("password", passwords::check_length(&req.password))
            .check("name", validate::name(&req.name))
            .check("phone", req.phone.as_deref().and_then(validate::phone))
            .finish()?;
        let hash = passwords::hash(req.password.into_string())
            .await
            .map_err(Problem::internal)?;
        let id = Uuid::now_v7();
        let name = req.name.trim().to_owned();
        let mut tx = self.db().begin().await?;
        let inserted = store::insert_user(
            &mut tx,
            &store::NewUser {
                id,
                email: &email,
                name: &name,
                phone: req.phone.as_deref(),
                password_hash: &hash,
            },
        )
        .await?;
        if !inserted {
            return Err(Problem::conflict(
                "an account with this email already exists",
            ));
        }
        let token = self
            .new_one_time_token(
                &mut tx,
                id,
                Purpose::VerifyEmail,
                self.state.config.verification_ttl,
            )
            .await?;
        let event = UserRegistered {
            user_id: id,
            email: email.clone(),
            name: name.clone(),
            phone: req.phone.clone().map(String::from),
            verification_url: Some(format!(
                "{}/api/v1/users/verify?token={token}",
                self.state.config.public_base_url.trim_end_matches('/')
            )),
        };
        outbox::enqueue(&mut tx, &event, crate::SERVICE, context::request_id()).await?;
        let user = store::user_by_id(&mut *tx, id)
            .await?
            .ok_or_else(|| Problem::internal("user vanished"))?;
        tx.commit().await?;
        self.state.relay.wake();
        Ok(CreatedUser::Created(Json(user.into())))
    }

    /// Confirm an email address with the token from the verification email. The configured
    /// admin email is made ADMIN here; its password is then set through the reset link this
    /// mails to it (whoever registered the email chose the first one).
    #[oai(
        path = "/api/v1/users/verify",
        method = "get",
        operation_id = "verify_email",
        tag = "Tag::Auth"
    )]
    async fn verify(&self, token: Query<String>) -> ApiResult<Json<User>> {
        let mut tx = self.db().begin().await?;
        let Some(user_id) =
            store::spend_one_time_token(&mut *tx, &tokens::digest(&token.0), Purpose::VerifyEmail)
                .await?
        else {
            return Err(Problem::gone(
                "this verification link is invalid, used or expired; ask for a new one by registering again or contact support",
            ));
        };
        let user = store::user_by_id(&mut *tx, user_id)
            .await?
            .ok_or_else(|| Problem::internal("token of a missing user"))?;
        let grant_admin = self.state.config.admin_email.as_deref() == Some(user.email.as_str())
            && !user.roles().contains(&Role::Admin);
        store::mark_verified(&mut *tx, user_id, grant_admin).await?;
        if grant_admin {
            // Whoever registered the email chose the password, and anyone may register any
            // email: the link proves only that the mailbox's owner (or a mail scanner) opened
            // it. The account's password is replaced by one nobody knows, its sessions end,
            // and the mailbox gets a reset link: only its owner can sign in as the admin.
            let unknown = passwords::hash(tokens::generate())
                .await
                .map_err(Problem::internal)?;
            store::update_profile(&mut *tx, user_id, None, None, Some(&unknown)).await?;
            store::revoke_all_for_user(&mut *tx, user_id).await?;
            self.send_reset_link(&mut tx, &user).await?;
        }
        let user = store::user_by_id(&mut *tx, user_id)
            .await?
            .ok_or_else(|| Problem::internal("user vanished"))?;
        tx.commit().await?;
        Ok(Json(user.into()))
    }

    /// Exchange email and password for an access and a refresh token, and a device token for
    /// this device's next login.
    #[oai(
        path = "/api/v1/users/login",
        method = "post",
        operation_id = "login",
        tag = "Tag::Auth"
    )]
    async fn login(&self, body: Json<LoginRequest>) -> ApiResult<Json<TokenPair>> {
        let cfg = &self.state.config;
        let LoginRequest {
            email,
            password,
            device_token,
        } = body.0;
        let email = validate::normalise_email(&email);
        // A token of a device this account signed in on: the login is judged by that device's
        // failures. Any other token (unknown, forgotten, another account's) is no device.
        let mut device = None;
        if let Some(token) = device_token {
            let hash = tokens::digest(&token);
            if store::known_device(self.db(), &hash, &email, cfg.login_device_ttl).await? {
                device = Some((token.into_string(), hash));
            }
        }
        let mut counted_as = match &device {
            Some((_, hash)) => store::device_failure_key(hash),
            None => email.clone(),
        };
        let mut locked = store::locked_until(self.db(), &counted_as).await?;
        if locked.is_some() && device.is_some() {
            // A device locked out by its own failures is judged as any other client is: by
            // the email's.
            device = None;
            counted_as = email.clone();
            locked = store::locked_until(self.db(), &email).await?;
        }
        if let Some(until) = locked {
            let wait = (until - Utc::now()).to_std().unwrap_or_default();
            return Err(Problem::too_many_requests(
                "too many failed logins for this email; try again later or reset the password",
                Problem::seconds_to_wait(wait),
            ));
        }
        let user = store::user_by_email(self.db(), &email).await?;
        let ok = passwords::verify(
            password.into_string(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await
        .map_err(Problem::internal)?;
        let user = match user {
            Some(u) if ok && u.active => u,
            _ => {
                store::record_failure(
                    self.db(),
                    &counted_as,
                    cfg.login_max_failures,
                    cfg.login_failure_window.as_secs() as i64,
                    cfg.login_lockout.as_secs() as i64,
                )
                .await?;
                return Err(Problem::unauthorized("the email or password is wrong"));
            }
        };
        let (device_token, device_hash) = device.unwrap_or_else(|| {
            let token = tokens::generate();
            let hash = tokens::digest(&token);
            (token, hash)
        });
        let mut tx = self.db().begin().await?;
        // The account is locked until this sign-in commits. A password changed or reset, or
        // the account closed, since the password was checked ended its sessions and devices:
        // this sign-in must not outlive them. Two sign-ins of one account also keep its
        // devices one at a time, and the tokens carry the roles the account has now.
        let Some(user) =
            store::lock_unchanged_account(&mut tx, user.id, &user.password_hash).await?
        else {
            return Err(Problem::unauthorized("the email or password is wrong"));
        };
        // A known device's success leaves the email's count from elsewhere as it is.
        store::clear_failures(&mut *tx, &counted_as).await?;
        store::device_signed_in(&mut tx, &device_hash, user.id, KNOWN_DEVICES_PER_ACCOUNT).await?;
        let mut pair = self.issue_pair(&mut tx, &user, Uuid::now_v7()).await?;
        pair.device_token = Some(device_token);
        tx.commit().await?;
        Ok(Json(pair))
    }

    /// Exchange a refresh token for a new pair. Each refresh token works once; presenting a
    /// spent one revokes every token of its family.
    #[oai(
        path = "/api/v1/users/token/refresh",
        method = "post",
        operation_id = "refresh_token",
        tag = "Tag::Auth"
    )]
    async fn refresh(&self, body: Json<RefreshRequest>) -> ApiResult<Json<TokenPair>> {
        let hash = tokens::digest(&body.0.refresh_token);
        let mut tx = self.db().begin().await?;
        let invalid = || Problem::unauthorized("the refresh token is invalid, expired or revoked");
        let Some(row) = store::refresh_token_for_update(&mut tx, &hash).await? else {
            return Err(invalid());
        };
        if row.revoked_at.is_some() || row.expires_at <= Utc::now() {
            return Err(invalid());
        }
        if row.used_at.is_some() {
            // A spent token came back: someone holds a copy. End the whole session.
            store::revoke_family(&mut *tx, row.family_id).await?;
            tx.commit().await?;
            tracing::warn!(user = %row.user_id, family = %row.family_id, "refresh token reuse; family revoked");
            return Err(invalid());
        }
        let user = match store::user_by_id(&mut *tx, row.user_id).await? {
            Some(u) if u.active => u,
            _ => return Err(invalid()),
        };
        store::mark_refresh_used(&mut tx, &hash).await?;
        let pair = self.issue_pair(&mut tx, &user, row.family_id).await?;
        tx.commit().await?;
        Ok(Json(pair))
    }

    /// End a session: revokes the refresh token's family.
    #[oai(
        path = "/api/v1/users/logout",
        method = "post",
        operation_id = "logout",
        tag = "Tag::Auth"
    )]
    async fn logout(&self, auth: BearerAuth, body: Json<RefreshRequest>) -> ApiResult<NoContent> {
        let mut tx = self.db().begin().await?;
        if let Some(row) =
            store::refresh_token_for_update(&mut tx, &tokens::digest(&body.0.refresh_token)).await?
            && row.user_id == auth.0.id
        {
            store::revoke_family(&mut *tx, row.family_id).await?;
        }
        tx.commit().await?;
        Ok(NoContent::Done)
    }

    /// Ask for a password-reset link. Always 202, whether or not the account exists.
    #[oai(
        path = "/api/v1/users/password-reset",
        method = "post",
        operation_id = "request_password_reset",
        tag = "Tag::Auth"
    )]
    async fn password_reset(
        &self,
        body: Json<PasswordResetRequest>,
    ) -> ApiResult<AcceptedResponse> {
        let email = validate::normalise_email(&body.0.email);
        let mut tx = self.db().begin().await?;
        if let Some(user) = store::user_by_email(&mut *tx, &email).await?
            && user.active
        {
            self.send_reset_link(&mut tx, &user).await?;
        }
        tx.commit().await?;
        self.state.relay.wake();
        Ok(AcceptedResponse::Accepted(Json(Accepted {
            message: "if an account uses this email, a reset link is on its way".into(),
        })))
    }

    /// Set a new password with the token from the reset email; ends every session.
    #[oai(
        path = "/api/v1/users/password-reset/confirm",
        method = "post",
        operation_id = "confirm_password_reset",
        tag = "Tag::Auth"
    )]
    async fn password_reset_confirm(
        &self,
        body: Json<PasswordResetConfirm>,
    ) -> ApiResult<NoContent> {
        let req = body.0;
        Checks::default()
            .check("new_password", passwords::check_length(&req.new_password))
            .finish()?;
        let hash = passwords::hash(req.new_password.into_string())
            .await
            .map_err(Problem::internal)?;
        let mut tx = self.db().begin().await?;
        let Some(user_id) = store::spend_one_time_token(
            &mut *tx,
            &tokens::digest(&req.token),
            Purpose::PasswordReset,
        )
        .await?
        else {
            return Err(Problem::gone(
                "this reset link is invalid, used or expired; ask for a new one",
            ));
        };
        store::update_profile(&mut *tx, user_id, None, None, Some(&hash)).await?;
        store::revoke_all_for_user(&mut *tx, user_id).await?;
        if let Some(user) = store::user_by_id(&mut *tx, user_id).await? {
            store::clear_failures(&mut *tx, &user.email).await?;
        }
        tx.commit().await?;
        Ok(NoContent::Done)
    }

    /// The caller's account.
    #[oai(
        path = "/api/v1/users/me",
        method = "get",
        operation_id = "get_me",
        tag = "Tag::Account"
    )]
    async fn me(&self, auth: BearerAuth) -> ApiResult<Json<User>> {
        Ok(Json(self.caller_account(&auth.0).await?.into()))
    }

    /// Change the caller's name, phone or password (a new password needs the current one).
    #[oai(
        path = "/api/v1/users/me",
        method = "patch",
        operation_id = "update_me",
        tag = "Tag::Account"
    )]
    async fn update_me(
        &self,
        auth: BearerAuth,
        body: Json<UpdateMeRequest>,
    ) -> ApiResult<Json<User>> {
        let account = self.caller_account(&auth.0).await?;
        let req = body.0;
        let mut checks = Checks::default();
        checks
            .check("name", req.name.as_deref().and_then(validate::name))
            .check(
                "phone",
                req.phone
                    .as_opt_ref()
                    .flatten()
                    .and_then(|p| validate::phone(p)),
            )
            .check(
                "password",
                req.password.as_deref().and_then(passwords::check_length),
            );
        if req.password.is_some() && req.current_password.is_none() {
            checks.check(
                "current_password",
                Some("is required to change the password".into()),
            );
        }
        checks.finish()?;
        let new_hash = match (req.password, req.current_password) {
            (Some(new), Some(current)) => {
                let ok =
                    passwords::verify(current.into_string(), Some(account.password_hash.clone()))
                        .await
                        .map_err(Problem::internal)?;
                if !ok {
                    return Err(Problem::invalid(vec![FieldError::new(
                        "current_password",
                        "is wrong",
                    )]));
                }
                Some(
                    passwords::hash(new.into_string())
                        .await
                        .map_err(Problem::internal)?,
                )
            }
            _ => None,
        };
        let phone = match &req.phone {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(p) => Some(Some(p.as_str())),
        };
        let name = req.name.as_deref().map(str::trim);
        let mut tx = self.db().begin().await?;
        store::update_profile(&mut *tx, account.id, name, phone, new_hash.as_deref()).await?;
        if new_hash.is_some() {
            store::revoke_all_for_user(&mut *tx, account.id).await?;
        }
        let user = store::user_by_id(&mut *tx, account.id)
            .await?
            .ok_or_else(|| Problem::internal("user vanished"))?;
        tx.commit().await?;
        Ok(Json(user.into()))
    }

    /// Deactivate the caller's account: login is refused from now on; orders keep their data.
    /// The last active admin cannot (409).
    #[oai(
        path = "/api/v1/users/me",
        method = "delete",
        operation_id = "deactivate_me",
        tag = "Tag::Account"
    )]
    async fn deactivate_me(&self, auth: BearerAuth) -> ApiResult<NoContent> {
        let account = self.caller_account(&auth.0).await?;
        let mut tx = self.db().begin().await?;
        keep_an_admin(&mut tx, account.id, "deactivating this one").await?;
        store::deactivate(&mut *tx, account.id).await?;
        store::revoke_all_for_user(&mut *tx, account.id).await?;
        tx.commit().await?;
        Ok(NoContent::Done)
    }

    /// List accounts (admin), optionally those whose email contains `email`.
    #[oai(
        path = "/api/v1/users",
        method = "get",
        operation_id = "list_users",
        tag = "Tag::Admin"
    )]
    async fn list(
        &self,
        _auth: Authorized<needs::UserManage>,
        email: Query<Option<String>>,
        limit: Query<Option<platform::web::PageLimit>>,
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<UserPage>> {
        let limit = platform::web::page_limit(limit.0)?;
        let search = email.0.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let mut rows = store::list_users(self.db(), search, cursor.0, i64::from(limit) + 1).await?;
        let next_cursor = platform::web::next_page(&mut rows, limit, |u| u.id.to_string());
        Ok(Json(UserPage {
            items: rows.into_iter().map(User::from).collect(),
            next_cursor,
        }))
    }

    /// One account: an admin may read any; anyone else only their own (others are 404).
    #[oai(
        path = "/api/v1/users/:id",
        method = "get",
        operation_id = "get_user",
        tag = "Tag::Admin"
    )]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<User>> {
        if auth.0.id != id.0 && !auth.0.has(authority::USER_MANAGE) {
            return Err(Problem::not_found("no such user"));
        }
        match store::user_by_id(self.db(), id.0).await? {
            Some(u) => Ok(Json(u.into())),
            None => Err(Problem::not_found("no such user")),
        }
    }

    /// Where to reach a user (for notification). 404 for an unknown or deactivated account.
    #[oai(
        path = "/internal/users/:id/contact",
        method = "get",
        operation_id = "internal_get_user_contact",
        tag = "Tag::Internal"
    )]
    async fn internal_contact(
        &self,
        _auth: InternalAuth,
        id: Path<Uuid>,
    ) -> ApiResult<Json<UserContact>> {
        match store::user_by_id(self.db(), id.0).await? {
            Some(u) if u.active => Ok(Json(UserContact {
                user_id: u.id,
                email: u.email,
                name: u.name,
                phone: u.phone,
            })),
            _ => Err(Problem::not_found("no such user")),
        }
    }

    /// Replace an account's roles (admin). Takes effect with the next token. The last active
    /// admin keeps the role (409).
    #[oai(
        path = "/api/v1/users/:id/roles",
        method = "put",
        operation_id = "set_user_roles",
        tag = "Tag::Admin"
    )]
    async fn set_roles(
        &self,
        _auth: Authorized<needs::UserManage>,
        id: Path<Uuid>,
        body: Json<RolesRequest>,
    ) -> ApiResult<Json<User>> {
        let roles = parse_roles(&body.0.roles)?;
        let mut tx = self.db().begin().await?;
        if !roles.contains(&Role::Admin) {
            keep_an_admin(&mut tx, id.0, "taking the role from this one").await?;
        }
        if !store::set_roles(&mut *tx, id.0, &roles).await? {
            return Err(Problem::not_found("no such user"));
        }
        let user = store::user_by_id(&mut *tx, id.0)
            .await?
            .ok_or_else(|| Problem::not_found("no such user"))?;
        tx.commit().await?;
        Ok(Json(user.into()))
    }

    /// The public keys that verify access tokens (RFC 7517).
    #[oai(
        path = "/.well-known/jwks.json",
        method = "get",
        operation_id = "jwks",
        tag = "Tag::Auth"
    )]
    async fn jwks(&self) -> Json<serde_json::Value> {
        let jwks: serde_json::Value = serde_json::from_str(&crate::jwks_json(
            self.state.issuer.key(),
            self.state.config.previous_public_keys.as_deref(),
        ))
        .unwrap_or_default();
        Json(jwks)
    }
}
