//! The client the gateway forwards with: hyper's pooled HTTP/1.1 client, with bodies passed
//! through unbuffered and with their sizes, so a request or response that has a
//! Content-Length keeps it instead of being re-chunked.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::CappedBody;

pub type UpstreamClient = Client<HttpConnector, CappedBody>;

pub fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(connector)
}
