//! `GET /_matrix/client/v3/notifications` (client-server API, "Listing Notifications"): the
//! events the caller's push rules notified them about, newest first.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::push::get_notifications;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        push::notifications::{DEFAULT_LIMIT, MAX_LIMIT, Query, SCAN_BUDGET},
        rooms::pos::Pos,
    },
};

/// `from` is a `next_token` from an earlier page (anything else is `400 M_INVALID_PARAM`);
/// `limit` defaults to 50 and is capped at 500 (as Synapse); `only=highlight` keeps the
/// notifications with the `highlight` tweak. Other values of `only` filter nothing.
pub async fn get_notifications(
    State(services): State<Arc<Services>>,
    request: Ruma<get_notifications::v3::Request>,
) -> Result<RumaResponse<get_notifications::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let from = match &body.from {
        Some(token) => Some(
            token
                .parse::<Pos>()
                .map_err(|_| Error::invalid_param("Unknown pagination token in from."))?,
        ),
        None => None,
    };
    let limit = body.limit.map_or(DEFAULT_LIMIT, |limit| {
        usize::try_from(u64::from(limit))
            .unwrap_or(MAX_LIMIT)
            .min(MAX_LIMIT)
    });
    let only_highlight = body.only.as_deref() == Some("highlight");
    let page = services.push.notifications(
        &services.rooms,
        &services.ephemeral,
        &services.account_data,
        sender,
        Query {
            from,
            limit,
            only_highlight,
            budget: SCAN_BUDGET,
        },
    )?;
    let mut response = get_notifications::v3::Response::new(page.notifications);
    response.next_token = page.next_token;
    Ok(RumaResponse(response))
}
