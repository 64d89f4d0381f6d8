//! `replay-dead-letters STREAM [--too-old-too]`: puts the dead letters of a stream
//! (`payment.events`, say) back on it, for its consumer groups to handle again, except events
//! older than the groups' records of what they applied (`applied_events_keep_seconds`, the
//! shortest of the groups' services'), unless asked. Reads `redis_url`, `redis_prefix` and
//! those limits from the same config as the services (Consul when CONSUL_HTTP_ADDR is set,
//! else the seed).

use chrono::{TimeDelta, Utc};
use contracts::events::streams::{ORDERS, PAYMENT, USERS};
use platform::boot::Environment;
use platform::config::Settings;
use platform::redis::Redis;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let streams = [USERS, ORDERS, PAYMENT];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stream, too_old_too) = match args.as_slice() {
        [stream] if streams.contains(&stream.as_str()) => (stream, false),
        [stream, flag] if streams.contains(&stream.as_str()) && flag == "--too-old-too" => {
            (stream, true)
        }
        _ => {
            return Err(format!(
                "usage: replay-dead-letters STREAM [--too-old-too] (STREAM one of: {})",
                streams.join(", ")
            )
            .into());
        }
    };
    let env = Environment::from_env()?;
    let settings = Settings::load(env.config.as_ref(), "streams").await?;
    let redis = Redis::connect(
        &settings.require::<String>("redis_url")?,
        &settings.get_or("redis_prefix", String::new())?,
    )?;
    let kept = platform::dead_letters::applied_events_kept(env.config.as_ref(), stream)
        .await?
        .ok_or("the stream has no consumer groups")?;
    let records_kept_since = (!too_old_too)
        .then(|| TimeDelta::from_std(kept).ok())
        .flatten()
        .and_then(|kept| Utc::now().checked_sub_signed(kept));
    let done = platform::dead_letters::replay(&redis, stream, records_kept_since).await?;
    println!(
        "{stream}: {} events put back on the stream, {} further copies of them removed, {} dead letters without an event left in {stream}.dead",
        done.events, done.copies, done.left
    );
    if done.too_old > 0 {
        println!(
            "{} dead letters of events older than {} days left in {stream}.dead: groups that applied them may no longer know it and would apply them again; check them, then run again with --too-old-too to replay them all the same",
            done.too_old,
            kept.as_secs() / 86_400
        );
    }
    Ok(())
}
