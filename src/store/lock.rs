//! The database lock: one process changes a vault database at a time.
//!
//! A server holds an exclusive `flock` on `<db>.lock` for as long as it serves; a CLI
//! command that writes takes the same lock for the length of its change. So a `rotate-kek`
//! or `tenant add` beside a running server is refused ("a server is running on this
//! database (pid N): use the gRPC API, or stop it first") instead of leaving the server
//! serving stale or unopenable state, and a second server on the same files is refused too.
//! Read-only commands (list, show, backup, audit) take no lock.
//!
//! The kernel drops the lock when its holder dies (`kill -9` included): a stale lock file
//! never blocks anyone. Its text (`pid=N role`) is only a hint for the message; the lock is
//! the `flock`, not the file's presence.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Who holds (or wants) the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Server,
    Command,
}

impl Holder {
    fn as_str(self) -> &'static str {
        match self {
            Holder::Server => "server",
            Holder::Command => "command",
        }
    }
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A server serves this database.
    #[error("a server is running on this database ({pid}): use the gRPC API, or stop it first")]
    ServerRunning { pid: String },
    /// Another command is changing it.
    #[error("another pogo-vault command ({pid}) is changing this database; retry when it is done")]
    CommandRunning { pid: String },
    /// The lock file could not be opened.
    #[error("cannot open the lock file {path}: {reason}")]
    Io { path: String, reason: String },
}

/// A held database lock; released on drop (and by the kernel when the process dies).
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

impl DbLock {
    /// The lock file of a vault database: beside the file the path resolves to, so a
    /// symlink to the database (or a path through a symlinked directory) finds the same
    /// lock. (A hard link to the database is not caught: keep one name per database.)
    pub fn path_for(db: &Path) -> PathBuf {
        let resolved = std::fs::canonicalize(db).ok().or_else(|| {
            let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(std::fs::canonicalize(dir).ok()?.join(db.file_name()?))
        });
        PathBuf::from(format!("{}.lock", resolved.as_deref().unwrap_or(db).display()))
    }

    /// Takes the lock of `db` without waiting, or says who holds it.
    pub fn acquire(db: &Path, holder: Holder) -> Result<DbLock, LockError> {
        let path = Self::path_for(db);
        let io = |e: std::io::Error| LockError::Io { path: path.display().to_string(), reason: e.kind().to_string() };
        // A lock file another user created (a CLI run as root) may be read-only to us: a
        // read-only open still takes the `flock`; only the note is not written.
        let opened = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path);
        let (mut file, writable) = match opened {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                (OpenOptions::new().read(true).open(&path).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(held_by(&text));
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: say who we are, for the message another process shows.
        if writable {
            let note = format!("pid={} {}\n", std::process::id(), holder.as_str());
            file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(note.as_bytes())).map_err(io)?;
        }
        Ok(DbLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The error for a lock held by the process described in `text` (`pid=N role`).
fn held_by(text: &str) -> LockError {
    let mut words = text.split_whitespace();
    let pid = words
        .next()
        .and_then(|w| w.strip_prefix("pid="))
        .filter(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
    match words.next() {
        Some("command") => LockError::CommandRunning { pid },
        _ => LockError::ServerRunning { pid },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("v.db");
        let server = DbLock::acquire(&db, Holder::Server).unwrap();
        let err = DbLock::acquire(&db, Holder::Command).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("a server is running on this database") && msg.contains("use the gRPC API"), "{msg}");
        drop(server);
        let cmd = DbLock::acquire(&db, Holder::Command).unwrap();
        let err = DbLock::acquire(&db, Holder::Server).unwrap_err();
        assert!(err.to_string().contains("another pogo-vault command"), "{err}");
        drop(cmd);
    }

    #[test]
    fn a_symlink_to_the_database_finds_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("v.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("other-name.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let _held = DbLock::acquire(&db, Holder::Server).unwrap();
        assert!(DbLock::acquire(&link, Holder::Command).is_err(), "the symlinked name is locked too");
    }

    #[test]
    fn an_unreadable_note_still_refuses() {
        assert!(matches!(held_by("garbage"), LockError::ServerRunning { pid } if pid == "pid unknown"));
        assert!(matches!(held_by("pid=12x server"), LockError::ServerRunning { pid } if pid == "pid unknown"));
        assert!(matches!(held_by("pid=42 command"), LockError::CommandRunning { pid } if pid == "pid 42"));
    }
}
