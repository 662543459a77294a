//! What other servers' clients browse here (server-server API "Published Room Directory",
//! "Spaces"): `publicRooms` (`GET` and `POST`) and `hierarchy`. The logic is in
//! `service::rooms::directory` and `service::federation::space`.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    UInt,
    api::federation::{
        directory::{get_public_rooms, get_public_rooms_filtered},
        space::get_hierarchy,
    },
};

use super::origin;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, rooms::directory::DirectoryQuery},
};

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms::v1::Request>,
) -> Result<RumaResponse<get_public_rooms::v1::Response>> {
    directory_shared(&services)?;
    let body = &request.body;
    let page = services.rooms.public_rooms_page(&DirectoryQuery {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: None,
        network: Some(&body.room_network),
    })?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
    Ok(RumaResponse(response))
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms_filtered(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<RumaResponse<get_public_rooms_filtered::v1::Response>> {
    directory_shared(&services)?;
    let body = &request.body;
    let page = services.rooms.public_rooms_page(&DirectoryQuery {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: Some(&body.filter),
        network: Some(&body.room_network),
    })?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`
pub async fn get_hierarchy(
    State(services): State<Arc<Services>>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<RumaResponse<get_hierarchy::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let answer = services.federation_hierarchy(origin, &body.room_id, body.suggested_only)?;
    let mut response = get_hierarchy::v1::Response::new(answer.room);
    response.children = answer.children;
    response.inaccessible_children = answer.inaccessible_children;
    Ok(RumaResponse(response))
}

/// Other servers see our directory only when the admin shares it
/// (`allow_public_room_directory_over_federation`, off by default).
fn directory_shared(services: &Services) -> Result<()> {
    if services.config.allow_public_room_directory_over_federation {
        Ok(())
    } else {
        Err(Error::forbidden(
            "This server does not share its room directory with other servers.",
        ))
    }
}
