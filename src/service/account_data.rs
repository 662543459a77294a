//! Account data (global and per room, e.g. `m.direct`, `m.tag`, `m.push_rules`,
//! `m.fully_read`) and stored sync filters.
//!
//! Trees:
//! - `useraccountdata`: `user 0xFF room id (empty for global) 0xFF type` → `{"position", "content"}`
//!   (JSON). A sync sends the entries whose position is at or after its `since`.
//! - `userfilterid_filter`: `user 0xFF filter id` → filter definition (JSON).
//! - `userpusherid_pusher`: `user 0xFF app id 0xFF pushkey` → pusher (JSON). Delivery to push
//!   gateways is not implemented yet; pushers are stored and listed.

use std::{collections::HashSet, sync::Arc};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{rooms::pair_key, stream::Stream};
use crate::{
    Error, Result, crypto,
    storage::{Db, Table},
};

#[derive(Clone, Debug, Deserialize, Serialize)]
struct Entry {
    position: u64,
    content: JsonValue,
}

/// One changed account-data item.
pub struct Item {
    pub room_id: Option<OwnedRoomId>,
    pub kind: String,
    pub content: JsonValue,
    /// Stream position of its last change.
    pub position: u64,
}

/// Filters a user may store (Element stores one or two).
const MAX_FILTERS_PER_USER: usize = 100;

pub struct AccountData {
    db: Db,
    stream: Arc<Stream>,
    data: Table<Entry>,
    filters: Table<JsonValue>,
    pushers: Table<JsonValue>,
}

fn data_key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Vec<u8> {
    let mut key = pair_key(user_id.as_str(), room_id.map_or("", RoomId::as_str));
    key.push(0xFF);
    key.extend_from_slice(kind.as_bytes());
    key
}

impl AccountData {
    pub fn new(db: &Db, stream: Arc<Stream>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            stream,
            data: db.table("useraccountdata")?,
            filters: db.table("userfilterid_filter")?,
            pushers: db.table("userpusherid_pusher")?,
        })
    }

    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<JsonValue>> {
        Ok(self
            .data
            .get(&data_key(user_id, room_id, kind))?
            .map(|entry| entry.content))
    }

    /// The users `user_id` ignores (`m.ignored_user_list`, module "Ignoring Users"): their
    /// non-state events and their invites are not shown to `user_id`.
    pub fn ignored_users(&self, user_id: &UserId) -> Result<HashSet<OwnedUserId>> {
        Ok(self
            .get(user_id, None, "m.ignored_user_list")?
            .and_then(|content| content.get("ignored_users").cloned())
            .and_then(|users| users.as_object().cloned())
            .map(|users| {
                users
                    .keys()
                    .filter_map(|user| OwnedUserId::try_from(user.as_str()).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Sets an item, durably, at a new stream position; wakes the user's syncs.
    pub async fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: JsonValue,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("Account data must be a JSON object."));
        }
        let key = data_key(user_id, room_id, kind);
        let (position, ()) = self.stream.commit(|position, batch| {
            batch.insert_json(&self.data, key, &Entry { position, content });
            Ok(())
        })?;
        self.stream.touch([user_id], position);
        self.db.persist().await?;
        Ok(())
    }

    /// Items changed from `since` on (all of them without `since`).
    pub fn changed_since(&self, user_id: &UserId, since: Option<u64>) -> Result<Vec<Item>> {
        let prefix = super::rooms::prefix_key(user_id.as_str());
        let mut items = Vec::new();
        for entry in self.data.scan_prefix(&prefix) {
            let (key, entry) = entry?;
            if since.is_some_and(|since| entry.position < since) {
                continue;
            }
            let rest = &key[prefix.len()..];
            let split = rest
                .iter()
                .position(|&b| b == 0xFF)
                .ok_or_else(|| Error::internal("bad account data key"))?;
            let room = String::from_utf8_lossy(&rest[..split]).into_owned();
            let room_id = if room.is_empty() {
                None
            } else {
                OwnedRoomId::try_from(room).ok()
            };
            let kind = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            items.push(Item {
                room_id,
                kind,
                content: entry.content,
                position: entry.position,
            });
        }
        Ok(items)
    }

    /// Stores a filter; returns its id.
    pub async fn create_filter(&self, user_id: &UserId, filter: JsonValue) -> Result<String> {
        let prefix = super::rooms::prefix_key(user_id.as_str());
        if self.filters.tree().scan_prefix(&prefix).count() >= MAX_FILTERS_PER_USER {
            return Err(Error::new(
                ruma::api::error::ErrorKind::ResourceLimitExceeded(
                    ruma::api::error::ResourceLimitExceededErrorData::new(
                        "mailto:admin".to_owned(),
                    ),
                ),
                "Too many stored filters.",
            ));
        }
        let id = crypto::random_string(12, b"abcdefghijklmnopqrstuvwxyz0123456789");
        self.filters
            .insert(&pair_key(user_id.as_str(), &id), &filter)?;
        self.db.persist().await?;
        Ok(id)
    }

    pub fn filter(&self, user_id: &UserId, id: &str) -> Result<Option<JsonValue>> {
        Ok(self.filters.get(&pair_key(user_id.as_str(), id))?)
    }

    /// Adds or replaces (`Some`) or removes (`None`) the pusher `(app_id, pushkey)`.
    pub async fn set_pusher(
        &self,
        user_id: &UserId,
        app_id: &str,
        pushkey: &str,
        pusher: Option<JsonValue>,
    ) -> Result<()> {
        let mut key = pair_key(user_id.as_str(), app_id);
        key.push(0xFF);
        key.extend_from_slice(pushkey.as_bytes());
        match pusher {
            Some(pusher) => self.pushers.insert(&key, &pusher)?,
            None => self.pushers.remove(&key)?,
        }
        self.db.persist().await?;
        Ok(())
    }

    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<JsonValue>> {
        let prefix = super::rooms::prefix_key(user_id.as_str());
        self.pushers
            .scan_prefix(&prefix)
            .map(|entry| Ok(entry?.1))
            .collect()
    }
}
