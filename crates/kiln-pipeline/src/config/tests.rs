use super::*;

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new("kiln.yaml")) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|e| e.to_string()).collect(),
    }
}

const MINIMAL: &str = "name: web\nimage:\n  parent: busybox\n";

#[test]
fn a_minimal_pipeline_gets_the_samples_defaults() {
    let c = parse(MINIMAL, Path::new("kiln.yaml")).unwrap();
    assert_eq!(c.name, "web");
    assert_eq!(c.image.name, "web");
    assert_eq!(c.source.branch, "main");
    assert_eq!(c.version.parameter, "/web/ImageVersion");
    assert_eq!(c.version.start, "1.0.0");
    assert_eq!(c.execution_mode, ExecutionMode::Superseded);
    assert_eq!(c.keep_images, 5);
    assert!(c.triggers.on_commit);
    assert!(!c.triggers.only_if_changed);
    assert!(c.build.is_none() && c.deploy.is_none());
}

#[test]
fn every_section_is_read() {
    let text = r#"name: web
execution_mode: QUEUED
source: { repository: "https://example.com/web.git", branch: release, poll_interval: 1m }
build: { buildspec: ci/buildspec.yml, timeout: 20m, environment: { STAGE: prod } }
version: { parameter: /web/Version, start: 2.3.0 }
image: { parent: "debian:bookworm", entrypoint: ["/srv/app"] }
deploy:
  group: web-fleet
  capacity: { min: 1, max: 4, desired: 3 }
  port: 9000
  health: { path: /ready, interval: 500ms, healthy_threshold: 3 }
  rolling: { max_batch: 2, min_in_service: 2, pause: 5s }
  rollback: auto
  idle_timeout: 2m
  routing: { algorithm: round_robin, stickiness: 1h, slow_start: 30s }
  lb_threads: 2
  tags: { Team: payments }
retention: { keep_images: 2 }
triggers: { on_commit: false, schedule: "cron(0 9 * * ? *)", only_if_changed: true }
"#;
    let c = parse(text, Path::new("kiln.yaml")).unwrap();
    assert_eq!(c.execution_mode, ExecutionMode::Queued);
    assert_eq!(
        c.source.repository.as_deref(),
        Some("https://example.com/web.git")
    );
    assert_eq!(c.source.poll_interval, Duration::from_secs(60));
    let b = c.build.unwrap();
    assert_eq!(b.buildspec, "ci/buildspec.yml");
    assert_eq!(b.timeout, Duration::from_secs(1200));
    assert_eq!(b.environment["STAGE"], "prod");
    assert_eq!(c.version.start, "2.3.0");
    let d = c.deploy.unwrap();
    assert_eq!(
        (d.spec.min, d.spec.max, d.spec.desired, d.spec.port),
        (1, 4, 3, 9000)
    );
    assert_eq!(d.spec.health.interval_ms, 500);
    assert_eq!(d.spec.health.healthy_threshold, 3);
    assert_eq!(d.spec.rolling.max_batch_size, 2);
    assert_eq!(d.spec.rolling.pause_ms, 5000);
    assert_eq!(d.tags["Team"], "payments");
    assert_eq!(d.spec.lb_threads, 2);
    assert_eq!(d.spec.idle_timeout_ms, 120_000);
    assert_eq!(
        d.spec.routing.to_lb(),
        kiln_fleet::Routing {
            algorithm: kiln_fleet::Algorithm::RoundRobin,
            stickiness: Some(Duration::from_secs(3600)),
            slow_start: Duration::from_secs(30),
        }
    );
    assert_eq!(c.keep_images, 2);
    assert!(!c.triggers.on_commit && c.triggers.only_if_changed);
    assert!(c.triggers.schedule.is_some());
}

#[test]
fn unknown_fields_are_errors_with_line_column_and_field() {
    let e = errors("name: web\nimage:\n  parent: busybox\ndeploy:\n  group: g\n  helth: {}\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("kiln.yaml:6:3: deploy.helth: unknown field"),
        "{e:?}"
    );
    let e = errors("name: web\nimage:\n  parent: busybox\nretension: { keep_images: 2 }\n");
    assert!(
        e[0].starts_with("kiln.yaml:4:1: retension: unknown field"),
        "{e:?}"
    );
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (
            "execution_mode: PARALLEL\n",
            "execution_mode",
            "SUPERSEDED or QUEUED",
        ),
        (
            "triggers: { schedule: \"cron(0 9 * *)\" }\n",
            "triggers.schedule",
            "",
        ),
        (
            "deploy: { group: g, capacity: { min: 3, desired: 1 } }\n",
            "deploy.capacity",
            "does not hold",
        ),
        (
            "deploy: { group: g, health: { interval: soon } }\n",
            "deploy.health.interval",
            "duration",
        ),
        (
            "deploy: { group: g, rolling: { max_batch: 0 } }\n",
            "deploy.rolling.max_batch",
            "at least 1",
        ),
        (
            "deploy: { group: g, routing: { algorithm: fastest } }\n",
            "deploy.routing.algorithm",
            "expected least_outstanding_requests",
        ),
        (
            "deploy: { group: g, routing: { slow_start: 30s } }\n",
            "deploy.routing.slow_start",
            "needs algorithm round_robin; ALB refuses it with least_outstanding_requests",
        ),
        (
            "deploy: { group: g, routing: { algorithm: weighted_random, slow_start: 30s } }\n",
            "deploy.routing.slow_start",
            "ALB refuses it with weighted_random",
        ),
        (
            "deploy: { group: g, routing: { algorithm: weighted_random, stickiness: 1h } }\n",
            "deploy.routing.stickiness",
            "weighted_random algorithm does not take sticky sessions",
        ),
        (
            "deploy: { group: g, idle_timeout: 0s }\n",
            "deploy.idle_timeout",
            "0 s is out of range: ALB's idle_timeout.timeout_seconds is from 1 to 4000 s",
        ),
        (
            "deploy: { group: g, idle_timeout: 2h }\n",
            "deploy.idle_timeout",
            "7200 s is out of range",
        ),
        (
            "deploy: { group: g, routing: { algorithm: round_robin, slow_start: 10s } }\n",
            "deploy.routing.slow_start",
            "ALB's slow_start.duration_seconds is from 30 to 900 s, or 0 for off",
        ),
        (
            "deploy: { group: g, routing: { stickiness: 169h } }\n",
            "deploy.routing.stickiness",
            "608400 s is out of range: ALB's stickiness.lb_cookie.duration_seconds is from 1 to 604800 s",
        ),
        (
            "deploy: { group: g, lb_threads: 0 }\n",
            "deploy.lb_threads",
            "a load balancer runs from 1 to 64 threads",
        ),
        (
            "deploy: { group: g, lb_threads: 65 }\n",
            "deploy.lb_threads",
            "65 is out of range: a load balancer runs from 1 to 64 threads",
        ),
        (
            "deploy: { group: g, deregistration_delay: 2h }\n",
            "deploy.deregistration_delay",
            "deregistration_delay.timeout_seconds is from 0 to 3600 s",
        ),
        (
            "deploy: { group: \"no spaces\" }\n",
            "deploy.group",
            "not a valid group name",
        ),
        ("deploy: { port: 80 }\n", "deploy.group", "required"),
        (
            "version: { parameter: Version }\n",
            "version.parameter",
            "starts with /",
        ),
        ("version: { start: one }\n", "version.start", "x.y.z"),
        (
            "retention: { keep_images: 0 }\n",
            "retention.keep_images",
            "at least 1",
        ),
        (
            "source: { branch: \"a..b\" }\n",
            "source.branch",
            "not a valid branch",
        ),
    ];
    for (extra, field, message) in cases {
        let e = errors(&format!("{MINIMAL}{extra}"));
        assert!(
            e.iter()
                .any(|e| e.contains(&format!(": {field}: ")) && e.contains(message)),
            "{extra}: {e:?}"
        );
    }
}

#[test]
fn the_image_version_belongs_to_the_version_stage() {
    let e = errors("name: web\nimage:\n  parent: busybox\n  version: 1.2.3\n");
    assert!(
        e[0].contains("image.version: set by the pipeline's Version stage"),
        "{e:?}"
    );
    let e = errors("image:\n  parent: busybox\n");
    assert!(e.iter().any(|e| e.contains("1:1: name: required")), "{e:?}");
}

#[test]
fn durations_take_milliseconds_and_zero() {
    assert_eq!(
        parse_duration("250ms").ok(),
        Some(Duration::from_millis(250))
    );
    assert_eq!(parse_duration("0s").ok(), Some(Duration::ZERO));
    assert_eq!(
        parse_duration("1h30m").ok(),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(parse_duration("90").ok(), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("5 minutes").ok(), None);
    assert_eq!(parse_duration("").ok(), None);
}

#[test]
fn settings_do_not_need_the_component_files() {
    let text = "name: web\nimage:\n  parent: busybox\n  components: [ { path: missing.yaml } ]\n";
    assert!(parse(text, Path::new("kiln.yaml")).is_err());
    assert!(settings(text, Path::new("kiln.yaml")).is_ok());
}

#[test]
fn deploy_secrets_name_parameters_and_no_variable_is_both() {
    let text = format!(
        "{MINIMAL}deploy:\n  group: web\n  environment: {{ MODE: prod }}\n  secrets: {{ DB_PASSWORD: /web/DbPassword }}\n"
    );
    let d = parse(&text, Path::new("kiln.yaml"))
        .unwrap()
        .deploy
        .unwrap();
    assert_eq!(d.secrets["DB_PASSWORD"], "/web/DbPassword");
    assert!(!d.environment.contains_key("DB_PASSWORD"));

    let both = text.replace("MODE: prod", "DB_PASSWORD: plain");
    assert_eq!(
        errors(&both),
        [
            "kiln.yaml:7:12: deploy.secrets: DB_PASSWORD is in environment too: a variable comes from one or the other"
        ]
    );
}

#[test]
fn absurd_durations_are_refused_with_their_position() {
    for (extra, at, field) in [
        (
            "deploy:\n  group: g\n  rolling: { batch_timeout: 5124095576030431h }\n",
            "6:29",
            "deploy.rolling.batch_timeout",
        ),
        (
            "deploy:\n  group: g\n  health: { interval: 18446744073709551615 }\n",
            "6:23",
            "deploy.health.interval",
        ),
        ("  tests: { timeout: 25h }\n", "4:21", "image.tests.timeout"),
    ] {
        let e = errors(&format!("{MINIMAL}{extra}"));
        assert!(
            e.iter()
                .any(|e| e.contains(&format!("kiln.yaml:{at}: {field}: "))
                    && e.contains("is longer than")),
            "{extra}: {e:?}"
        );
    }
}
