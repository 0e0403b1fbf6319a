//! Export of (filtered) events as JSON lines or CSV, streamed row by row from one read-only
//! snapshot.
//!
//! CSV follows RFC 4180 (a field holding a comma, quote, CR or LF, or leading/trailing
//! spaces is quoted, quotes doubled; lines end CRLF). Because exports are opened in
//! spreadsheets and some fields come from callers (request ids, identities), a text field
//! that starts with `=`, `+`, `-`, `@`, TAB or CR gets a leading `'` so it is never run as a
//! formula (OWASP "CSV injection"). JSON lines carry the values unchanged; the database
//! remains the verifiable original either way.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use super::db::open_reader;
use super::event_json::event_json;
use super::query::{AuditFilter, scan};
use super::record::AuditEvent;
use super::{AuditError, format_time_ms};
use crate::crypto::secret::hex;

/// The export formats.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

impl FromStr for ExportFormat {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(ExportFormat::Jsonl),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(AuditError::Malformed {
                what: "export format",
                reason: format!("{other:?} is not one of jsonl, csv"),
            }),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        })
    }
}

const CSV_HEADER: &str = "sequence,time,time_ms,caller,caller_serial,action,tenant_id,key_version,outcome,\
     upstream_status,token_fingerprint,detail,request_id,peer,prev_hash,hash";

/// Writes every event matching `filter`, in sequence order, to `out`. Returns the count.
pub fn export(
    db_path: &Path,
    filter: &AuditFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let conn = open_reader(db_path)?;
    // One snapshot, so a long export is consistent while a server keeps appending.
    let tx = conn.unchecked_transaction()?;
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    let n = match format {
        ExportFormat::Jsonl => scan(&tx, filter, |e| {
            w.write_all(event_json(&e).as_bytes())?;
            w.write_all(b"\n")?;
            Ok(())
        })?,
        ExportFormat::Csv => {
            w.write_all(CSV_HEADER.as_bytes())?;
            w.write_all(b"\r\n")?;
            let mut line = String::with_capacity(512);
            scan(&tx, filter, |e| {
                line.clear();
                csv_line(&mut line, &e);
                w.write_all(line.as_bytes())?;
                Ok(())
            })?
        }
    };
    w.flush()?;
    Ok(n)
}

fn csv_line(line: &mut String, e: &AuditEvent) {
    let r = &e.record;
    let opt_num = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let fields: [&str; 16] = [
        &e.sequence.to_string(),
        &format_time_ms(e.time_ms),
        &e.time_ms.to_string(),
        &r.caller,
        &r.caller_serial,
        r.action.as_str(),
        r.tenant_id.as_deref().unwrap_or(""),
        &opt_num(r.key_version),
        r.outcome.as_str(),
        &opt_num(r.upstream_status.map(i64::from)),
        r.token_fingerprint.as_deref().unwrap_or(""),
        &r.detail,
        &r.request_id,
        &r.peer,
        &hex(&e.prev_hash),
        &hex(&e.hash),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        // Numeric columns (0, 2, 7, 9) are ours and never start with a formula character.
        push_csv_field(line, f, !matches!(i, 0 | 2 | 7 | 9));
    }
    line.push_str("\r\n");
}

fn push_csv_field(line: &mut String, value: &str, text: bool) {
    let formula = text && value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || value.contains([',', '"', '\r', '\n']) || value.starts_with(' ') || value.ends_with(' ');
    if quote {
        line.push('"');
    }
    if formula {
        line.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            line.push('"');
        }
        line.push(c);
    }
    if quote {
        line.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: &str) -> String {
        let mut s = String::new();
        push_csv_field(&mut s, v, true);
        s
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field(" padded"), "\" padded\"");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(field(""), "");
    }

    #[test]
    fn export_format_names() {
        assert_eq!("csv".parse::<ExportFormat>().unwrap(), ExportFormat::Csv);
        assert_eq!(ExportFormat::Jsonl.to_string(), "jsonl");
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}
