//! The process as an admin meets it: configuration errors, config files, the database lock,
//! built-in TLS.

use std::process::Stdio;

use reqwest::StatusCode;

use crate::harness::{TestServer, binary, command};

fn run_with(env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let data = tempfile::tempdir().unwrap();
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let output = command(data.path(), &env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run conduit");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn configuration_errors_exit_with_one_line_naming_the_key() {
    let (ok, stderr) = run_with(&[("CONDUIT_PORT", "not-a-port")], &[]);
    assert!(!ok);
    assert!(stderr.contains("global.port"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let (ok, stderr) = run_with(&[("CONDUIT_DATABASE_BACKEND", "rocksdb")], &[]);
    assert!(!ok);
    assert!(stderr.contains("global.database_backend"), "{stderr}");

    // Without a server name there is nothing to serve.
    let data = tempfile::tempdir().unwrap();
    let output = command(data.path(), &[])
        .env_remove("CONDUIT_SERVER_NAME")
        .output()
        .expect("run conduit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("global.server_name"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A federation listener speaks HTTPS, so it needs a certificate.
    let (ok, stderr) = run_with(&[("CONDUIT_FEDERATION_PORT", "8448")], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("federation_port needs [global.tls]"),
        "{stderr}"
    );

    let (ok, stderr) = run_with(&[], &["--config", "/nonexistent/conduit.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/conduit.toml"), "{stderr}");
}

#[tokio::test]
async fn config_file_is_read_and_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conduit.toml");
    std::fs::write(
        &file,
        "[global]\nserver_name = \"from-file.example\"\nallow_registration = false\n\
         made_up_key = 1\n[global.well_known]\nclient = \"https://file.example\"\n",
    )
    .unwrap();
    let file = file.to_string_lossy().into_owned();
    // The harness sets CONDUIT_SERVER_NAME=localhost; the file's value must lose to it.
    let server = TestServer::with_env(&[("CONDUIT_CONFIG", &file)]);
    let (status, json) = server
        .request(
            reqwest::Method::GET,
            "/.well-known/matrix/client",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["m.homeserver"]["base_url"], "https://file.example");
    server.register("abby", "pw pw pw").await; // env's allow_registration=true wins
    let (_, me) = server.login("abby", "pw pw pw").await;
    assert_eq!(
        me["user_id"], "@abby:localhost",
        "the environment's server_name wins"
    );
    assert!(
        server.log().contains("global.made_up_key"),
        "unknown keys are warned about"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused() {
    let server = TestServer::start();
    let output = command(server.data_dir(), &[])
        .output()
        .expect("run a second conduit");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    // The first one is unharmed.
    let (status, _) = server
        .request(reqwest::Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn built_in_tls_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let server = TestServer::with_env(&[
        ("CONDUIT_TLS_CERTS", &cert.to_string_lossy()),
        ("CONDUIT_TLS_KEY", &key.to_string_lossy()),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let url = server.url.replace("127.0.0.1", "localhost");
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .resolve(
            "localhost",
            format!("127.0.0.1:{}", url.rsplit(':').next().unwrap())
                .parse()
                .unwrap(),
        )
        .build()
        .unwrap();
    let response = client
        .get(format!("{url}/_matrix/client/versions"))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["versions"].as_array().is_some_and(|v| !v.is_empty()));
    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::get(format!(
        "http://127.0.0.1:{}/_matrix/client/versions",
        url.rsplit(':').next().unwrap()
    ))
    .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[test]
fn help_lists_the_admin_commands() {
    let output = std::process::Command::new(binary())
        .args(["user", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["create", "reset-password", "deactivate", "list"] {
        assert!(text.contains(command), "{text}");
    }
}
