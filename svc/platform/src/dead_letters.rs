//! Dead letters back on their stream: once the cause of their failure is fixed (a handler's
//! bug, a missing row), an operator replays them (`replay-dead-letters STREAM`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use contracts::events::{Envelope, streams};
use redis::streams::{StreamId, StreamRangeReply};
use redis::{FromRedisValue, Value};

use crate::config::{ConfigError, ConfigSource, Settings};
use crate::consumer::dead_letter_stream;
use crate::redis::{Redis, RedisError};
use crate::retention::Retention;

/// The fields the consumer adds when it dead-letters an entry: not part of the event.
const ADDED_WHEN_DEAD_LETTERED: [&str; 3] = ["original_id", "group", "reason"];

/// How many dead letters one round trip reads.
const BATCH: usize = 100;

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events put back on the stream, once each.
    pub events: usize,
    /// Further dead letters of an event already put back (each group that gave up on an
    /// event dead-lettered it once), removed.
    pub copies: usize,
    /// Dead letters with no event in them (the entry had no envelope field): left where they
    /// are, for an operator to read; replayed, they would only come back.
    pub left: usize,
    /// Dead letters of events older than the groups' records of what they applied
    /// (`applied_events_keep_seconds`): left where they are, since a group that had applied
    /// such an event may no longer know it and would apply it again.
    pub too_old: usize,
}

/// How long every consumer group of `stream` keeps its records of the events it applied: the
/// shortest of their services' `applied_events_keep_seconds`, which each may set for itself.
/// An event older than that may be applied again by a group that had applied it.
pub async fn applied_events_kept(
    source: &dyn ConfigSource,
    stream: &str,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let mut kept = None;
    for group in streams::consumer_groups(stream) {
        let settings = Settings::load(source, group).await?;
        let keep = Retention::from_settings(&settings)?.applied_events;
        kept = Some(kept.map_or(keep, |shortest: std::time::Duration| shortest.min(keep)));
    }
    Ok(kept)
}

/// Moves the dead letters of `stream` that are there when it starts back onto `stream`, each
/// event once, as a new entry. Every consumer group sees it again: those that had applied it
/// skip it (each records the events it applied), one that had given up handles it. An entry
/// dead-lettered again while the replay runs is not replayed by it. Each move is one
/// transaction (XADD and XDEL together): an interrupted replay can be run again. Events that
/// occurred before `records_kept_since` are left in place (see [`Replayed::too_old`]); None
/// replays them too.
pub async fn replay(
    redis: &Redis,
    stream: &str,
    records_kept_since: Option<DateTime<Utc>>,
) -> Result<Replayed, RedisError> {
    let key = redis.key(stream);
    let dead_key = dead_letter_stream(&key);
    let mut conn = redis.conn().await?;
    let newest: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&dead_key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut *conn)
        .await?;
    let Some(last) = newest.ids.first().map(|e| e.id.clone()) else {
        return Ok(Replayed::default());
    };
    let mut done = Replayed::default();
    let mut replayed_events = HashSet::new();
    let mut from = "-".to_owned();
    loop {
        let batch: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&dead_key)
            .arg(&from)
            .arg(&last)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut *conn)
            .await?;
        let Some(end) = batch.ids.last() else {
            return Ok(done);
        };
        from = format!("({}", end.id);
        for entry in &batch.ids {
            if !entry.map.contains_key("envelope") {
                done.left += 1;
                continue;
            }
            if records_kept_since.is_some_and(|since| occurred_before(entry, since)) {
                done.too_old += 1;
                continue;
            }
            let event_id: Option<String> = entry.get("id");
            let mut transaction = redis::pipe();
            transaction.atomic();
            if event_id.is_none_or(|id| replayed_events.insert(id)) {
                let mut fields: Vec<(&String, &Value)> = entry
                    .map
                    .iter()
                    .filter(|(field, _)| !ADDED_WHEN_DEAD_LETTERED.contains(&field.as_str()))
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                let mut add = redis::cmd("XADD");
                add.arg(&key).arg("*");
                for (field, value) in fields {
                    let bytes = Vec::<u8>::from_redis_value(value.clone())
                        .map_err(|e| RedisError::Parse(e.to_string()))?;
                    add.arg(field).arg(bytes);
                }
                transaction.add_command(add);
                done.events += 1;
            } else {
                done.copies += 1;
            }
            let _: Value = transaction
                .cmd("XDEL")
                .arg(&dead_key)
                .arg(&entry.id)
                .query_async(&mut *conn)
                .await?;
        }
    }
}

/// Whether the event in `entry` occurred before `time` (an envelope that cannot be read is
/// not known to have).
fn occurred_before(entry: &StreamId, time: DateTime<Utc>) -> bool {
    entry
        .get::<String>("envelope")
        .and_then(|text| serde_json::from_str::<Envelope>(&text).ok())
        .is_some_and(|event| event.occurred_at < time)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use contracts::events::streams::{ORDERS, PAYMENT, USERS};

    use super::*;
    use crate::config::LocalConfig;

    const DAY: u64 = 24 * 3600;

    #[tokio::test]
    async fn the_shortest_time_a_group_of_the_stream_keeps_its_records_decides() {
        let config = LocalConfig::empty();
        let set = |key: &'static str, days: u64| {
            let config = config.clone();
            async move {
                config
                    .set(&format!("micromart/{key}"), &(days * DAY).to_string())
                    .await
                    .unwrap()
            }
        };
        let kept = |stream| {
            let config = config.clone();
            async move { applied_events_kept(&config, stream).await.unwrap() }
        };
        set("shared/applied_events_keep_seconds", 90).await;
        // Cart reads payment.events, and keeps its records for less than the others.
        set("cart/applied_events_keep_seconds", 30).await;
        // Users consumes no stream: what it keeps decides nothing.
        set("users/applied_events_keep_seconds", 2).await;
        assert_eq!(kept(PAYMENT).await, Some(Duration::from_secs(30 * DAY)));
        assert_eq!(kept(ORDERS).await, Some(Duration::from_secs(90 * DAY)));
        set("notification/applied_events_keep_seconds", 45).await;
        assert_eq!(kept(USERS).await, Some(Duration::from_secs(45 * DAY)));
        assert_eq!(kept(PAYMENT).await, Some(Duration::from_secs(30 * DAY)));
        assert_eq!(kept("nobody.reads.this").await, None);
    }
}
