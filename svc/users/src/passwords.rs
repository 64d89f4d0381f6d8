//! Passwords: argon2id with OWASP's recommended parameters (argon2's defaults), hashed off
//! the async runtime because each hash takes tens of milliseconds of CPU.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the hashing task died: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn hash(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
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
    tokio::task::spawn_blocking(move || {
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
