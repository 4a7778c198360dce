//! Checks of a Telemetry document, and the one-per-mesh rule.

use super::PolicyError;
use crate::load::Origin;
use crate::policy::Telemetry;

/// Everything that can be checked within the document itself.
pub(super) fn check_telemetry(origin: &Origin, telemetry: &Telemetry, errors: &mut Vec<PolicyError>) {
    let Some(tracing) = &telemetry.spec.tracing else {
        errors.push(origin.error(
            Some("spec.tracing".into()),
            "missing: a Telemetry must set something, e.g. tracing: {samplingPercent: 10}",
        ));
        return;
    };
    if tracing.sampling_percent.is_none() && tracing.errors.is_none() {
        errors.push(origin.error(
            Some("spec.tracing".into()),
            "sets nothing: give samplingPercent (0 to 100) and/or errors (true or false)",
        ));
    }
    if let Some(p) = tracing.sampling_percent
        && !(0.0..=100.0).contains(&p)
    {
        errors.push(
            origin.error(Some("spec.tracing.samplingPercent".into()), format!("must be between 0 and 100 (got {p})")),
        );
    }
}

/// A second Telemetry in the set: they would both claim the whole mesh.
pub(super) fn check_single(origin: &Origin, first: &Origin, errors: &mut Vec<PolicyError>) {
    errors.push(origin.error(
        Some("metadata.name".into()),
        format!("a Telemetry applies to the whole mesh and one is already defined (in {}); keep one", first.describe()),
    ));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::load_str;

    fn errors(yaml: &str) -> Vec<String> {
        match load_str("t.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    const HEAD: &str = "apiVersion: outrider.io/v1\nkind: Telemetry\nmetadata: {name: mesh}\n";

    #[test]
    fn a_valid_telemetry_loads() {
        let set = load_str("t.yaml", &format!("{HEAD}spec: {{tracing: {{samplingPercent: 12.5, errors: false}}}}\n"))
            .unwrap();
        let tracing = set.telemetry.unwrap().spec.tracing.unwrap();
        assert_eq!((tracing.sampling_percent, tracing.errors), (Some(12.5), Some(false)));
    }

    #[test]
    fn out_of_range_unknown_and_empty_fields_are_named() {
        assert_eq!(
            errors(&format!("{HEAD}spec: {{tracing: {{samplingPercent: 101}}}}\n")),
            [
                "t.yaml:4:18: document 1 (Telemetry/mesh): spec.tracing.samplingPercent: must be between 0 and 100 (got 101)"
            ]
        );
        assert_eq!(
            errors(&format!("{HEAD}spec: {{tracing: {{sampling: 10}}}}\n")),
            ["t.yaml:4:18: document 1 (Telemetry/mesh): spec.tracing.sampling: unknown field; did you mean \
                 `samplingPercent`? (expected one of samplingPercent, errors)"]
        );
        assert_eq!(
            errors(&format!("{HEAD}spec: {{tracing: {{}}}}\n")),
            ["t.yaml:4:8: document 1 (Telemetry/mesh): spec.tracing: sets nothing: give samplingPercent (0 to 100) \
                 and/or errors (true or false)"]
        );
        assert_eq!(
            errors(&format!("{HEAD}spec: {{}}\n")),
            ["t.yaml:4:1: document 1 (Telemetry/mesh): spec.tracing: missing: a Telemetry must set something, e.g. \
                 tracing: {samplingPercent: 10}"]
        );
    }

    #[test]
    fn only_one_telemetry_per_mesh() {
        let two = format!(
            "{HEAD}spec: {{tracing: {{errors: true}}}}\n---\napiVersion: outrider.io/v1\nkind: Telemetry\n\
             metadata: {{name: other}}\nspec: {{tracing: {{samplingPercent: 1}}}}\n"
        );
        assert_eq!(
            errors(&two),
            [
                "t.yaml:8:12: document 2 (Telemetry/other): metadata.name: a Telemetry applies to the whole mesh and one \
                 is already defined (in t.yaml document 1); keep one"
            ]
        );
    }
}
