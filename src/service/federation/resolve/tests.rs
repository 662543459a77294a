//! Every branch of the resolution, with DNS and well-known answered from tables.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, future::BoxFuture};
use http::StatusCode;
use ruma::ServerName;

use super::*;

/// DNS from tables: SRV records by name, addresses by host; a name in `failing` fails.
#[derive(Default)]
struct TableDns {
    srv: HashMap<String, Vec<SrvRecord>>,
    ips: HashMap<String, Vec<IpAddr>>,
    failing: Vec<String>,
    asked: Mutex<Vec<String>>,
}

impl TableDns {
    fn srv(mut self, name: &str, records: &[(u16, u16, u16, &str)]) -> Self {
        let records = records
            .iter()
            .map(|&(priority, weight, port, target)| SrvRecord {
                priority,
                weight,
                port,
                target: target.to_owned(),
            })
            .collect();
        self.srv.insert(name.to_owned(), records);
        self
    }

    fn host(mut self, host: &str, ips: &[&str]) -> Self {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.ips.insert(host.to_owned(), ips);
        self
    }

    fn failing(mut self, name: &str) -> Self {
        self.failing.push(name.to_owned());
        self
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    fn answer<T: Clone + Default>(
        &self,
        kind: &str,
        name: &str,
        table: &HashMap<String, T>,
    ) -> Result<T, LookupError> {
        self.asked.lock().unwrap().push(format!("{kind} {name}"));
        if self.failing.iter().any(|failing| failing == name) {
            return Err(LookupError("SERVFAIL".into()));
        }
        Ok(table.get(name).cloned().unwrap_or_default())
    }
}

impl Dns for TableDns {
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, LookupError>> {
        let answer = self.answer("SRV", name, &self.srv);
        async move { answer }.boxed()
    }

    fn ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>> {
        let answer = self.answer("IP", host, &self.ips);
        async move { answer }.boxed()
    }
}

/// Well-known answers from a table (changeable between calls); a host not in it is a 404.
#[derive(Default)]
struct TableWellKnown {
    answers: Mutex<HashMap<String, Result<WellKnownResponse, WellKnownError>>>,
    fetches: Mutex<Vec<String>>,
}

impl TableWellKnown {
    fn set(&self, host: &str, answer: Result<WellKnownResponse, WellKnownError>) {
        self.answers.lock().unwrap().insert(host.to_owned(), answer);
    }

    fn body(&self, host: &str, body: &str, cache_for: Option<Duration>) {
        self.set(
            host,
            Ok(WellKnownResponse {
                body: body.as_bytes().to_vec(),
                cache_for,
            }),
        );
    }

    fn server(&self, host: &str, m_server: &str) {
        self.body(host, &format!(r#"{{"m.server": "{m_server}"}}"#), None);
    }

    fn fetches(&self) -> usize {
        self.fetches.lock().unwrap().len()
    }
}

impl WellKnownFetch for TableWellKnown {
    fn fetch<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<WellKnownResponse, WellKnownError>> {
        self.fetches.lock().unwrap().push(hostname.to_owned());
        let answer = self
            .answers
            .lock()
            .unwrap()
            .get(hostname)
            .cloned()
            .unwrap_or_else(|| Err(WellKnownError::Refused("answered 404".into())));
        async move { answer }.boxed()
    }
}

fn middle() -> u32 {
    u32::MAX / 2
}

fn resolver(dns: TableDns, well_known: &Arc<TableWellKnown>) -> (Resolver, Arc<TableDns>) {
    let dns = Arc::new(dns);
    let mut resolver = Resolver::new(dns.clone(), well_known.clone());
    resolver.random = middle;
    (resolver, dns)
}

fn name(server: &str) -> &ServerName {
    <&ServerName>::try_from(server).unwrap()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|addr| addr.parse().unwrap()).collect()
}

fn destination(host: &str, tls_name: &str, list: &[&str]) -> Destination {
    Destination {
        host: host.to_owned(),
        tls_name: tls_name.to_owned(),
        addrs: addrs(list),
    }
}

async fn resolve(dns: TableDns, well_known: &Arc<TableWellKnown>, server: &str) -> Destination {
    let (resolver, _) = resolver(dns, well_known);
    resolver.resolve(name(server)).await.unwrap()
}

// Step 1: IP literals.

#[tokio::test]
async fn ipv4_literal_without_port_uses_8448() {
    let well_known = Arc::new(TableWellKnown::default());
    let (resolver, dns) = resolver(TableDns::default(), &well_known);
    let found = resolver.resolve(name("1.2.3.4")).await.unwrap();
    assert_eq!(found, destination("1.2.3.4", "1.2.3.4", &["1.2.3.4:8448"]));
    assert!(dns.asked().is_empty());
    assert_eq!(well_known.fetches(), 0);
}

#[tokio::test]
async fn ipv4_literal_with_port() {
    let well_known = Arc::new(TableWellKnown::default());
    let found = resolve(TableDns::default(), &well_known, "1.2.3.4:8000").await;
    assert_eq!(
        found,
        destination("1.2.3.4:8000", "1.2.3.4", &["1.2.3.4:8000"])
    );
}

#[tokio::test]
async fn ipv6_literal_without_and_with_port() {
    let well_known = Arc::new(TableWellKnown::default());
    let found = resolve(TableDns::default(), &well_known, "[2001:db8::1]").await;
    assert_eq!(
        found,
        destination("[2001:db8::1]", "2001:db8::1", &["[2001:db8::1]:8448"])
    );
    let found = resolve(TableDns::default(), &well_known, "[::1]:8009").await;
    assert_eq!(found, destination("[::1]:8009", "::1", &["[::1]:8009"]));
    assert_eq!(well_known.fetches(), 0);
}

// Step 2: explicit port.

#[tokio::test]
async fn hostname_with_port_uses_its_addresses_and_no_well_known_or_srv() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "elsewhere.org");
    let dns = TableDns::default()
        .host("example.org", &["2001:db8::5", "192.0.2.5"])
        .srv(
            "_matrix-fed._tcp.example.org",
            &[(0, 0, 1, "srv.example.org")],
        );
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org:8443")).await.unwrap();
    assert_eq!(
        found,
        destination(
            "example.org:8443",
            "example.org",
            &["[2001:db8::5]:8443", "192.0.2.5:8443"]
        )
    );
    assert_eq!(dns.asked(), ["IP example.org"]);
    assert_eq!(well_known.fetches(), 0);
}

// Step 3: well-known delegation.

#[tokio::test]
async fn well_known_to_ip_literal() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "192.0.2.7");
    well_known.server("example.net", "[2001:db8::7]:1234");
    let found = resolve(TableDns::default(), &well_known, "example.org").await;
    assert_eq!(
        found,
        destination("192.0.2.7", "192.0.2.7", &["192.0.2.7:8448"])
    );
    let found = resolve(TableDns::default(), &well_known, "example.net").await;
    assert_eq!(
        found,
        destination("[2001:db8::7]:1234", "2001:db8::7", &["[2001:db8::7]:1234"])
    );
}

#[tokio::test]
async fn well_known_to_name_with_port_skips_srv() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "matrix.example.org:443");
    let dns = TableDns::default()
        .host("matrix.example.org", &["192.0.2.8"])
        .srv(
            "_matrix-fed._tcp.matrix.example.org",
            &[(0, 0, 1, "wrong.example.org")],
        );
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org")).await.unwrap();
    assert_eq!(
        found,
        destination(
            "matrix.example.org:443",
            "matrix.example.org",
            &["192.0.2.8:443"]
        )
    );
    assert_eq!(dns.asked(), ["IP matrix.example.org"]);
}

#[tokio::test]
async fn well_known_to_name_with_srv() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "matrix.example.org");
    let dns = TableDns::default()
        .srv(
            "_matrix-fed._tcp.matrix.example.org",
            &[
                (10, 0, 8000, "b.example.net"),
                (5, 0, 8001, "a.example.net"),
            ],
        )
        .srv(
            "_matrix._tcp.matrix.example.org",
            &[(0, 0, 1, "deprecated.example.net")],
        )
        .host("a.example.net", &["192.0.2.10"])
        .host("b.example.net", &["192.0.2.11", "2001:db8::11"]);
    let found = resolve(dns, &well_known, "example.org").await;
    // Host and certificate stay the delegated name, never the SRV target's.
    assert_eq!(
        found,
        destination(
            "matrix.example.org",
            "matrix.example.org",
            &["192.0.2.10:8001", "192.0.2.11:8000", "[2001:db8::11]:8000"]
        )
    );
}

#[tokio::test]
async fn well_known_to_name_with_deprecated_srv() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "matrix.example.org");
    let dns = TableDns::default()
        .srv(
            "_matrix._tcp.matrix.example.org",
            &[(0, 0, 8448, "old.example.net")],
        )
        .host("old.example.net", &["192.0.2.12"]);
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org")).await.unwrap();
    assert_eq!(
        found,
        destination(
            "matrix.example.org",
            "matrix.example.org",
            &["192.0.2.12:8448"]
        )
    );
    assert_eq!(
        dns.asked(),
        [
            "SRV _matrix-fed._tcp.matrix.example.org",
            "SRV _matrix._tcp.matrix.example.org",
            "IP old.example.net"
        ]
    );
}

#[tokio::test]
async fn well_known_to_name_without_srv_uses_8448() {
    let well_known = Arc::new(TableWellKnown::default());
    well_known.server("example.org", "matrix.example.org");
    let dns = TableDns::default()
        .host("matrix.example.org", &["192.0.2.13"])
        // The original name's SRV records are not consulted once the well-known is valid.
        .srv(
            "_matrix-fed._tcp.example.org",
            &[(0, 0, 1, "wrong.example.net")],
        );
    let found = resolve(dns, &well_known, "example.org").await;
    assert_eq!(
        found,
        destination(
            "matrix.example.org",
            "matrix.example.org",
            &["192.0.2.13:8448"]
        )
    );
}

// Steps 4 to 6: no valid well-known.

#[tokio::test]
async fn invalid_well_known_answers_fall_through_to_srv() {
    let bodies = [
        "not json",
        "[]",
        "{}",
        r#"{"m.server": 42}"#,
        r#"{"m.server": ""}"#,
        r#"{"m.server": "bad host!"}"#,
        r#"{"m.server": "example.com:notaport"}"#,
        r#"{"m.server": "example.com:0"}"#,
    ];
    for body in bodies {
        let well_known = Arc::new(TableWellKnown::default());
        well_known.body("example.org", body, None);
        let dns = TableDns::default()
            .srv(
                "_matrix-fed._tcp.example.org",
                &[(0, 0, 8449, "fed.example.net")],
            )
            .host("fed.example.net", &["192.0.2.20"]);
        let found = resolve(dns, &well_known, "example.org").await;
        assert_eq!(
            found,
            destination("example.org", "example.org", &["192.0.2.20:8449"]),
            "{body}"
        );
    }
}

#[tokio::test]
async fn well_known_errors_fall_through_to_srv() {
    for error in [
        WellKnownError::Refused("answered 404".into()),
        WellKnownError::Unavailable("connection refused".into()),
    ] {
        let well_known = Arc::new(TableWellKnown::default());
        well_known.set("example.org", Err(error));
        let dns = TableDns::default()
            .srv(
                "_matrix-fed._tcp.example.org",
                &[(0, 0, 8449, "fed.example.net")],
            )
            .host("fed.example.net", &["192.0.2.20"]);
        let found = resolve(dns, &well_known, "example.org").await;
        assert_eq!(
            found,
            destination("example.org", "example.org", &["192.0.2.20:8449"])
        );
    }
}

#[tokio::test]
async fn deprecated_srv_when_there_is_no_matrix_fed_record() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .srv(
            "_matrix._tcp.example.org",
            &[(0, 0, 8450, "old.example.net")],
        )
        .host("old.example.net", &["192.0.2.21"]);
    let found = resolve(dns, &well_known, "example.org").await;
    assert_eq!(
        found,
        destination("example.org", "example.org", &["192.0.2.21:8450"])
    );
}

#[tokio::test]
async fn matrix_fed_srv_wins_over_deprecated_srv() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .srv(
            "_matrix-fed._tcp.example.org",
            &[(0, 0, 1, "new.example.net")],
        )
        .srv("_matrix._tcp.example.org", &[(0, 0, 2, "old.example.net")])
        .host("new.example.net", &["192.0.2.22"])
        .host("old.example.net", &["192.0.2.23"]);
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org")).await.unwrap();
    assert_eq!(found.addrs, addrs(&["192.0.2.22:1"]));
    assert!(
        !dns.asked()
            .contains(&"SRV _matrix._tcp.example.org".to_owned())
    );
}

#[tokio::test]
async fn no_well_known_no_srv_uses_the_hostname_on_8448() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default().host("example.org", &["192.0.2.30", "2001:db8::30"]);
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org")).await.unwrap();
    assert_eq!(
        found,
        destination(
            "example.org",
            "example.org",
            &["192.0.2.30:8448", "[2001:db8::30]:8448"]
        )
    );
    assert_eq!(
        dns.asked(),
        [
            "SRV _matrix-fed._tcp.example.org",
            "SRV _matrix._tcp.example.org",
            "IP example.org"
        ]
    );
    assert_eq!(well_known.fetches(), 1);
}

#[tokio::test]
async fn srv_targets_in_priority_order_skipping_unresolvable_ones() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .srv(
            "_matrix-fed._tcp.example.org",
            &[
                (20, 5, 3, "c.example.net"),
                (10, 5, 2, "b.example.net"),
                (0, 5, 1, "gone.example.net"),
            ],
        )
        .host("b.example.net", &["192.0.2.41"])
        .host("c.example.net", &["192.0.2.42"])
        .failing("gone.example.net");
    let found = resolve(dns, &well_known, "example.org").await;
    assert_eq!(found.addrs, addrs(&["192.0.2.41:2", "192.0.2.42:3"]));
}

// Errors.

async fn resolve_error(dns: TableDns, well_known: &Arc<TableWellKnown>, server: &str) -> Error {
    let (resolver, _) = resolver(dns, well_known);
    resolver.resolve(name(server)).await.unwrap_err()
}

fn assert_unreachable(error: &Error, server: &str) {
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY, "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("Could not reach {server}")),
        "{error}"
    );
}

#[tokio::test]
async fn unresolvable_names_are_errors_naming_the_server() {
    let well_known = Arc::new(TableWellKnown::default());
    let error = resolve_error(TableDns::default(), &well_known, "nowhere.example").await;
    assert_unreachable(&error, "nowhere.example");
    let error = resolve_error(TableDns::default(), &well_known, "nowhere.example:8448").await;
    assert_unreachable(&error, "nowhere.example:8448");
    let error = resolve_error(
        TableDns::default().failing("nowhere.example"),
        &well_known,
        "nowhere.example:1",
    )
    .await;
    assert_unreachable(&error, "nowhere.example:1");
    let error = resolve_error(TableDns::default(), &well_known, "1.2.3.4:0").await;
    assert_unreachable(&error, "1.2.3.4:0");
    // Delegated to a name without addresses: no falling back to the original name.
    well_known.server("example.org", "matrix.example.org:443");
    let dns = TableDns::default().host("example.org", &["192.0.2.1"]);
    let error = resolve_error(dns, &well_known, "example.org").await;
    assert_unreachable(&error, "example.org");
}

#[tokio::test]
async fn srv_saying_no_service_is_an_error() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .srv("_matrix-fed._tcp.example.org", &[(0, 0, 0, ".")])
        .host("example.org", &["192.0.2.1"]);
    let error = resolve_error(dns, &well_known, "example.org").await;
    assert_unreachable(&error, "example.org");
}

#[tokio::test]
async fn failed_srv_lookup_is_an_error() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .failing("_matrix-fed._tcp.example.org")
        .host("example.org", &["192.0.2.1"]);
    let error = resolve_error(dns, &well_known, "example.org").await;
    assert_unreachable(&error, "example.org");
}

#[tokio::test]
async fn srv_targets_without_any_address_are_an_error() {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .srv(
            "_matrix-fed._tcp.example.org",
            &[(0, 0, 1, "gone.example.net")],
        )
        .host("example.org", &["192.0.2.1"]);
    let error = resolve_error(dns, &well_known, "example.org").await;
    assert_unreachable(&error, "example.org");
}

// SRV order.

#[test]
fn srv_order_is_by_priority_then_weighted() {
    fn record(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 1,
            target: target.to_owned(),
        }
    }
    let records = vec![
        record(10, 0, "zero"),
        record(10, 60, "heavy"),
        record(10, 40, "light"),
        record(0, 1, "first"),
        record(20, 1, "last"),
    ];
    let targets = |random: fn() -> u32, limit| {
        order_srv(records.clone(), limit, random)
            .into_iter()
            .map(|record| record.target)
            .collect::<Vec<_>>()
    };
    // The running sum within priority 10 is zero 0, heavy 60, light 100 (zero weights first).
    // A pick of 0 takes the zero-weight record, then (sum 100) the heavy one, then light.
    assert_eq!(
        targets(|| 0, 10),
        ["first", "zero", "heavy", "light", "last"]
    );
    // A pick of 100 (of 0..=100) takes light, then (sum 60) 100 % 61 = 39 takes heavy.
    assert_eq!(
        targets(|| 100, 10),
        ["first", "light", "heavy", "zero", "last"]
    );
    // A pick of 59 takes heavy, then (sum 40) 59 % 41 = 18 takes light.
    assert_eq!(
        targets(|| 59, 10),
        ["first", "heavy", "light", "zero", "last"]
    );
    assert_eq!(targets(|| 0, 2), ["first", "zero"]);
}

#[tokio::test]
async fn srv_targets_are_bounded() {
    let well_known = Arc::new(TableWellKnown::default());
    let targets: Vec<String> = (0..20).map(|i| format!("t{i}.example.net")).collect();
    let records: Vec<(u16, u16, u16, &str)> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| (i as u16, 0, 1000 + i as u16, target.as_str()))
        .collect();
    let mut dns = TableDns::default().srv("_matrix-fed._tcp.example.org", &records);
    for target in &targets {
        dns = dns.host(target, &["192.0.2.50", "192.0.2.51"]);
    }
    let (resolver, dns) = resolver(dns, &well_known);
    let found = resolver.resolve(name("example.org")).await.unwrap();
    assert_eq!(found.addrs.len(), 2 * MAX_SRV_TARGETS);
    assert_eq!(found.addrs[0], "192.0.2.50:1000".parse().unwrap());
    let lookups = dns.asked().iter().filter(|q| q.starts_with("IP")).count();
    assert_eq!(lookups, MAX_SRV_TARGETS);
}

// The well-known cache.

const HOUR: Duration = Duration::from_secs(3600);

fn delegating_setup() -> (Resolver, Arc<TableWellKnown>) {
    let well_known = Arc::new(TableWellKnown::default());
    let dns = TableDns::default()
        .host("a.example.net", &["192.0.2.60"])
        .host("b.example.net", &["192.0.2.61"])
        .host("example.org", &["192.0.2.62"]);
    let (resolver, _) = resolver(dns, &well_known);
    (resolver, well_known)
}

async fn tls_name_at(resolver: &Resolver, at: Instant) -> String {
    resolver
        .resolve_at(name("example.org"), at)
        .await
        .unwrap()
        .tls_name
}

#[tokio::test]
async fn well_known_cached_for_its_max_age() {
    let (resolver, well_known) = delegating_setup();
    let start = Instant::now();
    let answer = |target: &str| {
        well_known.body(
            "example.org",
            &format!(r#"{{"m.server": "{target}"}}"#),
            Some(10 * HOUR),
        );
    };
    answer("a.example.net");
    assert_eq!(tls_name_at(&resolver, start).await, "a.example.net");
    answer("b.example.net");
    // Fresh until 80 % of its life: no new fetch.
    assert_eq!(
        tls_name_at(&resolver, start + 7 * HOUR).await,
        "a.example.net"
    );
    assert_eq!(well_known.fetches(), 1);
    // Past 80 %: fetched again.
    assert_eq!(
        tls_name_at(&resolver, start + 9 * HOUR).await,
        "b.example.net"
    );
    assert_eq!(well_known.fetches(), 2);
}

#[tokio::test]
async fn well_known_cache_time_is_clamped_and_defaults_to_a_day() {
    for (cache_for, fresh_at, refetched_at) in [
        // Without headers: 24 h ± 10 %, refetched from 80 % on.
        (None, 17 * HOUR, 22 * HOUR),
        // More than 48 h: 48 h.
        (Some(1000 * HOUR), 38 * HOUR, 39 * HOUR),
        // `no-store` or under 5 minutes: 5 minutes.
        (
            Some(Duration::ZERO),
            Duration::from_secs(230),
            Duration::from_secs(250),
        ),
    ] {
        let (resolver, well_known) = delegating_setup();
        let start = Instant::now();
        well_known.body("example.org", r#"{"m.server": "a.example.net"}"#, cache_for);
        tls_name_at(&resolver, start).await;
        tls_name_at(&resolver, start + fresh_at).await;
        assert_eq!(well_known.fetches(), 1, "{cache_for:?}");
        tls_name_at(&resolver, start + refetched_at).await;
        assert_eq!(well_known.fetches(), 2, "{cache_for:?}");
    }
}

#[tokio::test]
async fn failures_cached_for_an_hour_or_two_minutes_after_a_valid_answer() {
    let (resolver, well_known) = delegating_setup();
    let start = Instant::now();
    // Never valid: a 404 is remembered for about an hour (± 10 %, refetched from 80 %).
    assert_eq!(tls_name_at(&resolver, start).await, "example.org");
    assert_eq!(
        tls_name_at(&resolver, start + Duration::from_secs(40 * 60)).await,
        "example.org"
    );
    assert_eq!(well_known.fetches(), 1);
    well_known.body(
        "example.org",
        r#"{"m.server": "a.example.net"}"#,
        Some(HOUR),
    );
    let later = start + 2 * HOUR;
    assert_eq!(tls_name_at(&resolver, later).await, "a.example.net");
    assert_eq!(well_known.fetches(), 2);
    // The valid answer expires; the host now answers 404, remembered only 2 minutes, since
    // the host had a valid well-known recently.
    well_known.set("example.org", Err(WellKnownError::Refused("404".into())));
    let expired = later + 2 * HOUR;
    assert_eq!(tls_name_at(&resolver, expired).await, "example.org");
    assert_eq!(well_known.fetches(), 3);
    assert_eq!(
        tls_name_at(&resolver, expired + Duration::from_secs(60)).await,
        "example.org"
    );
    assert_eq!(well_known.fetches(), 3);
    tls_name_at(&resolver, expired + Duration::from_secs(150)).await;
    assert_eq!(well_known.fetches(), 4);
}

#[tokio::test]
async fn temporary_failure_keeps_a_valid_answer_until_it_expires() {
    let (resolver, well_known) = delegating_setup();
    let start = Instant::now();
    well_known.body(
        "example.org",
        r#"{"m.server": "a.example.net"}"#,
        Some(10 * HOUR),
    );
    assert_eq!(tls_name_at(&resolver, start).await, "a.example.net");
    well_known.set(
        "example.org",
        Err(WellKnownError::Unavailable("timed out".into())),
    );
    // In the grace period: refetched, failed, the cached answer still used.
    assert_eq!(
        tls_name_at(&resolver, start + 9 * HOUR).await,
        "a.example.net"
    );
    assert_eq!(well_known.fetches(), 2);
    // Expired: the failure counts.
    assert_eq!(
        tls_name_at(&resolver, start + 11 * HOUR).await,
        "example.org"
    );
    // A permanent failure (the well-known is gone) does not keep the old answer.
    let (resolver, well_known) = delegating_setup();
    well_known.body(
        "example.org",
        r#"{"m.server": "a.example.net"}"#,
        Some(10 * HOUR),
    );
    tls_name_at(&resolver, start).await;
    well_known.set("example.org", Err(WellKnownError::Refused("404".into())));
    assert_eq!(
        tls_name_at(&resolver, start + 9 * HOUR).await,
        "example.org"
    );
}

#[test]
fn well_known_cache_is_bounded_and_drops_the_oldest() {
    let now = Instant::now();
    let entry = || CachedWellKnown {
        delegated: None,
        fetched: now,
        expires: now + HOUR,
        had_valid_until: None,
    };
    let mut cache = WellKnownCache::new(3);
    for host in ["a", "b", "c"] {
        cache.insert(host, entry());
    }
    // Storing "a" again makes it the newest.
    cache.insert("a", entry());
    cache.insert("d", entry());
    assert_eq!(cache.len(), 3);
    assert!(cache.get("b").is_none());
    for host in ["a", "c", "d"] {
        assert!(cache.get(host).is_some(), "{host}");
    }
    cache.insert("e", entry());
    assert!(cache.get("c").is_none());
    assert_eq!(cache.len(), 3);
}

// The real resolver, without any network: `localhost` comes from /etc/hosts.

#[tokio::test]
async fn system_resolver_finds_localhost_and_ip_literals() {
    let resolver = Resolver::system(true, Vec::new()).unwrap();
    let found = resolver.resolve(name("localhost:8009")).await.unwrap();
    assert_eq!(found.host, "localhost:8009");
    assert_eq!(found.tls_name, "localhost");
    assert!(!found.addrs.is_empty());
    for addr in &found.addrs {
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 8009);
    }
    let found = resolver.resolve(name("[::1]:8010")).await.unwrap();
    assert_eq!(found, destination("[::1]:8010", "::1", &["[::1]:8010"]));
    let found = resolver.resolve(name("127.0.0.1")).await.unwrap();
    assert_eq!(
        found,
        destination("127.0.0.1", "127.0.0.1", &["127.0.0.1:8448"])
    );
}
