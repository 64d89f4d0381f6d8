//! The client the gateway forwards with: hyper's pooled HTTP/1.1 client, with bodies passed
//! through unbuffered and with their sizes, so a response that has a Content-Length keeps it
//! instead of being re-chunked.

use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A request or response body as poem and hyper both hold it.
pub type ForwardBody = BoxBody<Bytes, std::io::Error>;

pub type UpstreamClient = Client<HttpConnector, ForwardBody>;

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

pub fn empty_body() -> ForwardBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The upstream's response body for poem.
pub fn response_body(body: hyper::body::Incoming) -> poem::Body {
    poem::Body::from(body.map_err(std::io::Error::other).boxed())
}
