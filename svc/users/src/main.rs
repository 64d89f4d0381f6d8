//! The users service binary.

use platform::boot::{self, Environment};
use platform::config::Settings;

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
