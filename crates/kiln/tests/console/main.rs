//! The web console in a real browser (Debian's headless chromium, driven
//! through chromedriver), on a real pipeline that builds, bakes and rolls
//! a group out; and /metrics, read by the Prometheus client library's own
//! text-format parser, following the same pipeline.
//!
//! Screenshots of each page go to target/console-screenshots/, printed at
//! the end.

#[path = "../common/mod.rs"]
mod common;
#[path = "../pipeline/support.rs"]
#[allow(dead_code)]
mod support;
mod webdriver;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kiln, ok};
use serde_json::Value;
use support::{BUILDSPEC, Setup, component, page, serving_yaml};
use webdriver::Browser;

/// Every sample of a scrape, as `name{label="value",...}` to its value,
/// read by prometheus_client's `text_string_to_metric_families`.
fn scrape(addr: &str, token: &str) -> BTreeMap<String, f64> {
    let text = ureq::get(format!("http://{addr}/metrics"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let venv = std::env::var_os("KILN_API_VENV").unwrap_or_else(|| "/opt/kiln-api-test".into());
    let python = Path::new(&venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `source scripts/deps.sh && kiln_install_console_test_tools`",
        python.display()
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The stage graph as the page shows it: stage name to status.
fn graph(b: &Browser) -> (String, BTreeMap<String, String>) {
    let v = b.eval(
        "const g = document.getElementById('stage-graph');
         if (!g) return null;
         return [g.dataset.execution,
                 [...g.querySelectorAll('.stage')].map(s => [s.dataset.stage, s.dataset.status])];",
    );
    if v.is_null() {
        return (String::new(), BTreeMap::new());
    }
    let stages = v[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (v[0].as_str().unwrap_or_default().to_string(), stages)
}

/// A commit message as a hostile author would write it.
const HOSTILE: &str =
    r#"second <img src=x onerror="window.kilnPwned=1"><script>window.kilnPwned=2</script>"#;

/// The group page's instance rows: version and state, sorted.
fn instances(b: &Browser) -> Vec<(String, String)> {
    let v = b.eval(
        "return [...document.querySelectorAll('tr[data-instance]')]
           .map(r => [r.dataset.version, r.dataset.state]);",
    );
    let mut rows: Vec<(String, String)> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_run_started_in_the_console_turns_green_live_and_rolls_the_group_out() {
    let yaml = serving_yaml(
        "web",
        "  capacity: { min: 1, max: 3, desired: 2 }\n  health: { path: /VERSION, interval: 200ms }\n",
    );
    // /var/tmp: the sandboxes see the repository there, whatever the
    // workspace's place.
    // A VERSION that says "broken" fails the build: the Retry button's case.
    let buildspec = BUILDSPEC.replace(
        "      - cp VERSION out/VERSION",
        "      - cp VERSION out/VERSION\n      - if grep -q broken VERSION; then echo broken; exit 3; fi",
    );
    let s = Setup::in_dir(
        tempfile::tempdir_in("/var/tmp").unwrap(),
        &yaml,
        &buildspec,
        &component(0),
    );
    let state = &s.state;
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("daemon.json")).unwrap()).unwrap();
    let addr = info["address"].as_str().unwrap().to_string();
    let read = std::fs::read_to_string(state.join("api-token-read")).unwrap();
    let read = read.trim();

    let before = scrape(&addr, read);
    assert_eq!(
        metric(
            &before,
            r#"kiln_pipeline_executions_total{outcome="Succeeded",pipeline="web"}"#
        ),
        0.0
    );

    // The first execution, from the command line: the group runs version 1.
    let out = kiln(state, &["run", "--repo", s.repo.dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = scrape(&addr, read);
    assert_eq!(
        metric(
            &first,
            r#"kiln_pipeline_executions_total{outcome="Succeeded",pipeline="web"}"#
        ),
        1.0
    );
    for stage in ["Source", "Build", "Version", "Bake", "Deploy"] {
        let key = format!(
            r#"kiln_pipeline_stage_duration_seconds_count{{pipeline="web",stage="{stage}",status="Succeeded"}}"#
        );
        assert_eq!(metric(&first, &key), 1.0, "{key}");
    }
    assert_eq!(
        metric(&first, r#"kiln_bake_cache_misses_total{pipeline="web"}"#),
        1.0
    );
    assert_eq!(
        metric(&first, r#"kiln_images{name="web",status="available"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &first,
            r#"kiln_instances{group="web",state="in-service",version="1"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &first,
            r#"kiln_health_check_instances{group="web",result="healthy"}"#
        ),
        2.0
    );
    let lb = first
        .keys()
        .filter(|k| k.starts_with("kiln_lb_requests_total{") && k.contains("outcome=\"success\""))
        .count();
    assert_eq!(lb, 2, "a request counter per instance: {first:?}");

    // A new commit for the run the console starts, whose message a hostile
    // author wrote as HTML: the page must show it as text and run nothing.
    s.repo.commit("VERSION", "second\n", HOSTILE);

    let profile = tempfile::tempdir_in("/var/tmp").unwrap();
    let b = Browser::start(profile.path());
    let shots = screenshots_dir();
    let url = ok(kiln(state, &["console", "--no-open"]));
    b.open(url.trim());
    b.click(r#"tr[data-pipeline="web"] a"#);
    b.wait("the pipeline page", Duration::from_secs(20), || {
        graph(&b).1.len() == 5
    });
    b.screenshot(&shots.join("1-pipelines.png"));
    let (first_id, _) = graph(&b);
    // Set in this page; a reload would lose it.
    b.eval("window.kilnNoReload = 'still here'; return null;");

    b.click("#run");
    let mut seen_unfinished = false;
    b.wait(
        "every stage of the run started from the page to turn Succeeded",
        Duration::from_secs(600),
        || {
            let (id, stages) = graph(&b);
            if id.is_empty() || id == first_id {
                return false;
            }
            seen_unfinished |= stages.values().any(|s| s != "Succeeded");
            stages.len() == 5 && stages.values().all(|s| s == "Succeeded")
        },
    );
    assert!(
        seen_unfinished,
        "the page saw the stages before they finished"
    );
    assert_eq!(
        b.eval("return window.kilnNoReload;"),
        Value::String("still here".into()),
        "the page was not reloaded"
    );
    // The chosen stage's log streamed in.
    b.wait("the stage log", Duration::from_secs(20), || {
        b.eval("return document.getElementById('stage-log').textContent.length")
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    b.screenshot(&shots.join("2-execution.png"));
    assert_eq!(
        b.eval("return window.kilnPwned === undefined"),
        Value::Bool(true)
    );
    assert_eq!(
        b.eval("return document.querySelectorAll('#view img').length"),
        0
    );
    assert_eq!(
        b.eval(&format!(
            "return document.body.textContent.includes({})",
            serde_json::json!(HOSTILE)
        )),
        Value::Bool(true),
        "the commit message shows as written"
    );

    // The group page: every instance on the new template version.
    b.click(r#"header nav a[data-nav="groups"]"#);
    b.click(r#"tr[data-group="web"] a"#);
    b.wait(
        "every instance of web on version 2",
        Duration::from_secs(120),
        || instances(&b) == vec![("2".to_string(), "in-service".to_string()); 2],
    );
    let lines = b.eval("return document.querySelectorAll('#rollout-chart polyline').length");
    assert!(
        lines.as_u64().unwrap() >= 1,
        "the rollout chart has a line per version"
    );
    b.screenshot(&shots.join("3-group.png"));

    b.click(r#"header nav a[data-nav="images"]"#);
    b.wait("both images of web", Duration::from_secs(20), || {
        b.eval("return document.querySelectorAll('tr[data-image^=\"web/\"]').length")
            .as_u64()
            == Some(2)
    });
    b.screenshot(&shots.join("4-images.png"));
    b.click(r#"tr[data-image^="web/"] a"#);
    b.wait("the lineage", Duration::from_secs(20), || {
        b.eval("return document.body.textContent.includes('Source commit')") == Value::Bool(true)
    });
    let built = b.eval("return document.getElementById('built-by').textContent");
    let built = built.as_str().unwrap_or_default();
    assert!(
        built.contains("web #2") && built.contains("ArtifactUri") && built.contains("ran"),
        "the image links to its execution, artifacts and layer cache: {built}"
    );
    b.screenshot(&shots.join("5-image-lineage.png"));
    b.click(r#"header nav a[data-nav="parameters"]"#);
    b.click(r#"a[data-param]"#);
    b.wait("a parameter's history", Duration::from_secs(20), || {
        b.eval("return document.body.textContent.includes('History of')") == Value::Bool(true)
    });
    b.screenshot(&shots.join("6-parameters.png"));

    // Traffic through the load balancer, and the second run, show in the
    // metrics.
    let lb_url = info_lb(state);
    for _ in 0..10 {
        assert_eq!(page(&format!("{lb_url}/VERSION")), "second\n");
    }
    let after = scrape(&addr, read);
    assert_eq!(
        metric(
            &after,
            r#"kiln_pipeline_executions_total{outcome="Succeeded",pipeline="web"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(&after, r#"kiln_images{name="web",status="available"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            r#"kiln_instances{group="web",state="in-service",version="2"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            r#"kiln_instances{group="web",state="in-service",version="1"}"#
        ),
        0.0
    );
    let served: f64 = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with("kiln_lb_requests_total{") && k.contains("outcome=\"success\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(served >= 10.0, "{after:?}");
    // The same requests, as clients got them: by status class, and timed
    // into the histogram's buckets.
    let ok_2xx = metric(
        &after,
        r#"kiln_lb_http_responses_total{code="2xx",group="web"}"#,
    );
    assert!(ok_2xx >= 10.0, "{after:?}");
    assert_eq!(
        metric(
            &after,
            r#"kiln_lb_response_time_seconds_count{group="web"}"#
        ),
        metric(
            &after,
            r#"kiln_lb_response_time_seconds_bucket{group="web",le="+Inf"}"#
        ),
    );
    assert!(
        metric(
            &after,
            r#"kiln_lb_response_time_seconds_count{group="web"}"#
        ) >= ok_2xx
    );

    // The group page's buttons: scale to three, then roll back to version 1.
    b.click(r#"header nav a[data-nav="groups"]"#);
    b.click(r#"tr[data-group="web"] a"#);
    b.wait("the group page", Duration::from_secs(20), || {
        b.eval("return !!document.getElementById('desired')") == Value::Bool(true)
    });
    b.type_into("#desired", "3");
    b.click("#scale");
    b.wait(
        "three instances on version 2",
        Duration::from_secs(120),
        || instances(&b) == vec![("2".to_string(), "in-service".to_string()); 3],
    );
    b.click("#rollback");
    b.wait(
        "three instances back on version 1",
        Duration::from_secs(120),
        || instances(&b) == vec![("1".to_string(), "in-service".to_string()); 3],
    );
    // The chart drew both versions as the instances moved.
    assert_eq!(
        b.eval("return [...document.querySelectorAll('#rollout-chart polyline')].map(l => l.dataset.version)"),
        serde_json::json!(["1", "2"])
    );
    b.screenshot(&shots.join("7-group-rolled-back.png"));
    assert_eq!(page(&format!("{lb_url}/VERSION")), "first\n");

    // A run whose build fails offers Retry, which runs the failed stage of
    // the same execution again (RetryStageExecution), from the page.
    s.repo.commit("VERSION", "broken\n", "break the build");
    b.click(r#"header nav a[data-nav="pipelines"]"#);
    b.click(r#"tr[data-pipeline="web"] a"#);
    b.wait("the pipeline page", Duration::from_secs(20), || {
        graph(&b).1.len() == 5
    });
    let (before_run, _) = graph(&b);
    b.click("#run");
    let mut failed_id = String::new();
    b.wait("the build to fail", Duration::from_secs(300), || {
        let (id, stages) = graph(&b);
        failed_id = id.clone();
        id != before_run && stages.get("Build").map(String::as_str) == Some("Failed")
    });
    let build_started = |state: &Path| {
        let e = support::execution(state, &failed_id);
        support::stage(&e, "Build")["started"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first_attempt = build_started(state);
    b.click("#retry");
    b.wait(
        "the retried build to fail again",
        Duration::from_secs(300),
        || {
            let (id, stages) = graph(&b);
            id == failed_id
                && stages.get("Build").map(String::as_str) == Some("Failed")
                && build_started(state) != first_attempt
        },
    );
    b.screenshot(&shots.join("8-retried.png"));
    drop(b);

    println!("console screenshots:");
    for f in [
        "1-pipelines.png",
        "2-execution.png",
        "3-group.png",
        "4-images.png",
        "5-image-lineage.png",
        "6-parameters.png",
        "7-group-rolled-back.png",
        "8-retried.png",
    ] {
        println!("  {}", shots.join(f).display());
    }
    s.finish("web");
}

fn info_lb(state: &Path) -> String {
    let group = common::json(kiln(
        state,
        &["groups", "inspect", "web", "--output", "json"],
    ));
    group["load_balancer"].as_str().unwrap().to_string()
}
