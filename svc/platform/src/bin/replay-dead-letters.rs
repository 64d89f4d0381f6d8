//! `replay-dead-letters STREAM`: puts the dead letters of a stream (`payment.events`, say)
//! back on it, for its consumer groups to handle again. Reads `redis_url` and `redis_prefix`
//! from the same config as the services (Consul when CONSUL_HTTP_ADDR is set, else the seed).

use contracts::events::streams::{ORDERS, PAYMENT, USERS};
use platform::boot::Environment;
use platform::config::Settings;
use platform::redis::Redis;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let streams = [USERS, ORDERS, PAYMENT];
    let Some(stream) = std::env::args()
        .nth(1)
        .filter(|s| streams.contains(&s.as_str()))
    else {
        return Err(format!(
            "usage: replay-dead-letters STREAM (one of: {})",
            streams.join(", ")
        )
        .into());
    };
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), "streams").await?;
    let redis = Redis::connect(
        &settings.require::<String>("redis_url")?,
        &settings.get_or("redis_prefix", String::new())?,
    )?;
    let done = platform::dead_letters::replay(&redis, &stream).await?;
    println!(
        "{stream}: {} events put back on the stream, {} further copies of them removed, {} dead letters without an event left in {stream}.dead",
        done.events, done.copies, done.left
    );
    Ok(())
}
