//! Server discovery and capabilities: `/versions`, `/.well-known/matrix/{client,server}`,
//! `/capabilities`.

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    RoomVersionId,
    api::{
        client::discovery::{
            discover_homeserver,
            get_capabilities::{
                self,
                v3::{
                    Capabilities, ProfileFieldsCapability, RoomVersionStability,
                    RoomVersionsCapability,
                },
            },
            get_supported_versions,
        },
        federation::discovery::discover_homeserver as discover_server,
    },
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// The client-server spec versions whose endpoints this server implements for what it
/// offers. Feature areas that are not built yet (rooms, sync, media, E2EE) answer
/// `M_UNRECOGNIZED`, which clients treat as "not supported".
const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11", "v1.12",
];

/// Room versions `/capabilities` advertises: exactly those `createRoom` accepts
/// (see `service::rooms::append::supported_room_version`).
const ROOM_VERSIONS: &[RoomVersionId] = &[
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions(
    State(_services): State<Arc<Services>>,
    _request: Ruma<get_supported_versions::Request>,
) -> Result<RumaResponse<get_supported_versions::Response>> {
    let mut response = get_supported_versions::Response::new(
        SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
    );
    // Simplified sliding sync (MSC4186): how Element X and matrix-sdk detect it.
    response
        .unstable_features
        .insert("org.matrix.simplified_msc3575".to_owned(), true);
    Ok(RumaResponse(response))
}

/// `GET /.well-known/matrix/client`: the configured `well_known.client`, else 404.
pub async fn discover_homeserver(
    State(services): State<Arc<Services>>,
    _request: Ruma<discover_homeserver::Request>,
) -> Result<RumaResponse<discover_homeserver::Response>> {
    let base_url = services
        .config
        .well_known
        .client
        .clone()
        .ok_or_else(|| Error::not_found("No client discovery information is configured."))?;
    Ok(RumaResponse(discover_homeserver::Response::new(
        discover_homeserver::HomeserverInfo::new(base_url),
    )))
}

/// `GET /.well-known/matrix/server`: the configured `well_known.server`, else 404.
pub async fn discover_server(
    State(services): State<Arc<Services>>,
    _request: Ruma<discover_server::Request>,
) -> Result<RumaResponse<discover_server::Response>> {
    let server = services
        .config
        .well_known
        .server
        .as_deref()
        .ok_or_else(|| Error::not_found("No server discovery information is configured."))?;
    let server = server
        .try_into()
        .map_err(|_| Error::internal("well_known.server is not a valid server name"))?;
    Ok(RumaResponse(discover_server::Response::new(server)))
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn get_capabilities(
    State(_services): State<Arc<Services>>,
    _request: Ruma<get_capabilities::v3::Request>,
) -> Result<RumaResponse<get_capabilities::v3::Response>> {
    let mut capabilities = Capabilities::new();
    capabilities.change_password.enabled = true;
    // Deprecated since v1.16 in favour of `m.profile_fields`, but older clients read them.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = false;
    capabilities.profile_fields = Some(ProfileFieldsCapability::new(true));
    let available: BTreeMap<_, _> = ROOM_VERSIONS
        .iter()
        .map(|version| (version.clone(), RoomVersionStability::Stable))
        .collect();
    capabilities.room_versions = RoomVersionsCapability::new(RoomVersionId::V12, available);
    Ok(RumaResponse(get_capabilities::v3::Response::new(
        capabilities,
    )))
}
