//! The content repository for other servers (server-server API, "Content Repository"):
//! `GET /_matrix/federation/v1/media/download/{mediaId}` and `…/thumbnail/{mediaId}`, our
//! own media only (the path names no server), answered as `multipart/mixed`: a JSON part
//! (`{}`) then the file with its type and disposition, streamed from disk between the two
//! ([`crate::service::media::multipart`]). The same rules as for clients apply: pending
//! media is waited for up to `timeout_ms`, thumbnails are made and kept the same way, and a
//! missing id is `404 M_NOT_FOUND`.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};
use tokio_util::io::ReaderStream;

use crate::{
    Error, Result,
    api::{client::media::file_headers, ruma::Ruma},
    service::{
        Services,
        media::{Download, Method, ThumbnailSize, multipart},
    },
};

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn get_content(
    State(services): State<Arc<Services>>,
    request: Ruma<get_content::v1::Request>,
) -> Result<Response> {
    let download = services
        .media
        .download(
            &services.config.server_name,
            &request.body.media_id,
            request.body.timeout_ms,
        )
        .await?;
    Ok(multipart_response(download))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn get_content_thumbnail(
    State(services): State<Arc<Services>>,
    request: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let dimension = |value: ruma::UInt| {
        u32::try_from(value).map_err(|_| Error::invalid_param("width and height are too large."))
    };
    let method = match &body.method {
        None | Some(ruma::media::Method::Scale) => Method::Scale,
        Some(ruma::media::Method::Crop) => Method::Crop,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale.")),
    };
    let download = services
        .media
        .thumbnail(
            &services.config.server_name,
            &body.media_id,
            ThumbnailSize {
                width: dimension(body.width)?,
                height: dimension(body.height)?,
                method,
                animated: body.animated.unwrap_or(false),
            },
            body.timeout_ms,
        )
        .await?;
    Ok(multipart_response(download))
}

/// The file between the multipart head and tail, with the exact length.
fn multipart_response(download: Download) -> Response {
    let (content_type, disposition) = file_headers(&download);
    let boundary = multipart::boundary();
    let head = multipart::head(
        &boundary,
        content_type.to_str().unwrap_or("application/octet-stream"),
        &disposition,
    );
    let tail = multipart::tail(&boundary);
    let length = head.len() as u64 + download.size + tail.len() as u64;
    let file = ReaderStream::with_capacity(download.file, 64 * 1024);
    let stream = futures_util::stream::once(async { Ok(Bytes::from(head)) })
        .chain(file)
        .chain(futures_util::stream::once(async { Ok(Bytes::from(tail)) }));
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&multipart::content_type(&boundary)) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}
