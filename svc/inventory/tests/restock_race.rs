//! A refund's restock racing a release of the same reservation. Its own test binary: the
//! failpoint it sets is global to the process, and no other test may stop at it.

// Shared with the black-box tests, of which this one uses a part.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use support::Shop;
use uuid::Uuid;

const AFTER_LOCK: &str = "inventory::restock_after_lock";

/// Holds restock after its lock until dropped, so that a failed assertion does not leave it
/// paused for good with its transaction open.
struct PausedAfterLock;

impl PausedAfterLock {
    fn set() -> Self {
        // `pause` blocks the thread that reaches it until the failpoint is removed.
        fail::cfg(AFTER_LOCK, "pause").unwrap();
        Self
    }
}

impl Drop for PausedAfterLock {
    fn drop(&mut self) {
        fail::remove(AFTER_LOCK);
    }
}

/// How many of the test database's sessions match `condition`, on `pg_stat_activity`.
async fn sessions(shop: &Shop, condition: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
    )))
    .fetch_one(shop.inventory.pool())
    .await
    .unwrap()
}

/// Whether a transaction has read `reservations` with restock's first statement and waits,
/// still open: restock has stopped at the failpoint.
async fn restock_is_paused(shop: &Shop) -> bool {
    let condition =
        "state = 'idle in transaction' AND query LIKE 'SELECT status FROM reservations%'";
    sessions(shop, condition).await == 1
}

/// Whether a transaction waits for a row lock to change `reservations`: the cancellation,
/// behind the paused restock.
async fn cancellation_waits_on_a_lock(shop: &Shop) -> bool {
    sessions(
        shop,
        "wait_event_type = 'Lock' AND query LIKE '%reservations%'",
    )
    .await
        == 1
}

/// The refund is told first, while the order's reservation is still held and has expired.
/// Between restock reading it as held and committing it, neither the sweeper nor a
/// cancellation may release it: the sweeper passes it by, the cancellation waits and then
/// finds it restocked. Without the row lock each would release it in that window, and the
/// restock would then take the units again as a late payment does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cannot_slip_between_restock_reading_a_reservation_and_committing_it() {
    let shop = Shop::start().await;
    let product = shop.stocked(10, 0).await;
    let order = Uuid::now_v7();
    let held = shop
        .reserve(order, json!([{"product_id": product, "quantity": 2}]), 600)
        .await;
    assert_eq!(held.status(), 201);
    shop.expire(order).await;

    let paused = PausedAfterLock::set();
    // The pause blocks the thread that reaches it: restock runs on a thread of its own, with
    // a connection of its own, so that nothing the test awaits is stuck behind it.
    let options = shop.inventory.pool().connect_options();
    let restock = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut db = PgConnection::connect_with(&options).await.unwrap();
            let mut tx = db.begin().await.unwrap();
            let restocked = inventory::store::restock(&mut tx, order).await.unwrap();
            tx.commit().await.unwrap();
            restocked
        })
    });
    let mut waited = Duration::ZERO;
    while !restock_is_paused(&shop).await {
        assert!(
            waited < Duration::from_secs(10),
            "restock never reached the failpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }

    assert_eq!(
        shop.inventory.release_expired().await.unwrap(),
        0,
        "the sweeper passes a reservation being restocked by"
    );
    let pool = shop.inventory.pool().clone();
    let cancel = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let released = inventory::store::finish_reservation(&mut tx, order, false, "cancelled")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        released
    });
    let mut waited = Duration::ZERO;
    while !cancellation_waits_on_a_lock(&shop).await {
        assert!(
            !cancel.is_finished() && waited < Duration::from_secs(10),
            "the cancellation waits for the restock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }

    drop(paused);
    assert!(restock.join().unwrap(), "the refund restocks");
    assert!(
        !cancel.await.unwrap(),
        "the cancellation finds it restocked and releases nothing"
    );
    assert_eq!(shop.inventory.release_expired().await.unwrap(), 0);

    let stock = shop.stock(product).await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(10), Some(0)),
        "{stock}"
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM stock_movements WHERE product_id = $1 ORDER BY id")
            .bind(product)
            .fetch_all(shop.inventory.pool())
            .await
            .unwrap();
    assert!(
        !reasons
            .iter()
            .any(|r| r == "cancelled" || r.contains("after its reservation was released")),
        "no release and no late payment's movement: {reasons:?}"
    );
}
