//! Configuration: built-in defaults, then the TOML file's `[global]` table, then `CONDUIT_*`
//! environment variables, following Conduit's key names so existing configs keep working.
//!
//! Loading is two-staged: figment merges the sources into [`Config`] (serde checks types and
//! required keys), then [`Config::validate`] checks what serde cannot. Every failure becomes
//! one line naming the key; unknown keys are returned as warnings, not errors.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use ruma::OwnedServerName;

use crate::storage::Backend;
use serde::{Deserialize, Serialize};

/// Everything under `[global]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Config {
    pub server_name: OwnedServerName,
    /// "fjall" or "sled"; unset: whatever the database directory holds, fjall for a new one
    /// (`storage::Db::open`).
    #[serde(default)]
    pub database_backend: Option<String>,
    #[serde(default = "default_database_path")]
    pub database_path: PathBuf,
    /// sled's page cache, in MiB. sled's own default (1 GiB) is far too much for a Pi.
    #[serde(default = "default_db_cache_capacity_mb")]
    pub db_cache_capacity_mb: f64,
    /// Writes are refused (507 `M_RESOURCE_LIMIT_EXCEEDED`) while less than this many MiB
    /// are free on the disk holding `database_path` (`storage::space`).
    #[serde(default = "default_min_free_disk_mb")]
    pub min_free_disk_mb: f64,
    /// How users reach the admin, a URI such as `mailto:admin@example.org` (Synapse's key):
    /// sent with `M_RESOURCE_LIMIT_EXCEEDED`. Default: `https://<server_name>`.
    #[serde(default)]
    pub admin_contact: Option<String>,
    #[serde(default = "default_address")]
    pub address: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u32,
    /// Requests handled at once; more wait their turn. Long-polls (`/sync`) are not counted.
    /// Conduit's key (there it limits requests to other servers; see `server.rs`).
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: u32,
    /// Open client connections; at the cap, new ones wait until one closes. Lowered at
    /// start to fit the open-files limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Seconds a connection has to send a complete request head (from its opening, or from
    /// the end of the previous response on HTTP/1.1); also the longest pause allowed in a
    /// request body.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: u64,
    /// Seconds a connection with no request in progress is kept open.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: u64,
    #[serde(default)]
    pub allow_registration: bool,
    #[serde(default)]
    pub registration_token: Option<String>,
    #[serde(default)]
    pub registration_shared_secret: Option<String>,
    /// Federation with other Matrix servers. Off until the admin turns it on (issue 11):
    /// with it off no federation path is served and nothing is sent to other servers.
    #[serde(default)]
    pub allow_federation: bool,
    /// Whether other servers may list this server's public room directory
    /// (`/_matrix/federation/v1/publicRooms`; Conduit's key, Synapse's
    /// `allow_public_rooms_over_federation`). Off by default, as in both.
    #[serde(default)]
    pub allow_public_room_directory_over_federation: bool,
    /// Whether the certificates of other servers are checked on outgoing federation
    /// requests (Synapse's key). Only for tests on loopback: off, anyone on the path can
    /// pretend to be any server. A loud warning at start says so.
    #[serde(default = "default_true")]
    pub federation_verify_certificates: bool,
    /// A second listener, on `address:federation_port`, for other servers (the spec's
    /// default port is 8448); it needs `[global.tls]` and serves the same paths over HTTPS.
    /// Without it, federation is served on `port` (behind a proxy, with
    /// `well_known.server` delegating to it).
    #[serde(default)]
    pub federation_port: Option<u16>,
    /// Non-public addresses (loopback, private, link-local, …) that other servers may be
    /// reached at, as CIDR ranges (Synapse's `ip_range_whitelist`). Any other non-public
    /// address is refused, so a request or a key query naming a server cannot make this one
    /// reach into its own network. For servers on one LAN: `["192.168.1.0/24"]`.
    #[serde(default)]
    pub federation_ip_range_allowlist: Vec<ipnet::IpNet>,
    /// Presence (online/offline status). Off saves a little work on busy servers.
    #[serde(default = "default_true")]
    pub allow_presence: bool,
    /// Serve media through the deprecated unauthenticated `/_matrix/media/*/download` and
    /// `/thumbnail` endpoints too (older clients and bridges still use them).
    #[serde(default = "default_true")]
    pub allow_legacy_media: bool,
    /// URL previews: the server fetches pages users link to. Off by default.
    #[serde(default)]
    pub allow_url_preview: bool,
    #[serde(default = "default_trusted_servers")]
    pub trusted_servers: Vec<OwnedServerName>,
    /// A `tracing` filter, e.g. `warn,conduit=info`.
    #[serde(default = "default_log")]
    pub log: String,
    #[serde(default)]
    pub well_known: WellKnown,
    #[serde(default)]
    pub turn_uris: Vec<String>,
    #[serde(default)]
    pub turn_secret: Option<String>,
    #[serde(default)]
    pub turn_username: Option<String>,
    #[serde(default)]
    pub turn_password: Option<String>,
    /// Lifetime of TURN credentials, in seconds.
    #[serde(default = "default_turn_ttl")]
    pub turn_ttl: u64,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WellKnown {
    /// Base URL clients should use, served at `/.well-known/matrix/client`.
    pub client: Option<String>,
    /// `host[:port]` other servers should use, served at `/.well-known/matrix/server`.
    pub server: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TlsConfig {
    /// PEM file with the certificate chain.
    pub certs: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

fn default_database_path() -> PathBuf {
    PathBuf::from("/var/lib/conduit")
}
fn default_db_cache_capacity_mb() -> f64 {
    32.0
}
fn default_min_free_disk_mb() -> f64 {
    64.0
}
fn default_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_port() -> u16 {
    6167
}
fn default_max_request_size() -> u32 {
    20 * 1024 * 1024
}
fn default_max_concurrent_requests() -> u32 {
    100
}
fn default_max_connections() -> u32 {
    4096
}
fn default_header_timeout() -> u64 {
    30
}
fn default_keepalive_timeout() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_trusted_servers() -> Vec<OwnedServerName> {
    vec![ruma::server_name!("matrix.org").to_owned()]
}
fn default_log() -> String {
    "warn,conduit=info".to_owned()
}
fn default_turn_ttl() -> u64 {
    24 * 60 * 60
}

/// Keys this server reads. Anything else under `[global]` is warned about.
const KNOWN_KEYS: &[&str] = &[
    "server_name",
    "database_backend",
    "database_path",
    "db_cache_capacity_mb",
    "min_free_disk_mb",
    "admin_contact",
    "address",
    "port",
    "max_request_size",
    "max_concurrent_requests",
    "max_connections",
    "header_timeout",
    "keepalive_timeout",
    "allow_registration",
    "registration_token",
    "registration_shared_secret",
    "allow_federation",
    "allow_public_room_directory_over_federation",
    "federation_verify_certificates",
    "federation_port",
    "federation_ip_range_allowlist",
    "allow_presence",
    "allow_legacy_media",
    "allow_url_preview",
    "trusted_servers",
    "log",
    "well_known",
    "turn_uris",
    "turn_secret",
    "turn_username",
    "turn_password",
    "turn_ttl",
    "tls",
];

/// Settings for `conduit --dev`: a throw-away server on localhost that anyone on this
/// machine can register on. They sit below the file and the environment, so both still win.
fn dev_defaults() -> Dict {
    let mut dict = Dict::new();
    dict.insert("server_name".into(), Value::from("localhost"));
    dict.insert("database_path".into(), Value::from("./conduit-dev-data"));
    dict.insert("allow_registration".into(), Value::from(true));
    dict
}

/// A configuration that could not be loaded; its `Display` is one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// A loaded configuration and the warnings found while loading it.
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads the configuration. `path` is the TOML file (optional: environment variables
    /// alone are enough); `dev` adds the `--dev` defaults at the lowest priority.
    pub fn load(path: Option<&Path>, dev: bool) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::new();
        if dev {
            figment = figment.merge(Serialized::default("global", dev_defaults()));
        }
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} not found",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(environment());
        Self::from_figment(&figment)
    }

    fn from_figment(figment: &Figment) -> Result<Loaded, ConfigError> {
        let warnings = unknown_keys(figment)
            .into_iter()
            .map(|key| format!("unknown config key `global.{key}` is ignored"))
            .collect();
        /// The file's layout: everything lives under `[global]`.
        #[derive(Deserialize)]
        struct Root {
            global: Config,
        }
        let config = figment.extract::<Root>().map_err(describe)?.global;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }

    /// Checks what the types alone do not.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.database_backend
            && Backend::parse(name).is_none()
        {
            return Err(ConfigError(format!(
                "global.database_backend: `{name}` is not supported; the backends are \"fjall\" \
                 (the default), \"sled\" and \"redb\""
            )));
        }
        if !(self.db_cache_capacity_mb.is_finite() && self.db_cache_capacity_mb > 0.0) {
            return Err(ConfigError(
                "global.db_cache_capacity_mb: must be a positive number".into(),
            ));
        }
        if !(self.min_free_disk_mb.is_finite() && self.min_free_disk_mb >= 0.0) {
            return Err(ConfigError(
                "global.min_free_disk_mb: must be a number of MiB, 0 or more".into(),
            ));
        }
        if let Some(contact) = &self.admin_contact
            && !contact.contains(':')
        {
            return Err(ConfigError(format!(
                "global.admin_contact: `{contact}` is not a URI (e.g. mailto:admin@example.org)"
            )));
        }
        if self.max_request_size < 1024 {
            return Err(ConfigError(
                "global.max_request_size: must be at least 1024 bytes".into(),
            ));
        }
        for (key, value) in [
            (
                "max_concurrent_requests",
                u64::from(self.max_concurrent_requests),
            ),
            ("max_connections", u64::from(self.max_connections)),
            ("header_timeout", self.header_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("global.{key}: must be at least 1")));
            }
        }
        if self
            .registration_token
            .as_deref()
            .is_some_and(str::is_empty)
        {
            return Err(ConfigError(
                "global.registration_token: must not be empty".into(),
            ));
        }
        if self
            .registration_shared_secret
            .as_deref()
            .is_some_and(str::is_empty)
        {
            return Err(ConfigError(
                "global.registration_shared_secret: must not be empty".into(),
            ));
        }
        if let Some(server) = &self.well_known.server
            && ruma::OwnedServerName::try_from(server.as_str()).is_err()
        {
            return Err(ConfigError(format!(
                "global.well_known.server: `{server}` is not a valid host[:port]"
            )));
        }
        if let Some(client) = &self.well_known.client
            && !(client.starts_with("https://") || client.starts_with("http://"))
        {
            return Err(ConfigError(
                "global.well_known.client: must be an http(s) URL".into(),
            ));
        }
        if self.turn_ttl == 0 {
            return Err(ConfigError(
                "global.turn_ttl: must be at least 1 second".into(),
            ));
        }
        Ok(())
    }

    /// sled's cache size in bytes.
    /// The configured backend, if one is named (validated at load).
    pub fn backend(&self) -> Option<Backend> {
        self.database_backend.as_deref().and_then(Backend::parse)
    }

    pub fn db_cache_capacity_bytes(&self) -> u64 {
        (self.db_cache_capacity_mb * 1024.0 * 1024.0) as u64
    }

    /// The disk reserve in bytes (validated: finite and not negative).
    pub fn min_free_disk_bytes(&self) -> u64 {
        (self.min_free_disk_mb * 1024.0 * 1024.0) as u64
    }

    /// `admin_contact`, or `https://<server_name>`.
    pub fn admin_contact(&self) -> String {
        self.admin_contact
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.server_name))
    }
}

/// `CONDUIT_*` variables under `global`. Nested tables accept Conduit's flat names
/// (`CONDUIT_WELL_KNOWN_CLIENT`, `CONDUIT_TLS_CERTS`) and `__` as a separator
/// (`CONDUIT_WELL_KNOWN__CLIENT`). `CONDUIT_CONFIG` names the file and is not a key.
///
/// figment reads variable values as TOML-ish data, so `CONDUIT_REGISTRATION_TOKEN=007123`
/// would become the number 7123. Keys whose type is a string therefore take the variable's
/// raw text, layered above the parsed value.
fn environment() -> Figment {
    let mut figment = Figment::new().merge(
        Env::prefixed("CONDUIT_")
            .ignore(&["CONFIG"])
            .map(|key| env_key(key.as_str()).into()),
    );
    // `vars_os`: a non-UTF-8 variable elsewhere in the environment must not stop us.
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("CONDUIT_") else {
            continue;
        };
        let key = env_key(rest);
        if STRING_KEYS.contains(&&key["global.".len()..]) {
            figment = figment.merge(Serialized::default(&key, value.to_owned()));
        }
    }
    figment
}

/// Keys of string (or path) type, whose environment values are never reinterpreted.
const STRING_KEYS: &[&str] = &[
    "server_name",
    "database_backend",
    "database_path",
    "admin_contact",
    "registration_token",
    "registration_shared_secret",
    "log",
    "turn_secret",
    "turn_username",
    "turn_password",
    "well_known.client",
    "well_known.server",
    "tls.certs",
    "tls.key",
];

/// `WELL_KNOWN_CLIENT` / `WELL_KNOWN__CLIENT` → `global.well_known.client`.
fn env_key(name: &str) -> String {
    let key = name.to_ascii_lowercase().replace("__", ".");
    let key = ["well_known", "tls"]
        .iter()
        .find_map(|table| {
            key.strip_prefix(&format!("{table}_"))
                .map(|rest| format!("{table}.{rest}"))
        })
        .unwrap_or(key);
    format!("global.{key}")
}

fn unknown_keys(figment: &Figment) -> BTreeSet<String> {
    let known: BTreeSet<&str> = KNOWN_KEYS.iter().copied().collect();
    let nested = |table: &str, keys: &[&str], out: &mut BTreeSet<String>| {
        if let Ok(Value::Dict(_, dict)) = figment.find_value(&format!("global.{table}")) {
            for key in dict.keys().filter(|key| !keys.contains(&key.as_str())) {
                out.insert(format!("{table}.{key}"));
            }
        }
    };
    let mut unknown = BTreeSet::new();
    if let Ok(Value::Dict(_, dict)) = figment.find_value("global") {
        unknown.extend(
            dict.keys()
                .filter(|key| !known.contains(key.as_str()))
                .cloned(),
        );
    }
    nested("well_known", &["client", "server"], &mut unknown);
    nested("tls", &["certs", "key"], &mut unknown);
    unknown
}

/// Turns figment's error into one line: `global.port: invalid type: …`.
fn describe(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|error| {
            let path = error.path.join(".");
            if let figment::error::Kind::MissingField(field) = &error.kind {
                // No `[global]` at all means no server name either.
                let field = if path.is_empty() && field == "global" {
                    "server_name"
                } else {
                    field
                };
                let path = if path.is_empty() {
                    "global".to_owned()
                } else {
                    path
                };
                return format!("{path}.{field}: is required but not set");
            }
            let path = if path.is_empty() {
                "global".to_owned()
            } else {
                path
            };
            // A TOML syntax error carries a multi-line excerpt; keep the message on one line.
            let message = error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            format!("{path}: {message}")
        })
        .collect();
    ConfigError(lines.join("; "))
}

#[cfg(test)]
// `Jail::expect_with` closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    fn load(toml: &str) -> Result<Loaded, ConfigError> {
        Config::from_figment(
            &Figment::new()
                .merge(Toml::string(toml))
                .merge(environment()),
        )
    }

    #[test]
    fn defaults_apply() {
        Jail::expect_with(|_| {
            let config = load("[global]\nserver_name = \"example.org\"")
                .unwrap()
                .config;
            assert_eq!(config.server_name, "example.org");
            assert_eq!(config.port, 6167);
            assert_eq!(config.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(!config.allow_registration);
            assert_eq!(config.database_backend, None);
            assert_eq!(config.db_cache_capacity_bytes(), 32 << 20);
            assert_eq!(config.max_concurrent_requests, 100);
            assert_eq!(config.max_connections, 4096);
            assert_eq!((config.header_timeout, config.keepalive_timeout), (30, 60));
            Ok(())
        });
    }

    #[test]
    fn missing_server_name_names_the_key() {
        Jail::expect_with(|_| {
            let error = load("[global]\nport = 1").err().unwrap().to_string();
            assert!(error.contains("global.server_name"), "{error}");
            assert!(!error.contains('\n'), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_the_key() {
        Jail::expect_with(|_| {
            let error = load("[global]\nserver_name = \"a.b\"\nport = \"many\"")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.port"), "{error}");
            let error = load("[global]\nserver_name = \"not a name!\"")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.server_name"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file_including_nested_tables() {
        Jail::expect_with(|jail| {
            jail.set_env("CONDUIT_PORT", "7000");
            jail.set_env("CONDUIT_ALLOW_REGISTRATION", "true");
            jail.set_env("CONDUIT_WELL_KNOWN_CLIENT", "https://matrix.example.org");
            jail.set_env("CONDUIT_WELL_KNOWN__SERVER", "matrix.example.org:443");
            jail.set_env("CONDUIT_TLS_CERTS", "/c.pem");
            jail.set_env("CONDUIT_TLS_KEY", "/k.pem");
            let config = load("[global]\nserver_name = \"example.org\"\nport = 1")
                .unwrap()
                .config;
            assert_eq!(config.port, 7000);
            assert!(config.allow_registration);
            assert_eq!(
                config.well_known.client.as_deref(),
                Some("https://matrix.example.org")
            );
            assert_eq!(
                config.well_known.server.as_deref(),
                Some("matrix.example.org:443")
            );
            let tls = config.tls.unwrap();
            assert_eq!(
                (tls.certs, tls.key),
                (PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))
            );
            Ok(())
        });
    }

    #[test]
    fn numeric_looking_secrets_stay_strings() {
        Jail::expect_with(|jail| {
            jail.set_env("CONDUIT_REGISTRATION_TOKEN", "007123");
            jail.set_env("CONDUIT_REGISTRATION_SHARED_SECRET", "1.50");
            jail.set_env("CONDUIT_TURN_PASSWORD", "true");
            let config = load("[global]\nserver_name = \"a.b\"").unwrap().config;
            assert_eq!(config.registration_token.as_deref(), Some("007123"));
            assert_eq!(config.registration_shared_secret.as_deref(), Some("1.50"));
            assert_eq!(config.turn_password.as_deref(), Some("true"));
            Ok(())
        });
    }

    #[test]
    fn bad_well_known_server_is_refused_at_start() {
        Jail::expect_with(|jail| {
            jail.set_env("CONDUIT_WELL_KNOWN_SERVER", "not a host");
            let error = load("[global]\nserver_name = \"a.b\"")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.well_known.server"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn environment_alone_is_enough() {
        Jail::expect_with(|jail| {
            jail.set_env("CONDUIT_SERVER_NAME", "env.example");
            let config = Config::load(None, false).unwrap().config;
            assert_eq!(config.server_name, "env.example");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_warned_about() {
        Jail::expect_with(|_| {
            let loaded =
                load("[global]\nserver_name = \"a.b\"\nenable_lightning_bolt = true").unwrap();
            assert_eq!(loaded.warnings.len(), 1);
            assert!(loaded.warnings[0].contains("global.enable_lightning_bolt"));
            Ok(())
        });
    }

    #[test]
    fn nested_unknown_keys_are_warned_about() {
        Jail::expect_with(|_| {
            let toml = "[global]\nserver_name = \"a.b\"\n[global.tls]\ncert = \"/x\"\nkey = \"/y\"";
            let warnings = Config::from_figment(&Figment::new().merge(Toml::string(toml)))
                .map(|loaded| loaded.warnings)
                .unwrap_or_else(|e| vec![e.to_string()]);
            assert!(
                warnings.iter().any(|w| w.contains("tls.cert")),
                "{warnings:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn toml_syntax_errors_are_one_line() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[global]\nserver_name = \"a.b\"\nport = = 3\n")?;
            let error = Config::load(Some(Path::new("bad.toml")), false)
                .err()
                .unwrap()
                .to_string();
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains("bad.toml"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn connection_limits_must_be_positive() {
        Jail::expect_with(|jail| {
            jail.set_env("CONDUIT_HEADER_TIMEOUT", "0");
            let error = load("[global]\nserver_name = \"a.b\"")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.header_timeout"), "{error}");
            jail.set_env("CONDUIT_HEADER_TIMEOUT", "5");
            let error = load("[global]\nserver_name = \"a.b\"\nmax_connections = 0")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.max_connections"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unsupported_backend_is_refused() {
        Jail::expect_with(|_| {
            let error = load("[global]\nserver_name = \"a.b\"\ndatabase_backend = \"rocksdb\"")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("global.database_backend"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn disk_reserve_and_admin_contact() {
        Jail::expect_with(|_| {
            let config = load("[global]\nserver_name = \"a.b\"").unwrap().config;
            assert_eq!(config.min_free_disk_bytes(), 64 << 20);
            assert_eq!(config.admin_contact(), "https://a.b");
            let config = load(
                "[global]\nserver_name = \"a.b\"\nmin_free_disk_mb = 0.5\n\
                 admin_contact = \"mailto:root@a.b\"",
            )
            .unwrap()
            .config;
            assert_eq!(config.min_free_disk_bytes(), 512 << 10);
            assert_eq!(config.admin_contact(), "mailto:root@a.b");
            let config = load("[global]\nserver_name = \"a.b\"\nmin_free_disk_mb = 0")
                .unwrap()
                .config;
            assert_eq!(config.min_free_disk_bytes(), 0);
            for bad in ["min_free_disk_mb = -1", "admin_contact = \"bob\""] {
                let error = load(&format!("[global]\nserver_name = \"a.b\"\n{bad}"))
                    .err()
                    .unwrap()
                    .to_string();
                let key = bad.split(' ').next().unwrap();
                assert!(error.contains(&format!("global.{key}")), "{error}");
            }
            Ok(())
        });
    }

    #[test]
    fn dev_mode_needs_no_settings_and_the_file_still_wins() {
        Jail::expect_with(|jail| {
            let config = Config::load(None, true).unwrap().config;
            assert_eq!(config.server_name, "localhost");
            assert!(config.allow_registration);
            jail.create_file("c.toml", "[global]\nallow_registration = false")?;
            let config = Config::load(Some(Path::new("c.toml")), true)
                .unwrap()
                .config;
            assert!(!config.allow_registration);
            Ok(())
        });
    }

    #[test]
    fn example_config_loads() {
        Jail::expect_with(|_| {
            let example = include_str!("../conduit.toml.example");
            let loaded = load(example).unwrap();
            assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
            Ok(())
        });
    }
}

/// A minimal valid configuration for unit tests elsewhere in the crate.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    pub fn config() -> Config {
        let toml = "[global]\nserver_name = \"example.org\"\nallow_registration = true";
        Figment::new()
            .merge(Toml::string(toml))
            .extract_inner("global")
            .unwrap()
    }
}
