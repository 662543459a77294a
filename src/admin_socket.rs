//! The running server's admin socket, `database_path/admin.sock`: how `conduit backup` reaches
//! a server that holds the database.
//!
//! One command per connection, one line each way: `backup DIR` (an absolute path) is
//! answered `ok <what was written>` or `error <why>` once the backup is written
//! ([`backup::write_backup`]). The socket is mode 0600, and a peer whose user is neither the
//! owner of the data directory nor root is refused. A stale socket left by a crash is replaced
//! at start (the database lock already proved no other server uses this directory), and the
//! file is removed at shutdown.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
    task::JoinHandle,
};

use crate::{backup, service::Services};

/// Longest command line read.
const MAX_LINE: u64 = 4096;
/// How long a client may take to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The listening socket; dropping it stops listening and removes the file.
pub struct AdminSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AdminSocket {
    /// Listens on `database_path/admin.sock`. Call inside the runtime.
    pub fn start(services: Arc<Services>) -> Result<Self, String> {
        let path = services.config.database_path.join(backup::SOCKET_FILE);
        let failed = |e: std::io::Error| format!("admin socket {}: {e}", path.display());
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "replaced a stale admin socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let listener = UnixListener::bind(&path).map_err(failed)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        let task = tokio::spawn(accept(listener, services));
        Ok(Self { path, task })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, services: Arc<Services>) {
    // One backup at a time.
    let busy = Arc::new(Mutex::new(()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (services, busy) = (Arc::clone(&services), Arc::clone(&busy));
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, services, busy).await {
                        tracing::warn!("admin socket: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, say: try again shortly rather than spin.
                tracing::warn!("admin socket: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(
    stream: UnixStream,
    services: Arc<Services>,
    busy: Arc<Mutex<()>>,
) -> std::io::Result<()> {
    let allowed = allowed_peer(&stream, &services.config.database_path);
    let (read, mut write) = stream.into_split();
    let answer = match allowed {
        Err(why) => format!("error {why}"),
        Ok(()) => {
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_LINE));
            match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => run(line.trim_end_matches('\n'), services, &busy).await,
                Ok(Err(e)) => format!("error cannot read the command: {e}"),
                Err(_) => "error no command within 10 seconds".to_owned(),
            }
        }
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    write.shutdown().await
}

/// The peer runs as the owner of the data directory, or as root.
fn allowed_peer(stream: &UnixStream, data: &Path) -> Result<(), String> {
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("cannot tell who is asking: {e}"))?
        .uid();
    let owner = std::fs::metadata(data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .uid();
    if peer == owner || peer == 0 {
        Ok(())
    } else {
        tracing::warn!(
            uid = peer,
            "admin socket: refused a user who does not own the data"
        );
        Err("only the account that owns the data directory may use this socket".to_owned())
    }
}

/// Runs one command; the answer line.
async fn run(command: &str, services: Arc<Services>, busy: &Mutex<()>) -> String {
    let Some(("backup", dir)) = command.split_once(' ') else {
        return "error unknown command: the only one is `backup DIR`".to_owned();
    };
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return "error the backup directory must be an absolute path".to_owned();
    }
    let Ok(_running) = busy.try_lock() else {
        return "error a backup is already being written".to_owned();
    };
    tracing::info!(dir = %dir.display(), "writing a backup");
    let written = tokio::task::spawn_blocking(move || {
        backup::write_backup(&services.db, &services.config, &dir)
    })
    .await;
    match written {
        Ok(Ok(message)) => {
            tracing::info!("{message}");
            format!("ok {message}")
        }
        Ok(Err(e)) => {
            tracing::warn!("backup failed: {e}");
            format!("error {e}")
        }
        Err(e) => format!("error the backup task failed: {e}"),
    }
}
