//! HTTP: the router and the layers every request passes through.
//!
//! A request goes: CORS → request log → panic guard → route → [`ruma::Ruma`] extractor
//! (token, size limit, JSON checks, parse) → handler in `client/` or `federation/` →
//! services.
//!
//! **Invariant:** handlers never touch storage; they call services.

pub mod client;
pub mod federation;
pub mod ruma;
pub mod synapse_admin;

use std::{sync::Arc, time::Instant};

use ::ruma::api::error::ErrorKind;
use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderName, Method, StatusCode, header};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
};

use self::{
    client::{
        account, account_data, alias, backup, dehydrated, device, directory, discovery, keys,
        media, membership, message, notifications, openid, presence, profile, push, receipt,
        relations, room, search, session, space, state, sync, thirdparty, threepid, to_device,
        voip,
    },
    ruma::{RouterExt, Routes},
};
use crate::{Error, service::Services};

/// Every route this server answers, behind the common layers.
/// The federation routes (`/_matrix/federation/*`, `/_matrix/key/*`) only when
/// `allow_federation` is on; otherwise they are unknown paths (`404 M_UNRECOGNIZED`).
pub fn router(services: Arc<Services>) -> Router {
    let mut all = routes();
    if services.config.allow_federation {
        all = all.merge(federation::routes());
    }
    with_layers(all.into_parts().0).with_state(services)
}

/// The method and path template (`/_matrix/client/v3/rooms/{room_id}/send/…`) of every route
/// [`router`] can answer, federation's included, from the same tables (the malformed-input
/// test walks it).
pub fn route_list() -> Vec<(Method, String)> {
    routes().merge(federation::routes()).into_parts().1
}

fn routes() -> Routes {
    Routes::new()
        // Discovery
        .ruma_route(discovery::get_supported_versions)
        .ruma_route(discovery::discover_homeserver)
        .ruma_route(discovery::discover_server)
        .ruma_route(discovery::get_capabilities)
        // Sessions
        .ruma_route(session::get_login_types)
        .ruma_route(session::login)
        .ruma_route(session::logout)
        .ruma_route(session::logout_all)
        // Accounts
        .ruma_route(account::register)
        .ruma_route(account::get_username_availability)
        .ruma_route(account::check_registration_token_validity)
        .ruma_route(account::whoami)
        .ruma_route(account::change_password)
        .ruma_route(account::deactivate)
        .ruma_route(openid::request_openid_token)
        // Third-party identifiers (none: refused with clear errors)
        .ruma_route(threepid::get_3pids)
        .ruma_route(threepid::add_3pid)
        .ruma_route(threepid::delete_3pid)
        .ruma_route(threepid::bind_3pid)
        .ruma_route(threepid::unbind_3pid)
        .ruma_route(threepid::request_3pid_management_token_via_email)
        .ruma_route(threepid::request_3pid_management_token_via_msisdn)
        .ruma_route(threepid::request_password_change_token_via_email)
        .ruma_route(threepid::request_password_change_token_via_msisdn)
        .ruma_route(threepid::request_registration_token_via_email)
        .ruma_route(threepid::request_registration_token_via_msisdn)
        .ruma_route(thirdparty::get_protocols)
        .ruma_route(thirdparty::get_protocol)
        // Devices
        .ruma_route(device::get_devices)
        .ruma_route(device::get_device)
        .ruma_route(device::update_device)
        .ruma_route(device::delete_device)
        .ruma_route(device::delete_devices)
        // Profiles
        .ruma_route(profile::get_profile)
        .ruma_route(profile::get_profile_field)
        .ruma_route(profile::set_profile_field)
        .ruma_route(profile::delete_profile_field)
        // Rooms
        .ruma_route(room::create_room)
        .ruma_route(room::get_room_event)
        .ruma_route(room::joined_rooms)
        .ruma_route(room::report_content)
        .ruma_route(room::report_room)
        .ruma_route(room::upgrade_room)
        .ruma_route(room::get_event_by_timestamp)
        .ruma_route(membership::join_room_by_id)
        .ruma_route(membership::join_room_by_id_or_alias)
        .ruma_route(membership::invite_user)
        .ruma_route(membership::leave_room)
        .ruma_route(membership::forget_room)
        .ruma_route(membership::kick_user)
        .ruma_route(membership::ban_user)
        .ruma_route(membership::unban_user)
        .ruma_route(membership::knock_room)
        .ruma_route(membership::joined_members)
        .ruma_route(membership::get_member_events)
        .ruma_route(message::send_message_event)
        .ruma_route(message::get_message_events)
        .ruma_route(message::redact_event)
        .ruma_route(message::get_context)
        .ruma_route(relations::get_relating_events)
        .ruma_route(relations::get_relating_events_with_rel_type)
        .ruma_route(relations::get_relating_events_with_rel_type_and_event_type)
        .merge(
            Routes::new()
                .ruma_route(relations::get_threads)
                .map_router(|r| r.route_layer(middleware::from_fn(default_threads_include))),
        )
        .ruma_route(state::send_state_event)
        .ruma_route(state::get_state_events)
        .ruma_route(state::get_state_event_for_key)
        .ruma_route(alias::create_alias)
        .ruma_route(alias::get_alias)
        .ruma_route(alias::delete_alias)
        .ruma_route(alias::get_room_aliases)
        .ruma_route(sync::sync_events)
        .ruma_route(sync::sliding_sync)
        .ruma_route(to_device::send_event_to_device)
        .ruma_route(keys::upload_keys)
        .ruma_route(keys::get_keys)
        .ruma_route(keys::claim_keys)
        .ruma_route(keys::get_key_changes)
        .ruma_route(keys::upload_signing_keys)
        .ruma_route(keys::upload_signatures)
        .ruma_route(voip::turn_server)
        .ruma_route(dehydrated::put_dehydrated_device)
        .ruma_route(dehydrated::get_dehydrated_device)
        .ruma_route(dehydrated::delete_dehydrated_device)
        .ruma_route(dehydrated::get_events)
        .ruma_route(backup::create_backup_version)
        .ruma_route(backup::get_latest_backup_info)
        .ruma_route(backup::get_backup_info)
        .ruma_route(backup::update_backup_version)
        .ruma_route(backup::delete_backup_version)
        .ruma_route(backup::add_backup_keys)
        .ruma_route(backup::add_backup_keys_for_room)
        .ruma_route(backup::add_backup_keys_for_session)
        .ruma_route(backup::get_backup_keys)
        .ruma_route(backup::get_backup_keys_for_room)
        .ruma_route(backup::get_backup_keys_for_session)
        .ruma_route(backup::delete_backup_keys)
        .ruma_route(backup::delete_backup_keys_for_room)
        .ruma_route(backup::delete_backup_keys_for_session)
        .ruma_route(directory::get_public_rooms)
        .ruma_route(directory::get_public_rooms_filtered)
        .ruma_route(directory::get_room_visibility)
        .ruma_route(directory::set_room_visibility)
        .ruma_route(directory::search_users)
        .ruma_route(search::search_events)
        .ruma_route(space::get_hierarchy)
        // Per-user client state
        .ruma_route(account_data::set_global_account_data)
        .ruma_route(account_data::get_global_account_data)
        .ruma_route(account_data::set_room_account_data)
        .ruma_route(account_data::get_room_account_data)
        .ruma_route(account_data::create_filter)
        .ruma_route(account_data::get_filter)
        .ruma_route(account_data::get_tags)
        .ruma_route(account_data::create_tag)
        .ruma_route(account_data::delete_tag)
        .ruma_route(push::get_pushrules_all)
        .ruma_route(push::get_pushrules_global_scope)
        .ruma_route(push::get_pushrule)
        .ruma_route(push::set_pushrule)
        .ruma_route(push::delete_pushrule)
        .ruma_route(push::get_pushrule_enabled)
        .ruma_route(push::set_pushrule_enabled)
        .ruma_route(push::get_pushrule_actions)
        .ruma_route(push::set_pushrule_actions)
        .ruma_route(push::get_pushers)
        .ruma_route(push::set_pusher)
        .ruma_route(notifications::get_notifications)
        .ruma_route(receipt::create_typing_event)
        .ruma_route(receipt::create_receipt)
        .ruma_route(receipt::set_read_marker)
        .ruma_route(presence::set_presence)
        .ruma_route(presence::get_presence)
        // Media (streamed, so routed by hand; see client/media.rs)
        .merge(media_routes())
        // Administration
        .on(
            Method::GET,
            "/_synapse/admin/v1/register",
            synapse_admin::get_nonce,
        )
        .on(
            Method::POST,
            "/_synapse/admin/v1/register",
            synapse_admin::register,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v1/server_version",
            synapse_admin::users::server_version,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v2/users",
            synapse_admin::users::list_users,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v2/users/{user_id}",
            synapse_admin::users::get_user,
        )
        .on(
            Method::PUT,
            "/_synapse/admin/v2/users/{user_id}",
            synapse_admin::users::put_user,
        )
        .on(
            Method::POST,
            "/_synapse/admin/v1/deactivate/{user_id}",
            synapse_admin::users::deactivate,
        )
        .on(
            Method::POST,
            "/_synapse/admin/v1/reset_password/{user_id}",
            synapse_admin::users::reset_password,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v1/whois/{user_id}",
            synapse_admin::users::whois,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v2/users/{user_id}/devices",
            synapse_admin::users::list_devices,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v2/users/{user_id}/devices/{device_id}",
            synapse_admin::users::get_device,
        )
        .on(
            Method::DELETE,
            "/_synapse/admin/v2/users/{user_id}/devices/{device_id}",
            synapse_admin::users::delete_device,
        )
        .on(
            Method::GET,
            "/_synapse/admin/v1/users/{user_id}/joined_rooms",
            synapse_admin::users::joined_rooms,
        )
}

/// The media repository: authenticated (`/_matrix/client/v1/media`), upload and deprecated
/// (`/_matrix/media/{v3,r0}`) paths, all with the media security headers.
fn media_routes() -> Routes {
    let mut routes = Routes::new()
        .ruma_route(media::create_mxc_uri)
        .ruma_route(media::get_media_config)
        .ruma_route(media::legacy_get_media_config)
        .ruma_route(media::get_media_preview)
        .ruma_route(media::legacy_get_media_preview)
        .on(
            Method::GET,
            "/_matrix/client/v1/media/download/{server}/{id}",
            media::download,
        )
        .on(
            Method::GET,
            "/_matrix/client/v1/media/download/{server}/{id}/{filename}",
            media::download,
        )
        .on(
            Method::GET,
            "/_matrix/client/v1/media/thumbnail/{server}/{id}",
            media::thumbnail,
        );
    for version in ["v3", "r0"] {
        let base = format!("/_matrix/media/{version}");
        routes = routes
            .on(Method::POST, &format!("{base}/upload"), media::upload)
            .on(
                Method::GET,
                &format!("{base}/download/{{server}}/{{id}}"),
                media::legacy_download,
            )
            .on(
                Method::GET,
                &format!("{base}/download/{{server}}/{{id}}/{{filename}}"),
                media::legacy_download,
            )
            .on(
                Method::GET,
                &format!("{base}/thumbnail/{{server}}/{{id}}"),
                media::legacy_thumbnail,
            );
    }
    routes
        .on(
            Method::PUT,
            "/_matrix/media/v3/upload/{server}/{id}",
            media::upload_to,
        )
        .map_router(|r| r.route_layer(middleware::from_fn(media::security_headers)))
}

/// The layers every request passes through, outermost last.
fn with_layers(routes: Router<Arc<Services>>) -> Router<Arc<Services>> {
    routes
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read (and limited) by our extractors, from `max_request_size`.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(log_request))
        .layer(cors())
}

/// Web clients (Element Web) call from another origin (client-server API, "Web Browser
/// Clients"): any origin, the methods and headers the spec lists.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ])
}

/// ruma-client-api 0.24 (ruma 0.16) requires `include` on `GET /threads`, which the spec makes optional with the
/// default `all`; supply it when it is missing.
async fn default_threads_include(mut request: Request, next: Next) -> Response {
    let query = request.uri().query().unwrap_or("");
    if !query.split('&').any(|pair| pair.starts_with("include=")) {
        let path = request.uri().path();
        let new = if query.is_empty() {
            format!("{path}?include=all")
        } else {
            format!("{path}?{query}&include=all")
        };
        if let Ok(uri) = new.parse() {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

async fn unrecognized() -> Error {
    Error::new(ErrorKind::Unrecognized, "Unrecognized request.")
}

async fn method_not_allowed() -> Error {
    Error::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Unrecognized,
        "Method not allowed.",
    )
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message itself was printed by the panic hook.
    tracing::error!("a request handler panicked");
    Error::internal("handler panicked").into_response()
}

/// Logs method, path, status and time of every request. Never the query string (it may
/// carry `access_token`) and never a body (passwords).
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, micros, "request failed");
    } else {
        tracing::info!(%method, %path, status, micros, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    fn services() -> Arc<Services> {
        let config = crate::config::tests_support::config();
        Services::build(config, crate::storage::Db::memory()).unwrap()
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn router_builds_without_conflicting_routes() {
        let _ = router(services());
    }

    #[tokio::test]
    async fn a_panicking_handler_gives_500_and_the_router_keeps_serving() {
        async fn boom() -> &'static str {
            panic!("deliberate test panic")
        }
        let app = with_layers(
            routes()
                .into_parts()
                .0
                .route("/boom", axum::routing::get(boom)),
        )
        .with_state(services());
        let (status, body) = call(&app, "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        let (status, body) = call(&app, "/_matrix/client/versions").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["versions"].is_array());
    }
}
