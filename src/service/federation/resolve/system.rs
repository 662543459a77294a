//! The real [`Dns`] and [`WellKnownFetch`]: SRV records through hickory, addresses through
//! the system's resolver (getaddrinfo), the well-known over HTTPS with reqwest.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{FutureExt, future::BoxFuture};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
};
use reqwest::{
    StatusCode, Url,
    header::{CACHE_CONTROL, EXPIRES, HeaderMap},
    redirect,
};

use super::{
    Dns, LookupError, SrvRecord, WELL_KNOWN_MAX_SIZE, WellKnownError, WellKnownFetch,
    WellKnownResponse,
};
use crate::{Error, Result};

/// How many redirects a well-known fetch follows at most.
pub const MAX_WELL_KNOWN_REDIRECTS: usize = 5;
/// A well-known fetch gives up after this long (connection, redirects and body).
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// SRV through hickory, configured from `/etc/resolv.conf`; A/AAAA through getaddrinfo.
pub struct SystemDns {
    resolver: TokioResolver,
}

impl SystemDns {
    /// Reads `/etc/resolv.conf`; without one, asks a DNS server on 127.0.0.1 (what glibc
    /// does then), never a public resolver nobody configured.
    pub fn new() -> Result<Self> {
        let builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot read the system DNS configuration; SRV lookups go to 127.0.0.1"
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                    )]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let resolver = builder
            .build()
            .map_err(|error| Error::internal(format!("DNS resolver: {error}")))?;
        Ok(Self { resolver })
    }
}

impl Dns for SystemDns {
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, LookupError>> {
        async move {
            // Fully qualified: the search domains of resolv.conf do not apply.
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            match self.resolver.srv_lookup(fqdn).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(SrvRecord {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: if srv.target.is_root() {
                                ".".to_owned()
                            } else {
                                srv.target.to_ascii().trim_end_matches('.').to_owned()
                            },
                        }),
                        _ => None,
                    })
                    .collect()),
                Err(error) if error.is_no_records_found() => Ok(Vec::new()),
                Err(error) => Err(LookupError(error.to_string())),
            }
        }
        .boxed()
    }

    fn ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>> {
        async move {
            let addrs = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|error| LookupError(error.to_string()))?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        }
        .boxed()
    }
}

/// The well-known client's DNS: the system's answers, without the addresses other servers
/// may not be reached at (not public, and not in `federation_ip_range_allowlist`).
struct AddressPolicy {
    allowed: Vec<ipnet::IpNet>,
}

impl AddressPolicy {
    fn allows(&self, ip: IpAddr) -> bool {
        crate::service::media::is_public_address(ip)
            || self.allowed.iter().any(|range| range.contains(&ip))
    }
}

impl reqwest::dns::Resolve for AddressPolicy {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let policy = AddressPolicy { allowed };
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|addr| policy.allows(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The well-known over HTTPS: redirects followed (https only, at most
/// [`MAX_WELL_KNOWN_REDIRECTS`], no loops), [`WELL_KNOWN_MAX_SIZE`] read at most.
pub struct HttpsWellKnown {
    client: reqwest::Client,
}

impl HttpsWellKnown {
    /// `verify_certificates: false` accepts any certificate (tests against self-signed
    /// servers only).
    ///
    /// Hosts are reached at public addresses only, or in `allowed` ranges
    /// (`federation_ip_range_allowlist`), redirects included.
    pub fn new(verify_certificates: bool, allowed: Vec<ipnet::IpNet>) -> Result<Self> {
        // reqwest is built without a default crypto provider; main installs ring, and this
        // makes sure of it where main did not run (tests). A no-op when one is installed.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(AddressPolicy { allowed });
        let redirects = Arc::clone(&policy);
        let client = reqwest::Client::builder()
            // A proxy would resolve the host itself, past the address check.
            .no_proxy()
            .https_only(true)
            .dns_resolver(policy)
            .redirect(redirect::Policy::custom(move |attempt| {
                // A redirect to an IP literal is not looked up, so it is checked here.
                let literal = attempt
                    .url()
                    .host_str()
                    .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
                    .and_then(|host| host.parse::<IpAddr>().ok());
                if let Some(ip) = literal
                    && !redirects.allows(ip)
                {
                    return attempt.error("redirect to an address that is not public");
                }
                match redirect_refusal(attempt.url(), attempt.previous()) {
                    Some(reason) => attempt.error(reason),
                    None => attempt.follow(),
                }
            }))
            .timeout(WELL_KNOWN_TIMEOUT)
            .tls_danger_accept_invalid_certs(!verify_certificates)
            .user_agent(concat!("conduit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::internal(format!("HTTP client: {error}")))?;
        Ok(Self { client })
    }

    async fn get(&self, hostname: &str) -> Result<WellKnownResponse, WellKnownError> {
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let mut response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| WellKnownError::Unavailable(describe(&error)))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(WellKnownError::Unavailable(format!("answered {status}")));
        }
        if status != StatusCode::OK {
            return Err(WellKnownError::Refused(format!("answered {status}")));
        }
        let too_large =
            || WellKnownError::Unavailable(format!("larger than {WELL_KNOWN_MAX_SIZE} bytes"));
        if response
            .content_length()
            .is_some_and(|length| length > WELL_KNOWN_MAX_SIZE as u64)
        {
            return Err(too_large());
        }
        let cache_for = cache_period_from_headers(response.headers(), SystemTime::now());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| WellKnownError::Unavailable(describe(&error)))?
        {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_SIZE {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(WellKnownResponse { body, cache_for })
    }
}

impl WellKnownFetch for HttpsWellKnown {
    fn fetch<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<WellKnownResponse, WellKnownError>> {
        self.get(hostname).boxed()
    }
}

/// Why a well-known redirect to `next` is not followed, after `previous` (the first URL
/// and the redirects so far), if it is not.
pub(super) fn redirect_refusal(next: &Url, previous: &[Url]) -> Option<&'static str> {
    // `previous` starts with the URL first asked for, which is no redirect.
    if previous.len() > MAX_WELL_KNOWN_REDIRECTS {
        Some("too many redirects")
    } else if next.scheme() != "https" {
        Some("redirected away from https")
    } else if previous.contains(next) {
        Some("redirect loop")
    } else {
        None
    }
}

/// How long a well-known answer may be cached according to its headers, as Synapse reads
/// them: `Cache-Control: no-store` is zero; a valid `max-age` is its value; else `Expires`
/// gives the time left (zero when past or unreadable, as RFC 9111 says); `None` without
/// either.
pub(super) fn cache_period_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for directive in value.split(',') {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age") {
                max_age = argument.and_then(|seconds| seconds.parse::<u64>().ok());
            }
        }
    }
    if let Some(seconds) = max_age {
        return Some(Duration::from_secs(seconds));
    }
    let expires = headers.get_all(EXPIRES).iter().next_back()?;
    let left = expires
        .to_str()
        .ok()
        .and_then(|date| httpdate::parse_http_date(date).ok())
        .and_then(|date| date.duration_since(now).ok())
        .unwrap_or(Duration::ZERO);
    Some(left)
}

/// An error with its causes, for logs and error messages (reqwest's own message is often
/// only "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
