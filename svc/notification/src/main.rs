//! The notification service binary.

use platform::boot::Environment;
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), notification::SERVICE).await?;
    let config = notification::NotificationConfig::from_settings(&settings)?;
    let (state, app) = notification::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        notification::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7050",
        env.discovery,
    )
    .await
}
