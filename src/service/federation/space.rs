//! Space hierarchies across servers (client-server API `GET /hierarchy`, server-server API
//! "Spaces"):
//!
//! - [`Services::federation_hierarchy`] answers another server: the room and its children
//!   this server holds, only those the server may see ([`Viewer::Server`]);
//! - [`Services::hierarchy`] walks a space for a local user, breadth first: rooms held
//!   here from their current state, and a child room not held here from the federation
//!   `hierarchy` of a server its `m.space.child` event names in `via` (the spec's "the
//!   server should ask the servers in `via`"). The walk is bounded: rooms walked
//!   ([`MAX_ROOMS`]), remote requests per walk ([`MAX_REMOTE_REQUESTS`], 10 s each), servers
//!   tried per room ([`VIA_TRIED`]). There is no cache across requests.

use std::collections::{HashMap, HashSet, VecDeque};

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
    api::{
        client::space::SpaceHierarchyRoomsChunk,
        federation::space::{SpaceHierarchyParentSummary, get_hierarchy},
    },
    room::{RoomSummary, RoomType},
};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::space::{SpaceRoom, Viewer, accessible},
    },
};

/// Rooms one walk looks at, at most, whatever the space looks like.
pub const MAX_ROOMS: usize = 1_000;
/// Rooms per page when the client names no `limit`, and at most.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;
/// Federation `hierarchy` requests one walk makes at most.
pub const MAX_REMOTE_REQUESTS: usize = 20;
/// Servers of a child's `via` asked in turn.
pub const VIA_TRIED: usize = 3;
/// How long one remote `hierarchy` request may take, so an unresponsive server costs a
/// walk seconds, not the client request's whole life.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Children of one remote room considered at most.
const MAX_CHILDREN: usize = 1_000;

/// The answer to another server's `hierarchy`.
#[derive(Debug)]
pub struct FederationHierarchy {
    pub room: SpaceHierarchyParentSummary,
    pub children: Vec<RoomSummary>,
    pub inaccessible_children: Vec<OwnedRoomId>,
}

/// What a client asked of a walk.
#[derive(Debug)]
pub struct HierarchyQuery<'a> {
    pub room_id: &'a RoomId,
    pub suggested_only: bool,
    pub max_depth: Option<usize>,
    pub limit: Option<usize>,
    pub from: Option<&'a str>,
}

/// One page of a walk.
#[derive(Debug)]
pub struct HierarchyPage {
    pub rooms: Vec<SpaceHierarchyRoomsChunk>,
    pub next_batch: Option<String>,
}

/// A room reached by the walk, with the servers its parent named for it.
struct Queued {
    room_id: OwnedRoomId,
    depth: usize,
    via: Vec<OwnedServerName>,
}

/// The children named by a remote room's `children_state` (those that parse, with a `via`).
fn remote_children(room: &SpaceHierarchyParentSummary) -> Vec<(OwnedRoomId, Vec<OwnedServerName>)> {
    room.children_state
        .iter()
        .take(MAX_CHILDREN)
        .filter_map(|raw| raw.deserialize().ok())
        .filter(|child| !child.content.via.is_empty())
        .map(|child| (child.state_key, child.content.via))
        .collect()
}

impl Services {
    /// `GET /_matrix/federation/v1/hierarchy/{roomId}`: the room and its children held
    /// here, for `origin`. 404 when the room is not held here or `origin` may not see it
    /// (server-server API, "Spaces"); a child `origin` may not see is listed in
    /// `inaccessible_children`, one not held here is left out.
    pub fn federation_hierarchy(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<FederationHierarchy> {
        let viewer = Viewer::Server(origin);
        self.check_server_acl(origin, room_id)?;
        if !self.rooms.hierarchy_visible(room_id, viewer)? {
            return Err(Error::not_found(
                "The room is not known here, or your server cannot see it.",
            ));
        }
        let SpaceRoom {
            summary,
            children_state,
            children: named,
        } = self.rooms.space_room(room_id, suggested_only)?;
        let mut children = Vec::new();
        let mut inaccessible_children = Vec::new();
        let mut seen = HashSet::new();
        for (child, _) in named {
            if !seen.insert(child.clone()) || self.rooms.info(&child)?.is_none() {
                continue;
            }
            if self.rooms.hierarchy_visible(&child, viewer)? {
                children.push(self.rooms.room_summary(&child)?);
            } else {
                inaccessible_children.push(child);
            }
        }
        Ok(FederationHierarchy {
            room: SpaceHierarchyParentSummary::new(summary, children_state),
            children,
            inaccessible_children,
        })
    }

    /// A room this server does not hold, from the `hierarchy` of one of `via` (tried in
    /// turn, up to [`VIA_TRIED`]); `None` when none answers with it. Each request counts
    /// against `budget`.
    async fn remote_space_room(
        &self,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
        budget: &mut usize,
    ) -> Option<get_hierarchy::v1::Response> {
        let client = self.federation.client()?;
        for server in via
            .iter()
            .filter(|server| **server != self.config.server_name)
            .take(VIA_TRIED)
        {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            match tokio::time::timeout(REMOTE_TIMEOUT, client.send(server, request)).await {
                Ok(Ok(response)) if response.room.summary.room_id == room_id => {
                    return Some(response);
                }
                Ok(Ok(_)) => {
                    tracing::info!(%server, %room_id, "hierarchy answer for another room");
                }
                Ok(Err(error)) => {
                    tracing::info!(%server, %room_id, %error, "remote hierarchy failed");
                }
                Err(_) => tracing::info!(%server, %room_id, "remote hierarchy timed out"),
            }
        }
        None
    }

    /// Whether `user` may see a room not held here, from its summary ([`accessible`]): they
    /// are never a member of it here, and "joined to an allowed room" is asked of the rooms
    /// held here.
    fn remote_room_accessible(&self, summary: &RoomSummary, user: &UserId) -> Result<bool> {
        accessible(
            &summary.join_rule,
            summary.world_readable,
            false,
            |allowed| self.rooms.is_joined(allowed, user),
        )
    }

    /// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` for `user`: the space (held here, and
    /// visible to them, else 403), then its children breadth first, across servers; offset
    /// tokens.
    pub async fn hierarchy(
        &self,
        user: &UserId,
        query: &HierarchyQuery<'_>,
    ) -> Result<HierarchyPage> {
        let viewer = Viewer::User(user);
        if !self.rooms.hierarchy_visible(query.room_id, viewer)? {
            return Err(Error::forbidden("You cannot see this room."));
        }
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let max_depth = query.max_depth.unwrap_or(usize::MAX);
        let offset = match query.from {
            Some(token) => token
                .parse::<usize>()
                .map_err(|_| Error::invalid_param("Invalid from token."))?,
            None => 0,
        };

        let mut budget = MAX_REMOTE_REQUESTS;
        // Summaries of children that remote answers gave (bounded by the walk).
        let mut known: HashMap<OwnedRoomId, RoomSummary> = HashMap::new();
        let mut inaccessible: HashSet<OwnedRoomId> = HashSet::new();
        let mut chunks = Vec::new();
        let mut seen = HashSet::from([query.room_id.to_owned()]);
        let mut queue = VecDeque::from([Queued {
            room_id: query.room_id.to_owned(),
            depth: 0,
            via: Vec::new(),
        }]);
        while let Some(Queued {
            room_id,
            depth,
            via,
        }) = queue.pop_front()
        {
            if chunks.len() >= MAX_ROOMS || chunks.len() > offset + limit {
                break;
            }
            let (chunk, children) = if self.rooms.info(&room_id)?.is_some() {
                if !self.rooms.hierarchy_visible(&room_id, viewer)? {
                    continue;
                }
                let room = self.rooms.space_room(&room_id, query.suggested_only)?;
                (
                    SpaceHierarchyRoomsChunk::new(room.summary, room.children_state),
                    room.children,
                )
            } else if inaccessible.contains(&room_id) {
                continue;
            } else if let Some(summary) = known
                .remove(&room_id)
                .filter(|s| s.room_type != Some(RoomType::Space))
            {
                // A room (not a space) its parent's answer described: nothing below it.
                if !self.remote_room_accessible(&summary, user)? {
                    continue;
                }
                (
                    SpaceHierarchyRoomsChunk::new(summary, Vec::new()),
                    Vec::new(),
                )
            } else {
                let Some(answer) = self
                    .remote_space_room(&room_id, &via, query.suggested_only, &mut budget)
                    .await
                else {
                    continue;
                };
                if !self.remote_room_accessible(&answer.room.summary, user)? {
                    continue;
                }
                let children = remote_children(&answer.room);
                for child in answer.children.into_iter().take(MAX_CHILDREN) {
                    if known.len() < MAX_ROOMS {
                        known.insert(child.room_id.clone(), child);
                    }
                }
                for child in answer.inaccessible_children.into_iter().take(MAX_CHILDREN) {
                    if inaccessible.len() < MAX_ROOMS {
                        inaccessible.insert(child);
                    }
                }
                let room = answer.room;
                (
                    SpaceHierarchyRoomsChunk::new(room.summary, room.children_state),
                    children,
                )
            };
            chunks.push(chunk);
            if depth < max_depth {
                for (child, via) in children {
                    if seen.len() < MAX_ROOMS && seen.insert(child.clone()) {
                        queue.push_back(Queued {
                            room_id: child,
                            depth: depth + 1,
                            via,
                        });
                    }
                }
            }
        }
        let more = chunks.len() > offset + limit;
        Ok(HierarchyPage {
            rooms: chunks.into_iter().skip(offset).take(limit).collect(),
            next_batch: more.then(|| (offset + limit).to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::{api::federation::space::SpaceHierarchyParentSummary, serde::Raw};
    use serde_json::json;

    use super::*;

    #[test]
    fn remote_children_need_a_via_and_a_room_id() {
        let child = |key: &str, via: serde_json::Value| {
            Raw::from_json(
                serde_json::value::to_raw_value(&json!({
                    "type": "m.space.child",
                    "state_key": key,
                    "content": { "via": via },
                    "sender": "@a:example.org",
                    "origin_server_ts": 1,
                }))
                .unwrap(),
            )
        };
        let summary = RoomSummary::new(
            ruma::owned_room_id!("!space:example.org"),
            ruma::room::JoinRuleSummary::Public,
            false,
            ruma::UInt::from(1u32),
            false,
        );
        let room = SpaceHierarchyParentSummary::new(
            summary,
            vec![
                child("!a:example.org", json!(["example.org"])),
                child("!b:example.org", json!([])),
                child("not a room", json!(["example.org"])),
            ],
        );
        let children = remote_children(&room);
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].0, "!a:example.org");
    }
}
