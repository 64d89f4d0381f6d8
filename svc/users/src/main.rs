//! The users service binary.

use platform::boot::{self, Environment};
use platform::config::Settings;

// jemalloc rather than glibc's malloc: each password hash takes 19 MiB in a blocking thread,
// and glibc keeps such memory in that thread's arena after the hash ends, so users' resident
// memory would grow with the blocking threads that ever hashed rather than stay near the four
// hashes at once it allows (passwords::MAX_HASHING; 128 MB in jobs/). As the shop and the
// gateway.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let mut settings = Settings::load(env.config.as_ref(), users::SERVICE).await?;
    if settings.raw("jwt_signing_key").is_none() && env.local {
        settings = settings.with("jwt_signing_key", boot::dev_signing_key()?);
    }
    if settings.raw("internal_token").is_none() && env.local {
        settings = settings.with("internal_token", boot::dev_internal_token()?);
    }
    let (state, app) = users::app(users::UsersConfig::from_settings(&settings)?).await?;
    platform::runtime::run_until_signal(
        users::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:0",
        env.discovery,
    )
    .await
}
