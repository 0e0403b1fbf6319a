//! Every schema migration of the vault database, for both backends, in one place.
//!
//! SQLite counts its migrations in `PRAGMA user_version`; PostgreSQL records the same
//! number in `pogo_schema`. PostgreSQL starts at version 6 with one baseline (the schema
//! SQLite reaches after its first six steps); every later change adds a step to both lists
//! with the same number. The lists must end at the same version (checked below), and
//! `tests/postgres_store.rs` checks that both schemas have the same tables and columns.

/// A named SQLite migration, compiled in; its position in the list is its version - 1.
pub type Migration = (&'static str, &'static str);

/// A PostgreSQL migration: the version it brings the database to.
#[derive(Debug, Clone, Copy)]
pub struct PostgresMigration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The vault database's migrations on SQLite, applied in order.
pub const SQLITE: &[Migration] = &[
    ("0001_initial", include_str!("../../migrations/0001_initial.sql")),
    ("0002_onboarding", include_str!("../../migrations/0002_onboarding.sql")),
    ("0003_onboarding_trust", include_str!("../../migrations/0003_onboarding_trust.sql")),
    ("0004_subscription_key_slots", include_str!("../../migrations/0004_subscription_key_slots.sql")),
    ("0005_hsm_master_key", include_str!("../../migrations/0005_hsm_master_key.sql")),
    ("0006_audit_sink_cursors", include_str!("../../migrations/0006_audit_sink_cursors.sql")),
];

/// The vault database's migrations on PostgreSQL, in order of version.
pub const POSTGRES: &[PostgresMigration] = &[PostgresMigration {
    version: 6,
    name: "0006_baseline",
    sql: include_str!("../../migrations/postgres/0006_baseline.sql"),
}];

/// What replicas on one PostgreSQL database share (component `shared`: the upstream budget
/// and the sealed token cache, `store::shared`). PostgreSQL only; versions count from 1.
pub const SHARED_POSTGRES: &[PostgresMigration] = &[PostgresMigration {
    version: 1,
    name: "0001_shared",
    sql: include_str!("../../migrations/postgres/shared/0001_shared.sql"),
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_end_at_the_same_version_in_order() {
        assert_eq!(POSTGRES.last().map(|m| m.version), Some(SQLITE.len() as i64));
        assert!(POSTGRES.windows(2).all(|w| w[0].version < w[1].version));
        assert!(POSTGRES.iter().all(|m| m.name.starts_with(&format!("{:04}_", m.version))));
        for (i, (name, _)) in SQLITE.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
        }
    }
}
