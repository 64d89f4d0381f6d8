//! Migrations: a concurrent index build that failed is built again at the next start, and
//! instances starting together migrate one at a time.

use std::borrow::Cow;
use std::time::Duration;

use platform::testing::TestDb;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};

/// One migration: a unique index on `things (name)`, built concurrently, as the services'
/// index migrations are.
fn unique_names() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("unique names"),
        MigrationType::Simple,
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS things_name ON things (name)"
            .into_sql_str(),
        true,
    )])
}

async fn pool(db: &TestDb) -> PgPool {
    platform::db::connect(&db.url, 2, &Migrator::with_migrations(vec![]))
        .await
        .expect("the test database")
}

/// Whether `things_name` exists and is valid (None: it does not exist).
async fn index_valid(pool: &PgPool) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname = 'things_name'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The table `things`, holding the names `rows` gives.
async fn things(pool: &PgPool, rows: &'static str) {
    sqlx::query("CREATE TABLE things (name TEXT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    // `rows` is one of the tests' own literals.
    sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO things {rows}")))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_index_whose_concurrent_build_failed_is_built_at_the_next_start() {
    let db = TestDb::new("migrations_invalid");
    let pool = pool(&db).await;
    things(&pool, "VALUES ('twice'), ('twice')").await;

    // The build fails on the duplicate, leaving an invalid index behind.
    let failed = platform::db::migrate(&pool, &unique_names()).await;
    assert!(
        failed.is_err(),
        "the unique index was built over a duplicate"
    );
    assert_eq!(index_valid(&pool).await, Some(false));

    // The duplicate is mended and the service starts again: the index is built, not taken
    // as built because one of its name exists.
    sqlx::query("DELETE FROM things WHERE ctid = (SELECT min(ctid) FROM things)")
        .execute(&pool)
        .await
        .unwrap();
    platform::db::migrate(&pool, &unique_names())
        .await
        .expect("migrations after the mend");
    assert_eq!(index_valid(&pool).await, Some(true));
    let duplicate = sqlx::query("INSERT INTO things VALUES ('twice')")
        .execute(&pool)
        .await;
    assert!(duplicate.is_err(), "the unique index is in force");
}

#[tokio::test]
async fn instances_starting_together_build_a_concurrent_index_once_without_waiting_on_each_other() {
    let db = TestDb::new("migrations_together");
    let setup = pool(&db).await;
    things(&setup, "SELECT 'n' || g FROM generate_series(1, 200000) g").await;
    let migrator = unique_names();
    let mut pools = Vec::new();
    for _ in 0..3 {
        pools.push(pool(&db).await);
    }
    let started = futures::future::join_all(
        pools
            .iter()
            .map(|pool| platform::db::migrate(pool, &migrator)),
    );
    let results = tokio::time::timeout(Duration::from_secs(60), started)
        .await
        .expect("the instances finished migrating");
    for result in results {
        result.expect("each instance migrated");
    }
    assert_eq!(index_valid(&setup).await, Some(true));
}
