//! Conditions: the step-level `if` and the Assert action share AWSTOE's
//! comparison and logical operators.

use std::cmp::Ordering;

use crate::error::Collector;
use crate::yaml::{Node, Pos};

/// Logical operators nest at most this deep, so that a document stays
/// readable and evaluation stays bounded.
pub const MAX_NESTING: usize = 4;

#[derive(Debug, Clone)]
pub struct Condition {
    pub expr: Expr,
    pub then: Outcome,
    pub otherwise: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Execute,
    Skip,
    Abort,
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Comparison),
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub op: Op,
    /// The operator's own value: the baseline, path, binary or hash.
    pub operand: Node,
    /// The `value:` compared against the baseline.
    pub value: Option<Node>,
    /// The `path:` of a file hash comparison.
    pub path: Option<Node>,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    StringIsEmpty,
    StringIsWhitespace,
    StringEquals,
    StringLessThan,
    StringLessThanEquals,
    StringGreaterThan,
    StringGreaterThanEquals,
    PatternMatches,
    NumberEquals,
    NumberLessThan,
    NumberLessThanEquals,
    NumberGreaterThan,
    NumberGreaterThanEquals,
    BinaryExists,
    FileExists,
    FolderExists,
    FileMd5Equals,
    FileSha1Equals,
    FileSha256Equals,
    FileSha512Equals,
}

/// What each operator needs besides its own value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Value,
    Path,
}

const OPERATORS: &[(&str, Op, Needs)] = &[
    ("stringIsEmpty", Op::StringIsEmpty, Needs::Nothing),
    ("stringIsWhitespace", Op::StringIsWhitespace, Needs::Nothing),
    ("stringEquals", Op::StringEquals, Needs::Value),
    ("stringLessThan", Op::StringLessThan, Needs::Value),
    (
        "stringLessThanEquals",
        Op::StringLessThanEquals,
        Needs::Value,
    ),
    ("stringGreaterThan", Op::StringGreaterThan, Needs::Value),
    (
        "stringGreaterThanEquals",
        Op::StringGreaterThanEquals,
        Needs::Value,
    ),
    ("patternMatches", Op::PatternMatches, Needs::Value),
    ("numberEquals", Op::NumberEquals, Needs::Value),
    ("numberLessThan", Op::NumberLessThan, Needs::Value),
    (
        "numberLessThanEquals",
        Op::NumberLessThanEquals,
        Needs::Value,
    ),
    ("numberGreaterThan", Op::NumberGreaterThan, Needs::Value),
    (
        "numberGreaterThanEquals",
        Op::NumberGreaterThanEquals,
        Needs::Value,
    ),
    ("binaryExists", Op::BinaryExists, Needs::Nothing),
    ("fileExists", Op::FileExists, Needs::Nothing),
    ("folderExists", Op::FolderExists, Needs::Nothing),
    ("fileMD5Equals", Op::FileMd5Equals, Needs::Path),
    ("fileSHA1Equals", Op::FileSha1Equals, Needs::Path),
    ("fileSHA256Equals", Op::FileSha256Equals, Needs::Path),
    ("fileSHA512Equals", Op::FileSha512Equals, Needs::Path),
];

fn operator(key: &str) -> Option<(Op, Needs)> {
    // AWS's own examples spell some operators with a lower-case letter
    // inside (`stringlessThan`), so names match case-insensitively.
    OPERATORS
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, op, needs)| (*op, *needs))
}

/// Parses a step's `if`: a map holding one operator plus optional
/// `then` / `else`, or the documented one-item list of such a map.
pub fn parse_if(node: &Node, field: &str, c: &mut Collector) -> Option<Condition> {
    let node = match node.as_seq() {
        Some([only]) => only,
        Some(_) => {
            c.push(
                node.pos,
                field,
                "`if` holds exactly one condition; combine several with and / or",
            );
            return None;
        }
        None => node,
    };
    let mut then = Outcome::Execute;
    let mut otherwise = Outcome::Skip;
    for (key, value) in node.as_map().unwrap_or_default() {
        let slot = match key.scalar() {
            Some("then") => &mut then,
            Some("else") => &mut otherwise,
            _ => continue,
        };
        match value.scalar() {
            Some("Execute") => *slot = Outcome::Execute,
            Some("Skip") => *slot = Outcome::Skip,
            Some("Abort") => *slot = Outcome::Abort,
            _ => c.push(
                value.pos,
                format!("{field}.{}", key.scalar().unwrap_or_default()),
                "must be one of Execute, Skip, Abort",
            ),
        }
    }
    let expr = parse_expr(node, field, &["then", "else"], 0, c)?;
    Some(Condition {
        expr,
        then,
        otherwise,
    })
}

/// Parses one expression: a map with exactly one operator key.
pub fn parse_expr(
    node: &Node,
    field: &str,
    extra: &[&str],
    depth: usize,
    c: &mut Collector,
) -> Option<Expr> {
    let Some(entries) = node.as_map() else {
        c.push(
            node.pos,
            field,
            format!(
                "expected a map holding one operator, found a {}",
                node.kind()
            ),
        );
        return None;
    };
    let mut found: Vec<(&Node, &Node)> = Vec::new();
    for (key, value) in entries {
        let name = key.scalar().unwrap_or_default();
        if matches!(name, "and" | "or" | "not") || operator(name).is_some() {
            found.push((key, value));
        } else if !matches!(name, "value" | "path") && !extra.contains(&name) {
            c.push(
                key.pos,
                format!("{field}.{name}"),
                "unknown operator or field",
            );
        }
    }
    let (key, value) = match found.as_slice() {
        [one] => *one,
        [] => {
            c.push(node.pos, field, "no comparison or logical operator");
            return None;
        }
        [_, second, ..] => {
            c.push(
                second.0.pos,
                field,
                "more than one operator; combine them with and / or",
            );
            return None;
        }
    };
    let name = key.scalar().unwrap_or_default();
    let here = format!("{field}.{name}");
    if matches!(name, "and" | "or" | "not") {
        for (k, _) in entries
            .iter()
            .filter(|(k, _)| matches!(k.scalar(), Some("value" | "path")))
        {
            let key = k.scalar().unwrap_or_default();
            c.push(
                k.pos,
                format!("{field}.{key}"),
                format!("`{key}` belongs to a comparison, not to {name}"),
            );
        }
        if depth + 1 > MAX_NESTING {
            c.push(
                key.pos,
                &here,
                format!("logical operators nested deeper than {MAX_NESTING} levels"),
            );
            return None;
        }
        let operands: Vec<&Node> = match (name, value.as_seq()) {
            (_, Some(items)) => items.iter().collect(),
            ("not", None) => vec![value],
            (_, None) => {
                c.push(
                    value.pos,
                    &here,
                    format!("expected a list of conditions, found a {}", value.kind()),
                );
                return None;
            }
        };
        if name == "not" && operands.len() != 1 {
            c.push(value.pos, &here, "`not` negates exactly one condition");
            return None;
        }
        // One operand is accepted, as AWSTOE does: it is that condition.
        if name != "not" && operands.is_empty() {
            c.push(
                value.pos,
                &here,
                format!("`{name}` needs one or more conditions"),
            );
            return None;
        }
        let mut parsed = Vec::new();
        for (i, operand) in operands.iter().enumerate() {
            parsed.push(parse_expr(
                operand,
                &format!("{here}[{i}]"),
                &[],
                depth + 1,
                c,
            )?);
        }
        return Some(match name {
            "and" => Expr::And(parsed),
            "or" => Expr::Or(parsed),
            _ => Expr::Not(Box::new(parsed.remove(0))),
        });
    }
    let (op, needs) = operator(name)?;
    if value.as_map().is_some() || value.as_seq().is_some() {
        c.push(
            value.pos,
            &here,
            format!("expected a single value, found a {}", value.kind()),
        );
        return None;
    }
    let sibling = |k: &str| node.get(k).cloned();
    let (value_node, path_node) = (sibling("value"), sibling("path"));
    for (k, _) in entries {
        let key = k.scalar().unwrap_or_default();
        let wanted = match key {
            "value" => Needs::Value,
            "path" => Needs::Path,
            _ => continue,
        };
        if needs != wanted {
            c.push(
                k.pos,
                format!("{field}.{key}"),
                format!("{name} takes no `{key}`"),
            );
        }
    }
    match needs {
        Needs::Value if value_node.is_none() => {
            c.push(key.pos, &here, "needs a `value` to compare with");
            return None;
        }
        Needs::Path if path_node.is_none() => {
            c.push(key.pos, &here, "needs the `path` of the file to hash");
            return None;
        }
        _ => {}
    }
    if op == Op::PatternMatches
        && let Some(pattern) = value.scalar().filter(|p| !p.contains("{{"))
        && let Err(e) = regex_lite::Regex::new(pattern)
    {
        c.push(value.pos, &here, format!("invalid regular expression: {e}"));
    }
    Some(Expr::Compare(Comparison {
        op,
        operand: value.clone(),
        value: value_node,
        path: path_node,
        pos: key.pos,
    }))
}

impl Expr {
    /// Every node whose text may hold `{{ variables }}`.
    pub fn templated_nodes<'a>(&'a self, out: &mut Vec<&'a Node>) {
        match self {
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.templated_nodes(out)),
            Expr::Not(inner) => inner.templated_nodes(out),
            Expr::Compare(cmp) => {
                out.push(&cmp.operand);
                out.extend(cmp.value.iter());
                out.extend(cmp.path.iter());
            }
        }
    }
}

/// What evaluation needs from the instance it runs against.
pub trait Facts {
    /// The node's text with variables substituted.
    fn text(&mut self, node: &Node) -> Result<String, String>;
    fn is_file(&mut self, path: &str) -> bool;
    fn is_dir(&mut self, path: &str) -> bool;
    fn binary_exists(&mut self, name: &str) -> bool;
    fn read(&mut self, path: &str) -> Result<Vec<u8>, String>;
}

/// Evaluates an expression; `and` / `or` stop at the first deciding operand.
pub fn eval(expr: &Expr, facts: &mut dyn Facts) -> Result<bool, String> {
    Ok(match expr {
        Expr::And(items) => {
            for item in items {
                if !eval(item, facts)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Or(items) => {
            for item in items {
                if eval(item, facts)? {
                    return Ok(true);
                }
            }
            false
        }
        Expr::Not(inner) => !eval(inner, facts)?,
        Expr::Compare(cmp) => compare(cmp, facts)?,
    })
}

fn compare(cmp: &Comparison, facts: &mut dyn Facts) -> Result<bool, String> {
    let operand = facts.text(&cmp.operand)?;
    let value = match &cmp.value {
        Some(v) => facts.text(v)?,
        None => String::new(),
    };
    let strings = || operand.to_lowercase().cmp(&value.to_lowercase()).reverse();
    // The documented direction is `value <op> baseline`, so `ord` compares
    // value to operand.
    let numbers =
        || -> Option<Ordering> { parse_number(&value)?.partial_cmp(&parse_number(&operand)?) };
    Ok(match cmp.op {
        Op::StringIsEmpty => operand.is_empty(),
        Op::StringIsWhitespace => !operand.is_empty() && operand.chars().all(char::is_whitespace),
        Op::StringEquals => strings() == Ordering::Equal,
        Op::StringLessThan => strings() == Ordering::Less,
        Op::StringLessThanEquals => strings() != Ordering::Greater,
        Op::StringGreaterThan => strings() == Ordering::Greater,
        Op::StringGreaterThanEquals => strings() != Ordering::Less,
        Op::PatternMatches => regex_lite::Regex::new(&format!("(?i){operand}"))
            .map_err(|e| format!("invalid regular expression {operand:?}: {e}"))?
            .is_match(&value),
        Op::NumberEquals => numbers() == Some(Ordering::Equal),
        Op::NumberLessThan => numbers() == Some(Ordering::Less),
        Op::NumberLessThanEquals => matches!(numbers(), Some(Ordering::Less | Ordering::Equal)),
        Op::NumberGreaterThan => numbers() == Some(Ordering::Greater),
        Op::NumberGreaterThanEquals => {
            matches!(numbers(), Some(Ordering::Greater | Ordering::Equal))
        }
        Op::BinaryExists => facts.binary_exists(&operand),
        Op::FileExists => facts.is_file(&operand),
        Op::FolderExists => facts.is_dir(&operand),
        Op::FileMd5Equals | Op::FileSha1Equals | Op::FileSha256Equals | Op::FileSha512Equals => {
            let path = match &cmp.path {
                Some(p) => facts.text(p)?,
                None => String::new(),
            };
            if !facts.is_file(&path) {
                return Ok(false);
            }
            let data = facts.read(&path)?;
            let algorithm = match cmp.op {
                Op::FileMd5Equals => "MD5",
                Op::FileSha1Equals => "SHA1",
                Op::FileSha256Equals => "SHA256",
                _ => "SHA512",
            };
            crate::digest::hex_digest(algorithm, &data)
                .is_some_and(|d| d.eq_ignore_ascii_case(operand.trim()))
        }
    })
}

/// AWSTOE's number syntax: an optional sign, digits, an optional fraction.
fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let valid = match body.split_once('.') {
        Some((int, frac)) => {
            !frac.is_empty()
                && [int, frac]
                    .iter()
                    .all(|p| p.chars().all(|c| c.is_ascii_digit()))
        }
        None => !body.is_empty() && body.chars().all(|c| c.is_ascii_digit()),
    };
    if valid { t.parse().ok() } else { None }
}
