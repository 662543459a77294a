//! The published room directory across servers (server-server API "Published Room
//! Directory"): another server's list for a client's `publicRooms?server=`, checked and
//! bounded before it is passed on. Serving ours to other servers is
//! [`crate::service::rooms::Rooms::public_rooms_page`], the same list clients get.

use ruma::{
    ServerName,
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::{PublicRoomsChunk, RoomNetwork},
};

use crate::{
    Result,
    service::{
        Services,
        rooms::directory::{DirectoryQuery, PublicRoomsPage, page_size},
    },
};

/// Characters of a name, topic or token passed on from another server at most.
const MAX_TEXT: usize = 1_000;

/// `text`, cut to [`MAX_TEXT`] characters.
fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((end, _)) => text[..end].to_owned(),
        None => text,
    }
}

/// Another server's page, bounded: at most the rooms asked for (and [`MAX_LIMIT`](
/// crate::service::rooms::directory::MAX_LIMIT)), long texts cut, an over-long token dropped
/// (ruma has already checked the shape: ids, aliases, counts).
pub(crate) fn bound_remote_page(
    mut chunk: Vec<PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total: Option<ruma::UInt>,
    limit: usize,
) -> PublicRoomsPage {
    chunk.truncate(limit);
    for room in &mut chunk {
        room.name = room.name.take().map(bounded);
        room.topic = room.topic.take().map(bounded);
    }
    let token = |t: Option<String>| t.filter(|t| t.len() <= MAX_TEXT);
    PublicRoomsPage {
        total: total
            .and_then(|t| usize::try_from(u64::from(t)).ok())
            .unwrap_or(chunk.len()),
        chunk,
        next_batch: token(next_batch),
        prev_batch: token(prev_batch),
    }
}

impl Services {
    /// The client's `publicRooms`: this server's directory, or, with `server` naming another
    /// server, that server's, asked over federation (`GET`, or `POST` when there is a filter
    /// or a network; as Synapse asks).
    pub async fn public_rooms(
        &self,
        server: Option<&ServerName>,
        query: &DirectoryQuery<'_>,
    ) -> Result<PublicRoomsPage> {
        let server = match server {
            Some(server) if server != self.config.server_name => server,
            _ => return self.rooms.public_rooms_page(query),
        };
        let client = self
            .federation
            .reach(server, &format!("the room directory of {server}"))?;
        let limit = page_size(query.limit);
        let network = query.network.cloned().unwrap_or(RoomNetwork::Matrix);
        let filtered = query.filter.is_some_and(|f| !f.is_empty());
        let page = if filtered {
            let mut request = get_public_rooms_filtered::v1::Request::new();
            request.limit = query.limit;
            request.since = query.since.map(str::to_owned);
            request.filter = query.filter.cloned().unwrap_or_default();
            request.room_network = network;
            let response = client.send(server, request).await?;
            bound_remote_page(
                response.chunk,
                response.next_batch,
                response.prev_batch,
                response.total_room_count_estimate,
                limit,
            )
        } else {
            let mut request = get_public_rooms::v1::Request::new();
            request.limit = query.limit;
            request.since = query.since.map(str::to_owned);
            request.room_network = network;
            let response = client.send(server, request).await?;
            bound_remote_page(
                response.chunk,
                response.next_batch,
                response.prev_batch,
                response.total_room_count_estimate,
                limit,
            )
        };
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{UInt, directory::PublicRoomsChunkInit, owned_room_id};

    use super::*;

    #[test]
    fn a_remote_page_is_bounded() {
        let room = |n: u32| -> PublicRoomsChunk {
            let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
                num_joined_members: UInt::from(n),
                room_id: owned_room_id!("!a:example.org"),
                world_readable: false,
                guest_can_join: false,
            }
            .into();
            chunk.name = Some("é".repeat(5_000));
            chunk
        };
        let chunk = (0..50).map(room).collect();
        let page = bound_remote_page(chunk, Some("x".repeat(5_000)), Some("p".into()), None, 10);
        assert_eq!(page.chunk.len(), 10);
        assert_eq!(page.total, 10);
        assert_eq!(
            page.chunk[0].name.as_deref().map(|n| n.chars().count()),
            Some(MAX_TEXT)
        );
        assert_eq!(page.next_batch, None, "an over-long token is dropped");
        assert_eq!(page.prev_batch.as_deref(), Some("p"));
    }
}
