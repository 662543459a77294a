//! Outgoing federation requests (server-server API, "Request Authentication"): the other
//! server's name is resolved ([`super::resolve`]), the request is made over HTTPS with
//! the certificate checked for the name the resolution says (unless
//! `federation_verify_certificates` is off, for tests), signed with our key in an
//! `X-Matrix` header naming the `destination`, and never follows a redirect.
//!
//! One HTTP client (one connection pool) serves every destination: the resolved addresses
//! are handed to it through [`Pinned`], its DNS resolver, so a connection goes where the
//! resolution said while TLS checks the name it said.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use ruma::{
    OwnedServerName, ServerName,
    api::{
        IncomingResponse, OutgoingRequest,
        auth_scheme::{AuthScheme, NoAuthentication},
        error::{ErrorBody, ErrorKind, FromHttpResponseError},
        federation::authentication::{ServerSignatures, ServerSignaturesInput},
        path_builder::PathBuilder,
    },
    signatures::Ed25519KeyPair,
};

use super::resolve::{Destination, Resolver};
use crate::{Error, Result, service::server_keys::ServerKeys};

/// Time to open a connection, and for a whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read from another server.
pub const MAX_RESPONSE: usize = 32 << 20;
/// Names [`Pinned`] remembers at most; beyond it the table starts again (a name missing from
/// it is only looked up again).
const MAX_PINNED: usize = 4_096;

/// The HTTP client's DNS resolver: answers with the addresses the last resolution of a
/// name found, so requests go where server-name resolution (SRV, well-known) sent them.
#[derive(Default)]
struct Pinned(Mutex<HashMap<String, Vec<SocketAddr>>>);

impl Pinned {
    fn pin(&self, name: &str, addrs: &[SocketAddr]) {
        let mut table = self.0.lock().expect("pinned addresses");
        if table.len() >= MAX_PINNED && !table.contains_key(name) {
            table.clear();
        }
        table.insert(name.to_owned(), addrs.to_vec());
    }
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs = self
            .0
            .lock()
            .expect("pinned addresses")
            .get(name.as_str())
            .cloned();
        Box::pin(async move {
            match addrs {
                Some(addrs) if !addrs.is_empty() => {
                    Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
                }
                _ => Err(format!("{} was not resolved as a Matrix server", name.as_str()).into()),
            }
        })
    }
}

/// How a request authenticates, for the two schemes federation uses.
pub trait FederationAuth: AuthScheme {
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        key_pair: &'a Ed25519KeyPair,
    ) -> Self::Input<'a>;
}

impl FederationAuth for ServerSignatures {
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        key_pair: &'a Ed25519KeyPair,
    ) -> ServerSignaturesInput<'a> {
        ServerSignaturesInput::new(origin.to_owned(), destination.to_owned(), key_pair)
    }
}

impl FederationAuth for NoAuthentication {
    fn input(_: &ServerName, _: &ServerName, _: &Ed25519KeyPair) {}
}

pub struct FederationClient {
    server_name: OwnedServerName,
    /// Non-public ranges other servers may be at (`federation_ip_range_allowlist`).
    allowed_ranges: Vec<ipnet::IpNet>,
    keys: Arc<ServerKeys>,
    resolver: Arc<Resolver>,
    pinned: Arc<Pinned>,
    http: reqwest::Client,
}

impl FederationClient {
    pub fn new(
        server_name: OwnedServerName,
        keys: Arc<ServerKeys>,
        resolver: Arc<Resolver>,
        verify_certificates: bool,
        allowed_ranges: Vec<ipnet::IpNet>,
    ) -> Result<Self> {
        let pinned = Arc::new(Pinned::default());
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::clone(&pinned))
            // The spec: "Servers MUST NOT follow redirects" for federation requests.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("conduit/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(!verify_certificates)
            .build()
            .map_err(|e| Error::internal(format!("federation HTTP client: {e}")))?;
        Ok(Self {
            server_name,
            allowed_ranges,
            keys,
            resolver,
            pinned,
            http,
        })
    }

    /// Sends `request` to `destination` and reads its answer. A Matrix error from the other
    /// server comes back with its status and errcode, the message naming the server; a
    /// server that cannot be reached is `502 M_UNKNOWN` naming it.
    pub async fn send<T>(&self, destination: &ServerName, request: T) -> Result<T::IncomingResponse>
    where
        T: OutgoingRequest<EndpointError = ruma::api::error::Error>,
        T::Authentication: FederationAuth,
        for<'a> T::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let response = self
            .send_raw(destination, request, MAX_RESPONSE as u64)
            .await
            .map_err(|error| match error {
                Fetch::TooLarge => {
                    Error::remote_unreachable(destination, "its answer is too large")
                }
                Fetch::Failed(error) => error,
            })?;
        read_answer::<T::IncomingResponse>(destination, response)
    }

    /// Sends `request` to `destination` and hands back its answer as it came (any status),
    /// with at most `limit` bytes of body: for answers a caller reads itself (media).
    pub async fn send_raw<T>(
        &self,
        destination: &ServerName,
        request: T,
        limit: u64,
    ) -> std::result::Result<http::Response<Bytes>, Fetch>
    where
        T: OutgoingRequest,
        T::Authentication: FederationAuth,
        for<'a> T::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let (target, base) = self.target(destination).await?;
        let auth = T::Authentication::input(&self.server_name, destination, self.keys.keypair());
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&base, auth, ())
            .map_err(|e| Error::internal(format!("federation request: {e}")))?;
        self.execute(destination, &target, &base, http_request, limit)
            .await
    }

    /// An unsigned `GET` of `path_and_query` (which starts with `/`) on `destination`, for
    /// the deprecated unauthenticated media endpoints old servers still serve. The answer as
    /// it came, with at most `limit` bytes of body.
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        limit: u64,
    ) -> std::result::Result<http::Response<Bytes>, Fetch> {
        let (target, base) = self.target(destination).await?;
        let http_request = http::Request::get(format!("{base}{path_and_query}"))
            .body(Vec::new())
            .map_err(|e| Error::internal(format!("federation request: {e}")))?;
        self.execute(destination, &target, &base, http_request, limit)
            .await
    }

    /// Where `destination` is, and the base URL for it.
    async fn target(&self, destination: &ServerName) -> Result<(Destination, String)> {
        if destination == self.server_name {
            return Err(Error::internal(format!(
                "a federation request to ourselves ({destination})"
            )));
        }
        let target = self.resolver.resolve(destination).await?;
        let base = self
            .base_url(&target)
            .map_err(|detail| Error::remote_unreachable(destination, detail))?;
        Ok((target, base))
    }

    async fn execute(
        &self,
        destination: &ServerName,
        target: &Destination,
        base: &str,
        http_request: http::Request<Vec<u8>>,
        limit: u64,
    ) -> std::result::Result<http::Response<Bytes>, Fetch> {
        let unreachable = |detail: String| Error::remote_unreachable(destination, detail);
        let (parts, body) = http_request.into_parts();
        let url = parts.uri.to_string();
        let mut outgoing = self
            .http
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body);
        if target.host != host_of_url(base) {
            outgoing = outgoing.header(http::header::HOST, target.host.as_str());
        }
        let response = outgoing
            .send()
            .await
            .map_err(|e| unreachable(e.without_url().to_string()))?;
        let status = response.status();
        // ruma reads any status below 400 as success: a redirect (never followed) or any
        // other non-2xx answer would pass for an empty success.
        if !status.is_success() && !status.is_client_error() && !status.is_server_error() {
            return Err(unreachable(format!(
                "it answered {status}, and federation requests do not follow redirects"
            ))
            .into());
        }
        let headers = response.headers().clone();
        let body = read_limited(response, limit)
            .await
            .map_err(|error| match error {
                ReadError::TooLarge => Fetch::TooLarge,
                ReadError::Failed(detail) => Fetch::Failed(unreachable(detail)),
            })?;
        let mut http_response = http::Response::new(body);
        *http_response.status_mut() = status;
        *http_response.headers_mut() = headers;
        Ok(http_response)
    }

    /// `https://<tls name>:<port>`, the name pinned to the resolved addresses.
    fn base_url(&self, target: &Destination) -> std::result::Result<String, String> {
        let first = target
            .addrs
            .first()
            .ok_or_else(|| "no address found".to_owned())?;
        let port = first.port();
        // A connection goes to the URL's port, so only addresses on that port are used, and
        // only public ones unless allowed (no reaching into our own network on a request's
        // say-so).
        let addrs: Vec<SocketAddr> = target
            .addrs
            .iter()
            .copied()
            .filter(|addr| addr.port() == port && self.may_connect(addr.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(format!(
                "its address is not public ({}); federation_ip_range_allowlist allows such \
                 addresses",
                first.ip()
            ));
        }
        let host = match target.tls_name.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            Ok(std::net::IpAddr::V4(ip)) => ip.to_string(),
            Err(_) => {
                self.pinned.pin(&target.tls_name, &addrs);
                target.tls_name.clone()
            }
        };
        Ok(format!("https://{host}:{port}"))
    }
}

impl FederationClient {
    /// Public addresses, and non-public ones in `federation_ip_range_allowlist`.
    fn may_connect(&self, ip: std::net::IpAddr) -> bool {
        crate::service::media::is_public_address(ip)
            || self.allowed_ranges.iter().any(|range| range.contains(&ip))
    }
}

/// The `Host` reqwest sends for `base` (`host:port`).
fn host_of_url(base: &str) -> &str {
    base.trim_start_matches("https://")
}

/// Why [`FederationClient::send_raw`] has no answer: the answer was larger than allowed,
/// or anything else (the server unreachable, our request unbuildable).
#[derive(Debug)]
pub enum Fetch {
    TooLarge,
    Failed(Error),
}

impl From<Error> for Fetch {
    fn from(error: Error) -> Self {
        Self::Failed(error)
    }
}

/// Reads the answer `response` of `destination` as ruma's `R`: a Matrix error passed on
/// ([`remote_error`]), anything unreadable `502`.
pub fn read_answer<R>(destination: &ServerName, response: http::Response<Bytes>) -> Result<R>
where
    R: IncomingResponse<EndpointError = ruma::api::error::Error>,
{
    R::try_from_http_response(response).map_err(|error| match error {
        FromHttpResponseError::Server(error) => remote_error(destination, error),
        other => Error::remote_unreachable(
            destination,
            format!("its answer could not be read: {other}"),
        ),
    })
}

/// Why a body could not be read.
pub(crate) enum ReadError {
    TooLarge,
    Failed(String),
}

/// Reads a response body, failing past `limit` bytes (checked against a declared length
/// before anything is read, and as the body arrives).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
) -> std::result::Result<Bytes, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Failed(e.without_url().to_string()))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Another server's Matrix error, passed on with its status and errcode: except a `401`
/// (the other server did not accept our signature; passed on, a client would take it
/// for its own token being refused) and server errors, which are `502`.
pub(crate) fn remote_error(server: &ServerName, error: ruma::api::error::Error) -> Error {
    if error.status_code == StatusCode::UNAUTHORIZED || error.status_code.is_server_error() {
        let detail = match &error.body {
            ErrorBody::Standard(body) => body.message.clone(),
            _ => error.status_code.to_string(),
        };
        return Error::remote_unreachable(server, format!("it answered {detail}"));
    }
    match error.body {
        ErrorBody::Standard(body) => Error::with_status(
            error.status_code,
            body.kind,
            format!("{server} answered: {}", body.message),
        ),
        _ => Error::with_status(
            StatusCode::BAD_GATEWAY,
            ErrorKind::Unknown,
            format!(
                "{server} answered {} without a Matrix error",
                error.status_code
            ),
        ),
    }
}

/// Key fetching through the federation client: the spec's server-name resolution and
/// certificate checks apply to it as to every request to another server.
impl super::keys::KeyFetch for FederationClient {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<ruma::serde::Raw<ruma::api::federation::discovery::ServerSigningKeys>>,
    > {
        use ruma::api::federation::discovery::get_server_keys::v2 as get;
        Box::pin(async move { Ok(self.send(server, get::Request::new()).await?.server_key) })
    }

    fn notary_query<'a>(
        &'a self,
        notary: &'a ServerName,
        criteria: &'a std::collections::BTreeMap<
            OwnedServerName,
            std::collections::BTreeMap<
                ruma::OwnedServerSigningKeyId,
                ruma::api::federation::discovery::get_remote_server_keys_batch::v2::QueryCriteria,
            >,
        >,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<Vec<ruma::serde::Raw<ruma::api::federation::discovery::ServerSigningKeys>>>,
    > {
        use ruma::api::federation::discovery::get_remote_server_keys_batch::v2 as query;
        Box::pin(async move {
            Ok(self
                .send(notary, query::Request::new(criteria.clone()))
                .await?
                .server_keys)
        })
    }
}
