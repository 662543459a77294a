//! Spaces: `GET /rooms/{roomId}/hierarchy` (client-server API, "Spaces"), breadth first along
//! `m.space.child` state events, across servers (`service::federation::space`).

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::space::get_hierarchy;

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, federation::space::HierarchyQuery},
};

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
pub async fn get_hierarchy(
    State(services): State<Arc<Services>>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<RumaResponse<get_hierarchy::v1::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let page = services
        .hierarchy(
            sender,
            &HierarchyQuery {
                room_id: &body.room_id,
                suggested_only: body.suggested_only,
                max_depth: body
                    .max_depth
                    .map(|d| usize::try_from(d).unwrap_or(usize::MAX)),
                limit: body.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
                from: body.from.as_deref(),
            },
        )
        .await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.next_batch = page.next_batch;
    response.rooms = page.rooms;
    Ok(RumaResponse(response))
}
