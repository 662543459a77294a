//! TURN credentials for calls (client-server API, "Voice over IP", `voip/turnServer`).
//!
//! With `turn_secret` the credentials are time-limited in the shared-secret scheme coturn
//! implements (`use-auth-secret` / `static-auth-secret`, the "TURN REST API"): the username
//! is `expiry:user_id` (expiry in Unix seconds) and the password is
//! `base64(HMAC-SHA1(secret, username))`, so the TURN server checks them without asking us.
//! Otherwise the static `turn_username`/`turn_password` are handed out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hmac;
use ruma::UserId;

use crate::config::Config;

#[derive(Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl: Duration,
}

/// The credentials for `user_id` at `now`, or `None` when TURN is not configured.
pub fn credentials(config: &Config, user_id: &UserId, now: SystemTime) -> Option<TurnCredentials> {
    if config.turn_uris.is_empty() {
        return None;
    }
    let ttl = Duration::from_secs(config.turn_ttl);
    let (username, password) = match (
        &config.turn_secret,
        &config.turn_username,
        &config.turn_password,
    ) {
        (Some(secret), _, _) if !secret.is_empty() => {
            let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
            let username = format!("{}:{user_id}", expiry.as_secs());
            // SHA-1 is what the scheme specifies; it is used as a MAC here, not a hash.
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
            let tag = hmac::sign(&key, username.as_bytes());
            (username, STANDARD.encode(tag.as_ref()))
        }
        (_, Some(username), Some(password)) => (username.clone(), password.clone()),
        _ => return None,
    };
    Some(TurnCredentials {
        username,
        password,
        uris: config.turn_uris.clone(),
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn config() -> Config {
        let mut config = crate::config::tests_support::config();
        config.turn_uris = vec!["turn:turn.example.org?transport=udp".to_owned()];
        config.turn_ttl = 3600;
        config
    }

    #[test]
    fn shared_secret_credentials_follow_the_coturn_scheme() {
        let mut config = config();
        config.turn_secret = Some("s3cret".to_owned());
        let now = UNIX_EPOCH + Duration::from_secs(1_795_420_613);
        let credentials = credentials(&config, user_id!("@alice:localhost"), now).unwrap();
        assert_eq!(credentials.username, "1795424213:@alice:localhost");
        // Computed independently: printf %s USER | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(credentials.password, "rxoXL08YEkggX0sluNxnEx7KkKg=");
        assert_eq!(credentials.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn static_credentials_or_nothing() {
        let mut config = config();
        assert_eq!(
            credentials(&config, user_id!("@a:b"), SystemTime::now()),
            None
        );
        config.turn_username = Some("user".to_owned());
        config.turn_password = Some("pass".to_owned());
        let credentials = credentials(&config, user_id!("@a:b"), SystemTime::now()).unwrap();
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("user", "pass")
        );
        config.turn_uris.clear();
        assert_eq!(
            super::credentials(&config, user_id!("@a:b"), SystemTime::now()),
            None
        );
    }
}
