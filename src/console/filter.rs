//! What the auditor asks for: the filter of the event table, the tenant and caller views,
//! the charts and the exports, parsed from the page's query string ("parse, don't
//! validate"). A bad value is an error naming the field, shown above the form; nothing is
//! asked of the vault with it.
//!
//! Times are accepted as RFC 3339 (`2026-12-02T13:46:00Z`) or as a browser's
//! `datetime-local` value (`2026-12-02T13:46`, read as UTC: the console shows every time
//! in UTC, as the log stores it).

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::proto::v1 as pb;

/// Outcomes as the log writes them.
pub const OUTCOMES: &[&str] = &["ok", "denied", "error"];

/// A field of the query string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError { field, reason: reason.into() }
}

/// The event filter every view shares. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub caller: String,
    pub tenant: String,
    pub action: String,
    pub outcome: String,
}

/// Longest caller, tenant or action the form takes (a SPIFFE id is at most 2048 bytes).
const MAX_TEXT: usize = 2048;

/// Parses a time field: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` as UTC.
pub fn parse_time(field: &'static str, s: &str) -> Result<Option<OffsetDateTime>, FieldError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let parsed = OffsetDateTime::parse(s, &Rfc3339).or_else(|_| {
        let local = if s.len() == 16 { format!("{s}:00Z") } else { format!("{s}Z") };
        OffsetDateTime::parse(&local, &Rfc3339)
    });
    let t =
        parsed.map_err(|_| bad(field, "not a time like 2026-12-02T13:46:00Z (RFC 3339) or 2026-12-02T13:46 (UTC)"))?;
    // In UTC, and in years 1970 to 9998: every time the console shows or sends is then
    // representable (an offset can push 9999-12-31T23:59-23:59 past the last UTC year).
    match t.checked_to_offset(time::UtcOffset::UTC) {
        Some(utc) if (1970..=9998).contains(&utc.year()) => Ok(Some(utc)),
        _ => Err(bad(field, "out of range (years 1970 to 9998)")),
    }
}

fn text(field: &'static str, q: &BTreeMap<String, String>) -> Result<String, FieldError> {
    let v = q.get(field).map(|s| s.trim()).unwrap_or_default();
    if v.len() > MAX_TEXT {
        return Err(bad(field, format!("longer than {MAX_TEXT} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(field, "contains a control character"));
    }
    Ok(v.to_owned())
}

impl Filter {
    /// The filter of a query string (`since`, `until`, `caller`, `tenant`, `action`,
    /// `outcome`); other keys are left to the page.
    pub fn from_query(q: &BTreeMap<String, String>) -> Result<Filter, FieldError> {
        let since = parse_time("since", q.get("since").map_or("", String::as_str))?;
        let until = parse_time("until", q.get("until").map_or("", String::as_str))?;
        if let (Some(s), Some(u)) = (since, until)
            && u <= s
        {
            return Err(bad("until", "must be after since"));
        }
        let outcome = text("outcome", q)?;
        if !outcome.is_empty() && !OUTCOMES.contains(&outcome.as_str()) {
            return Err(bad("outcome", "use ok, denied or error"));
        }
        let action = text("action", q)?;
        if !action.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(bad("action", "an action is lower case letters and _ (e.g. token_minted)"));
        }
        Ok(Filter { since, until, caller: text("caller", q)?, tenant: text("tenant", q)?, action, outcome })
    }

    /// The `ListAuditEvents` request for one page of this filter.
    pub fn request(&self, page_size: u32, page_token: String) -> pb::ListAuditEventsRequest {
        pb::ListAuditEventsRequest {
            since: self.since.map(timestamp),
            until: self.until.map(timestamp),
            caller: self.caller.clone(),
            tenant_id: self.tenant.clone(),
            action: self.action.clone(),
            outcome: self.outcome.clone(),
            page_size,
            page_token,
        }
    }

    /// The filter as query-string pairs (empty fields left out), for links and exports.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(t) = self.since {
            v.push(("since", rfc3339(t)));
        }
        if let Some(t) = self.until {
            v.push(("until", rfc3339(t)));
        }
        for (k, s) in [("caller", &self.caller), ("tenant", &self.tenant), ("action", &self.action)] {
            if !s.is_empty() {
                v.push((k, s.clone()));
            }
        }
        if !self.outcome.is_empty() {
            v.push(("outcome", self.outcome.clone()));
        }
        v
    }

    /// `pairs` plus `extra`, percent-encoded (`a=b&c=d`, no leading `?`).
    pub fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            s.append_pair(k, &v);
        }
        for (k, v) in extra {
            s.append_pair(k, v);
        }
        s.finish()
    }
}

/// A time as the console shows it and as a filter link carries it (RFC 3339, UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.unix_timestamp().to_string())
}

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// A wire timestamp as a time (`None`: absent or out of range).
pub fn from_timestamp(t: &Option<prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let t = t.as_ref()?;
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// A query string as keys and values (the last of a repeated key wins).
pub fn query_map(raw: Option<&str>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_filter_round_trips_through_its_query_string() {
        let f = Filter::from_query(&q(&[
            ("since", "2026-12-02T13:46"),
            ("until", "2026-12-02T15:00:00+01:00"),
            ("caller", "spiffe://test.pogo/service/a b&c"),
            ("tenant", "acme"),
            ("action", "token_minted"),
            ("outcome", "ok"),
        ]))
        .unwrap();
        assert_eq!(rfc3339(f.since.unwrap()), "2026-12-02T13:46:00Z");
        assert_eq!(rfc3339(f.until.unwrap()), "2026-12-02T14:00:00Z");
        let again = Filter::from_query(&query_map(Some(&f.query(&[])))).unwrap();
        assert_eq!(again, f);
        let r = f.request(50, String::new());
        assert_eq!(
            (r.caller.as_str(), r.tenant_id.as_str(), r.page_size),
            ("spiffe://test.pogo/service/a b&c", "acme", 50)
        );
        assert_eq!(r.since.unwrap().seconds, f.since.unwrap().unix_timestamp());
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |pairs: &[(&str, &str)]| Filter::from_query(&q(pairs)).unwrap_err().field;
        assert_eq!(field(&[("since", "yesterday")]), "since");
        assert_eq!(field(&[("until", "2026-13-01T00:00")]), "until");
        assert_eq!(
            field(&[("since", "9999-12-31T23:59:59-23:59")]),
            "since",
            "past the last UTC year: refused, no panic"
        );
        assert_eq!(field(&[("since", "1969-12-31T23:59:59Z")]), "since");
        assert_eq!(field(&[("since", "2026-12-02T10:00"), ("until", "2026-12-02T09:00")]), "until");
        assert_eq!(field(&[("outcome", "maybe")]), "outcome");
        assert_eq!(field(&[("action", "Token-Minted")]), "action");
        assert_eq!(field(&[("caller", "a\u{7}b")]), "caller");
        assert_eq!(field(&[("tenant", &"x".repeat(MAX_TEXT + 1))]), "tenant");
        assert_eq!(Filter::from_query(&q(&[])).unwrap(), Filter::default());
    }
}
