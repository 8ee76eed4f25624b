//! Times and windows. Hours are UTC epoch hours (`div_euclid`), windows are
//! half-open `[from, to)` and are widened outwards to whole hours.

use chrono::{DateTime, SecondsFormat, Utc};
use hourcell_storage::keys::{MAX_HOUR, MIN_HOUR};

use crate::error::{QueryError, Result};

pub fn hour_floor(t: i64) -> i64 {
    t.div_euclid(3600)
}

pub fn hour_ceil(t: i64) -> i64 {
    -((-t).div_euclid(3600))
}

/// Parses RFC 3339 (`2026-11-01T08:00:00Z`, any offset) or integer unix
/// seconds.
pub fn parse_time(field: &'static str, s: &str) -> Result<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Ok(v);
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp())
        .map_err(|e| QueryError::invalid(field, s, format!("not RFC 3339 or unix seconds ({e})")))
}

pub fn format_time(t: i64) -> String {
    match DateTime::<Utc>::from_timestamp(t, 0) {
        Some(d) => d.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => t.to_string(),
    }
}

pub fn now() -> i64 {
    Utc::now().timestamp()
}

/// The longest window a query may span, in hours (about 400 days).
pub const MAX_WINDOW_HOURS: i64 = 24 * 400;

/// An effective window in whole hours: `[from_hour, to_hour)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_hour: i64,
    pub to_hour: i64,
    pub as_of: i64,
}

impl Window {
    /// Widens `[from, to)` to whole hours and caps it at `as_of` (the hour
    /// containing `as_of` is the last one seen), so that a query with a
    /// fixed `as_of` is reproducible.
    pub fn new(from: i64, to: i64, as_of: i64) -> Result<Self> {
        if to <= from {
            return Err(QueryError::invalid(
                "to",
                format_time(to),
                format!("must be after from ({})", format_time(from)),
            ));
        }
        let from_hour = hour_floor(from).max(MIN_HOUR);
        let to_hour = hour_ceil(to).min(hour_floor(as_of) + 1).min(MAX_HOUR);
        if to_hour - from_hour > MAX_WINDOW_HOURS {
            return Err(QueryError::invalid(
                "to",
                format_time(to),
                format!("window longer than {MAX_WINDOW_HOURS} hours"),
            ));
        }
        Ok(Self {
            from_hour,
            to_hour: to_hour.max(from_hour),
            as_of,
        })
    }

    pub fn hours(&self) -> impl Iterator<Item = i64> {
        self.from_hour..self.to_hour
    }

    pub fn from_secs(&self) -> i64 {
        self.from_hour * 3600
    }

    pub fn to_secs(&self) -> i64 {
        self.to_hour * 3600
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_use_euclidean_division() {
        assert_eq!(hour_floor(-1), -1);
        assert_eq!(hour_ceil(-1), 0);
        assert_eq!(hour_floor(3600), 1);
        assert_eq!(hour_ceil(3600), 1);
        assert_eq!(hour_ceil(3601), 2);
    }

    #[test]
    fn windows_widen_and_cap_at_as_of() {
        let w = Window::new(3599, 7201, 1_000_000).unwrap();
        assert_eq!((w.from_hour, w.to_hour), (0, 3));
        let w = Window::new(0, 100 * 3600, 10 * 3600 + 5).unwrap();
        assert_eq!(w.to_hour, 11);
        assert!(Window::new(10, 10, 100).is_err());
        let w = Window::new(100 * 3600, 200 * 3600, 0).unwrap();
        assert_eq!(w.hours().count(), 0);
    }

    #[test]
    fn parses_both_time_forms() {
        assert_eq!(parse_time("t", "1700000000").unwrap(), 1_700_000_000);
        assert_eq!(
            parse_time("t", "2026-11-01T08:00:00+08:00").unwrap(),
            1_793_491_200
        );
        let e = parse_time("from", "yesterday").unwrap_err().to_string();
        assert!(e.contains("from") && e.contains("yesterday"), "{e}");
        assert_eq!(format_time(1_793_491_200), "2026-11-01T00:00:00Z");
    }
}
