//! The one way the repositories talk SQL, whichever backend holds the vault: statements
//! are written once, with SQLite's numbered parameters (`?1`, `?2`, ...), in the SQL both
//! SQLite and PostgreSQL accept (`ON CONFLICT ... DO UPDATE`, `CASE`, `COALESCE`, no
//! `rowid`, no two-argument `MAX`); the PostgreSQL side rewrites `?N` to `$N`.
//!
//! Values are four kinds (integer, text, bytes, null): every column either backend holds
//! maps to one of them (SQLite `INTEGER`/`TEXT`/`BLOB`, PostgreSQL `BIGINT`/`TEXT`/`BYTEA`;
//! `tests/postgres_store.rs` checks the two schemas match). Rows are read whole, so a
//! repository decodes them the same way on both.

use super::error::StoreError;

/// Which engine holds the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A parameter or a column value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

// Sealed blobs pass through here: a value never prints its content.
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Int(_) => f.write_str("Int(..)"),
            Value::Text(t) => write!(f, "Text({} chars)", t.chars().count()),
            Value::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Bytes(v)
    }
}
impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Value {
        Value::Bytes(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.as_deref().into()
    }
}

/// `args![a, b, ...]`: a statement's parameters, `?1` first.
#[macro_export]
macro_rules! sql_args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub use crate::sql_args as args;

/// A column value read as a Rust type.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<u32> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a missing column or another kind of value is corrupt data.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.0.get(i).ok_or_else(|| StoreError::Corrupt(format!("column {i} is missing")))?;
        T::from_value(v)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} holds {v:?}, not a {}", std::any::type_name::<T>())))
    }
}

/// A connection or an open transaction on either backend.
pub trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Which engine this is.
    fn backend(&self) -> Backend;

    /// The SQLite connection underneath, for a hot path written against `rusqlite` itself
    /// (the audit writer's inserts); `None` on PostgreSQL.
    fn sqlite(&self) -> Option<&rusqlite::Connection> {
        None
    }

    /// The origin this connection's change notifications carry (`store::changes`): on
    /// PostgreSQL, an id of the connection (random, per process and connection); `None` on
    /// SQLite.
    fn origin(&self) -> Option<&str> {
        None
    }

    /// Runs a query; its first row, if any.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
}

/// `sql` with SQLite's `?N` parameters written as PostgreSQL's `$N`. A `?` not followed by
/// a digit is left alone (none of our statements has one; PostgreSQL would refuse it).
pub fn to_postgres_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollar_parameters() {
        assert_eq!(
            to_postgres_params("SELECT a FROM t WHERE b = ?1 AND c = ?12 OR d IS ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 OR d IS ?"
        );
    }

    #[test]
    fn a_row_reads_kinds_and_refuses_others_without_printing_bytes() {
        let row = Row(vec![Value::Int(7), Value::Null, Value::Bytes(b"sealed".to_vec()), Value::Text("x".into())]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert_eq!(row.get::<Vec<u8>>(2).unwrap(), b"sealed");
        assert_eq!(row.get::<u32>(0).unwrap(), 7);
        let err = row.get::<String>(2).unwrap_err().to_string();
        assert!(err.contains("Bytes(6 bytes)") && !err.contains("sealed"), "{err}");
        assert!(row.get::<i64>(1).is_err(), "a null is not an integer");
        assert!(row.get::<i64>(9).is_err());
    }
}
