//! RFC 3339 times on the wire (`/health`, state files): whole seconds, UTC.

use std::time::{Duration, SystemTime};

pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An RFC 3339 time as the engine or berth writes it; the engine's zero time
/// ("0001-01-01…") and anything unreadable are `None`.
pub fn parse_time(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// A whole-second duration, e.g. "1day 2h 3m 4s" (at least "1s").
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// `serde(with = "rfc3339")` for `SystemTime`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fmt_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}")))
    }
}

/// `serde(with = "rfc3339_opt")` for `Option<SystemTime>` (JSON null when absent).
pub mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.and_then(|s| super::parse_time(&s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(fmt_time(t), "2027-01-15T08:00:00Z");
        assert_eq!(parse_time(&fmt_time(t)), Some(t));
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(human(Duration::from_millis(10)), "1s");
        assert_eq!(human(Duration::from_secs(3661)), "1h 1m 1s");
    }
}
