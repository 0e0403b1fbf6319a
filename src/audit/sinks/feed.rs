//! What a sink delivers, read from the durable log: events and checkpoints after a
//! position, merged in the order they belong (a checkpoint right after the event it
//! covers), from one read snapshot; and what a destination must do with them
//! ([`Destination`]).

use super::super::AuditError;
use super::super::chain::Checkpoint;
use super::super::db::{CHECKPOINT_COLUMNS, EVENT_COLUMNS, checkpoint_from, event_from, head};
use super::super::event_json::event_json;
use super::super::record::AuditEvent;
pub use crate::store::sink_cursors::SinkCursor;
use crate::store::sql::{Sql, Value};

/// One thing a sink delivers.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Event(AuditEvent),
    Checkpoint(Checkpoint),
}

impl Item {
    pub(super) fn time_ms(&self) -> i64 {
        match self {
            Item::Event(e) => e.time_ms,
            Item::Checkpoint(c) => c.time_ms,
        }
    }

    /// The JSON form: an event as `audit export --format jsonl` writes it, a checkpoint as
    /// `audit checkpoint` prints it.
    pub(super) fn json(&self) -> String {
        match self {
            Item::Event(e) => event_json(e),
            Item::Checkpoint(c) => c.to_json(),
        }
    }

    /// The position once this item is delivered, from the position before it.
    pub(super) fn advance(&self, at: SinkCursor) -> SinkCursor {
        match self {
            Item::Event(e) => SinkCursor { event_sequence: e.sequence, ..at },
            Item::Checkpoint(c) => SinkCursor { checkpoint_sequence: c.sequence, ..at },
        }
    }
}

/// A destination: takes items in order, and says what it certainly has.
pub(super) trait Destination: Send {
    /// Sends `items` in order; `end` is the position once all of them are delivered.
    fn send(&mut self, items: &[Item], end: SinkCursor) -> Result<(), String>;
    /// The newest position the destination certainly has, if it moved since last asked.
    /// `Err`: items sent but not confirmed were lost; they are sent again from the last
    /// confirmed position.
    fn confirm(&mut self) -> Result<Option<SinkCursor>, String>;
    /// Forgets everything sent and not confirmed (it is sent again) and the connection.
    fn reset(&mut self);
    /// Items the destination accepted but refused for good since last asked (an OTLP
    /// collector's `partial_success`): counted as skipped.
    fn take_rejected(&mut self) -> u64 {
        0
    }
    /// Where the destination's own record says delivery reached (the file's tail).
    fn resume_hint(&mut self) -> Option<SinkCursor> {
        None
    }
}

/// A page read after a position.
pub(super) struct Page {
    pub(super) items: Vec<Item>,
    /// Events that should have come next but are no longer in the database (archived
    /// before this sink delivered them): `(first, last)`.
    pub(super) gap: Option<(i64, i64)>,
}

/// Up to `limit` events after `at`, with the checkpoints after `at` that they (or the events
/// delivered already) reach, in delivery order. `db` must be one read snapshot (a read
/// transaction), so a checkpoint committed with its events is never seen without them.
pub(super) fn read_page(db: &mut dyn Sql, at: SinkCursor, limit: usize) -> Result<Page, AuditError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2");
    let page = i64::try_from(limit).unwrap_or(i64::MAX);
    let events = db
        .query(&sql, &[Value::Int(at.event_sequence), Value::Int(page)])?
        .iter()
        .map(event_from)
        .collect::<Result<Vec<_>, _>>()?;
    let gap = match events.first() {
        Some(e) if at.event_sequence > 0 && e.sequence > at.event_sequence + 1 => {
            Some((at.event_sequence + 1, e.sequence - 1))
        }
        _ => None,
    };
    // With a full page more events follow: only checkpoints up to its last event, so none
    // is delivered ahead of events it covers.
    let reach = match events.last() {
        Some(e) if events.len() == limit => e.sequence,
        Some(e) => e.sequence.max(head(db)?.0),
        None => head(db)?.0.max(at.event_sequence),
    };
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE sequence > ?1 AND sequence <= ?2 ORDER BY sequence"
    );
    let checkpoints = db
        .query(&sql, &[Value::Int(at.checkpoint_sequence), Value::Int(reach)])?
        .iter()
        .map(checkpoint_from)
        .collect::<Result<Vec<_>, _>>()?;
    // Merge: a checkpoint goes right after the event of its sequence (or first, when that
    // event was delivered before).
    let mut items = Vec::with_capacity(events.len() + checkpoints.len());
    let mut cps = checkpoints.into_iter().peekable();
    for e in events {
        while let Some(c) = cps.next_if(|c| c.sequence < e.sequence) {
            items.push(Item::Checkpoint(c));
        }
        items.push(Item::Event(e));
    }
    items.extend(cps.map(Item::Checkpoint));
    Ok(Page { items, gap })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, AuditLog, AuditRecord, Outcome, open_reader};

    fn kinds(items: &[Item]) -> Vec<(char, i64)> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => ('e', e.sequence),
                Item::Checkpoint(c) => ('c', c.sequence),
            })
            .collect()
    }

    #[test]
    fn a_page_puts_each_checkpoint_after_its_event_and_reports_archived_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        // Each one-shot append commits one event and a checkpoint of it.
        for _ in 0..5 {
            AuditLog::append_blocking_once(&path, &key, AuditRecord::new(Action::TenantRead, Outcome::Ok)).unwrap();
        }
        let reader = open_reader(&path).unwrap();
        let read_page = |at, limit| read_page(&mut &reader, at, limit);
        let all = read_page(SinkCursor::default(), 100).unwrap();
        assert_eq!(all.gap, None);
        let expect: Vec<(char, i64)> = (1..=5).flat_map(|s| [('e', s), ('c', s)]).collect();
        assert_eq!(kinds(&all.items), expect);
        // A full page stops at its last event, with no checkpoint ahead of its events.
        let two = read_page(SinkCursor::default(), 2).unwrap();
        assert_eq!(kinds(&two.items), vec![('e', 1), ('c', 1), ('e', 2), ('c', 2)]);
        // A checkpoint signed after its event was delivered comes first on the next page.
        let at = SinkCursor { event_sequence: 2, checkpoint_sequence: 1 };
        assert_eq!(kinds(&read_page(at, 1).unwrap().items), vec![('c', 2), ('e', 3), ('c', 3)]);
        // Events 2 and 3 archived (deleted) before the sink read them: reported, not hidden.
        let rw = rusqlite::Connection::open(&path).unwrap();
        rw.execute("DELETE FROM events WHERE sequence IN (2, 3)", []).unwrap();
        let at = SinkCursor { event_sequence: 1, checkpoint_sequence: 1 };
        let page = read_page(at, 100).unwrap();
        assert_eq!(page.gap, Some((2, 3)));
        assert_eq!(kinds(&page.items)[..3], [('c', 2), ('c', 3), ('e', 4)]);
    }
}
