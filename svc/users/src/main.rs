//! The users service binary: config, serve, register, run until SIGTERM.

use platform::boot::{self, Environment};
use platform::config::Settings;
use platform::{CancellationToken, runtime};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::telemetry::init();
    let env = Environment::from_env()?;
    let mut settings = Settings::load(env.config.as_ref(), users::SERVICE).await?;
    if settings.raw("jwt_signing_key").is_none() && env.local {
        settings = settings.with("jwt_signing_key", boot::dev_signing_key()?);
    }
    let config = users::UsersConfig::from_settings(&settings)?;
    let bind: String = settings.get_or("http_bind", "0.0.0.0:0".to_owned())?;
    let advertise: String = settings.get_or("advertise_address", "127.0.0.1".to_owned())?;
    let (state, app) = users::app(config).await?;
    let shutdown = CancellationToken::new();
    let tasks = state.background().spawn(&shutdown);
    let serving = runtime::serve(
        users::SERVICE,
        app,
        &bind,
        &advertise,
        env.discovery,
        shutdown.clone(),
    )
    .await?;
    tracing::info!(url = %serving.url(), "users listening");
    runtime::termination_signal().await;
    shutdown.cancel();
    serving.task.await??;
    for task in tasks {
        task.await.ok();
    }
    Ok(())
}
