//! The products service binary: config, serve, register, run until SIGTERM.

use platform::boot::{self, Environment};
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let mut settings = Settings::load(env.config.as_ref(), products::SERVICE).await?;
    if settings.raw("internal_token").is_none() && env.local {
        settings = settings.with("internal_token", boot::dev_internal_token()?);
    }
    let config = products::ProductsConfig::from_settings(&settings)?;
    let (state, app) = products::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        products::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7016",
        env.discovery,
    )
    .await
}
