//! The five stages. Each reads what earlier stages left in the execution's
//! variables and outputs, writes its own, and logs to its stage's file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{self, Config};
use crate::git::Mirror;
use crate::model::{Execution, Outputs, Pipeline};
use crate::stage_error::StageError;
use crate::vars::{Variables, substitute, substitute_known};
use kiln_fleet::{Fleet, GroupUpdate, RolloutState, TemplateSpec};

/// The artifact bucket's name in S3Download sources: s3://kiln-artifacts/...
pub const ARTIFACT_BUCKET: &str = "kiln-artifacts";

/// The namespaces of Version and the stages after it: what they hold
/// comes out of an execution, not into its bake's inputs.
const OWN_NAMESPACES: &[&str] = &["VersionVariables", "BakeVariables", "DeployVariables"];

/// What a stage needs from the daemon.
#[derive(Clone)]
pub struct Env {
    pub state: PathBuf,
    pub fleet: Fleet,
    pub handle: tokio::runtime::Handle,
}

impl Env {
    pub fn pipeline_dir(&self, name: &str) -> PathBuf {
        self.state.join("pipelines").join(name)
    }

    pub fn execution_dir(&self, pipeline: &str, id: &str) -> PathBuf {
        self.pipeline_dir(pipeline).join("executions").join(id)
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.state.join("artifacts").join(ARTIFACT_BUCKET)
    }

    pub fn mirror(&self, p: &Pipeline) -> Mirror {
        Mirror::new(
            self.pipeline_dir(&p.name).join("repo.git"),
            &p.repository,
            &p.branch,
        )
    }
}

/// A stage's log file, with a timestamp on every line.
pub struct StageLog {
    file: Option<std::fs::File>,
    pub path: PathBuf,
}

impl StageLog {
    pub fn open(path: PathBuf) -> StageLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        StageLog { file, path }
    }

    pub fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let ts = jiff::Timestamp::now().strftime("%H:%M:%S%.3f");
            for l in text.lines() {
                // A full disk must not fail the stage it logs; the stage's
                // status and summary are in the database.
                let _ = writeln!(f, "[{ts}] {l}");
            }
        }
    }
}

pub enum Outcome {
    Done(String),
    Skipped(String),
}

pub type StageResult = Result<Outcome, StageError>;

/// Everything one execution carries from stage to stage.
pub struct Run<'a> {
    pub env: &'a Env,
    pub pipeline: &'a Pipeline,
    pub execution: &'a Execution,
    pub dir: PathBuf,
    pub vars: Variables,
    pub out: Outputs,
    pub config: Option<Config>,
}

impl Run<'_> {
    fn source_dir(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// A variable an earlier stage set; a stage that needs one that is
    /// missing fails saying so.
    fn var(&self, namespace: &str, name: &str) -> Result<String, StageError> {
        crate::model::variable(&self.vars, namespace, name)
            .map(str::to_string)
            .ok_or_else(|| StageError::MissingVariable {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// kiln.yaml from this execution's checkout (a retry reads it again).
    pub fn config(&mut self) -> Result<&Config, StageError> {
        if self.config.is_none() {
            let path = self.source_dir().join(&self.pipeline.file);
            self.config = Some(config::load(&path)?);
        }
        Ok(self.config.as_ref().expect("loaded above"))
    }

    pub fn source(&mut self, log: &mut StageLog) -> StageResult {
        let mirror = self.env.mirror(self.pipeline);
        log.line(&format!(
            "fetching {} branch {}",
            self.pipeline.repository, self.pipeline.branch
        ));
        let head = mirror.fetch()?;
        // A commit trigger names its commit; a retry keeps the one it had.
        let commit = Some(self.execution.commit_id.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or(head);
        let dest = self.source_dir();
        remove_scratch(&dest);
        mirror.checkout(&commit, &dest)?;
        let vars = mirror.variables(&commit)?;
        log.line(&format!(
            "commit {commit}: {}",
            vars.get("CommitMessage").map(String::as_str).unwrap_or("")
        ));
        self.vars.insert("SourceVariables".into(), vars);
        self.config = None;
        let pipeline = self.pipeline;
        let config = self.config()?;
        if config.name != pipeline.name {
            return Err(StageError::NameMismatch {
                file: pipeline.file.clone(),
                found: config.name.clone(),
                expected: pipeline.name.clone(),
            });
        }
        Ok(Outcome::Done(format!(
            "commit {}",
            &commit[..commit.len().min(12)]
        )))
    }

    pub fn build(&mut self, log_path: &Path) -> StageResult {
        let Some(build) = self.config()?.build.clone() else {
            return Ok(Outcome::Skipped("kiln.yaml has no build section".into()));
        };
        let source = self.source_dir();
        let spec_path = source.join(&build.buildspec);
        let spec = kiln_build::buildspec::load(&spec_path)?;
        let workspace = self.dir.join("build");
        remove_scratch(&workspace);
        let tmp_out = self
            .env
            .state
            .join("artifacts/tmp")
            .join(&self.execution.id);
        remove_scratch(&tmp_out);
        let mut flattened = None;
        let root = if build.image == "host" {
            PathBuf::from("/")
        } else {
            let store = kiln_image::Store::open(&self.env.state.join("images"))?;
            let reference = build.image.strip_prefix("kiln:").unwrap_or(&build.image);
            let image = store
                .resolve(reference)
                .map_err(|source| StageError::BuildImage {
                    image: build.image.clone(),
                    source,
                })?;
            let dir = kiln_image::flatten::flatten(&store, &image)?;
            flattened = Some(dir.clone());
            dir
        };
        let mut opts =
            kiln_build::BuildOptions::new(root, source, workspace.clone(), tmp_out.clone())?;
        let commit = self.var("SourceVariables", "CommitId")?;
        opts.env = vec![
            (
                "CODEBUILD_BUILD_ID".into(),
                format!("{}:{}", self.pipeline.name, self.execution.id),
            ),
            (
                "CODEBUILD_BUILD_NUMBER".into(),
                self.execution.seq.to_string(),
            ),
            (
                "CODEBUILD_INITIATOR".into(),
                format!("kiln/{}", self.pipeline.name),
            ),
            ("CODEBUILD_RESOLVED_SOURCE_VERSION".into(), commit.clone()),
            ("CODEBUILD_SOURCE_VERSION".into(), commit),
            (
                "CODEBUILD_SOURCE_REPO_URL".into(),
                self.pipeline.repository.clone(),
            ),
        ];
        opts.env.extend(build.environment.clone());
        let db_path = self.env.state.join("kiln.db");
        opts.parameters = Some(Arc::new(move |name: &str| {
            kiln_params::Params::open(&db_path)
                .ok()
                .and_then(|p| p.get(name).ok())
                .map(|p| kiln_build::ParameterValue {
                    secure: p.kind == kiln_params::ParamType::SecureString,
                    value: p.value,
                })
        }));
        let secrets = kiln_build::secrets::Secrets::new(&self.env.state);
        opts.secrets = Some(Arc::new(move |name: &str| {
            secrets.get(name).map_err(|e| e.to_string())
        }));
        opts.log_path = Some(log_path.to_path_buf());
        // The API token, the parameters and other pipelines' files are
        // kiln's, not the build's.
        if let Ok(state) = std::fs::canonicalize(&self.env.state) {
            opts.hidden.push(state);
        }
        opts.timeout = build.timeout;
        opts.cache_dir = Some(
            self.env
                .pipeline_dir(&self.pipeline.name)
                .join("build-cache"),
        );
        let report = if spec.batch.is_some() {
            // Each build's artifacts land in tmp_out/IDENTIFIER.
            kiln_build::batch::run(&spec, &opts, &mut kiln_build::NoObserver).map(|b| b.as_build())
        } else {
            kiln_build::run(&spec, &opts, &mut kiln_build::NoObserver)
        };
        remove_scratch(&workspace);
        if let Some(dir) = flattened {
            remove_scratch(dir);
        }
        let report = report?;
        // Kept whether the build failed or not: a failed suite's report
        // says which tests failed.
        self.out.build_reports = report.reports.clone();
        self.out.build_cache = report.cache.clone();
        if !report.succeeded {
            remove_scratch(&tmp_out);
            for id in spec.artifacts.iter().flat_map(|a| a.secondary.keys()) {
                remove_scratch(kiln_build::run::secondary_dir(&tmp_out, id));
            }
            let failed = report.phases.iter().find(|p| {
                p.status != kiln_build::PhaseStatus::Succeeded
                    && p.status != kiln_build::PhaseStatus::Skipped
            });
            return Err(StageError::BuildFailed(match failed {
                Some(p) => format!(
                    "phase {} {:?}: {}",
                    p.phase.upper(),
                    p.status,
                    p.message.clone().unwrap_or_default()
                ),
                None => report
                    .artifact_error
                    .unwrap_or_else(|| "the build failed".into()),
            }));
        }
        self.out.commands_ms.insert(
            "Build".into(),
            report.phases.iter().map(|p| p.duration_ms).sum(),
        );
        let mut vars: BTreeMap<String, String> = report.exported.iter().cloned().collect();
        if let Some(set) = &report.artifacts {
            let key = self.store_artifacts(&tmp_out, set)?;
            vars.insert("ArtifactBucket".into(), ARTIFACT_BUCKET.into());
            vars.insert("ArtifactKey".into(), key.clone());
            vars.insert(
                "ArtifactUri".into(),
                format!("s3://{ARTIFACT_BUCKET}/{key}"),
            );
            vars.insert("ArtifactDigest".into(), set.digest.clone());
        } else {
            remove_scratch(&tmp_out);
        }
        for (id, set) in &report.secondary_artifacts {
            let dir = kiln_build::run::secondary_dir(&tmp_out, id);
            let key = self.store_artifacts(&dir, set)?;
            vars.insert(
                format!("ArtifactUri_{id}"),
                format!("s3://{ARTIFACT_BUCKET}/{key}"),
            );
            vars.insert(format!("ArtifactDigest_{id}"), set.digest.clone());
        }
        self.vars.insert("BuildVariables".into(), vars);
        let mut summary = match &report.artifacts {
            Some(a) => format!("{} artifact files, {}", a.files.len(), short(&a.digest)),
            None => "no artifacts".into(),
        };
        let tests = report.reports.iter().filter(|r| r.kind == "TEST");
        let (total, failed) = tests.fold((0, 0), |(t, f), r| (t + r.total, f + r.failed));
        if total > 0 {
            summary.push_str(&format!("; {total} tests, {failed} failed"));
        }
        Ok(Outcome::Done(summary))
    }

    /// Moves a collected artifact set to its place in the artifact bucket,
    /// `PIPELINE/DIGEST`; returns that key.
    fn store_artifacts(
        &self,
        collected: &Path,
        set: &kiln_build::ArtifactSet,
    ) -> Result<String, StageError> {
        let hex = set.digest.trim_start_matches("sha256:");
        let key = format!("{}/{hex}", self.pipeline.name);
        let dest = self.env.artifacts_dir().join(&key);
        if dest.exists() {
            // The same content is already there.
            remove_scratch(collected);
        } else {
            std::fs::create_dir_all(dest.parent().expect("a parent"))
                .and_then(|_| std::fs::rename(collected, &dest))
                .map_err(|source| StageError::Artifacts {
                    path: dest.clone(),
                    source,
                })?;
        }
        Ok(key)
    }

    /// The recipe the bake runs: kiln.yaml's image with `vars` in its
    /// component parameters; with `all_set` false, references to
    /// namespaces missing from `vars` stay as written.
    fn recipe(&mut self, vars: &Variables, all_set: bool) -> Result<kiln_bake::Recipe, StageError> {
        let source = self.source_dir();
        let mut recipe = self.config()?.image.clone();
        for c in &mut recipe.components {
            for value in c.parameters.values_mut() {
                let replaced = if all_set {
                    substitute(value, vars)
                } else {
                    substitute_known(value, vars)
                };
                *value = replaced.map_err(|message| StageError::Parameter {
                    path: c.path.strip_prefix(&source).unwrap_or(&c.path).to_owned(),
                    message,
                })?;
            }
        }
        Ok(recipe)
    }

    /// The digest of everything the bake depends on: the recipe with its
    /// parameters, each component document, the artifacts and the parent
    /// (by digest when kiln already has it).
    ///
    /// It is the same before Version as after Bake: the namespaces that
    /// Version and the stages after it set hold this execution's own
    /// values (a new version every time), not inputs, so references to
    /// them count as written. Otherwise a parameter that takes
    /// `#{VersionVariables.Version}` would make every execution differ.
    fn inputs_digest(&mut self) -> Result<String, StageError> {
        let inputs: Variables = self
            .vars
            .iter()
            .filter(|(ns, _)| !OWN_NAMESPACES.contains(&ns.as_str()))
            .map(|(ns, v)| (ns.clone(), v.clone()))
            .collect();
        let recipe = self.recipe(&inputs, false)?;
        let store = kiln_image::Store::open(&self.env.state.join("images"))?;
        let parent = recipe
            .parent
            .strip_prefix("kiln:")
            .unwrap_or(&recipe.parent);
        let parent_digest = store
            .resolve(parent)
            .map(|i| i.digest())
            .unwrap_or_default();
        let mut docs = Vec::new();
        for c in &recipe.components {
            let data = std::fs::read(&c.path).map_err(|source| StageError::Component {
                path: c.path.clone(),
                source,
            })?;
            docs.push(hex::encode(Sha256::digest(&data)));
        }
        let params: Vec<_> = recipe.components.iter().map(|c| &c.parameters).collect();
        let value = serde_json::json!({
            "parent": [&recipe.parent, parent_digest],
            "documents": docs,
            "parameters": params,
            "settings": [&recipe.name, &recipe.entrypoint, &recipe.cmd, &recipe.env, &recipe.user,
                         recipe.port, &recipe.working_directory, recipe.tests.enabled],
            "artifacts": self.vars.get("BuildVariables").map(|b| {
                b.iter().filter(|(k, _)| k.starts_with("ArtifactDigest")).collect::<Vec<_>>()
            }),
        });
        Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(value.to_string().as_bytes()))
        ))
    }

    /// only_if_changed: the earlier execution that already baked exactly
    /// these inputs, if any.
    pub fn unchanged_since(&mut self, earlier: &[Execution]) -> Result<Option<i64>, StageError> {
        let digest = self.inputs_digest()?;
        self.out.inputs_digest = digest.clone();
        Ok(earlier
            .iter()
            .find(|e| {
                e.id != self.execution.id
                    && e.outputs.inputs_digest == digest
                    && e.var("BakeVariables", "Image").is_some()
                    && e.status == crate::model::ExecutionStatus::Succeeded
            })
            .map(|e| e.seq))
    }

    pub fn version(&mut self, log: &mut StageLog) -> StageResult {
        let v = self.config()?.version.clone();
        let mut params = kiln_params::Params::open(&self.env.state.join("kiln.db"))?;
        let version = params.take_version(&v.parameter, &v.start)?;
        log.line(&format!(
            "{}: this execution gets {version}; the parameter now holds the next one",
            v.parameter
        ));
        self.vars.insert(
            "VersionVariables".into(),
            BTreeMap::from([
                ("Version".into(), version.clone()),
                ("Parameter".into(), v.parameter.clone()),
            ]),
        );
        Ok(Outcome::Done(version))
    }

    pub fn bake(&mut self, log: &mut StageLog) -> StageResult {
        let vars = self.vars.clone();
        let mut recipe = self.recipe(&vars, true)?;
        let version = self.var("VersionVariables", "Version")?;
        recipe.version = version.parse().map_err(|source| StageError::Version {
            version: version.clone(),
            source,
        })?;
        let store = kiln_image::Store::open(&self.env.state.join("images"))?;
        let source = self
            .vars
            .get("SourceVariables")
            .cloned()
            .unwrap_or_default();
        let opts = kiln_bake::BakeOptions {
            isolation: Arc::new(kiln_sandbox::Bubblewrap::detect()?),
            log_root: self.dir.join("toe-logs"),
            artifacts: Some(kiln_toe::ArtifactStore {
                bucket: ARTIFACT_BUCKET.into(),
                dir: self.env.artifacts_dir(),
                // Another pipeline's artifacts are not this bake's to read.
                prefix: format!("{}/", self.pipeline.name),
            }),
            source_commit: source.get("CommitId").cloned(),
            source_labels: source
                .into_iter()
                .filter(|(k, _)| k != "CommitId" && k != "CommitMessage")
                .collect(),
            keep_on_failure: false,
        };
        let mut observer = BakeLog(log, 0);
        let report = kiln_bake::bake(&store, &recipe, &opts, &mut observer);
        self.out.commands_ms.insert("Bake".into(), observer.1);
        let report = report?;
        let hits = report.components.iter().filter(|c| c.cached).count() as u32;
        self.out.bake_cache = Some(crate::model::BakeCache {
            hits,
            misses: report.components.len() as u32 - hits,
        });
        if let kiln_bake::TestReport::Failed {
            message,
            log: test_log,
        } = &report.tests
        {
            return Err(StageError::TestsFailed {
                image: report.image.clone(),
                message: message.clone(),
                log: test_log.clone(),
            });
        }
        self.vars.insert(
            "BakeVariables".into(),
            BTreeMap::from([
                ("Image".into(), report.image.clone()),
                ("ImageDigest".into(), report.digest.clone()),
            ]),
        );
        // Again now that the parent is surely in the store, so that the
        // next only_if_changed comparison sees the parent's digest.
        self.out.inputs_digest = self.inputs_digest()?;
        Ok(Outcome::Done(format!(
            "{}{}",
            report.image,
            if report.unchanged { " (unchanged)" } else { "" }
        )))
    }

    pub fn deploy(&mut self, log: &mut StageLog) -> StageResult {
        let Some(deploy) = self.config()?.deploy.clone() else {
            return Ok(Outcome::Skipped("kiln.yaml has no deploy section".into()));
        };
        let fleet = self.env.fleet.clone();
        let mut tags = deploy.tags.clone();
        tags.insert("Pipeline".into(), self.pipeline.name.clone());
        tags.insert("ExecutionId".into(), self.execution.id.clone());
        let secrets = if deploy.secrets.is_empty() {
            BTreeMap::new()
        } else {
            let params = kiln_params::Params::open(&self.env.state.join("kiln.db"))?;
            let mut values = BTreeMap::new();
            for (var, name) in &deploy.secrets {
                let p = params.get(name).map_err(|source| StageError::Secret {
                    var: var.clone(),
                    source,
                })?;
                values.insert(var.clone(), p.value);
            }
            log.line(&format!(
                "secrets from the parameter store: {}",
                deploy
                    .secrets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            values
        };
        let spec = TemplateSpec {
            image: self.var("BakeVariables", "ImageDigest")?,
            env: deploy.environment.clone(),
            secrets,
            tags,
            ..TemplateSpec::default()
        };
        let template = fleet
            .create_template(&deploy.group, spec)
            .map_err(|source| StageError::Template {
                group: deploy.group.clone(),
                source,
            })?;
        log.line(&format!(
            "launch template {} version {} for {}",
            template.name, template.version, template.image
        ));
        let group = deploy.group.clone();
        let started = Instant::now();
        let deadline = started + deploy.timeout;
        let result = self.env.handle.block_on(async {
            let existing = fleet.group(&group).ok();
            let last_rollout = match &existing {
                Some(view) => {
                    if view.group.template != group {
                        return Err(StageError::NotOurGroup {
                            group: group.clone(),
                            template: view.group.template.clone(),
                        });
                    }
                    let last = view.rollouts.iter().map(|r| r.id).max().unwrap_or(0);
                    if view.group.spec.lb_threads != deploy.spec.lb_threads {
                        // Its threads each hold a share of the open
                        // connections: changing them would cut those.
                        log.line(&format!(
                            "group {group}'s load balancer keeps its {} threads (deploy.lb_threads is {}): the count is set when a group is created",
                            view.group.spec.lb_threads, deploy.spec.lb_threads
                        ));
                    }
                    fleet
                        .update_group(
                            &group,
                            GroupUpdate {
                                min: Some(deploy.spec.min),
                                max: Some(deploy.spec.max),
                                desired: Some(deploy.spec.desired),
                                template_version: Some(template.version),
                                health: Some(deploy.spec.health.clone()),
                                rolling: Some(deploy.spec.rolling.clone()),
                                deregistration_delay_ms: Some(deploy.spec.deregistration_delay_ms),
                                idle_timeout_ms: Some(deploy.spec.idle_timeout_ms),
                                routing: Some(deploy.spec.routing.clone()),
                            },
                        )
                        .map_err(|source| StageError::Group {
                            group: group.clone(),
                            source,
                        })?;
                    log.line(&format!(
                        "rolling group {group} to template version {}",
                        template.version
                    ));
                    last
                }
                None => {
                    fleet
                        .create_group(&group, &group, Some(template.version), deploy.spec.clone())
                        .await
                        .map_err(|source| StageError::Group {
                            group: group.clone(),
                            source,
                        })?;
                    log.line(&format!(
                        "created group {group} with {} instances",
                        deploy.spec.desired
                    ));
                    0
                }
            };
            wait_for_group(
                &fleet,
                &group,
                template.version,
                last_rollout,
                deadline,
                log,
            )
            .await
        });
        let lb = fleet
            .group(&group)
            .map(|v| v.load_balancer)
            .unwrap_or_default();
        self.vars.insert(
            "DeployVariables".into(),
            BTreeMap::from([
                ("Group".into(), group.clone()),
                ("TemplateVersion".into(), template.version.to_string()),
                ("LoadBalancer".into(), lb.clone()),
            ]),
        );
        result?;
        Ok(Outcome::Done(format!(
            "{group} on template version {} behind {lb} ({:.1}s)",
            template.version,
            started.elapsed().as_secs_f64()
        )))
    }
}

/// Waits until the group serves `version` on all its desired instances,
/// or its rollout rolls back.
async fn wait_for_group(
    fleet: &Fleet,
    group: &str,
    version: u32,
    last_rollout: i64,
    deadline: Instant,
    log: &mut StageLog,
) -> Result<(), StageError> {
    let mut seen = String::new();
    loop {
        let view = fleet.group(group).map_err(|source| StageError::Group {
            group: group.to_string(),
            source,
        })?;
        let rollout = view
            .rollouts
            .iter()
            .filter(|r| r.id > last_rollout && r.to_version == version)
            .max_by_key(|r| r.id);
        let serving = view
            .instances
            .iter()
            .filter(|i| i.version == version && i.state == kiln_fleet::InstanceState::InService)
            .count() as u32;
        let others = view
            .instances
            .iter()
            .filter(|i| i.version != version)
            .count();
        let state = format!(
            "{serving}/{} instances in service on version {version}, {others} on others{}",
            view.group.spec.desired,
            rollout
                .map(|r| format!(", rollout {}", r.state.as_str()))
                .unwrap_or_default()
        );
        if state != seen {
            log.line(&state);
            seen = state;
        }
        match rollout.map(|r| r.state) {
            Some(RolloutState::RolledBack) | Some(RolloutState::RollingBack) => {
                let r = rollout.expect("matched");
                return Err(StageError::RolledBack {
                    version,
                    from: r.from_version,
                    reason: r.reason.clone(),
                });
            }
            Some(RolloutState::Succeeded) => return Ok(()),
            _ => {}
        }
        if rollout.is_none() && serving >= view.group.spec.desired && others == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StageError::NotConverged { state: seen });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes a stage's scratch directory. A failure is logged, not fatal:
/// what the stage does next (a checkout, a build) refuses a directory
/// that is in its way, and the daemon's recovery empties scratch space.
fn remove_scratch(path: impl AsRef<Path>) {
    let path = path.as_ref();
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove scratch space");
    }
}

fn short(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// The bake's log, and the time its component steps took.
struct BakeLog<'a>(&'a mut StageLog, u64);

impl kiln_toe::Observer for BakeLog<'_> {
    fn step_finished(&mut self, phase: &str, record: &kiln_toe::StepRecord) {
        self.1 += record.duration_ms;
        let detail = if record.failure_message.is_empty() {
            String::new()
        } else {
            format!(": {}", record.failure_message)
        };
        self.0.line(&format!(
            "  {:?} {phase}/{} ({}) {:.2}s{detail}",
            record.status,
            record.name,
            record.action,
            record.duration_ms as f64 / 1000.0
        ));
    }

    fn output(&mut self, line: &str) {
        self.0.line(&format!("  | {line}"));
    }
}

impl kiln_bake::BakeObserver for BakeLog<'_> {
    fn event(&mut self, message: &str) {
        self.0.line(message);
    }
}
