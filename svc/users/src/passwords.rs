//! Passwords: argon2id with OWASP's recommended parameters (argon2's defaults), hashed off
//! the async runtime because each hash takes tens of milliseconds of CPU.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

/// The most hashes (and verifications) under way at once; the others wait their turn. Each
/// takes 19 MiB: a burst of logins (a hundred from one address is within the gateway's rate)
/// would otherwise take 1.9 GB, where the deployment gives users 128 MB (jobs/). Four use
/// 76 MiB, and keep as many cores busy as a small instance has.
const MAX_HASHING: usize = 4;

static HASHING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(MAX_HASHING));

async fn hashing_turn() -> tokio::sync::SemaphorePermit<'static> {
    HASHING
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the hashing task died: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn hash(password: String) -> Result<String, PasswordError> {
    let turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await?
}

/// True when `password` matches `stored`. A `None` hash still does the work of a
/// verification, so that an unknown email takes as long as a wrong password.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, PasswordError> {
    let turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let parsed = PasswordHash::new(&stored).map_err(|e| PasswordError::Hash(e.to_string()))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        // Here, off the runtime's worker threads: a test may hold a check that has just
        // passed, as if its thread were slow, without holding any other request up.
        fail::fail_point!("users::after_password_check");
        Ok(matches)
    })
    .await?
}

/// The argon2id hash of a random string nobody knows, with the default parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Vb3i0Ykm3Y1dGmUVaBNQ1TfaIBo0lNQ4xLNw1OKvZVo";

/// Length in characters, as people count them.
pub fn check_length(password: &str) -> Option<String> {
    let n = password.chars().count();
    (!(MIN_LEN..=MAX_LEN).contains(&n))
        .then(|| format!("must be {MIN_LEN} to {MAX_LEN} characters long"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_hash_waits_while_every_turn_is_taken() {
        let all = HASHING
            .acquire_many(MAX_HASHING as u32)
            .await
            .expect("the semaphore is never closed");
        let waiting = tokio::spawn(hash("correct horse battery".to_owned()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "no hash runs while every turn is taken"
        );
        drop(all);
        let hashed = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the hash runs once a turn is free")
            .unwrap()
            .unwrap();
        assert!(
            verify("correct horse battery".to_owned(), Some(hashed))
                .await
                .unwrap()
        );
    }
}
