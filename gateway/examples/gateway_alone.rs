//! The gateway on its own, for `scripts/bench instructions`: products and users are the
//! instances at argv[1] and argv[2] (host:port, a running shop's), one worker thread, the rate
//! limit lifted; the address it serves on is written to the file argv[3]. Run under callgrind,
//! its worker thread's instructions are the gateway's and no other service's.

use std::sync::Arc;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery, Registration};

// As the gateway binary (gateway/src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [_, products, users, addr_file] =
        <[String; 4]>::try_from(std::env::args().collect::<Vec<_>>())
            .map_err(|_| "usage: gateway_alone PRODUCTS_HOST:PORT USERS_HOST:PORT ADDR_FILE")?;
    let discovery: Arc<dyn Discovery> = Arc::new(LocalDiscovery::new());
    for (service, at) in [("products", &products), ("users", &users)] {
        let (host, port) = at.rsplit_once(':').ok_or("an instance is host:port")?;
        discovery
            .register(&Registration::new(service, host, port.parse()?))
            .await?;
    }
    let stop = CancellationToken::new();
    let gateway = gateway::testing::start(
        discovery,
        &[
            ("workers", "1"),
            ("rate_limit_per_second", "100000000"),
            ("rate_limit_burst", "100000000"),
        ],
        &stop,
    )
    .await;
    std::fs::write(addr_file, gateway.serving.addr.to_string())?;
    platform::runtime::termination_signal().await;
    stop.cancel();
    Ok(())
}
