//! The events a user was notified about, for `GET /notifications` (client-server API, "Push
//! notifications", "Listing Notifications").
//!
//! Worked out when asked, not recorded on send: the rooms' timelines are the record. A page
//! walks the timelines of the user's rooms backwards, merged by timeline position (for live
//! events the stream position, one order across rooms), and evaluates each event against
//! the user's push rules, as [`super::Push::event_sent`] does for the counts. Recording a row per notified member
//! per send cost a third of the send throughput and 70% more database in the load
//! benchmark (`docs/benchmarks.md`), for a list few clients ever ask for.
//!
//! What that means, and where it differs from Synapse (which stores the actions at send):
//! - the actions are those of the user's rules *now* and of the room's current state
//!   (member count, the user's display name, power levels), so a rule changed since shows
//!   its new effect;
//! - the events listed are those since the user's current stretch of membership began
//!   (their join), up to their leave in a room they left and have not forgotten;
//! - `ts` is the event's `origin_server_ts`;
//! - one page examines at most [`SCAN_BUDGET`] events, so a page may hold fewer than
//!   `limit` notifications and still carry a `next_token` (the spec allows it: no token
//!   means no more results, a token means look further).

use std::collections::{BinaryHeap, VecDeque};

use ruma::{
    OwnedEventId, OwnedRoomId, RoomId, UserId,
    api::client::push::get_notifications::v3::Notification,
    events::{StateEventType, room::member::MembershipState},
    push::Action,
};

use super::{Push, RoomContext};
use crate::{
    Result,
    service::{
        account_data::AccountData,
        ephemeral::Ephemeral,
        rooms::{RoomInfo, Rooms, pdu::Pdu, pos::Pos, visibility::prev_membership},
    },
};

/// `limit` when the client gives none, and the largest honoured (as Synapse).
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
/// Events one page examines at most, over all rooms.
pub const SCAN_BUDGET: usize = 2_000;
/// Events read from a room's timeline at a time: the first read is small (most rooms give
/// a page one or two events), later ones grow to this.
const MAX_CHUNK: usize = 64;

/// What one page asks for.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    /// Events older than this position (a `next_token`); `None` for the newest.
    pub from: Option<Pos>,
    pub limit: usize,
    pub only_highlight: bool,
    /// Events to examine at most ([`SCAN_BUDGET`]; smaller in tests).
    pub budget: usize,
}

/// One page of `/notifications`.
pub struct Page {
    pub notifications: Vec<Notification>,
    /// The `from` for the next page; `None` when no older notification is left.
    pub next_token: Option<String>,
}

/// One room's timeline, read backwards a chunk at a time.
struct Cursor {
    room_id: OwnedRoomId,
    info: RoomInfo,
    /// Events with a position below this are still to be read.
    below: Pos,
    /// The user's join that began their current membership: older events are not theirs.
    joined_at: Pos,
    /// Read and not yet examined, newest first.
    buffer: VecDeque<(Pos, Pdu)>,
    chunk: usize,
    /// Made when the first event of the room is evaluated.
    context: Option<RoomContext>,
    /// How far the user has read (position), looked up with the first notification.
    read_up_to: Option<Pos>,
}

impl Cursor {
    /// The position of the next event to examine, reading a chunk when the buffer is empty.
    fn head(&mut self, rooms: &Rooms) -> Result<Option<Pos>> {
        if self.buffer.is_empty() && self.below > self.joined_at.next() {
            let events = rooms.events_before(&self.info, self.below, self.chunk)?;
            self.chunk = (self.chunk * 4).min(MAX_CHUNK);
            match events.last() {
                Some((oldest, _)) => self.below = *oldest,
                None => self.below = Pos::MIN,
            }
            let joined_at = self.joined_at;
            self.buffer
                .extend(events.into_iter().filter(|(pos, _)| *pos > joined_at));
        }
        Ok(self.buffer.front().map(|(pos, _)| *pos))
    }
}

/// Member events followed back (display name and avatar changes) to find a join.
const MAX_PROFILE_CHANGES: usize = 64;

/// The position of the join that began the user's current (or, in a room they left, last)
/// stretch of membership, found by following their member events back through
/// `unsigned.replaces_state` past profile changes (a join replacing a join); at most
/// [`MAX_PROFILE_CHANGES`] of them, after which the oldest reached stands in. `None` if
/// their membership did not end or pass through a join.
fn joined_at(
    rooms: &Rooms,
    room_id: &RoomId,
    user_id: &UserId,
    membership: &MembershipState,
) -> Result<Option<Pos>> {
    let replaced = |pdu: &Pdu| -> Result<Option<Pdu>> {
        let unsigned: Option<serde_json::Value> = pdu
            .unsigned
            .as_ref()
            .and_then(|unsigned| serde_json::from_str(unsigned.get()).ok());
        let Some(id) = unsigned
            .as_ref()
            .and_then(|unsigned| unsigned["replaces_state"].as_str())
            .and_then(|id| OwnedEventId::try_from(id).ok())
        else {
            return Ok(None);
        };
        rooms.pdu(&id)
    };
    let Some(current) =
        rooms.current_state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
    else {
        return Ok(None);
    };
    let mut event = match membership {
        MembershipState::Join => current,
        _ if prev_membership(&current).as_deref() == Some("join") => match replaced(&current)? {
            Some(join) => join,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    for _ in 0..MAX_PROFILE_CHANGES {
        if prev_membership(&event).as_deref() != Some("join") {
            break;
        }
        match replaced(&event)? {
            Some(older) => event = older,
            None => break,
        }
    }
    rooms.pos_of(&event.event_id)
}

impl Push {
    /// The user's notifications older than `query.from`, newest first: at most `limit`, only
    /// highlights if asked. `read` is whether the user's latest `m.read` or `m.read.private`
    /// receipt in the room is at or after the event (as Synapse decides it).
    pub fn notifications(
        &self,
        rooms: &Rooms,
        ephemeral: &Ephemeral,
        account_data: &AccountData,
        user_id: &UserId,
        query: Query,
    ) -> Result<Page> {
        let from = query.from.unwrap_or(Pos::MAX);
        let mut cursors = Vec::new();
        for (room_id, entry) in rooms.rooms_of(user_id)? {
            // Joined rooms up to now; rooms left (and not forgotten) up to the leave.
            let upper = match entry.membership {
                MembershipState::Join => Pos::MAX,
                MembershipState::Leave | MembershipState::Ban => Pos::live(entry.count)?,
                _ => continue,
            };
            let Some(info) = rooms.info(&room_id)? else {
                continue;
            };
            let Some(joined_at) = joined_at(rooms, &room_id, user_id, &entry.membership)? else {
                continue;
            };
            cursors.push(Cursor {
                room_id,
                info,
                below: upper.min(from),
                joined_at,
                buffer: VecDeque::new(),
                chunk: 2,
                context: None,
                read_up_to: None,
            });
        }

        // The cursors ordered by their next event's count, newest first.
        let mut heap = BinaryHeap::new();
        for (index, cursor) in cursors.iter_mut().enumerate() {
            if let Some(count) = cursor.head(rooms)? {
                heap.push((count, index));
            }
        }

        let mut notifications = Vec::new();
        let mut examined = 0;
        let mut last_examined = None;
        let mut last_returned = None;
        let mut more = false;
        while let Some((count, index)) = heap.pop() {
            if examined == query.budget {
                // Out of budget with events left: the next page goes on from here.
                more = true;
                break;
            }
            examined += 1;
            let cursor = &mut cursors[index];
            let Some((_, pdu)) = cursor.buffer.pop_front() else {
                continue;
            };
            last_examined = Some(count);
            if let Some(next) = cursor.head(rooms)? {
                heap.push((next, index));
            }
            if pdu.sender == user_id {
                continue;
            }
            let context = match &mut cursor.context {
                Some(context) => context,
                None => cursor
                    .context
                    .insert(RoomContext::current(rooms, &cursor.room_id)?),
            };
            let actions = self.actions(
                rooms,
                account_data,
                context,
                user_id,
                &pdu.to_sync_event(None),
            )?;
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            if query.only_highlight && !actions.iter().any(Action::is_highlight) {
                continue;
            }
            if notifications.len() == query.limit {
                // There is at least one more: the next page starts below the last returned.
                more = true;
                break;
            }
            let read_up_to = match cursor.read_up_to {
                Some(read) => read,
                None => *cursor.read_up_to.insert(read_position(
                    rooms,
                    ephemeral,
                    &cursor.room_id,
                    user_id,
                )?),
            };
            notifications.push(Notification::new(
                actions,
                rooms.sync_event(&pdu, user_id, None)?,
                read_up_to >= count,
                cursor.room_id.clone(),
                pdu.origin_server_ts,
            ));
            last_returned = Some(count);
        }
        // A full page resumes below its last notification; a page cut short by the budget,
        // below the last event it examined.
        let resume = if notifications.len() == query.limit {
            last_returned
        } else {
            last_examined
        };
        let next_token = resume.filter(|_| more).map(|count| count.to_string());
        Ok(Page {
            notifications,
            next_token,
        })
    }
}

/// The position of the newest event the user's read receipts in the room point at
/// (`Pos::MIN`: none).
fn read_position(
    rooms: &Rooms,
    ephemeral: &Ephemeral,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Pos> {
    let mut newest = Pos::MIN;
    for event_id in ephemeral.read_receipt_events(room_id, user_id)? {
        if let Some(pos) = rooms.pos_of(&event_id)? {
            newest = newest.max(pos);
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{RoomVersionId, server_name, user_id};
    use serde_json::json;

    use super::*;
    use crate::{
        service::{
            rooms::{
                append::NewEvent,
                create::{CreateRoom, Preset},
                membership::MemberProfile,
            },
            server_keys::ServerKeys,
            stream::Stream,
        },
        storage::Db,
    };

    struct World {
        rooms: Rooms,
        push: Push,
        ephemeral: Ephemeral,
        account_data: AccountData,
    }

    fn world() -> World {
        let db = Db::memory();
        let keys = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
        let stream = Arc::new(Stream::new(&db).unwrap());
        World {
            rooms: Rooms::new(
                &db,
                server_name!("example.org").to_owned(),
                keys,
                Arc::clone(&stream),
            )
            .unwrap(),
            push: Push::new(&db, Arc::clone(&stream)).unwrap(),
            ephemeral: Ephemeral::new(&db, Arc::clone(&stream)).unwrap(),
            account_data: AccountData::new(&db, stream).unwrap(),
        }
    }

    fn profile(name: &str) -> MemberProfile {
        MemberProfile {
            displayname: Some(name.to_owned()),
            avatar_url: None,
        }
    }

    async fn room_of(world: &World, creator: &UserId, invite: &UserId) -> OwnedRoomId {
        world
            .rooms
            .create_room(
                creator,
                profile("creator"),
                CreateRoom {
                    version: RoomVersionId::V11,
                    preset: Preset::PrivateChat,
                    creation_content: serde_json::Map::new(),
                    power_level_content_override: None,
                    alias: None,
                    initial_state: Vec::new(),
                    name: None,
                    topic: None,
                    invite: vec![invite.to_owned()],
                    is_direct: false,
                    publish: false,
                },
            )
            .await
            .unwrap()
    }

    async fn say(world: &World, room: &RoomId, sender: &UserId, body: &str) -> OwnedEventId {
        let event = NewEvent::message(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": body }),
        );
        world
            .rooms
            .send(room, sender, event, None)
            .await
            .unwrap()
            .event_id
    }

    /// Every page of the user's notifications, followed to the end: the event ids in order
    /// and the number of each page's notifications.
    fn all_pages(
        world: &World,
        user: &UserId,
        limit: usize,
        budget: usize,
    ) -> (Vec<String>, Vec<usize>) {
        let (mut ids, mut sizes) = (Vec::new(), Vec::new());
        let mut from = None;
        for _ in 0..100 {
            let page = world
                .push
                .notifications(
                    &world.rooms,
                    &world.ephemeral,
                    &world.account_data,
                    user,
                    Query {
                        from,
                        limit,
                        only_highlight: false,
                        budget,
                    },
                )
                .unwrap();
            assert!(page.notifications.len() <= limit);
            sizes.push(page.notifications.len());
            for notification in &page.notifications {
                let event: serde_json::Value =
                    serde_json::from_str(notification.event.json().get()).unwrap();
                ids.push(event["event_id"].as_str().unwrap().to_owned());
            }
            match page.next_token {
                Some(token) => from = Some(token.parse().unwrap()),
                None => return (ids, sizes),
            }
        }
        panic!("paging did not end");
    }

    #[tokio::test]
    async fn notifications_merge_the_rooms_since_the_join_and_page_within_the_budget() {
        let world = world();
        let (alice, bob, carol) = (
            user_id!("@alice:example.org"),
            user_id!("@bob:example.org"),
            user_id!("@carol:example.org"),
        );
        let a = room_of(&world, bob, alice).await;
        say(&world, &a, bob, "before alice joined").await;
        world
            .rooms
            .join(&a, alice, &profile("Alice"), None)
            .await
            .unwrap();
        let m1 = say(&world, &a, bob, "one").await;
        let b = room_of(&world, carol, alice).await;
        world
            .rooms
            .join(&b, alice, &profile("Alice"), None)
            .await
            .unwrap();
        let m2 = say(&world, &b, carol, "two").await;
        say(&world, &a, alice, "alice's own").await;
        let m3 = say(&world, &a, bob, "three").await;
        // A new display name is a join after a join: older events still count.
        world
            .rooms
            .join(&a, alice, &profile("Alice L."), None)
            .await
            .unwrap();
        let m4 = say(&world, &a, bob, "four").await;
        world.rooms.leave(&b, alice, alice, None).await.unwrap();
        say(&world, &b, carol, "after alice left").await;

        let expected: Vec<String> = [&m4, &m3, &m2, &m1]
            .iter()
            .map(|id| id.to_string())
            .collect();
        let (ids, sizes) = all_pages(&world, alice, 50, SCAN_BUDGET);
        assert_eq!(
            ids, expected,
            "newest first, both rooms, nothing before the join or after the leave"
        );
        assert_eq!(sizes, [4]);

        let (ids, sizes) = all_pages(&world, alice, 1, SCAN_BUDGET);
        assert_eq!(ids, expected);
        assert_eq!(
            sizes,
            [1, 1, 1, 1],
            "the last page finds nothing more and has no token"
        );

        // A budget of three events per page: pages may come back short but with a token,
        // and following them still finds every notification once.
        let (ids, sizes) = all_pages(&world, alice, 50, 3);
        assert_eq!(ids, expected);
        assert!(sizes.len() > 1, "the budget ended pages early: {sizes:?}");

        // The sender of every event has none.
        assert_eq!(
            all_pages(&world, carol, 50, SCAN_BUDGET).0,
            Vec::<String>::new()
        );
    }
}
