//! The one cross-cutting crate: config, discovery, identity, errors, data, events, HTTP.

pub mod auth;
pub mod body_limit;
pub mod boot;
pub mod config;
pub mod consul;
pub mod consumer;
pub mod context;
pub mod db;
pub mod dead_letters;
pub mod discovery;
pub mod document;
pub mod http;
mod json_keys;
pub mod metrics;
pub mod outbox;
pub mod periodic;
pub mod problem;
pub mod redis;
pub mod retention;
pub mod runtime;
pub mod service;
pub mod stream_trim;
pub mod telemetry;
mod unparsable_heads;
pub mod web;
pub mod workers;

#[cfg(feature = "testing")]
pub mod testing;

pub use tokio_util::sync::CancellationToken;
