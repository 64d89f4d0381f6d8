//! Serving on worker threads of their own, for the gateway: each runs a single-threaded
//! runtime with its own listening socket on the shared port (SO_REUSEPORT: the kernel spreads
//! connections), so a request and the tasks it wakes (the upstream connection's) stay on one
//! thread, as in nginx's or Envoy's workers. On the shop's shared multi-threaded runtime they
//! woke each other across threads, and competed with the services' own tasks.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Discovery, Registration};
use crate::runtime::{Handler, ServeError, Serving, Shutdown, serve_connections, stop_when_told};

/// The number of worker threads `configured` asks for: 0 means one per available core.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Like [`crate::runtime::serve`], on `workers` threads; `make_handler` builds each worker's
/// handler on that worker's runtime (so what it spawns, such as pooled connections, stays
/// there). A poem app is served through [`crate::runtime::PoemHandler`].
pub async fn serve_on_workers<F, H>(
    service: &str,
    workers: usize,
    make_handler: F,
    bind: &str,
    advertise: &str,
    discovery: Arc<dyn Discovery>,
    shutdown: impl Into<Shutdown>,
) -> Result<Serving, ServeError>
where
    F: Fn() -> H + Send + Sync + 'static,
    H: Handler,
{
    let bind_error = |source| ServeError::Bind {
        addr: bind.to_owned(),
        source,
    };
    let first = reuse_port_listener(bind).map_err(bind_error)?;
    let addr = first.local_addr().map_err(bind_error)?;
    let mut listeners = vec![first];
    for _ in 1..workers.max(1) {
        // Port 0 is resolved by the first bind; the others join the same port.
        listeners.push(reuse_port_listener(&addr.to_string()).map_err(bind_error)?);
    }
    let stop = CancellationToken::new();
    // Should any worker fail to start, or registration fail, those started stop again.
    let stop_on_error = stop.clone().drop_guard();
    let make_handler = Arc::new(make_handler);
    let mut servers: Vec<BoxFuture<'static, std::io::Result<()>>> = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (done, finished) = oneshot::channel();
        let make_handler = make_handler.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("{service}-worker-{i}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(serve_connections(listener, make_handler(), stop)));
                let _ = done.send(served);
            })
            .map_err(bind_error)?;
        servers.push(Box::pin(async move {
            finished
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("a worker thread panicked")))
        }));
    }
    // Registered once every worker serves.
    let registration = Registration::new(service, advertise, addr.port());
    discovery.register(&registration).await?;
    stop_on_error.disarm();
    let task = stop_when_told(
        discovery,
        registration.id.clone(),
        shutdown.into(),
        stop,
        servers,
    );
    Ok(Serving {
        addr,
        registration,
        task,
    })
}

/// A non-blocking listening socket that other sockets of this process may bind beside.
fn reuse_port_listener(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::BrokenRegistry;
    use crate::runtime::PoemHandler;

    #[tokio::test]
    async fn workers_started_for_an_instance_discovery_refuses_stop_again() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = format!("127.0.0.1:{port}");
        let served = serve_on_workers(
            "things",
            2,
            || PoemHandler::new(poem::endpoint::make_sync(|_| "ok")),
            &bind,
            "127.0.0.1",
            Arc::new(BrokenRegistry::Refuses),
            CancellationToken::new(),
        )
        .await;
        assert!(served.is_err(), "served though discovery refused");
        let refused = async {
            while tokio::net::TcpStream::connect(&bind).await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), refused)
            .await
            .expect("the workers stopped serving");
    }
}
