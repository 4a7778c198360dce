//! Validating documents that come from several places at once (files of a watched directory,
//! documents stored by the control plane's API, a request body) as one set, each error naming
//! the place its document came from.

use crate::load::{Parsed, parse_str};
use crate::policy::PolicySet;
use crate::validate::{self, PolicyErrors};

/// One named piece of YAML (or JSON) text holding one or more documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Used where a file name would be in messages, e.g. `request` or `stored Service/reviews`.
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self { name: name.into(), text: text.into() }
    }
}

/// Parses every source and validates all their documents as one set.
pub fn load_sources<'a>(sources: impl IntoIterator<Item = &'a Source>) -> Result<PolicySet, PolicyErrors> {
    let mut parsed = Parsed::default();
    for source in sources {
        parse_str(&source.name, &source.text, &mut parsed);
    }
    validate::validate(parsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 9080}\n";

    #[test]
    fn documents_of_several_sources_form_one_set() {
        let policy = r#"{"apiVersion":"outrider.io/v1","kind":"TrafficPolicy","metadata":{"name":"reviews"},"spec":{"service":"reviews"}}"#;
        let set = load_sources(&[Source::new("a.yaml", SERVICE), Source::new("stored", policy)]).unwrap();
        assert!(set.services.contains_key("reviews"));
        assert!(set.traffic_policies.contains_key("reviews"));
    }

    #[test]
    fn errors_name_the_source_of_their_document() {
        let policy = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: x}\nspec: {service: ratings}\n";
        let errors = load_sources(&[Source::new("a.yaml", SERVICE), Source::new("request", policy)]).unwrap_err();
        let first = errors.iter().next().unwrap();
        assert_eq!(first.file, "request");
        assert_eq!(first.field.as_deref(), Some("spec.service"));
    }
}
