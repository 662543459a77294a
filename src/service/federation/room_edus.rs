//! Typing notices and read receipts across servers (server-server API, "Typing
//! Notifications" and "Receipts"): ours go as `m.typing` / `m.receipt` EDUs to every other
//! server with a user joined in the room (through the outgoing queue); theirs are applied
//! for their own users who are joined in the room, and reach our users' syncs like local
//! ones, unless the room's server ACL denies their server. Private receipts
//! (`m.read.private`) never leave the server.

use std::time::Duration;

use ruma::{
    OwnedEventId, RoomId, ServerName, UserId,
    api::federation::transactions::edu::{ReceiptContent, TypingContent},
    events::{receipt::ReceiptThread, room::member::MembershipState},
};
use serde_json::{Value as JsonValue, json};

use super::sender::Item;
use crate::{Result, service::Services};

/// How long another server's "typing" holds when it does not say it stopped.
const REMOTE_TYPING: Duration = Duration::from_secs(30);

impl Services {
    /// Queues `edu` for every other server with a user joined in `room_id` (nothing when
    /// federation is off or nobody else is there).
    async fn send_room_edu(&self, room_id: &RoomId, edu: JsonValue) -> Result<()> {
        let Some(sender) = self.federation.sender() else {
            return Ok(());
        };
        let servers = self.rooms.joined_servers(room_id)?;
        if servers.is_empty() {
            return Ok(());
        }
        sender
            .queue_many(
                servers
                    .into_iter()
                    .map(|server| (server, vec![Item::Edu(edu.clone())]))
                    .collect(),
            )
            .await
    }

    /// Our user started or stopped typing in `room_id`.
    pub async fn typing_sent(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        typing: bool,
    ) -> Result<()> {
        self.send_room_edu(
            room_id,
            json!({
                "edu_type": "m.typing",
                "content": { "room_id": room_id, "user_id": user_id, "typing": typing },
            }),
        )
        .await
    }

    /// Our user's public read receipt.
    pub async fn receipt_sent(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &OwnedEventId,
        thread: Option<&str>,
    ) -> Result<()> {
        let mut data = json!({ "ts": ruma::MilliSecondsSinceUnixEpoch::now() });
        if let Some(thread) = thread {
            data["thread_id"] = thread.into();
        }
        self.send_room_edu(
            room_id,
            json!({
                "edu_type": "m.receipt",
                "content": { room_id.as_str(): { "m.read": { user_id.as_str(): {
                    "data": data, "event_ids": [event_id],
                } } } },
            }),
        )
        .await
    }

    /// Whether `user_id`, of `origin`, may speak in `room_id`: a server speaks only for its
    /// own users, and only for those joined in the room.
    fn speaks_for(&self, origin: &ServerName, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(user_id.server_name() == origin
            && self.rooms.membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    fn local_members(&self, room_id: &RoomId) -> Result<Vec<ruma::OwnedUserId>> {
        Ok(self
            .rooms
            .members(room_id)?
            .into_iter()
            .filter(|(user, membership)| {
                *membership == MembershipState::Join && self.users.is_local(user)
            })
            .map(|(user, _)| user)
            .collect())
    }

    /// An `m.typing` EDU from `origin`.
    pub(crate) fn receive_typing(
        &self,
        origin: &ServerName,
        content: &TypingContent,
    ) -> Result<()> {
        // S2S "Server Access Control Lists": a typing EDU from a server the room's ACL
        // denies is ignored.
        if !self.server_acl_allows(origin, &content.room_id)?
            || !self.speaks_for(origin, &content.room_id, &content.user_id)?
        {
            return Ok(());
        }
        let members = self.local_members(&content.room_id)?;
        // Expired entries are not shown (`typing_event` filters them) even if the other
        // server never says it stopped.
        self.ephemeral.set_typing(
            &content.room_id,
            &content.user_id,
            content.typing.then_some(REMOTE_TYPING),
            members.iter().map(|user| user.as_ref()),
        )?;
        Ok(())
    }

    /// An `m.receipt` EDU from `origin`: the newest event each user read, per room.
    pub(crate) async fn receive_receipts(
        &self,
        origin: &ServerName,
        content: &ReceiptContent,
    ) -> Result<()> {
        for (room_id, receipts) in &content.receipts {
            // S2S "Server Access Control Lists": all receipts for a room whose ACL denies
            // the origin are ignored.
            if self.rooms.info(room_id)?.is_none() || !self.server_acl_allows(origin, room_id)? {
                continue;
            }
            let members = self.local_members(room_id)?;
            for (user_id, receipt) in &receipts.read {
                if !self.speaks_for(origin, room_id, user_id)? {
                    continue;
                }
                let thread = match &receipt.data.thread {
                    ReceiptThread::Main => Some("main".to_owned()),
                    ReceiptThread::Thread(root) => Some(root.to_string()),
                    _ => None,
                };
                // Only events this server holds: a receipt for an unknown one shows nothing.
                for event_id in &receipt.event_ids {
                    if self.rooms.client_pdu(event_id)?.is_some() {
                        self.ephemeral
                            .set_receipt(
                                room_id,
                                user_id,
                                "m.read",
                                thread.as_deref(),
                                event_id.clone(),
                                members.iter().map(|user| user.as_ref()),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }
}
