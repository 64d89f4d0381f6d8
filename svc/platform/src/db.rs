//! Postgres: one pool per service database, the database created when missing, migrations
//! applied at start (the platform's, then the service's).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(String),
    #[error("database {name} cannot be created: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| DbError::Url(e.to_string()))?;
    let name = opts
        .get_database()
        .ok_or_else(|| DbError::Url("the url names no database".into()))?
        .to_owned();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::Url(format!(
            "database name {name:?} must be [A-Za-z0-9_]"
        )));
    }
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(DbError::Connect)?;
    if !exists {
        // The name was checked to be [A-Za-z0-9_] above.
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Two processes racing to create it: the loser finds it there.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbError::Create { name, source }),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Connects (creating the database when missing) and applies the platform's and the
/// service's migrations.
pub async fn connect(
    url: &str,
    max_connections: u32,
    service_migrations: &Migrator,
) -> Result<PgPool, DbError> {
    ensure_database(url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(DbError::Connect)?;
    migrate(&pool, service_migrations).await?;
    Ok(pool)
}

/// The platform's tables keep their own migration history (`_platform_migrations`), so the
/// service's migrator never sees versions it does not know.
///
/// Instances starting together migrate one at a time, and each first drops the invalid
/// indexes a failed concurrent build left (`CREATE INDEX CONCURRENTLY`, which some migrations
/// use so that a large table's build blocks no writes): a migration run again would take such
/// an index, named in its `IF NOT EXISTS`, as built.
pub async fn migrate(pool: &PgPool, service_migrations: &Migrator) -> Result<(), DbError> {
    let mut conn = pool.acquire().await.map_err(DbError::Connect)?;
    // Closed, not pooled, when done: however migrating ends (an error, a panic, the future
    // dropped), the session lets go of its locks, ours and sqlx's own.
    conn.close_on_drop();
    take_migration_lock(&mut conn).await?;
    drop_invalid_indexes(&mut conn).await?;
    let mut platform = Migrator::with_migrations(PLATFORM_MIGRATIONS.iter().cloned().collect());
    platform.dangerous_set_table_name("_platform_migrations");
    platform.run(&mut *conn).await?;
    service_migrations.run(&mut *conn).await?;
    Ok(())
}

/// The advisory lock that one migrating instance holds ("micromart" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d6963726f6d6172;

/// Waits for the migration lock by asking again and again rather than in one blocking call:
/// a session waiting inside `pg_advisory_lock` holds a snapshot that a concurrent index build
/// of the instance holding the lock waits for, and each would wait for the other.
async fn take_migration_lock(conn: &mut PgConnection) -> Result<(), DbError> {
    let waiting_since = std::time::Instant::now();
    let mut told = Duration::ZERO;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(DbError::Connect)?;
        if taken {
            return Ok(());
        }
        let waited = waiting_since.elapsed();
        if waited >= told + Duration::from_secs(30) {
            told = waited;
            tracing::warn!(
                waited_s = waited.as_secs(),
                "waiting for another instance to finish migrating the database"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Drops the invalid indexes of the current schema that nothing is building: with the
/// migration lock held, each was left by a concurrent build that failed. One being built
/// (an operator's build, a `REINDEX CONCURRENTLY`) is left alone, and a drop that would wait
/// more than a few seconds for a lock is given up: the index stays, said in the log, and the
/// service starts.
async fn drop_invalid_indexes(conn: &mut PgConnection) -> Result<(), DbError> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname)
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT i.indisvalid AND c.relkind = 'i' AND n.nspname = current_schema()
           AND i.indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index)",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(DbError::Connect)?;
    if invalid.is_empty() {
        return Ok(());
    }
    sqlx::query("SET lock_timeout = '5s'")
        .execute(&mut *conn)
        .await
        .map_err(DbError::Connect)?;
    for index in invalid {
        // The name is quoted by format('%I.%I') above.
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {index}"
        )))
        .execute(&mut *conn)
        .await;
        match dropped {
            Ok(_) => {
                tracing::warn!(%index, "dropped an invalid index left by a failed concurrent build; a migration not yet applied builds it again")
            }
            Err(err) => {
                tracing::warn!(%index, error = %err, "an invalid index could not be dropped; it stays")
            }
        }
    }
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await
        .map_err(DbError::Connect)?;
    Ok(())
}
