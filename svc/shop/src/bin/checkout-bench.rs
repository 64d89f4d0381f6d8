//! Drives complete checkouts through a running shop (`scripts/bench` starts it): customers
//! fill a cart, check out, pay on the hosted page, and the run ends when every consumer has
//! applied every `PaymentSucceeded`. Prints checkouts per second, p50/p99 of checkout, and
//! p50/p99 of the fan-out (payment committed → last consumer committed, from the databases).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn login(
    client: &reqwest::Client,
    gw: &str,
    email: &str,
    password: &str,
) -> Result<String, BoxError> {
    let tokens: Value = client
        .post(format!("{gw}/api/v1/users/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(tokens["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned())
}

/// A new customer, logged in (outside the timed part: password hashing is not checkout).
async fn customer(
    client: &reqwest::Client,
    gw: &str,
    n: usize,
    run: &str,
) -> Result<String, BoxError> {
    let email = format!("bench-{run}-{n}@example.com");
    client
        .post(format!("{gw}/api/v1/users/register"))
        .json(&json!({"email": email, "password": "bench password 1", "name": "Bench"}))
        .send()
        .await?
        .error_for_status()?;
    login(client, gw, &email, "bench password 1").await
}

/// One customer's cart, checkout and payment; returns the checkout latency.
async fn one_checkout(
    client: &reqwest::Client,
    gw: &str,
    token: String,
    n: usize,
    product: &str,
    run: &str,
) -> Result<Duration, BoxError> {
    client
        .put(format!("{gw}/api/v1/cart/items/{product}"))
        .bearer_auth(&token)
        .json(&json!({"quantity": 1}))
        .send()
        .await?
        .error_for_status()?;
    let started = Instant::now();
    let placed: Value = client
        .post(format!("{gw}/api/v1/orders/checkout"))
        .bearer_auth(&token)
        .header("idempotency-key", format!("{run}-{n}"))
        .json(&json!({"shipping_address": "1 Bench Road"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let checkout = started.elapsed();
    let url = placed["payment_url"].as_str().ok_or("no payment url")?;
    let path = url.split("/pay/").nth(1).ok_or("odd payment url")?;
    let resp = client
        .post(format!("{gw}/pay/{path}"))
        .form(&[
            ("card_number", "4242424242424242"),
            ("expiry", "12/30"),
            ("cvc", "123"),
            ("name", "Bench"),
        ])
        .send()
        .await?;
    if resp.status() != 303 {
        return Err(format!("payment answered {}", resp.status()).into());
    }
    Ok(checkout)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let customers: usize = std::env::var("BENCH_CHECKOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let home = platform::boot::home();
    let run_file: Value = serde_json::from_str(&std::fs::read_to_string(home.join("shop.json"))?)?;
    let gw = run_file["services"]["gateway"]
        .as_str()
        .ok_or("no gateway in shop.json")?
        .to_owned();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let admin = &run_file["demo"]["admin"];
    let admin_token = login(
        &client,
        &gw,
        admin["email"].as_str().unwrap_or_default(),
        admin["password"].as_str().unwrap_or_default(),
    )
    .await?;
    let listing: Value = client
        .get(format!("{gw}/api/v1/products?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let product = listing["items"][0]["id"]
        .as_str()
        .ok_or("no product")?
        .to_owned();
    client
        .put(format!("{gw}/api/v1/inventory/{product}"))
        .bearer_auth(&admin_token)
        .json(&json!({"on_hand": 1_000_000, "safety_stock": 0}))
        .send()
        .await?
        .error_for_status()?;

    let db = |name: &str| format!("postgres://micromart@127.0.0.1:5432/{name}");
    let payment_db = PgPool::connect(&db("payment")).await?;
    let consumers = ["orders", "inventory", "cart", "notification"];
    let mut consumer_dbs = HashMap::new();
    for c in consumers {
        consumer_dbs.insert(c, PgPool::connect(&db(c)).await?);
    }
    let since: chrono::DateTime<chrono::Utc> = chrono::Utc::now();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut registering = Vec::new();
    for n in 0..customers {
        let (client, gw, run, gate) = (client.clone(), gw.clone(), run.clone(), gate.clone());
        registering.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("open semaphore");
            customer(&client, &gw, n, &run).await
        }));
    }
    let mut tokens = Vec::new();
    for t in registering {
        tokens.push(t.await??);
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, token) in tokens.into_iter().enumerate() {
        let (client, gw, product, run, gate) = (
            client.clone(),
            gw.clone(),
            product.clone(),
            run.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("open semaphore");
            one_checkout(&client, &gw, token, n, &product, &run).await
        }));
    }
    let mut checkout_ms = Vec::new();
    for t in tasks {
        checkout_ms.push(t.await??.as_secs_f64() * 1000.0);
    }
    // Done when every consumer has applied every PaymentSucceeded of this run.
    let events: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE event_type = 'PaymentSucceeded' AND created_at >= $1",
    )
    .bind(since)
    .fetch_all(&payment_db)
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = true;
        for pool in consumer_dbs.values() {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_events WHERE event_id = ANY($1)",
            )
            .bind(&events)
            .fetch_one(pool)
            .await?;
            done &= n as usize == events.len();
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err("consumers did not catch up within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();

    // Fan-out: payment committed (outbox row written) → the last consumer's commit.
    let committed: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as::<_, (uuid::Uuid, chrono::DateTime<chrono::Utc>)>(
            "SELECT id, created_at FROM outbox WHERE id = ANY($1)",
        )
        .bind(&events)
        .fetch_all(&payment_db)
        .await?
        .into_iter()
        .collect();
    let mut last: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for pool in consumer_dbs.values() {
        let rows: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT event_id, processed_at FROM processed_events WHERE event_id = ANY($1)",
        )
        .bind(&events)
        .fetch_all(pool)
        .await?;
        for (id, at) in rows {
            let e = last.entry(id).or_insert(at);
            if at > *e {
                *e = at;
            }
        }
    }
    let mut fanout_ms: Vec<f64> = events
        .iter()
        .filter_map(|id| {
            Some((*last.get(id)? - *committed.get(id)?).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    checkout_ms.sort_by(f64::total_cmp);
    fanout_ms.sort_by(f64::total_cmp);
    println!(
        "checkout_bench {}",
        json!({
            "customers": customers,
            "concurrency": concurrency,
            "seconds": wall.as_secs_f64(),
            "complete_checkouts_per_s": customers as f64 / wall.as_secs_f64(),
            "checkout_p50_ms": percentile(&checkout_ms, 0.5),
            "checkout_p99_ms": percentile(&checkout_ms, 0.99),
            "fanout_p50_ms": percentile(&fanout_ms, 0.5),
            "fanout_p99_ms": percentile(&fanout_ms, 0.99),
        })
    );
    Ok(())
}
