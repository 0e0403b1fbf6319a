//! The file sink: one JSON object per line (events as `audit export --format jsonl` writes
//! them, checkpoints as `audit checkpoint` prints them), appended and `fsync`ed per batch,
//! rotated by size (`path` → `path.1` → … → `path.N`, the oldest dropped).
//!
//! Exactly once: the file is its own receipt. At start the sink reads the tail of its file
//! (or of `path.1` right after a rotation) for the last event and checkpoint it holds, so a
//! crash between a write and the cursor's save repeats nothing. A line a crash cut short is
//! left as it is, ended, and its item follows whole on the next line.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::feed::{Destination, Item, SinkCursor};

/// How much of a file's end is read for the last positions it holds.
const TAIL_BYTES: u64 = 256 * 1024;

pub(super) struct FileDest {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    confirmed: Option<SinkCursor>,
}

impl FileDest {
    pub(super) fn new(path: PathBuf, max_bytes: u64, keep: u32) -> FileDest {
        FileDest { path, max_bytes, keep: keep.max(1), file: None, size: 0, confirmed: None }
    }

    /// `path.N`.
    fn numbered(&self, n: u32) -> PathBuf {
        let mut s: OsString = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = OpenOptions::new().read(true).append(true).create(true).mode(0o640).open(&self.path)?;
            if !existed {
                // The new file's name survives a power loss before its first line is counted.
                sync_dir(&self.path)?;
            }
            let size = f.metadata()?.len();
            let mut last = [0u8; 1];
            if size > 0 && f.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n' {
                // A line a crash cut short: end it, so the next line starts clean.
                (&f).write_all(b"\n")?;
                self.size = size + 1;
            } else {
                self.size = size;
            }
            self.file = Some(f);
        }
        // Just ensured.
        Ok(self.file.as_mut().unwrap_or_else(|| unreachable!()))
    }

    /// `path` becomes `path.1`, `path.1` becomes `path.2`, …; `path.keep` is dropped.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        // The renames (and then the new file) survive a crash once the directory is synced.
        sync_dir(&self.path)?;
        self.open().map(|_| ())
    }

    fn write(&mut self, items: &[Item]) -> std::io::Result<()> {
        let mut buf = String::with_capacity(items.len() * 400);
        for item in items {
            buf.push_str(&item.json());
            buf.push('\n');
        }
        self.open()?;
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let before = self.size;
        let f = self.open()?;
        let written = f.write_all(buf.as_bytes()).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Whatever part of the batch reached the file goes, so the batch sent again is
            // not doubled (if this fails too, the lines stay: repeated, never lost).
            if f.set_len(before).and_then(|()| f.sync_data()).is_ok() {
                self.size = before;
            }
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }
}

impl Destination for FileDest {
    fn send(&mut self, items: &[Item], end: SinkCursor) -> Result<(), String> {
        self.write(items).map_err(|e| {
            // Reopened on the next attempt (the volume may have been remounted).
            self.file = None;
            format!("{}: {e}", self.path.display())
        })?;
        self.confirmed = Some(end);
        Ok(())
    }

    fn confirm(&mut self) -> Result<Option<SinkCursor>, String> {
        Ok(self.confirmed.take())
    }

    fn reset(&mut self) {
        self.file = None;
        self.confirmed = None;
    }

    fn resume_hint(&mut self) -> Option<SinkCursor> {
        let here = last_positions(&self.path);
        let (event, checkpoint) = match here {
            (Some(e), c) => (Some(e), c.or_else(|| last_positions(&self.numbered(1)).1)),
            (None, c) => {
                let before = last_positions(&self.numbered(1));
                (before.0, c.or(before.1))
            }
        };
        (event.is_some() || checkpoint.is_some())
            .then(|| SinkCursor { event_sequence: event.unwrap_or(0), checkpoint_sequence: checkpoint.unwrap_or(0) })
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// The newest event sequence and the newest checkpoint sequence among the complete lines
/// at the end of `path` (a missing or unreadable file holds none).
fn last_positions(path: &Path) -> (Option<i64>, Option<i64>) {
    let Ok(mut f) = File::open(path) else { return (None, None) };
    let Ok(len) = f.metadata().map(|m| m.len()) else { return (None, None) };
    let start = len.saturating_sub(TAIL_BYTES);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut tail).is_err() {
        return (None, None);
    }
    let (mut event, mut checkpoint) = (None, None);
    // Complete lines only: a line with no end was cut short and does not count.
    let Some(end) = tail.iter().rposition(|&b| b == b'\n') else { return (None, None) };
    for line in tail[..end].split(|&b| b == b'\n').rev() {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        let Some(seq) = v.get("sequence").and_then(|s| s.as_i64()) else { continue };
        if v.get("signature").is_some() {
            checkpoint = checkpoint.or(Some(seq));
        } else if v.get("action").is_some() {
            event = event.or(Some(seq));
        }
        if event.is_some() && checkpoint.is_some() {
            break;
        }
    }
    (event, checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, AuditEvent, AuditRecord, Checkpoint, Outcome};

    fn event(seq: i64) -> Item {
        let record =
            AuditRecord::new(Action::TokenMinted, Outcome::Ok).detail(format!("event {seq} {}", "x".repeat(200)));
        Item::Event(AuditEvent { sequence: seq, time_ms: 1_700_000_000_000, prev_hash: [0; 32], hash: [1; 32], record })
    }

    fn checkpoint(seq: i64) -> Item {
        Item::Checkpoint(Checkpoint::sign(seq, [1; 32], 1, &ed25519_dalek::SigningKey::from_bytes(&[5; 32])))
    }

    fn send(d: &mut FileDest, items: Vec<Item>, at: SinkCursor) -> SinkCursor {
        let end = items.iter().fold(at, |p, i| i.advance(p));
        d.send(&items, end).unwrap();
        assert_eq!(d.confirm().unwrap(), Some(end));
        end
    }

    #[test]
    fn the_file_rotates_by_size_and_its_tail_says_where_delivery_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut d = FileDest::new(path.clone(), 2_000, 2);
        assert_eq!(d.resume_hint(), None);
        let mut at = SinkCursor::default();
        for s in 1..=20 {
            let mut items = vec![event(s)];
            if s % 5 == 0 {
                items.push(checkpoint(s));
            }
            at = send(&mut d, items, at);
        }
        // Rotated: the newest file plus two kept; none far past the limit.
        for p in [path.clone(), d.numbered(1), d.numbered(2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len > 0 && len < 2_000, "{} is {len} bytes", p.display());
        }
        assert!(!d.numbered(3).exists());
        // Every line in the three files is one whole item; the newest are in `path`.
        let lines: Vec<String> = [d.numbered(2), d.numbered(1), path.clone()]
            .iter()
            .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let seqs: Vec<i64> = lines
            .iter()
            .filter(|l| l.contains("\"action\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (21 - seqs.len() as i64..=20).collect::<Vec<_>>());
        assert_eq!(FileDest::new(path.clone(), 2_000, 2).resume_hint(), Some(at));

        // A line cut short by a crash is ended, not counted, and the item follows whole.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"sequence\":21,\"act").unwrap();
        let mut d = FileDest::new(path.clone(), 1 << 20, 2);
        assert_eq!(d.resume_hint(), Some(at));
        send(&mut d, vec![event(21)], at);
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert!(last[0].starts_with("{\"sequence\":21,") && last[1] == "{\"sequence\":21,\"act", "{last:?}");
    }
}
