//! A real Synapse for the federation tests: the reference homeserver, from PyPI, started on
//! 127.0.0.1 with a generated config (TLS with a self-signed certificate, server name
//! `localhost:PORT`, loopback allowed as a federation destination, no notaries, outgoing
//! certificate checks off). Tests here prove the harness; the federation features' own
//! tests use [`Synapse`] with [`TestServer::start_federating`].
//!
//! Synapse runs from the virtualenv that `tests/synapse/setup.sh` makes in the target
//! directory (`tests/run.sh` runs it); without it these tests fail and say so.

use std::{
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use ruma::{CanonicalJsonObject, serde::Base64};
use serde_json::{Value, json};

use crate::harness::{TestServer, free_port, https_client, json_request, self_signed_certificate};

/// How long Synapse may take to answer after its start: about 1.5 s on an idle machine,
/// more when the tests share two cores; past this, something is wrong.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared secret for `/_synapse/admin/v1/register`.
const REGISTRATION_SECRET: &str = "synapse-test-registration-secret";

/// The virtualenv's Python: `<target dir>/synapse-venv/bin/python`, where
/// `tests/synapse/setup.sh` puts it (`${CARGO_TARGET_DIR:-target}/synapse-venv`).
fn venv_python() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory");
    let python = target.join("synapse-venv").join("bin").join("python");
    assert!(
        python.exists(),
        "Synapse's virtualenv is missing ({} not found): run tests/run.sh, or \
         `bash tests/synapse/setup.sh` with CARGO_TARGET_DIR={}, first",
        python.display(),
        target.display(),
    );
    python
}

/// A running Synapse with its own directory (config, keys, SQLite database, media, log).
/// Killed when dropped; its log is printed when the test fails.
pub struct Synapse {
    child: Option<Child>,
    pub port: u16,
    /// `localhost:PORT`.
    pub server_name: String,
    /// `https://127.0.0.1:PORT`: client API, federation API and keys on one TLS listener.
    pub url: String,
    /// The self-signed certificate it serves (PEM), for clients that check it.
    pub certificate: PathBuf,
    dir: tempfile::TempDir,
}

impl Synapse {
    /// Starts Synapse and waits until its federation API answers.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// [`Synapse::start`] with extra top-level `homeserver.yaml` lines (keys the base config
    /// does not set), e.g. `"use_presence: false\n"`.
    pub async fn start_with_config(extra: &str) -> Self {
        let python = venv_python();
        let dir = tempfile::tempdir().expect("temporary directory");
        let (certificate, key) = self_signed_certificate(dir.path());
        std::fs::write(dir.path().join("signing.key"), signing_key()).expect("write the key");
        let config_path = dir.path().join("homeserver.yaml");
        let log_path = dir.path().join("synapse.log");
        // The port is part of the server name, so it is chosen before the start; another
        // process may take it in between, so a start that finds it taken tries another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let config = homeserver_yaml(dir.path(), port, &certificate, &key, extra);
            std::fs::write(&config_path, config).expect("write homeserver.yaml");
            let log = File::create(&log_path).expect("create the log file");
            let mut child = Command::new(&python)
                .args(["-m", "synapse.app.homeserver", "-c"])
                .arg(&config_path)
                .current_dir(dir.path())
                .env("PYTHONUNBUFFERED", "1")
                // Test traffic goes to 127.0.0.1 only, never through a proxy.
                .env_remove("http_proxy")
                .env_remove("https_proxy")
                .env_remove("HTTP_PROXY")
                .env_remove("HTTPS_PROXY")
                .env_remove("all_proxy")
                .env_remove("ALL_PROXY")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file handle"))
                .stderr(log)
                .spawn()
                .expect("start Synapse");
            let url = format!("https://127.0.0.1:{port}");
            match wait_until_up(&mut child, &url, &certificate).await {
                Ok(()) => {
                    return Self {
                        child: Some(child),
                        port,
                        server_name: format!("localhost:{port}"),
                        url,
                        certificate,
                        dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if attempt < 3 && log.contains("Address already in use") {
                        continue;
                    }
                    panic!("Synapse did not start: {why}; its log:\n{log}");
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything Synapse logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("synapse.log")).unwrap_or_default()
    }

    /// The user ID of `name` on this server.
    pub fn user_id(&self, name: &str) -> String {
        format!("@{name}:{}", self.server_name)
    }

    /// An HTTP client that trusts this Synapse's certificate.
    pub fn http(&self) -> reqwest::Client {
        https_client(&self.certificate)
    }

    /// Sends a request with an optional token and JSON body; returns status and JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        json_request(
            &self.http(),
            method,
            &format!("{}{path}", self.url),
            token,
            body,
        )
        .await
    }

    /// A client-server API request as `token`; `path` is below `/_matrix/client/v3`.
    pub async fn client_api(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.request(
            method,
            &format!("/_matrix/client/v3{path}"),
            Some(token),
            body,
        )
        .await
    }

    /// Registers `name` with the shared secret (Synapse's admin API, as
    /// `register_new_matrix_user` does); returns the access token.
    pub async fn register(&self, name: &str, password: &str) -> String {
        self.register_with(name, password, false).await
    }

    /// [`Synapse::register`], as a server admin when `admin` is set.
    pub async fn register_with(&self, name: &str, password: &str, admin: bool) -> String {
        let (status, json) = self
            .request(Method::GET, "/_synapse/admin/v1/register", None, None)
            .await;
        assert_eq!(status, StatusCode::OK, "register nonce: {json}");
        let nonce = json["nonce"].as_str().expect("nonce").to_owned();
        let body = json!({
            "nonce": nonce,
            "username": name,
            "password": password,
            "admin": admin,
            "mac": registration_mac(&nonce, name, password, admin),
        });
        let (status, json) = self
            .request(
                Method::POST,
                "/_synapse/admin/v1/register",
                None,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {name}: {json}");
        json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Logs in with a password through the client API; returns status and body.
    pub async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": name },
            "password": password,
        });
        self.request(Method::POST, "/_matrix/client/v3/login", None, Some(body))
            .await
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.kill();
        // Shown with the failed test's output (the test runner captures it otherwise).
        if std::thread::panicking() {
            eprintln!("--- Synapse {} log ---\n{}", self.server_name, self.log());
        }
    }
}

/// Polls `/_matrix/federation/v1/version` until it answers 200; fails at once if the
/// process exits, and after [`START_TIMEOUT`].
async fn wait_until_up(child: &mut Child, url: &str, certificate: &Path) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .add_root_certificate(load_certificate(certificate))
        .build()
        .expect("HTTPS client");
    let url = format!("{url}/_matrix/federation/v1/version");
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < START_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        match client.get(&url).send().await {
            Ok(response) if response.status() == StatusCode::OK => return Ok(()),
            Ok(response) => last = format!("GET {url} answered {}", response.status()),
            Err(error) => last = format!("GET {url}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no answer within {START_TIMEOUT:?} (last: {last})"))
}

fn load_certificate(path: &Path) -> reqwest::Certificate {
    let pem = std::fs::read(path).expect("read the certificate");
    reqwest::Certificate::from_pem(&pem).expect("a PEM certificate")
}

/// A fresh ed25519 signing key in Synapse's file format: `ed25519 <version> <seed>`, the
/// seed in unpadded base64.
fn signing_key() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .expect("random bytes");
    let seed = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
    format!("ed25519 a_test {seed}\n")
}

/// The MAC of a shared-secret registration: HMAC-SHA1 over `nonce NUL user NUL password
/// NUL notadmin` with the shared secret, in lowercase hex (Synapse's admin API docs,
/// "Shared-Secret Registration").
fn registration_mac(nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        REGISTRATION_SECRET.as_bytes(),
    );
    let kind = if admin { "admin" } else { "notadmin" };
    let message = [nonce, user, password, kind].join("\0");
    let tag = ring::hmac::sign(&key, message.as_bytes());
    tag.as_ref().iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// The generated `homeserver.yaml`. Option names are Synapse's (its config docs); every
/// path is in the test's own directory.
fn homeserver_yaml(dir: &Path, port: u16, certificate: &Path, key: &Path, extra: &str) -> String {
    let dir = dir.display();
    let (certificate, key) = (certificate.display(), key.display());
    format!(
        r#"server_name: "localhost:{port}"
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false
tls_certificate_path: "{certificate}"
tls_private_key_path: "{key}"
# Other test servers serve self-signed certificates.
federation_verify_certificates: false
# Synapse refuses to send to loopback unless allowed.
ip_range_whitelist: ['127.0.0.1', '::1']
# No notaries: keys are fetched from the servers themselves, never from matrix.org.
trusted_key_servers: []
suppress_key_server_warning: true
database:
  name: sqlite3
  args:
    database: "{dir}/homeserver.db"
media_store_path: "{dir}/media_store"
signing_key_path: "{dir}/signing.key"
registration_shared_secret: "{REGISTRATION_SECRET}"
macaroon_secret_key: "synapse-test-macaroon-secret"
form_secret: "synapse-test-form-secret"
enable_registration: false
report_stats: false
enable_metrics: false
allow_public_rooms_over_federation: true
room_list_publication_rules:
  - action: allow
# Tests register, log in, join and send quickly: no rate limits in their way.
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
rc_joins:
  local: {{per_second: 1000, burst_count: 1000}}
  remote: {{per_second: 1000, burst_count: 1000}}
rc_joins_per_room: {{per_second: 1000, burst_count: 1000}}
rc_invites:
  per_room: {{per_second: 1000, burst_count: 1000}}
  per_user: {{per_second: 1000, burst_count: 1000}}
  per_issuer: {{per_second: 1000, burst_count: 1000}}
rc_key_requests: {{per_second: 1000, burst_count: 1000}}
rc_room_creation: {{per_second: 1000, burst_count: 1000}}
rc_profile: {{per_second: 1000, burst_count: 1000}}
rc_presence:
  per_user: {{per_second: 1000, burst_count: 1000}}
rc_federation:
  window_size: 1000
  sleep_limit: 1000
  sleep_delay: 1
  reject_limit: 1000
  concurrent: 100
{extra}"#
    )
}

#[tokio::test]
async fn synapse_starts_and_serves_federation_version() {
    let started = Instant::now();
    let synapse = Synapse::start().await;
    eprintln!("Synapse answered {:?} after its start", started.elapsed());
    assert_eq!(synapse.server_name, format!("localhost:{}", synapse.port));

    let (status, json) = synapse
        .request(Method::GET, "/_matrix/federation/v1/version", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["server"]["name"], "Synapse", "{json}");

    // Its key, signed by itself with that key.
    let (status, json) = synapse
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["server_name"], synapse.server_name, "{json}");
    assert!(
        json["valid_until_ts"].as_u64().is_some(),
        "valid_until_ts: {json}"
    );
    let keys = json["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(keys.len(), 1, "{json}");
    let mut key_set = ruma::signatures::PublicKeySet::new();
    for (id, key) in keys {
        let key = key["key"].as_str().expect("key");
        key_set.insert(id.clone(), Base64::parse(key).expect("base64 key"));
    }
    let key_map = [(synapse.server_name.clone(), key_set)].into();
    let object: CanonicalJsonObject = serde_json::from_value(json).expect("canonical JSON");
    ruma::signatures::verify_json(&key_map, &object).expect("Synapse's key signs itself");

    // A user registered with the shared secret, logged in through the client API.
    let token = synapse.register("alice", "alice password").await;
    let (status, json) = synapse
        .client_api(&token, Method::GET, "/account/whoami", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["user_id"], synapse.user_id("alice"));
    let (status, json) = synapse.login("alice", "alice password").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["user_id"], synapse.user_id("alice"));
    let (status, json) = synapse.login("alice", "wrong password").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
}

#[tokio::test]
async fn our_federating_server_serves_the_client_api_over_tls() {
    let server = TestServer::start_federating();
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let port = server.url.rsplit(':').next().unwrap();
    assert_eq!(server.server_name, format!("localhost:{port}"));

    let (status, json) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let token = server.register("alice", "alice password").await;
    let (status, json) = server.whoami(&token).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["user_id"], server.user_id("alice"));
    // matrix-sdk trusts the certificate too.
    let client = server.client().await;
    let login = client
        .matrix_auth()
        .login_username("alice", "alice password")
        .send()
        .await
        .expect("matrix-sdk logs in over TLS");
    assert_eq!(login.user_id.as_str(), server.user_id("alice"));

    // Plain HTTP on the TLS port gets no answer.
    let plain = crate::harness::http()
        .get(format!("http://127.0.0.1:{port}/_matrix/client/versions"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP answered"
    );
}

/// Two Synapses federate through the generated config: loopback allowed, self-signed
/// certificates accepted, keys fetched from each other (no notary). A profile query from one
/// to the other needs all of it: the querying server signs the request, the answering one
/// fetches its key to check the signature.
#[tokio::test]
async fn two_synapses_federate_on_loopback() {
    let (one, two) = tokio::join!(Synapse::start(), Synapse::start());
    let bob = two.register("bob", "bob password").await;
    let path = format!("/profile/{}/displayname", two.user_id("bob"));
    let (status, json) = two
        .client_api(
            &bob,
            Method::PUT,
            &path,
            Some(json!({ "displayname": "Bob Two" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");

    let alice = one.register("alice", "alice password").await;
    let (status, json) = one.client_api(&alice, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["displayname"], "Bob Two");
}
