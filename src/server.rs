//! Serving: binds nothing itself. [`run`] takes a listener that is already bound (so tests
//! and `port = 0` work), optionally wraps connections in TLS, serves the router until the
//! shutdown future resolves, then flushes the store. Alongside, it runs the task that writes
//! devices' last-seen times, and writes the rest at shutdown.

use std::{future::Future, io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::serve::ListenerExt;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};

use crate::{
    api,
    service::{Services, devices},
};

/// Serves until `shutdown` resolves, then waits for open requests and flushes the database.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Each request carries its peer address as `ConnectInfo<SocketAddr>` (devices' last
    // seen address).
    let app =
        api::router(Arc::clone(&services)).into_make_service_with_connect_info::<SocketAddr>();
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
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            // `tap_io` only so that axum fills in `ConnectInfo` for a listener of our own.
            let listener = TlsListener::new(listener, acceptor)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    let _ = stop_flusher.send(());
    let _ = seen_flusher.await;
    if let Err(error) = services.devices.flush_seen().await {
        tracing::error!(%error, "could not write last-seen times at shutdown");
    }
    served?;
    services.db.flush_blocking().map_err(io::Error::other)?;
    tracing::info!("stopped; database flushed");
    Ok(())
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

/// A listener that hands out connections whose TLS handshake has finished. Handshakes run
/// in their own tasks with a time limit, so one slow client cannot hold up the others.
struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Typically out of file descriptors: back off briefly.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let ready = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if sender.is_closed() {
                    break;
                }
            }
        });
        Ok(Self {
            connections,
            local_addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
