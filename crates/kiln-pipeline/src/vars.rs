//! Pipeline variables, referred to as CodePipeline does: `#{namespace.name}`,
//! e.g. `#{SourceVariables.CommitId}` or `#{BuildVariables.ArtifactUri}`.

use std::collections::BTreeMap;

/// Variables by namespace, then by name.
pub type Variables = BTreeMap<String, BTreeMap<String, String>>;

/// Replaces every `#{namespace.name}` in `text`; an unknown one is an
/// error that names it.
pub fn substitute(text: &str, vars: &Variables) -> Result<String, String> {
    replace(text, vars, false)
}

/// As [`substitute`], but references to namespaces not set yet stay as
/// written (for digests taken before the stages that set them).
pub fn substitute_known(text: &str, vars: &Variables) -> Result<String, String> {
    replace(text, vars, true)
}

fn replace(text: &str, vars: &Variables, keep_unset: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed variable reference in {text:?}"));
        };
        let reference = &after[..end];
        let value = reference
            .split_once('.')
            .and_then(|(ns, name)| vars.get(ns)?.get(name));
        let unset_namespace = reference
            .split_once('.')
            .is_some_and(|(ns, _)| !vars.contains_key(ns));
        match value {
            Some(v) => out.push_str(v),
            None if keep_unset && unset_namespace => {
                out.push_str("#{");
                out.push_str(reference);
                out.push('}');
            }
            None => {
                let known: Vec<String> = vars
                    .iter()
                    .flat_map(|(ns, m)| m.keys().map(move |k| format!("{ns}.{k}")))
                    .collect();
                return Err(format!(
                    "#{{{reference}}} is not a variable of this execution (it has: {})",
                    known.join(", ")
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let mut v = Variables::new();
        v.entry("SourceVariables".into())
            .or_default()
            .insert("CommitId".into(), "abc123".into());
        v
    }

    #[test]
    fn references_are_replaced() {
        assert_eq!(
            substitute("commit #{SourceVariables.CommitId}!", &vars()).unwrap(),
            "commit abc123!"
        );
        assert_eq!(substitute("plain", &vars()).unwrap(), "plain");
    }

    #[test]
    fn unknown_references_name_themselves() {
        let e = substitute("#{BuildVariables.Nope}", &vars()).unwrap_err();
        assert!(e.contains("#{BuildVariables.Nope}"), "{e}");
        assert!(e.contains("SourceVariables.CommitId"), "{e}");
        assert!(substitute("#{open", &vars()).is_err());
        assert_eq!(
            substitute_known("#{VersionVariables.Version}", &vars()).unwrap(),
            "#{VersionVariables.Version}"
        );
        assert!(substitute_known("#{SourceVariables.Nope}", &vars()).is_err());
    }
}
