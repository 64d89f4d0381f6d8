//! Structured logs: JSON lines by default, human-readable with `LOG_FORMAT=pretty`.

use tracing_subscriber::EnvFilter;

/// Without `RUST_LOG`: info and above, except Postgres's notices, which sqlx logs at info
/// and which at every start only say that a migration table already exists.
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
