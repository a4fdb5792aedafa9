//! A document's `parameters` and `constants`: names, types, defaults and
//! allowed values.

use crate::document::{Constant, ParamType, Parameter};
use crate::error::Collector;
use crate::parse::{string, unknown_keys};
use crate::vars;
use crate::yaml::Node;

/// `parameters` and `constants` are lists of single-key maps.
fn named_entries<'a>(node: &'a Node, what: &str, c: &mut Collector) -> Vec<(&'a Node, &'a Node)> {
    let Some(items) = node.as_seq() else {
        c.push(
            node.pos,
            what,
            format!(
                "expected a list of single-key maps, found a {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_map() {
            Some([(key, value)]) => {
                let name = key.scalar().unwrap_or_default();
                if !vars::is_name(name) || !(3..=128).contains(&name.len()) {
                    c.push(
                        key.pos,
                        format!("{what}[{i}]"),
                        format!("{name:?} is not a valid name (3 to 128 letters, digits, - or _)"),
                    );
                } else if value.as_map().is_none() {
                    c.push(
                        value.pos,
                        format!("{what}.{name}"),
                        format!("expected a map, found a {}", value.kind()),
                    );
                } else {
                    out.push((key, value));
                }
            }
            _ => c.push(
                item.pos,
                format!("{what}[{i}]"),
                "expected a map with exactly one key, the name",
            ),
        }
    }
    out
}

fn check_string_type(node: &Node, field: &str, c: &mut Collector) {
    match node.get("type") {
        None => c.push(
            node.pos,
            format!("{field}.type"),
            "required field is missing (use string)",
        ),
        Some(t) if t.scalar() != Some("string") => {
            c.push(
                t.pos,
                format!("{field}.type"),
                format!(
                    "unsupported type {:?} (only string is supported)",
                    t.scalar().unwrap_or(t.kind())
                ),
            );
        }
        Some(_) => {}
    }
}

/// Parameter fields AWSTOE reads; others are kept as warnings, since
/// Image Builder stores documents with fields it does not act on.
const PARAMETER_FIELDS: &[&str] = &["type", "default", "description", "allowedValues"];

pub(crate) fn parameters(node: &Node, c: &mut Collector) -> Vec<Parameter> {
    let mut out = Vec::new();
    for (key, value) in named_entries(node, "parameters", c) {
        let name = key.scalar().unwrap_or_default().to_string();
        let field = format!("parameters.{name}");
        for (k, _) in value.as_map().unwrap_or_default() {
            let kname = k.scalar().unwrap_or_default();
            if !PARAMETER_FIELDS.contains(&kname) {
                c.warn(
                    k.pos,
                    format!("{field}.{kname}"),
                    format!(
                        "not a parameter field kiln knows ({}); it is ignored",
                        PARAMETER_FIELDS.join(", ")
                    ),
                );
            }
        }
        let ty = match value.get("type") {
            None => {
                c.push(
                    value.pos,
                    format!("{field}.type"),
                    "required field is missing (use string)",
                );
                ParamType::String
            }
            Some(t) => match t.scalar().and_then(ParamType::parse) {
                Some(ty) => ty,
                None => {
                    c.push(
                        t.pos,
                        format!("{field}.type"),
                        format!(
                            "unsupported type {:?} (use string, integer, boolean or stringList)",
                            t.scalar().unwrap_or(t.kind())
                        ),
                    );
                    ParamType::String
                }
            },
        };
        let default = value
            .get("default")
            .and_then(|d| parameter_value(d, ty, &format!("{field}.default"), c));
        let description = value
            .get("description")
            .and_then(|d| string(d, &format!("{field}.description"), c))
            .unwrap_or_default();
        let mut allowed_values = Vec::new();
        if let Some(list) = value.get("allowedValues") {
            let here = format!("{field}.allowedValues");
            match list.as_seq() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(v) = parameter_value(item, ty, &format!("{here}[{i}]"), c) {
                            allowed_values.push(v);
                        }
                    }
                }
                None => c.push(
                    list.pos,
                    &here,
                    format!("expected a list of values, found a {}", list.kind()),
                ),
            }
            if let (Some(d), Some(node)) = (&default, value.get("default"))
                && !allowed_values.is_empty()
                && !allowed_values.contains(d)
            {
                c.warn(
                    node.pos,
                    format!("{field}.default"),
                    format!("{d:?} is not one of the allowedValues, so the default can never run"),
                );
            }
        }
        out.push(Parameter {
            name,
            ty,
            default,
            allowed_values,
            description,
            pos: key.pos,
        });
    }
    out
}

/// A parameter's default or allowed value, as the text it is substituted as.
fn parameter_value(node: &Node, ty: ParamType, field: &str, c: &mut Collector) -> Option<String> {
    let text = match (ty, node.as_seq()) {
        (ParamType::StringList, Some(items)) => {
            let mut parts = Vec::new();
            for (i, item) in items.iter().enumerate() {
                parts.push(string(item, &format!("{field}[{i}]"), c)?);
            }
            parts.join(",")
        }
        _ => string(node, field, c)?,
    };
    if !ty.accepts(&text) {
        c.push(
            node.pos,
            field,
            format!("{text:?} is not a value of type {}", ty.as_str()),
        );
        return None;
    }
    Some(text)
}

pub(crate) fn constants(node: &Node, c: &mut Collector) -> Vec<Constant> {
    let mut out = Vec::new();
    for (key, value) in named_entries(node, "constants", c) {
        let name = key.scalar().unwrap_or_default().to_string();
        let field = format!("constants.{name}");
        unknown_keys(value, &["type", "value"], &field, c);
        check_string_type(value, &field, c);
        match value.get("value") {
            Some(v) => {
                let v = string(v, &format!("{field}.value"), c).unwrap_or_default();
                out.push(Constant {
                    name,
                    value: v,
                    pos: key.pos,
                });
            }
            None => c.push(
                value.pos,
                format!("{field}.value"),
                "required field is missing",
            ),
        }
    }
    out
}
