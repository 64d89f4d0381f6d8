//! The gateway in a process of its own, for `scripts/bench`: products and users are the
//! instances at argv[1] and argv[2] (host:port, a running shop's), argv[4] worker threads (one
//! if not given), the rate limit lifted; the address it serves on is written to the file
//! argv[3]. Run under callgrind (`scripts/bench instructions`), its worker thread's
//! instructions are the gateway's and no other service's; timed (`BENCH_GATEWAY=alone`), it
//! is a separate process as nginx is.

use std::sync::Arc;

use platform::CancellationToken;
use platform::discovery::{Discovery, LocalDiscovery, Registration};

// As the gateway binary (gateway/src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.len() == 4 {
        args.push("1".to_owned());
    }
    let [_, products, users, addr_file, workers] = <[String; 5]>::try_from(args).map_err(
        |_| "usage: gateway_alone PRODUCTS_HOST:PORT USERS_HOST:PORT ADDR_FILE [WORKERS]",
    )?;
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
            ("workers", workers.as_str()),
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
