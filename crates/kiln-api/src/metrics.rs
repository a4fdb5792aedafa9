//! `/metrics`: Prometheus's text exposition format (version 0.0.4), read
//! from the state on every scrape, so the figures survive a daemon restart
//! and never disagree with what the API lists. Prometheus scrapes it with
//! the read-only token (`authorization: {credentials_file: .../api-token-read}`).

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use kiln_fleet::{FleetError, InstanceState};

use crate::{ApiError, AppState};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Stage durations, in seconds: from a quick Source to a long Bake.
const STAGE_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Builds the text, one metric family after another.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

type Labels<'a> = [(&'a str, &'a str)];

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &Labels, value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A histogram's buckets, sum and count from its observations.
    pub fn histogram(&mut self, name: &str, labels: &Labels, buckets: &[f64], seen: &[f64]) {
        let bucket = format!("{name}_bucket");
        for le in buckets.iter().copied().chain([f64::INFINITY]) {
            let n = seen.iter().filter(|v| **v <= le).count();
            let le = number(le);
            let mut with: Vec<(&str, &str)> = labels.to_vec();
            with.push(("le", &le));
            self.sample(&bucket, &with, n as f64);
        }
        self.sample(&format!("{name}_sum"), labels, seen.iter().sum());
        self.sample(&format!("{name}_count"), labels, seen.len() as f64);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

fn seconds_between(start: &str, end: &str) -> Option<f64> {
    let a: jiff::Timestamp = start.parse().ok()?;
    let b: jiff::Timestamp = end.parse().ok()?;
    Some(b.duration_since(a).as_secs_f64().max(0.0))
}

fn pipeline_metrics(s: &AppState, out: &mut Exposition) -> Result<(), ApiError> {
    let executions = s
        .pipelines
        .executions(None, usize::MAX)
        .map_err(|e| ApiError(FleetError::Invalid(e.to_string())))?;
    let mut finished = BTreeMap::<(String, &str), u64>::new();
    let mut running = BTreeMap::<String, u64>::new();
    let mut stages = BTreeMap::<(String, String, &str), Vec<f64>>::new();
    let mut cache = BTreeMap::<String, (u64, u64)>::new();
    for p in s.pipelines.pipelines().unwrap_or_default() {
        running.insert(p.name.clone(), 0);
        cache.insert(p.name, (0, 0));
    }
    for e in &executions {
        if e.status.is_final() {
            *finished
                .entry((e.pipeline.clone(), e.status.as_str()))
                .or_default() += 1;
        } else {
            *running.entry(e.pipeline.clone()).or_default() += 1;
        }
        for st in &e.stages {
            if let Some(d) = seconds_between(&st.started, &st.ended) {
                stages
                    .entry((e.pipeline.clone(), st.name.clone(), st.status.as_str()))
                    .or_default()
                    .push(d);
            }
        }
        if let Some(b) = e.outputs.bake_cache {
            let c = cache.entry(e.pipeline.clone()).or_default();
            c.0 += u64::from(b.hits);
            c.1 += u64::from(b.misses);
        }
    }
    out.family(
        "kiln_pipeline_executions_total",
        "counter",
        "Finished pipeline executions by outcome (Succeeded, Failed, Stopped, Superseded).",
    );
    for ((pipeline, outcome), n) in &finished {
        out.sample(
            "kiln_pipeline_executions_total",
            &[("pipeline", pipeline), ("outcome", outcome)],
            *n as f64,
        );
    }
    out.family(
        "kiln_pipeline_executions_running",
        "gauge",
        "Pipeline executions pending or in progress.",
    );
    for (pipeline, n) in &running {
        out.sample(
            "kiln_pipeline_executions_running",
            &[("pipeline", pipeline)],
            *n as f64,
        );
    }
    out.family(
        "kiln_pipeline_stage_duration_seconds",
        "histogram",
        "How long finished stages took, by pipeline, stage and status.",
    );
    for ((pipeline, stage, status), seen) in &stages {
        out.histogram(
            "kiln_pipeline_stage_duration_seconds",
            &[("pipeline", pipeline), ("stage", stage), ("status", status)],
            &STAGE_BUCKETS,
            seen,
        );
    }
    out.family(
        "kiln_bake_cache_hits_total",
        "counter",
        "Bake components whose layer came from the layer cache.",
    );
    for (pipeline, (hits, _)) in &cache {
        out.sample(
            "kiln_bake_cache_hits_total",
            &[("pipeline", pipeline)],
            *hits as f64,
        );
    }
    out.family(
        "kiln_bake_cache_misses_total",
        "counter",
        "Bake components that ran because no cached layer matched.",
    );
    for (pipeline, (_, misses)) in &cache {
        out.sample(
            "kiln_bake_cache_misses_total",
            &[("pipeline", pipeline)],
            *misses as f64,
        );
    }
    Ok(())
}

fn image_metrics(s: &AppState, out: &mut Exposition) -> Result<(), ApiError> {
    let store = kiln_image::Store::open(&s.state_dir.join("images")).map_err(FleetError::Store)?;
    let mut by = BTreeMap::<(String, String), u64>::new();
    for i in store.images().map_err(FleetError::Store)? {
        *by.entry((i.name.clone(), i.status.to_string()))
            .or_default() += 1;
    }
    out.family(
        "kiln_images",
        "gauge",
        "Image versions in the store by name and status (available, failed).",
    );
    for ((name, status), n) in &by {
        out.sample(
            "kiln_images",
            &[("name", name), ("status", status)],
            *n as f64,
        );
    }
    Ok(())
}

fn fleet_metrics(s: &AppState, out: &mut Exposition) -> Result<(), ApiError> {
    let groups = s.fleet.groups()?;
    out.family(
        "kiln_group_desired_capacity",
        "gauge",
        "Each group's desired capacity.",
    );
    for g in &groups {
        out.sample(
            "kiln_group_desired_capacity",
            &[("group", &g.group.name)],
            f64::from(g.group.spec.desired),
        );
    }
    let mut instances = BTreeMap::<(String, &str, String), u64>::new();
    let mut health = BTreeMap::<(String, &str), u64>::new();
    for g in &groups {
        for result in ["healthy", "unhealthy", "initial"] {
            health.insert((g.group.name.clone(), result), 0);
        }
        for i in &g.instances {
            *instances
                .entry((i.group.clone(), i.state.as_str(), i.version.to_string()))
                .or_default() += 1;
            let result = match i.state {
                InstanceState::InService | InstanceState::Draining => "healthy",
                InstanceState::Unhealthy => "unhealthy",
                InstanceState::Pending | InstanceState::Terminated => "initial",
            };
            *health.entry((i.group.clone(), result)).or_default() += 1;
        }
    }
    out.family(
        "kiln_instances",
        "gauge",
        "Instances by group, state (pending, in-service, unhealthy, draining) and template version.",
    );
    for ((group, state, version), n) in &instances {
        out.sample(
            "kiln_instances",
            &[("group", group), ("state", state), ("version", version)],
            *n as f64,
        );
    }
    out.family(
        "kiln_health_check_instances",
        "gauge",
        "Instances by their health checks' last verdict: healthy, unhealthy, or initial (not yet decided).",
    );
    for ((group, result), n) in &health {
        out.sample(
            "kiln_health_check_instances",
            &[("group", group), ("result", result)],
            *n as f64,
        );
    }
    out.family(
        "kiln_lb_requests_total",
        "counter",
        "Requests the group's load balancer routed to each instance, by outcome: success, or failure (no complete response; most were retried on another instance).",
    );
    for g in &groups {
        for b in &g.backends {
            let ok = b.requests.saturating_sub(b.failures) as f64;
            let labels = |outcome| {
                [
                    ("group", g.group.name.as_str()),
                    ("instance", &b.id),
                    ("outcome", outcome),
                ]
            };
            out.sample("kiln_lb_requests_total", &labels("success"), ok);
            out.sample(
                "kiln_lb_requests_total",
                &labels("failure"),
                b.failures as f64,
            );
        }
    }
    out.family(
        "kiln_lb_request_duration_seconds",
        "summary",
        "Latency per instance over its last 1024 responses, from choosing it to relaying the response's last byte.",
    );
    for g in &groups {
        for b in &g.backends {
            for (q, v) in [("0.5", b.p50_ms), ("0.9", b.p90_ms), ("0.99", b.p99_ms)] {
                out.sample(
                    "kiln_lb_request_duration_seconds",
                    &[
                        ("group", &g.group.name),
                        ("instance", &b.id),
                        ("quantile", q),
                    ],
                    v / 1000.0,
                );
            }
        }
    }
    out.family(
        "kiln_lb_http_responses_total",
        "counter",
        "Responses the group's load balancer sent, by status class, the balancer's own 502, 503 and 504 included (ALB's HTTPCode_Target_*_Count and HTTPCode_ELB_*_Count).",
    );
    for g in &groups {
        for (class, n) in &g.traffic.responses {
            out.sample(
                "kiln_lb_http_responses_total",
                &[("group", g.group.name.as_str()), ("code", class.as_str())],
                *n as f64,
            );
        }
    }
    out.family(
        "kiln_lb_response_time_seconds",
        "histogram",
        "Time from receiving a request to sending the response's head (ALB's TargetResponseTime), over every request the group's load balancer answered.",
    );
    for g in &groups {
        let name = g.group.name.as_str();
        for b in &g.traffic.latency_buckets {
            let le = b.le_seconds.to_string();
            out.sample(
                "kiln_lb_response_time_seconds_bucket",
                &[("group", name), ("le", le.as_str())],
                b.count as f64,
            );
        }
        out.sample(
            "kiln_lb_response_time_seconds_bucket",
            &[("group", name), ("le", "+Inf")],
            g.traffic.latency_count as f64,
        );
        out.sample(
            "kiln_lb_response_time_seconds_sum",
            &[("group", name)],
            g.traffic.latency_sum_seconds,
        );
        out.sample(
            "kiln_lb_response_time_seconds_count",
            &[("group", name)],
            g.traffic.latency_count as f64,
        );
    }
    out.family(
        "kiln_lb_requests_in_flight",
        "gauge",
        "Requests each instance is answering now.",
    );
    for g in &groups {
        for b in &g.backends {
            out.sample(
                "kiln_lb_requests_in_flight",
                &[("group", &g.group.name), ("instance", &b.id)],
                b.in_flight as f64,
            );
        }
    }
    Ok(())
}

/// Everything, as one scrape reads it.
pub fn render(s: &AppState) -> Result<String, ApiError> {
    let mut out = Exposition::default();
    pipeline_metrics(s, &mut out)?;
    image_metrics(s, &mut out)?;
    fleet_metrics(s, &mut out)?;
    Ok(out.finish())
}

/// Prometheus metrics: executions by outcome, stage durations, bake cache
/// hits and misses, images by status, instances by state and version,
/// health check verdicts, load balancer requests and latency.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::blocking(move || render(&s), |e| ApiError(FleetError::Task(e))).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_histograms_are_cumulative() {
        let mut out = Exposition::default();
        out.family("x", "histogram", "h");
        out.histogram("x", &[("p", "a\"b\\c\nd")], &[1.0, 2.0], &[0.5, 1.5, 3.0]);
        let text = out.finish();
        assert!(
            text.contains(r#"x_bucket{p="a\"b\\c\nd",le="1"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"le="2"} 2"#), "{text}");
        assert!(text.contains(r#"le="+Inf"} 3"#), "{text}");
        assert!(text.contains(r#"x_sum{p="a\"b\\c\nd"} 5"#), "{text}");
    }
}
