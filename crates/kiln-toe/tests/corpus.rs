//! The document corpus under `tests/corpus`.
//!
//! `valid/**/*.yaml` must load without a diagnostic, and together they must
//! use every action module, every comparison operator and every form of the
//! step fields. Each `invalid/*.yaml` holds one problem and names, on its
//! first line, where the first diagnostic must point:
//!
//! ```text
//! # expect: LINE:COL FIELD-SUBSTRING | MESSAGE-SUBSTRING
//! ```
//!
//! FIELD-SUBSTRING may be empty (YAML syntax errors name no field).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_toe::condition::{Expr, Outcome};
use kiln_toe::document::{LoopKind, OnFailure};
use kiln_toe::{DocError, Document};

/// Every comparison operator AWSTOE documents, spelled as in its docs.
const OPERATORS: &[&str] = &[
    "stringIsEmpty",
    "stringIsWhitespace",
    "stringEquals",
    "stringLessThan",
    "stringLessThanEquals",
    "stringGreaterThan",
    "stringGreaterThanEquals",
    "patternMatches",
    "numberEquals",
    "numberLessThan",
    "numberLessThanEquals",
    "numberGreaterThan",
    "numberGreaterThanEquals",
    "binaryExists",
    "fileExists",
    "folderExists",
    "fileMD5Equals",
    "fileSHA1Equals",
    "fileSHA256Equals",
    "fileSHA512Equals",
];

const PHASES: &[&str] = &["build", "validate", "test", "container-host-test"];

fn corpus(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir)
}

/// Every `*.yaml` below `dir`, sorted, so that failures read in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The mapping keys of a document's text, as written (`- key:` or `key:`).
fn keys(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("- ").unwrap_or(l).trim_start();
            let (key, _) = l.split_once(':')?;
            (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .then_some(key)
        })
        .collect()
}

/// What the valid corpus uses, gathered from the loaded documents.
#[derive(Default)]
struct Coverage {
    actions: BTreeSet<String>,
    operators: BTreeSet<String>,
    phases: BTreeSet<String>,
    features: BTreeSet<&'static str>,
}

impl Coverage {
    fn expr(&mut self, expr: &Expr, depth: usize) {
        match expr {
            Expr::And(items) | Expr::Or(items) => {
                self.features.insert(if matches!(expr, Expr::And(_)) {
                    "and"
                } else {
                    "or"
                });
                items.iter().for_each(|e| self.expr(e, depth + 1));
            }
            Expr::Not(inner) => {
                self.features.insert("not");
                self.expr(inner, depth + 1);
            }
            Expr::Compare(_) => {
                if depth >= 4 {
                    self.features.insert("four levels of and / or / not");
                }
            }
        }
    }

    fn document(&mut self, doc: &Document, text: &str) {
        if doc.parameters.iter().any(|p| p.default.is_some()) {
            self.features.insert("parameter with a default");
        }
        if doc.parameters.iter().any(|p| p.default.is_none()) {
            self.features.insert("parameter without a default");
        }
        if !doc.constants.is_empty() {
            self.features.insert("constants");
        }
        for line in text.lines().map(str::trim) {
            match line {
                "schemaVersion: 1.0" => self.features.insert("schemaVersion: 1.0"),
                "schemaVersion: \"1.0\"" | "schemaVersion: '1.0'" => {
                    self.features.insert("schemaVersion: \"1.0\"")
                }
                "schemaVersion: 1" => self.features.insert("schemaVersion: 1"),
                _ => false,
            };
        }
        if text.contains(".outputs.") {
            self.features.insert("chaining to outputs");
        }
        if text.contains(".inputs[0].") {
            self.features.insert("chaining to inputs by index");
        }
        if text.contains("{{ loop.index }}") {
            self.features.insert("{{ loop.index }}");
        }
        if text.contains("{{ loop.value }}") {
            self.features.insert("{{ loop.value }}");
        }
        for phase in &doc.phases {
            self.phases.insert(phase.name.clone());
            for step in &phase.steps {
                self.step(step);
            }
        }
    }

    fn step(&mut self, step: &kiln_toe::document::Step) {
        self.actions.insert(step.action.clone());
        match step.inputs.as_ref().map(|n| &n.value) {
            Some(kiln_toe::yaml::Value::Map(_)) => self.features.insert("inputs as a map"),
            Some(kiln_toe::yaml::Value::Seq(_)) => self.features.insert("inputs as a list"),
            _ => false,
        };
        self.features.insert(match step.on_failure {
            OnFailure::Abort => "onFailure Abort",
            OnFailure::Continue => "onFailure Continue",
            OnFailure::Ignore => "onFailure Ignore",
        });
        if step.max_attempts > 1 {
            self.features.insert("maxAttempts");
        }
        if step.timeout_seconds.is_none()
            && !matches!(step.action.as_str(), "ExecuteDocument" | "Reboot")
        {
            self.features.insert("timeoutSeconds -1");
        }
        if let Some(cond) = &step.condition {
            self.expr(&cond.expr, 0);
            for (what, outcome) in [("then", cond.then), ("else", cond.otherwise)] {
                self.features.insert(match (what, outcome) {
                    ("then", Outcome::Execute) => "then Execute",
                    ("then", Outcome::Skip) => "then Skip",
                    ("then", Outcome::Abort) => "then Abort",
                    (_, Outcome::Execute) => "else Execute",
                    (_, Outcome::Skip) => "else Skip",
                    (_, Outcome::Abort) => "else Abort",
                });
            }
        }
        if let Some(l) = &step.repeat {
            if l.name.is_some() {
                self.features.insert("named loop");
            }
            self.features.insert(match &l.kind {
                LoopKind::For { update_by, .. } if *update_by > 0 => "for counting up",
                LoopKind::For { .. } => "for counting down",
                LoopKind::ForEachList(_) => "forEach list",
                LoopKind::ForEachString { delimiter: ',', .. } => {
                    "forEach string, default delimiter"
                }
                LoopKind::ForEachString { .. } => "forEach string, own delimiter",
            });
        }
    }
}

/// An ExecuteDocument step's local target must be a file of the corpus.
fn check_targets(doc: &Document, path: &Path, problems: &mut Vec<String>) {
    for step in doc
        .phases
        .iter()
        .flat_map(|p| &p.steps)
        .filter(|s| s.action == "ExecuteDocument")
    {
        let target = step
            .inputs
            .as_ref()
            .and_then(|i| i.get("document"))
            .and_then(|d| d.scalar());
        let Some(target) = target.filter(|t| !t.contains("{{") && !t.contains("://")) else {
            continue;
        };
        let resolved = path
            .parent()
            .expect("a corpus file has a parent")
            .join(target);
        if !resolved.is_file() {
            problems.push(format!(
                "{}: step {} runs {target}, which is not a file",
                path.display(),
                step.name
            ));
        }
    }
}

#[test]
fn valid_documents_load_and_cover_everything() {
    let files = yaml_files(&corpus("valid"));
    assert!(
        files
            .iter()
            .any(|f| f.parent().is_some_and(|p| p.ends_with("nested"))),
        "nested/ documents are missing"
    );
    let mut problems = Vec::new();
    let mut coverage = Coverage::default();
    for path in &files {
        let text = read(path);
        coverage.operators.extend(
            keys(&text)
                .into_iter()
                .filter(|k| OPERATORS.contains(k))
                .map(str::to_string),
        );
        match kiln_toe::load(path) {
            Ok(doc) => {
                if !doc.warnings.is_empty() {
                    problems.push(format!(
                        "{} has warnings:\n{}",
                        path.display(),
                        kiln_toe::Diagnostics(doc.warnings.clone())
                    ));
                }
                check_targets(&doc, path, &mut problems);
                coverage.document(&doc, &text);
            }
            Err(diagnostics) => {
                problems.push(format!("{} does not load:\n{diagnostics}", path.display()))
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let missing = |want: &mut dyn Iterator<Item = &str>, have: &BTreeSet<String>| -> Vec<String> {
        want.filter(|w| !have.contains(*w))
            .map(str::to_string)
            .collect()
    };
    let actions = missing(
        &mut kiln_toe::schema::ACTIONS.iter().map(|a| a.name),
        &coverage.actions,
    );
    assert!(
        actions.is_empty(),
        "no valid document uses the action(s) {actions:?}"
    );
    let operators = missing(&mut OPERATORS.iter().copied(), &coverage.operators);
    assert!(
        operators.is_empty(),
        "no valid document uses the operator(s) {operators:?}"
    );
    let phases = missing(&mut PHASES.iter().copied(), &coverage.phases);
    assert!(
        phases.is_empty(),
        "no valid document has the phase(s) {phases:?}"
    );
    let features = [
        "parameter with a default",
        "parameter without a default",
        "constants",
        "schemaVersion: 1.0",
        "schemaVersion: \"1.0\"",
        "schemaVersion: 1",
        "chaining to outputs",
        "chaining to inputs by index",
        "inputs as a map",
        "inputs as a list",
        "onFailure Abort",
        "onFailure Continue",
        "onFailure Ignore",
        "maxAttempts",
        "timeoutSeconds -1",
        "and",
        "or",
        "not",
        "four levels of and / or / not",
        "then Execute",
        "then Skip",
        "then Abort",
        "else Execute",
        "else Skip",
        "else Abort",
        "named loop",
        "for counting up",
        "for counting down",
        "forEach list",
        "forEach string, default delimiter",
        "forEach string, own delimiter",
        "{{ loop.index }}",
        "{{ loop.value }}",
    ];
    let features: Vec<&str> = features
        .into_iter()
        .filter(|f| !coverage.features.contains(f))
        .collect();
    assert!(features.is_empty(), "no valid document shows {features:?}");
}

/// The `# expect:` line of an invalid document.
#[derive(Debug)]
struct Expect {
    line: usize,
    col: usize,
    field: String,
    message: String,
}

fn expectation(path: &Path, text: &str) -> Expect {
    header(path, text, "# expect:")
}

/// The `# PREFIX LINE:COL FIELD | MESSAGE` first line of a corpus document.
fn header(path: &Path, text: &str, prefix: &str) -> Expect {
    let bad = |why: &str| -> ! {
        panic!(
            "{}: the first line must be `{prefix} LINE:COL FIELD | MESSAGE` ({why})",
            path.display()
        )
    };
    let first = text.lines().next().unwrap_or_default();
    let Some(rest) = first.strip_prefix(prefix) else {
        bad(&format!("no `{prefix}`"))
    };
    let rest = rest.trim_start();
    let (pos, rest) = rest
        .split_once(char::is_whitespace)
        .unwrap_or_else(|| bad("no position"));
    let (line, col) = pos
        .split_once(':')
        .unwrap_or_else(|| bad("position is not LINE:COL"));
    let (field, message) = rest.split_once('|').unwrap_or_else(|| bad("no `|`"));
    let number = |s: &str| {
        s.parse()
            .unwrap_or_else(|_| bad("position is not LINE:COL"))
    };
    let message = message.trim();
    if message.is_empty() {
        bad("empty message");
    }
    Expect {
        line: number(line),
        col: number(col),
        field: field.trim().to_string(),
        message: message.to_string(),
    }
}

fn mismatch(path: &Path, want: &Expect, got: &DocError) -> Option<String> {
    let mut wrong = Vec::new();
    if (got.pos.line, got.pos.col) != (want.line, want.col) {
        wrong.push(format!(
            "position {}:{}, expected {}:{}",
            got.pos.line, got.pos.col, want.line, want.col
        ));
    }
    if !got.field.contains(&want.field) {
        wrong.push(format!("field {:?} lacks {:?}", got.field, want.field));
    }
    if !got.message.contains(&want.message) {
        wrong.push(format!(
            "message {:?} lacks {:?}",
            got.message, want.message
        ));
    }
    let shown = got.to_string();
    if !shown.starts_with(&path.display().to_string()) {
        wrong.push(format!(
            "display {shown:?} does not start with the file path"
        ));
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{}: {}\n  first diagnostic: {shown}",
            path.display(),
            wrong.join("; ")
        )
    })
}

#[test]
fn invalid_documents_report_their_first_problem_where_it_is() {
    let files = yaml_files(&corpus("invalid"));
    assert!(
        files.len() >= 20,
        "the invalid corpus has only {} documents",
        files.len()
    );
    let mut problems = Vec::new();
    for path in &files {
        let want = expectation(path, &read(path));
        match kiln_toe::load(path) {
            Ok(_) => problems.push(format!(
                "{}: loads, expected an error at {}:{}",
                path.display(),
                want.line,
                want.col
            )),
            Err(diagnostics) => {
                let first = diagnostics
                    .0
                    .first()
                    .unwrap_or_else(|| panic!("{}: an empty error list", path.display()));
                problems.extend(mismatch(path, &want, first));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} invalid documents:\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}

/// Documents AWS accepts but kiln finds suspect: each loads, its first
/// warning is where its `# warn:` line says, and `--strict` refuses it
/// with that same warning as its error.
#[test]
fn suspect_documents_load_with_a_warning_and_fail_strict() {
    let files = yaml_files(&corpus("suspect"));
    assert!(
        files.len() >= 5,
        "the suspect corpus has only {} documents",
        files.len()
    );
    let mut problems = Vec::new();
    for path in &files {
        let want = header(path, &read(path), "# warn:");
        match kiln_toe::load(path) {
            Err(d) => problems.push(format!("{}: refused:\n{d}", path.display())),
            Ok(doc) => match doc.warnings.first() {
                None => problems.push(format!("{}: loads without a warning", path.display())),
                Some(first) => problems.extend(mismatch(path, &want, first)),
            },
        }
        match kiln_toe::parse::load_strict(path) {
            Ok(_) => problems.push(format!("{}: loads with --strict", path.display())),
            Err(d) => problems.extend(mismatch(path, &want, &d.0[0])),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} suspect documents:\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}
