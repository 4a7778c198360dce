//! Validating documents that come from several places at once (files of a watched directory,
//! documents stored by the control plane's API, a request body) as one set, each error naming
//! the place its document came from.

use crate::load::{Parsed, parse_str};
use std::collections::BTreeMap;

use crate::policy::{PolicySet, Service};
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

/// [`load_sources`] in a set where the services of `base` (already validated, e.g. discovered
/// from a Kubernetes cluster) exist as well: the documents may refer to them, and errors are the
/// ones the same documents get beside those services in a file. The result holds the sources'
/// documents alone.
pub fn load_sources_with<'a>(
    base: &BTreeMap<String, Service>,
    sources: impl IntoIterator<Item = &'a Source>,
) -> Result<PolicySet, PolicyErrors> {
    let mut parsed = Parsed::default();
    for source in sources {
        parse_str(&source.name, &source.text, &mut parsed);
    }
    validate::validate_with(parsed, base)
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
    fn documents_may_refer_to_base_services_and_the_result_holds_the_documents_alone() {
        let base = load_sources(&[Source::new("a.yaml", SERVICE)]).unwrap().services;
        let policy = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: x}\nspec: {service: reviews}\n";
        let set = load_sources_with(&base, &[Source::new("p", policy)]).unwrap();
        assert!(set.services.is_empty());
        assert!(set.traffic_policies.contains_key("reviews"));
        // The same message as without a base, naming the base's services.
        let other = policy.replace("service: reviews", "service: ratings");
        let errors = load_sources_with(&base, &[Source::new("p", other)]).unwrap_err();
        assert_eq!(errors.iter().next().unwrap().message, "no Service named \"ratings\" (known services: reviews)");
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
