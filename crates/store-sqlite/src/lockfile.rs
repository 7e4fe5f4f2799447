//! The exclusive owner lock: one `SqliteStore` per database file, across processes.
//!
//! The writer keeps per-account state in memory and assumes nobody else writes, so a second
//! process (or a second store in this process) must not open the same file. An OS lock on the
//! sidecar file `<database>.lock` is held for the store's lifetime; the OS drops it when the
//! holder exits, even after a crash, so there is no stale-lock cleanup. The holder's pid is
//! written into the file only to make the refusal message useful.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use store::StoreError;

/// Holds the lock until dropped.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: File,
}

/// The canonical database path, so two spellings of one file share one lock file.
pub(crate) fn resolve(path: &Path) -> Result<PathBuf, StoreError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| StoreError::startup(format!("database path {} names no file", path.display())))?;
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = parent.canonicalize().map_err(|error| {
        StoreError::startup(format!("database directory {} is not usable: {error}", parent.display()))
            .with_source(error)
    })?;
    let joined = parent.join(file_name);
    // Follow a symlinked database file to the real one; a missing file is created later.
    Ok(joined.canonicalize().unwrap_or(joined))
}

fn lock_path(database: &Path) -> PathBuf {
    let mut text = OsString::from(database.as_os_str());
    text.push(".lock");
    PathBuf::from(text)
}

/// Takes the lock for `database` (a [`resolve`]d path) or explains who has it.
pub(crate) fn acquire(database: &Path) -> Result<OwnerLock, StoreError> {
    let path = lock_path(database);
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|error| {
            StoreError::startup(format!("cannot open lock file {}: {error}", path.display())).with_source(error)
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(StoreError::startup(format!(
                "database {} is in use by another creditgraph process{holder}: its lock file {} is held; \
                     stop that process or use another database",
                database.display(),
                path.display()
            )));
        }
        Err(TryLockError::Error(error)) => {
            return Err(StoreError::startup(format!("cannot lock {}: {error}", path.display())).with_source(error));
        }
    }
    // Best effort: the pid only improves the message another process prints.
    let _ = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| {
        let pid = std::process::id();
        writeln!(file, "{pid}")
    });
    Ok(OwnerLock { _file: file })
}
