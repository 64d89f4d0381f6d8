//! Demo accounts for local runs (`scripts/up`): created verified, with the given roles, when
//! missing, and put back as printed at every start. Never called by a deployment.

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

/// Makes `email` sign in with `password` and `roles`, as scripts/up prints: creates the
/// account if no account has this email; otherwise puts back what trying the shop out may
/// have changed (the account closed, locked out after failed logins, its password changed,
/// its roles set otherwise). Returns whether it created the account.
pub async fn ensure_account(
    users: &Users,
    email: &str,
    password: &str,
    name: &str,
    roles: &[Role],
) -> Result<bool, DemoError> {
    if let Some(existing) = store::user_by_email(&users.pool, email).await? {
        restore(users, &existing, password, roles).await?;
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

async fn restore(
    users: &Users,
    account: &store::UserRow,
    password: &str,
    roles: &[Role],
) -> Result<(), DemoError> {
    let same_password =
        passwords::verify(password.to_owned(), Some(account.password_hash.clone())).await?;
    let hash = if same_password {
        None
    } else {
        Some(passwords::hash(password.to_owned()).await?)
    };
    let same_roles = account.roles() == roles;
    let mut tx = users.pool.begin().await?;
    store::update_profile(&mut *tx, account.id, None, None, hash.as_deref()).await?;
    store::reactivate(&mut *tx, account.id).await?;
    store::set_roles(&mut *tx, account.id, roles).await?;
    let had_failures = store::clear_failures(&mut *tx, &account.email).await?;
    if hash.is_some() || !account.active {
        // As a password change or a closing does through the API: whoever signed in with
        // what is undone here keeps no session.
        store::revoke_all_for_user(&mut *tx, account.id).await?;
    }
    tx.commit().await?;
    if hash.is_some() || !account.active || !same_roles || had_failures {
        tracing::warn!(
            email = %account.email,
            password_restored = hash.is_some(),
            reopened = !account.active,
            roles_restored = !same_roles,
            failed_logins_forgotten = had_failures,
            "demo account put back as printed; its sessions were ended if its password or its closing was undone"
        );
    }
    Ok(())
}
