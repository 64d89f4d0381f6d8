//! The users database: every query of the service, named for what it means.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use platform::auth::Role;
use platform::retention::OwnRows;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub email_verified: bool,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    pub fn roles(&self) -> Vec<Role> {
        self.roles.iter().filter_map(|r| Role::parse(r)).collect()
    }
}

const USER_COLUMNS: &str =
    "id, email, name, phone, password_hash, roles, email_verified, active, created_at";

pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub name: &'a str,
    pub phone: Option<&'a str>,
    pub password_hash: &'a str,
}

/// Inserts the user; `false` when the email is taken.
pub async fn insert_user(tx: &mut PgConnection, user: &NewUser<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, phone, password_hash) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(user.id)
    .bind(user.email)
    .bind(user.name)
    .bind(user.phone)
    .bind(user.password_hash)
    .execute(tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn user_by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn user_by_email(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
    )))
    .bind(email)
    .fetch_optional(db)
    .await
}

/// Users ordered by id (UUIDv7, so by creation), after `after`, whose email contains `search`.
pub async fn list_users(
    db: impl PgExecutor<'_>,
    search: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE ($1::text IS NULL OR strpos(email, lower($1)) > 0)
           AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    )))
    .bind(search)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The active admins, locked until the transaction ends, so that a change which would leave
/// none is decided on a set that no other transaction changes meanwhile (two admins taking the
/// role from each other at once: the second sees the first's change).
pub async fn lock_active_admins(tx: &mut PgConnection) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM users WHERE active AND 'ADMIN' = ANY(roles) ORDER BY id FOR UPDATE",
    )
    .fetch_all(tx)
    .await
}

pub async fn set_roles(
    db: impl PgExecutor<'_>,
    id: Uuid,
    roles: &[Role],
) -> Result<bool, sqlx::Error> {
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let res = sqlx::query("UPDATE users SET roles = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(&roles)
        .execute(db)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn update_profile(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: Option<&str>,
    phone: Option<Option<&str>>,
    password_hash: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET name = COALESCE($2, name),
                          phone = CASE WHEN $3 THEN $4 ELSE phone END,
                          password_hash = COALESCE($5, password_hash),
                          updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(name)
    .bind(phone.is_some())
    .bind(phone.flatten())
    .bind(password_hash)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn deactivate(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET active = false, updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn reactivate(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET active = true, updated_at = now() WHERE id = $1 AND NOT active")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn mark_verified(
    db: impl PgExecutor<'_>,
    id: Uuid,
    grant_admin: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET email_verified = true,
                roles = CASE WHEN $2 AND NOT 'ADMIN' = ANY(roles) THEN roles || '{ADMIN}'::text[] ELSE roles END,
                updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(grant_admin)
    .execute(db)
    .await?;
    Ok(())
}

// ---- retention ------------------------------------------------------------------------

/// What users prunes beside the platform's tables: tokens expired `keep` ago (no longer
/// good for anything: an expired refresh token is refused without revoking its family),
/// failed-login counts whose window and lockout are over (the next failure starts a new
/// count either way), and devices with no login for `device_ttl` (no longer known).
pub fn expired_rows(
    keep: Duration,
    failure_window: Duration,
    device_ttl: Duration,
) -> Vec<OwnRows> {
    vec![
        OwnRows::aged("refresh_tokens", "token_hash", "expires_at", keep),
        OwnRows::aged("one_time_tokens", "token_hash", "expires_at", keep),
        OwnRows {
            table: "login_failures",
            // Checked again outside the subquery: a failure counted meanwhile keeps its row.
            delete: "DELETE FROM login_failures WHERE email IN (
                         SELECT email FROM login_failures
                         WHERE first_at < now() - make_interval(secs => $1)
                           AND (locked_until IS NULL OR locked_until < now()) LIMIT $2)
                     AND first_at < now() - make_interval(secs => $1)
                     AND (locked_until IS NULL OR locked_until < now())"
                .into(),
            older_than: failure_window,
        },
        OwnRows {
            table: "login_devices",
            // Checked again outside the subquery: a sign-in meanwhile keeps its device.
            delete: "DELETE FROM login_devices WHERE token_hash IN (
                         SELECT token_hash FROM login_devices
                         WHERE last_used_at < now() - make_interval(secs => $1) LIMIT $2)
                     AND last_used_at < now() - make_interval(secs => $1)"
                .into(),
            older_than: device_ttl,
        },
    ]
}

// ---- login failures -------------------------------------------------------------------

/// The key under which the failed logins of the known device `hash` are counted, beside
/// emails' (in `login_failures`): capitals, which no normalised email has.
pub fn device_failure_key(hash: &[u8]) -> String {
    format!("Device {}", URL_SAFE_NO_PAD.encode(hash))
}

/// Whether `hash` is the token of a device `email`'s account signed in on within `ttl`.
pub async fn known_device(
    db: impl PgExecutor<'_>,
    hash: &[u8],
    email: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM login_devices d JOIN users u ON u.id = d.user_id
                        WHERE d.token_hash = $1 AND u.email = $2
                          AND d.last_used_at > now() - make_interval(secs => $3))",
    )
    .bind(hash)
    .bind(email)
    .bind(ttl.as_secs_f64())
    .fetch_one(db)
    .await
}

/// Locks `user`'s row until the transaction ends; the account as it is now, if it is still
/// active with the password hash `hash`.
pub async fn lock_unchanged_account(
    tx: &mut PgConnection,
    user: Uuid,
    hash: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
    )))
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.filter(|u| u.active && u.password_hash == hash))
}

/// Notes that `user` signed in on the device `hash` (new, or known), and forgets the
/// account's devices beyond the `keep` most recently used. The account's row must be locked
/// ([`lock_unchanged_account`]).
pub async fn device_signed_in(
    tx: &mut PgConnection,
    hash: &[u8],
    user: Uuid,
    keep: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO login_devices (token_hash, user_id) VALUES ($1, $2)
         ON CONFLICT (token_hash) DO UPDATE SET last_used_at = now()
         WHERE login_devices.user_id = EXCLUDED.user_id",
    )
    .bind(hash)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM login_devices WHERE user_id = $1 AND token_hash NOT IN (
             SELECT token_hash FROM login_devices WHERE user_id = $1
             ORDER BY last_used_at DESC LIMIT $2)",
    )
    .bind(user)
    .bind(keep)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// When the email is locked out, until when.
pub async fn locked_until(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT locked_until FROM login_failures WHERE email = $1 AND locked_until > now()",
    )
    .bind(email)
    .fetch_optional(db)
    .await
    .map(Option::flatten)
}

/// Counts a failure within the window; locks the email out when it reaches `max`.
pub async fn record_failure(
    db: impl PgExecutor<'_>,
    email: &str,
    max: i32,
    window_secs: i64,
    lockout_secs: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO login_failures (email, failures, first_at) VALUES ($1, 1, now())
         ON CONFLICT (email) DO UPDATE SET
            failures = CASE WHEN login_failures.first_at < now() - make_interval(secs => $3)
                            THEN 1 ELSE login_failures.failures + 1 END,
            first_at = CASE WHEN login_failures.first_at < now() - make_interval(secs => $3)
                            THEN now() ELSE login_failures.first_at END,
            locked_until = CASE WHEN login_failures.first_at >= now() - make_interval(secs => $3)
                                 AND login_failures.failures + 1 >= $2
                            THEN now() + make_interval(secs => $4) ELSE login_failures.locked_until END",
    )
    .bind(email)
    .bind(max)
    .bind(window_secs as f64)
    .bind(lockout_secs as f64)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets the email's failed logins; returns whether it had any.
pub async fn clear_failures(db: impl PgExecutor<'_>, email: &str) -> Result<bool, sqlx::Error> {
    let cleared = sqlx::query("DELETE FROM login_failures WHERE email = $1")
        .bind(email)
        .execute(db)
        .await?;
    Ok(cleared.rows_affected() > 0)
}

// ---- one-time tokens ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    VerifyEmail,
    PasswordReset,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::PasswordReset => "password_reset",
        }
    }
}

pub async fn insert_one_time_token(
    db: impl PgExecutor<'_>,
    hash: &[u8],
    user: Uuid,
    purpose: Purpose,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(user)
    .bind(purpose.as_str())
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Spends the token: the user it belongs to, if it was unused, unexpired and for `purpose`.
pub async fn spend_one_time_token(
    db: impl PgExecutor<'_>,
    hash: &[u8],
    purpose: Purpose,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(hash)
    .bind(purpose.as_str())
    .fetch_optional(db)
    .await
}

// ---- refresh tokens -------------------------------------------------------------------

pub async fn insert_refresh_token(
    db: impl PgExecutor<'_>,
    hash: &[u8],
    user: Uuid,
    family: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(user)
    .bind(family)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct RefreshRow {
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The token's row, locked for the rotation that follows.
pub async fn refresh_token_for_update(
    tx: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<RefreshRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens
         WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(tx)
    .await
}

pub async fn mark_refresh_used(tx: &mut PgConnection, hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(hash)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn revoke_family(db: impl PgExecutor<'_>, family: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .execute(db)
    .await?;
    Ok(())
}

/// Ends every session of `user` (its refresh tokens), forgets the devices it signed in on,
/// and voids its unused password-reset links: after a password change, a reset or a
/// deactivation, a link mailed earlier must not set the password again, nor a device used
/// earlier escape the email's lockout.
pub async fn revoke_all_for_user(db: impl PgExecutor<'_>, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH sessions AS (
             UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL
         ), devices AS (
             DELETE FROM login_devices WHERE user_id = $1
         )
         UPDATE one_time_tokens SET used_at = now()
         WHERE user_id = $1 AND purpose = 'password_reset' AND used_at IS NULL",
    )
    .bind(user)
    .execute(db)
    .await?;
    Ok(())
}
