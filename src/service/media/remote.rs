//! Other servers' media for our clients: `mxc://other.server/…` downloads and thumbnails,
//! fetched over federation and kept in the media store.
//!
//! A download is asked of the media's server with the authenticated federation endpoint
//! (`/_matrix/federation/v1/media/download/{mediaId}`, server-server API "Content
//! Repository"), whose `multipart/mixed` answer holds the file or a `Location` to fetch it
//! from (followed once: https only, public addresses only, never a further redirect). A
//! server that does not know the endpoint (`404 M_UNRECOGNIZED`) is asked again with the
//! deprecated unauthenticated `/_matrix/media/v3/download/{serverName}/{mediaId}` and
//! `allow_remote=false`. Thumbnails the same way: the media's server has the original, so
//! it makes them; we ask for the size [`choose_size`] rounds the request to and keep the
//! answer under that size, as for local thumbnails.
//!
//! What came is streamed into the blob store like an upload (same size limit,
//! `max_request_size`) and recorded in `mediaremote` (`server/media_id` → [`RemoteMeta`])
//! or `mediathumbs`, so the next request is served from disk. An answer is read into memory
//! up to that limit (ruma's multipart reader needs the whole body), so at most
//! [`MAX_FETCHES`] fetches run at once; concurrent requests for the same media or
//! thumbnail wait for the first one's fetch instead of fetching again.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use reqwest::Url;
use ruma::{
    ServerName, UInt,
    api::{
        EndpointError,
        error::ErrorKind,
        federation::authenticated_media::{FileOrLocation, get_content, get_content_thumbnail},
    },
    http_headers::ContentDisposition,
};
use serde::{Deserialize, Serialize};

use super::{
    Content, Download, MAX_FILENAME_LEN, Media, Method, ThumbMeta, ThumbnailSize,
    clean_content_type, key, not_found, now_ms, ref_key, thumb_key, valid_media_id,
};
use crate::{
    Error, Result,
    service::federation::client::{
        FederationClient, Fetch, ReadError, read_answer, read_limited, remote_error,
    },
    storage::Batch,
};

/// Remote fetches in progress at once (each may hold up to `max_request_size` in memory).
pub const MAX_FETCHES: usize = 4;
/// Media keys with an in-flight lock at most; beyond it, idle ones are forgotten.
const MAX_IN_FLIGHT: usize = 1_024;
/// Room for the multipart framing around the file (the JSON part, headers, delimiters).
const MULTIPART_SLACK: u64 = 64 * 1024;
/// Time for a `Location` fetch: to connect, and for the whole answer.
const LOCATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LOCATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest another server is asked to wait for pending media: well inside the
/// federation client's whole-request timeout, so a long wait still leaves time for the file.
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(30);

/// Another server's media, as fetched and kept here.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RemoteMeta {
    pub fetched_ms: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    pub content: Content,
}

/// The federation side of [`Media`]: the client, and the in-flight bookkeeping.
pub(super) struct Remote {
    client: Option<Arc<FederationClient>>,
    /// Non-public ranges a `Location` may point at (`federation_ip_range_allowlist`).
    allowed_ranges: Vec<ipnet::IpNet>,
    verify_certificates: bool,
    fetches: tokio::sync::Semaphore,
    in_flight: std::sync::Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

impl Remote {
    pub(super) fn new(
        client: Option<Arc<FederationClient>>,
        allowed_ranges: Vec<ipnet::IpNet>,
        verify_certificates: bool,
    ) -> Self {
        Self {
            client,
            allowed_ranges,
            verify_certificates,
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            in_flight: std::sync::Mutex::default(),
        }
    }

    /// Waits until no other request is fetching `key`.
    async fn in_flight(&self, key: &[u8]) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.in_flight.lock().expect("in-flight media");
            if map.len() >= MAX_IN_FLIGHT && !map.contains_key(key) {
                map.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            Arc::clone(map.entry(key.to_vec()).or_default())
        };
        lock.lock_owned().await
    }
}

/// What to ask another server for.
#[derive(Clone, Copy)]
enum Wanted {
    Download,
    Thumbnail(ThumbnailSize),
}

/// A file as another server sent it.
struct Fetched {
    bytes: Bytes,
    content_type: Option<String>,
    filename: Option<String>,
}

impl Media {
    /// `mxc://server/id` of another server: from the store, or fetched and kept.
    pub(super) async fn remote_download(
        &self,
        server: &ServerName,
        id: &str,
        wait: Duration,
    ) -> Result<Download> {
        if !valid_media_id(id) {
            return Err(not_found());
        }
        let media_key = key(server, id);
        if let Some(meta) = self.remote_meta.get(media_key.as_bytes())? {
            return self.remote_file(meta).await;
        }
        let _fetching = self.remote.in_flight(media_key.as_bytes()).await;
        // Another request may have fetched it while this one waited.
        if let Some(meta) = self.remote_meta.get(media_key.as_bytes())? {
            return self.remote_file(meta).await;
        }
        let fetched = self.fetch(server, id, Wanted::Download, wait).await?;
        let staged = self.stage_bytes(fetched.bytes).await?;
        let meta = RemoteMeta {
            fetched_ms: now_ms(),
            content_type: clean_content_type(fetched.content_type.as_deref()),
            filename: fetched
                .filename
                .filter(|name| !name.is_empty() && name.len() <= MAX_FILENAME_LEN),
            content: staged.content.clone(),
        };
        {
            let _guard = self.blob_lock.lock().await;
            self.commit_blob(staged).await?;
            let mut batch = Batch::new();
            batch.insert_json(&self.remote_meta, media_key.as_bytes(), &meta);
            batch.insert(
                &*self.refs,
                ref_key(&meta.content.sha256, media_key.as_bytes()),
                Vec::new(),
            );
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        self.remote_file(meta).await
    }

    /// A thumbnail of another server's media at `size` (already rounded by `choose_size`):
    /// from the store, or asked of that server and kept.
    pub(super) async fn remote_thumbnail(
        &self,
        server: &ServerName,
        id: &str,
        size: ThumbnailSize,
        wait: Duration,
    ) -> Result<Download> {
        if !valid_media_id(id) {
            return Err(not_found());
        }
        let thumb_key = thumb_key(&key(server, id), size);
        if let Some(thumb) = self.thumbs.get(&thumb_key)? {
            return self.thumb_download(thumb).await;
        }
        let _fetching = self.remote.in_flight(&thumb_key).await;
        if let Some(thumb) = self.thumbs.get(&thumb_key)? {
            return self.thumb_download(thumb).await;
        }
        let fetched = self
            .fetch(server, id, Wanted::Thumbnail(size), wait)
            .await?;
        let staged = self.stage_bytes(fetched.bytes).await?;
        let thumb = ThumbMeta {
            content: staged.content.clone(),
            content_type: clean_content_type(fetched.content_type.as_deref())
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
        };
        {
            let _guard = self.blob_lock.lock().await;
            self.commit_blob(staged).await?;
            let mut batch = Batch::new();
            batch.insert_json(&self.thumbs, thumb_key.clone(), &thumb);
            batch.insert(
                &*self.refs,
                ref_key(&thumb.content.sha256, &thumb_key),
                Vec::new(),
            );
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        self.thumb_download(thumb).await
    }

    async fn remote_file(&self, meta: RemoteMeta) -> Result<Download> {
        Ok(Download {
            file: self.open_blob(&meta.content).await?,
            size: meta.content.size,
            content_type: meta.content_type,
            filename: meta.filename,
        })
    }

    async fn stage_bytes(&self, bytes: Bytes) -> Result<super::Staged> {
        let chunk: std::result::Result<Bytes, Infallible> = Ok(bytes);
        self.stage(futures_util::stream::iter([chunk]), self.max_size)
            .await
    }

    /// Asks `server` for `wanted`: the authenticated endpoint, else (an old server) the
    /// unauthenticated one.
    async fn fetch(
        &self,
        server: &ServerName,
        id: &str,
        wanted: Wanted,
        wait: Duration,
    ) -> Result<Fetched> {
        // With federation off, other servers' media is simply not found, as before.
        let client = self.remote.client.as_ref().ok_or_else(not_found)?;
        let _turn = self
            .remote
            .fetches
            .acquire()
            .await
            .map_err(|_| Error::internal("remote media fetches closed"))?;
        let limit = self.max_size;
        let answer_limit = limit + MULTIPART_SLACK;
        let wait = wait.min(MAX_REMOTE_WAIT);
        let answer = match wanted {
            Wanted::Download => {
                let mut request = get_content::v1::Request::new(id.to_owned());
                request.timeout_ms = wait;
                client.send_raw(server, request, answer_limit).await
            }
            Wanted::Thumbnail(size) => {
                let mut request = get_content_thumbnail::v1::Request::new(
                    id.to_owned(),
                    UInt::from(size.width),
                    UInt::from(size.height),
                );
                request.method = Some(match size.method {
                    Method::Crop => ruma::media::Method::Crop,
                    Method::Scale => ruma::media::Method::Scale,
                });
                request.animated = Some(size.animated);
                request.timeout_ms = wait;
                client.send_raw(server, request, answer_limit).await
            }
        }
        .map_err(|error| fetch_error(server, error, limit))?;
        if is_unrecognized(&answer) {
            return self.fetch_legacy(client, server, id, wanted, wait).await;
        }
        if let Some(error) = media_error(server, &answer, limit) {
            return Err(error);
        }
        // Both endpoints answer the same multipart form; ruma reads it (and a Matrix error).
        let answer = read_answer::<get_content::v1::Response>(server, answer)?;
        match answer.content {
            FileOrLocation::File(content) => {
                if content.file.len() as u64 > limit {
                    return Err(too_large(server, limit));
                }
                Ok(Fetched {
                    bytes: Bytes::from(content.file),
                    content_type: content.content_type,
                    filename: content.content_disposition.and_then(|d| d.filename),
                })
            }
            FileOrLocation::Location(location) => {
                self.follow_location(server, &location, limit).await
            }
            _ => Err(Error::remote(format!(
                "{server} answered with media content this server cannot read"
            ))),
        }
    }

    /// The deprecated `GET /_matrix/media/v3/download|thumbnail/{serverName}/{mediaId}`,
    /// for servers without the federation endpoints (client-server API, "Content
    /// repository": `allow_remote=false` so that server does not go fetching elsewhere).
    async fn fetch_legacy(
        &self,
        client: &FederationClient,
        server: &ServerName,
        id: &str,
        wanted: Wanted,
        wait: Duration,
    ) -> Result<Fetched> {
        let timeout_ms = wait.min(MAX_REMOTE_WAIT).as_millis();
        let path = match wanted {
            Wanted::Download => format!(
                "/_matrix/media/v3/download/{server}/{id}?allow_remote=false&timeout_ms={timeout_ms}"
            ),
            Wanted::Thumbnail(size) => format!(
                "/_matrix/media/v3/thumbnail/{server}/{id}?width={}&height={}&method={}\
                 &animated={}&allow_remote=false&timeout_ms={timeout_ms}",
                size.width,
                size.height,
                match size.method {
                    Method::Crop => "crop",
                    Method::Scale => "scale",
                },
                size.animated,
            ),
        };
        let limit = self.max_size;
        let answer = client
            .get_unsigned(server, &path, limit)
            .await
            .map_err(|error| fetch_error(server, error, limit))?;
        if let Some(error) = media_error(server, &answer, limit) {
            return Err(error);
        }
        if !answer.status().is_success() {
            let error = ruma::api::error::Error::from_http_response(answer);
            return Err(remote_error(server, error));
        }
        Ok(fetched_from_headers(
            answer.headers(),
            answer.body().clone(),
        ))
    }

    /// Fetches the file at `location`, which `server`'s multipart answer pointed at (the
    /// spec allows a `Location` part instead of the file): once, over https, to public
    /// addresses (or allowlisted ranges) only, never following a redirect, with the same
    /// size limit.
    async fn follow_location(
        &self,
        server: &ServerName,
        location: &str,
        limit: u64,
    ) -> Result<Fetched> {
        let refused = |why: String| Error::remote(format!("{server}'s media location: {why}"));
        let url = Url::parse(location).map_err(|e| refused(e.to_string()))?;
        if url.scheme() != "https" {
            return Err(refused("only https locations are followed".into()));
        }
        let allowed = |address: std::net::SocketAddr| {
            super::is_public_address(address.ip())
                || self
                    .remote
                    .allowed_ranges
                    .iter()
                    .any(|range| range.contains(&address.ip()))
        };
        let addresses = super::preview::checked_addresses(&url, &allowed)
            .await
            .map_err(|error| refused(format!("{error:?}")))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .no_proxy()
            .connect_timeout(LOCATION_CONNECT_TIMEOUT)
            .timeout(LOCATION_TIMEOUT)
            .tls_danger_accept_invalid_certs(!self.remote.verify_certificates)
            .user_agent(concat!("conduit/", env!("CARGO_PKG_VERSION")));
        if let Some(domain) = url.domain() {
            builder = builder.resolve_to_addrs(domain, &addresses);
        }
        let http = builder
            .build()
            .map_err(|e| Error::internal(format!("media location client: {e}")))?;
        let response = http
            .get(url)
            .send()
            .await
            .map_err(|e| refused(e.without_url().to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(refused(format!("it answered {}", response.status())));
        }
        let headers = response.headers().clone();
        let body = read_limited(response, limit)
            .await
            .map_err(|error| match error {
                ReadError::TooLarge => too_large(server, limit),
                ReadError::Failed(why) => refused(why),
            })?;
        Ok(fetched_from_headers(&headers, body))
    }
}

/// A file from a plain HTTP answer: its type and name from the headers.
fn fetched_from_headers(headers: &http::HeaderMap, bytes: Bytes) -> Fetched {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let filename = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|value| ContentDisposition::try_from(value.as_bytes()).ok())
        .and_then(|disposition| disposition.filename);
    Fetched {
        bytes,
        content_type,
        filename,
    }
}

/// Whether `server` does not know the endpoint: `404 M_UNRECOGNIZED` (server-server API,
/// "Content Repository": servers fall back to the deprecated endpoints then).
fn is_unrecognized(answer: &http::Response<Bytes>) -> bool {
    answer.status() == StatusCode::NOT_FOUND
        && serde_json::from_slice::<serde_json::Value>(answer.body())
            .is_ok_and(|body| body["errcode"] == "M_UNRECOGNIZED")
}

/// The two remote errors a client is told about as such (client-server API, "Content
/// repository"): media not uploaded yet (`504 M_NOT_YET_UPLOADED`) and media too large for
/// the other server to serve or thumbnail (`502 M_TOO_LARGE`). Other errors are passed on
/// by [`remote_error`] (a `404 M_NOT_FOUND` stays one; server errors become `502`).
fn media_error(server: &ServerName, answer: &http::Response<Bytes>, limit: u64) -> Option<Error> {
    if answer.status().is_success() {
        return None;
    }
    let body = serde_json::from_slice::<serde_json::Value>(answer.body()).ok()?;
    match body["errcode"].as_str()? {
        "M_NOT_YET_UPLOADED" => Some(Error::with_status(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NotYetUploaded,
            format!("The media on {server} has not been uploaded yet."),
        )),
        "M_TOO_LARGE" => Some(too_large(server, limit)),
        _ => None,
    }
}

fn fetch_error(server: &ServerName, error: Fetch, limit: u64) -> Error {
    match error {
        Fetch::TooLarge => too_large(server, limit),
        Fetch::Failed(error) => error,
    }
}

/// Remote media too large: `502 M_TOO_LARGE` (client-server API, "Content repository":
/// "The content is too large for the server to serve"), not the `413` of a local upload.
fn too_large(server: &ServerName, limit: u64) -> Error {
    Error::with_status(
        StatusCode::BAD_GATEWAY,
        ErrorKind::TooLarge,
        format!("The media on {server} is too large: this server's limit is {limit} bytes."),
    )
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::*;

    fn answer(status: StatusCode, body: &str) -> http::Response<Bytes> {
        http::Response::builder()
            .status(status)
            .body(Bytes::from(body.to_owned()))
            .unwrap()
    }

    #[test]
    fn only_404_unrecognized_means_an_old_server() {
        let unrecognized = r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#;
        assert!(is_unrecognized(&answer(
            StatusCode::NOT_FOUND,
            unrecognized
        )));
        assert!(!is_unrecognized(&answer(
            StatusCode::NOT_FOUND,
            r#"{"errcode":"M_NOT_FOUND","error":"no such media"}"#
        )));
        assert!(!is_unrecognized(&answer(
            StatusCode::BAD_REQUEST,
            unrecognized
        )));
        assert!(!is_unrecognized(&answer(StatusCode::NOT_FOUND, "<html>")));
    }

    #[test]
    fn a_location_part_and_a_missing_one_are_read() {
        let body = "--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\
                    Location: https://cdn.example.org/x\r\n\r\n\r\n--b--\r\n";
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "multipart/mixed; boundary=b")
            .body(Bytes::from(body))
            .unwrap();
        let read =
            read_answer::<get_content::v1::Response>(server_name!("remote.example"), response)
                .unwrap();
        assert!(
            matches!(read.content, FileOrLocation::Location(url) if url == "https://cdn.example.org/x")
        );

        // Cut short after the JSON part: an error naming the server, a 502, never a panic.
        let body = "--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\nContent-Ty";
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "multipart/mixed; boundary=b")
            .body(Bytes::from(body))
            .unwrap();
        let error =
            read_answer::<get_content::v1::Response>(server_name!("remote.example"), response)
                .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn not_yet_uploaded_and_too_large_are_told_as_such() {
        let server = server_name!("remote.example");
        let error = media_error(
            server,
            &answer(
                StatusCode::GATEWAY_TIMEOUT,
                r#"{"errcode":"M_NOT_YET_UPLOADED","error":"wait"}"#,
            ),
            10,
        )
        .unwrap();
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        let error = media_error(
            server,
            &answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"errcode":"M_TOO_LARGE","error":"big"}"#,
            ),
            10,
        )
        .unwrap();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert!(
            media_error(
                server,
                &answer(StatusCode::NOT_FOUND, r#"{"errcode":"M_NOT_FOUND"}"#),
                10
            )
            .is_none()
        );
    }

    #[test]
    fn a_plain_answer_gives_its_type_and_name() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "image/png".parse().unwrap());
        headers.insert(
            http::header::CONTENT_DISPOSITION,
            "inline; filename=\"cat.png\"".parse().unwrap(),
        );
        let fetched = fetched_from_headers(&headers, Bytes::from_static(b"png"));
        assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
        assert_eq!(fetched.filename.as_deref(), Some("cat.png"));
        assert_eq!(&fetched.bytes[..], b"png");
    }
}
