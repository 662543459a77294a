//! The disk reserve: writes are refused while the filesystem holding the database has less
//! free space than `min_free_disk_mb`, before they reach the store, so a full disk is a
//! clean refusal instead of a failed write inside the backend.
//!
//! [`Space::check`] runs before every write (`Db::apply` and the single-tree writes of
//! [`gate`](super::gate)). It asks the filesystem (`statvfs`: blocks available to an
//! unprivileged process times the fragment size) at most every [`CHECK_INTERVAL`] while
//! there is room: the call is cheap (2 µs measured through Python's `os.statvfs` here, an
//! upper bound), but a busy server writes thousands of times a second, and 100 ms of writes
//! are far below any sensible reserve. While the disk is full every check asks again, so
//! writes resume as soon as space is freed.
//!
//! A write that fails inside a backend for want of space ([`StorageError::NoSpace`], also
//! with no reserve) enters the same condition through [`Space::out_of_space`].
//!
//! The condition is logged once when it starts (one error line naming the directory, the
//! free space and the reserve) and once when it ends (one info line), never per request.
//! A store that fails for want of space while the disk has room is *stuck* instead (sled
//! and redb keep failing after an `ENOSPC` until they are opened again): one error line
//! says to restart.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{StorageError, StorageResult};

/// How long an answer of "enough room" is trusted.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Writes resume only once this much more than the reserve is free (at least 1 MiB free
/// with no reserve): a disk hovering at the limit does not flap between full and not.
pub const RESUME_MARGIN: u64 = 1 << 20;

/// Free bytes on a filesystem, as a function so tests can pretend.
pub type FreeBytes = fn(&Path) -> std::io::Result<u64>;

/// The free space watcher of one database directory.
pub struct Space {
    /// The database directory (`database_path`), or `None` for a store in memory.
    dir: Option<PathBuf>,
    /// Bytes that must stay free; 0 checks nothing before writes.
    reserve: AtomicU64,
    free_bytes: FreeBytes,
    state: Mutex<State>,
    /// Set when the store failed for want of space while the disk had room: a backend
    /// that does not recover by itself (sled, redb). Logged once; cleared by a write that
    /// flush succeeds.
    stuck: AtomicBool,
}

#[derive(Default)]
struct State {
    /// When the filesystem last answered "enough room".
    room_at: Option<Instant>,
    /// Whether writes are refused (logged once on entering and once on leaving).
    full: bool,
}

impl Space {
    /// Watches the filesystem holding `dir`, with no reserve until [`Space::set_reserve`].
    pub fn new(dir: &Path) -> Self {
        Self::with_probe(Some(dir.to_owned()), statvfs_free)
    }

    /// For a store in memory: never full.
    pub fn unlimited() -> Self {
        Self::with_probe(None, statvfs_free)
    }

    pub fn with_probe(dir: Option<PathBuf>, free_bytes: FreeBytes) -> Self {
        Self {
            dir,
            reserve: AtomicU64::new(0),
            free_bytes,
            state: Mutex::new(State::default()),
            stuck: AtomicBool::new(false),
        }
    }

    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
        // Take the next check from the filesystem.
        self.lock().room_at = None;
    }

    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// Before a write: `Err(NoSpace)` while the disk is full (under the reserve, or after
    /// a write failed for want of space and not enough has been freed since).
    pub fn check(&self) -> StorageResult<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let reserve = self.reserve.load(Ordering::Relaxed);
        let mut state = self.lock();
        if !state.full {
            if reserve == 0 {
                return Ok(());
            }
            if state
                .room_at
                .is_some_and(|at| at.elapsed() < CHECK_INTERVAL)
            {
                return Ok(());
            }
        }
        let free = match (self.free_bytes)(dir) {
            Ok(free) => free,
            Err(error) => {
                // Not knowing is not "full": the write goes ahead, and fails in the
                // backend if the disk really is full.
                tracing::warn!(dir = %dir.display(), %error, "cannot read the free disk space");
                state.room_at = Some(Instant::now());
                return Ok(());
            }
        };
        let needed = if state.full {
            reserve + RESUME_MARGIN
        } else {
            reserve
        };
        if free < needed {
            if !state.full {
                state.full = true;
                log_full(dir, free, reserve);
            }
            return Err(StorageError::NoSpace);
        }
        if state.full {
            state.full = false;
            tracing::info!(
                dir = %dir.display(),
                free = %mib(free),
                "space is free again: writes resume"
            );
        }
        state.room_at = Some(Instant::now());
        Ok(())
    }

    /// A write failed in the backend for want of space: refuse writes until room returns.
    ///
    /// If the disk has room all the same, the backend is what is stuck (sled and redb keep
    /// failing after an `ENOSPC` until they are opened again): that is logged once, and
    /// writes go on reaching the store (and failing) until a flush succeeds.
    pub fn out_of_space(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let mut state = self.lock();
        state.room_at = None;
        if state.full {
            return;
        }
        let free = (self.free_bytes)(dir).unwrap_or(0);
        let reserve = self.reserve.load(Ordering::Relaxed);
        if free >= reserve.saturating_add(RESUME_MARGIN) {
            if !self.stuck.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    "a write to the database in {} failed for want of space although {} is \
                     free: if writes keep failing, restart the server",
                    dir.display(),
                    mib(free)
                );
            }
            return;
        }
        state.full = true;
        log_full(dir, free, reserve);
    }

    /// Passes `result` on, entering the full condition if it is [`StorageError::NoSpace`].
    pub fn watch<T>(&self, result: StorageResult<T>) -> StorageResult<T> {
        if let Err(StorageError::NoSpace) = &result {
            self.out_of_space();
        }
        result
    }

    /// A flush succeeded: a store that was stuck writes again (logged once).
    pub fn flushed(&self) {
        if self.stuck.load(Ordering::Relaxed) && self.stuck.swap(false, Ordering::SeqCst) {
            tracing::info!("the database writes again");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, consistent after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn log_full(dir: &Path, free: u64, reserve: u64) {
    tracing::error!(
        "the disk holding {} is full ({} free, {} reserve): writes are refused until space is \
         freed",
        dir.display(),
        mib(free),
        mib(reserve)
    );
}

/// `1.2 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
pub fn statvfs_free(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` points to writable memory of the right
    // type; statvfs fills it completely when it returns 0.
    let result = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok(free)
}

/// Whether `error` or any error below it is an I/O error for want of space (`ENOSPC`, or
/// `EDQUOT`: over quota is full for this process).
pub fn is_no_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && (matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    static FREE: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn fake(_: &Path) -> std::io::Result<u64> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(FREE.load(Ordering::SeqCst))
    }

    // One test for the fake filesystem, so no two tests share its statics.
    #[test]
    fn reserve_refuses_and_resumes_with_a_margin() {
        let space = Space::with_probe(Some("/data".into()), fake);
        FREE.store(1, Ordering::SeqCst);
        // No reserve: no question asked, nothing refused.
        assert!(space.check().is_ok());
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);

        space.set_reserve(10 << 20);
        FREE.store(20 << 20, Ordering::SeqCst);
        assert!(space.check().is_ok());
        assert!(space.check().is_ok());
        // The second answer came from the cache.
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);

        FREE.store(5 << 20, Ordering::SeqCst);
        space.set_reserve(10 << 20); // forgets the cached answer
        assert!(matches!(space.check(), Err(StorageError::NoSpace)));
        assert!(space.is_full());
        // While full every check asks again.
        let calls = CALLS.load(Ordering::SeqCst);
        assert!(matches!(space.check(), Err(StorageError::NoSpace)));
        assert_eq!(CALLS.load(Ordering::SeqCst), calls + 1);
        // Just above the reserve is not enough to resume...
        FREE.store((10 << 20) + 1, Ordering::SeqCst);
        assert!(matches!(space.check(), Err(StorageError::NoSpace)));
        // ...the margin above it is.
        FREE.store((10 << 20) + RESUME_MARGIN, Ordering::SeqCst);
        assert!(space.check().is_ok());
        assert!(!space.is_full());

        // A failure in the backend enters the condition even with no reserve.
        space.set_reserve(0);
        FREE.store(RESUME_MARGIN - 1, Ordering::SeqCst);
        space.out_of_space();
        assert!(space.is_full());
        assert!(matches!(space.check(), Err(StorageError::NoSpace)));
        FREE.store(RESUME_MARGIN, Ordering::SeqCst);
        assert!(space.check().is_ok());
    }

    fn no_space() -> StorageResult<()> {
        Err(StorageError::NoSpace)
    }

    fn plenty(_: &Path) -> std::io::Result<u64> {
        Ok(1 << 40)
    }

    /// A store that fails for want of space while the disk has room is stuck, not full:
    /// writes are not refused before it (they may succeed again), and it is logged once.
    #[test]
    fn a_store_failing_on_a_roomy_disk_is_stuck_not_full() {
        let space = Space::with_probe(Some("/data".into()), plenty);
        space.set_reserve(1 << 20);
        assert!(space.watch(no_space()).is_err());
        assert!(!space.is_full());
        assert!(space.stuck.load(Ordering::SeqCst));
        assert!(space.check().is_ok());
        assert!(space.watch(Ok(())).is_ok());
        assert!(space.stuck.load(Ordering::SeqCst));
        space.flushed();
        assert!(!space.stuck.load(Ordering::SeqCst));
    }

    #[test]
    fn memory_store_is_never_full() {
        let space = Space::unlimited();
        space.set_reserve(u64::MAX);
        space.out_of_space();
        assert!(space.check().is_ok());
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let free = statvfs_free(dir.path()).unwrap();
        assert!(free > 0);
        assert!(statvfs_free(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn no_space_is_found_below_other_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapper")]
        struct Wrapper(#[source] std::io::Error);

        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_no_space(&enospc));
        assert!(is_no_space(&Wrapper(enospc)));
        let kind = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(is_no_space(&kind));
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!is_no_space(&Wrapper(other)));
    }

    #[test]
    fn a_backend_error_for_want_of_space_is_no_space() {
        /// An error that keeps the I/O error only in its message, as some backends do.
        #[derive(Debug, thiserror::Error)]
        #[error("write failed: {0}")]
        struct Flattened(String);

        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(
            StorageError::backend(&Flattened(enospc.to_string())),
            StorageError::NoSpace
        ));
        assert!(matches!(
            StorageError::backend(&enospc),
            StorageError::NoSpace
        ));
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(matches!(
            StorageError::backend(&Flattened(eio.to_string())),
            StorageError::Backend(_)
        ));
    }
}
