//! Postgres: one pool per service database, the database created when missing, migrations
//! applied at start (the platform's, then the service's).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

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
pub async fn migrate(pool: &PgPool, service_migrations: &Migrator) -> Result<(), DbError> {
    let mut platform = Migrator::with_migrations(PLATFORM_MIGRATIONS.iter().cloned().collect());
    platform.dangerous_set_table_name("_platform_migrations");
    platform.run(pool).await?;
    service_migrations.run(pool).await?;
    Ok(())
}
