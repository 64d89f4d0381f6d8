//! The orders service binary.

use platform::boot::Environment;
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), orders::SERVICE).await?;
    let config = orders::OrdersConfig::from_settings(&settings)?;
    let (state, app) = orders::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        orders::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7063",
        env.discovery,
    )
    .await
}
