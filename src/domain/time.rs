//! Time as the API shows it: UTC `YYYY-MM-DDTHH:MM:SS`, stored as milliseconds since the epoch.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Whole seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    since_epoch().as_secs() as i64
}

/// Read straight from the clock: `chrono::Utc::now()` builds a calendar date from it
/// (and `timestamp_millis` takes the date apart again), a cost paid several times per
/// delivery attempt. A clock set before 1970 reads as the epoch.
fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The API's timestamp format (the spec's `2025-10-10T12:34:56`, always UTC).
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// Parses an ISO 8601 date-time: RFC 3339 with an offset, or without one (taken as UTC),
/// with optional fractional seconds, or a bare date (midnight UTC).
pub fn parse_iso8601(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock read directly agrees with chrono's reading of it.
    #[test]
    fn now_agrees_with_chrono() {
        let before = Utc::now().timestamp_millis();
        let (ms, secs) = (now_ms(), now_secs());
        let after = Utc::now().timestamp_millis();
        assert!(before <= ms && ms <= after, "{before} <= {ms} <= {after}");
        assert!(before / 1000 <= secs && secs <= after / 1000);
    }

    #[test]
    fn parses_the_usual_spellings_to_utc() {
        let want = "2025-10-10T12:30:00";
        for s in [
            "2025-10-10T12:30:00",
            "2025-10-10T12:30:00Z",
            "2025-10-10T12:30:00.000Z",
            "2025-10-10T14:30:00+02:00",
            "2025-10-10 12:30:00",
            "2025-10-10T12:30",
        ] {
            let t = parse_iso8601(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(format_ms(t.timestamp_millis()), want, "{s}");
        }
        assert!(parse_iso8601("yesterday").is_none());
        assert!(parse_iso8601("2025-13-10T00:00:00Z").is_none());
    }
}
