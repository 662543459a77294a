//! Account data (global and per room) and stored filters.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    UserId,
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        filter::{create_filter, get_filter},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

fn own(sender: &UserId, user_id: &UserId) -> Result<()> {
    if sender == user_id {
        Ok(())
    } else {
        Err(Error::forbidden("You cannot access another user's data."))
    }
}

fn content(raw: &serde_json::value::RawValue) -> Result<JsonValue> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Invalid content: {e}")))
}

fn raw<T>(value: JsonValue) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(&value).expect("JSON value serialises"))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    State(services): State<Arc<Services>>,
    request: Ruma<set_global_account_data::v3::Request>,
) -> Result<RumaResponse<set_global_account_data::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    let kind = body.event_type.to_string();
    // Push rules have their own API (spec: "m.push_rules ... MUST be rejected").
    if kind == "m.push_rules" {
        return Err(Error::with_status(
            http::StatusCode::METHOD_NOT_ALLOWED,
            ruma::api::error::ErrorKind::BadJson,
            "Use the push rules API.",
        ));
    }
    services
        .account_data
        .set(sender, None, &kind, content(body.data.json())?)
        .await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    State(services): State<Arc<Services>>,
    request: Ruma<get_global_account_data::v3::Request>,
) -> Result<RumaResponse<get_global_account_data::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    let value = services
        .global_account_data(sender, &body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of this type."))?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(
        raw(value),
    )))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    State(services): State<Arc<Services>>,
    request: Ruma<set_room_account_data::v3::Request>,
) -> Result<RumaResponse<set_room_account_data::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    let kind = body.event_type.to_string();
    if kind == "m.fully_read" {
        return Err(Error::with_status(
            http::StatusCode::METHOD_NOT_ALLOWED,
            ruma::api::error::ErrorKind::BadJson,
            "Use the read markers API.",
        ));
    }
    services.rooms.existing(&body.room_id)?;
    services
        .account_data
        .set(
            sender,
            Some(&body.room_id),
            &kind,
            content(body.data.json())?,
        )
        .await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_account_data::v3::Request>,
) -> Result<RumaResponse<get_room_account_data::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    let value = services
        .account_data
        .get(sender, Some(&body.room_id), &body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of this type."))?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(raw(
        value,
    ))))
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(
    State(services): State<Arc<Services>>,
    request: Ruma<create_filter::v3::Request>,
) -> Result<RumaResponse<create_filter::v3::Response>> {
    let (sender, _) = request.sender()?;
    own(sender, &request.body.user_id)?;
    let filter =
        serde_json::to_value(&request.body.filter).map_err(|e| Error::bad_json(e.to_string()))?;
    let id = services.account_data.create_filter(sender, filter).await?;
    Ok(RumaResponse(create_filter::v3::Response::new(id)))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(
    State(services): State<Arc<Services>>,
    request: Ruma<get_filter::v3::Request>,
) -> Result<RumaResponse<get_filter::v3::Response>> {
    let (sender, _) = request.sender()?;
    own(sender, &request.body.user_id)?;
    let filter = services
        .account_data
        .filter(sender, &request.body.filter_id)?
        .ok_or_else(|| Error::not_found("Unknown filter."))?;
    let filter =
        serde_json::from_value(filter).map_err(|_| Error::internal("stored filter is invalid"))?;
    Ok(RumaResponse(get_filter::v3::Response::new(filter)))
}

/// The room's `m.tag` account data: `{"tags": {tag: info}}`.
fn tags_of(
    services: &Services,
    user: &UserId,
    room: &ruma::RoomId,
) -> Result<serde_json::Map<String, JsonValue>> {
    Ok(services
        .account_data
        .get(user, Some(room), "m.tag")?
        .and_then(|content| content.get("tags").and_then(JsonValue::as_object).cloned())
        .unwrap_or_default())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(
    State(services): State<Arc<Services>>,
    request: Ruma<get_tags::v3::Request>,
) -> Result<RumaResponse<get_tags::v3::Response>> {
    let (sender, _) = request.sender()?;
    own(sender, &request.body.user_id)?;
    let tags = tags_of(&services, sender, &request.body.room_id)?;
    let tags = serde_json::from_value(JsonValue::Object(tags))
        .map_err(|_| Error::internal("stored tags are invalid"))?;
    Ok(RumaResponse(get_tags::v3::Response::new(tags)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag(
    State(services): State<Arc<Services>>,
    request: Ruma<create_tag::v3::Request>,
) -> Result<RumaResponse<create_tag::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    if body.tag.len() > 255 {
        return Err(Error::invalid_param("Tags are at most 255 bytes."));
    }
    services.rooms.existing(&body.room_id)?;
    let mut tags = tags_of(&services, sender, &body.room_id)?;
    let info = serde_json::to_value(&body.tag_info).map_err(|e| Error::bad_json(e.to_string()))?;
    tags.insert(body.tag.clone(), info);
    services
        .account_data
        .set(
            sender,
            Some(&body.room_id),
            "m.tag",
            serde_json::json!({ "tags": tags }),
        )
        .await?;
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_tag::v3::Request>,
) -> Result<RumaResponse<delete_tag::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    own(sender, &body.user_id)?;
    let mut tags = tags_of(&services, sender, &body.room_id)?;
    tags.remove(&body.tag);
    services
        .account_data
        .set(
            sender,
            Some(&body.room_id),
            "m.tag",
            serde_json::json!({ "tags": tags }),
        )
        .await?;
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}
