//! Starting and stopping the real server, and small HTTP helpers.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use matrix_sdk::Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const SERVER_NAME: &str = "localhost";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `conduit` process with its own database directory.
pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    /// `localhost` ([`SERVER_NAME`]), or `localhost:PORT` for a federating server.
    pub server_name: String,
    data: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    /// The self-signed certificate a federating server serves (and clients trust).
    certificate: Option<PathBuf>,
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_conduit")
}

/// A command for the binary with a clean, test-only environment.
pub fn command(data: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("CONDUIT_") {
            command.env_remove(key);
        }
    }
    command
        .env("CONDUIT_SERVER_NAME", SERVER_NAME)
        .env("CONDUIT_DATABASE_PATH", data)
        .env("CONDUIT_ADDRESS", "127.0.0.1")
        .env("CONDUIT_PORT", "0")
        .env("CONDUIT_ALLOW_REGISTRATION", "true")
        // No test may reach a public server (the notary endpoint fetches the keys of any
        // server it is asked about); federation tests turn it on.
        .env("CONDUIT_ALLOW_FEDERATION", "false")
        // Federation tests talk to servers on loopback, which is not a public address.
        .env(
            "CONDUIT_FEDERATION_IP_RANGE_ALLOWLIST",
            r#"["127.0.0.0/8", "::1/128"]"#,
        )
        .env("CONDUIT_LOG", "warn,conduit=info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

impl TestServer {
    /// Starts a server with open registration and no other settings.
    pub fn start() -> Self {
        Self::with_env(&[])
    }

    /// Starts a server with extra `CONDUIT_*` settings.
    pub fn with_env(env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temporary directory"), env)
    }

    /// Starts a server with extra `CONDUIT_*` settings on the data directory `data` (one a
    /// test filled, by a restore say).
    pub fn start_in(data: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let data = Arc::new(data);
        let mut server = Self {
            child: None,
            url: String::new(),
            server_name: SERVER_NAME.to_owned(),
            data,
            env,
            log: Default::default(),
            certificate: None,
        };
        server.spawn();
        server
    }

    /// Starts a server other servers can reach by its name, for federation tests: TLS with
    /// a self-signed certificate (for `localhost` and 127.0.0.1) on a free port of
    /// 127.0.0.1, server name `localhost:PORT` (a name with a port needs no DNS or
    /// well-known lookup: the spec's resolution connects to it directly), federation on,
    /// no notaries (`trusted_servers = []`: nothing leaves the machine) and certificate
    /// verification off for its outgoing requests.
    pub fn start_federating() -> Self {
        Self::federating_with_env(&[])
    }

    /// [`TestServer::start_federating`] with extra `CONDUIT_*` settings.
    pub fn federating_with_env(env: &[(&str, &str)]) -> Self {
        let data = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let (certificate, key) = self_signed_certificate(data.path());
        // The port is part of the server name, so it is chosen before the start; another
        // process may take it in between, so a start that finds it taken tries another.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let server_name = format!("localhost:{port}");
            let mut all = vec![
                ("CONDUIT_SERVER_NAME".to_owned(), server_name.clone()),
                ("CONDUIT_PORT".to_owned(), port.to_string()),
                (
                    "CONDUIT_TLS_CERTS".to_owned(),
                    certificate.to_string_lossy().into_owned(),
                ),
                (
                    "CONDUIT_TLS_KEY".to_owned(),
                    key.to_string_lossy().into_owned(),
                ),
                ("CONDUIT_ALLOW_FEDERATION".to_owned(), "true".to_owned()),
                ("CONDUIT_TRUSTED_SERVERS".to_owned(), "[]".to_owned()),
                // Synapse's key name; an unknown key is only warned about until it exists.
                (
                    "CONDUIT_FEDERATION_VERIFY_CERTIFICATES".to_owned(),
                    "false".to_owned(),
                ),
            ];
            all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut server = Self {
                child: None,
                url: String::new(),
                server_name,
                data: Arc::clone(&data),
                env: all,
                log: Default::default(),
                certificate: Some(certificate.clone()),
            };
            match server.try_spawn() {
                Ok(()) => return server,
                Err(log) if attempts < 3 && log.contains("in use") => continue,
                Err(log) => panic!("conduit did not start; output:\n{log}"),
            }
        }
    }

    /// The self-signed certificate a federating server serves, for clients to trust.
    pub fn certificate(&self) -> Option<&Path> {
        self.certificate.as_deref()
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("conduit did not start; output:\n{log}");
        }
    }

    /// Starts the process and waits for its address; on failure, returns its output.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut child = command(self.data.path(), &self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start conduit");
        let (sender, receiver) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            let log = Arc::clone(&self.log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(at) = line.find("listening on ") {
                        let _ = sender.send(line[at + "listening on ".len()..].trim().to_owned());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        // Only the readers hold senders now: a process that exits early ends the wait.
        drop(sender);
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(url) => self.url = url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.log.lock().unwrap().join("\n"));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// The user ID of `name` on this server.
    pub fn user_id(&self, name: &str) -> String {
        format!("@{name}:{}", self.server_name)
    }

    /// An HTTP client for this server: one that trusts its certificate, if it has one.
    pub fn http(&self) -> reqwest::Client {
        match &self.certificate {
            Some(certificate) => https_client(certificate),
            None => http(),
        }
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(status.expect("run kill").success());
        child.wait().expect("reap")
    }

    /// Starts the server again on the same database.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.spawn();
    }

    /// Runs `conduit ARGS` (an admin command) against this server's database.
    pub fn admin(&self, args: &[&str]) -> Output {
        command(self.data.path(), &self.env)
            .args(args)
            .output()
            .expect("run conduit")
    }

    /// A matrix-sdk client for this server, not logged in.
    pub async fn client(&self) -> Client {
        let mut builder = Client::builder().homeserver_url(&self.url);
        if let Some(certificate) = &self.certificate {
            let pem = std::fs::read(certificate).expect("read the certificate");
            let certificate =
                matrix_sdk::reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
            builder = builder.add_root_certificates(vec![certificate]);
        }
        builder.build().await.expect("build matrix-sdk client")
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

    /// Registers `name` through the dummy UIA flow; returns the access token.
    pub async fn register(&self, name: &str, password: &str) -> String {
        let body = json!({
            "username": name, "password": password, "auth": { "type": "m.login.dummy" }
        });
        let (status, json) = self
            .request(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Logs in with a password; returns status and body.
    pub async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": name },
            "password": password,
        });
        self.request(Method::POST, "/_matrix/client/v3/login", None, Some(body))
            .await
    }

    /// `GET /whoami` with `token`.
    pub async fn whoami(&self, token: &str) -> (StatusCode, Value) {
        self.request(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(token),
            None,
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shown with the failed test's output (the test runner captures it otherwise).
        if std::thread::panicking() && self.certificate.is_some() {
            eprintln!("--- conduit {} log ---\n{}", self.server_name, self.log());
        }
    }
}

/// A free TCP port on 127.0.0.1, for a server whose port must be known before it starts.
/// The port is free when this returns; a start that finds it taken should try again.
/// A request with an optional bearer token and JSON body; the status and the answer as JSON
/// (a body that is not JSON comes back as a JSON string).
pub async fn json_request(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

/// Makes a self-signed certificate for `localhost` and 127.0.0.1 (valid for a day) with
/// `openssl` in `dir`; returns the paths of the certificate and its key (PEM).
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (certificate, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .expect("openssl is installed (tests/run.sh installs it)");
    assert!(
        output.status.success(),
        "openssl could not make a certificate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (certificate, key)
}

/// An HTTP client that trusts `certificate` (a PEM file) and no proxy.
pub fn https_client(certificate: &Path) -> reqwest::Client {
    let pem = std::fs::read(certificate).expect("read the certificate");
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
        .build()
        .expect("HTTPS client")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Asserts a Matrix error: status and errcode.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, errcode: &str) {
    assert_eq!(response.0, status, "body: {}", response.1);
    assert_eq!(response.1["errcode"], errcode, "body: {}", response.1);
    assert!(
        response.1["error"].is_string(),
        "error message missing: {}",
        response.1
    );
}

/// `m.login.password` UIA auth data for `user`.
pub fn password_auth(user: &str, password: &str) -> matrix_sdk::ruma::api::client::uiaa::AuthData {
    use matrix_sdk::ruma::api::client::uiaa::{
        AuthData, MatrixUserIdentifier, Password, UserIdentifier,
    };
    let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned()));
    AuthData::Password(Password::new(identifier, password.to_owned()))
}
