//! The inventory service binary.

use platform::boot::Environment;
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), inventory::SERVICE).await?;
    let config = inventory::InventoryConfig::from_settings(&settings)?;
    let (state, app) = inventory::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        inventory::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7061",
        env.discovery,
    )
    .await
}
