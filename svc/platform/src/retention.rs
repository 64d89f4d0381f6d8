//! Keeps the platform's tables from growing without end: outbox rows already relayed, and the
//! record of events a consumer applied, once no redelivery can need them. A service adds its
//! own tables of rows that stop mattering with age ([`OwnRows`]: spent tokens, old
//! idempotency keys), pruned in the same passes.
//!
//! A relayed row is never read again (a relay crashing between XADD and marking it sends it
//! again within seconds, before it is marked). An applied event's record is what makes a
//! redelivery change nothing: one comes within `stream_claim_idle` of a crash, or when dead
//! letters are replayed; so it is kept far longer than the first, for as long as replaying
//! dead letters should stay safe.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::runtime::Background;

/// How long each kind of row is kept, and how often old ones are deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// An outbox row is deleted this long after it was relayed.
    pub relayed_events: Duration,
    /// An applied event's record is deleted this long after it was applied; a dead letter
    /// replayed later may be applied again by groups that had applied it.
    pub applied_events: Duration,
    pub every: Duration,
}

impl Retention {
    /// The limits from config. An applied event's record is kept at least a day (a shorter
    /// time would let an ordinary redelivery be applied twice), and passes come at least a
    /// second apart.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let retention = Self {
            relayed_events: s.seconds("outbox_keep_relayed_seconds", 7 * DAY)?,
            applied_events: s.seconds("applied_events_keep_seconds", 90 * DAY)?,
            every: s.seconds("retention_every_seconds", 3600)?,
        };
        if retention.applied_events < Duration::from_secs(DAY) {
            return Err(ConfigError::Invalid {
                key: "applied_events_keep_seconds".into(),
                value: retention.applied_events.as_secs().to_string(),
                reason: format!("must be at least {DAY} (a day)"),
            });
        }
        if retention.every.is_zero() {
            return Err(ConfigError::Invalid {
                key: "retention_every_seconds".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(retention)
    }
}

const DAY: u64 = 24 * 3600;

/// Rows of a service's own table that go in each pass, beside the platform's.
#[derive(Clone, Debug)]
pub struct OwnRows {
    /// The table, as `retention_deleted_rows_total` names it.
    pub table: &'static str,
    /// Deletes at most $2 rows that have been old for more than $1 seconds (whatever makes
    /// a row old in that table: its expiry, its age).
    pub delete: Cow<'static, str>,
    pub older_than: Duration,
}

/// Rows deleted by one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub relayed_events: u64,
    pub applied_events: u64,
}

/// Rows deleted per statement: each batch is a short transaction of its own, so a first pass
/// over a large backlog neither holds locks for long nor writes one huge WAL record.
const BATCH: i64 = 5000;

/// The platform's own tables, as [`OwnRows`].
fn platform_rows(retention: &Retention) -> [OwnRows; 2] {
    [
        OwnRows::aged("outbox", "id", "sent_at", retention.relayed_events),
        OwnRows::aged(
            "processed_events",
            "consumer, event_id",
            "processed_at",
            retention.applied_events,
        ),
    ]
}

/// Deletes what `retention` no longer keeps, in batches, until none is left.
pub async fn prune_once(pool: &PgPool, retention: &Retention) -> Result<Pruned, sqlx::Error> {
    let [outbox, processed] = platform_rows(retention);
    Ok(Pruned {
        relayed_events: outbox.prune(pool).await?,
        applied_events: processed.prune(pool).await?,
    })
}

/// Deletes the rows of each of `own` that it no longer keeps, in batches; how many, per table.
pub async fn prune_own(
    pool: &PgPool,
    own: &[OwnRows],
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let mut pruned = Vec::with_capacity(own.len());
    for rows in own {
        pruned.push((rows.table, rows.prune(pool).await?));
    }
    Ok(pruned)
}

impl OwnRows {
    /// The rows of `table` whose time `at` (a column) is more than `older_than` ago, deleted
    /// by `key` (its primary key's columns, separated by commas). Rows that can
    /// become young again while a pass deletes them need a statement of their own, which
    /// checks the age again outside its subquery.
    pub fn aged(
        table: &'static str,
        key: &'static str,
        at: &'static str,
        older_than: Duration,
    ) -> Self {
        Self {
            table,
            delete: format!(
                "DELETE FROM {table} WHERE ({key}) IN (
                     SELECT {key} FROM {table}
                     WHERE {at} < now() - make_interval(secs => $1) LIMIT $2)"
            )
            .into(),
            older_than,
        }
    }

    /// Deletes the rows no longer kept, in batches, until none is left; how many.
    async fn prune(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            // Statements written in code: `aged` takes only static names.
            let batch = sqlx::query(AssertSqlSafe(self.delete.clone()))
                .bind(self.older_than.as_secs_f64())
                .bind(BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            deleted += batch;
            if batch < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// The background task that prunes `pool`'s platform tables, and the service's `own`, every
/// `retention.every`.
pub fn task(
    pool: &PgPool,
    retention: &Retention,
    service: &'static str,
    own: Vec<OwnRows>,
) -> Background {
    let (pool, retention) = (pool.clone(), retention.clone());
    let mut tasks = Background::default();
    tasks.add("retention", move |shutdown| {
        run(pool, retention, own, service, shutdown)
    });
    tasks
}

/// Prunes every `retention.every` until `shutdown`, table by table: one that fails (a lock
/// timeout, a table not migrated yet) is tried again next time and holds back none of the
/// others. Several instances of a service may prune at once: each deletes what it finds, and
/// a row another has deleted is simply not there.
async fn run(
    pool: PgPool,
    retention: Retention,
    own: Vec<OwnRows>,
    service: &'static str,
    shutdown: CancellationToken,
) {
    let tables: Vec<OwnRows> = platform_rows(&retention).into_iter().chain(own).collect();
    crate::periodic::every(
        retention.every,
        &shutdown,
        "pruning old rows failed; trying again later",
        || async {
            let mut failed = 0;
            for rows in &tables {
                match rows.prune(&pool).await {
                    Ok(deleted) => metrics::counter!("retention_deleted_rows_total", "service" => service, "table" => rows.table)
                        .increment(deleted),
                    Err(err) => {
                        tracing::warn!(table = rows.table, error = %err, "pruning a table failed; trying again later");
                        failed += 1;
                    }
                }
            }
            match failed {
                0 => Ok(()),
                n => Err(format!("{n} of {} tables", tables.len())),
            }
        },
    )
    .await;
}
