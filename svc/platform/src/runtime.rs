//! Serving a service: bind (port 0 allowed), register with discovery, run until told to
//! stop, then deregister before draining in-flight requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{IntoEndpoint, Server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Discovery, DiscoveryError, Registration};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

/// A running HTTP server.
pub struct Serving {
    pub addr: SocketAddr,
    pub registration: Registration,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `bind`, registers `service` under `advertise` (the address peers reach it at) and
/// serves `app` until `shutdown` is cancelled.
pub async fn serve<E>(
    service: &str,
    app: E,
    bind: &str,
    advertise: &str,
    discovery: Arc<dyn Discovery>,
    shutdown: CancellationToken,
) -> Result<Serving, ServeError>
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let acceptor = TcpListener::bind(bind.to_owned())
        .into_acceptor()
        .await
        .map_err(|source| ServeError::Bind {
            addr: bind.to_owned(),
            source,
        })?;
    let addr = acceptor
        .local_addr()
        .into_iter()
        .find_map(|a| a.as_socket_addr().copied())
        .expect("a TCP listener has a socket address");
    let registration = Registration::new(service, advertise, addr.port());
    discovery.register(&registration).await?;
    let stop = shutdown.clone();
    let id = registration.id.clone();
    let endpoint = app.into_endpoint();
    let task = tokio::spawn(async move {
        Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                endpoint.map_to_response(),
                async move {
                    stop.cancelled().await;
                    // Leave discovery first so that no new request is routed here.
                    if let Err(e) = discovery.deregister(&id).await {
                        tracing::warn!(error = %e, "deregistration failed");
                    }
                },
                Some(Duration::from_secs(10)),
            )
            .await
    });
    Ok(Serving {
        addr,
        registration,
        task,
    })
}

use poem::EndpointExt as _;

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}

type Task = Box<dyn FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, ()> + Send>;

/// The tasks a service runs beside its HTTP app (relays, consumers, sweepers), started
/// together and stopped by one token.
#[derive(Default)]
pub struct Background {
    tasks: Vec<(&'static str, Task)>,
}

impl Background {
    pub fn add<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push((name, Box::new(move |token| Box::pin(task(token)))));
    }

    pub fn extend(&mut self, other: Background) {
        self.tasks.extend(other.tasks);
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(n, _)| *n).collect()
    }

    pub fn spawn(self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        self.tasks
            .into_iter()
            .map(|(name, task)| {
                let token = shutdown.clone();
                tokio::spawn(async move {
                    tracing::debug!(task = name, "background task started");
                    task(token).await;
                    tracing::debug!(task = name, "background task stopped");
                })
            })
            .collect()
    }
}

/// A service binary's life after start: serve and register, run the background tasks, and
/// on SIGTERM or Ctrl-C deregister, drain requests and stop the tasks (the outbox relay
/// makes a last pass).
pub async fn run_until_signal<E>(
    service: &str,
    app: E,
    background: Background,
    settings: &crate::config::Settings,
    default_bind: &str,
    discovery: Arc<dyn Discovery>,
) -> Result<(), Box<dyn std::error::Error>>
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let bind: String = settings.get_or("http_bind", default_bind.to_owned())?;
    let advertise: String = settings.get_or("advertise_address", "127.0.0.1".to_owned())?;
    // Under Nomad the job's service block registers the instance; registering again from
    // here would list it twice.
    let discovery: Arc<dyn Discovery> = if settings.get_or("self_register", true)? {
        discovery
    } else {
        Arc::new(crate::discovery::LocalDiscovery::new())
    };
    let shutdown = CancellationToken::new();
    let tasks = background.spawn(&shutdown);
    let serving = serve(service, app, &bind, &advertise, discovery, shutdown.clone()).await?;
    tracing::info!(service, url = %serving.url(), "listening");
    termination_signal().await;
    shutdown.cancel();
    serving.task.await??;
    for task in tasks {
        task.await.ok();
    }
    Ok(())
}
