//! The audit log's one text form of a time: RFC 3339 in UTC at millisecond precision, as
//! records, checkpoints, exports and witness messages show it. A leaf.

/// Unix milliseconds as RFC 3339 in UTC (`2024-05-01T12:00:00.123Z`).
pub(crate) fn format_time_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// RFC 3339 to Unix milliseconds (sub-millisecond digits dropped).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_at_millisecond_precision() {
        for ms in [0, 1_700_000_000_123, 1_700_000_000_000, -1] {
            assert_eq!(parse_time(&format_time_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(format_time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time("2023-11-14T23:13:20.123+01:00"), Some(1_700_000_000_123));
        assert_eq!(parse_time("yesterday"), None);
    }
}
