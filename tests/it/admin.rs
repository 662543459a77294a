//! Administration: the `conduit user …` commands and Synapse's shared-secret registration.

use reqwest::{Method, StatusCode};
use ring::hmac;
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn user_commands_work_on_a_stopped_server_and_refuse_a_running_one() {
    let mut server = TestServer::start();
    server.register("first", "pw pw pw").await;

    // While the server runs, the database is locked and the command says why.
    let output = server.admin(&["user", "list"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("running"), "{}", stderr(&output));

    assert!(server.stop().success());
    let output = server.admin(&["user", "create", "Zoe"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("created @zoe:localhost"), "{text}");
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password");
    assert!(password.len() >= 20);

    let output = server.admin(&[
        "user",
        "create",
        "root",
        "--admin",
        "--password",
        "admin pw",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("(admin)"));
    let output = server.admin(&["user", "create", "zoe"]);
    assert!(!output.status.success(), "names are unique");
    let output = server.admin(&["user", "create", "bad name"]);
    assert!(!output.status.success());

    let list = stdout(&server.admin(&["user", "list"]));
    assert!(
        list.contains("@first:localhost (admin)"),
        "the first account is an admin:\n{list}"
    );
    assert!(list.contains("@root:localhost (admin)"), "{list}");
    assert!(list.lines().any(|l| l == "@zoe:localhost"), "{list}");

    server.restart();
    let (status, json) = server.login("zoe", password).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let zoe_token = json["access_token"].as_str().unwrap().to_owned();
    assert!(server.stop().success());

    let output = server.admin(&["user", "reset-password", "zoe", "--password", "new zoe pw"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = server.admin(&["user", "deactivate", "@root:localhost"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&server.admin(&["user", "list"])).contains("@root:localhost (admin, deactivated)")
    );
    let output = server.admin(&["user", "reset-password", "nobody"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );

    server.restart();
    assert_error(
        &server.whoami(&zoe_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(server.login("zoe", "new zoe pw").await.0, StatusCode::OK);
    assert_error(
        &server.login("root", "admin pw").await,
        StatusCode::FORBIDDEN,
        "M_USER_DEACTIVATED",
    );
}

/// The MAC exactly as Synapse's `register_new_matrix_user` computes it.
fn synapse_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let mut message = format!("{nonce}\0{user}\0{password}\0").into_bytes();
    message.extend_from_slice(if admin { b"admin" } else { b"notadmin" });
    hmac::sign(&key, &message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn nonce(server: &TestServer) -> String {
    let (status, json) = server
        .request(Method::GET, "/_synapse/admin/v1/register", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["nonce"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn shared_secret_registration_like_register_new_matrix_user() {
    let secret = "s3cret-shared";
    let mut server = TestServer::with_env(&[
        ("CONDUIT_REGISTRATION_SHARED_SECRET", secret),
        ("CONDUIT_ALLOW_REGISTRATION", "false"),
    ]);
    let post = |body: Value| {
        server.request(
            Method::POST,
            "/_synapse/admin/v1/register",
            None,
            Some(body),
        )
    };

    // Somebody else is the first account (and so an admin whatever the flag says), so that
    // the admin flag below is what makes yvonne an admin, and zack is not one.
    for (name, admin) in [("first", false), ("zack", false)] {
        let n = nonce(&server).await;
        let body = json!({
            "nonce": n, "username": name, "password": "pw", "admin": admin,
            "mac": synapse_mac(secret, &n, name, "pw", admin),
        });
        assert_eq!(post(body).await.0, StatusCode::OK);
    }

    let n = nonce(&server).await;
    let body = json!({
        "nonce": n, "username": "yvonne", "password": "pw pw pw", "admin": true,
        "mac": synapse_mac(secret, &n, "yvonne", "pw pw pw", true),
    });
    let (status, json) = post(body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["user_id"], "@yvonne:localhost");
    assert_eq!(json["home_server"], "localhost");
    assert!(json["device_id"].is_string());
    let token = json["access_token"].as_str().unwrap();
    assert_eq!(server.whoami(token).await.0, StatusCode::OK);
    assert_eq!(server.login("yvonne", "pw pw pw").await.0, StatusCode::OK);

    // A nonce works once.
    assert_error(&post(body).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");

    // A MAC made with another secret, or for other data, is refused and creates nothing.
    let n = nonce(&server).await;
    let forged = json!({
        "nonce": n, "username": "zed", "password": "pw", "admin": false,
        "mac": synapse_mac("wrong secret", &n, "zed", "pw", false),
    });
    assert_error(&post(forged).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let n = nonce(&server).await;
    let tampered = json!({
        "nonce": n, "username": "zed", "password": "pw", "admin": true,
        "mac": synapse_mac(secret, &n, "zed", "pw", false),
    });
    assert_error(&post(tampered).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_error(
        &post(json!({ "nonce": "x" })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    assert!(server.stop().success());
    let list = stdout(&server.admin(&["user", "list"]));
    assert!(list.contains("@yvonne:localhost (admin)"), "{list}");
    assert!(
        list.lines().any(|line| line == "@zack:localhost"),
        "admin: false is not an admin:\n{list}"
    );
    assert!(!list.contains("zed"), "{list}");
}

#[tokio::test]
async fn shared_secret_registration_is_off_without_a_secret() {
    let server = TestServer::start();
    assert_error(
        &server
            .request(Method::GET, "/_synapse/admin/v1/register", None, None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
}
