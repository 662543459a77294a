//! The media repository over HTTP (client-server API, "Content repository").
//!
//! Uploads and downloads stream: the body goes to `service::media` as a stream of chunks
//! and a download's file goes back out in 64 KiB reads, so memory use does not grow with
//! file size. That is why these handlers take axum's body and path directly instead of a
//! ruma request (whose types hold the whole file in a `Vec<u8>`).
//!
//! Every response under the media paths, errors included, carries the spec's
//! `Content-Security-Policy`, `X-Content-Type-Options: nosniff` and
//! `Cross-Origin-Resource-Policy` ([`security_headers`]), so an uploaded HTML or SVG file
//! opened in a browser cannot run script on the server's origin.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, Request, State, rejection::PathRejection},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, UInt,
    api::client::{
        authenticated_media::{get_media_config, get_media_preview},
        media::{create_content, create_mxc_uri},
    },
};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

#[allow(deprecated)]
use ruma::api::client::media::{
    get_media_config as legacy_get_media_config, get_media_preview as legacy_get_media_preview,
};

use crate::{
    Error, Result,
    api::ruma::{Authenticated, Ruma, RumaResponse},
    service::{
        Services,
        media::{Download, Method, Target, ThumbnailSize},
    },
};

/// The spec's recommended policy (content repository): no script, no plugins but PDF, no
/// loads from anywhere, sandboxed.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Types served `inline`; everything else is an `attachment` (content repository, "Serving
/// inline content").
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// `timeout_ms` when a download does not say (the spec's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// Adds the security headers to every media response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    response
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

#[derive(Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
    /// Deprecated endpoints only: `false` forbids fetching another server's media.
    allow_remote: Option<bool>,
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
    allow_remote: Option<bool>,
}

fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|error| {
            let text = error.body_text();
            if text.contains("missing field") {
                Error::new(
                    ruma::api::error::ErrorKind::MissingParam,
                    format!("Missing parameter: {text}"),
                )
            } else {
                Error::invalid_param(format!("Invalid parameter: {text}"))
            }
        })
}

/// `server/id[/filename]` from the path; a malformed server name cannot name any media.
fn media_path(
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
) -> Result<(OwnedServerName, String, Option<String>)> {
    let Path(mut segments) = path.map_err(|_| Error::invalid_param("Invalid path."))?;
    let filename = (segments.len() == 3).then(|| segments.pop()).flatten();
    let (Some(id), Some(server)) = (segments.pop(), segments.pop()) else {
        return Err(Error::invalid_param("Invalid path."));
    };
    let server =
        OwnedServerName::try_from(server).map_err(|_| Error::not_found("Media not found."))?;
    Ok((server, id, filename))
}

/// The `Content-Type` of an upload, if the client sent a readable one.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
}

fn upload_limit(services: &Services, headers: &HeaderMap) -> Result<u64> {
    let limit = u64::from(services.config.max_request_size);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    // Refused before reading anything when the client says up front it is too large.
    if declared.is_some_and(|length| length > limit) {
        return Err(Error::new(
            ruma::api::error::ErrorKind::TooLarge,
            format!("The upload is larger than this server's limit of {limit} bytes."),
        ));
    }
    Ok(limit)
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(
    State(services): State<Arc<Services>>,
    Authenticated(user_id, _): Authenticated,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let limit = upload_limit(&services, &headers)?;
    let UploadQuery { filename } = query(&uri)?;
    let content_uri = services
        .media
        .upload(
            &user_id,
            Target::New,
            content_type(&headers),
            filename.as_deref(),
            body.into_data_stream(),
            limit,
        )
        .await?;
    Ok(RumaResponse(create_content::v3::Response::new(content_uri)).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: content for an id from `/create`.
pub async fn upload_to(
    State(services): State<Arc<Services>>,
    Authenticated(user_id, _): Authenticated,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let (server, id, _) = media_path(path)?;
    let limit = upload_limit(&services, &headers)?;
    let UploadQuery { filename } = query(&uri)?;
    services
        .media
        .upload(
            &user_id,
            Target::Pending(&server, &id),
            content_type(&headers),
            filename.as_deref(),
            body.into_data_stream(),
            limit,
        )
        .await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// `POST /_matrix/media/v1/create`
pub async fn create_mxc_uri(
    State(services): State<Arc<Services>>,
    request: Ruma<create_mxc_uri::v1::Request>,
) -> Result<RumaResponse<create_mxc_uri::v1::Response>> {
    let (user_id, _) = request.sender()?;
    let (content_uri, expires) = services.media.create_pending(user_id).await?;
    let mut response = create_mxc_uri::v1::Response::new(content_uri);
    response.unused_expires_at = UInt::new(expires).map(MilliSecondsSinceUnixEpoch);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`
pub async fn download(
    State(services): State<Arc<Services>>,
    Authenticated(..): Authenticated,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: Uri,
) -> Result<Response> {
    serve_download(&services, path, &uri).await
}

/// `GET /_matrix/media/v3/download/…` (deprecated, unauthenticated): when
/// `allow_legacy_media` is on.
pub async fn legacy_download(
    State(services): State<Arc<Services>>,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: Uri,
) -> Result<Response> {
    legacy_allowed(&services)?;
    serve_download(&services, path, &uri).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    State(services): State<Arc<Services>>,
    Authenticated(..): Authenticated,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: Uri,
) -> Result<Response> {
    serve_thumbnail(&services, path, &uri).await
}

/// `GET /_matrix/media/v3/thumbnail/…` (deprecated, unauthenticated)
pub async fn legacy_thumbnail(
    State(services): State<Arc<Services>>,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: Uri,
) -> Result<Response> {
    legacy_allowed(&services)?;
    serve_thumbnail(&services, path, &uri).await
}

fn legacy_allowed(services: &Services) -> Result<()> {
    if services.config.allow_legacy_media {
        Ok(())
    } else {
        Err(Error::not_found(
            "Unauthenticated media is disabled on this server: use /_matrix/client/v1/media.",
        ))
    }
}

/// `allow_remote=false` (client-server API, deprecated download endpoints): another
/// server's media is then not served at all (404), so two servers that fall back to these
/// endpoints never ask each other in a loop. The authenticated endpoints have no such
/// parameter, so it is `None` there.
fn check_remote_allowed(
    services: &Services,
    server: &ruma::ServerName,
    allow_remote: Option<bool>,
) -> Result<()> {
    if allow_remote == Some(false) && *server != services.config.server_name {
        return Err(Error::not_found("Media not found (allow_remote is false)."));
    }
    Ok(())
}

async fn serve_download(
    services: &Services,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: &Uri,
) -> Result<Response> {
    let (server, id, filename) = media_path(path)?;
    let DownloadQuery {
        timeout_ms,
        allow_remote,
    } = query(uri)?;
    check_remote_allowed(services, &server, allow_remote)?;
    let wait = timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    let mut download = services.media.download(&server, &id, wait).await?;
    if filename.is_some() {
        download.filename = filename;
    }
    Ok(file_response(download))
}

async fn serve_thumbnail(
    services: &Services,
    path: std::result::Result<Path<Vec<String>>, PathRejection>,
    uri: &Uri,
) -> Result<Response> {
    let (server, id, _) = media_path(path)?;
    let ThumbnailQuery {
        width,
        height,
        method,
        animated,
        timeout_ms,
        allow_remote,
    } = query(uri)?;
    check_remote_allowed(services, &server, allow_remote)?;
    let method = match method.as_deref() {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale.")),
    };
    let wait = timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    let download = services
        .media
        .thumbnail(
            &server,
            &id,
            ThumbnailSize {
                width,
                height,
                method,
                animated: animated.unwrap_or(false),
            },
            wait,
        )
        .await?;
    Ok(file_response(download))
}

/// The `Content-Type` and `Content-Disposition` a file is served with: its type if that is
/// a valid header value (else `application/octet-stream`), and `inline` only for the types
/// the spec lists as safe, with the file name. Shared with the federation media answers.
pub(crate) fn file_headers(download: &Download) -> (HeaderValue, String) {
    let content_type = download
        .content_type
        .as_deref()
        .and_then(|value| HeaderValue::from_str(value).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let essence = content_type
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    let disposition = content_disposition(kind, download.filename.as_deref());
    (content_type, disposition)
}

/// The file with its type, length and disposition; the body is read from disk as it is sent.
fn file_response(download: Download) -> Response {
    let (content_type, disposition) = file_headers(&download);
    let body = Body::from_stream(ReaderStream::with_capacity(download.file, 64 * 1024));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    // Content under an mxc URI never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    response
}

/// `inline` or `attachment` with the file name: quoted when it is plain printable ASCII,
/// else RFC 6266's `filename*=utf-8''…` with percent-encoding (RFC 8187).
fn content_disposition(kind: &str, filename: Option<&str>) -> String {
    let Some(name) = filename else {
        return kind.to_owned();
    };
    if name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return format!("{kind}; filename=\"{name}\"");
    }
    let mut encoded = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{kind}; filename*=utf-8''{encoded}")
}

/// `GET /_matrix/client/v1/media/config`
pub async fn get_media_config(
    State(services): State<Arc<Services>>,
    _request: Ruma<get_media_config::v1::Request>,
) -> Result<RumaResponse<get_media_config::v1::Response>> {
    Ok(RumaResponse(get_media_config::v1::Response::new(
        UInt::from(services.config.max_request_size),
    )))
}

/// `GET /_matrix/media/v3/config` (deprecated)
#[allow(deprecated)]
pub async fn legacy_get_media_config(
    State(services): State<Arc<Services>>,
    _request: Ruma<legacy_get_media_config::v3::Request>,
) -> Result<RumaResponse<legacy_get_media_config::v3::Response>> {
    Ok(RumaResponse(legacy_get_media_config::v3::Response::new(
        UInt::from(services.config.max_request_size),
    )))
}

/// `GET /_matrix/client/v1/media/preview_url`
pub async fn get_media_preview(
    State(services): State<Arc<Services>>,
    request: Ruma<get_media_preview::v1::Request>,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>> {
    request.sender()?;
    Ok(Json(services.media.preview(&request.body.url).await?))
}

/// `GET /_matrix/media/v3/preview_url` (deprecated)
#[allow(deprecated)]
pub async fn legacy_get_media_preview(
    State(services): State<Arc<Services>>,
    request: Ruma<legacy_get_media_preview::v3::Request>,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>> {
    request.sender()?;
    Ok(Json(services.media.preview(&request.body.url).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_quotes_plain_names_and_encodes_the_rest() {
        assert_eq!(content_disposition("inline", None), "inline");
        assert_eq!(
            content_disposition("inline", Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(
            content_disposition("attachment", Some("a\"b.html")),
            "attachment; filename*=utf-8''a%22b.html"
        );
        assert_eq!(
            content_disposition("attachment", Some("Grüße.txt")),
            "attachment; filename*=utf-8''Gr%C3%BC%C3%9Fe.txt"
        );
        // A header can never be split by a file name.
        assert!(!content_disposition("inline", Some("x\r\nSet-Cookie: a")).contains('\n'));
    }
}
