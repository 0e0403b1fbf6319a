//! Values to and from PostgreSQL: a [`Value`] as a parameter of whatever type the
//! statement's parameter has (an integer as `INT8`, `INT4`, `INT2` or `BOOL`; text; bytes),
//! and a row read whole into [`Row`] (`BIGINT`/`INT`/`SMALLINT`/`BOOLEAN` as integers,
//! `BYTEA` as bytes, every text type as text; any other type is refused).

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::error::StoreError;
use super::sql::{Row, Value};

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Text(t) if <&str as ToSql>::accepts(ty) => t.as_str().to_sql(ty, out),
            Value::Bytes(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            v => Err(format!("{v:?} for a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

pub(crate) fn read_row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let bad = |i: usize, e: tokio_postgres::Error| StoreError::Corrupt(format!("column {i}: {e}"));
    let mut values = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map_err(|e| bad(i, e))?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i).map_err(|e| bad(i, e))?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i).map_err(|e| bad(i, e))?.map(Value::Bytes)
        } else if <&str as tokio_postgres::types::FromSql>::accepts(ty) {
            r.try_get::<_, Option<String>>(i).map_err(|e| bad(i, e))?.map(Value::Text)
        } else {
            return Err(StoreError::Corrupt(format!("column {i} has type {ty}, which the store does not read")));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}
