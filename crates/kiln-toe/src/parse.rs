//! Reads a component document and checks everything that can be checked
//! before it runs: structure, types, action inputs, loops, conditions and
//! every variable reference.

use std::collections::HashSet;
use std::path::Path;

use crate::condition;
use crate::document::*;
use crate::error::{Collector, Diagnostics};
use crate::schema;
use crate::vars;
use crate::yaml::{self, Node, Pos};

/// The phases Image Builder runs, and those kiln runs when no `--phases`
/// names others. AWSTOE runs a phase of any name when `--phases` names it,
/// so another name is valid, but may well be a typo.
pub const PHASES: &[&str] = &["build", "validate", "test", "container-host-test"];

/// A `for` loop may not take more values than this.
pub const MAX_LOOP_ITERATIONS: i64 = 100_000;

/// The longest `timeoutSeconds` a step may have. AWSTOE documents no
/// maximum; a step cannot outlast Image Builder's longest stage, its test
/// stage's 1440 minutes, and a bound keeps the deadline computable.
pub const MAX_TIMEOUT_SECONDS: i64 = 24 * 3600;

const LOOP_DELIMITERS: &[char] = &['.', ',', ';', ':', '\n', '\t', ' ', '-', '_'];

/// Reads and validates the document at `path`.
pub fn load(path: &Path) -> Result<Document, Diagnostics> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        let mut c = Collector::new(path);
        c.push(
            Pos { line: 0, col: 0 },
            "",
            format!("cannot read the document: {e}"),
        );
        Diagnostics(c.errors)
    })?;
    parse_str(path, &source)
}

/// As [`load`], with every warning an error: `--strict`.
pub fn load_strict(path: &Path) -> Result<Document, Diagnostics> {
    let doc = load(path)?;
    if doc.warnings.is_empty() {
        Ok(doc)
    } else {
        Err(Diagnostics(doc.warnings))
    }
}

/// Parses and validates a document given as text; `path` names it in errors.
pub fn parse_str(path: &Path, source: &str) -> Result<Document, Diagnostics> {
    let mut c = Collector::new(path);
    let root = match yaml::parse(source) {
        Ok(root) => root,
        Err(e) => {
            c.push(e.pos, "", format!("invalid YAML: {}", e.message));
            return Err(Diagnostics(c.errors));
        }
    };
    let doc = document(&root, path, source, &mut c);
    if c.errors.is_empty() {
        if let Some(mut doc) = doc {
            doc.warnings = c.warnings;
            return Ok(doc);
        }
        c.push(root.pos, "", "not a component document");
    }
    Err(Diagnostics(c.errors))
}

pub(crate) fn string(node: &Node, field: &str, c: &mut Collector) -> Option<String> {
    match node.scalar() {
        Some(s) => Some(s.to_string()),
        None if node.is_null() => Some(String::new()),
        None => {
            c.push(
                node.pos,
                field,
                format!("expected a string, found a {}", node.kind()),
            );
            None
        }
    }
}

fn integer(node: &Node, field: &str, c: &mut Collector) -> Option<i64> {
    let value = node.as_i64();
    if value.is_none() {
        let found = node
            .scalar()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| format!("a {}", node.kind()));
        c.push(
            node.pos,
            field,
            format!("expected an integer, found {found}"),
        );
    }
    value
}

pub(crate) fn unknown_keys(node: &Node, allowed: &[&str], field: &str, c: &mut Collector) {
    for (key, _) in node.as_map().unwrap_or_default() {
        let name = key.scalar().unwrap_or_default();
        if !allowed.contains(&name) {
            let at = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
            c.push(
                key.pos,
                at,
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            );
        }
    }
}

fn document(root: &Node, path: &Path, source: &str, c: &mut Collector) -> Option<Document> {
    if root.as_map().is_none() {
        c.push(
            root.pos,
            "",
            format!("a component document is a map, found a {}", root.kind()),
        );
        return None;
    }
    unknown_keys(
        root,
        &[
            "name",
            "description",
            "schemaVersion",
            "parameters",
            "constants",
            "phases",
        ],
        "",
        c,
    );
    let text = |key: &str, c: &mut Collector| {
        root.get(key)
            .and_then(|n| string(n, key, c))
            .unwrap_or_default()
    };
    let name = text("name", c);
    let description = text("description", c);
    let schema_version = match root.get("schemaVersion") {
        None => {
            c.push(
                root.pos,
                "schemaVersion",
                "required field is missing (use 1.0)",
            );
            String::new()
        }
        Some(node) => {
            let v = string(node, "schemaVersion", c).unwrap_or_default();
            if !matches!(v.as_str(), "1.0" | "1") {
                c.push(
                    node.pos,
                    "schemaVersion",
                    format!("unsupported schema version {v:?} (use 1.0)"),
                );
            }
            v
        }
    };
    let parameters = root
        .get("parameters")
        .map(|n| crate::parameters::parameters(n, c))
        .unwrap_or_default();
    let constants = root
        .get("constants")
        .map(|n| crate::parameters::constants(n, c))
        .unwrap_or_default();
    let mut names = HashSet::new();
    for (name, pos, list) in parameters
        .iter()
        .map(|p| (&p.name, p.pos, "parameters"))
        .chain(constants.iter().map(|k| (&k.name, k.pos, "constants")))
    {
        if !names.insert(name.clone()) {
            c.push(
                pos,
                format!("{list}.{name}"),
                "a parameter or constant of this name is already defined",
            );
        }
    }
    let Some(phases_node) = root.get("phases") else {
        c.push(root.pos, "phases", "required field is missing");
        return None;
    };
    let phases = phases(phases_node, c);
    let doc = Document {
        path: path.to_path_buf(),
        source: source.to_string(),
        name,
        description,
        schema_version,
        parameters,
        constants,
        phases,
        warnings: Vec::new(),
    };
    crate::references::check(&doc, c);
    Some(doc)
}

fn phases(node: &Node, c: &mut Collector) -> Vec<Phase> {
    let Some(items) = node.as_seq() else {
        c.push(
            node.pos,
            "phases",
            format!("expected a list of phases, found a {}", node.kind()),
        );
        return Vec::new();
    };
    let mut out: Vec<Phase> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("phases[{i}]");
        if item.as_map().is_none() {
            c.push(
                item.pos,
                &field,
                format!(
                    "expected a map with name and steps, found a {}",
                    item.kind()
                ),
            );
            continue;
        }
        unknown_keys(item, &["name", "steps"], &field, c);
        let Some(name) = item
            .get("name")
            .and_then(|n| string(n, &format!("{field}.name"), c))
        else {
            c.push(
                item.pos,
                format!("{field}.name"),
                "required field is missing",
            );
            continue;
        };
        let field = format!("phases[{name}]");
        if name.trim().is_empty() {
            c.push(
                item.get("name").map_or(item.pos, |n| n.pos),
                format!("{field}.name"),
                "a phase needs a name",
            );
        } else if !PHASES.contains(&name.as_str()) {
            c.warn(
                item.get("name").map_or(item.pos, |n| n.pos),
                format!("{field}.name"),
                format!(
                    "not a phase Image Builder runs ({}); it runs only when named with --phases",
                    PHASES.join(", ")
                ),
            );
        }
        if out.iter().any(|p| p.name == name) {
            c.push(item.pos, &field, "a phase of this name is already defined");
        }
        let steps = match item.get("steps") {
            Some(s) => steps(s, &field, c),
            None => {
                c.push(
                    item.pos,
                    format!("{field}.steps"),
                    "required field is missing",
                );
                Vec::new()
            }
        };
        out.push(Phase {
            name,
            pos: item.pos,
            steps,
        });
    }
    if items.is_empty() {
        c.push(node.pos, "phases", "a document needs at least one phase");
    } else if !out.is_empty()
        && !out
            .iter()
            .any(|p| matches!(p.name.as_str(), "build" | "validate" | "test"))
    {
        c.warn(
            node.pos,
            "phases",
            "none of the phases build, validate, test: Image Builder runs nothing of this document",
        );
    }
    out
}

const STEP_FIELDS: &[&str] = &[
    "name",
    "action",
    "inputs",
    "onFailure",
    "maxAttempts",
    "timeoutSeconds",
    "if",
    "loop",
];

fn steps(node: &Node, phase_field: &str, c: &mut Collector) -> Vec<Step> {
    let Some(items) = node.as_seq() else {
        c.push(
            node.pos,
            format!("{phase_field}.steps"),
            format!("expected a list of steps, found a {}", node.kind()),
        );
        return Vec::new();
    };
    let mut out: Vec<Step> = Vec::new();
    let mut loop_names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let index_field = format!("{phase_field}.steps[{i}]");
        if item.as_map().is_none() {
            c.push(
                item.pos,
                &index_field,
                format!("expected a step map, found a {}", item.kind()),
            );
            continue;
        }
        let name = match item.get("name") {
            Some(n) => string(n, &format!("{index_field}.name"), c).unwrap_or_default(),
            None => {
                c.push(
                    item.pos,
                    format!("{index_field}.name"),
                    "required field is missing",
                );
                String::new()
            }
        };
        let field = if name.is_empty() {
            index_field
        } else {
            format!("{phase_field}.steps[{name}]")
        };
        unknown_keys(item, STEP_FIELDS, &field, c);
        if !name.is_empty() && out.iter().any(|s| s.name == name) {
            c.push(
                item.get("name").map_or(item.pos, |n| n.pos),
                format!("{field}.name"),
                "step names must be unique within a phase",
            );
        }
        if let Some(step) = step(item, name, &field, c) {
            if let Some(loop_name) = step.repeat.as_ref().and_then(|l| l.name.clone())
                && !loop_names.insert(loop_name.clone())
            {
                c.push(
                    item.get("loop")
                        .and_then(|l| l.get("name"))
                        .map_or(item.pos, |n| n.pos),
                    format!("{field}.loop.name"),
                    format!("loop name {loop_name:?} is already used in this phase"),
                );
            }
            out.push(step);
        }
    }
    out
}

fn step(item: &Node, name: String, field: &str, c: &mut Collector) -> Option<Step> {
    let action_node = item.get("action");
    let action = match action_node {
        Some(a) => string(a, &format!("{field}.action"), c)?,
        None => {
            c.push(
                item.pos,
                format!("{field}.action"),
                "required field is missing",
            );
            return None;
        }
    };
    let spec = schema::spec(&action);
    if spec.is_none() {
        c.push(
            action_node.map_or(item.pos, |n| n.pos),
            format!("{field}.action"),
            format!("unknown action module {action:?}"),
        );
    }
    let inputs = item.get("inputs").filter(|n| !n.is_null()).cloned();
    if let Some(spec) = spec {
        let inputs_field = format!("{field}.inputs");
        if spec.shape == schema::Shape::Expression {
            match &inputs {
                Some(node) => {
                    condition::parse_expr(node, &inputs_field, &[], 0, c);
                }
                None => c.push(
                    item.pos,
                    inputs_field,
                    "Assert needs a condition as its inputs",
                ),
            }
        } else {
            let mut at = Collector::new(c.file());
            schema::check_inputs(spec, inputs.as_ref(), &inputs_field, &mut at);
            for mut e in at.errors {
                if e.pos == Pos::default() {
                    e.pos = item.pos;
                }
                c.errors.push(e);
            }
            c.warnings.append(&mut at.warnings);
        }
    }
    let on_failure = match item.get("onFailure") {
        None => OnFailure::Abort,
        Some(n) => match n.scalar() {
            Some("Abort") => OnFailure::Abort,
            Some("Continue") => OnFailure::Continue,
            Some("Ignore") => OnFailure::Ignore,
            _ => {
                c.push(
                    n.pos,
                    format!("{field}.onFailure"),
                    "must be one of Abort, Continue, Ignore",
                );
                OnFailure::Abort
            }
        },
    };
    let max_attempts = match item.get("maxAttempts") {
        None => 1,
        Some(n) => match integer(n, &format!("{field}.maxAttempts"), c) {
            Some(v) if v >= 1 && v <= i64::from(u32::MAX) => v as u32,
            Some(_) => {
                c.push(n.pos, format!("{field}.maxAttempts"), "must be 1 or more");
                1
            }
            None => 1,
        },
    };
    let timeout_seconds = match item.get("timeoutSeconds") {
        None => Some(DEFAULT_TIMEOUT_SECONDS),
        Some(n) => match integer(n, &format!("{field}.timeoutSeconds"), c) {
            Some(-1) => None,
            Some(v) if v > MAX_TIMEOUT_SECONDS => {
                c.push(
                    n.pos,
                    format!("{field}.timeoutSeconds"),
                    format!(
                        "{v} seconds is longer than the {MAX_TIMEOUT_SECONDS} (24 hours) a step may run, or -1 for none"
                    ),
                );
                None
            }
            Some(v) if v > 0 => Some(v as u64),
            Some(_) => {
                c.push(
                    n.pos,
                    format!("{field}.timeoutSeconds"),
                    "must be a positive number of seconds, or -1 for none",
                );
                None
            }
            None => None,
        },
    };
    match action.as_str() {
        "ExecuteDocument" => {
            if item
                .get("timeoutSeconds")
                .is_some_and(|n| n.as_i64() != Some(-1))
            {
                c.push(
                    item.get("timeoutSeconds").map_or(item.pos, |n| n.pos),
                    format!("{field}.timeoutSeconds"),
                    "ExecuteDocument always runs without a timeout (-1)",
                );
            }
            if item
                .get("maxAttempts")
                .is_some_and(|n| n.as_i64() != Some(1))
            {
                c.push(
                    item.get("maxAttempts").map_or(item.pos, |n| n.pos),
                    format!("{field}.maxAttempts"),
                    "ExecuteDocument always makes exactly one attempt",
                );
            }
        }
        "Reboot" if item.get("timeoutSeconds").is_some() => {
            c.push(
                item.get("timeoutSeconds").map_or(item.pos, |n| n.pos),
                format!("{field}.timeoutSeconds"),
                "Reboot does not support a step timeout",
            );
        }
        _ => {}
    }
    let timeout_seconds = if action == "ExecuteDocument" || action == "Reboot" {
        None
    } else {
        timeout_seconds
    };
    let condition = item
        .get("if")
        .and_then(|n| condition::parse_if(n, &format!("{field}.if"), c));
    let repeat = item
        .get("loop")
        .and_then(|n| parse_loop(n, &format!("{field}.loop"), c));
    Some(Step {
        name,
        pos: item.pos,
        action,
        inputs,
        on_failure,
        max_attempts,
        timeout_seconds,
        condition,
        repeat,
    })
}

fn parse_loop(node: &Node, field: &str, c: &mut Collector) -> Option<Loop> {
    if node.as_map().is_none() {
        c.push(
            node.pos,
            field,
            format!(
                "expected a map with for or forEach, found a {}",
                node.kind()
            ),
        );
        return None;
    }
    unknown_keys(node, &["name", "for", "forEach"], field, c);
    let name = match node.get("name") {
        Some(n) => {
            let name = string(n, &format!("{field}.name"), c)?;
            if !vars::is_name(&name) || name == "loop" {
                c.push(
                    n.pos,
                    format!("{field}.name"),
                    format!(
                        "{name:?} is not a valid loop name (letters, digits, - or _; not \"loop\")"
                    ),
                );
            }
            Some(name)
        }
        None => None,
    };
    let kind = match (node.get("for"), node.get("forEach")) {
        (Some(_), Some(_)) | (None, None) => {
            c.push(node.pos, field, "a loop has exactly one of for or forEach");
            return None;
        }
        (Some(f), None) => {
            let here = format!("{field}.for");
            if f.as_map().is_none() {
                c.push(
                    f.pos,
                    &here,
                    format!(
                        "expected a map with start, end and updateBy, found a {}",
                        f.kind()
                    ),
                );
                return None;
            }
            unknown_keys(f, &["start", "end", "updateBy"], &here, c);
            let mut get = |k: &str| match f.get(k) {
                Some(n) => integer(n, &format!("{here}.{k}"), c),
                None => {
                    c.push(f.pos, format!("{here}.{k}"), "required field is missing");
                    None
                }
            };
            let (start, end, update_by) = (get("start"), get("end"), get("updateBy"));
            let (start, end, update_by) = (start?, end?, update_by?);
            if update_by == 0 || (end - start).signum() * update_by.signum() < 0 {
                c.push(f.pos, &here, format!("start {start}, end {end} and updateBy {update_by} never reach the end: an infinite loop"));
                return None;
            }
            let count = (end - start) / update_by + 1;
            if count > MAX_LOOP_ITERATIONS {
                c.push(
                    f.pos,
                    &here,
                    format!("{count} iterations: at most {MAX_LOOP_ITERATIONS} are allowed"),
                );
                return None;
            }
            LoopKind::For {
                start,
                end,
                update_by,
            }
        }
        (None, Some(e)) => {
            let here = format!("{field}.forEach");
            if let Some(items) = e.as_seq() {
                for (i, item) in items.iter().enumerate() {
                    if item.scalar().is_none() {
                        c.push(
                            item.pos,
                            format!("{here}[{i}]"),
                            format!("loops take strings, found a {}", item.kind()),
                        );
                    }
                }
                LoopKind::ForEachList(items.to_vec())
            } else if e.as_map().is_some() {
                unknown_keys(e, &["list", "delimiter"], &here, c);
                let Some(list) = e.get("list") else {
                    c.push(e.pos, format!("{here}.list"), "required field is missing");
                    return None;
                };
                string(list, &format!("{here}.list"), c)?;
                let delimiter = match e.get("delimiter") {
                    None => ',',
                    Some(d) => {
                        let text = string(d, &format!("{here}.delimiter"), c)?;
                        let mut chars = text.chars();
                        match (chars.next(), chars.next()) {
                            (Some(ch), None) if LOOP_DELIMITERS.contains(&ch) => ch,
                            _ => {
                                c.push(
                                    d.pos,
                                    format!("{here}.delimiter"),
                                    "the delimiter is one of . , ; : - _ space, tab or newline",
                                );
                                return None;
                            }
                        }
                    }
                };
                LoopKind::ForEachString {
                    list: list.clone(),
                    delimiter,
                }
            } else {
                c.push(
                    e.pos,
                    &here,
                    format!(
                        "expected a list or a map with list and delimiter, found a {}",
                        e.kind()
                    ),
                );
                return None;
            }
        }
    };
    Some(Loop { name, kind })
}
