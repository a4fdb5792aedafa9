//! Every `{{ }}` of a document must name something that exists by the
//! time its step runs: a parameter or constant, the step's own loop, an
//! earlier step's input or output, an environment or context variable.

use std::collections::HashSet;

use crate::document::*;
use crate::error::Collector;
use crate::schema;
use crate::vars::{self, Ref};
use crate::yaml::{self, Node, Pos};

/// Collects every string node of a step in which variables may appear.
fn templated_nodes(step: &Step) -> Vec<&Node> {
    fn walk<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
        match &node.value {
            yaml::Value::Scalar { .. } => out.push(node),
            yaml::Value::Seq(items) => items.iter().for_each(|n| walk(n, out)),
            yaml::Value::Map(entries) => entries.iter().for_each(|(_, v)| walk(v, out)),
        }
    }
    let mut out = Vec::new();
    if let Some(inputs) = &step.inputs {
        walk(inputs, &mut out);
    }
    if let Some(cond) = &step.condition {
        cond.expr.templated_nodes(&mut out);
    }
    if let Some(l) = &step.repeat {
        match &l.kind {
            LoopKind::ForEachList(items) => out.extend(items.iter()),
            LoopKind::ForEachString { list, .. } => out.push(list),
            LoopKind::For { .. } => {}
        }
    }
    out
}

/// Every `{{ }}` must name something that exists by the time the step runs.
pub(crate) fn check(doc: &Document, c: &mut Collector) {
    let names: HashSet<&str> = doc
        .parameters
        .iter()
        .map(|p| p.name.as_str())
        .chain(doc.constants.iter().map(|k| k.name.as_str()))
        .collect();
    for (pi, phase) in doc.phases.iter().enumerate() {
        for (si, step) in phase.steps.iter().enumerate() {
            let field = format!("phases[{}].steps[{}]", phase.name, step.name);
            for node in templated_nodes(step) {
                let Some(text) = node.scalar() else { continue };
                for (offset, inner) in vars::references(text) {
                    // Point at the `{{` itself where the scalar is one line.
                    let pos = match &node.value {
                        yaml::Value::Scalar { plain, .. } if !text.contains('\n') => Pos {
                            line: node.pos.line,
                            col: node.pos.col
                                + text[..offset].chars().count()
                                + usize::from(!plain),
                        },
                        _ => node.pos,
                    };
                    let problem = match vars::classify(inner) {
                        Ref::Name(n) if !names.contains(n.as_str()) => Some(format!(
                            "undefined variable {{{{ {n} }}}}: no parameter or constant of that name"
                        )),
                        Ref::Loop { name: Some(n), .. }
                            if step.repeat.as_ref().and_then(|l| l.name.as_deref())
                                != Some(n.as_str()) =>
                        {
                            Some(format!("{{{{ {inner} }}}} names no loop of this step"))
                        }
                        Ref::Chain {
                            phase: p,
                            step: s,
                            io,
                            index,
                            field: out,
                        } => chain_problem(doc, (pi, si), (&p, &s), io, index, &out)
                            .map(|m| format!("{{{{ {inner} }}}}: {m}")),
                        Ref::Context(key) if !vars::CONTEXT_KEYS.contains(&key.as_str()) => {
                            Some(format!(
                                "unknown context variable {key:?} (known: {})",
                                vars::CONTEXT_KEYS.join(", ")
                            ))
                        }
                        Ref::Invalid(_) => Some(format!(
                            "{{{{ {inner} }}}} is not a valid variable reference"
                        )),
                        _ => None,
                    };
                    if let Some(message) = problem {
                        c.push(pos, &field, message);
                    }
                }
            }
        }
    }
}

/// Why a chaining reference from the step at `(pi, si)` to `phase.step`
/// cannot resolve, if it cannot.
fn chain_problem(
    doc: &Document,
    (pi, si): (usize, usize),
    (phase, step): (&str, &str),
    io: vars::Io,
    index: usize,
    field: &str,
) -> Option<String> {
    let Some(p_index) = doc.phases.iter().position(|p| p.name == phase) else {
        return Some(format!("the document has no phase {phase:?}"));
    };
    let Some(s_index) = doc.phases[p_index]
        .steps
        .iter()
        .position(|s| s.name == step)
    else {
        return Some(format!("phase {phase:?} has no step {step:?}"));
    };
    if (p_index, s_index) >= (pi, si) {
        return Some("chaining refers only to steps that run earlier".into());
    }
    let target = &doc.phases[p_index].steps[s_index];
    let items = match target.inputs.as_ref().map(|n| n.as_seq()) {
        Some(Some(list)) => list.len(),
        Some(None) => 1,
        None => 0,
    };
    if io == vars::Io::Inputs && index >= items {
        return Some(format!(
            "step {step:?} has {items} input item(s); index {index} is out of range"
        ));
    }
    match io {
        vars::Io::Outputs if !schema::outputs(&target.action).contains(&field) => {
            Some(format!("{} has no output {field:?}", target.action))
        }
        vars::Io::Inputs
            if schema::spec(&target.action).is_some_and(|s| {
                !s.fields.is_empty() && !s.fields.iter().any(|f| f.name == field)
            }) =>
        {
            Some(format!("{} has no input {field:?}", target.action))
        }
        _ => None,
    }
}
