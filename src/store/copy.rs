//! Copying a vault database from one store to another, row for row, whatever the two
//! backends: SQLite to PostgreSQL (moving over) and back (a drill, an export).
//!
//! Every table is copied whole: sealed blobs byte for byte (the store never opens them;
//! their associated data names purpose, owner and version, not the backend, so they open
//! wherever they land), times and versions as they were. The target must hold an empty
//! vault (migrated, no rows); the copy is one transaction on it, so a failure leaves it
//! empty. Before it commits, both sides are read again and compared: the same number of
//! rows and the same digest per table (SHA-256 over every value, in key order), or
//! nothing is committed.

use sha2::{Digest, Sha256};

use super::sql::{Row, Sql, Value};
use super::{Store, StoreError};

/// A table to copy: its columns, and the key it is read in order of.
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static str,
    pub key: &'static [&'static str],
}

/// Every table of the vault database (schema version 6), parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "vault_meta",
        columns: "id, kek_source, kek_id, key_check, argon2_salt, argon2_m_kib, argon2_t, argon2_p, created_at, \
                  kek_rotated_at",
        key: &["id"],
    },
    Table { name: "vault_keys", columns: "purpose, key_id, public_key, created_at", key: &["purpose"] },
    Table {
        name: "sealed_secrets",
        columns: "purpose, owner, version, wrapped_dek, ciphertext, kek_id, created_at",
        key: &["purpose", "owner", "version"],
    },
    Table {
        name: "integrations",
        columns: "environment, application_key, base_url, subscription_key_version, subscription_key_hint, \
                  created_at, updated_at, secondary_key_version, secondary_key_hint, active_slot",
        key: &["environment"],
    },
    Table {
        name: "tenants",
        columns: "tenant_id, environment, display_name, organization_number, go_client_id, labels, status, \
                  key_version, key_hint, key_fingerprint, created_at, updated_at, last_token_at",
        key: &["tenant_id"],
    },
    Table {
        name: "verified_organization_numbers",
        columns: "tenant_id, environment, organization_number, verified_at",
        key: &["tenant_id"],
    },
    Table {
        name: "onboarding_sessions",
        columns: "onboarding_id, environment, redirect_url, organization_number, tenant_id_prefix, caller, \
                  created_at, expires_at, status, go_status, completed_at, tenants, subject_hash",
        key: &["onboarding_id"],
    },
    Table {
        name: "audit_sink_cursors",
        columns: "name, event_sequence, checkpoint_sequence, updated_at",
        key: &["name"],
    },
];

/// Rows read per query.
const PAGE: usize = 1000;

/// What a copy moved, per table: rows and their digest (the same on both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<TableCopy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: &'static str,
    pub rows: usize,
    /// SHA-256 over every value of every row, in key order, hex.
    pub digest: String,
}

impl CopyReport {
    pub fn rows(&self, table: &str) -> usize {
        self.tables.iter().find(|t| t.table == table).map_or(0, |t| t.rows)
    }
}

/// Copies every row of `from` into `to`, which must be an empty vault at the same schema
/// version. The source is read in one snapshot (a write on it meanwhile is either wholly in
/// the copy or not at all); the target is written in one transaction, checked empty and
/// compared with the source inside it, and committed only if every table matches, so a
/// failed copy leaves the target as it was.
pub fn copy_vault(from: &mut Store, to: &mut Store) -> Result<CopyReport, StoreError> {
    copy_vault_and(from, to, |_, _| Ok::<(), StoreError>(())).map(|(r, ())| r)
}

/// [`copy_vault`], plus `also` run in the target's transaction before it commits (with the
/// target's name): more tables to copy into the same database (the audit log, when moving
/// over), so both land, or neither.
pub fn copy_vault_and<T, E: From<StoreError>>(
    from: &mut Store,
    to: &mut Store,
    also: impl FnOnce(&mut dyn Sql, &str) -> Result<T, E>,
) -> Result<(CopyReport, T), E> {
    let (v_from, v_to) = (from.schema_version()?, to.schema_version()?);
    let (source, target) = (from.describe(), to.describe());
    let this = super::supported_schema_version();
    if v_from != this || v_to != this {
        return Err(StoreError::Corrupt(format!(
            "a copy needs both databases at schema version {this} (the tables it knows): {source} has {v_from}, \
             {target} has {v_to}"
        ))
        .into());
    }
    let mut src = from.snapshot()?;
    let mut tx = to.write_tx()?;
    let report = copy_tables(&mut src, &mut tx, TABLES, &source, &target)?;
    let more = also(&mut tx, &target)?;
    tx.commit()?;
    Ok((report, more))
}

/// Copies `tables` from `src` into `tx` (the caller's transaction, committed by the caller
/// only on `Ok`): refuses a target where any of them holds a row, then copies each in key
/// order, then compares rows and digests on both sides. `source` and `target` name the two
/// for messages.
pub(crate) fn copy_tables(
    src: &mut dyn Sql,
    tx: &mut dyn Sql,
    tables: &[Table],
    source: &str,
    target: &str,
) -> Result<CopyReport, StoreError> {
    for t in tables {
        if count(tx, t)? > 0 {
            return Err(StoreError::NotEmpty { target: target.to_owned(), table: t.name });
        }
    }
    for t in tables {
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            t.name,
            t.columns,
            (1..=t.columns.split(',').count()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        );
        for_each_page(src, t, |rows| {
            for r in rows {
                tx.execute(&insert, &r.0)?;
            }
            Ok(())
        })?;
    }
    let mut report = Vec::with_capacity(tables.len());
    for t in tables {
        let a = digest(src, t)?;
        let b = digest(tx, t)?;
        if a != b {
            return Err(StoreError::Corrupt(format!(
                "table {} would differ after the copy ({} rows in {source}, {} in {target}); nothing was written",
                t.name, a.rows, b.rows
            )));
        }
        report.push(a);
    }
    Ok(CopyReport { tables: report })
}

/// Every table's rows and digest, read in key order (what [`copy_vault`] compares).
pub fn digest_vault(store: &mut Store) -> Result<CopyReport, StoreError> {
    digest_tables(store.db()?, TABLES)
}

/// Every one of `tables`' rows and digest, read in key order.
pub(crate) fn digest_tables(db: &mut dyn Sql, tables: &[Table]) -> Result<CopyReport, StoreError> {
    let mut report = Vec::with_capacity(tables.len());
    for t in tables {
        report.push(digest(db, t)?);
    }
    Ok(CopyReport { tables: report })
}

fn count(db: &mut dyn Sql, t: &Table) -> Result<i64, StoreError> {
    let row = db.query_opt(&format!("SELECT COUNT(*) FROM {}", t.name), &[])?;
    row.map_or(Ok(0), |r| r.get(0))
}

/// Calls `f` with the rows of `t` in key order, [`PAGE`] at a time (keyset paging: each page
/// starts after the last key of the one before, so a large table is read in linear time).
fn for_each_page(
    db: &mut dyn Sql,
    t: &Table,
    mut f: impl FnMut(&[Row]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let keys = t.key.join(", ");
    let key_at: Vec<usize> =
        t.key.iter().map(|k| t.columns.split(',').position(|c| c.trim() == *k).unwrap_or(0)).collect();
    let first = format!("SELECT {} FROM {} ORDER BY {keys} LIMIT {PAGE}", t.columns, t.name);
    let marks = (1..=t.key.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let next = format!("SELECT {} FROM {} WHERE ({keys}) > ({marks}) ORDER BY {keys} LIMIT {PAGE}", t.columns, t.name);
    let mut rows = db.query(&first, &[])?;
    while !rows.is_empty() {
        f(&rows)?;
        if rows.len() < PAGE {
            break;
        }
        let last = rows.last().map(|r| key_at.iter().map(|i| r.0[*i].clone()).collect::<Vec<Value>>());
        rows = db.query(&next, &last.unwrap_or_default())?;
    }
    Ok(())
}

fn digest(db: &mut dyn Sql, t: &Table) -> Result<TableCopy, StoreError> {
    let mut h = Sha256::new();
    let mut n = 0usize;
    for_each_page(db, t, |rows| {
        for r in rows {
            n += 1;
            for v in &r.0 {
                match v {
                    Value::Null => h.update([0u8]),
                    Value::Int(i) => {
                        h.update([1u8]);
                        h.update(i.to_be_bytes());
                    }
                    Value::Text(s) => {
                        h.update([2u8]);
                        h.update((s.len() as u64).to_be_bytes());
                        h.update(s.as_bytes());
                    }
                    Value::Bytes(b) => {
                        h.update([3u8]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(b);
                    }
                }
            }
        }
        Ok(())
    })?;
    let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(TableCopy { table: t.name, rows: n, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_list_names_every_column_of_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("v.db")).unwrap();
        let conn = store.sqlite().unwrap();
        let mut names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut listed: Vec<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
        names.sort();
        listed.sort();
        assert_eq!(names, listed, "a table the copy would leave behind");
        for t in TABLES {
            let cols: Vec<String> = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{}')", t.name))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let listed: Vec<String> = t.columns.split(',').map(|c| c.trim().to_owned()).collect();
            assert_eq!(cols, listed, "columns of {}", t.name);
            assert!(t.key.iter().all(|k| listed.contains(&(*k).to_owned())));
        }
    }
}
