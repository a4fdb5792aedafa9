//! How long the console's pages take to load their data from the API with
//! a pipeline of 1,000 executions and a group of 100 instances: the real
//! router, over HTTP on loopback, reading the real SQLite database.
//!
//! `cargo bench -p kiln-api --bench console_page` prints each page's time
//! (the median of several loads) and the goal, under a second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_fleet::{Group, GroupSpec, Instance, InstanceState, Template, TemplateSpec};
use kiln_pipeline::{Execution, ExecutionStatus, Outputs, Pipeline, STAGES, StageStatus};

const EXECUTIONS: usize = 1000;
const INSTANCES: usize = 100;
const LOADS: usize = 7;

fn populate(state: &std::path::Path) {
    let db = kiln_pipeline::db::Db::open(&state.join("kiln.db")).unwrap();
    let now = jiff::Timestamp::now().to_string();
    db.upsert_pipeline(&Pipeline {
        name: "web".into(),
        repository: "/srv/web".into(),
        branch: "main".into(),
        file: "kiln.yaml".into(),
        config: "name: web\n".into(),
        last_commit: "0".repeat(40),
        next_schedule: String::new(),
        hooks: Vec::new(),
        created: now.clone(),
        updated: now.clone(),
    })
    .unwrap();
    for i in 0..EXECUTIONS {
        let variables = BTreeMap::from([
            (
                "SourceVariables".to_string(),
                BTreeMap::from([("CommitId".to_string(), format!("{i:040x}"))]),
            ),
            (
                "BakeVariables".to_string(),
                BTreeMap::from([("Image".to_string(), format!("web/1.0.{i}/1"))]),
            ),
        ]);
        let e = db
            .insert_execution(&Execution {
                id: format!("exec-{i:05}"),
                seq: 0,
                pipeline: "web".into(),
                status: ExecutionStatus::Pending,
                trigger: "StartPipelineExecution".into(),
                commit_id: format!("{i:040x}"),
                reason: String::new(),
                created: now.clone(),
                started: String::new(),
                ended: String::new(),
                variables: variables.clone(),
                outputs: Outputs::default(),
                stages: Vec::new(),
            })
            .unwrap();
        db.claim(&e.id).unwrap();
        for stage in STAGES {
            db.set_stage(&e.id, stage, StageStatus::Succeeded, "done")
                .unwrap();
        }
        db.set_outputs(&e.id, &variables, &Outputs::default())
            .unwrap();
        db.set_execution(&e.id, ExecutionStatus::Succeeded, "")
            .unwrap();
    }
    let fleet = kiln_fleet::Db::open(&state.join("kiln.db")).unwrap();
    fleet
        .insert_template(&Template {
            name: "web".into(),
            version: 1,
            image: "web/1.0.0/1".into(),
            image_digest: format!("sha256:{}", "0".repeat(64)),
            spec: TemplateSpec::default(),
            tags: BTreeMap::new(),
            created: now.clone(),
        })
        .unwrap();
    fleet
        .insert_group(&Group {
            name: "web".into(),
            template: "web".into(),
            version: 1,
            spec: GroupSpec {
                max: INSTANCES as u32,
                desired: INSTANCES as u32,
                ..GroupSpec::default()
            },
            created: now.clone(),
        })
        .unwrap();
    for i in 0..INSTANCES {
        fleet
            .upsert_instance(&Instance {
                id: format!("i-{i:05}"),
                group: "web".into(),
                template: "web".into(),
                version: 1,
                state: InstanceState::InService,
                pid: 0,
                start_time: 0,
                init_pid: 0,
                dir: state
                    .join("instances")
                    .join(i.to_string())
                    .display()
                    .to_string(),
                reason: String::new(),
                created: now.clone(),
                updated: now.clone(),
            })
            .unwrap();
    }
}

fn load(agent: &ureq::Agent, base: &str, token: &str, paths: &[&str]) -> (Duration, usize) {
    let t = Instant::now();
    let mut bytes = 0;
    for p in paths {
        let text = agent
            .get(format!("{base}{p}"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap();
        bytes += text.len();
    }
    (t.elapsed(), bytes)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::create_dir_all(state.join("instances")).unwrap();
    let t = Instant::now();
    populate(state);
    println!(
        "state: {EXECUTIONS} executions and {INSTANCES} instances written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, token) = runtime.block_on(async {
        let fleet = kiln_fleet::Fleet::open(state).unwrap();
        let pipelines = kiln_pipeline::Pipelines::open(state, fleet.clone()).unwrap();
        let tokens = kiln_api::token::Tokens::load_or_create(state).unwrap();
        let app = kiln_api::router(fleet, pipelines, tokens, state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(kiln_api::serve(
            listener,
            app,
            kiln_api::LIMITS,
            std::future::pending(),
        ));
        let token = std::fs::read_to_string(state.join(kiln_api::token::READ_FILE)).unwrap();
        (addr, token)
    });
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let base = format!("http://{addr}");
    // What each console page asks for when it opens.
    let pages: [(&str, &[&str]); 3] = [
        (
            "pipeline page (1,000 executions)",
            &[
                "/v1/pipelines/web",
                "/v1/executions?pipeline=web&limit=1000",
            ],
        ),
        ("group page (100 instances)", &["/v1/groups/web"]),
        (
            "pipelines list",
            &["/v1/pipelines", "/v1/executions?limit=200"],
        ),
    ];
    for (name, paths) in pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..LOADS {
            let (d, b) = load(&agent, &base, token.trim(), paths);
            times.push(d);
            bytes = b;
        }
        times.sort();
        let median = times[LOADS / 2];
        println!(
            "{name}: median {:.1} ms, slowest {:.1} ms over {LOADS} loads, {:.1} KiB of JSON (goal: under 1000 ms)",
            median.as_secs_f64() * 1000.0,
            times[LOADS - 1].as_secs_f64() * 1000.0,
            bytes as f64 / 1024.0
        );
    }
}
