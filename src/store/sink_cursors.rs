//! How far each audit sink has delivered the audit log (`audit_sink_cursors`): two
//! sequences per sink name, the newest event and the newest checkpoint delivered.
//!
//! Delivery progress, not a record of anything: a lost or older row makes a sink send
//! again from an earlier point, so what it delivers is late and repeated, never skipped.

use rusqlite::{Connection, params};

use super::{StoreError, now_ms, optional};

/// A sink's position: everything up to these sequences is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SinkCursor {
    pub event_sequence: i64,
    pub checkpoint_sequence: i64,
}

/// The stored position of sink `name`, if it has one.
pub fn load(conn: &Connection, name: &str) -> Result<Option<SinkCursor>, StoreError> {
    optional(conn.query_row(
        "SELECT event_sequence, checkpoint_sequence FROM audit_sink_cursors WHERE name = ?1",
        params![name],
        |r| Ok(SinkCursor { event_sequence: r.get(0)?, checkpoint_sequence: r.get(1)? }),
    ))
}

/// Stores `cursor` for sink `name`. Never moves a stored position backwards: a position is
/// only ever saved after what it covers was delivered, so a smaller one is stale.
pub fn save(conn: &Connection, name: &str, cursor: SinkCursor) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_sink_cursors (name, event_sequence, checkpoint_sequence, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
             event_sequence = max(event_sequence, excluded.event_sequence),
             checkpoint_sequence = max(checkpoint_sequence, excluded.checkpoint_sequence),
             updated_at = excluded.updated_at",
        params![name, cursor.event_sequence.max(0), cursor.checkpoint_sequence.max(0), now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(&dir.path().join("v.db")).unwrap();
        let c = store.conn();
        assert_eq!(load(c, "siem").unwrap(), None);
        let at = SinkCursor { event_sequence: 10, checkpoint_sequence: 8 };
        save(c, "siem", at).unwrap();
        assert_eq!(load(c, "siem").unwrap(), Some(at));
        save(c, "siem", SinkCursor { event_sequence: 4, checkpoint_sequence: 9 }).unwrap();
        assert_eq!(load(c, "siem").unwrap(), Some(SinkCursor { event_sequence: 10, checkpoint_sequence: 9 }));
        assert_eq!(load(c, "other").unwrap(), None);
    }
}
