//! The gateway binary.

use platform::boot::Environment;

// jemalloc rather than glibc's malloc: hyper takes and frees two 8 KiB read buffers per
// proxied request, which glibc serves on its slow large-chunk path. Measured on the product
// page: about 10% less CPU per request on the gateway's worker thread, for about 5 MB more
// resident memory (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    platform::boot::init_process();
    let env = Environment::from_env()?;
    let settings = env.settings(gateway::SERVICE).await?;
    let config = gateway::GatewayConfig::from_settings(&settings)?;
    let state =
        gateway::Gateway::connect(config, env.discovery.clone(), env.config.clone()).await?;
    platform::runtime::run_serving_until_signal(
        gateway::SERVICE,
        state.background(),
        &settings,
        "0.0.0.0:7082",
        env.discovery,
        async |bind, advertise, discovery, shutdown| {
            state.serve(&bind, &advertise, discovery, shutdown).await
        },
    )
    .await
}
