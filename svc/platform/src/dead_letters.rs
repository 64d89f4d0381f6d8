//! Dead letters back on their stream: once the cause of their failure is fixed (a handler's
//! bug, a missing row), an operator replays them (`replay-dead-letters STREAM`).

use redis::streams::StreamRangeReply;
use redis::{FromRedisValue, Value};

use crate::consumer::dead_letter_stream;
use crate::redis::{Redis, RedisError};

/// The fields the consumer adds when it dead-letters an entry: not part of the event.
const ADDED_WHEN_DEAD_LETTERED: [&str; 3] = ["original_id", "group", "reason"];

/// How many dead letters one round trip moves.
const BATCH: usize = 100;

/// Moves every entry of `stream`'s dead-letter stream back onto `stream` as a new entry;
/// returns how many. Every consumer group sees it again: those that had applied it skip it
/// (each records the events it applied), the one that dead-lettered it handles it. Each
/// move is one transaction (XADD and XDEL together), so an interrupted replay can be run
/// again and moves each entry once.
pub async fn replay(redis: &Redis, stream: &str) -> Result<usize, RedisError> {
    let key = redis.key(stream);
    let dead_key = dead_letter_stream(&key);
    let mut conn = redis.conn().await?;
    let mut moved = 0;
    loop {
        let batch: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&dead_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut *conn)
            .await?;
        if batch.ids.is_empty() {
            return Ok(moved);
        }
        for entry in &batch.ids {
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
            let _: Value = redis::pipe()
                .atomic()
                .add_command(add)
                .cmd("XDEL")
                .arg(&dead_key)
                .arg(&entry.id)
                .query_async(&mut *conn)
                .await?;
            moved += 1;
        }
    }
}
