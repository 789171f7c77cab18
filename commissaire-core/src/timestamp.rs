//! Timestamps as the original wrote them: UTC, `%Y-%m-%dT%H:%M:%S.%f`, always six
//! fractional digits and no zone suffix (e.g. `2017-06-28T14:03:11.123456`).

use time::{OffsetDateTime, PrimitiveDateTime, format_description::FormatItem, macros::format_description};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");

/// Formats a UTC instant in the original's format.
pub fn format(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    PrimitiveDateTime::new(utc.date(), utc.time())
        .format(FORMAT)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000000"))
}

/// The current time in the original's format.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// Parses a timestamp in the original's format as UTC.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(text, FORMAT).ok().map(PrimitiveDateTime::assume_utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_six_digits() {
        let text = "2017-06-28T14:03:11.123456";
        let parsed = parse(text).expect("parse");
        assert_eq!(format(parsed), text);
        let zero = parse("2017-06-28T14:03:11.000000").expect("parse");
        assert_eq!(format(zero), "2017-06-28T14:03:11.000000");
        assert!(parse("2017-06-28 14:03:11").is_none());
    }
}
