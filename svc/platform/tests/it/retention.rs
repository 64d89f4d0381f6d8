//! Old relayed events and old records of applied events are deleted; nothing else is.

use std::time::Duration;

use platform::config::Settings;
use platform::retention::{Pruned, Retention, prune_once};
use platform::testing::TestDb;
use sqlx::PgPool;

async fn platform_tables(db: &TestDb) -> PgPool {
    platform::db::connect(
        &db.url,
        5,
        &sqlx::migrate::Migrator::with_migrations(vec![]),
    )
    .await
    .expect("the test database")
}

/// `count` outbox rows created `created_days_ago` and relayed `sent_days_ago` (never, for
/// None), under the label `label` in their event type.
async fn outbox_rows(
    pool: &PgPool,
    label: &str,
    count: i32,
    created_days_ago: i32,
    sent_days_ago: Option<i32>,
) {
    sqlx::query(
        "INSERT INTO outbox (id, stream, event_type, payload, created_at, sent_at)
         SELECT gen_random_uuid(), 'users.events', $1, '{}'::jsonb,
                now() - make_interval(days => $3),
                now() - make_interval(days => $4)
         FROM generate_series(1, $2)",
    )
    .bind(label)
    .bind(count)
    .bind(created_days_ago)
    .bind(sent_days_ago)
    .execute(pool)
    .await
    .unwrap();
}

/// `count` records of events applied `days_ago` by `consumer`.
async fn applied_events(pool: &PgPool, consumer: &str, count: i32, days_ago: i32) {
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, event_type, processed_at)
         SELECT $1, gen_random_uuid(), 'PaymentSucceeded', now() - make_interval(days => $3)
         FROM generate_series(1, $2)",
    )
    .bind(consumer)
    .bind(count)
    .bind(days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn outbox_left(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT event_type, count(*) FROM outbox GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn applied_left(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT consumer, count(*) FROM processed_events GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn relayed_events_past_a_week_and_applied_ones_past_90_days_are_deleted_and_no_others() {
    let db = TestDb::new("retention");
    let pool = platform_tables(&db).await;
    let retention = Retention::from_settings(&Settings::default()).unwrap();
    assert_eq!(
        retention,
        Retention {
            relayed_events: Duration::from_secs(7 * 24 * 3600),
            applied_events: Duration::from_secs(90 * 24 * 3600),
            every: Duration::from_secs(3600),
        },
        "the defaults"
    );
    // More old rows than one batch deletes, so that only going on until none is left
    // deletes them all.
    outbox_rows(&pool, "relayed long ago", 12_000, 30, Some(8)).await;
    outbox_rows(&pool, "relayed lately", 3, 30, Some(6)).await;
    outbox_rows(&pool, "never relayed", 2, 30, None).await;
    applied_events(&pool, "cart", 11_000, 91).await;
    applied_events(&pool, "orders", 4, 89).await;

    let pruned = prune_once(&pool, &retention).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            relayed_events: 12_000,
            applied_events: 11_000
        }
    );
    assert_eq!(
        outbox_left(&pool).await,
        [
            ("never relayed".to_owned(), 2),
            ("relayed lately".to_owned(), 3)
        ]
    );
    assert_eq!(applied_left(&pool).await, [("orders".to_owned(), 4)]);
    assert_eq!(
        prune_once(&pool, &retention).await.unwrap(),
        Pruned::default(),
        "a second pass finds nothing more"
    );
}

#[tokio::test]
async fn how_long_rows_are_kept_comes_from_config() {
    let db = TestDb::new("retention_config");
    let pool = platform_tables(&db).await;
    let settings = Settings::default()
        .with("outbox_keep_relayed_seconds", "3600")
        .with("applied_events_keep_seconds", "86400");
    let retention = Retention::from_settings(&settings).unwrap();
    outbox_rows(&pool, "relayed yesterday", 2, 1, Some(1)).await;
    applied_events(&pool, "inventory", 3, 2).await;
    applied_events(&pool, "orders", 1, 0).await;
    assert_eq!(
        prune_once(&pool, &retention).await.unwrap(),
        Pruned {
            relayed_events: 2,
            applied_events: 3
        }
    );
    assert_eq!(applied_left(&pool).await, [("orders".to_owned(), 1)]);
    for (key, value) in [
        ("applied_events_keep_seconds", "a week"),
        // Shorter than a redelivery may come: it would be applied twice.
        ("applied_events_keep_seconds", "3600"),
        ("retention_every_seconds", "0"),
    ] {
        assert!(
            Retention::from_settings(&Settings::default().with(key, value)).is_err(),
            "{key} = {value} is refused, not replaced by the default"
        );
    }
}
