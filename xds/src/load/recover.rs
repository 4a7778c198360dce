//! Decoding a YAML value into the typed model while collecting every error, not only the first.
//!
//! serde stops at the first error. To report them all, decoding is repeated on a copy of the
//! YAML that is repaired after each error: an unknown key is removed; a bad value is removed (so
//! its default applies) or, where the field is required or is a list element, replaced by a
//! stand-in that decodes; a missing required field gets a stand-in. Errors that a stand-in
//! causes are not reported. This ends when the value decodes or after [`max_rounds`] rounds. The
//! repaired paths are returned, so that later checks of the repaired document can leave out what
//! the stand-ins caused.

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::messages::{self, Problem};

/// Rounds per document at most (each decodes the document once)...
const MAX_ROUNDS: usize = 200;
/// ...and at least, however large the text.
const MIN_ROUNDS: usize = 4;
/// About how many bytes of YAML the rounds may decode in all, so that a large body (the
/// unauthenticated `POST /v1/validate` takes 4 MiB) cannot buy much more work than its size.
const WORK_BYTES: usize = 16 << 20;

/// Rounds for a document of a text of `text_len` bytes (the document is at most that large).
pub(crate) fn max_rounds(text_len: usize) -> usize {
    (WORK_BYTES / text_len.max(1)).clamp(MIN_ROUNDS, MAX_ROUNDS)
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// `spec.routes[0].split[1].weight`.
pub(crate) fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// The reverse of [`display`], for paths written by the checks. A key holding `.` or `[` is
/// split wrongly; callers use such a path only to find a position, and fall back to the nearest
/// ancestor that exists.
pub(crate) fn parse(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(index) => out.push(Seg::Index(index)),
                Err(_) => out.push(Seg::Key(index.to_owned())),
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// Whether `path` is `ancestor` or lies inside it.
pub(crate) fn within(path: &[Seg], ancestor: &[Seg]) -> bool {
    path.starts_with(ancestor)
}

/// One error found while decoding: where (relative to the decoded value) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) path: Vec<Seg>,
    pub(crate) message: String,
}

/// The outcome of [`decode`].
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    /// The (possibly repaired) value; `None` when it could not be repaired into one.
    pub(crate) value: Option<T>,
    pub(crate) errors: Vec<FieldError>,
    /// Paths that were removed or replaced by a stand-in.
    pub(crate) repaired: Vec<Vec<Seg>>,
}

/// Decodes `value` as `T`, collecting every error (see the module doc), in at most `rounds`
/// rounds ([`max_rounds`]).
pub(crate) fn decode<T: DeserializeOwned>(mut value: Value, rounds: usize) -> Decoded<T> {
    let mut errors = Vec::new();
    let mut repaired: Vec<Vec<Seg>> = Vec::new();
    // Per path: whether removing it was tried, and the next stand-in to try.
    let mut tries: Vec<(Vec<Seg>, bool, usize)> = Vec::new();
    // Fields that an unknown key was said to be a misspelling of: their absence is that error.
    let mut suggested: Vec<Vec<Seg>> = Vec::new();
    for round in 0..=rounds {
        if round == rounds {
            errors.push(FieldError {
                path: Vec::new(),
                message: format!("more errors may follow: reading stopped after {rounds} of them"),
            });
            break;
        }
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(decoded) => return Decoded { value: Some(decoded), errors, repaired },
            Err(error) => error,
        };
        let mut path = segments(error.path());
        let message = error.inner().to_string();
        let problem = messages::classify(&message);
        if let Problem::MissingField { field } = &problem {
            path.push(Seg::Key(field.clone()));
        }
        let key = match path.last() {
            Some(Seg::Key(key)) => Some(key.as_str()),
            _ => None,
        };
        if let (Problem::UnknownField { expected }, Some(key)) = (&problem, key)
            && let Some(best) = messages::did_you_mean(key, expected)
        {
            let mut meant = path[..path.len() - 1].to_vec();
            meant.push(Seg::Key(best.to_owned()));
            suggested.push(meant);
        }
        let caused_by_repair = repaired.iter().any(|r| within(&path, r));
        if !caused_by_repair {
            if !suggested.contains(&path) {
                errors.push(FieldError { path: path.clone(), message: messages::readable(&problem, key, &message) });
            }
            repaired.push(path.clone());
        }
        let fixed = if matches!(problem, Problem::UnknownField { .. }) {
            remove(&mut value, &path)
        } else {
            let at = match tries.iter().position(|(p, _, _)| *p == path) {
                Some(at) => at,
                None => {
                    tries.push((path.clone(), false, 0));
                    tries.len() - 1
                }
            };
            let (_, removal_tried, next) = &mut tries[at];
            let removed = !*removal_tried && remove(&mut value, &path);
            *removal_tried = true;
            if removed {
                true
            } else {
                let standin = standins(&problem).into_iter().nth(*next);
                *next += 1;
                standin.is_some_and(|standin| set(&mut value, &path, standin))
            }
        };
        if !fixed {
            break;
        }
    }
    Decoded { value: None, errors, repaired }
}

/// serde_path_to_error's path as [`Seg`]s.
fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                Some(Seg::Key(key.clone()))
            }
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// Values that decode as most field types, tried in order: an allowed value of an enum first.
fn standins(problem: &Problem) -> Vec<Value> {
    let mut out = Vec::new();
    if let Problem::UnknownValue { expected, .. } = problem
        && let Some(first) = expected.first()
    {
        out.push(Value::String(first.clone()));
    }
    out.extend([
        Value::Null,
        Value::Number(0.into()),
        Value::Number(1.into()),
        Value::String("1s".into()),
        Value::String(String::new()),
        Value::String("127.0.0.1:1".into()),
        Value::Sequence(Vec::new()),
        Value::Mapping(Default::default()),
        Value::Bool(false),
    ]);
    out
}

/// The key of a mapping that serde_path_to_error printed as `key`.
fn key_of(mapping: &serde_yaml_ng::Mapping, key: &str) -> Option<Value> {
    mapping
        .keys()
        .find(|k| match k {
            Value::String(s) => s == key,
            Value::Number(n) => n.to_string() == key,
            Value::Bool(b) => b.to_string() == key,
            _ => false,
        })
        .cloned()
}

fn node_mut<'a>(value: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut node = value;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(key), Value::Mapping(mapping)) => {
                let key = key_of(mapping, key)?;
                mapping.get_mut(&key)?
            }
            (Seg::Index(index), Value::Sequence(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Removes a mapping entry; false when `path` is not a key of a mapping.
fn remove(value: &mut Value, path: &[Seg]) -> bool {
    let Some((Seg::Key(key), parent)) = path.split_last() else { return false };
    match node_mut(value, parent) {
        // Shifting, not swapping, keeps the keys in order, so errors come in document order.
        Some(Value::Mapping(mapping)) => key_of(mapping, key).is_some_and(|key| mapping.shift_remove(&key).is_some()),
        _ => false,
    }
}

/// Sets (or adds, for a mapping key) the node at `path`.
fn set(value: &mut Value, path: &[Seg], standin: Value) -> bool {
    let Some((last, parent)) = path.split_last() else {
        *value = standin;
        return true;
    };
    match (last, node_mut(value, parent)) {
        (Seg::Key(key), Some(Value::Mapping(mapping))) => {
            let key = key_of(mapping, key).unwrap_or_else(|| Value::String(key.clone()));
            mapping.insert(key, standin);
            true
        }
        (Seg::Index(index), Some(Value::Sequence(items))) if *index < items.len() => {
            items[*index] = standin;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        weight: u32,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Fast,
        Safe,
    }

    fn run(yaml: &str) -> Decoded<Outer> {
        decode(serde_yaml_ng::from_str(yaml).unwrap(), MAX_ROUNDS)
    }

    fn paths(decoded: &Decoded<Outer>) -> Vec<String> {
        decoded.errors.iter().map(|e| display(&e.path)).collect()
    }

    #[test]
    fn every_error_of_a_value_is_reported() {
        let decoded = run("name: a\ncout: 3\nitems:\n  - {weight: x, mode: slow}\n  - {wieght: 1}\n  - {weight: -1}\n");
        assert_eq!(paths(&decoded), ["cout", "items[0].weight", "items[0].mode", "items[1].wieght", "items[2].weight"]);
        let messages: Vec<&str> = decoded.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages[0], "unknown field; did you mean `count`? (expected one of name, count, items, labels)");
        assert_eq!(messages[1], "expected a whole number ≥ 0, got \"x\"");
        assert_eq!(messages[2], "unknown value \"slow\", expected one of fast, safe");
        assert!(messages[3].starts_with("unknown field; did you mean `weight`?"), "{}", messages[3]);
        assert_eq!(messages[4], "expected a whole number ≥ 0, got -1");
        // Repaired, the value decodes; stand-ins fill what was wrong.
        let value = decoded.value.unwrap();
        assert_eq!(value.name, "a");
        assert_eq!(value.items.len(), 3);
    }

    #[test]
    fn a_misspelt_required_field_is_one_error() {
        let decoded = run("nmae: a\n");
        assert_eq!(paths(&decoded), ["nmae"]);
        assert!(decoded.errors[0].message.starts_with("unknown field; did you mean `name`?"));
    }

    #[test]
    fn a_valid_value_has_no_errors_and_nothing_repaired() {
        let decoded = run("name: a\ncount: 2\n");
        assert!(decoded.errors.is_empty());
        assert!(decoded.repaired.is_empty());
        assert_eq!(decoded.value.unwrap().count, 2);
    }

    #[test]
    fn a_wrong_root_is_one_error() {
        let decoded = run("[1, 2]");
        assert_eq!(decoded.errors.len(), 1, "{:?}", decoded.errors);
        assert_eq!(decoded.errors[0].message, "expected a mapping, got a list");
        assert_eq!(decoded.repaired, vec![Vec::<Seg>::new()]);
    }

    #[test]
    fn stand_ins_do_not_add_errors() {
        // `items: 3` is replaced; the missing `name` gets a stand-in; neither adds more.
        let decoded = run("items: 3\n");
        assert_eq!(paths(&decoded), ["items", "name"]);
    }

    #[test]
    fn the_rounds_are_bounded_and_say_so() {
        let many: String = (0..50).map(|i| format!("x{i}: 1\n")).collect();
        let decoded: Decoded<Outer> = decode(serde_yaml_ng::from_str(&format!("name: a\n{many}")).unwrap(), 10);
        assert!(decoded.value.is_none());
        assert_eq!(decoded.errors.len(), 11, "ten errors and the note");
        let first: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
        assert_eq!(paths(&decoded)[..10], first, "the first ten, in document order");
        assert!(decoded.errors[10].message.starts_with("more errors may follow"));
        assert_eq!(max_rounds(1000), MAX_ROUNDS);
        assert_eq!(max_rounds(4 << 20), MIN_ROUNDS);
    }

    #[test]
    fn paths_round_trip() {
        for text in ["spec.routes[0].split[1].weight", "spec", "a[0][1].b", ""] {
            assert_eq!(display(&parse(text)), text);
        }
    }
}
