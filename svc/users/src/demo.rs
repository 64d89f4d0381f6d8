//! Demo accounts for local runs (`scripts/up`): created verified, with the given roles, when
//! missing. Never called by a deployment.

use platform::auth::Role;
use uuid::Uuid;

use crate::{Users, passwords, store};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Password(#[from] passwords::PasswordError),
}

/// Creates the account if no account has this email; returns whether it did.
pub async fn ensure_account(
    users: &Users,
    email: &str,
    password: &str,
    name: &str,
    roles: &[Role],
) -> Result<bool, DemoError> {
    if store::user_by_email(&users.pool, email).await?.is_some() {
        return Ok(false);
    }
    let hash = passwords::hash(password.to_owned()).await?;
    let id = Uuid::now_v7();
    let mut tx = users.pool.begin().await?;
    let created = store::insert_user(
        &mut tx,
        &store::NewUser {
            id,
            email,
            name,
            phone: None,
            password_hash: &hash,
        },
    )
    .await?;
    if created {
        store::mark_verified(&mut *tx, id, false).await?;
        store::set_roles(&mut *tx, id, roles).await?;
        // Tells notification who this is, as a registration would; verified already, it has
        // nothing to confirm.
        let event = contracts::events::UserRegistered {
            user_id: id,
            email: email.to_owned(),
            name: name.to_owned(),
            phone: None,
            verification_url: None,
        };
        platform::outbox::enqueue(&mut tx, &event, crate::SERVICE, None).await?;
    }
    tx.commit().await?;
    Ok(created)
}
