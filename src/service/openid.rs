//! OpenID tokens (client-server API, "OpenID"): a short-lived token a user hands to a
//! third party (a widget, an integration manager), which that party exchanges for the
//! user's id at `GET /_matrix/federation/v1/openid/userinfo` (served once federation is
//! built; it calls [`OpenId::user_for_token`]). The token proves nothing else: it is not an
//! access token.
//!
//! Trees:
//! - `openidtoken_userid`: SHA-256 of the token → `expiry (u64 ms, big-endian) user_id`.
//!   Tokens themselves are never stored.
//! - `openidexpiry_token`: `expiry (u64 ms) digest` → empty, in expiry order, so expired
//!   tokens are pruned without a scan: each new token removes up to [`PRUNE_BATCH`] expired
//!   ones in the same batch, so the trees hold little more than the tokens issued within the
//!   last [`LIFETIME`].

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::{
    Error, Result, crypto,
    service::users::now_ms,
    storage::{Batch, Db, Tree},
};

/// How long a token is valid (Synapse's default `openid_token_lifetime`).
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Expired tokens removed at most per new token.
const PRUNE_BATCH: usize = 64;

pub struct OpenId {
    db: Db,
    tokens: std::sync::Arc<dyn Tree>,
    expiries: std::sync::Arc<dyn Tree>,
}

impl OpenId {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            tokens: db.tree("openidtoken_userid")?,
            expiries: db.tree("openidexpiry_token")?,
        })
    }

    /// A new token for `user_id`, valid for [`LIFETIME`], durably stored.
    pub async fn issue(&self, user_id: &UserId) -> Result<String> {
        self.issue_at(user_id, now_ms()).await
    }

    async fn issue_at(&self, user_id: &UserId, now: u64) -> Result<String> {
        let token = crypto::random_token();
        let digest = crypto::token_digest(&token);
        let expires = now.saturating_add(LIFETIME.as_millis() as u64);
        let mut batch = Batch::new();
        self.prune_into(&mut batch, now)?;
        let mut value = expires.to_be_bytes().to_vec();
        value.extend_from_slice(user_id.as_bytes());
        batch.insert(&*self.tokens, digest.to_vec(), value);
        batch.insert(&*self.expiries, expiry_key(expires, &digest), Vec::new());
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(token)
    }

    /// The user a token was issued to, if it exists and has not expired.
    pub fn user_for_token(&self, token: &str) -> Result<Option<OwnedUserId>> {
        self.user_for_token_at(token, now_ms())
    }

    fn user_for_token_at(&self, token: &str, now: u64) -> Result<Option<OwnedUserId>> {
        let Some(value) = self.tokens.get(&crypto::token_digest(token))? else {
            return Ok(None);
        };
        let corrupt = || Error::internal("bad value in openidtoken_userid");
        let expires = value
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(corrupt)?;
        if expires <= now {
            return Ok(None);
        }
        let user = std::str::from_utf8(&value[8..]).map_err(|_| corrupt())?;
        Ok(Some(UserId::parse(user).map_err(|_| corrupt())?))
    }

    /// Adds the removal of up to [`PRUNE_BATCH`] expired tokens to `batch`.
    fn prune_into(&self, batch: &mut Batch, now: u64) -> Result<()> {
        for entry in self.expiries.iter_from(&[], false).take(PRUNE_BATCH) {
            let (key, _) = entry?;
            let Some(expires) = key
                .get(..8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                return Err(Error::internal("bad key in openidexpiry_token"));
            };
            if expires > now {
                break;
            }
            batch.remove(&*self.tokens, key[8..].to_vec());
            batch.remove(&*self.expiries, key);
        }
        Ok(())
    }
}

fn expiry_key(expires: u64, digest: &[u8]) -> Vec<u8> {
    let mut key = expires.to_be_bytes().to_vec();
    key.extend_from_slice(digest);
    key
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn count(tree: &dyn Tree) -> usize {
        tree.iter_from(&[], false).count()
    }

    #[tokio::test]
    async fn a_token_names_its_user_until_it_expires() {
        let openid = OpenId::new(&Db::memory()).unwrap();
        let alice = user_id!("@alice:x");
        let token = openid.issue_at(alice, 1_000).await.unwrap();
        assert_eq!(
            openid.user_for_token_at(&token, 1_001).unwrap().as_deref(),
            Some(alice)
        );
        let expiry = 1_000 + LIFETIME.as_millis() as u64;
        assert_eq!(openid.user_for_token_at(&token, expiry).unwrap(), None);
        assert_eq!(openid.user_for_token_at("unknown", 1_001).unwrap(), None);
    }

    #[tokio::test]
    async fn expired_tokens_are_pruned_when_new_ones_are_issued() {
        let openid = OpenId::new(&Db::memory()).unwrap();
        let alice = user_id!("@alice:x");
        for _ in 0..3 {
            openid.issue_at(alice, 1_000).await.unwrap();
        }
        assert_eq!(count(&*openid.tokens), 3);
        // Still valid: nothing is pruned.
        let fresh = openid.issue_at(alice, 2_000).await.unwrap();
        assert_eq!(count(&*openid.tokens), 4);
        // The first three have expired, the fourth has not.
        let later = 1_000 + LIFETIME.as_millis() as u64 + 500;
        let newest = openid.issue_at(alice, later).await.unwrap();
        assert_eq!(count(&*openid.tokens), 2);
        assert_eq!(count(&*openid.expiries), 2);
        assert!(openid.user_for_token_at(&fresh, later).unwrap().is_some());
        assert!(openid.user_for_token_at(&newest, later).unwrap().is_some());
    }
}
