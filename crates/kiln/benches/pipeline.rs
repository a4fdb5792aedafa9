//! `kiln demo` commit-to-serving time, by stage: cold (a fresh state
//! directory, so the busybox parent is built too) and warm (the second
//! commit), with kiln's own time beside the user's commands.
//!
//! `cargo bench -p kiln --bench pipeline` (KILN_BENCH_RUNS=N, default 3).

use std::process::Command;

use serde_json::Value;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut reports = Vec::new();
    for run in 0..runs {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(["demo", "--exit", "--output", "json", "--dir"])
            .arg(tmp.path().join("repo"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln demo failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "run {}: cold {:.2}s, warm {:.2}s, {} requests during the rollout, {} failed",
            run + 1,
            report["cold"]["commit_to_serving_seconds"]
                .as_f64()
                .unwrap(),
            report["warm"]["commit_to_serving_seconds"]
                .as_f64()
                .unwrap(),
            report["requests_during_rollout"]["ok"],
            report["requests_during_rollout"]["failed"]
        );
        reports.push(report);
    }
    for phase in ["cold", "warm"] {
        let total = median(
            reports
                .iter()
                .map(|r| r[phase]["commit_to_serving_seconds"].as_f64().unwrap())
                .collect(),
        );
        println!("{phase}: commit to serving {total:.2}s (median of {runs})");
        let stages: Vec<String> = reports[0][phase]["execution"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        for (i, name) in stages.iter().enumerate() {
            let pick = |key: &str| -> Option<f64> {
                let v: Vec<f64> = reports
                    .iter()
                    .filter_map(|r| r[phase]["execution"]["stages"][i][key].as_f64())
                    .collect();
                (!v.is_empty()).then(|| median(v))
            };
            let secs = pick("seconds").unwrap_or(0.0);
            let detail = match pick("commands_seconds") {
                Some(c) => format!("user commands {c:.3}s, kiln {:.3}s", secs - c),
                None => "kiln only".into(),
            };
            println!("  {name:<8} {secs:>7.3}s  ({detail})");
        }
        let queued = median(
            reports
                .iter()
                .map(|r| {
                    r[phase]["execution"]["queued_seconds"]
                        .as_f64()
                        .unwrap_or(0.0)
                })
                .collect(),
        );
        println!("  queued   {queued:>7.3}s  (trigger to the Source stage)");
    }
}
