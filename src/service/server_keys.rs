//! The server's ed25519 signing key, generated at first start and kept in the `global` tree.
//! Every event this server creates is signed with it (key id `ed25519:<version>`).

use ruma::signatures::Ed25519KeyPair;

use crate::{Error, Result, crypto, storage::Db};

const GLOBAL: &str = "global";
const KEY_DER: &[u8] = b"signing_key_pkcs8";
const KEY_VERSION: &[u8] = b"signing_key_version";

pub struct ServerKeys {
    keypair: Ed25519KeyPair,
}

impl ServerKeys {
    /// Loads the key, or makes and stores one on first start.
    pub fn load_or_generate(db: &Db) -> Result<Self> {
        let global = db.tree(GLOBAL)?;
        let (der, version) = match (global.get(KEY_DER)?, global.get(KEY_VERSION)?) {
            (Some(der), Some(version)) => (der, String::from_utf8_lossy(&version).into_owned()),
            _ => {
                let der = Ed25519KeyPair::generate().to_vec();
                let version = crypto::random_string(6, b"abcdefghijklmnopqrstuvwxyz0123456789");
                global.insert(KEY_DER, &der)?;
                global.insert(KEY_VERSION, version.as_bytes())?;
                db.flush_blocking()?;
                (der, version)
            }
        };
        let keypair = Ed25519KeyPair::from_der(&der, version)
            .map_err(|e| Error::internal(format!("stored signing key is unusable: {e}")))?;
        Ok(Self { keypair })
    }

    pub fn keypair(&self) -> &Ed25519KeyPair {
        &self.keypair
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
            ServerKeys::load_or_generate(&db).unwrap().key_id()
        };
        let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
        let again = ServerKeys::load_or_generate(&db).unwrap();
        assert_eq!(again.key_id(), first);
        assert!(first.starts_with("ed25519:"));
    }
}
