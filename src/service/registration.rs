//! Turning requested names into user ids, and Synapse's shared-secret registration nonces.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, UserId, api::error::ErrorKind};

use super::rate_limit::FailureLimiter;
use crate::{Error, Result, config::Config, crypto};

/// How long a shared-secret registration nonce is valid (Synapse: 60 s).
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// At most this many unused nonces are kept; older ones are dropped first.
const MAX_NONCES: usize = 1_000;

/// Wrong registration tokens tolerated per minute, server-wide. The token is one shared
/// secret, so guesses are counted together wherever they come from.
const MAX_TOKEN_FAILURES: u32 = 5;
const TOKEN_FAILURE_KEY: &str = "registration_token";

pub struct Registration {
    nonces: Mutex<HashMap<String, Instant>>,
    token_failures: FailureLimiter,
}

impl Default for Registration {
    fn default() -> Self {
        Self {
            nonces: Mutex::default(),
            token_failures: FailureLimiter::new(MAX_TOKEN_FAILURES, Duration::from_secs(60), 1),
        }
    }
}

/// Checks a requested localpart (appendices, "User Identifiers", since v1.8): not empty,
/// only `a-z 0-9 . _ = - / +`, and the whole user id at most 255 bytes. Callers downcase
/// first, as the spec asks homeservers to do for new users.
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(c);
    if localpart.is_empty() || !localpart.chars().all(allowed) {
        return Err(Error::new(
            ErrorKind::InvalidUsername,
            "User names may contain only a-z, 0-9, and . _ = - / +",
        ));
    }
    if 1 + localpart.len() + 1 + server_name.len() > 255 {
        return Err(Error::new(
            ErrorKind::InvalidUsername,
            "The user ID would exceed 255 bytes.",
        ));
    }
    Ok(())
}

impl Registration {
    pub fn new() -> Self {
        Self::default()
    }

    /// The user id for a new account called `username` (downcased), or a random name.
    pub fn new_user_id(&self, username: Option<&str>, config: &Config) -> Result<OwnedUserId> {
        let localpart = match username {
            Some(name) => name.to_lowercase(),
            None => crypto::random_string(10, b"abcdefghijklmnopqrstuvwxyz0123456789"),
        };
        validate_localpart(&localpart, config.server_name.as_str())?;
        UserId::parse_with_server_name(localpart.as_str(), &config.server_name)
            .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user name."))
    }

    /// The local user id a login names: a localpart or a full user id on this server.
    /// Case-insensitive, since every local user id is lower case.
    pub fn user_id_from_login(&self, name: &str, config: &Config) -> Option<OwnedUserId> {
        let user_id = if name.starts_with('@') {
            UserId::parse(name.to_lowercase()).ok()?
        } else {
            UserId::parse_with_server_name(name.to_lowercase(), &config.server_name).ok()?
        };
        (user_id.server_name() == config.server_name).then_some(user_id)
    }

    /// Whether `given` is the configured registration token. Wrong guesses are limited
    /// (`M_LIMIT_EXCEEDED`), so the token cannot be brute-forced.
    pub fn check_token(&self, given: &str, expected: &str) -> Result<bool> {
        if let Err(wait) = self.token_failures.check(TOKEN_FAILURE_KEY) {
            return Err(Error::limit_exceeded(wait));
        }
        let valid = crypto::constant_time_eq(given.as_bytes(), expected.as_bytes());
        if !valid {
            self.token_failures.record_failure(TOKEN_FAILURE_KEY);
        }
        Ok(valid)
    }

    /// A fresh single-use nonce for `/_synapse/admin/v1/register`.
    pub fn new_nonce(&self) -> String {
        let now = Instant::now();
        let mut nonces = self.nonces.lock().expect("nonce lock");
        nonces.retain(|_, issued| now.duration_since(*issued) < NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES
            && let Some(oldest) = nonces
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone())
        {
            nonces.remove(&oldest);
        }
        let nonce = crypto::random_token();
        nonces.insert(nonce.clone(), now);
        nonce
    }

    /// Uses up `nonce`; false if it was never issued, already used, or expired.
    pub fn take_nonce(&self, nonce: &str) -> bool {
        let issued = self.nonces.lock().expect("nonce lock").remove(nonce);
        issued.is_some_and(|issued| issued.elapsed() < NONCE_LIFETIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_rules() {
        for good in ["alice", "a.b_c=d-e/f+g", "0", "x".repeat(200).as_str()] {
            assert!(validate_localpart(good, "example.org").is_ok(), "{good}");
        }
        for bad in [
            "",
            "Alice",
            "al ice",
            "al:ice",
            "al@ice",
            "ålice",
            "a*",
            "x".repeat(250).as_str(),
        ] {
            let error = validate_localpart(bad, "example.org").unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Matrix {
                        kind: ErrorKind::InvalidUsername,
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_tokens_are_limited() {
        let registration = Registration::new();
        assert!(registration.check_token("right", "right").unwrap());
        for _ in 0..MAX_TOKEN_FAILURES {
            assert!(!registration.check_token("guess", "right").unwrap());
        }
        let error = registration.check_token("right", "right").unwrap_err();
        assert!(matches!(
            error,
            Error::Matrix {
                kind: ErrorKind::LimitExceeded(_),
                ..
            }
        ));
    }

    #[test]
    fn nonces_are_single_use() {
        let registration = Registration::new();
        let nonce = registration.new_nonce();
        assert!(registration.take_nonce(&nonce));
        assert!(!registration.take_nonce(&nonce));
        assert!(!registration.take_nonce("never issued"));
    }

    #[test]
    fn nonce_store_is_bounded() {
        let registration = Registration::new();
        let first = registration.new_nonce();
        for _ in 0..MAX_NONCES {
            registration.new_nonce();
        }
        assert!(registration.nonces.lock().unwrap().len() <= MAX_NONCES);
        assert!(
            !registration.take_nonce(&first),
            "the oldest nonce was dropped"
        );
    }
}
