//! How far each audit sink has delivered the audit log (`audit_sink_cursors`): two
//! sequences per sink name, the newest event and the newest checkpoint delivered.
//!
//! Delivery progress, not a record of anything: a lost or older row makes a sink send
//! again from an earlier point, so what it delivers is late and repeated, never skipped.

use super::sql::{Sql, args};
use super::{StoreError, now_ms, query_one};

/// A sink's position: everything up to these sequences is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SinkCursor {
    pub event_sequence: i64,
    pub checkpoint_sequence: i64,
}

/// The stored position of sink `name`, if it has one.
pub fn load(db: &mut dyn Sql, name: &str) -> Result<Option<SinkCursor>, StoreError> {
    query_one(
        db,
        "SELECT event_sequence, checkpoint_sequence FROM audit_sink_cursors WHERE name = ?1",
        args![name],
        |r| Ok(SinkCursor { event_sequence: r.get(0)?, checkpoint_sequence: r.get(1)? }),
    )
}

/// Stores `cursor` for sink `name`. Never moves a stored position backwards: a position is
/// only ever saved after what it covers was delivered, so a smaller one is stale.
pub fn save(db: &mut dyn Sql, name: &str, cursor: SinkCursor) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO audit_sink_cursors AS c (name, event_sequence, checkpoint_sequence, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
             event_sequence = CASE WHEN c.event_sequence > excluded.event_sequence
                                   THEN c.event_sequence ELSE excluded.event_sequence END,
             checkpoint_sequence = CASE WHEN c.checkpoint_sequence > excluded.checkpoint_sequence
                                        THEN c.checkpoint_sequence ELSE excluded.checkpoint_sequence END,
             updated_at = excluded.updated_at",
        args![name, cursor.event_sequence.max(0), cursor.checkpoint_sequence.max(0), now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::store::Store::create(&dir.path().join("v.db")).unwrap();
        let c = store.db().unwrap();
        assert_eq!(load(c, "siem").unwrap(), None);
        let at = SinkCursor { event_sequence: 10, checkpoint_sequence: 8 };
        save(c, "siem", at).unwrap();
        assert_eq!(load(c, "siem").unwrap(), Some(at));
        save(c, "siem", SinkCursor { event_sequence: 4, checkpoint_sequence: 9 }).unwrap();
        assert_eq!(load(c, "siem").unwrap(), Some(SinkCursor { event_sequence: 10, checkpoint_sequence: 9 }));
        assert_eq!(load(c, "other").unwrap(), None);
    }
}
