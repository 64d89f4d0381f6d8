//! The payment service binary.

use platform::boot::Environment;
use platform::config::Settings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), payment::SERVICE).await?;
    let config = payment::PaymentConfig::from_settings(&settings)?;
    let (state, app) = payment::app(config, env.discovery.clone()).await?;
    platform::runtime::run_until_signal(
        payment::SERVICE,
        app,
        state.background(),
        &settings,
        "0.0.0.0:7007",
        env.discovery,
    )
    .await
}
