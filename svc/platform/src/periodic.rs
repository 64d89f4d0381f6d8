//! Background rounds on a schedule: sweepers and senders that look for work every so often.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `round` at once and then every `interval` until `shutdown`. A failed round is logged
/// as `failed` says, and the next one comes on schedule: a database away for a while only
/// delays the work.
pub async fn every<T, E: Display, F: Future<Output = Result<T, E>>>(
    interval: Duration,
    shutdown: &CancellationToken,
    failed: &str,
    mut round: impl FnMut() -> F,
) {
    loop {
        if let Err(err) = round().await {
            tracing::warn!(error = %err, "{failed}");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
