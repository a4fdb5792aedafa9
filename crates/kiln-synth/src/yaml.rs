//! A small YAML emitter over `serde_json::Value`: block style, two-space
//! indentation, keys sorted, strings double-quoted or, when they span
//! lines, as literal blocks. The same value always gives the same bytes,
//! whether or not serde_json keeps insertion order (its `preserve_order`
//! feature, which a dependency may turn on for the whole build).

use serde_json::Value;

pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => object(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => array(a, 0, &mut out),
        other => {
            out.push_str(&inline(other, 0));
            out.push('\n');
        }
    }
    out
}

fn object(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        child(v, indent, out);
    }
}

fn array(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key goes on the dash's line.
                let mut inner = String::new();
                object(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            _ => child(v, indent, out),
        }
    }
}

/// What follows `key:` or `-`: a scalar on the same line, or a block below.
fn child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            object(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            array(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other, indent + 2));
            out.push('\n');
        }
    }
}

fn inline(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, indent),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn string(s: &str, indent: usize) -> String {
    if literal_block_fits(s) {
        let body = s.strip_suffix('\n').unwrap_or(s);
        let chomp = if s.ends_with('\n') { "" } else { "-" };
        let pad = " ".repeat(indent);
        let mut out = format!("|{chomp}");
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
                out.push_str(line);
            }
        }
        return out;
    }
    // JSON's double-quoted strings are YAML's, escapes included.
    serde_json::to_string(s).expect("a string serializes")
}

/// A literal block keeps multi-line text (component documents, scripts)
/// readable; it cannot hold leading spaces on the first line, trailing
/// spaces, tabs, control characters or more than one final newline.
fn literal_block_fits(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.ends_with("\n\n")
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !s.split('\n').any(|l| l.ends_with(' '))
}

fn key(k: &str) -> String {
    let plain = k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
        && !k.ends_with(':')
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        serde_json::to_string(k).expect("a string serializes")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn nested_values_and_multi_line_strings() {
        let v = json!({
            "Resources": { "B": { "Type": "AWS::S3::Bucket", "Properties": {} } },
            "List": [ { "a": 1, "b": [true, null] }, "x" ],
            "Text": "line one\n  two\n",
            "yes": "quoted key",
        });
        assert_eq!(
            super::to_string(&v),
            "List:\n  - a: 1\n    b:\n      - true\n      - null\n  - \"x\"\nResources:\n  B:\n    Properties: {}\n    Type: \"AWS::S3::Bucket\"\nText: |\n  line one\n    two\n\"yes\": \"quoted key\"\n"
        );
    }

    #[test]
    fn strings_that_a_block_cannot_hold_are_quoted() {
        let v = json!({ "a": " lead\nx", "b": "tab\there\nx", "c": "trail \nx" });
        assert_eq!(
            super::to_string(&v),
            "a: \" lead\\nx\"\nb: \"tab\\there\\nx\"\nc: \"trail \\nx\"\n"
        );
    }
}
