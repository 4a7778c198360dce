//! Durations as written in policy files: `250ms`, `2s`, `1m`, `1h`, `1m30s`.
//!
//! A duration is one or more `<integer><unit>` parts with units `h`, `m`, `s`, `ms`, each unit
//! at most once and from largest to smallest. [`format`] writes the same form back.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// Why a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration \"{text}\": {reason}")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
    /// What is wrong with it, with an example of the right form.
    pub reason: &'static str,
}

const HINT: &str = "use a number followed by ms, s, m or h, e.g. 250ms or 2s";
const ORDER: &str = "units must go from largest to smallest, each at most once, e.g. 1m30s";
const TOO_LARGE: &str = "too large";

/// The JSON schema of a duration field: a string (the parser below checks its form, so that a
/// custom resource gets the same message as a file; the field's own doc becomes its description).
#[cfg(feature = "schema")]
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string"})
}

/// Parses a policy duration.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError { text: text.to_owned(), reason };
    let mut rest = text;
    if rest.is_empty() {
        return Err(error(HINT));
    }
    let mut total = Duration::ZERO;
    // Rank of the last unit seen (h = 0 … ms = 3); units must strictly increase in rank.
    let mut last_rank: Option<u8> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error(HINT));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| error(TOO_LARGE))?;
        rest = &rest[digits..];
        let (rank, unit_len, part) = if rest.starts_with("ms") {
            (3, 2, Some(Duration::from_millis(number)))
        } else if rest.starts_with('s') {
            (2, 1, Some(Duration::from_secs(number)))
        } else if rest.starts_with('m') {
            (1, 1, number.checked_mul(60).map(Duration::from_secs))
        } else if rest.starts_with('h') {
            (0, 1, number.checked_mul(3600).map(Duration::from_secs))
        } else {
            return Err(error(HINT));
        };
        if last_rank.is_some_and(|last| last >= rank) {
            return Err(error(ORDER));
        }
        last_rank = Some(rank);
        rest = &rest[unit_len..];
        total = part.and_then(|part| total.checked_add(part)).ok_or_else(|| error(TOO_LARGE))?;
    }
    Ok(total)
}

/// Formats a duration in the policy form (`1m30s`, `250ms`, `0s`). Sub-millisecond parts are
/// dropped, as the policy form cannot express them.
pub fn format(duration: Duration) -> String {
    let millis_total = duration.as_millis();
    if millis_total == 0 {
        return "0s".to_owned();
    }
    let hours = millis_total / 3_600_000;
    let minutes = millis_total / 60_000 % 60;
    let seconds = millis_total / 1000 % 60;
    let millis = millis_total % 1000;
    let mut out = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
        if value != 0 {
            out.push_str(&value.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// Serde `deserialize_with` for a required duration field.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)
}

/// Serde `deserialize_with` for an optional duration field (use with `#[serde(default)]`).
pub fn deserialize_option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => parse(&text).map(Some).map_err(D::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_text_with_a_hint() {
        for text in ["", "5", "5 secs", "s", "1.5s", "-1s", "1d", "2S"] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.text, text);
            assert_eq!(err.reason, HINT, "{text}");
        }
        assert_eq!(
            parse("5 secs").unwrap_err().to_string(),
            "invalid duration \"5 secs\": use a number followed by ms, s, m or h, e.g. 250ms or 2s"
        );
    }

    #[test]
    fn rejects_units_out_of_order_or_repeated() {
        assert_eq!(parse("30s1m").unwrap_err().reason, ORDER);
        assert_eq!(parse("1s1s").unwrap_err().reason, ORDER);
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse("99999999999999999999s").unwrap_err().reason, TOO_LARGE);
        assert_eq!(parse("18446744073709551615h").unwrap_err().reason, TOO_LARGE);
    }

    #[test]
    fn formats_back_to_the_parsed_value() {
        for text in ["250ms", "2s", "1m", "1h", "1m30s", "1h2m3s4ms", "0s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::from_micros(1)), "0s");
    }
}
