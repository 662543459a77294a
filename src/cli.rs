//! `conduit user …`, `conduit media …` and `conduit keys …`: administration on the database of a *stopped*
//! server.
//!
//! sled locks the database directory, so while the server runs these commands fail with a
//! message saying so instead of corrupting anything.

use clap::Subcommand;
use ruma::OwnedUserId;

use crate::{
    config::Config,
    crypto,
    service::{Services, server_keys::ServerKeys},
    storage::{Db, StorageError},
};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account. Prints a generated password unless --password is given.
    Create {
        /// The user name (localpart), e.g. `alice`.
        name: String,
        /// Make the account a server admin (the first account always is).
        #[arg(long)]
        admin: bool,
        /// The password; visible to other local users in the process list, so prefer the
        /// generated one.
        #[arg(long)]
        password: Option<String>,
    },
    /// Set a new password (generated unless --password is given) and log out all devices.
    ResetPassword {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Deactivate an account for good: it can never log in again and its name stays taken.
    Deactivate { name: String },
    /// List all accounts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Delete one media item (and its thumbnails), e.g. `mxc://example.org/AbC123`.
    Delete { mxc: String },
    /// List the media a user uploaded: URI, size, type, upload time, file name.
    List { name: String },
    /// Delete all media a user uploaded.
    PurgeUser { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the server's signing key and the old keys it still publishes.
    Show,
    /// Make a new signing key. The current one is kept as an old verify key that expires
    /// now: other servers can still check what it signed, and new events are signed with
    /// the new key from the next start.
    Rotate,
}

/// The given password, or a generated one that must also be shown.
fn password_or_generated(given: Option<String>) -> (String, Option<String>) {
    match given {
        Some(password) => (password, None),
        None => {
            let password = generated_password();
            (password.clone(), Some(password))
        }
    }
}

fn generated_password() -> String {
    crypto::random_string(
        24,
        b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789",
    )
}

/// Opens the database, explaining the lock error in the words an admin needs.
pub fn open_database(config: &Config) -> Result<Db, String> {
    Db::open(
        &config.database_path,
        config.backend(),
        config.db_cache_capacity_bytes(),
        crate::service::migrations::STEPS,
    )
    .inspect(|db| db.set_min_free_disk(config.min_free_disk_bytes()))
    .map_err(|error| match error {
        StorageError::Locked(path) => format!(
            "the database at {path} is in use: the conduit server seems to be running. \
             Stop it first; these commands work on a stopped server."
        ),
        other => format!(
            "cannot open the database at {}: {other}",
            config.database_path.display()
        ),
    })
}

/// The user id of an existing active account called `name`.
fn existing_user(services: &Services, name: &str) -> Result<OwnedUserId, String> {
    match known_user(services, name)? {
        (user_id, false) => Ok(user_id),
        (user_id, true) => Err(format!("{user_id} is deactivated")),
    }
}

/// The user id of an existing account called `name`, and whether it is deactivated.
fn known_user(services: &Services, name: &str) -> Result<(OwnedUserId, bool), String> {
    let user_id = services
        .registration
        .user_id_from_login(name, &services.config)
        .ok_or_else(|| {
            format!(
                "`{name}` is not a user name on {}",
                services.config.server_name
            )
        })?;
    match services
        .users
        .account(&user_id)
        .map_err(|e| e.to_string())?
    {
        Some(account) => Ok((user_id, account.deactivated)),
        None => Err(format!("{user_id} does not exist")),
    }
}

/// Runs one command; the `Ok` text is printed to standard output.
pub async fn run(command: UserCommand, config: Config) -> Result<String, String> {
    let db = open_database(&config)?;
    let services = Services::build(config, db.clone()).map_err(|e| e.to_string())?;
    let output = match command {
        UserCommand::Create {
            name,
            admin,
            password,
        } => {
            let user_id = services
                .registration
                .new_user_id(Some(&name), &services.config)
                .map_err(|e| e.to_string())?;
            let (password, shown) = password_or_generated(password);
            let admin = services
                .users
                .create(&user_id, Some(password), admin, None)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = format!("created {user_id}{}", if admin { " (admin)" } else { "" });
            if let Some(password) = shown {
                out.push_str(&format!("\npassword: {password}"));
            }
            out
        }
        UserCommand::ResetPassword { name, password } => {
            let user_id = existing_user(&services, &name)?;
            let (password, shown) = password_or_generated(password);
            let logout = services
                .devices
                .removal(&user_id, None)
                .map_err(|e| e.to_string())?;
            services
                .users
                .set_password(&user_id, password, logout)
                .await
                .map_err(|e| e.to_string())?;
            services
                .device_list_changed(&user_id)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = format!("new password set for {user_id}; all its devices are logged out");
            if let Some(password) = shown {
                out.push_str(&format!("\npassword: {password}"));
            }
            out
        }
        UserCommand::Deactivate { name } => {
            let user_id = existing_user(&services, &name)?;
            let removal = services
                .deactivation_batch(&user_id)
                .map_err(|e| e.to_string())?;
            services
                .users
                .deactivate(&user_id, false, removal)
                .await
                .map_err(|e| e.to_string())?;
            services
                .device_list_changed(&user_id)
                .await
                .map_err(|e| e.to_string())?;
            format!("deactivated {user_id}")
        }
        UserCommand::List => {
            let mut out = String::new();
            for (user_id, account) in services.users.list().map_err(|e| e.to_string())? {
                let mut flags = Vec::new();
                if account.admin {
                    flags.push("admin");
                }
                if account.deactivated {
                    flags.push("deactivated");
                }
                out.push_str(user_id.as_str());
                if !flags.is_empty() {
                    out.push_str(&format!(" ({})", flags.join(", ")));
                }
                out.push('\n');
            }
            out.trim_end().to_owned()
        }
    };
    db.flush_blocking().map_err(|e| e.to_string())?;
    Ok(output)
}

/// Runs one media command; the `Ok` text is printed to standard output.
pub async fn run_media(command: MediaCommand, config: Config) -> Result<String, String> {
    let db = open_database(&config)?;
    let services = Services::build(config, db.clone()).map_err(|e| e.to_string())?;
    let output = match command {
        MediaCommand::Delete { mxc } => {
            let uri = ruma::OwnedMxcUri::from(mxc.as_str());
            let (server, id) = uri
                .parts()
                .map_err(|_| format!("`{mxc}` is not an mxc:// URI"))?;
            if services
                .media
                .delete(server, id)
                .await
                .map_err(|e| e.to_string())?
            {
                format!("deleted {mxc}")
            } else {
                return Err(format!("{mxc} is not media of this server"));
            }
        }
        MediaCommand::List { name } => {
            // Deactivated accounts included: their media can still be listed and purged.
            let (user_id, _) = known_user(&services, &name)?;
            let mut out = String::new();
            for (uri, meta) in services
                .media
                .list_user(&user_id)
                .map_err(|e| e.to_string())?
            {
                let size = meta
                    .content
                    .as_ref()
                    .map_or_else(|| "pending".to_owned(), |c| format!("{} bytes", c.size));
                out.push_str(&format!(
                    "{uri}\t{size}\t{}\t{}\t{}\n",
                    meta.content_type.as_deref().unwrap_or("-"),
                    meta.created_ms,
                    meta.filename.as_deref().unwrap_or("-"),
                ));
            }
            out.trim_end().to_owned()
        }
        MediaCommand::PurgeUser { name } => {
            // Deactivated accounts included: their media can still be listed and purged.
            let (user_id, _) = known_user(&services, &name)?;
            let count = services
                .media
                .purge_user(&user_id)
                .await
                .map_err(|e| e.to_string())?;
            format!("deleted {count} media items of {user_id}")
        }
    };
    db.flush_blocking().map_err(|e| e.to_string())?;
    Ok(output)
}

/// Runs one key command; the `Ok` text is printed to standard output.
pub async fn run_keys(command: KeysCommand, config: Config) -> Result<String, String> {
    let db = open_database(&config)?;
    let before = ServerKeys::load_or_generate(&db).map_err(|e| e.to_string())?;
    let keys = match command {
        KeysCommand::Show => before,
        KeysCommand::Rotate => ServerKeys::rotate(&db).map_err(|e| e.to_string())?,
    };
    let public = |key: &[u8]| {
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(key.to_vec()).encode()
    };
    let mut out = format!(
        "signing key: {} {}",
        keys.key_id(),
        public(&keys.keypair().public_key())
    );
    for (key_id, old) in keys.old_verify_keys() {
        out.push_str(&format!(
            "\nold key: {key_id} {} (expired at {} ms)",
            old.key.encode(),
            old.expired_ts.get()
        ));
    }
    db.flush_blocking().map_err(|e| e.to_string())?;
    Ok(out)
}
