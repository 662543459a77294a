//! Server administration, as Synapse's admin API offers it (`api/synapse_admin/`): what an
//! admin tool (synapse-admin, Ketesa, Draupnir, scripts) reads and changes about accounts.
//! The handlers translate HTTP and Synapse's JSON shapes; the facts come from here.
//!
//! Listing walks every account: admin requests are rare and a club's server has dozens
//! of accounts, not millions (Synapse's own listing scans its table too).

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::{Services, devices::LastSeen};
use crate::{Error, Result};

/// What the admin API tells of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub name: OwnedUserId,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    /// Milliseconds since the Unix epoch.
    pub creation_ts: u64,
    /// The latest use of any of the account's devices (ms), if any was seen.
    pub last_seen_ts: Option<u64>,
}

/// How `GET /_synapse/admin/v2/users` sorts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrderBy {
    #[default]
    Name,
    Admin,
    Deactivated,
    Displayname,
    AvatarUrl,
    CreationTs,
    LastSeenTs,
    /// Orders Synapse offers whose field is the same for every account here (`is_guest`,
    /// `user_type`, `shadow_banned`): by name.
    Constant,
}

impl OrderBy {
    /// Synapse's names for the orders; `None` for a name it does not know.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "name" => Self::Name,
            "admin" => Self::Admin,
            "deactivated" => Self::Deactivated,
            "displayname" => Self::Displayname,
            "avatar_url" => Self::AvatarUrl,
            "creation_ts" => Self::CreationTs,
            "last_seen_ts" => Self::LastSeenTs,
            "is_guest" | "user_type" | "shadow_banned" => Self::Constant,
            _ => return None,
        })
    }
}

/// Which accounts `GET /_synapse/admin/v2/users` lists.
#[derive(Clone, Debug, Default)]
pub struct UserQuery {
    /// Offset into the sorted list.
    pub from: usize,
    pub limit: usize,
    /// Only user ids containing this.
    pub user_id: Option<String>,
    /// Only localparts or display names containing this, whatever the case (wins over
    /// `user_id`).
    pub name: Option<String>,
    /// Include deactivated accounts.
    pub deactivated: bool,
    /// Only admins (`Some(true)`) or only others (`Some(false)`).
    pub admins: Option<bool>,
    pub order_by: OrderBy,
    pub backwards: bool,
}

/// One account, or `None` if there is no such local account.
pub fn user(services: &Services, user_id: &UserId) -> Result<Option<UserSummary>> {
    if !services.users.is_local(user_id) {
        return Err(Error::invalid_param("Can only look up local users"));
    }
    let Some(account) = services.users.account(user_id)? else {
        return Ok(None);
    };
    summary(services, user_id.to_owned(), &account).map(Some)
}

fn summary(
    services: &Services,
    name: OwnedUserId,
    account: &super::users::Account,
) -> Result<UserSummary> {
    let profile = services.users.stored_profile(&name)?;
    let text = |field: &str| {
        profile
            .get(field)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let mut last_seen_ts = None;
    for (device_id, _) in services.devices.list(&name)? {
        if let Some(seen) = services.devices.last_seen(&name, &device_id)? {
            last_seen_ts = last_seen_ts.max(Some(seen.ts));
        }
    }
    Ok(UserSummary {
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
        admin: account.admin,
        deactivated: account.deactivated,
        creation_ts: account.created_ts,
        last_seen_ts,
        name,
    })
}

/// One page of accounts as `query` asks, and how many match in all.
pub fn users(services: &Services, query: &UserQuery) -> Result<(Vec<UserSummary>, usize)> {
    let mut matching = Vec::new();
    for (name, account) in services.users.list()? {
        if account.deactivated && !query.deactivated {
            continue;
        }
        if query.admins.is_some_and(|admins| admins != account.admin) {
            continue;
        }
        if query.name.is_none()
            && let Some(part) = &query.user_id
            && !name.as_str().contains(part.as_str())
        {
            continue;
        }
        let summary = summary(services, name, &account)?;
        if let Some(part) = &query.name {
            // Case-insensitive, as Synapse's search is.
            let part = part.to_lowercase();
            let in_name = summary.name.localpart().contains(part.as_str());
            let in_displayname = summary
                .displayname
                .as_deref()
                .is_some_and(|displayname| displayname.to_lowercase().contains(part.as_str()));
            if !in_name && !in_displayname {
                continue;
            }
        }
        matching.push(summary);
    }
    // Ties are broken by ascending name, whichever the direction (as Synapse does).
    matching.sort_by(|a, b| {
        let by = match query.order_by {
            OrderBy::Name | OrderBy::Constant => std::cmp::Ordering::Equal,
            OrderBy::Admin => a.admin.cmp(&b.admin),
            OrderBy::Deactivated => a.deactivated.cmp(&b.deactivated),
            OrderBy::Displayname => a.displayname.cmp(&b.displayname),
            OrderBy::AvatarUrl => a.avatar_url.cmp(&b.avatar_url),
            OrderBy::CreationTs => a.creation_ts.cmp(&b.creation_ts),
            OrderBy::LastSeenTs => a.last_seen_ts.cmp(&b.last_seen_ts),
        };
        if query.order_by == OrderBy::Name && query.backwards {
            b.name.cmp(&a.name)
        } else if query.backwards {
            by.reverse().then_with(|| a.name.cmp(&b.name))
        } else {
            by.then_with(|| a.name.cmp(&b.name))
        }
    });
    let total = matching.len();
    let page = matching
        .into_iter()
        .skip(query.from)
        .take(query.limit)
        .collect();
    Ok((page, total))
}

/// The local account `user_id` names, or 404 (400 for another server's user).
fn existing(services: &Services, user_id: &UserId) -> Result<super::users::Account> {
    if !services.users.is_local(user_id) {
        return Err(Error::invalid_param("Can only look up local users"));
    }
    services
        .users
        .account(user_id)?
        .ok_or_else(|| Error::not_found("User not found"))
}

/// Deactivates an account as its owner could (every device and key gone, the name kept);
/// with `erase`, its profile too. An account already deactivated stays so.
pub async fn deactivate(services: &Services, user_id: &UserId, erase: bool) -> Result<()> {
    if existing(services, user_id)?.deactivated {
        return Ok(());
    }
    let logout = services.deactivation_batch(user_id)?;
    services.users.deactivate(user_id, erase, logout).await?;
    services.device_list_changed(user_id).await?;
    tracing::info!(%user_id, "account deactivated by an admin");
    Ok(())
}

/// Sets a new password; with `logout_devices`, every device is logged out in the same write.
pub async fn reset_password(
    services: &Services,
    user_id: &UserId,
    password: String,
    logout_devices: bool,
) -> Result<()> {
    existing(services, user_id)?;
    let logout = if logout_devices {
        services.devices.removal(user_id, None)?
    } else {
        crate::storage::Batch::new()
    };
    services
        .users
        .set_password(user_id, password, logout)
        .await?;
    if logout_devices {
        services.device_list_changed(user_id).await?;
    }
    tracing::info!(%user_id, "password reset by an admin");
    Ok(())
}

/// Each device of the account with when and where it was last used (if it was).
pub fn whois(
    services: &Services,
    user_id: &UserId,
) -> Result<Vec<(OwnedDeviceId, Option<LastSeen>)>> {
    existing(services, user_id)?;
    services
        .devices
        .list(user_id)?
        .into_iter()
        .map(|(device_id, _)| {
            let seen = services.devices.last_seen(user_id, &device_id)?;
            Ok((device_id, seen))
        })
        .collect()
}

/// What `PUT /_synapse/admin/v2/users/{userId}` asks to change.
#[derive(Clone, Debug, Default)]
pub struct UserChanges {
    pub password: Option<String>,
    /// Log every device out when the password changes (Synapse's default).
    pub logout_devices: bool,
    /// `Some("")` removes it.
    pub displayname: Option<String>,
    /// `Some("")` removes it.
    pub avatar_url: Option<String>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
}

/// Creates the account (returns `true`) or changes it. Profile changes reach the user's
/// rooms through `propagate` (the client API's own path), called by the handler.
pub async fn create_or_change(
    services: &Services,
    user_id: &UserId,
    changes: &UserChanges,
) -> Result<bool> {
    if !services.users.is_local(user_id) {
        return Err(Error::invalid_param(
            "This endpoint can only be used with local users",
        ));
    }
    let Some(account) = services.users.account(user_id)? else {
        // A new name follows the same rules as one chosen at registration.
        super::registration::validate_localpart(
            user_id.localpart(),
            services.config.server_name.as_str(),
        )?;
        if changes.deactivated == Some(true) {
            return Err(Error::invalid_param(
                "A new account cannot start deactivated.",
            ));
        }
        services
            .users
            .create(
                user_id,
                changes.password.clone(),
                changes.admin.unwrap_or(false),
                changes.displayname.clone().filter(|name| !name.is_empty()),
            )
            .await?;
        if let Some(avatar_url) = changes.avatar_url.as_ref().filter(|url| !url.is_empty()) {
            services
                .users
                .set_profile_field(user_id, "avatar_url", Some(avatar_url.clone().into()))
                .await?;
        }
        tracing::info!(%user_id, "account created by an admin");
        return Ok(true);
    };
    match (changes.deactivated, account.deactivated) {
        (Some(true), false) => deactivate(services, user_id, false).await?,
        (Some(false), true) => {
            let password = changes.password.clone().ok_or_else(|| {
                Error::bad_request(
                    ruma::api::error::ErrorKind::MissingParam,
                    "Must provide a password to re-activate an account.",
                )
            })?;
            services.users.reactivate(user_id, password).await?;
        }
        _ => {
            if let Some(password) = &changes.password {
                reset_password(services, user_id, password.clone(), changes.logout_devices).await?;
            }
        }
    }
    if let Some(admin) = changes.admin
        && admin != account.admin
    {
        services.users.set_admin(user_id, admin).await?;
    }
    for (field, value) in [
        ("displayname", &changes.displayname),
        ("avatar_url", &changes.avatar_url),
    ] {
        if let Some(value) = value {
            let value = (!value.is_empty()).then(|| value.clone().into());
            services
                .users
                .set_profile_field(user_id, field, value)
                .await?;
        }
    }
    Ok(false)
}

/// The account's devices, each with when and where it was last used (if it was).
pub fn devices(
    services: &Services,
    user_id: &UserId,
) -> Result<Vec<(OwnedDeviceId, super::devices::Device, Option<LastSeen>)>> {
    existing(services, user_id)?;
    services
        .devices
        .list(user_id)?
        .into_iter()
        .map(|(device_id, device)| {
            let seen = services.devices.last_seen(user_id, &device_id)?;
            Ok((device_id, device, seen))
        })
        .collect()
}

/// Logs one device out (its keys go with it). A device that does not exist is no error.
pub async fn delete_device(
    services: &Services,
    user_id: &UserId,
    device_id: OwnedDeviceId,
) -> Result<()> {
    existing(services, user_id)?;
    services.devices.remove(user_id, &[device_id]).await?;
    services.device_list_changed(user_id).await?;
    Ok(())
}

/// The rooms held here that the account is joined to.
pub fn joined_rooms(services: &Services, user_id: &UserId) -> Result<Vec<ruma::OwnedRoomId>> {
    existing(services, user_id)?;
    Ok(services
        .rooms
        .rooms_of(user_id)?
        .into_iter()
        .filter(|(_, entry)| {
            entry.membership == ruma::events::room::member::MembershipState::Join
                && entry.stripped_state.is_none()
        })
        .map(|(room_id, _)| room_id)
        .collect())
}
