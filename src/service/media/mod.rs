//! The media repository (client-server API, "Content repository"): uploads, downloads,
//! asynchronous uploads (`/create` then `PUT`), thumbnails and URL previews.
//!
//! Files live on disk under `{database_path}/media/`; metadata lives in the key-value store:
//! - `blobs/ab/abcdef…`: file content, named by its SHA-256, so identical uploads share one
//!   file. Content is streamed into `tmp/` (never held in memory), fsynced, then renamed
//!   into place: a crash never leaves a half file under a name anything points to.
//! - `media`: `server/media_id` → [`MediaMeta`].
//! - `mediarefs`: `sha256 0xFF owner` → `()`, one entry per media or thumbnail that uses a
//!   blob; a blob's file is unlinked when its last reference goes.
//! - `mediauser`: `user 0xFF server/media_id` → `()`, for listing and purging by uploader.
//! - `mediapending`: `user 0xFF server/media_id` → expiry (ms), created but not uploaded.
//! - `mediathumbs`: `server/media_id 0xFF WxH-method[-animated]` → [`ThumbMeta`].
//! - `mediathumbrefused`: `server/media_id` → [`Refusal`], remembered so a file that cannot
//!   be thumbnailed is not decoded again on every request.
//! - `mediaremote`: `server/media_id` → [`RemoteMeta`], other servers' media fetched for our
//!   clients ([`remote`]); their thumbnails are in `mediathumbs` under the same key form.
//!
//! Ordering for durability: the file is fsynced (and its directory) before the metadata that
//! names it is written and persisted; on delete the metadata goes first, the file after.
//! A crash can leave an unreferenced file behind, never a reference to a missing one.

pub mod multipart;
mod preview;
pub(crate) use preview::is_public_address;
mod remote;
mod thumbnail;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use ruma::{OwnedMxcUri, OwnedServerName, OwnedUserId, ServerName, UserId, api::error::ErrorKind};
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, sync::Semaphore};

pub use self::{
    preview::{Preview, PreviewError, parse_html_preview},
    remote::{MAX_FETCHES, RemoteMeta},
    thumbnail::{Method, Refusal, RenderError, Rendered, ThumbnailSize, choose_size, render},
};
use crate::{
    Error, Result,
    config::Config,
    crypto,
    service::federation::client::FederationClient,
    storage::{Batch, Db, Table, Tree},
};

const SEPARATOR: u8 = 0xFF;

/// How long a `/create`d media id waits for its content (the spec's recommended 24 hours).
pub const UNUSED_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);
/// Created-but-not-uploaded media ids one user may hold at once.
pub const MAX_PENDING_PER_USER: usize = 10;
/// The longest a download of pending media may wait for its content.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Longest content type kept from an upload, and longest media id.
const MAX_FIELD_LEN: usize = 255;
/// Longest file name an upload may give (bytes); longer is 400 `M_INVALID_PARAM`.
pub const MAX_FILENAME_LEN: usize = 1024;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MediaMeta {
    pub uploader: OwnedUserId,
    pub created_ms: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    /// `None` while the media id is pending (created, content not yet uploaded).
    #[serde(default)]
    pub content: Option<Content>,
    /// For pending media: when the id expires unused.
    #[serde(default)]
    pub unused_expires_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Content {
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ThumbMeta {
    pub content: Content,
    pub content_type: String,
}

/// What a download hands to the HTTP layer: an open file and how to describe it.
pub struct Download {
    pub file: tokio::fs::File,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// Where an upload's content goes.
pub enum Target<'a> {
    /// `POST /upload`: a new media id.
    New,
    /// `PUT /upload/{server}/{id}`: an id from `/create`.
    Pending(&'a ServerName, &'a str),
}

pub struct Media {
    db: Db,
    server_name: OwnedServerName,
    dir: PathBuf,
    meta: Table<MediaMeta>,
    refs: Arc<dyn Tree>,
    by_user: Arc<dyn Tree>,
    pending: Table<u64>,
    thumbs: Table<ThumbMeta>,
    thumb_refused: Table<Refusal>,
    remote_meta: Table<RemoteMeta>,
    /// Fetching other servers' media ([`remote`]).
    remote: remote::Remote,
    /// The largest file kept: an upload, or another server's media (`max_request_size`).
    max_size: u64,
    /// Held while blob references change and files are renamed in or unlinked, so a delete
    /// never unlinks a file an upload has just started to reference.
    blob_lock: tokio::sync::Mutex<()>,
    /// Woken whenever content arrives, for downloads waiting on pending media.
    uploaded: tokio::sync::Notify,
    /// One image decode at a time: decoding is the memory-hungry part.
    thumbnailing: Semaphore,
    allow_url_preview: bool,
}

/// `A-Za-z0-9`, `_` and `-` only (content repository, "Security considerations").
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_FIELD_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_found() -> Error {
    Error::not_found("Media not found.")
}

fn key(server: &ServerName, id: &str) -> String {
    format!("{server}/{id}")
}

fn user_key(user: &UserId, media_key: &str) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.push(SEPARATOR);
    key.extend_from_slice(media_key.as_bytes());
    key
}

fn user_prefix(user: &UserId) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.push(SEPARATOR);
    key
}

fn ref_key(sha256: &str, owner: &[u8]) -> Vec<u8> {
    let mut key = sha256.as_bytes().to_vec();
    key.push(SEPARATOR);
    key.extend_from_slice(owner);
    key
}

fn thumb_key(media_key: &str, size: ThumbnailSize) -> Vec<u8> {
    let mut key = media_key.as_bytes().to_vec();
    key.push(SEPARATOR);
    key.extend_from_slice(size.to_string().as_bytes());
    key
}

/// A content type worth keeping: printable ASCII of sane length (it goes back out as a
/// header, so anything else would be refused there).
fn clean_content_type(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_FIELD_LEN)
        .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .map(str::to_owned)
}

/// The file name as given (the spec wants it back in `Content-Disposition`, which encodes
/// anything unusual); only its length is limited, by [`Media::upload`].
fn clean_filename(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

/// Content streamed into `tmp/`, hashed and counted, not yet visible under any name.
/// Dropping it removes the temporary file.
struct Staged {
    tmp: PathBuf,
    content: Content,
    keep: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Media {
    /// The repository in `config.database_path`; `client` (when federation is on) fetches
    /// other servers' media.
    pub fn new(db: &Db, config: &Config, client: Option<Arc<FederationClient>>) -> Result<Self> {
        let dir = config.database_path.join("media");
        // Leftovers of uploads a crash interrupted.
        let _ = std::fs::remove_dir_all(dir.join("tmp"));
        let media = Self {
            db: db.clone(),
            server_name: config.server_name.clone(),
            allow_url_preview: config.allow_url_preview,
            dir,
            meta: db.table("media")?,
            refs: db.tree("mediarefs")?,
            by_user: db.tree("mediauser")?,
            pending: db.table("mediapending")?,
            thumbs: db.table("mediathumbs")?,
            thumb_refused: db.table("mediathumbrefused")?,
            remote_meta: db.table("mediaremote")?,
            remote: remote::Remote::new(
                client,
                config.federation_ip_range_allowlist.clone(),
                config.federation_verify_certificates,
            ),
            max_size: u64::from(config.max_request_size),
            blob_lock: tokio::sync::Mutex::new(()),
            uploaded: tokio::sync::Notify::new(),
            thumbnailing: Semaphore::new(1),
        };
        media.sweep_orphans()?;
        Ok(media)
    }

    /// Removes blob files nothing refers to: left by a crash between an upload's rename and
    /// its metadata write (or between a delete's metadata write and its unlink). Runs at
    /// start, before anything can upload; one prefix lookup per file.
    fn sweep_orphans(&self) -> Result<()> {
        let Ok(shards) = std::fs::read_dir(self.dir.join("blobs")) else {
            return Ok(());
        };
        let mut removed = 0;
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(sha256) = name.to_str() else {
                    continue;
                };
                let mut prefix = sha256.as_bytes().to_vec();
                prefix.push(SEPARATOR);
                if self.refs.scan_prefix(&prefix).next().is_none()
                    && std::fs::remove_file(file.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed media files nothing referred to");
        }
        Ok(())
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(&sha256[..2]).join(sha256)
    }

    fn mxc(&self, id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{id}", self.server_name))
    }

    /// `POST /_matrix/media/v1/create`: a media id whose content comes later. Expired ids of
    /// the user are forgotten here; more than [`MAX_PENDING_PER_USER`] live ones is
    /// `M_LIMIT_EXCEEDED` (the spec's advice for `/create`).
    pub async fn create_pending(&self, user: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let now = now_ms();
        let prefix = user_prefix(user);
        // Under the lock: a `PUT` filling an id must not race with its removal here, and two
        // `/create`s must not both pass the limit.
        let guard = self.blob_lock.lock().await;
        let mut batch = Batch::new();
        let mut live = 0;
        for entry in self.pending.scan_prefix(&prefix) {
            let (pending_key, expires) = entry?;
            if expires > now {
                live += 1;
                continue;
            }
            let media_key = pending_key[prefix.len()..].to_vec();
            batch.remove(self.pending.tree(), pending_key.clone());
            let still_pending = self
                .meta
                .get(&media_key)?
                .is_some_and(|meta| meta.content.is_none());
            if still_pending {
                batch.remove(self.meta.tree(), media_key);
                batch.remove(&*self.by_user, pending_key);
            }
        }
        if live >= MAX_PENDING_PER_USER {
            self.db.apply(&batch)?;
            return Err(Error::limit_exceeded(Duration::from_secs(60)));
        }
        let id = new_media_id();
        let media_key = key(&self.server_name, &id);
        let expires = now + UNUSED_EXPIRY.as_millis() as u64;
        let meta = MediaMeta {
            uploader: user.to_owned(),
            created_ms: now,
            content_type: None,
            filename: None,
            content: None,
            unused_expires_ms: Some(expires),
        };
        batch.insert_json(&self.meta, media_key.as_bytes(), &meta);
        batch.insert_json(&self.pending, user_key(user, &media_key), &expires);
        batch.insert(&*self.by_user, user_key(user, &media_key), Vec::new());
        self.db.apply(&batch)?;
        drop(guard);
        self.db.persist().await?;
        Ok((self.mxc(&id), expires))
    }

    /// Stores an upload: streams `body` to a temporary file (at most `limit` bytes, else
    /// 413 `M_TOO_LARGE` with nothing kept), then makes it visible under `target`.
    pub async fn upload<S, E>(
        &self,
        user: &UserId,
        target: Target<'_>,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
        limit: u64,
    ) -> Result<OwnedMxcUri>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if filename.is_some_and(|name| name.len() > MAX_FILENAME_LEN) {
            return Err(Error::invalid_param(format!(
                "The file name is longer than {MAX_FILENAME_LEN} bytes."
            )));
        }
        // Check an asynchronous upload's id before reading a byte of content.
        let id = match target {
            Target::New => None,
            Target::Pending(server, id) => {
                self.check_pending(user, server, id)?;
                Some(id.to_owned())
            }
        };
        let staged = self.stage(body, limit).await?;
        let mut meta = MediaMeta::placeholder(user, now_ms());
        let id = id.unwrap_or_else(new_media_id);
        let media_key = key(&self.server_name, &id);
        {
            let _guard = self.blob_lock.lock().await;
            if let Target::Pending(server, _) = target {
                // Checked again under the lock: two racing PUTs must not both land.
                meta = self.check_pending(user, server, &id)?;
                meta.unused_expires_ms = None;
            }
            meta.content_type = clean_content_type(content_type);
            meta.filename = clean_filename(filename);
            meta.content = Some(staged.content.clone());
            let sha256 = staged.content.sha256.clone();
            self.commit_blob(staged).await?;
            let mut batch = Batch::new();
            batch.insert_json(&self.meta, media_key.as_bytes(), &meta);
            batch.insert(
                &*self.refs,
                ref_key(&sha256, media_key.as_bytes()),
                Vec::new(),
            );
            batch.insert(&*self.by_user, user_key(user, &media_key), Vec::new());
            batch.remove(self.pending.tree(), user_key(user, &media_key));
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        self.uploaded.notify_waiters();
        Ok(self.mxc(&id))
    }

    /// The pending media `server/id` of `user`, or the spec's error for `PUT /upload`.
    fn check_pending(&self, user: &UserId, server: &ServerName, id: &str) -> Result<MediaMeta> {
        if server != self.server_name || !valid_media_id(id) {
            return Err(not_found());
        }
        let meta = self
            .meta
            .get(key(server, id).as_bytes())?
            .ok_or_else(not_found)?;
        if meta.content.is_some() {
            return Err(Error::with_status(
                StatusCode::CONFLICT,
                ErrorKind::CannotOverwriteMedia,
                "This media has already been uploaded.",
            ));
        }
        if meta.uploader != user {
            return Err(Error::forbidden(
                "Only the user who created this media id may upload its content.",
            ));
        }
        if meta
            .unused_expires_ms
            .is_some_and(|expires| expires <= now_ms())
        {
            return Err(Error::not_found("This media id has expired."));
        }
        Ok(meta)
    }

    /// Streams `body` into a new file under `tmp/`, hashing as it goes.
    async fn stage<S, E>(&self, body: S, limit: u64) -> Result<Staged>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        // Media files keep the database's disk reserve too (`min_free_disk_mb`).
        self.db.check_free_space()?;
        let tmp_dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| self.io_error(e))?;
        let tmp = tmp_dir.join(crypto::random_string(24, ALPHANUMERIC));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_error(e))?;
        let mut staged = Staged {
            tmp,
            content: Content {
                sha256: String::new(),
                size: 0,
            },
            keep: false,
        };
        let mut writer = tokio::io::BufWriter::with_capacity(64 * 1024, file);
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size: u64 = 0;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| {
                Error::bad_request(
                    ErrorKind::Unknown,
                    format!("The upload could not be read: {error}"),
                )
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(too_large(limit));
            }
            digest.update(&chunk);
            // Cheap: the free space is asked at most every 100 ms while there is room.
            self.db.check_free_space()?;
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| self.io_error(e))?;
        }
        writer.flush().await.map_err(|e| self.io_error(e))?;
        let file = writer.into_inner();
        file.sync_all().await.map_err(|e| self.io_error(e))?;
        staged.content = Content {
            sha256: crypto::hex_encode(digest.finish().as_ref()),
            size,
        };
        Ok(staged)
    }

    /// Moves staged content to its blob name (or drops it if identical content is already
    /// there) and makes the rename durable: the blob's directory is fsynced, and so is every
    /// directory above it up to the database's that had to be created. Call with
    /// `blob_lock` held.
    async fn commit_blob(&self, mut staged: Staged) -> Result<()> {
        let path = self.blob_path(&staged.content.sha256);
        let parent = path.parent().expect("blob paths have a parent").to_owned();
        let mut to_sync = vec![parent.clone()];
        let mut created = parent.as_path();
        while !tokio::fs::try_exists(created)
            .await
            .map_err(|e| self.io_error(e))?
        {
            match created.parent() {
                Some(above) => {
                    to_sync.push(above.to_owned());
                    created = above;
                }
                None => break,
            }
        }
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| self.io_error(e))?;
        if tokio::fs::try_exists(&path)
            .await
            .map_err(|e| self.io_error(e))?
        {
            // Identical content is already there; `staged` drops and removes its temporary
            // file. The directory is still synced below: the earlier upload of this content
            // may have been interrupted between its rename and its sync.
        } else {
            tokio::fs::rename(&staged.tmp, &path)
                .await
                .map_err(|e| self.io_error(e))?;
            staged.keep = true;
        }
        tokio::task::spawn_blocking(move || {
            to_sync
                .iter()
                .try_for_each(|dir| std::fs::File::open(dir)?.sync_all())
        })
        .await
        .map_err(|e| Error::internal(format!("fsync task: {e}")))?
        .map_err(|e| self.io_error(e))?;
        Ok(())
    }

    /// A failed file operation: a full disk is the database's full condition (the same
    /// answer and the same single log line), anything else an internal error.
    fn io_error(&self, error: std::io::Error) -> Error {
        if crate::storage::space::is_no_space(&error) {
            self.db.out_of_space();
            return Error::Storage(crate::storage::StorageError::NoSpace);
        }
        Error::internal(format!("media storage: {error}"))
    }

    /// The metadata of uploaded media `server/id`, waiting up to `wait` while it is pending.
    /// Unknown, malformed, remote or expired ids are 404 `M_NOT_FOUND` (other servers' media
    /// is [`remote`]'s); still pending after the wait is 504 `M_NOT_YET_UPLOADED`.
    pub async fn uploaded_meta(
        &self,
        server: &ServerName,
        id: &str,
        wait: Duration,
    ) -> Result<(String, MediaMeta, Content)> {
        if server != self.server_name || !valid_media_id(id) {
            return Err(not_found());
        }
        let media_key = key(server, id);
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notified = self.uploaded.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let meta = self.meta.get(media_key.as_bytes())?.ok_or_else(not_found)?;
            if let Some(content) = meta.content.clone() {
                return Ok((media_key, meta, content));
            }
            if meta
                .unused_expires_ms
                .is_some_and(|expires| expires <= now_ms())
            {
                return Err(not_found());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Err(Error::with_status(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::NotYetUploaded,
                    "The content has not been uploaded yet.",
                ));
            }
        }
    }

    async fn open_blob(&self, content: &Content) -> Result<tokio::fs::File> {
        tokio::fs::File::open(self.blob_path(&content.sha256))
            .await
            .map_err(|error| {
                tracing::error!(sha256 = %content.sha256, %error, "media file missing");
                not_found()
            })
    }

    /// Download `server/id`: the open file and what the uploader said about it. Another
    /// server's media is fetched from it the first time ([`remote`]).
    pub async fn download(
        &self,
        server: &ServerName,
        id: &str,
        wait: Duration,
    ) -> Result<Download> {
        if server != self.server_name {
            return self.remote_download(server, id, wait).await;
        }
        let (_, meta, content) = self.uploaded_meta(server, id, wait).await?;
        Ok(Download {
            file: self.open_blob(&content).await?,
            size: content.size,
            content_type: meta.content_type,
            filename: meta.filename,
        })
    }

    /// A thumbnail of `server/id` at the size that fits the `requested` one
    /// ([`choose_size`]), generated on first request and kept.
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        id: &str,
        requested: ThumbnailSize,
        wait: Duration,
    ) -> Result<Download> {
        let ThumbnailSize {
            width,
            height,
            method,
            animated,
        } = requested;
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("width and height must be positive."));
        }
        if server != self.server_name {
            let size = choose_size(width, height, method, animated);
            return self.remote_thumbnail(server, id, size, wait).await;
        }
        let (media_key, _, content) = self.uploaded_meta(server, id, wait).await?;
        if let Some(refusal) = self.thumb_refused.get(media_key.as_bytes())? {
            return Err(refusal.into_error());
        }
        let size = choose_size(width, height, method, animated);
        let thumb_key = thumb_key(&media_key, size);
        if let Some(thumb) = self.thumbs.get(&thumb_key)? {
            return self.thumb_download(thumb).await;
        }
        let _permit = self
            .thumbnailing
            .acquire()
            .await
            .map_err(|_| Error::internal("thumbnailer closed"))?;
        // Another request may have made it while this one waited.
        if let Some(thumb) = self.thumbs.get(&thumb_key)? {
            return self.thumb_download(thumb).await;
        }
        let path = self.blob_path(&content.sha256);
        let rendered = tokio::task::spawn_blocking(move || render(&path, size))
            .await
            .map_err(|e| Error::internal(format!("thumbnail task: {e}")))?;
        let rendered = match rendered {
            Ok(rendered) => rendered,
            Err(RenderError::Refused(refusal)) => {
                let _guard = self.blob_lock.lock().await;
                if self.meta.get(media_key.as_bytes())?.is_some() {
                    self.thumb_refused.insert(media_key.as_bytes(), &refusal)?;
                }
                return Err(refusal.into_error());
            }
            Err(RenderError::Internal(error)) => return Err(Error::internal(error)),
        };
        let (thumb, staged) = match rendered {
            Rendered::Original { content_type } => (
                ThumbMeta {
                    content: content.clone(),
                    content_type: content_type.to_owned(),
                },
                None,
            ),
            Rendered::Encoded {
                bytes,
                content_type,
            } => {
                let chunk: std::result::Result<Bytes, std::convert::Infallible> =
                    Ok(Bytes::from(bytes));
                let staged = self
                    .stage(futures_util::stream::iter([chunk]), u64::MAX)
                    .await?;
                let thumb = ThumbMeta {
                    content: staged.content.clone(),
                    content_type: content_type.to_owned(),
                };
                (thumb, Some(staged))
            }
        };
        {
            let _guard = self.blob_lock.lock().await;
            // The media may have been deleted meanwhile: then keep nothing.
            if self.meta.get(media_key.as_bytes())?.is_none() {
                return Err(not_found());
            }
            if let Some(staged) = staged {
                self.commit_blob(staged).await?;
            }
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

    async fn thumb_download(&self, thumb: ThumbMeta) -> Result<Download> {
        let extension = thumb
            .content_type
            .strip_prefix("image/")
            .unwrap_or("bin")
            .to_owned();
        Ok(Download {
            file: self.open_blob(&thumb.content).await?,
            size: thumb.content.size,
            content_type: Some(thumb.content_type),
            filename: Some(format!("thumbnail.{extension}")),
        })
    }

    /// Deletes `server/id` with its thumbnails; files no other media uses are unlinked.
    /// Returns whether the media existed.
    pub async fn delete(&self, server: &ServerName, id: &str) -> Result<bool> {
        if server != self.server_name || !valid_media_id(id) {
            return Ok(false);
        }
        let _guard = self.blob_lock.lock().await;
        let media_key = key(server, id);
        let Some(meta) = self.meta.get(media_key.as_bytes())? else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        let mut shas = BTreeSet::new();
        if let Some(content) = &meta.content {
            batch.remove(&*self.refs, ref_key(&content.sha256, media_key.as_bytes()));
            shas.insert(content.sha256.clone());
        }
        let mut prefix = media_key.as_bytes().to_vec();
        prefix.push(SEPARATOR);
        for entry in self.thumbs.scan_prefix(&prefix) {
            let (thumb_key, thumb) = entry?;
            batch.remove(&*self.refs, ref_key(&thumb.content.sha256, &thumb_key));
            batch.remove(self.thumbs.tree(), thumb_key);
            shas.insert(thumb.content.sha256);
        }
        batch.remove(self.meta.tree(), media_key.as_bytes().to_vec());
        batch.remove(self.thumb_refused.tree(), media_key.as_bytes().to_vec());
        batch.remove(&*self.by_user, user_key(&meta.uploader, &media_key));
        batch.remove(self.pending.tree(), user_key(&meta.uploader, &media_key));
        self.db.apply(&batch)?;
        self.db.persist().await?;
        for sha256 in shas {
            let mut prefix = sha256.as_bytes().to_vec();
            prefix.push(SEPARATOR);
            if self.refs.scan_prefix(&prefix).next().is_none()
                && let Err(error) = tokio::fs::remove_file(self.blob_path(&sha256)).await
            {
                tracing::warn!(%sha256, %error, "could not remove a media file");
            }
        }
        Ok(true)
    }

    /// Every media id `user` uploaded or created, with its metadata, oldest key first.
    pub fn list_user(&self, user: &UserId) -> Result<Vec<(OwnedMxcUri, MediaMeta)>> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for entry in self.by_user.scan_prefix(&prefix) {
            let (user_key, _) = entry?;
            let media_key = &user_key[prefix.len()..];
            if let Some(meta) = self.meta.get(media_key)? {
                let media_key = String::from_utf8_lossy(media_key);
                out.push((OwnedMxcUri::from(format!("mxc://{media_key}")), meta));
            }
        }
        Ok(out)
    }

    /// Deletes all media `user` uploaded; returns how many.
    pub async fn purge_user(&self, user: &UserId) -> Result<usize> {
        let mut count = 0;
        for (mxc, _) in self.list_user(user)? {
            let (Ok(server), Ok(id)) = (mxc.server_name(), mxc.media_id()) else {
                continue;
            };
            if self.delete(server, id).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// `GET /preview_url`: OpenGraph data of a public web page (see `preview`).
    pub async fn preview(&self, url: &str) -> Result<Preview> {
        if !self.allow_url_preview {
            return Err(PreviewError::Disabled.into_error());
        }
        preview::fetch(url).await.map_err(PreviewError::into_error)
    }
}

impl MediaMeta {
    fn placeholder(user: &UserId, now: u64) -> Self {
        Self {
            uploader: user.to_owned(),
            created_ms: now,
            content_type: None,
            filename: None,
            content: None,
            unused_expires_ms: None,
        }
    }
}

const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn new_media_id() -> String {
    crypto::random_string(32, ALPHANUMERIC)
}

fn too_large(limit: u64) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("The upload is larger than this server's limit of {limit} bytes."),
    )
}
