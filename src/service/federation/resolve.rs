//! Finding other servers (server-server API, "Resolving server names").
//!
//! PLACEHOLDER until the full algorithm lands (branch `resolve`): only a server name with
//! an explicit port or an IP literal is resolved, through the system resolver.

use std::net::SocketAddr;

use ruma::ServerName;

use crate::{Error, Result};

/// Where and how to reach a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The `Host` header value.
    pub host: String,
    /// The name the server's certificate must be valid for (a hostname or an IP address).
    pub tls_name: String,
    /// Where to connect, in order of preference.
    pub addrs: Vec<SocketAddr>,
}

#[derive(Default)]
pub struct Resolver;

impl Resolver {
    pub async fn resolve(&self, server: &ServerName) -> Result<Destination> {
        let host = server.host();
        let port = server.port().unwrap_or(8448);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Error::internal(format!("cannot resolve {server}: {e}")))?
            .collect();
        Ok(Destination {
            host: server.to_string(),
            tls_name: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            addrs,
        })
    }
}
