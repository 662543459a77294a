//! Spaces (client-server API "Spaces"; server-server API "Spaces"): one room as a space
//! hierarchy shows it (its summary and its `m.space.child` events), and who may see it.
//! The walks, local and across servers, are in `service::federation::space`.

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UInt, UserId,
    events::{
        StateEventType, room::member::MembershipState, space::child::HierarchySpaceChildEvent,
    },
    room::{JoinRule, JoinRuleKind, JoinRuleSummary, RoomSummary},
    serde::Raw,
};
use serde_json::json;

use super::Rooms;
use crate::{Error, Result};

/// Who looks at a hierarchy: a local user (client API) or another server (federation).
#[derive(Clone, Copy, Debug)]
pub enum Viewer<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
}

/// One room as a hierarchy shows it.
#[derive(Debug)]
pub struct SpaceRoom {
    pub summary: RoomSummary,
    /// Its `m.space.child` events as the hierarchy shows them (stripped, with
    /// `origin_server_ts`).
    pub children_state: Vec<Raw<HierarchySpaceChildEvent>>,
    /// The children those events name, with their `via` servers, in the same order.
    pub children: Vec<(OwnedRoomId, Vec<OwnedServerName>)>,
}

/// Whether a room may be shown in a hierarchy (client-server API `GET /hierarchy`: rooms
/// the user "could join or peek"; server-server API: those the requesting server "could
/// feasibly peek/join"), as Synapse decides: anyone may see a room one can join or knock
/// on freely (`public`, `knock`, `knock_restricted`) or that is world-readable; a member
/// (joined or invited: `member`) always; for a `restricted` room, also one joined to one
/// of its allowed rooms (`joined_allowed`, asked per allowed room, in order, until yes).
pub fn accessible(
    join_rule: &JoinRuleSummary,
    world_readable: bool,
    member: bool,
    mut joined_allowed: impl FnMut(&RoomId) -> Result<bool>,
) -> Result<bool> {
    if world_readable || member {
        return Ok(true);
    }
    match join_rule {
        JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_) => {
            Ok(true)
        }
        JoinRuleSummary::Restricted(restricted) => {
            for room in &restricted.allowed_room_ids {
                if joined_allowed(room)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

impl Rooms {
    /// Whether `viewer` may see `room_id` in a hierarchy ([`accessible`]); `false` for a room
    /// this server does not hold. A server counts as a member when one of its users is
    /// joined or invited, and as joined to an allowed room when one of its users is joined
    /// there.
    pub fn hierarchy_visible(&self, room_id: &RoomId, viewer: Viewer<'_>) -> Result<bool> {
        if self.info(room_id)?.is_none() {
            return Ok(false);
        }
        let facts = self.facts(room_id)?;
        let rule = self.join_rule_summary(room_id)?;
        let member = match viewer {
            Viewer::User(user) => matches!(
                self.membership(room_id, user)?,
                Some(MembershipState::Join | MembershipState::Invite)
            ),
            Viewer::Server(server) => self.members(room_id)?.into_iter().any(|(user, m)| {
                user.server_name() == server
                    && matches!(m, MembershipState::Join | MembershipState::Invite)
            }),
        };
        accessible(&rule, facts.world_readable, member, |allowed| {
            self.viewer_joined(allowed, viewer)
        })
    }

    /// Whether `viewer` (a user, or any user of a server) is joined to `room_id` here.
    pub fn viewer_joined(&self, room_id: &RoomId, viewer: Viewer<'_>) -> Result<bool> {
        match viewer {
            Viewer::User(user) => self.is_joined(room_id, user),
            Viewer::Server(server) => Ok(self
                .members(room_id)?
                .into_iter()
                .any(|(user, m)| user.server_name() == server && m == MembershipState::Join)),
        }
    }

    /// The room's join rule as the summary shows it, with `allowed_room_ids` for a
    /// restricted room (spec: `GET /hierarchy`). A rule this server gives no meaning to (any
    /// string is valid in `m.room.join_rules`) lets no one join, as the auth rules say; ruma
    /// cannot write such a rule back out, so it is shown as `private`, the spec's rule
    /// reserved with no meaning.
    pub fn join_rule_summary(&self, room_id: &RoomId) -> Result<JoinRuleSummary> {
        let content = self
            .current_state_event(room_id, &StateEventType::RoomJoinRules, "")?
            .map(|event| event.content_value());
        let summary = match content {
            // A room without join rules is invite-only (spec: auth rules, m.room.join_rules).
            None => JoinRuleSummary::Invite,
            Some(content) => match serde_json::from_value::<JoinRule>(content.clone()) {
                Ok(rule) => JoinRuleSummary::from(rule),
                // A known rule with a malformed extra field (a restricted rule's `allow`).
                Err(_) => JoinRuleSummary::from(JoinRuleKind::from(
                    content["join_rule"].as_str().unwrap_or_default(),
                )),
            },
        };
        Ok(match summary.kind() {
            JoinRuleKind::Invite
            | JoinRuleKind::Knock
            | JoinRuleKind::Private
            | JoinRuleKind::Restricted
            | JoinRuleKind::KnockRestricted
            | JoinRuleKind::Public => summary,
            _ => JoinRuleSummary::Private,
        })
    }

    /// The room's summary, from its current state.
    pub fn room_summary(&self, room_id: &RoomId) -> Result<RoomSummary> {
        let facts = self.facts(room_id)?;
        let mut summary = RoomSummary::new(
            room_id.to_owned(),
            self.join_rule_summary(room_id)?,
            facts.guest_can_join,
            UInt::new(facts.joined_members).unwrap_or_default(),
            facts.world_readable,
        );
        summary.name = facts.name;
        summary.topic = facts.topic;
        summary.canonical_alias = facts.canonical_alias;
        summary.avatar_url = facts.avatar_url.map(Into::into);
        summary.room_type = facts.room_type.map(|t| t.as_str().into());
        summary.room_version = Some(facts.version);
        Ok(summary)
    }

    /// The room as a hierarchy shows it: its summary and its current `m.space.child`
    /// events, those with a non-empty `via` (one without has been removed, spec
    /// `m.space.child`), only suggested ones with `suggested_only`.
    pub fn space_room(&self, room_id: &RoomId, suggested_only: bool) -> Result<SpaceRoom> {
        let summary = self.room_summary(room_id)?;
        let state = self.current_state(&self.existing(room_id)?)?;
        let mut children_state = Vec::new();
        let mut children = Vec::new();
        for pdu in self.state_events(&state)? {
            if pdu.kind.to_string() != "m.space.child" {
                continue;
            }
            let content = pdu.content_value();
            let via: Vec<OwnedServerName> = content["via"]
                .as_array()
                .map(|via| {
                    via.iter()
                        .filter_map(|v| v.as_str())
                        .filter_map(|v| OwnedServerName::try_from(v).ok())
                        .collect()
                })
                .unwrap_or_default();
            let suggested = content["suggested"].as_bool().unwrap_or(false);
            let Some(child) = pdu
                .state_key
                .as_deref()
                .and_then(|key| OwnedRoomId::try_from(key).ok())
            else {
                continue;
            };
            if via.is_empty() || (suggested_only && !suggested) {
                continue;
            }
            let event = json!({
                "type": "m.space.child",
                "state_key": child,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": pdu.origin_server_ts,
            });
            children_state.push(Raw::from_json(
                serde_json::value::to_raw_value(&event)
                    .map_err(|e| Error::internal(format!("m.space.child serialisation: {e}")))?,
            ));
            children.push((child, via));
        }
        Ok(SpaceRoom {
            summary,
            children_state,
            children,
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, room::RestrictedSummary, room_id};

    use super::*;

    fn never(_: &RoomId) -> Result<bool> {
        Ok(false)
    }

    #[test]
    fn open_rooms_are_seen_by_anyone() {
        for rule in [
            JoinRuleSummary::Public,
            JoinRuleSummary::Knock,
            JoinRuleSummary::KnockRestricted(RestrictedSummary::new(vec![])),
        ] {
            assert!(accessible(&rule, false, false, never).unwrap(), "{rule:?}");
        }
    }

    #[test]
    fn closed_rooms_are_seen_by_members_or_when_world_readable() {
        for rule in [JoinRuleSummary::Invite, JoinRuleSummary::Private] {
            assert!(!accessible(&rule, false, false, never).unwrap());
            assert!(accessible(&rule, false, true, never).unwrap());
            assert!(accessible(&rule, true, false, never).unwrap());
        }
    }

    #[test]
    fn restricted_rooms_are_seen_by_those_joined_to_an_allowed_room() {
        let rule = JoinRuleSummary::Restricted(RestrictedSummary::new(vec![
            owned_room_id!("!a:example.org"),
            owned_room_id!("!b:example.org"),
        ]));
        assert!(!accessible(&rule, false, false, never).unwrap());
        let in_b = |room: &RoomId| Ok(room == room_id!("!b:example.org"));
        assert!(accessible(&rule, false, false, in_b).unwrap());
        let in_c = |room: &RoomId| Ok(room == room_id!("!c:example.org"));
        assert!(!accessible(&rule, false, false, in_c).unwrap());
    }

    #[test]
    fn a_storage_error_is_an_error_not_a_verdict() {
        let rule = JoinRuleSummary::Restricted(RestrictedSummary::new(vec![owned_room_id!(
            "!a:example.org"
        )]));
        let failing = |_: &RoomId| Err(Error::internal("disk"));
        assert!(accessible(&rule, false, false, failing).is_err());
    }
}
