//! What a client names its requests by (station, part, request, device, session) and the times it
//! sends travel into every prediction record, key its Kafka messages and become Postgres rows.
//! They are checked where they arrive: a NUL byte, a megabyte-long key or a year outside what a
//! protobuf `Timestamp` allows gets INVALID_ARGUMENT here instead of a record that the broker,
//! the spool or the database refuses later, with everything queued behind it waiting.

use prost_types::Timestamp;
use tonic::Status;
use vigil_proto::TIMESTAMP_SECONDS;

/// The longest identifier taken, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// INVALID_ARGUMENT unless `value` (the request's `field`) is at most [`MAX_ID_BYTES`] long and
/// free of control characters; empty is allowed.
pub fn check_id(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; the limit is {MAX_ID_BYTES}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{field} holds the control character {:?}; send printable text",
            c
        )));
    }
    Ok(())
}

/// INVALID_ARGUMENT unless `time` (the request's `field`) is absent or a valid protobuf
/// `Timestamp` (years 1 to 9999, nanos 0 to 999,999,999).
pub fn check_time(field: &str, time: &Option<Timestamp>) -> Result<(), Status> {
    match time {
        Some(t) if !TIMESTAMP_SECONDS.contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) => {
            Err(Status::invalid_argument(format!(
                "{field} ({} s, {} ns) is not a valid timestamp: years 1 to 9999, nanos 0 to 999999999",
                t.seconds, t.nanos
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_up_to_the_limit_pass_and_longer_ones_are_refused() {
        assert!(check_id("station_id", "").is_ok());
        assert!(check_id("station_id", "line-3 / camera 2 · ü").is_ok());
        assert!(check_id("station_id", &"x".repeat(MAX_ID_BYTES)).is_ok());
        let long = check_id("station_id", &"x".repeat(MAX_ID_BYTES + 1)).unwrap_err();
        assert_eq!(long.code(), tonic::Code::InvalidArgument);
        assert!(long.message().starts_with("station_id is 257 bytes long"), "{}", long.message());
        // Bytes, not characters: 129 two-byte characters are 258 bytes.
        assert!(check_id("part_id", &"é".repeat(129)).is_err());
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["a\0b", "line\n3", "\u{7f}", "tab\there", "\u{85}"] {
            let e = check_id("part_id", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains("part_id holds the control character"), "{}", e.message());
        }
    }

    #[test]
    fn timestamps_must_be_what_protobuf_allows() {
        let at = |seconds, nanos| Some(Timestamp { seconds, nanos });
        assert!(check_time("capture_time", &None).is_ok());
        assert!(check_time("capture_time", &at(1_800_000_000, 999_999_999)).is_ok());
        assert!(check_time("capture_time", &at(-62_135_596_800, 0)).is_ok(), "0001-01-01");
        assert!(check_time("capture_time", &at(253_402_300_799, 0)).is_ok(), "9999-12-31T23:59:59");
        for (seconds, nanos) in
            [(-62_135_596_801, 0), (253_402_300_800, 0), (-300_000_000_000, 0), (0, -1), (0, 1_000_000_000)]
        {
            let e = check_time("capture_time", &at(seconds, nanos)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("capture_time ("), "{}", e.message());
        }
    }
}
