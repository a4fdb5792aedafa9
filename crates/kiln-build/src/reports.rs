//! `reports`: the test and code coverage report files a build leaves,
//! collected after its phases and read for their counts, as CodeBuild's
//! report groups are. A report with failed tests does not fail the build:
//! on CodeBuild the build's status is its commands', and a report only has
//! a status of its own (SUCCEEDED, FAILED, INCOMPLETE).

use std::fs;
use std::io::Read;
use std::path::Path;

use kiln_doc::yaml::Node;
use serde::{Deserialize, Serialize};

use crate::buildspec::{Parser, join};
use crate::glob;

/// The file formats CodeBuild reads: six test formats, four coverage ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileFormat {
    Junitxml,
    Cucumberjson,
    Nunitxml,
    Nunit3xml,
    Testngxml,
    Visualstudiotrx,
    Cloverxml,
    Coberturaxml,
    Jacocoxml,
    Simplecov,
}

impl FileFormat {
    const ALL: [FileFormat; 10] = [
        FileFormat::Junitxml,
        FileFormat::Cucumberjson,
        FileFormat::Nunitxml,
        FileFormat::Nunit3xml,
        FileFormat::Testngxml,
        FileFormat::Visualstudiotrx,
        FileFormat::Cloverxml,
        FileFormat::Coberturaxml,
        FileFormat::Jacocoxml,
        FileFormat::Simplecov,
    ];

    /// The name in the buildspec, e.g. `JUNITXML`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Junitxml => "JUNITXML",
            FileFormat::Cucumberjson => "CUCUMBERJSON",
            FileFormat::Nunitxml => "NUNITXML",
            FileFormat::Nunit3xml => "NUNIT3XML",
            FileFormat::Testngxml => "TESTNGXML",
            FileFormat::Visualstudiotrx => "VISUALSTUDIOTRX",
            FileFormat::Cloverxml => "CLOVERXML",
            FileFormat::Coberturaxml => "COBERTURAXML",
            FileFormat::Jacocoxml => "JACOCOXML",
            FileFormat::Simplecov => "SIMPLECOV",
        }
    }

    pub fn coverage(self) -> bool {
        matches!(
            self,
            FileFormat::Cloverxml
                | FileFormat::Coberturaxml
                | FileFormat::Jacocoxml
                | FileFormat::Simplecov
        )
    }
}

/// One report group of the buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportGroup {
    /// The group's name (or ARN), as written.
    pub name: String,
    pub files: Vec<String>,
    pub base_directory: Option<String>,
    pub file_format: FileFormat,
}

/// `reports:` of a buildspec.
pub(crate) fn parse(p: &mut Parser, node: &Node) -> Vec<ReportGroup> {
    const KNOWN: &[&str] = &["files", "base-directory", "discard-paths", "file-format"];
    let Some(entries) = node.as_map() else {
        p.c.push(
            node.pos,
            "reports",
            format!("must be a map of report groups, not a {}", node.kind()),
        );
        return Vec::new();
    };
    let mut groups = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            p.c.push(k.pos, "reports", "report group names must be strings");
            continue;
        };
        let base = join("reports", name);
        let mut group = ReportGroup {
            name: name.to_string(),
            files: Vec::new(),
            base_directory: None,
            file_format: FileFormat::Junitxml,
        };
        if v.as_map().is_some() && v.get("files").is_none() {
            p.c.push(v.pos, join(&base, "files"), "missing");
        }
        for (key, val) in p.map(v, &base, KNOWN) {
            let field = join(&base, key);
            match key {
                "files" => group.files = p.strings(val, &field),
                "base-directory" => group.base_directory = p.string(val, &field),
                // Report files are read where they are; their names do not matter.
                "discard-paths" => {
                    p.yes_no(val, &field);
                }
                "file-format" => match val.scalar().and_then(|s| {
                    // Real buildspecs write JunitXml and VisualStudioTrx too.
                    FileFormat::ALL
                        .into_iter()
                        .find(|f| f.as_str().eq_ignore_ascii_case(s))
                }) {
                    Some(f) => group.file_format = f,
                    None => p.c.push(
                        val.pos,
                        &field,
                        format!(
                            "must be one of {}",
                            FileFormat::ALL.map(FileFormat::as_str).join(", ")
                        ),
                    ),
                },
                _ => unreachable!("key checked against KNOWN"),
            }
        }
        groups.push(group);
    }
    groups
}

/// A failed test case, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedTest {
    pub name: String,
    /// The first line of its failure message, shortened.
    pub message: String,
}

/// One report group's report from one build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub group: String,
    /// TEST or CODE_COVERAGE.
    pub kind: String,
    pub format: FileFormat,
    /// SUCCEEDED, FAILED (a test failed) or INCOMPLETE (no file, or one
    /// that does not parse).
    pub status: String,
    /// The report files, relative to the source directory.
    pub files: Vec<String>,
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub failed_tests: Vec<FailedTest>,
    /// Coverage reports: the percentage of lines covered, when the file says.
    pub line_coverage: Option<f64>,
    pub error: Option<String>,
}

/// The build log's lines on `reports`: counts and failed test names.
pub fn summary(reports: &[Report]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in reports {
        lines.push(format!(
            "Report group {} ({}): {}, {} tests: {} passed, {} failed, {} skipped{}{}",
            r.group,
            r.format.as_str(),
            r.status,
            r.total,
            r.passed,
            r.failed,
            r.skipped,
            r.line_coverage
                .map(|c| format!(", {c:.1}% of lines covered"))
                .unwrap_or_default(),
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        for t in &r.failed_tests {
            lines.push(format!("  failed: {}: {}", t.name, t.message));
        }
    }
    lines
}

/// Report files larger than this are not read.
const MAX_FILE: u64 = 64 << 20;
/// Failed test names kept per report.
const MAX_FAILED: usize = 100;
/// Report files kept per group.
const MAX_FILES: usize = 500;

/// Collects every group's report from `src`, the build's source directory.
pub fn collect(src: &Path, groups: &[ReportGroup]) -> Vec<Report> {
    groups.iter().map(|g| collect_group(src, g)).collect()
}

fn collect_group(src: &Path, g: &ReportGroup) -> Report {
    let mut report = Report {
        group: g.name.clone(),
        kind: if g.file_format.coverage() {
            "CODE_COVERAGE"
        } else {
            "TEST"
        }
        .into(),
        format: g.file_format,
        status: "SUCCEEDED".into(),
        files: Vec::new(),
        total: 0,
        passed: 0,
        failed: 0,
        skipped: 0,
        failed_tests: Vec::new(),
        line_coverage: None,
        error: None,
    };
    let base_rel = g.base_directory.as_deref().unwrap_or("");
    let Some(base_rel) = crate::artifacts::source_relative(base_rel) else {
        report.status = "INCOMPLETE".into();
        report.error = Some(format!(
            "reports.{}.base-directory {base_rel:?} is outside the source directory",
            g.name
        ));
        return report;
    };
    let mut found = crate::files::regular_files(&src.join(&base_rel));
    found.sort();
    found.retain(|rel| g.files.iter().any(|pat| glob::matches(pat, rel)));
    found.truncate(MAX_FILES);
    if found.is_empty() {
        report.status = "INCOMPLETE".into();
        report.error = Some(format!(
            "no report files match reports.{}.files {:?}",
            g.name, g.files
        ));
        return report;
    }
    for rel in found {
        let shown = if base_rel.is_empty() {
            rel.clone()
        } else {
            format!("{base_rel}/{rel}")
        };
        let path = src.join(&shown);
        match read_limited(&path).and_then(|text| parse_file(g.file_format, &text, &mut report)) {
            Ok(()) => {}
            Err(e) => {
                report.status = "INCOMPLETE".into();
                report.error.get_or_insert(format!("{shown}: {e}"));
            }
        }
        report.files.push(shown);
    }
    if report.failed > 0 && report.status == "SUCCEEDED" {
        report.status = "FAILED".into();
    }
    report
}

fn read_limited(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {} MiB", MAX_FILE >> 20));
    }
    Ok(text)
}

/// The first line of a failure message, at most 200 characters.
fn first_line(s: &str) -> String {
    let line = s.trim().lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

#[derive(PartialEq)]
enum Outcome {
    Passed,
    Failed(String),
    Skipped,
}

fn count(report: &mut Report, name: String, outcome: Outcome) {
    report.total += 1;
    match outcome {
        Outcome::Passed => report.passed += 1,
        Outcome::Skipped => report.skipped += 1,
        Outcome::Failed(message) => {
            report.failed += 1;
            if report.failed_tests.len() < MAX_FAILED {
                report.failed_tests.push(FailedTest { name, message });
            }
        }
    }
}

fn parse_file(format: FileFormat, text: &str, report: &mut Report) -> Result<(), String> {
    if matches!(format, FileFormat::Cucumberjson | FileFormat::Simplecov) {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if format == FileFormat::Cucumberjson {
            cucumber(&json, report);
        } else {
            // .last_run.json has result.line; the JSON formatter's
            // result holds covered_percent.
            let r = &json["result"];
            report.line_coverage = r["line"].as_f64().or(r["covered_percent"].as_f64());
        }
        return Ok(());
    }
    // DTDs are refused by the parser: no entity expansion.
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap_or_default().to_string();
    let elements = || root.descendants().filter(|n| n.is_element());
    match format {
        FileFormat::Junitxml => {
            for case in elements().filter(|n| n.tag_name().name() == "testcase") {
                let class = attr(case, "classname");
                let name = if class.is_empty() {
                    attr(case, "name")
                } else {
                    format!("{class}.{}", attr(case, "name"))
                };
                let child = |t: &str| {
                    case.children()
                        .find(|c| c.is_element() && c.tag_name().name() == t)
                };
                let outcome = match child("failure").or_else(|| child("error")) {
                    Some(f) => Outcome::Failed(first_line(
                        f.attribute("message").or(f.text()).unwrap_or_default(),
                    )),
                    None if child("skipped").is_some() => Outcome::Skipped,
                    None => Outcome::Passed,
                };
                count(report, name, outcome);
            }
        }
        FileFormat::Nunitxml | FileFormat::Nunit3xml => {
            for case in elements().filter(|n| n.tag_name().name() == "test-case") {
                let name = case
                    .attribute("fullname")
                    .or(case.attribute("name"))
                    .unwrap_or_default()
                    .to_string();
                let result = attr(case, "result").to_ascii_lowercase();
                let message = case
                    .descendants()
                    .find(|n| n.tag_name().name() == "message")
                    .and_then(|n| n.text())
                    .map(first_line)
                    .unwrap_or_default();
                let outcome = match result.as_str() {
                    "passed" | "success" => Outcome::Passed,
                    "failed" | "failure" | "error" => Outcome::Failed(message),
                    "" if attr(case, "executed").eq_ignore_ascii_case("false") => Outcome::Skipped,
                    "" if attr(case, "success").eq_ignore_ascii_case("false") => {
                        Outcome::Failed(message)
                    }
                    "" => Outcome::Passed,
                    _ => Outcome::Skipped,
                };
                count(report, name, outcome);
            }
        }
        FileFormat::Testngxml => {
            for m in elements().filter(|n| {
                n.tag_name().name() == "test-method" && n.attribute("is-config") != Some("true")
            }) {
                let class = m
                    .ancestors()
                    .find(|a| a.tag_name().name() == "class")
                    .map(|c| attr(c, "name"))
                    .unwrap_or_default();
                let name = if class.is_empty() {
                    attr(m, "name")
                } else {
                    format!("{class}.{}", attr(m, "name"))
                };
                let message = m
                    .descendants()
                    .find(|n| n.tag_name().name() == "message")
                    .and_then(|n| n.text())
                    .map(first_line)
                    .unwrap_or_default();
                let outcome = match attr(m, "status").as_str() {
                    "PASS" => Outcome::Passed,
                    "FAIL" => Outcome::Failed(message),
                    _ => Outcome::Skipped,
                };
                count(report, name, outcome);
            }
        }
        FileFormat::Visualstudiotrx => {
            for r in elements().filter(|n| n.tag_name().name() == "UnitTestResult") {
                let message = r
                    .descendants()
                    .find(|n| n.tag_name().name() == "Message")
                    .and_then(|n| n.text())
                    .map(first_line)
                    .unwrap_or_default();
                let outcome = match attr(r, "outcome").as_str() {
                    "Passed" => Outcome::Passed,
                    "Failed" | "Error" | "Timeout" | "Aborted" => Outcome::Failed(message),
                    _ => Outcome::Skipped,
                };
                count(report, attr(r, "testName"), outcome);
            }
        }
        FileFormat::Coberturaxml => {
            report.line_coverage = root
                .attribute("line-rate")
                .and_then(|r| r.parse::<f64>().ok())
                .map(|r| r * 100.0);
        }
        FileFormat::Jacocoxml => {
            // The report's own counters are its direct children.
            report.line_coverage = root
                .children()
                .find(|c| c.tag_name().name() == "counter" && c.attribute("type") == Some("LINE"))
                .and_then(|c| ratio(c.attribute("covered")?, c.attribute("missed")?, true));
        }
        FileFormat::Cloverxml => {
            report.line_coverage = root
                .descendants()
                .find(|n| {
                    n.tag_name().name() == "metrics"
                        && n.parent().is_some_and(|p| p.tag_name().name() == "project")
                })
                .and_then(|m| {
                    ratio(
                        m.attribute("coveredstatements")?,
                        m.attribute("statements")?,
                        false,
                    )
                });
        }
        FileFormat::Cucumberjson | FileFormat::Simplecov => unreachable!("read as JSON above"),
    }
    Ok(())
}

/// `covered` as a percentage of `covered + other` (`missed`) or of
/// `other` (a total).
fn ratio(covered: &str, other: &str, other_is_missed: bool) -> Option<f64> {
    let c: f64 = covered.parse().ok()?;
    let o: f64 = other.parse().ok()?;
    let total = if other_is_missed { c + o } else { o };
    (total > 0.0).then(|| c * 100.0 / total)
}

/// Cucumber's JSON: features, their scenarios, and each scenario's steps;
/// a scenario fails when a step does.
fn cucumber(json: &serde_json::Value, report: &mut Report) {
    for feature in json.as_array().into_iter().flatten() {
        let fname = feature["name"].as_str().unwrap_or_default();
        for sc in feature["elements"].as_array().into_iter().flatten() {
            if sc["type"] == "background" {
                continue;
            }
            let name = format!("{fname}: {}", sc["name"].as_str().unwrap_or_default());
            let steps: Vec<&serde_json::Value> = sc["before"]
                .as_array()
                .into_iter()
                .chain(sc["steps"].as_array())
                .chain(sc["after"].as_array())
                .flatten()
                .collect();
            let failed = steps.iter().find(|s| s["result"]["status"] == "failed");
            let outcome = match failed {
                Some(s) => Outcome::Failed(first_line(
                    s["result"]["error_message"].as_str().unwrap_or_default(),
                )),
                None if steps.iter().all(|s| s["result"]["status"] == "passed") => Outcome::Passed,
                None => Outcome::Skipped,
            };
            count(report, name, outcome);
        }
    }
}
