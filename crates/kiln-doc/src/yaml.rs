//! A YAML tree that remembers where every node came from.
//!
//! Component documents are validated field by field, and every error must
//! name the line and column of the offending value; serde-based loaders lose
//! positions after parsing, so the tree is composed here from the parser's
//! events.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar as written; `plain` is false for quoted and block scalars,
    /// which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// A key that came in through a `<<` merge, which the map's own keys
    /// may override.
    pub merged: bool,
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Deeply nested input is refused instead of exhausting the stack.
const MAX_DEPTH: usize = 128;

impl Node {
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "scalar",
            Value::Seq(_) => "list",
            Value::Map(_) => "map",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a scalar (numbers and booleans as written).
    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, .. } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        let text = self.scalar()?.trim();
        let digits = text.strip_prefix('+').unwrap_or(text);
        digits.parse().ok()
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// Looks a key up in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// Converts the node into JSON, typing plain scalars as YAML 1.2's core
    /// schema does.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Scalar { .. } if self.is_null() => J::Null,
            Value::Scalar { text, plain } => {
                if *plain {
                    if let Some(b) = self.as_bool() {
                        return J::Bool(b);
                    }
                    if let Ok(i) = text.parse::<i64>() {
                        return J::from(i);
                    }
                    if looks_like_float(text)
                        && let Some(n) = text
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                    {
                        return J::Number(n);
                    }
                }
                J::String(text.clone())
            }
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

/// Adds one entry to a map. A `<<` merge key brings in the entries of the
/// map (or maps) it names, and the map's own keys win over merged ones, as
/// in YAML's merge-key type.
fn insert(entries: &mut Vec<(Node, Node)>, key: Node, value: Node) -> Result<(), SyntaxError> {
    if matches!(&key.value, Value::Scalar { text, plain: true } if text == "<<") {
        let sources: Vec<&Node> = match &value.value {
            Value::Map(_) => vec![&value],
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar { .. } => Vec::new(),
        };
        if sources.is_empty() || sources.iter().any(|n| n.as_map().is_none()) {
            return Err(SyntaxError {
                pos: value.pos,
                message: "a merge key (<<) takes a map or a list of maps".into(),
            });
        }
        for source in sources {
            for (k, v) in source.as_map().unwrap_or_default() {
                if !entries.iter().any(|(e, _)| e.scalar() == k.scalar()) {
                    let mut k = k.clone();
                    k.merged = true;
                    entries.push((k, v.clone()));
                }
            }
        }
        return Ok(());
    }
    if let Some(name) = key.scalar()
        && let Some(i) = entries.iter().position(|(k, _)| k.scalar() == Some(name))
    {
        if !entries[i].0.merged {
            return Err(SyntaxError {
                pos: key.pos,
                message: format!("duplicate key {name:?}"),
            });
        }
        entries[i] = (key, value);
        return Ok(());
    }
    entries.push((key, value));
    Ok(())
}

/// Parses the first document of `src` into a [`Node`] tree.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(src);
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    // Each open collection: its node under construction and, for maps, a
    // pending key.
    enum Open {
        Seq(Node, usize),
        Map(Node, usize, Option<Node>),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;

    let at = |m: &saphyr_parser::Marker| Pos {
        line: m.line(),
        col: m.col() + 1,
    };

    loop {
        let (event, span) = match parser.next() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                return Err(SyntaxError {
                    pos: at(e.marker()),
                    message: e.info().to_string(),
                });
            }
        };
        let pos = at(&span.start);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => None,
            Event::DocumentEnd | Event::StreamEnd => {
                if root.is_some() {
                    break;
                }
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => Some((
                    Node {
                        pos,
                        merged: false,
                        value: node.value.clone(),
                    },
                    0,
                )),
                None => {
                    return Err(SyntaxError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                Some((
                    Node {
                        pos,
                        merged: false,
                        value: Value::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                    },
                    anchor,
                ))
            }
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
                stack.push(Open::Seq(
                    Node {
                        pos,
                        merged: false,
                        value: Value::Seq(Vec::new()),
                    },
                    anchor,
                ));
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
                stack.push(Open::Map(
                    Node {
                        pos,
                        merged: false,
                        value: Value::Map(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, anchor, _)) => {
                    Some((node, anchor))
                }
                None => None,
            },
        };
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => {
                root = Some(node);
            }
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        insert(entries, key, node)?;
                    }
                }
            },
        }
    }
    Ok(root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        merged: false,
        value: Value::Scalar {
            text: String::new(),
            plain: true,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let b = n.get("b").unwrap();
        assert_eq!(b.pos, Pos { line: 3, col: 3 });
        let items = b.as_seq().unwrap();
        assert_eq!(items[1].scalar(), Some("y"));
        assert_eq!(items[1].pos, Pos { line: 4, col: 5 });
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("duplicate key"));
    }

    #[test]
    fn merge_keys_bring_entries_that_own_keys_override() {
        let n = parse("base: &b {a: 1, b: 2}\nm:\n  <<: *b\n  b: 3\n").unwrap();
        let m = n.get("m").unwrap();
        assert_eq!(m.get("a").unwrap().scalar(), Some("1"));
        assert_eq!(m.get("b").unwrap().scalar(), Some("3"));
        assert!(parse("m:\n  <<: 1\n").is_err());
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let n = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn json_typing_follows_the_core_schema() {
        let n = parse("a: 1\nb: '1'\nc: true\nd: 1.5\ne: ~\n").unwrap();
        let j = n.to_json();
        assert_eq!(j["a"], serde_json::json!(1));
        assert_eq!(j["b"], serde_json::json!("1"));
        assert_eq!(j["c"], serde_json::json!(true));
        assert_eq!(j["d"], serde_json::json!(1.5));
        assert!(j["e"].is_null());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1);
    }
}
