//! Finding other servers (server-server API, "Resolving server names").
//!
//! [`Resolver::resolve`] turns a server name `hostname[:port]` into a [`Destination`]: the
//! addresses to connect to, the `Host` header to send and the name the server's TLS
//! certificate must be valid for. The spec's steps, in order:
//!
//! 1. `hostname` is an IP literal (`1.2.3.4`, `[::1]`): that address, on `port` or 8448.
//!    Host: the server name (with its port, if it has one); certificate: the IP address.
//! 2. An explicit `port`: the addresses of `hostname` (CNAME, AAAA, A) on `port`.
//!    Host: the server name (`hostname:port`); certificate: `hostname`.
//! 3. `GET https://hostname/.well-known/matrix/server`. A valid answer's `m.server` is
//!    `delegated[:dport]`, and then:
//!    1. `delegated` is an IP literal: that address, on `dport` or 8448. Host: `m.server`
//!       as given (the IP, with the port if one was given); certificate: the IP address.
//!    2. with `dport`: the addresses of `delegated` on `dport`. Host: `delegated:dport`;
//!       certificate: `delegated`.
//!    3. SRV `_matrix-fed._tcp.delegated`: each target's addresses on its port;
//!    4. (deprecated) SRV `_matrix._tcp.delegated`, when 3.3 found no record;
//!    5. the addresses of `delegated` on 8448.
//!
//!    In 3.3 to 3.5, Host and certificate are `delegated` (never an SRV target's name).
//! 4. When the well-known gave no valid answer: SRV `_matrix-fed._tcp.hostname`;
//! 5. (deprecated) SRV `_matrix._tcp.hostname`;
//! 6. the addresses of `hostname` on 8448. In 4 to 6, Host and certificate are `hostname`.
//!
//! SRV records are tried by priority, and within one priority in RFC 2782's weighted random
//! order; at most [`MAX_SRV_TARGETS`] targets are looked up. A lone record whose target is
//! `.` means the service is not offered there (RFC 2782): an error, as in Synapse. So is a
//! failed SRV lookup (other than "no such record"), as in Synapse; the caller may retry.
//!
//! **Well-known caching** (the spec asks for one; the figures are Synapse's): a valid answer
//! is kept as long as its `Cache-Control: max-age` (or `Expires`) says, clamped to 5 min–48 h,
//! else 24 h ± 10 %. An invalid or missing one (bad JSON, no `m.server`, non-200, no
//! connection) is kept 1 h ± 10 %, or only 2 min when the host had a valid answer within
//! the last 2 h past its expiry. From 80 % of an entry's life on it is fetched again, and
//! a valid entry that has not expired survives a *temporary* failure (no connection, 5xx,
//! too large). Redirects are followed (at most [`MAX_WELL_KNOWN_REDIRECTS`], https
//! only, never a URL already visited), bodies are read up to [`WELL_KNOWN_MAX_SIZE`]. The
//! cache holds at most [`WELL_KNOWN_CACHE_CAPACITY`] hosts (a few hundred bytes each); when
//! full, the entry stored longest ago is dropped.
//!
//! SRV answers are cached by hickory (per their TTLs, 8,192 entries at most), addresses by
//! the system's resolver, if at all. The final [`Destination`] is not cached here.
//!
//! The two outside sources are traits, [`Dns`] and [`WellKnownFetch`], so every branch is
//! tested without a network ([`Resolver::new`] with tables); [`Resolver::system`] uses the
//! real ones ([`SystemDns`], [`HttpsWellKnown`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::future::{BoxFuture, join_all};
use ruma::{OwnedServerName, ServerName};

use crate::{Error, Result};

mod system;
#[cfg(test)]
mod tests;

pub use system::{HttpsWellKnown, MAX_WELL_KNOWN_REDIRECTS, SystemDns};

/// The federation port when neither the server name nor DNS names one.
pub const DEFAULT_PORT: u16 = 8448;
/// The largest well-known body read (Synapse's limit); a larger one counts as unavailable.
pub const WELL_KNOWN_MAX_SIZE: usize = 50 * 1024;
/// How many hosts' well-known answers are kept at most.
pub const WELL_KNOWN_CACHE_CAPACITY: usize = 10_000;
/// How many SRV targets (in order) are looked up at most.
pub const MAX_SRV_TARGETS: usize = 8;
/// How many addresses a [`Destination`] lists at most.
pub const MAX_ADDRESSES: usize = 32;

/// A valid well-known without cache headers is kept this long (± [`JITTER`]).
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Cache headers are obeyed within these bounds (the spec recommends 48 h at most).
const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(5 * 60);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// A failed well-known is kept this long (± [`JITTER`]; the spec says "up to an hour")...
const WELL_KNOWN_INVALID_TTL: Duration = Duration::from_secs(3600);
/// ...or only this long when the host recently had a valid one (it may be briefly down).
const WELL_KNOWN_DOWN_TTL: Duration = Duration::from_secs(2 * 60);
/// How long past a valid answer's expiry a host counts as "recently had a valid one".
const WELL_KNOWN_REMEMBER_VALID: Duration = Duration::from_secs(2 * 3600);
/// From this fraction of an entry's life before its expiry on, it is fetched again.
const WELL_KNOWN_GRACE_FACTOR: f64 = 0.2;
/// Default and failure lifetimes vary by up to this fraction, so that entries made at the
/// same moment (a restart) do not all expire together.
const JITTER: f64 = 0.1;

/// Where to send a request for a server, and how (see the module doc for which step gives
/// what).
///
/// To connect: try `addrs` in order, with TLS for `tls_name` (SNI and certificate check: a
/// DNS name, or an IP address written without brackets) and the `Host` header `host`. The
/// ports of `addrs` may differ (SRV targets). With reqwest, which takes the port from the
/// URL, use `https://{tls_name}:{port}` (`[tls_name]` for IPv6) with
/// `resolve_to_addrs(tls_name, ..)` for one port at a time, and set `Host` explicitly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The `Host` header value.
    pub host: String,
    /// The name the server's certificate must be valid for: a hostname or an IP address.
    pub tls_name: String,
    /// Where to connect, in the order to try; never empty.
    pub addrs: Vec<SocketAddr>,
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host without a trailing dot; `.` for the root ("no service here").
    pub target: String,
}

/// A DNS lookup that failed for another reason than "no such record".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// DNS, as the resolution needs it.
pub trait Dns: Send + Sync {
    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`), unordered; empty when
    /// the name has none or does not exist.
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, LookupError>>;

    /// The addresses of `host` (CNAMEs followed, AAAA and A), in the order to try; empty or
    /// an error when there are none.
    fn ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>>;
}

/// A `200` answer to `GET https://{hostname}/.well-known/matrix/server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WellKnownResponse {
    /// The body, whatever its `Content-Type` (the spec says to assume JSON).
    pub body: Vec<u8>,
    /// How long the answer may be cached, from its `Cache-Control` / `Expires` headers
    /// (`None` without any; zero for `no-store` or a date in the past).
    pub cache_for: Option<Duration>,
}

/// Why there is no [`WellKnownResponse`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WellKnownError {
    /// No answer that says anything about the host: no connection, a timeout, a `5xx`, a
    /// body too large, too many redirects. A cached valid answer is kept over this.
    #[error("{0}")]
    Unavailable(String),
    /// The server answered, but not `200` (e.g. `404`: there is no well-known).
    #[error("{0}")]
    Refused(String),
}

/// Fetches the well-known for a host.
pub trait WellKnownFetch: Send + Sync {
    /// `GET https://{hostname}/.well-known/matrix/server`, redirects followed.
    fn fetch<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<WellKnownResponse, WellKnownError>>;
}

/// Resolves server names; holds the well-known cache. One per process.
pub struct Resolver {
    dns: Arc<dyn Dns>,
    well_known: Arc<dyn WellKnownFetch>,
    cache: Mutex<WellKnownCache>,
    /// Uniform random numbers, for SRV weights and cache jitter (fixed in tests).
    random: fn() -> u32,
}

impl Resolver {
    pub fn new(dns: Arc<dyn Dns>, well_known: Arc<dyn WellKnownFetch>) -> Self {
        Self {
            dns,
            well_known,
            cache: Mutex::new(WellKnownCache::new(WELL_KNOWN_CACHE_CAPACITY)),
            random: random_u32,
        }
    }

    /// The real resolver: SRV through hickory (`/etc/resolv.conf`), addresses through the
    /// system (so `/etc/hosts` and `localhost` work), the well-known over HTTPS, with the
    /// server's certificate checked unless `verify_certificates` is false (tests only).
    /// Well-known hosts are reached at public addresses only, or in `allowed` ranges.
    pub fn system(verify_certificates: bool, allowed: Vec<ipnet::IpNet>) -> Result<Self> {
        Ok(Self::new(
            Arc::new(SystemDns::new()?),
            Arc::new(HttpsWellKnown::new(verify_certificates, allowed)?),
        ))
    }

    /// Where and how to reach `server`. An error (`502 M_UNKNOWN`, naming the server) when
    /// it cannot be found.
    pub async fn resolve(&self, server: &ServerName) -> Result<Destination> {
        self.resolve_at(server, Instant::now()).await
    }

    async fn resolve_at(&self, server: &ServerName, now: Instant) -> Result<Destination> {
        match self.find(server, now).await {
            Ok(destination) => {
                tracing::debug!(%server, ?destination, "resolved server name");
                Ok(destination)
            }
            Err(reason) => {
                // The caller reports the error; a queue retrying a dead server would
                // fill the log at a higher level.
                tracing::debug!(%server, %reason, "could not resolve server name");
                Err(Error::remote_unreachable(server, reason))
            }
        }
    }

    /// The spec's steps (module doc); the error says why not, for humans.
    async fn find(&self, server: &ServerName, now: Instant) -> Result<Destination, String> {
        let hostname = server.host();
        let port = server.port();
        if port == Some(0) {
            return Err("port 0 in its name".into());
        }
        // Step 1.
        if let Some(ip) = ip_literal(hostname) {
            return Ok(Destination {
                host: server.to_string(),
                tls_name: ip.to_string(),
                addrs: vec![SocketAddr::new(ip, port.unwrap_or(DEFAULT_PORT))],
            });
        }
        // Step 2.
        if let Some(port) = port {
            return Ok(Destination {
                host: server.to_string(),
                tls_name: hostname.to_owned(),
                addrs: self.addresses(hostname, port).await?,
            });
        }
        // Step 3.
        if let Some(delegated) = self.delegated(hostname, now).await {
            let delegated_host = delegated.host();
            let delegated_port = delegated.port();
            // 3.1.
            if let Some(ip) = ip_literal(delegated_host) {
                return Ok(Destination {
                    host: delegated.to_string(),
                    tls_name: ip.to_string(),
                    addrs: vec![SocketAddr::new(ip, delegated_port.unwrap_or(DEFAULT_PORT))],
                });
            }
            // 3.2.
            if let Some(port) = delegated_port {
                return Ok(Destination {
                    host: delegated.to_string(),
                    tls_name: delegated_host.to_owned(),
                    addrs: self.addresses(delegated_host, port).await?,
                });
            }
            // 3.3 to 3.5.
            return Ok(Destination {
                host: delegated_host.to_owned(),
                tls_name: delegated_host.to_owned(),
                addrs: self.srv_or_default(delegated_host).await?,
            });
        }
        // Steps 4 to 6.
        Ok(Destination {
            host: hostname.to_owned(),
            tls_name: hostname.to_owned(),
            addrs: self.srv_or_default(hostname).await?,
        })
    }

    /// The addresses of `host` on `port`.
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let ips = self
            .dns
            .ip(host)
            .await
            .map_err(|error| format!("no address for {host} ({error})"))?;
        let addrs = with_port(ips, port);
        if addrs.is_empty() {
            return Err(format!("no address for {host}"));
        }
        Ok(addrs)
    }

    /// Steps 3.3 to 3.5 and 4 to 6: the SRV records of `hostname`, else `hostname` on 8448.
    async fn srv_or_default(&self, hostname: &str) -> Result<Vec<SocketAddr>, String> {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let name = format!("{service}.{hostname}");
            let records = self
                .dns
                .srv(&name)
                .await
                .map_err(|error| format!("the DNS lookup of {name} failed ({error})"))?;
            if records.is_empty() {
                continue;
            }
            if let [record] = &records[..]
                && record.target == "."
            {
                return Err(format!("{name} says there is no such service"));
            }
            let targets: Vec<SrvRecord> = order_srv(records, MAX_SRV_TARGETS, self.random)
                .into_iter()
                .filter(|record| record.target != "." && record.port != 0)
                .collect();
            let lookups = join_all(targets.iter().map(|record| self.dns.ip(&record.target))).await;
            let mut addrs = Vec::new();
            for (record, ips) in targets.iter().zip(lookups) {
                match ips {
                    Ok(ips) => addrs.extend(with_port(ips, record.port)),
                    Err(error) => {
                        tracing::debug!(target = %record.target, %error, "SRV target without address");
                    }
                }
            }
            dedup_in_order(&mut addrs);
            addrs.truncate(MAX_ADDRESSES);
            if addrs.is_empty() {
                return Err(format!("no address for the targets of {name}"));
            }
            return Ok(addrs);
        }
        self.addresses(hostname, DEFAULT_PORT).await
    }

    /// Step 3: the delegated server name from `hostname`'s well-known, cached (module doc);
    /// `None` when there is no valid one.
    async fn delegated(&self, hostname: &str, now: Instant) -> Option<OwnedServerName> {
        let previous = self.cache().get(hostname).cloned();
        if let Some(entry) = &previous
            && entry.is_fresh(now)
        {
            return entry.delegated.clone();
        }
        let outcome = match self.well_known.fetch(hostname).await {
            Ok(response) => parse_well_known(&response.body).map(|name| (name, response)),
            Err(error) => Err(error),
        };
        let had_valid_until = previous.as_ref().and_then(|entry| entry.had_valid_until);
        let entry = match outcome {
            Ok((delegated, response)) => {
                let ttl = match response.cache_for {
                    Some(ttl) => ttl.clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL),
                    None => self.jittered(WELL_KNOWN_DEFAULT_TTL),
                };
                CachedWellKnown {
                    delegated: Some(delegated),
                    fetched: now,
                    expires: now + ttl,
                    had_valid_until: Some(now + ttl + WELL_KNOWN_REMEMBER_VALID),
                }
            }
            Err(error) => {
                tracing::debug!(%hostname, %error, "no valid well-known");
                // A temporary failure keeps a valid answer that has not expired yet.
                if let WellKnownError::Unavailable(_) = error
                    && let Some(entry) = &previous
                    && entry.delegated.is_some()
                    && now < entry.expires
                {
                    return entry.delegated.clone();
                }
                let recently_valid = had_valid_until.is_some_and(|until| now < until);
                let ttl = self.jittered(if recently_valid {
                    WELL_KNOWN_DOWN_TTL
                } else {
                    WELL_KNOWN_INVALID_TTL
                });
                CachedWellKnown {
                    delegated: None,
                    fetched: now,
                    expires: now + ttl,
                    had_valid_until,
                }
            }
        };
        let delegated = entry.delegated.clone();
        self.cache().insert(hostname, entry);
        delegated
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, WellKnownCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `duration` ± [`JITTER`].
    fn jittered(&self, duration: Duration) -> Duration {
        let unit = f64::from((self.random)()) / f64::from(u32::MAX);
        duration.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
    }
}

/// The IP address of an IP-literal host (`1.2.3.4` or `[::1]`), else `None`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `ips` on `port`, without repeats, at most [`MAX_ADDRESSES`].
fn with_port(ips: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    dedup_in_order(&mut addrs);
    addrs.truncate(MAX_ADDRESSES);
    addrs
}

fn dedup_in_order(addrs: &mut Vec<SocketAddr>) {
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|addr| seen.insert(*addr));
}

/// The `m.server` of a well-known body, if the body is valid: a JSON object whose
/// `m.server` is a server name (appendices, "Server Name") with a port other than 0.
fn parse_well_known(body: &[u8]) -> Result<OwnedServerName, WellKnownError> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "m.server")]
        server: String,
    }
    let invalid = |reason: String| WellKnownError::Refused(format!("invalid well-known: {reason}"));
    let body: Body = serde_json::from_slice(body).map_err(|error| invalid(error.to_string()))?;
    let server = OwnedServerName::try_from(body.server)
        .map_err(|error| invalid(format!("m.server: {error}")))?;
    if server.port() == Some(0) {
        return Err(invalid("m.server has port 0".into()));
    }
    Ok(server)
}

/// The first `limit` of `records` in the order to try them (RFC 2782, "Usage rules"): by
/// priority, lowest first; within one priority, repeatedly pick at random with chances
/// proportional to the weights (zero-weight records first in the running sum, so they are
/// picked rarely). `random` gives uniform `u32`s.
fn order_srv(mut records: Vec<SrvRecord>, limit: usize, random: fn() -> u32) -> Vec<SrvRecord> {
    records.sort_by_key(|record| (record.priority, record.weight != 0));
    let mut ordered = Vec::with_capacity(limit.min(records.len()));
    for group in records.chunk_by(|a, b| a.priority == b.priority) {
        let mut left: Vec<&SrvRecord> = group.iter().collect();
        while !left.is_empty() && ordered.len() < limit {
            let total: u64 = left.iter().map(|record| u64::from(record.weight)).sum();
            let pick = u64::from(random()) % (total + 1);
            let mut running = 0;
            let index = left
                .iter()
                .position(|record| {
                    running += u64::from(record.weight);
                    running >= pick
                })
                .unwrap_or(left.len() - 1);
            ordered.push(left.remove(index).clone());
        }
    }
    ordered
}

fn random_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut bytes = [0; 4];
    // The system's random source does not fail on the platforms we run on; if it did,
    // the SRV order and cache jitter would only be less random.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// One host's well-known outcome.
#[derive(Clone, Debug)]
struct CachedWellKnown {
    /// The valid `m.server`, or `None` (no valid well-known).
    delegated: Option<OwnedServerName>,
    fetched: Instant,
    expires: Instant,
    /// Until when a failure counts as "recently had a valid answer" (shorter error TTL).
    had_valid_until: Option<Instant>,
}

impl CachedWellKnown {
    /// Whether to use the entry without asking again: before the last
    /// [`WELL_KNOWN_GRACE_FACTOR`] of its life.
    fn is_fresh(&self, now: Instant) -> bool {
        let life = self.expires.saturating_duration_since(self.fetched);
        now + life.mul_f64(WELL_KNOWN_GRACE_FACTOR) < self.expires
    }
}

/// Well-known outcomes by hostname, at most `capacity`; the one stored longest ago goes
/// first. Expired entries stay until pushed out: they still tell whether the host recently
/// had a valid answer.
struct WellKnownCache {
    entries: HashMap<String, (u64, CachedWellKnown)>,
    /// Insertion number → hostname, oldest first.
    order: BTreeMap<u64, String>,
    next: u64,
    capacity: usize,
}

impl WellKnownCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            capacity,
        }
    }

    fn get(&self, hostname: &str) -> Option<&CachedWellKnown> {
        self.entries.get(hostname).map(|(_, entry)| entry)
    }

    fn insert(&mut self, hostname: &str, entry: CachedWellKnown) {
        if let Some((number, _)) = self.entries.remove(hostname) {
            self.order.remove(&number);
        }
        while self.entries.len() >= self.capacity.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let number = self.next;
        self.next += 1;
        self.order.insert(number, hostname.to_owned());
        self.entries.insert(hostname.to_owned(), (number, entry));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}
