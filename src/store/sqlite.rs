//! The SQLite side of [`Sql`]: a connection or an open transaction, statements prepared
//! once per connection (`prepare_cached`).

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction, params_from_iter};

use super::error::StoreError;
use super::sql::{Backend, Row, Sql, Value};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(i) => ToSqlOutput::from(*i),
            Value::Text(t) => ToSqlOutput::from(t.as_str()),
            Value::Bytes(b) => ToSqlOutput::from(b.as_slice()),
        })
    }
}

/// A constraint a statement broke (a unique key, a `CHECK`) is [`StoreError::Constraint`];
/// everything else stays SQLite's own error.
fn failed(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Constraint(msg.unwrap_or_else(|| f.to_string()))
        }
        e => StoreError::Sqlite(e),
    }
}

fn execute(conn: &Connection, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
    conn.prepare_cached(sql)?.execute(params_from_iter(args.iter())).map_err(failed)
}

fn query(conn: &Connection, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(args.iter())).map_err(failed)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(t) => Value::Text(
                    String::from_utf8(t.to_vec())
                        .map_err(|_| StoreError::Corrupt(format!("column {i} is not UTF-8")))?,
                ),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                ValueRef::Real(_) => return Err(StoreError::Corrupt(format!("column {i} holds a real number"))),
            });
        }
        out.push(Row(values));
    }
    Ok(out)
}

impl Sql for Connection {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        execute(self, sql, args)
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        query(self, sql, args)
    }
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn sqlite(&self) -> Option<&Connection> {
        Some(self)
    }
}

impl Sql for Transaction<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        execute(self, sql, args)
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        query(self, sql, args)
    }
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn sqlite(&self) -> Option<&Connection> {
        Some(self)
    }
}

/// A shared connection (rusqlite needs no `&mut` to run statements): lets a reader holding
/// `&Connection`, or a transaction seen through `Deref`, pass `&mut &*conn` as `&mut dyn Sql`.
impl Sql for &Connection {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        execute(self, sql, args)
    }
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        query(self, sql, args)
    }
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn sqlite(&self) -> Option<&Connection> {
        Some(self)
    }
}
