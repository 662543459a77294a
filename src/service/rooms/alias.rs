//! Room aliases and the public room directory.
//!
//! Trees:
//! - `alias_roomid`: alias → room id.
//! - `roomid_alias`: `room id 0xFF alias` → the user who created the alias.
//! - `publicroomid`: room id → empty, for rooms listed in the directory.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};

use super::{Rooms, pair_key, prefix_key};
use crate::{
    Error, Result,
    storage::{Batch, Db, Tree},
};

pub struct Aliases {
    db: Db,
    /// Makes "is it free?" + "take it" atomic.
    claim_lock: std::sync::Mutex<()>,
    alias_room: Arc<dyn Tree>,
    room_alias: Arc<dyn Tree>,
    public: Arc<dyn Tree>,
}

impl Aliases {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            claim_lock: std::sync::Mutex::new(()),
            alias_room: db.tree("alias_roomid")?,
            room_alias: db.tree("roomid_alias")?,
            public: db.tree("publicroomid")?,
        })
    }

    pub fn resolve_local(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        Ok(self.alias_room.get(alias.as_bytes())?.and_then(|bytes| {
            OwnedRoomId::try_from(String::from_utf8_lossy(&bytes).into_owned()).ok()
        }))
    }

    /// Points `alias` at `room_id` if it is free (atomically); false if it is taken. Not yet
    /// persisted: see [`Aliases::create`].
    pub fn claim(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<bool> {
        // Appendices, "Room aliases": at most 255 bytes, sigil and domain included.
        if alias.as_str().len() > 255 {
            return Err(Error::invalid_param(
                "A room alias is at most 255 bytes long.",
            ));
        }
        let _guard = self.claim_lock.lock().expect("alias lock");
        if self.resolve_local(alias)?.is_some() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.insert(
            &*self.alias_room,
            alias.as_bytes().to_vec(),
            room_id.as_bytes().to_vec(),
        );
        batch.insert(
            &*self.room_alias,
            pair_key(room_id.as_str(), alias.as_str()),
            creator.as_bytes().to_vec(),
        );
        self.db.apply(&batch)?;
        Ok(true)
    }

    /// [`Aliases::claim`], durably.
    pub async fn create(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> Result<bool> {
        let claimed = self.claim(alias, room_id, creator)?;
        self.db.persist().await?;
        Ok(claimed)
    }

    /// Who created `alias` (they may delete it), if it exists.
    pub fn creator(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        let Some(room_id) = self.resolve_local(alias)? else {
            return Ok(None);
        };
        let creator = self
            .room_alias
            .get(&pair_key(room_id.as_str(), alias.as_str()))?
            .and_then(|bytes| {
                OwnedUserId::try_from(String::from_utf8_lossy(&bytes).into_owned()).ok()
            })
            .ok_or_else(|| Error::internal("alias without creator"))?;
        Ok(Some((room_id, creator)))
    }

    /// Removes an alias, durably.
    pub async fn remove(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::new();
        batch.remove(&*self.alias_room, alias.as_bytes().to_vec());
        batch.remove(
            &*self.room_alias,
            pair_key(room_id.as_str(), alias.as_str()),
        );
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(())
    }

    /// The local aliases of a room.
    pub fn aliases_of(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = prefix_key(room_id.as_str());
        self.room_alias
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, _) = entry?;
                OwnedRoomAliasId::try_from(
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                )
                .map_err(|_| Error::internal("bad alias key"))
            })
            .collect()
    }

    /// Lists (or unlists) a room in the public directory, durably.
    pub async fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        if public {
            self.public.insert(room_id.as_bytes(), &[])?;
        } else {
            self.public.remove(room_id.as_bytes())?;
        }
        self.db.persist().await?;
        Ok(())
    }

    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.public.get(room_id.as_bytes())?.is_some())
    }

    pub fn public_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        self.public
            .scan_prefix(b"")
            .map(|entry| {
                let (key, _) = entry?;
                OwnedRoomId::try_from(String::from_utf8_lossy(&key).into_owned())
                    .map_err(|_| Error::internal("bad public room key"))
            })
            .collect()
    }
}

impl Rooms {
    /// `GET /rooms/{roomId}/aliases`: the room's local aliases, for a user joined to it, or
    /// anyone if its history is `world_readable` (client-server API, "Room aliases").
    /// Anyone else, and any room this server does not know, is `403 M_FORBIDDEN`, so the
    /// answer does not tell which rooms exist (as Synapse).
    pub fn local_aliases_for(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Vec<OwnedRoomAliasId>> {
        let forbidden = || Error::forbidden("You are not a member of this room.");
        if self.info(room_id)?.is_none() {
            return Err(forbidden());
        }
        if !self.is_joined(room_id, user_id)? {
            let world_readable = self
                .current_state_event(
                    room_id,
                    &ruma::events::StateEventType::RoomHistoryVisibility,
                    "",
                )?
                .and_then(|event| event.content_str("history_visibility"))
                .is_some_and(|visibility| visibility == "world_readable");
            if !world_readable {
                return Err(forbidden());
            }
        }
        self.aliases.aliases_of(room_id)
    }
}
