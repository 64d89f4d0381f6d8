//! Serving a service: bind (port 0 allowed), register with discovery, run until told to
//! stop, then deregister, answer through a grace period, and drain in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, IntoEndpoint};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::discovery::{Discovery, DiscoveryError, Registration};
use crate::unparsable_heads::{self, ProblemForUnparsableHeads};

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

/// When and how a server stops: once `token` is cancelled it leaves discovery, goes on
/// answering for `grace`, then stops accepting connections and drains what is in flight.
/// The grace is for callers that picked this instance before they heard it left (the
/// gateway follows discovery within moments): their requests are answered, not refused,
/// and none goes out on a connection this instance is closing.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub grace: Duration,
}

/// Stops as soon as the token is cancelled (tests, and servers no caller picks by itself).
impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Self {
            token,
            grace: Duration::ZERO,
        }
    }
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
/// serves `app` until `shutdown` says stop.
pub async fn serve<E>(
    service: &str,
    app: E,
    bind: &str,
    advertise: &str,
    discovery: Arc<dyn Discovery>,
    shutdown: impl Into<Shutdown>,
) -> Result<Serving, ServeError>
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let bind_error = |source| ServeError::Bind {
        addr: bind.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(bind).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let registration = Registration::new(service, advertise, addr.port());
    discovery.register(&registration).await?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_connections(
        listener,
        PoemHandler::new(app),
        stop.clone(),
    ));
    let task = stop_when_told(
        discovery,
        registration.id.clone(),
        shutdown.into(),
        stop,
        vec![Box::pin(async move {
            server
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        })],
    );
    Ok(Serving {
        addr,
        registration,
        task,
    })
}

/// How long leaving discovery may take at shutdown.
const DEREGISTER_LIMIT: Duration = Duration::from_secs(5);

/// Waits for `shutdown`, leaves discovery first (so that no new request is routed here),
/// answers through the grace period, then stops the accept loops and waits until they have
/// drained.
pub(crate) fn stop_when_told(
    discovery: Arc<dyn Discovery>,
    id: String,
    shutdown: Shutdown,
    stop: CancellationToken,
    servers: Vec<BoxFuture<'static, std::io::Result<()>>>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        shutdown.token.cancelled().await;
        // A registry that does not answer must not hold the stop up for good (nor the signal
        // that asked for it): past the limit, its health check finds the instance gone.
        match tokio::time::timeout(DEREGISTER_LIMIT, discovery.deregister(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistration failed"),
            Err(_) => tracing::warn!(
                limit_ms = DEREGISTER_LIMIT.as_millis() as u64,
                "deregistration did not finish in time; stopping anyway"
            ),
        }
        if !shutdown.grace.is_zero() {
            tracing::info!(
                grace_ms = shutdown.grace.as_millis() as u64,
                "left discovery; answering until the grace period ends"
            );
            tokio::time::sleep(shutdown.grace).await;
        }
        stop.cancel();
        for server in servers {
            server.await?;
        }
        Ok(())
    })
}

/// A response body as hyper sends it.
pub type ResponseBody = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::io::Error>;

/// The two ends of the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionAddrs {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What answers the requests of a connection, as hyper hands them over: a poem app through
/// [`PoemHandler`], or the gateway's proxy, which forwards hyper's request as it is.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        addrs: ConnectionAddrs,
    ) -> impl Future<Output = hyper::Response<ResponseBody>> + Send;
}

/// A poem app as a [`Handler`]: its errors become responses as poem makes them.
pub struct PoemHandler<E>(E);

impl<E: Endpoint> PoemHandler<E> {
    pub fn new<A: IntoEndpoint<Endpoint = E>>(app: A) -> Self {
        Self(app.into_endpoint())
    }
}

impl<E: Endpoint + 'static> Handler for PoemHandler<E> {
    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        addrs: ConnectionAddrs,
    ) -> hyper::Response<ResponseBody> {
        let req = poem::Request::from((
            req,
            LocalAddr(addrs.local.into()),
            RemoteAddr(addrs.remote.into()),
            Scheme::HTTP,
        ));
        self.0.get_response(req).await.into()
    }
}

/// How long a connection may stay open with no request in flight, whatever its protocol
/// (then it is closed gracefully, and cut off one more period later: so a client has one to
/// two periods to start and finish sending a request's head), and how long a client may
/// leave the answer it is sent untaken (nginx allows 60 s, 75 s and 60 s): a
/// client that opens connections and sends nothing, sends a head a byte at a time, keeps an
/// HTTP/2 connection open unused, or stops reading a long answer, cannot hold them (nor, at
/// the gateway, the upstream connection the answer comes on) for longer.
pub const CLIENT_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// How long our clients keep an idle connection to one of our servers for reuse: less than
/// [`CLIENT_IDLE_LIMIT`], so that the client retires it before the server closes it, rather
/// than the server closing it just as a request goes out on it.
pub const IDLE_CONNECTION_REUSE: Duration = Duration::from_secs(20);

/// The most an HTTP/1.1 connection buffers: a request head larger than this is refused with
/// 431 (hyper's own answer, given a problem+json body by `unparsable_heads`). hyper's default
/// is ~400 KiB, which a client may fill with headers on every connection it holds open; nginx
/// stops at 32 KiB of header lines, and HTTP/2 heads here at hyper's 16 KiB. Bodies are read
/// in chunks of at most this.
pub const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Accepts connections on `listener` and serves them with `handler` until `stop`, then gives
/// the requests in flight 10 s to finish. hyper's HTTP/1.1 and HTTP/2 server, as poem's
/// `Server` runs it, but on the bare socket (poem's server splits every connection into two
/// boxed halves behind a lock) and with Nagle's algorithm off (a response written in two
/// parts, head then streamed body, must not wait for the client's delayed ACK).
/// A connection with no request in flight for the idle limit is closed gracefully, and
/// dropped one idle limit later if it has not closed by then: that limits a slow HTTP/1
/// head, the wait for the next one, the first bytes hyper reads to tell HTTP/1 from HTTP/2,
/// and an unused HTTP/2 connection alike. One whose client has taken nothing of an answer
/// for between one and two idle limits is dropped: hyper has no send limit.
pub(crate) async fn serve_connections(
    listener: std::net::TcpListener,
    handler: impl Handler,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_connections_with(listener, handler, stop, CLIENT_IDLE_LIMIT).await
}

/// [`serve_connections`] allowing clients `idle_limit` instead of [`CLIENT_IDLE_LIMIT`].
pub(crate) async fn serve_connections_with(
    listener: std::net::TcpListener,
    handler: impl Handler,
    stop: CancellationToken,
    idle_limit: Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let handler = Arc::new(handler);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        // No head limit of hyper's (its default, 30 s, once it is given a timer): it arms a
        // timer of its own for every request's head, from the end of the last answer (a
        // boxed sleep, registered and dropped again each time). The connection's watchdog
        // below sets the same limit from the same moment: no request in flight for
        // `idle_limit` closes the connection, however much of a head has arrived. Set to
        // none, hyper needs no timer.
        .header_read_timeout(None)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        // Head and body copied into one buffer and written at once (which also lets
        // `unparsable_heads` see hyper's own answers whole): for the small answers
        // an API mostly sends, cheaper than hyper's queue of buffers written with writev
        // (with the same in the gateway's upstream connections, -1.8% instructions a
        // proxied request, `scripts/bench instructions`).
        .writev(false);
    let http = Arc::new(http);
    let connections = TaskTracker::new();
    loop {
        let (stream, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot disable Nagle's algorithm");
        }
        let handler = handler.clone();
        let addrs = ConnectionAddrs {
            local,
            remote: remote_addr,
        };
        let activity = Arc::new(ConnectionActivity::default());
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            let in_flight = InFlight::start(&requests);
            async move {
                let resp = handler.handle(req, addrs).await;
                // In flight until its body has gone, however long it streams.
                let resp = resp.map(|body| ResponseBody::new(InFlightBody::new(body, in_flight)));
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let http = http.clone();
        let stop = stop.clone();
        let (stream, ended_by_parse_error) = ProblemForUnparsableHeads::new(stream);
        connections.spawn(async move {
            let connection = http
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::pin!(connection);
            // The stop and the idle limit are watched by a task of their own: polled beside
            // the connection at each of its wake-ups, they cost ~500 instructions a proxied
            // request (`scripts/bench instructions`); a oneshot costs next to nothing.
            let (close, told_to_close) = tokio::sync::oneshot::channel();
            let watchdog = tokio::spawn(async move {
                let why = tokio::select! {
                    _ = stop.cancelled() => Closing::Stop,
                    why = activity.idle_or_stalled(idle_limit) => why,
                };
                let _ = close.send(why);
            });
            let ended = tokio::select! {
                biased;
                ended = connection.as_mut() => ended,
                why = told_to_close => match why {
                    Ok(Closing::Stalled) => {
                        // Nothing in flight can be finished for a client that takes nothing.
                        tracing::debug!(client = %remote_addr, "client stopped taking its answer; connection dropped");
                        Ok(())
                    }
                    Ok(Closing::Stop | Closing::Idle) | Err(_) => {
                        // Answers what is in flight, then closes; over HTTP/2 only once the
                        // client has answered a ping, which a hostile one never does: so
                        // within the limit, or not at all.
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(idle_limit, connection.as_mut())
                            .await
                            .unwrap_or(Ok(()))
                    }
                },
            };
            watchdog.abort();
            if let Err(e) = ended {
                if unparsable_heads::is_parse_error(&*e) {
                    // Its answer goes out as the connection is dropped, just below.
                    let request_id = crate::context::new_request_id();
                    tracing::info!(target: "access", client = %remote_addr, request_id = %request_id, error = %e, "request head could not be parsed");
                    let _ = ended_by_parse_error.set(request_id);
                } else {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
        });
    }
    // No more connections: closed now, a caller still connecting is refused (and may try
    // another instance) rather than accepted, sent its request and then reset unanswered.
    drop(listener);
    // Finish what is in flight, waiting at most 10 s.
    connections.close();
    if tokio::time::timeout(Duration::from_secs(10), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still busy 10 s after the stop; no longer waited for");
    }
    Ok(())
}

/// Why a connection is closed before its client closes it.
enum Closing {
    /// The server stops.
    Stop,
    /// No request in flight for the limit.
    Idle,
    /// An answer has been waiting for its client to take it for the limit or longer.
    Stalled,
}

/// Whether a connection is in use: the requests it has in flight, and when the last one
/// ended (time since `opened`, in microseconds); and whether its client takes its answers.
struct ConnectionActivity {
    opened: tokio::time::Instant,
    in_flight: AtomicUsize,
    last_ended_us: AtomicU64,
    /// The periods of the watchdog with requests in flight, counted.
    period: AtomicU64,
    /// Response bodies that have produced a part and not been asked for the next one (the
    /// part waits for room in the client's socket or HTTP/2 window), by the parity of the
    /// period they began waiting in. Each body is its own: over HTTP/2, answers the client
    /// does take cannot hide one it leaves waiting.
    waiting_on_client: [AtomicUsize; 2],
}

impl Default for ConnectionActivity {
    fn default() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ended_us: AtomicU64::new(0),
            period: AtomicU64::new(0),
            waiting_on_client: Default::default(),
        }
    }
}

impl ConnectionActivity {
    /// Resolves once the connection has had no request in flight for `limit`, or an answer
    /// has waited on its client since before the last period of `limit` began (so for
    /// between one and two limits). Checked at deadlines rather than on every request, so a
    /// request costs a few atomic updates.
    async fn idle_or_stalled(&self, limit: Duration) -> Closing {
        let mut deadline = self.opened + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = tokio::time::Instant::now();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Bodies waiting since the period before this one; those of earlier periods
                // of the same parity were found at earlier deadlines.
                let period = self.period.load(Ordering::Acquire);
                let before = (period.wrapping_sub(1) % 2) as usize;
                if self.waiting_on_client[before].load(Ordering::Acquire) > 0 {
                    return Closing::Stalled;
                }
                self.period.store(period.wrapping_add(1), Ordering::Release);
                deadline = now + limit;
                continue;
            }
            let last_ended = Duration::from_micros(self.last_ended_us.load(Ordering::Acquire));
            deadline = self.opened + last_ended + limit;
            if deadline <= now {
                // A request starting just now is still answered: the close is graceful.
                return Closing::Idle;
            }
        }
    }
}

/// A request in flight on a connection, until its response has been sent or it is dropped.
struct InFlight(Arc<ConnectionActivity>);

impl InFlight {
    fn start(activity: &Arc<ConnectionActivity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let since_opened = activity.opened.elapsed().as_micros() as u64;
        activity
            .last_ended_us
            .fetch_max(since_opened, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is dropped (sent, or given up),
/// and tells its connection when a part of it waits on the client.
struct InFlightBody {
    body: ResponseBody,
    in_flight: InFlight,
    /// The parity of the watchdog's period in which its waiting part was handed over, if one
    /// waits.
    waiting_since: Option<usize>,
}

impl InFlightBody {
    fn new(body: ResponseBody, in_flight: InFlight) -> Self {
        Self {
            body,
            in_flight,
            waiting_since: None,
        }
    }

    /// A part was handed over (`true`), and waits on the client from now; or none waits.
    fn set_waiting_on_client(&mut self, waiting: bool) {
        let activity = &self.in_flight.0;
        let now = waiting.then(|| (activity.period.load(Ordering::Acquire) % 2) as usize);
        if now != self.waiting_since {
            if let Some(was) = self.waiting_since {
                activity.waiting_on_client[was].fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(now) = now {
                activity.waiting_on_client[now].fetch_add(1, Ordering::AcqRel);
            }
            self.waiting_since = now;
        }
    }
}

impl hyper::body::Body for InFlightBody {
    type Data = hyper::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        // A part handed over waits on the client until the next is asked for or the body is
        // dropped. Over HTTP/1 the last part is written as the body is dropped (then the idle
        // limit covers it); over HTTP/2 the body is kept until its last part has found room
        // in the client's window, which a client that opens none never gives.
        this.set_waiting_on_client(matches!(polled, std::task::Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlightBody {
    fn drop(&mut self) {
        self.set_waiting_on_client(false);
    }
}

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
    run_serving_until_signal(
        service,
        background,
        settings,
        default_bind,
        discovery,
        async |bind, advertise, discovery, shutdown| {
            serve(service, app, &bind, &advertise, discovery, shutdown).await
        },
    )
    .await
}

/// [`run_until_signal`] with the server started by `start(bind, advertise, discovery,
/// shutdown)`.
pub async fn run_serving_until_signal(
    service: &str,
    background: Background,
    settings: &crate::config::Settings,
    default_bind: &str,
    discovery: Arc<dyn Discovery>,
    start: impl AsyncFnOnce(String, String, Arc<dyn Discovery>, Shutdown) -> Result<Serving, ServeError>,
) -> Result<(), Box<dyn std::error::Error>> {
    let bind: String = settings.get_or("http_bind", default_bind.to_owned())?;
    let advertise: String = settings.get_or("advertise_address", "127.0.0.1".to_owned())?;
    // Under Nomad the job's service block registers the instance; registering again from
    // here would list it twice. Nomad also leaves discovery for it, and its shutdown_delay
    // is the grace period.
    let (discovery, grace): (Arc<dyn Discovery>, Duration) =
        if settings.get_or("self_register", true)? {
            let grace_ms: u64 = settings.get_or("shutdown_grace_ms", 2000)?;
            (discovery, Duration::from_millis(grace_ms))
        } else {
            (
                Arc::new(crate::discovery::LocalDiscovery::new()),
                Duration::ZERO,
            )
        };
    let stop_serving = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let tasks = background.spawn(&stop_background);
    let shutdown = Shutdown {
        token: stop_serving.clone(),
        grace,
    };
    let serving = start(bind, advertise, discovery, shutdown).await?;
    tracing::info!(service, url = %serving.url(), "listening");
    termination_signal().await;
    stop_serving.cancel();
    serving.task.await??;
    // The background tasks stop last: the outbox relay's last pass then finds the writes of
    // every request answered, the grace period's included. A request still busy 10 s after the
    // stop is no longer waited for; whatever it commits later stays in the outbox and is
    // relayed by the next start.
    stop_background.cancel();
    for task in tasks {
        task.await.ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::BrokenRegistry;

    #[tokio::test]
    async fn once_stopped_new_connections_are_refused_while_those_in_flight_are_answered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (answer, answered) = tokio::sync::watch::channel(false);
        let app = poem::endpoint::make(move |_| {
            let mut answered = answered.clone();
            async move {
                let _ = answered.wait_for(|go| *go).await;
                "done"
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_connections(
            listener,
            PoemHandler::new(app),
            stop.clone(),
        ));
        let mut in_flight = tokio::net::TcpStream::connect(addr).await.unwrap();
        in_flight
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let refused = async {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), refused)
            .await
            .expect("connections refused once stopped, not left waiting in the backlog");
        answer.send_replace(true);
        let mut received = String::new();
        in_flight.read_to_string(&mut received).await.unwrap();
        assert!(received.starts_with("HTTP/1.1 200"), "{received}");
        assert!(received.ends_with("done"), "{received}");
        server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_that_does_not_answer_holds_the_stop_up_for_the_limit_only() {
        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        let stopping = stop_when_told(
            Arc::new(BrokenRegistry::Hangs),
            "instance".to_owned(),
            shutdown.clone().into(),
            stop.clone(),
            Vec::new(),
        );
        let started = tokio::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(DEREGISTER_LIMIT * 2, stopping)
            .await
            .expect("stopped, though the registry never answered")
            .unwrap()
            .unwrap();
        assert!(stop.is_cancelled());
        assert_eq!(started.elapsed(), DEREGISTER_LIMIT);
    }
}
