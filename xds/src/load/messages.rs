//! serde's error messages in the policy's words: no Rust type names, field names as written in
//! YAML, and a "did you mean" for a misspelt field or value.

/// What a serde error says, once parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// `unknown field \`x\`, expected one of …`: the path ends at the unknown key.
    UnknownField { expected: Vec<String> },
    /// `missing field \`x\``: the path is the mapping that lacks it.
    MissingField { field: String },
    /// `unknown variant \`x\`, expected one of …`.
    UnknownValue { value: String, expected: Vec<String> },
    /// Anything else (wrong type, out of range, our own messages).
    Other,
}

/// Parses serde's message.
pub(crate) fn classify(message: &str) -> Problem {
    if let Some(rest) = message.strip_prefix("missing field `") {
        return Problem::MissingField { field: rest.trim_end_matches('`').to_owned() };
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", expected ").map(|(_, e)| names(e)).unwrap_or_default();
        return Problem::UnknownField { expected };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, expected ")
    {
        return Problem::UnknownValue { value: value.to_owned(), expected: names(expected) };
    }
    Problem::Other
}

/// serde's "`a`", "`a` or `b`", "one of `a`, `b`", "there are no fields" → [a, b].
fn names(expected: &str) -> Vec<String> {
    if expected == "there are no fields" || expected == "there are no variants" {
        return Vec::new();
    }
    expected
        .trim_start_matches("one of ")
        .replace(" or ", ", ")
        .split(", ")
        .map(|name| name.trim_matches('`').to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The message shown for a problem at a field whose last key is `key`.
pub(crate) fn readable(problem: &Problem, key: Option<&str>, message: &str) -> String {
    match problem {
        Problem::MissingField { .. } => "required field is missing".to_owned(),
        Problem::UnknownField { expected } => {
            let mut out = "unknown field".to_owned();
            if let Some(best) = key.and_then(|key| did_you_mean(key, expected)) {
                out.push_str(&format!("; did you mean `{best}`?"));
            }
            if expected.is_empty() {
                out.push_str(" (this mapping takes no fields)");
            } else {
                out.push_str(&format!(" (expected one of {})", expected.join(", ")));
            }
            out
        }
        Problem::UnknownValue { value, expected } => {
            let mut out = format!("unknown value \"{value}\", expected one of {}", expected.join(", "));
            if let Some(best) = did_you_mean(value, expected) {
                out.push_str(&format!("; did you mean \"{best}\"?"));
            }
            out
        }
        Problem::Other => without_rust_types(message),
    }
}

/// The allowed name closest to `given`, when it is close enough to be a slip: compared without
/// case, `-` and `_` (so `connect_timeout` finds `connectTimeout`), at most one edit for short
/// names and two for longer ones (a transposition counts as one); else the one allowed name that
/// `given` begins (`sampling` → `samplingPercent`).
pub(crate) fn did_you_mean<'a>(given: &str, allowed: &'a [String]) -> Option<&'a str> {
    let normal = |s: &str| s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_lowercase();
    let given_normal = normal(given);
    let length = given_normal.chars().count();
    let limit = if length <= 4 { 1 } else { 2 };
    let closest = allowed
        .iter()
        .map(|name| (strsim::damerau_levenshtein(&given_normal, &normal(name)), name))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name.as_str());
    if closest.is_some() || length < 4 {
        return closest;
    }
    let mut longer = allowed.iter().filter(|name| normal(name).starts_with(&given_normal));
    match (longer.next(), longer.next()) {
        (Some(only), None) => Some(only.as_str()),
        _ => None,
    }
}

/// `invalid type: string "x", expected u32` → `expected a whole number ≥ 0, got "x"`.
fn without_rust_types(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, got {}", expected_text(expected), got_text(got));
        }
    }
    message.to_owned()
}

/// serde's `expected` part (a Rust type or a description) in plain words.
fn expected_text(expected: &str) -> String {
    let plain = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" | "u64" | "u128" | "usize" => "a whole number ≥ 0",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" | "string" | "char" | "a character" => "a string",
        "a sequence" => "a list",
        "a map" => "a mapping",
        "IP address" => "an IP address",
        "socket address" => "an IP:port address",
        "unit" => "nothing",
        _ if expected.starts_with("struct ") => "a mapping",
        _ if expected.starts_with("enum ") || expected == "variant identifier" => "one of the allowed values",
        other => other,
    };
    plain.to_owned()
}

/// serde's `Unexpected` display (`string "x"`, ``integer `5` ``, `map`) as the YAML value.
fn got_text(got: &str) -> String {
    if let Some(text) = got.strip_prefix("string ") {
        return text.to_owned();
    }
    for prefix in ["integer ", "floating point ", "boolean "] {
        if let Some(value) = got.strip_prefix(prefix) {
            return value.trim_matches('`').to_owned();
        }
    }
    match got {
        "map" => "a mapping".to_owned(),
        "sequence" => "a list".to_owned(),
        "unit value" | "unit" => "nothing (null)".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let allowed = list(&["service", "connectTimeout", "timeout", "idleTimeout", "retries", "routes"]);
        assert_eq!(did_you_mean("timout", &allowed), Some("timeout"));
        assert_eq!(did_you_mean("connect_timeout", &allowed), Some("connectTimeout"));
        assert_eq!(did_you_mean("ConnectTimeout", &allowed), Some("connectTimeout"));
        assert_eq!(did_you_mean("retires", &allowed), Some("retries"));
        assert_eq!(did_you_mean("rotues", &allowed), Some("routes"));
        assert_eq!(did_you_mean("loadBalancing", &allowed), None);
        assert_eq!(did_you_mean("x", &allowed), None);
        assert_eq!(did_you_mean("idle", &allowed), Some("idleTimeout"));
        assert_eq!(did_you_mean("connect", &allowed), Some("connectTimeout"));
        assert_eq!(did_you_mean("time", &allowed), Some("timeout"), "one edit away wins over a prefix");
        assert_eq!(did_you_mean("rou", &allowed), None, "too short to be taken as a prefix");
        let weight = list(&["weight", "subset"]);
        assert_eq!(did_you_mean("wieght", &weight), Some("weight"));
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            without_rust_types("invalid type: string \"three\", expected u32"),
            "expected a whole number ≥ 0, got \"three\""
        );
        assert_eq!(
            without_rust_types("invalid value: integer `-1`, expected u32"),
            "expected a whole number ≥ 0, got -1"
        );
        assert_eq!(
            without_rust_types("invalid type: floating point `1.5`, expected u32"),
            "expected a whole number ≥ 0, got 1.5"
        );
        assert_eq!(
            without_rust_types("invalid type: sequence, expected struct RetryBudget"),
            "expected a mapping, got a list"
        );
        assert_eq!(
            without_rust_types("invalid type: integer `3`, expected struct Retries"),
            "expected a mapping, got 3"
        );
        assert_eq!(without_rust_types("invalid type: string \"x\", expected a sequence"), "expected a list, got \"x\"");
        assert_eq!(
            without_rust_types("invalid type: unit value, expected a string"),
            "expected a string, got nothing (null)"
        );
        assert_eq!(without_rust_types("invalid type: string \"x\", expected f64"), "expected a number, got \"x\"");
        assert_eq!(
            without_rust_types("invalid type: string \"x\", expected a boolean"),
            "expected true or false, got \"x\""
        );
        assert_eq!(
            without_rust_types("port must be between 1 and 65535 (got 0)"),
            "port must be between 1 and 65535 (got 0)"
        );
    }

    #[test]
    fn serde_messages_are_classified() {
        assert_eq!(
            classify("unknown field `timout`, expected one of `service`, `timeout`"),
            Problem::UnknownField { expected: list(&["service", "timeout"]) }
        );
        assert_eq!(
            classify("unknown field `x`, expected `weight` or `subset`"),
            Problem::UnknownField { expected: list(&["weight", "subset"]) }
        );
        assert_eq!(classify("unknown field `x`, there are no fields"), Problem::UnknownField { expected: Vec::new() });
        assert_eq!(classify("missing field `port`"), Problem::MissingField { field: "port".into() });
        assert_eq!(
            classify("unknown variant `htp`, expected one of `http`, `http2`"),
            Problem::UnknownValue { value: "htp".into(), expected: list(&["http", "http2"]) }
        );
        assert_eq!(classify("invalid type: map, expected u32"), Problem::Other);
    }

    #[test]
    fn unknown_fields_and_values_read_well() {
        let unknown = Problem::UnknownField { expected: list(&["service", "timeout"]) };
        assert_eq!(
            readable(&unknown, Some("timout"), ""),
            "unknown field; did you mean `timeout`? (expected one of service, timeout)"
        );
        assert_eq!(readable(&unknown, Some("zzz"), ""), "unknown field (expected one of service, timeout)");
        let value = Problem::UnknownValue { value: "permisive".into(), expected: list(&["permissive", "strict"]) };
        assert_eq!(
            readable(&value, None, ""),
            "unknown value \"permisive\", expected one of permissive, strict; did you mean \"permissive\"?"
        );
    }
}
