//! Serving: binds nothing itself. [`run`] takes a listener that is already bound (so tests
//! and `port = 0` work), optionally wraps connections in TLS, serves the router until the
//! shutdown future resolves, then flushes the store. Alongside, it runs the task that writes
//! devices' last-seen times every minute, and writes the rest at shutdown.
//!
//! Connections are served here with hyper directly rather than through `axum::serve`, which
//! has no time limits: a client that opens a connection and never finishes its request would
//! hold a file descriptor for ever, and a few thousand of them exhaust a small machine.
//!
//! - **Open connections** are capped at `max_connections` (and by the open-files limit). At
//!   the cap the server stops accepting; new connections wait in the kernel's queue until
//!   one closes.
//! - **A connection's first request** must arrive, headers complete, within `header_timeout`
//!   of the connection being accepted (after the TLS handshake, which has its own limit).
//!   Otherwise it is closed. This also covers the bytes before hyper knows whether it is
//!   HTTP/1.1 or HTTP/2.
//! - **Later HTTP/1.1 requests:** hyper's header-read timeout (`header_timeout`) bounds
//!   each request head too. Its clock starts when hyper begins waiting for the next request,
//!   so on HTTP/1.1 it also bounds the wait between requests: an idle HTTP/1.1 connection
//!   is closed after the smaller of `header_timeout` and `keepalive_timeout`.
//! - **Idle connections** (no request in progress, HTTP/2 included) are shut down gracefully
//!   after `keepalive_timeout`, and dropped if they have not gone `CLOSE_GRACE` later.
//!   HTTP/2 connections are also pinged, so a vanished peer is noticed while a request is
//!   in progress.
//! - **Request bodies** must keep arriving: a gap of `header_timeout` without a byte fails
//!   the body, and the handler answers `400`.
//! - **Requests handled at once** are capped at `max_concurrent_requests`; more wait their
//!   turn. Long-polls (`/sync`, sliding sync, media downloads waiting for an upload) spend
//!   their time waiting, not working, and are not counted, so idle clients cannot starve the
//!   others.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo};
use http_body_util::BodyExt;
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tower_http::timeout::TimeoutBody;

use crate::{
    api,
    config::Config,
    service::{Services, devices},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const HTTP2_PING: Duration = Duration::from_secs(20);
/// File descriptors kept back from connections: the database, media files, push gateways.
const RESERVED_FILES: u64 = 128;
/// How long shutdown waits for open requests (the longest `/sync` long-poll is 60 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(65);
/// After a graceful close was asked for, how long an idle connection may take to go.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connection and request limits in force, from the configuration and the open-files
/// limit.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
}

impl Limits {
    /// The configured limits, with `max_connections` lowered to fit `open_files` (the soft
    /// open-files limit, if known).
    pub fn new(config: &Config, open_files: Option<u64>) -> Self {
        let configured = config.max_connections as usize;
        let max_connections = match open_files {
            Some(files) => {
                let room = usize::try_from(files.saturating_sub(RESERVED_FILES))
                    .unwrap_or(usize::MAX)
                    .max(1);
                if room < configured {
                    tracing::warn!(
                        "max_connections = {configured} does not fit the open-files limit \
                         ({files}); serving at most {room} connections"
                    );
                }
                configured.min(room)
            }
            None => configured,
        };
        Self {
            max_connections,
            max_concurrent_requests: config.max_concurrent_requests as usize,
            header_timeout: Duration::from_secs(config.header_timeout),
            keepalive_timeout: Duration::from_secs(config.keepalive_timeout),
        }
    }
}

/// Raises the soft limit on open files to the hard limit (every connection is a file
/// descriptor, and distributions often start services with a soft limit of 1024).
#[cfg(unix)]
pub fn raise_open_files_limit() {
    let Some(limit) = open_files_limits() else {
        return;
    };
    let before = limit.rlim_cur;
    if before >= limit.rlim_max {
        tracing::info!("open-files limit is {before}");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(
            "open-files limit raised from {before} to {}",
            limit.rlim_max
        );
    } else {
        // macOS refuses values above OPEN_MAX even when the hard limit is unlimited.
        tracing::warn!(
            "open-files limit is {before}; raising it to {} failed: {}",
            limit.rlim_max,
            io::Error::last_os_error()
        );
    }
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() {}

/// The soft and hard limits on open files, if they can be read.
#[cfg(unix)]
fn open_files_limits() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// The soft open-files limit in force, if there is one.
#[cfg(unix)]
fn current_open_files_limit() -> Option<u64> {
    let limit = open_files_limits()?;
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    // `rlim_t` is 32 bits wide on some targets (32-bit ARM Linux, say).
    #[allow(clippy::useless_conversion)]
    u64::try_from(limit.rlim_cur).ok()
}

#[cfg(not(unix))]
fn current_open_files_limit() -> Option<u64> {
    None
}

/// Serves until `shutdown` resolves, then waits for open requests and flushes the database.
/// A bound listener and, for HTTPS, its TLS acceptor.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

pub async fn run(
    listeners: Vec<Listener>,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Limits::new(&services.config, current_open_files_limit());
    tracing::info!(
        max_connections = limits.max_connections,
        max_concurrent_requests = limits.max_concurrent_requests,
        header_timeout = ?limits.header_timeout,
        keepalive_timeout = ?limits.keepalive_timeout,
        "connection limits"
    );
    let shared = Arc::new(Shared {
        app: TowerToHyperService::new(api::router(Arc::clone(&services))),
        requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        federation: Arc::new(Semaphore::new(FEDERATION_REQUESTS)),
        builder: builder(&limits),
        limits: limits.clone(),
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_flusher, flusher_stopped) = tokio::sync::oneshot::channel::<()>();
    let seen_flusher = tokio::spawn({
        let services = Arc::clone(&services);
        async move {
            let stop = async {
                let _ = flusher_stopped.await;
            };
            services
                .devices
                .flush_seen_until(devices::SEEN_FLUSH_INTERVAL, stop)
                .await
        }
    });
    // Shutdown: `stop` tells every connection to finish; `open` counts the tasks still
    // running (each holds a receiver). `closing` stops the accept loops.
    let (stop, stopped) = watch::channel(false);
    let (closing, closed) = watch::channel(false);
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                Arc::clone(&shared),
                Arc::clone(&connections),
                stopped.clone(),
                closed.clone(),
            ))
        })
        .collect();
    shutdown.await;
    let _ = closing.send(true);
    for accepting in loops {
        let _ = accepting.await;
    }
    drop(stopped);
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connection(s) still busy after {SHUTDOWN_GRACE:?}; stopping anyway",
            stop.receiver_count()
        );
    }
    // Last-seen times of the requests just served, then the final flush.
    let _ = stop_flusher.send(());
    let _ = seen_flusher.await;
    if let Err(error) = services.devices.flush_seen().await {
        tracing::error!(%error, "could not write last-seen times at shutdown");
    }
    services.db.flush_blocking().map_err(io::Error::other)?;
    tracing::info!("stopped; database flushed");
    Ok(())
}

/// Accepts connections on one listener until `closed` turns true.
async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
    mut closed: watch::Receiver<bool>,
) {
    let Listener { tcp: listener, tls } = listener;
    let mut shutdown = pin!(async move {
        let _ = closed.wait_for(|closed| *closed).await;
    });
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small answers whose body follows the headers in a second write (a cached
        // thumbnail, say) must not wait for the peer's delayed ACK (Nagle's algorithm):
        // the load benchmark saw 20 ms instead of 0.5 ms on such a request now and then.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let stopped = stopped.clone();
        match &tls {
            None => {
                tokio::spawn(serve_connection(stream, peer, shared, stopped, permit));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, shared, stopped, permit).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// What every connection task needs.
struct Shared {
    app: TowerToHyperService<axum::Router>,
    /// `max_concurrent_requests` permits.
    requests: Arc<Semaphore>,
    /// Turns for requests from other servers (`/_matrix/federation/`, `/_matrix/key/`),
    /// apart from clients' so no other server can take theirs; taken without waiting.
    federation: Arc<Semaphore>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_PING)
        .keep_alive_timeout(HTTP2_PING);
    builder
}

/// Serves one connection (plain or TLS) until it closes, is closed for a limit, or the
/// server stops. `_permit` is this connection's place under `max_connections`.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let (shared, activity) = (Arc::clone(&shared), Arc::clone(&activity));
        hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(Arc::clone(&shared), Arc::clone(&activity), peer, request)
        })
    };
    let limits = &shared.limits;
    let mut connection = pin!(shared.builder.serve_connection(TokioIo::new(io), service));
    let mut closing = false;
    loop {
        // While no request is in progress, how long before we act: `header_timeout` until
        // the first request has begun, `keepalive_timeout` after; once a close was asked
        // for, `CLOSE_GRACE`.
        let (before_first, between) = if closing {
            (CLOSE_GRACE, CLOSE_GRACE)
        } else {
            (limits.header_timeout, limits.keepalive_timeout)
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            _ = stopped.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.idle_for(before_first, between) => {
                if closing {
                    // A client that ignores the close: drop the connection.
                    tracing::debug!(%peer, "closing connection: it did not close when asked");
                    break;
                }
                if !activity.started.load(Ordering::Acquire) {
                    // A stalled client: nothing to finish, drop the connection.
                    tracing::debug!(%peer, "closing connection: no request within header_timeout");
                    break;
                }
                // Idle for keepalive_timeout: lets a response that is still being written
                // finish, then closes.
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// One request: counted as activity on its connection until its response body is finished,
/// and run under a `max_concurrent_requests` permit unless it is a long-poll.
async fn handle(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<axum::response::Response, Infallible> {
    let busy = activity.begin();
    // A body that stops arriving fails (the handler answers 400) after `header_timeout`
    // without a byte, so a stalled upload holds neither its turn nor the connection for ever.
    let body_timeout = shared.limits.header_timeout;
    let mut request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
    request.extensions_mut().insert(ConnectInfo(peer));
    let path = request.uri().path();
    let permit = if is_federation(path) {
        // Other servers get their own turns, and none is waited for: when all are taken
        // the answer is 429 at once (they retry), so requests that wait on a slow remote
        // key fetch can neither pile up nor take clients' turns.
        match Arc::clone(&shared.federation).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let busy = crate::Error::limit_exceeded(Duration::from_secs(1));
                return Ok(axum::response::IntoResponse::into_response(busy));
            }
        }
    } else if is_long_poll(path) {
        None
    } else {
        // The semaphore is never closed, so this only waits for a turn.
        Arc::clone(&shared.requests).acquire_owned().await.ok()
    };
    let response = hyper::service::Service::call(&shared.app, request).await?;
    drop(permit);
    // The connection stays busy until the body has been sent (or the client went away).
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &busy;
            frame
        }))
    }))
}

/// Requests from other servers handled at once (all servers together).
const FEDERATION_REQUESTS: usize = 32;

fn is_federation(path: &str) -> bool {
    path.starts_with("/_matrix/federation/") || path.starts_with("/_matrix/key/")
}

/// Requests that mostly wait for something to happen rather than work: `/sync` and sliding
/// sync long-polls, and media downloads, which wait for an upload still in progress.
fn is_long_poll(path: &str) -> bool {
    path.ends_with("/sync")
        || (path.starts_with("/_matrix/")
            && path.contains("/media/")
            && (path.contains("/download/") || path.contains("/thumbnail/")))
}

/// Requests in progress on one connection.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request has begun (its headers were read in full).
    started: AtomicBool,
    changed: Notify,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.started.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Busy(Arc::clone(self))
    }

    /// Resolves once no request has been in progress, without a break, for the limit that
    /// applies when the connection fell idle: `before_first` if no request has begun yet,
    /// `between` otherwise.
    async fn idle_for(&self, before_first: Duration, between: Duration) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the check, so a change right after it is not missed.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let limit = if self.started.load(Ordering::Acquire) {
                between
            } else {
                before_first
            };
            if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

/// Marks a request in progress until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// Loads the PEM certificate chain and private key named by `[global.tls]`.
pub fn tls_acceptor(certs: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(certs)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("global.tls.certs: cannot read {}: {e}", certs.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "global.tls.certs: no certificate in {}",
            certs.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("global.tls.key: cannot read {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("global.tls: certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_are_recognised() {
        for path in [
            "/_matrix/client/v3/sync",
            "/_matrix/client/r0/sync",
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            "/_matrix/client/v1/media/download/example.org/abc",
            "/_matrix/media/v3/thumbnail/example.org/abc",
        ] {
            assert!(is_long_poll(path), "{path}");
        }
        for path in [
            "/_matrix/client/versions",
            "/_matrix/client/v3/login",
            "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1",
            "/_matrix/media/v3/upload",
        ] {
            assert!(!is_long_poll(path), "{path}");
        }
    }

    #[test]
    fn max_connections_fits_the_open_files_limit() {
        let mut config = crate::config::tests_support::config();
        config.max_connections = 4096;
        assert_eq!(Limits::new(&config, None).max_connections, 4096);
        assert_eq!(Limits::new(&config, Some(1 << 20)).max_connections, 4096);
        assert_eq!(Limits::new(&config, Some(1024)).max_connections, 1024 - 128);
        assert_eq!(Limits::new(&config, Some(10)).max_connections, 1);
    }

    #[tokio::test]
    async fn idle_waits_for_requests_to_finish() {
        let activity = Arc::new(Activity::default());
        let busy = activity.begin();
        let limit = Duration::from_millis(20);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), activity.idle_for(limit, limit))
                .await
                .is_err(),
            "a request in progress is not idle"
        );
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), activity.idle_for(limit, limit))
            .await
            .expect("idle once the request finished");
    }

    #[tokio::test]
    async fn the_keep_alive_limit_applies_once_a_request_has_begun() {
        let activity = Arc::new(Activity::default());
        let (long, short) = (Duration::from_secs(600), Duration::from_millis(20));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), activity.idle_for(long, short))
                .await
                .is_err(),
            "before the first request, the first limit applies"
        );
        // The same wait, begun before the request: the limit is chosen when it falls idle.
        let idle = activity.idle_for(long, short);
        let request = async {
            tokio::task::yield_now().await;
            drop(activity.begin());
        };
        let ((), ()) = tokio::join!(
            async {
                tokio::time::timeout(Duration::from_secs(5), idle)
                    .await
                    .expect("idle for the keep-alive limit after the request");
            },
            request
        );
    }
}
