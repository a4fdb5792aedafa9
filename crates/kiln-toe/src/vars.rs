//! `{{ variable }}` references: finding them, classifying them and
//! substituting them.

/// What a `{{ ... }}` reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// A parameter or constant of the document.
    Name(String),
    /// `{{ loop.index }}`, `{{ loop.value }}` or `{{ NAME.index }}` of a named loop.
    Loop {
        name: Option<String>,
        field: LoopField,
    },
    /// `{{ phase.step.inputs[0].field }}` / `{{ phase.step.outputs.field }}`.
    Chain {
        phase: String,
        step: String,
        io: Io,
        index: usize,
        field: String,
    },
    /// `{{ env:NAME }}`: the environment of the kiln process.
    Env(String),
    /// `{{ context:key }}`: facts about the execution.
    Context(String),
    /// Anything else: reported by validation.
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopField {
    Index,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Inputs,
    Outputs,
}

/// The context keys AWSTOE documents and kiln can answer locally.
pub const CONTEXT_KEYS: &[&str] = &[
    "executionId",
    "osPlatform",
    "osName",
    "osVersion",
    "date",
    "dateTime",
    "uuid",
    "hostname",
    "phase",
    "step",
];

/// Every reference in `text`, as (byte offset of `{{`, trimmed inner text).
pub fn references(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(open) = text[rest..].find("{{") {
        let start = rest + open;
        let Some(close) = text[start + 2..].find("}}") else {
            break;
        };
        out.push((start, text[start + 2..start + 2 + close].trim()));
        rest = start + 2 + close + 2;
    }
    out
}

pub fn classify(inner: &str) -> Ref {
    if let Some(name) = inner.strip_prefix("env:") {
        return Ref::Env(name.to_string());
    }
    if let Some(key) = inner.strip_prefix("context:") {
        return Ref::Context(key.to_string());
    }
    let parts: Vec<&str> = inner.split('.').collect();
    match parts.as_slice() {
        [name] if is_name(name) => Ref::Name(name.to_string()),
        [owner, field @ ("index" | "value")] if is_name(owner) => {
            let field = if *field == "index" {
                LoopField::Index
            } else {
                LoopField::Value
            };
            let name = (*owner != "loop").then(|| owner.to_string());
            Ref::Loop { name, field }
        }
        [phase, step, io, field] if is_name(phase) && !step.is_empty() && !field.is_empty() => {
            let (io_name, index) = match io.split_once('[') {
                Some((n, idx)) => match idx.strip_suffix(']').and_then(|i| i.parse::<usize>().ok())
                {
                    Some(i) => (n, i),
                    None => return Ref::Invalid(inner.to_string()),
                },
                None => (*io, 0),
            };
            let io = match io_name {
                "inputs" => Io::Inputs,
                "outputs" => Io::Outputs,
                _ => return Ref::Invalid(inner.to_string()),
            };
            Ref::Chain {
                phase: phase.to_string(),
                step: step.to_string(),
                io,
                index,
                field: field.to_string(),
            }
        }
        _ => Ref::Invalid(inner.to_string()),
    }
}

/// Parameter, constant and loop names: letters, digits, `-` and `_`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Replaces every reference that `lookup` resolves; the rest stays as
/// written, as AWSTOE leaves loop references outside a loop.
pub fn render(text: &str, mut lookup: impl FnMut(&Ref) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(open) = text[rest..].find("{{") {
        let start = rest + open;
        let Some(close) = text[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + close + 2;
        out.push_str(&text[rest..start]);
        match lookup(&classify(text[start + 2..end - 2].trim())) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&text[start..end]),
        }
        rest = end;
    }
    out.push_str(&text[rest..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_inside_braces_are_trimmed() {
        let refs = references("a {{X}} b {{ Y }} c {{Z }}");
        let names: Vec<&str> = refs.iter().map(|r| r.1).collect();
        assert_eq!(names, ["X", "Y", "Z"]);
    }

    #[test]
    fn chaining_references_parse_with_and_without_index() {
        assert_eq!(
            classify("build.Download.inputs[1].source"),
            Ref::Chain {
                phase: "build".into(),
                step: "Download".into(),
                io: Io::Inputs,
                index: 1,
                field: "source".into()
            }
        );
        assert!(matches!(
            classify("build.Run.outputs.stdout"),
            Ref::Chain {
                io: Io::Outputs,
                index: 0,
                ..
            }
        ));
        assert!(matches!(
            classify("build.Run.other.stdout"),
            Ref::Invalid(_)
        ));
    }

    #[test]
    fn loop_references_name_their_loop() {
        assert_eq!(
            classify("loop.index"),
            Ref::Loop {
                name: None,
                field: LoopField::Index
            }
        );
        assert_eq!(
            classify("outer.value"),
            Ref::Loop {
                name: Some("outer".into()),
                field: LoopField::Value
            }
        );
    }

    #[test]
    fn unresolved_references_stay_literal() {
        let out = render("{{ a }}-{{ loop.value }}", |r| match r {
            Ref::Name(n) if n == "a" => Some("1".into()),
            _ => None,
        });
        assert_eq!(out, "1-{{ loop.value }}");
    }
}
