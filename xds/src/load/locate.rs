//! Line and column of a field path in a policy file's text.
//!
//! The YAML parser (libyaml, through serde_yaml_ng) keeps positions only in its errors. So a
//! position is found by decoding the document again with a visitor that walks down the path
//! and fails on purpose where the path ends: the parser stamps that failure with the position
//! of the node it was reading, which is the answer. This costs one parse of the file (up to the
//! document) per error, and only errors are located; the number of lookups is bounded so that
//! the parsing stays within about [`WORK_BYTES`] for a large text.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::recover::Seg;

/// At most this many lookups per text; later errors are reported without a position...
const MAX_LOOKUPS: usize = 500;
/// ...and at least this many, however large the text...
const MIN_LOOKUPS: usize = 4;
/// ...within about this many bytes parsed in all.
const WORK_BYTES: usize = 16 << 20;

/// The failure that marks the position sought.
const HERE: &str = "outrider-locate: here";
/// The failure when the path leaves the document after `depth` steps.
const NOT_FOUND: &str = "outrider-locate: not found at depth ";

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// Finds positions in one text (a file, a request body).
#[derive(Debug)]
pub(crate) struct Locator {
    text: String,
    lookups: AtomicUsize,
    max_lookups: usize,
}

impl Locator {
    pub(crate) fn new(text: &str) -> Self {
        let max_lookups = (WORK_BYTES / text.len().max(1)).clamp(MIN_LOOKUPS, MAX_LOOKUPS);
        Self { text: text.to_owned(), lookups: AtomicUsize::new(0), max_lookups }
    }

    /// The length of the text, in bytes.
    pub(crate) fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Where `path` is in document `document` (0-based): the key that ends it, or the list
    /// element; for a path that does not exist (a missing field), its nearest existing ancestor.
    pub(crate) fn locate(&self, document: usize, path: &[Seg]) -> Option<Position> {
        match self.probe(document, path)? {
            Probed::Found(position) => Some(position),
            Probed::NotFound(depth) => match self.probe(document, &path[..depth.min(path.len())])? {
                Probed::Found(position) => Some(position),
                Probed::NotFound(_) => None,
            },
        }
    }

    fn probe(&self, document: usize, path: &[Seg]) -> Option<Probed> {
        if self.lookups.fetch_add(1, Ordering::Relaxed) >= self.max_lookups {
            return None;
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(&self.text).nth(document)?;
        let error = Probe { path, depth: 0 }.deserialize(deserializer).err()?;
        let location = error.location()?;
        let position = Position { line: location.line(), column: location.column() };
        let message = error.to_string();
        match message.split_once(NOT_FOUND).and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()) {
            Some(depth) => depth.parse().ok().map(Probed::NotFound),
            None if message.contains(HERE) => Some(Probed::Found(position)),
            // Some other failure of the parser (the document is not valid YAML).
            None => None,
        }
    }
}

enum Probed {
    Found(Position),
    NotFound(usize),
}

/// Walks `path` down a document; fails at its end (see the module doc).
struct Probe<'p> {
    path: &'p [Seg],
    depth: usize,
}

impl Probe<'_> {
    fn stop<E: de::Error>(&self) -> E {
        if self.path.is_empty() { E::custom(HERE) } else { E::custom(format!("{NOT_FOUND}{}", self.depth)) }
    }
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.stop())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(self.stop())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else { return Err(self.stop()) };
        let key = KeyProbe { wanted, last: rest.is_empty() };
        while let Some(matched) = map.next_key_seed(key.clone())? {
            if matched {
                return map.next_value_seed(Probe { path: rest, depth: self.depth + 1 });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(self.stop())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.path.split_first() else { return Err(self.stop()) };
        let mut index = 0;
        loop {
            if index == *wanted {
                // Probing the element always fails (with HERE when the path ends at it); it
                // returns only when the list is shorter than `wanted`.
                seq.next_element_seed(Probe { path: rest, depth: self.depth + 1 })?;
                return Err(self.stop());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(self.stop());
            }
            index += 1;
        }
    }
}

/// A mapping key: `Ok(true)` when it is the one wanted and the path goes on below it; fails
/// with [`HERE`] (at the key's position) when the path ends at it.
#[derive(Clone)]
struct KeyProbe<'p> {
    wanted: &'p str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl KeyProbe<'_> {
    fn matched<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.last) {
            (true, true) => Err(E::custom(HERE)),
            (matched, _) => Ok(matched),
        }
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        self.matched(key)
    }
    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.matched(&key.to_string())
    }
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.matched(&key.to_string())
    }
    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.matched(&key.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::recover::parse;
    use super::*;

    const TEXT: &str = "\
apiVersion: outrider.io/v1
kind: Service
metadata: {name: a}
spec:
  port: 80
---
# a comment
kind: TrafficPolicy
spec:
  service: a
  routes:
    - name: main
      split: [{weight: 90}, {weight: 20, subset: {v: b}}]
    - split:
        - weight: 100
";

    fn at(document: usize, path: &str) -> Option<(usize, usize)> {
        Locator::new(TEXT).locate(document, &parse(path)).map(|p| (p.line, p.column))
    }

    #[test]
    fn keys_and_elements_are_found_in_block_and_flow_style() {
        assert_eq!(at(0, "kind"), Some((2, 1)));
        assert_eq!(at(0, "metadata.name"), Some((3, 12)));
        assert_eq!(at(0, "spec.port"), Some((5, 3)));
        assert_eq!(at(1, "spec.service"), Some((10, 3)));
        assert_eq!(at(1, "spec.routes[0]"), Some((12, 7)));
        assert_eq!(at(1, "spec.routes[0].split[1].weight"), Some((13, 30)));
        assert_eq!(at(1, "spec.routes[0].split[1].subset.v"), Some((13, 51)));
        assert_eq!(at(1, "spec.routes[1].split[0].weight"), Some((15, 11)));
    }

    #[test]
    fn a_missing_field_points_at_its_nearest_ancestor() {
        assert_eq!(at(0, "spec.protocol"), Some((4, 1)));
        assert_eq!(at(1, "spec.routes[0].split[1].nope"), Some((13, 29)));
        assert_eq!(at(1, "spec.routes[7]"), Some((11, 3)));
        assert_eq!(at(1, "metadata.name"), Some((8, 1)), "the document itself");
    }

    #[test]
    fn an_absent_document_has_no_position() {
        assert_eq!(at(2, "kind"), None);
    }
}
