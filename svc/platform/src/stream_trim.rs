//! Trimming a stream only past what every consumer group has acknowledged.
//!
//! Redis 7 trims by length or by id, never by acknowledgement, so the producer works out the
//! oldest entry any group still needs and trims (`XTRIM MINID ~`) below it: for a group with
//! pending entries that is its oldest pending entry; for one without, its last delivered entry
//! (everything before it has been acknowledged). A group that does not exist yet holds
//! trimming back entirely.

use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};

use crate::redis::{Redis, RedisError};

/// An entry id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(u64, u64);

impl EntryId {
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-').unwrap_or((raw, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What one trimming pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trim {
    /// Entries below `floor` were trimmed (about `removed` of them: `~` trims whole nodes).
    Trimmed { floor: EntryId, removed: u64 },
    /// These groups do not exist yet, so nothing was trimmed.
    WaitingFor(Vec<String>),
    /// The stream does not exist.
    NoStream,
}

/// Trims `stream` (without the Redis prefix) past what all of `groups` acknowledged.
pub async fn trim_acknowledged(
    redis: &Redis,
    stream: &str,
    groups: &[&str],
) -> Result<Trim, RedisError> {
    let key = redis.key(stream);
    let mut conn = redis.conn().await?;
    let info: Result<StreamInfoGroupsReply, redis::RedisError> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&key)
        .query_async(&mut *conn)
        .await;
    let info = match info {
        Ok(info) => info,
        Err(e) if e.to_string().contains("no such key") => return Ok(Trim::NoStream),
        Err(e) => return Err(e.into()),
    };
    for group in &info.groups {
        // How far behind each group is, for operators: entries not yet delivered to it (Redis
        // 7's lag; NaN when Redis cannot tell, after a deletion say) and entries delivered
        // and not yet acknowledged.
        let labels = [("stream", stream.to_owned()), ("group", group.name.clone())];
        metrics::gauge!("stream_consumer_pending", &labels).set(group.pending as f64);
        metrics::gauge!("stream_consumer_lag", &labels)
            .set(group.lag.map_or(f64::NAN, |lag| lag as f64));
    }
    let missing: Vec<String> = groups
        .iter()
        .filter(|g| !info.groups.iter().any(|i| i.name == **g))
        .map(|g| (*g).to_owned())
        .collect();
    if !missing.is_empty() {
        return Ok(Trim::WaitingFor(missing));
    }
    let mut floor: Option<EntryId> = None;
    for group in &info.groups {
        let needed = if group.pending > 0 {
            let pending: StreamPendingReply = redis::cmd("XPENDING")
                .arg(&key)
                .arg(&group.name)
                .query_async(&mut *conn)
                .await?;
            match pending {
                StreamPendingReply::Data(data) => data.start_id,
                // Acknowledged between the two calls.
                _ => group.last_delivered_id.clone(),
            }
        } else {
            group.last_delivered_id.clone()
        };
        let needed = EntryId::parse(&needed)
            .ok_or_else(|| RedisError::Parse(format!("entry id {needed:?}")))?;
        floor = Some(floor.map_or(needed, |f| f.min(needed)));
    }
    let Some(floor) = floor else {
        // No group at all and none expected: nobody will ever read it, keep it for operators.
        return Ok(Trim::WaitingFor(vec![]));
    };
    let removed: u64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MINID")
        .arg("~")
        .arg(floor.to_string())
        .query_async(&mut *conn)
        .await?;
    Ok(Trim::Trimmed { floor, removed })
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        let a = EntryId::parse("1700000000000-5").unwrap();
        let b = EntryId::parse("1700000000000-12").unwrap();
        let c = EntryId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(EntryId::parse("42").unwrap(), EntryId(42, 0));
        assert_eq!(b.to_string(), "1700000000000-12");
        assert_eq!(EntryId::parse("x-1"), None);
    }
}
