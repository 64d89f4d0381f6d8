//! The cart service binary.

use platform::boot::Environment;
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), cart::SERVICE).await?;
    let config = cart::CartConfig::from_settings(&settings)?;
    let (state, app) = cart::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        cart::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7041",
        env.discovery,
    )
    .await
}
