//! Watching the log: replay from a sequence, then follow live events, with no gap and no
//! duplicate (what `WatchAuditEvents` serves).
//!
//! Stitching: subscribe to the live broadcast *first*, then read the file from the wanted
//! sequence. Everything committed before the subscription is in the file; everything after
//! arrives live (or is in the file too). So: deliver file pages until one comes back empty,
//! then take live events, dropping any with a sequence already delivered. A live event
//! further ahead than the next expected sequence means events were missed (a slow receiver
//! lagged, or another process such as the CLI appended, which this process does not
//! broadcast): go back to reading the file from the next expected sequence. With no live
//! event for a second the file is polled as well, so other processes' events surface even
//! when this server is quiet.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::db::open_reader;
use super::db_backend::{AuditDb, Readers};
use super::query::{AuditFilter, list_in, list_sql};
use super::record::AuditEvent;
use super::{AuditError, AuditLog};

/// How long to wait for a live event before checking the file.
const POLL: Duration = Duration::from_secs(1);
/// Events read from the file per query.
const PAGE: usize = 512;

/// A gap-free stream of events from a starting sequence: see the module docs.
pub struct AuditWatch {
    /// The audit file or database (on PostgreSQL, other replicas' events arrive as the
    /// events of another process do: by the gap they leave, or by polling).
    readers: Readers,
    live: broadcast::Receiver<AuditEvent>,
    /// The next sequence to deliver.
    next: i64,
    buffer: VecDeque<AuditEvent>,
    /// True while the file has nothing at or after `next`, so live events can be taken.
    caught_up: bool,
    /// The log shut down: deliver what the file holds, then end.
    closed: bool,
    reader: Option<AuditDb>,
}

impl std::fmt::Debug for AuditWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditWatch(next={})", self.next)
    }
}

impl AuditLog {
    /// Events with sequence ≥ `from_sequence` (values below 1 mean from the start): first
    /// those already in the file, then live ones. For only new events, start at
    /// [`AuditLog::head`] + 1.
    pub fn watch(&self, from_sequence: i64) -> AuditWatch {
        // Subscribe before the first file read: see the module docs.
        let live = self.subscribe();
        AuditWatch {
            readers: self.readers(),
            live,
            next: from_sequence.max(1),
            buffer: VecDeque::new(),
            caught_up: false,
            closed: false,
            reader: None,
        }
    }
}

impl AuditWatch {
    /// The next event in sequence order; `None` once the log has shut down and every
    /// committed event was delivered.
    pub async fn next(&mut self) -> Result<Option<AuditEvent>, AuditError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.next = e.sequence + 1;
                return Ok(Some(e));
            }
            if !self.caught_up {
                self.refill().await?;
                if self.buffer.is_empty() {
                    if self.closed {
                        return Ok(None);
                    }
                    self.caught_up = true;
                }
                continue;
            }
            match tokio::time::timeout(POLL, self.live.recv()).await {
                Ok(Ok(e)) if e.sequence < self.next => {} // delivered from the file already
                Ok(Ok(e)) if e.sequence == self.next => {
                    self.next += 1;
                    return Ok(Some(e));
                }
                // Ahead of us, lagged, or quiet for a while: the file has the truth.
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => self.caught_up = false,
                Ok(Err(RecvError::Closed)) => {
                    self.closed = true;
                    self.caught_up = false;
                }
            }
        }
    }

    /// The sequence the next delivered event will have.
    pub fn next_sequence(&self) -> i64 {
        self.next
    }

    /// Reads the next page from the file (on the blocking pool, on this watch's own reader)
    /// or the database (on a connection of the reader pool, for this page only: a watch
    /// that follows for hours holds none while it waits).
    async fn refill(&mut self) -> Result<(), AuditError> {
        let (readers, reader, from) = (self.readers.clone(), self.reader.take(), self.next);
        let after = Some(from.saturating_sub(1));
        let (reader, page) = tokio::task::spawn_blocking(move || -> Result<_, AuditError> {
            match &readers {
                Readers::File(path) => {
                    let mut reader = match reader {
                        Some(r) => r,
                        None => AuditDb::Sqlite(open_reader(path)?),
                    };
                    let page = list_in(&mut reader, &AuditFilter::default(), after, PAGE)?;
                    Ok((Some(reader), page))
                }
                Readers::Pool(_) => Ok((None, readers.with(|db| list_sql(db, &AuditFilter::default(), after, PAGE))?)),
            }
        })
        .await
        .map_err(|e| AuditError::Unavailable { reason: format!("audit reader task failed: {e}") })??;
        self.reader = reader;
        self.buffer.extend(page);
        Ok(())
    }
}
