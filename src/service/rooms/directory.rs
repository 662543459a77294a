//! The published room directory as pages (client-server API "Published Room Directory";
//! server-server API "Published Room Directory" serves the same list to other servers).

use ruma::{
    UInt,
    directory::{Filter, PublicRoomsChunk, PublicRoomsChunkInit, RoomNetwork},
    room::{JoinRuleKind, RoomType},
};

use super::Rooms;
use crate::{Error, Result};

/// Rooms per page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 30;
/// Rooms per page at most, whatever the request asks.
pub const MAX_LIMIT: usize = 500;

/// One page of the directory.
#[derive(Debug, Default)]
pub struct PublicRoomsPage {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

/// What one request asks of the directory.
#[derive(Debug, Default)]
pub struct DirectoryQuery<'a> {
    pub limit: Option<UInt>,
    pub since: Option<&'a str>,
    pub filter: Option<&'a Filter>,
    pub network: Option<&'a RoomNetwork>,
}

/// `limit` as a page size: [`DEFAULT_LIMIT`] when absent, within `1..=MAX_LIMIT`.
pub fn page_size(limit: Option<UInt>) -> usize {
    limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT)
}

/// Whether `chunk` matches the filter: the search term (case-insensitive) in its name,
/// topic or canonical alias, and its room type among `room_types` when any is named.
fn matches(chunk: &PublicRoomsChunk, term: Option<&str>, filter: Option<&Filter>) -> bool {
    let term_matches = term.is_none_or(|term| {
        [
            chunk.name.as_deref(),
            chunk.topic.as_deref(),
            chunk.canonical_alias.as_ref().map(|a| a.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.to_lowercase().contains(term))
    });
    let types = filter.map(|f| f.room_types.as_slice()).unwrap_or_default();
    let room_type = chunk.room_type.as_ref().map(RoomType::as_str);
    term_matches && (types.is_empty() || types.iter().any(|t| t.as_str() == room_type))
}

impl Rooms {
    /// The directory entry for a room, from its current state.
    pub fn directory_chunk(&self, room_id: &ruma::RoomId) -> Result<PublicRoomsChunk> {
        let facts = self.facts(room_id)?;
        let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::new(facts.joined_members).unwrap_or_default(),
            room_id: facts.room_id,
            world_readable: facts.world_readable,
            guest_can_join: facts.guest_can_join,
        }
        .into();
        chunk.name = facts.name;
        chunk.topic = facts.topic;
        chunk.canonical_alias = facts.canonical_alias;
        chunk.avatar_url = facts.avatar_url.map(Into::into);
        chunk.room_type = facts.room_type.as_deref().map(RoomType::from);
        chunk.join_rule = facts.join_rule.map_or(JoinRuleKind::Public, |rule| {
            JoinRuleKind::from(rule.as_str())
        });
        Ok(chunk)
    }

    /// Published rooms matching the query, largest first, paged by offset tokens (`n<offset>`).
    /// This server bridges no third-party networks: `include_all_networks` lists the same
    /// rooms, a `third_party_instance_id` none.
    pub fn public_rooms_page(&self, query: &DirectoryQuery<'_>) -> Result<PublicRoomsPage> {
        let offset = match query.since {
            Some(token) => token
                .strip_prefix('n')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token."))?,
            None => 0,
        };
        let limit = page_size(query.limit);
        if matches!(query.network, Some(RoomNetwork::ThirdParty(_))) {
            return Ok(PublicRoomsPage::default());
        }
        let term = query
            .filter
            .and_then(|f| f.generic_search_term.as_deref())
            .map(str::to_lowercase)
            .filter(|t| !t.is_empty());
        let mut all = Vec::new();
        for room_id in self.aliases.public_rooms()? {
            // A published room this server no longer holds is not listed.
            if self.info(&room_id)?.is_none() {
                continue;
            }
            let chunk = self.directory_chunk(&room_id)?;
            if matches(&chunk, term.as_deref(), query.filter) {
                all.push(chunk);
            }
        }
        all.sort_by(|a, b| {
            b.num_joined_members
                .cmp(&a.num_joined_members)
                .then(a.room_id.cmp(&b.room_id))
        });
        let total = all.len();
        let chunk: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        let next_batch =
            (offset + chunk.len() < total).then(|| format!("n{}", offset + chunk.len()));
        let prev_batch = (offset > 0).then(|| format!("n{}", offset.saturating_sub(limit)));
        Ok(PublicRoomsPage {
            chunk,
            next_batch,
            prev_batch,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::{directory::RoomTypeFilter, owned_room_id};

    use super::*;

    fn chunk(name: &str, room_type: Option<&str>) -> PublicRoomsChunk {
        let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::from(1u32),
            room_id: owned_room_id!("!a:example.org"),
            world_readable: false,
            guest_can_join: false,
        }
        .into();
        chunk.name = Some(name.to_owned());
        chunk.room_type = room_type.map(RoomType::from);
        chunk
    }

    #[test]
    fn the_filter_matches_the_term_and_the_room_types() {
        let room = chunk("Rust Club", None);
        let space = chunk("Rust Space", Some("m.space"));
        assert!(matches(&room, Some("rust"), None));
        assert!(!matches(&room, Some("python"), None));
        let mut spaces = Filter::new();
        spaces.room_types = vec![RoomTypeFilter::Space];
        assert!(matches(&space, None, Some(&spaces)));
        assert!(!matches(&room, None, Some(&spaces)));
        let mut rooms = Filter::new();
        rooms.room_types = vec![RoomTypeFilter::Default];
        assert!(matches(&room, None, Some(&rooms)));
        assert!(!matches(&space, None, Some(&rooms)));
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(None), DEFAULT_LIMIT);
        assert_eq!(page_size(Some(UInt::from(0u32))), 1);
        assert_eq!(page_size(Some(UInt::from(100_000u32))), MAX_LIMIT);
    }
}
