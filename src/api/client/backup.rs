//! Server-side key backups: `/room_keys/version…` and `/room_keys/keys…` (client-server API,
//! "Server-side key backups"). The Matrix logic is in `service::backup`.

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    UInt,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version,
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        backup::{Scope, SessionKey},
    },
};

fn json<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| Error::internal(e.to_string()))
}

fn uint(count: u64) -> UInt {
    UInt::new(count).unwrap_or(UInt::MAX)
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(
    State(services): State<Arc<Services>>,
    request: Ruma<create_backup_version::v3::Request>,
) -> Result<RumaResponse<create_backup_version::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let version = services
        .backup
        .create(user_id, json(&request.body.algorithm)?)
        .await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(
        version,
    )))
}

/// `GET /_matrix/client/v3/room_keys/version`: the current version; 404 if there is none.
pub async fn get_latest_backup_info(
    State(services): State<Arc<Services>>,
    request: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<RumaResponse<get_latest_backup_info::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let (version, info) = services
        .backup
        .latest(user_id)?
        .ok_or_else(|| Error::not_found("No backup version exists."))?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        raw(&info.algorithm)?,
        uint(info.count),
        info.etag.to_string(),
        version.to_string(),
    )))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(
    State(services): State<Arc<Services>>,
    request: Ruma<get_backup_info::v3::Request>,
) -> Result<RumaResponse<get_backup_info::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let (version, info) = services.backup.version(user_id, &request.body.version)?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        raw(&info.algorithm)?,
        uint(info.count),
        info.etag.to_string(),
        version.to_string(),
    )))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version(
    State(services): State<Arc<Services>>,
    request: Ruma<update_backup_version::v3::Request>,
) -> Result<RumaResponse<update_backup_version::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    services
        .backup
        .update(user_id, &body.version, json(&body.algorithm)?)
        .await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_backup_version::v3::Request>,
) -> Result<RumaResponse<delete_backup_version::v3::Response>> {
    let (user_id, _) = request.sender()?;
    services
        .backup
        .delete_version(user_id, &request.body.version)
        .await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<add_backup_keys::v3::Request>,
) -> Result<RumaResponse<add_backup_keys::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let mut keys = Vec::new();
    for (room_id, room) in &body.rooms {
        for (session_id, data) in &room.sessions {
            keys.push(SessionKey {
                room_id,
                session_id,
                data: json(data)?,
            });
        }
    }
    let (etag, count) = services.backup.put(user_id, &body.version, keys).await?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(
        etag,
        uint(count),
    )))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    State(services): State<Arc<Services>>,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let mut keys = Vec::new();
    for (session_id, data) in &body.sessions {
        keys.push(SessionKey {
            room_id: &body.room_id,
            session_id,
            data: json(data)?,
        });
    }
    let (etag, count) = services.backup.put(user_id, &body.version, keys).await?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(
        etag,
        uint(count),
    )))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    State(services): State<Arc<Services>>,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let keys = vec![SessionKey {
        room_id: &body.room_id,
        session_id: &body.session_id,
        data: json(&body.session_data)?,
    }];
    let (etag, count) = services.backup.put(user_id, &body.version, keys).await?;
    Ok(RumaResponse(
        add_backup_keys_for_session::v3::Response::new(etag, uint(count)),
    ))
}

type Sessions<T> = BTreeMap<String, Raw<T>>;

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<get_backup_keys::v3::Request>,
) -> Result<RumaResponse<get_backup_keys::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let mut rooms = BTreeMap::new();
    for (room_id, session_id, data) in
        services
            .backup
            .get(user_id, &request.body.version, Scope::All)?
    {
        let room_id = room_id
            .try_into()
            .map_err(|_| Error::internal("stored room id is invalid"))?;
        rooms
            .entry(room_id)
            .or_insert_with(|| RoomKeyBackup::new(BTreeMap::new()))
            .sessions
            .insert(session_id, raw(&data)?);
    }
    Ok(RumaResponse(get_backup_keys::v3::Response::new(rooms)))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`: an empty map for a room without keys.
pub async fn get_backup_keys_for_room(
    State(services): State<Arc<Services>>,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let mut sessions: Sessions<_> = BTreeMap::new();
    for (_, session_id, data) in
        services
            .backup
            .get(user_id, &body.version, Scope::Room(&body.room_id))?
    {
        sessions.insert(session_id, raw(&data)?);
    }
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(
        sessions,
    )))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`: 404 if not stored.
pub async fn get_backup_keys_for_session(
    State(services): State<Arc<Services>>,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let (_, _, data) = services
        .backup
        .get(
            user_id,
            &body.version,
            Scope::Session(&body.room_id, &body.session_id),
        )?
        .pop()
        .ok_or_else(|| Error::not_found("No key for this session."))?;
    Ok(RumaResponse(
        get_backup_keys_for_session::v3::Response::new(raw(&data)?),
    ))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_backup_keys::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let (etag, count) = services
        .backup
        .delete(user_id, &request.body.version, Scope::All)
        .await?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(
        etag,
        uint(count),
    )))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let (etag, count) = services
        .backup
        .delete(user_id, &body.version, Scope::Room(&body.room_id))
        .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_room::v3::Response::new(etag, uint(count)),
    ))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let (etag, count) = services
        .backup
        .delete(
            user_id,
            &body.version,
            Scope::Session(&body.room_id, &body.session_id),
        )
        .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_session::v3::Response::new(etag, uint(count)),
    ))
}
