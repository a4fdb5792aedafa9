//! A CodeBuild buildspec (versions 0.2 and 0.1), parsed and checked with
//! the position of every problem.

use std::path::Path;

use kiln_doc::diag::{Collector, Diagnostics, DocError};
use kiln_doc::yaml::{self, Node, Pos};
use serde::Serialize;

/// The shell that runs a phase's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shell {
    /// `/bin/sh`, CodeBuild's default on Linux.
    Sh,
    Bash,
    /// `powershell.exe`: a Windows build image only.
    PowerShell,
    /// `cmd.exe`: a Windows build image only.
    Cmd,
}

impl Shell {
    /// The shell's path inside the build image (a Windows shell's program
    /// name; [`Buildspec::local_blocker`] keeps it from running locally).
    pub fn path(self) -> &'static str {
        match self {
            Shell::Sh => "/bin/sh",
            Shell::Bash => "/bin/bash",
            Shell::PowerShell => "powershell.exe",
            Shell::Cmd => "cmd.exe",
        }
    }

    pub fn windows(self) -> bool {
        matches!(self, Shell::PowerShell | Shell::Cmd)
    }
}

/// What happens to the build when a phase fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum OnFailure {
    #[default]
    Abort,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    Install,
    PreBuild,
    Build,
    PostBuild,
}

impl PhaseName {
    pub const ALL: [PhaseName; 4] = [
        PhaseName::Install,
        PhaseName::PreBuild,
        PhaseName::Build,
        PhaseName::PostBuild,
    ];

    /// The key in the buildspec.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Install => "install",
            PhaseName::PreBuild => "pre_build",
            PhaseName::Build => "build",
            PhaseName::PostBuild => "post_build",
        }
    }

    /// The name CodeBuild shows in its logs, e.g. `PRE_BUILD`.
    pub fn upper(self) -> &'static str {
        match self {
            PhaseName::Install => "INSTALL",
            PhaseName::PreBuild => "PRE_BUILD",
            PhaseName::Build => "BUILD",
            PhaseName::PostBuild => "POST_BUILD",
        }
    }
}

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `run-as`: the Linux user that runs the commands, and where the
/// buildspec names it (`FILE:LINE:COL`, for errors at run time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunAs {
    pub user: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub name: PhaseName,
    pub run_as: Option<RunAs>,
    pub on_failure: OnFailure,
    pub commands: Vec<String>,
    pub finally: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Env {
    pub shell: Shell,
    /// Plain variables, in document order.
    pub variables: Vec<(String, String)>,
    /// Variable name to parameter name, resolved when the build starts.
    pub parameter_store: Vec<(String, String)>,
    /// Variable name to `secret-id[:json-key[:version-stage[:version-id]]]`.
    pub secrets_manager: Vec<(String, String)>,
    pub exported_variables: Vec<String>,
    pub git_credential_helper: bool,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            shell: Shell::Sh,
            variables: Vec::new(),
            parameter_store: Vec::new(),
            secrets_manager: Vec::new(),
            exported_variables: Vec::new(),
            git_credential_helper: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Artifacts {
    pub files: Vec<String>,
    pub name: Option<String>,
    pub discard_paths: bool,
    /// Relative to the source directory; checked not to climb out of it.
    pub base_directory: Option<String>,
    pub exclude_paths: Vec<String>,
    /// `secondary-artifacts`: more artifact sets, by identifier.
    pub secondary: std::collections::BTreeMap<String, Artifacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Buildspec {
    /// `0.2`, or `0.1` (each command in its own shell).
    pub version: String,
    /// Every phase's user unless the phase names its own.
    pub run_as: Option<RunAs>,
    pub env: Env,
    /// The phases present, in execution order.
    pub phases: Vec<Phase>,
    pub artifacts: Option<Artifacts>,
    /// `batch`, run by [`crate::batch::run`]; [`crate::run()`] runs the
    /// phases as one build, as a non-batch StartBuild does.
    pub batch: Option<crate::batch::Batch>,
    /// `reports`: report groups, collected after the build.
    pub reports: Vec<crate::reports::ReportGroup>,
    /// `cache.paths`: kept between builds of one pipeline.
    pub cache: crate::cache::CacheSpec,
    /// Parts accepted but not acted on locally, with where they are.
    pub notes: Vec<String>,
    /// What CodeBuild accepts but kiln finds suspect or ignores locally,
    /// with file:line:col; `--strict` turns them into errors.
    #[serde(skip)]
    pub warnings: Vec<DocError>,
}

impl Buildspec {
    pub fn phase(&self, name: PhaseName) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Whether commands share one shell session (0.2) or each get their own (0.1).
    pub fn shared_shell(&self) -> bool {
        self.version != "0.1"
    }

    /// Why this buildspec, valid on CodeBuild, cannot run on the local
    /// target, naming the feature and the target that can run it.
    pub fn local_blocker(&self) -> Option<String> {
        if self.env.shell.windows() {
            Some(format!(
                "env.shell {} needs a Windows build image: only the AWS target can run this buildspec",
                self.env.shell.path()
            ))
        } else if self.phases.is_empty() && self.batch.is_some() {
            Some("this buildspec has only a batch section: run it as a batch build (a pipeline's Build stage does)".into())
        } else {
            None
        }
    }
}

/// As [`load`], with every warning an error: `--strict`.
pub fn load_strict(path: &Path) -> Result<Buildspec, Diagnostics> {
    let spec = load(path)?;
    if spec.warnings.is_empty() {
        Ok(spec)
    } else {
        Err(Diagnostics(spec.warnings))
    }
}

/// Reads and checks a buildspec file.
pub fn load(path: &Path) -> Result<Buildspec, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&src, path),
        Err(e) => {
            let mut c = Collector::new(path);
            c.push(Pos { line: 1, col: 1 }, "", format!("cannot read: {e}"));
            Err(Diagnostics(c.errors))
        }
    }
}

/// Parses `src`; `file` names it in errors.
pub fn parse(src: &str, file: &Path) -> Result<Buildspec, Diagnostics> {
    let mut c = Collector::new(file);
    let root = match yaml::parse(src) {
        Ok(n) => n,
        Err(e) => {
            c.push(e.pos, "", e.message);
            return Err(Diagnostics(c.errors));
        }
    };
    let mut p = Parser {
        c,
        notes: Vec::new(),
    };
    let spec = p.buildspec(&root);
    if p.c.errors.is_empty() {
        Ok(Buildspec {
            notes: p.notes,
            warnings: p.c.warnings,
            ..spec
        })
    } else {
        Err(Diagnostics(p.c.errors))
    }
}

pub(crate) struct Parser {
    pub(crate) c: Collector,
    notes: Vec<String>,
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

impl Parser {
    fn note(&mut self, pos: Pos, field: &str, msg: &str) {
        let note = format!("{}:{pos}: {field}: {msg}", self.c.file().display());
        tracing::info!("{note}");
        self.notes.push(note);
    }

    /// Accepted, as CodeBuild accepts it, but not acted on locally: a note
    /// in the build log and a warning from validation.
    pub(crate) fn ignored(&mut self, pos: Pos, field: &str, msg: &str) {
        self.note(pos, field, msg);
        self.c.warn(pos, field, msg);
    }

    /// The entries of a map, with unknown keys reported.
    pub(crate) fn map<'a>(
        &mut self,
        node: &'a Node,
        field: &str,
        known: &[&str],
    ) -> Vec<(&'a str, &'a Node)> {
        let Some(entries) = node.as_map() else {
            self.c.push(
                node.pos,
                field,
                format!("must be a map, not a {}", node.kind()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.scalar() else {
                self.c.push(k.pos, field, "keys must be strings");
                continue;
            };
            if known.contains(&key) {
                out.push((key, v));
            } else {
                self.c.push(
                    k.pos,
                    join(field, key),
                    format!("unknown key {key:?}; expected one of: {}", known.join(", ")),
                );
            }
        }
        out
    }

    pub(crate) fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match node.scalar() {
            Some(s) => Some(s.to_string()),
            None => {
                self.c.push(
                    node.pos,
                    field,
                    format!("must be a string, not a {}", node.kind()),
                );
                None
            }
        }
    }

    fn run_as(&mut self, node: &Node, field: &str) -> Option<RunAs> {
        let user = self.string(node, field)?;
        if user.is_empty() || user.contains(['\n', ':', '/']) {
            self.c.push(
                node.pos,
                field,
                "must name a Linux user (such as codebuild-user)",
            );
            return None;
        }
        Some(RunAs {
            user,
            at: format!("{}:{}", self.c.file().display(), node.pos),
        })
    }

    /// A phase's `commands` or `finally`: a list, or, as CodeBuild takes
    /// them, nothing (`commands:` left empty) or a single string.
    fn commands(&mut self, node: &Node, field: &str) -> Vec<String> {
        if node.is_null() {
            return Vec::new();
        }
        if let Some(one) = node.scalar() {
            self.c.warn(
                node.pos,
                field,
                "a single string, run as one command; CodeBuild takes it, but a list is meant",
            );
            return vec![one.to_string()];
        }
        self.strings(node, field)
    }

    pub(crate) fn strings(&mut self, node: &Node, field: &str) -> Vec<String> {
        let Some(items) = node.as_seq() else {
            self.c.push(
                node.pos,
                field,
                format!("must be a list of strings, not a {}", node.kind()),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &format!("{field}[{i}]")))
            .collect()
    }

    pub(crate) fn yes_no(&mut self, node: &Node, field: &str) -> bool {
        match node.scalar() {
            Some("yes" | "Yes" | "YES" | "true" | "True" | "TRUE") => true,
            Some("no" | "No" | "NO" | "false" | "False" | "FALSE") => false,
            _ => {
                self.c.push(node.pos, field, "must be yes or no");
                false
            }
        }
    }

    pub(crate) fn variables(&mut self, node: &Node, field: &str) -> Vec<(String, String)> {
        let Some(entries) = node.as_map() else {
            self.c.push(
                node.pos,
                field,
                format!("must be a map, not a {}", node.kind()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(name) = k.scalar() else {
                self.c.push(k.pos, field, "variable names must be strings");
                continue;
            };
            let f = join(field, name);
            if !is_var_name(name) {
                self.c
                    .push(k.pos, &f, "not a valid environment variable name");
                continue;
            }
            if let Some(value) = self.string(v, &f) {
                out.push((name.to_string(), value));
            }
        }
        out
    }

    fn buildspec(&mut self, root: &Node) -> Buildspec {
        let mut spec = Buildspec {
            version: String::new(),
            run_as: None,
            env: Env::default(),
            phases: Vec::new(),
            artifacts: None,
            batch: None,
            reports: Vec::new(),
            cache: Default::default(),
            notes: Vec::new(),
            warnings: Vec::new(),
        };
        const KNOWN: &[&str] = &[
            "version",
            "run-as",
            "env",
            "proxy",
            "batch",
            "phases",
            "reports",
            "artifacts",
            "cache",
        ];
        let entries = self.map(root, "", KNOWN);
        if root.as_map().is_some() && root.get("version").is_none() {
            self.c.push(
                root.pos,
                "version",
                "missing; CodeBuild requires version: 0.2",
            );
        }
        // A batch buildspec may leave its phases to the buildspecs its
        // builds name; otherwise CodeBuild needs phases.
        if root.as_map().is_some() && root.get("phases").is_none() && root.get("batch").is_none() {
            self.c.push(
                root.pos,
                "phases",
                "missing; a buildspec needs at least one phase",
            );
        }
        for (key, v) in entries {
            match key {
                "version" => match v.scalar() {
                    Some(s @ ("0.2" | "0.1")) => {
                        spec.version = s.to_string();
                        if s == "0.1" {
                            self.note(
                                v.pos,
                                key,
                                "version 0.1: every command runs in its own shell",
                            );
                        }
                    }
                    _ => self.c.push(v.pos, key, "must be 0.2 (or the older 0.1)"),
                },
                "run-as" => spec.run_as = self.run_as(v, key),
                "env" => spec.env = self.env(v),
                "phases" => spec.phases = self.phases(v),
                "artifacts" => spec.artifacts = Some(self.artifacts(v)),
                "reports" => spec.reports = crate::reports::parse(self, v),
                "cache" => spec.cache = crate::cache::parse(self, v),
                "batch" => spec.batch = crate::batch::parse(self, v),
                _ => {
                    if v.as_map().is_none() {
                        self.c
                            .push(v.pos, key, format!("must be a map, not a {}", v.kind()));
                    }
                    self.ignored(v.pos, key, "accepted and ignored on the local target");
                }
            }
        }
        spec
    }

    fn env(&mut self, node: &Node) -> Env {
        const KNOWN: &[&str] = &[
            "shell",
            "variables",
            "parameter-store",
            "exported-variables",
            "secrets-manager",
            "git-credential-helper",
            // A batch build's env takes these; CodeBuild ignores them in
            // the top-level env, where real buildspecs carry them.
            "type",
            "compute-type",
            "image",
            "privileged-mode",
        ];
        let mut env = Env::default();
        for (key, v) in self.map(node, "env", KNOWN) {
            let field = join("env", key);
            match key {
                "shell" => match v.scalar() {
                    Some("bash" | "/bin/bash") => env.shell = Shell::Bash,
                    Some("/bin/sh" | "sh") => env.shell = Shell::Sh,
                    Some(s @ ("powershell.exe" | "cmd.exe")) => {
                        env.shell = if s == "cmd.exe" {
                            Shell::Cmd
                        } else {
                            Shell::PowerShell
                        };
                        self.c.warn(
                            v.pos,
                            &field,
                            format!("{s} runs only on a Windows build image: the AWS target; a local build fails"),
                        );
                    }
                    _ => self.c.push(
                        v.pos,
                        &field,
                        "must be bash or /bin/sh (Linux), or powershell.exe or cmd.exe (Windows)",
                    ),
                },
                "type" | "compute-type" | "image" | "privileged-mode" => {
                    self.c.warn(
                        k_pos(node, key),
                        &field,
                        "CodeBuild reads this only in a batch build's env; here it is ignored",
                    );
                }
                "variables" => env.variables = self.variables(v, &field),
                "parameter-store" => env.parameter_store = self.variables(v, &field),
                "exported-variables" => {
                    let names = self.strings(v, &field);
                    for (i, name) in names.iter().enumerate() {
                        if !is_var_name(name) {
                            let pos = v.as_seq().map_or(v.pos, |s| s[i].pos);
                            self.c.push(
                                pos,
                                format!("{field}[{i}]"),
                                "not a valid environment variable name",
                            );
                        }
                    }
                    env.exported_variables = names;
                }
                "secrets-manager" => {
                    env.secrets_manager = self.variables(v, &field);
                    for (name, reference) in &env.secrets_manager {
                        if reference.split(':').next().is_none_or(str::is_empty) {
                            self.c.push(
                                v.get(name).map_or(v.pos, |n| n.pos),
                                join(&field, name),
                                "must be secret-id[:json-key[:version-stage[:version-id]]]",
                            );
                        }
                    }
                    self.note(
                        v.pos,
                        &field,
                        "read from kiln's secrets store (kiln secrets put), masked in the log",
                    );
                }
                "git-credential-helper" => {
                    env.git_credential_helper = self.yes_no(v, &field);
                    if env.git_credential_helper {
                        self.ignored(
                            v.pos,
                            &field,
                            "ignored: there is no credential helper locally",
                        );
                    }
                }
                _ => unreachable!("key checked against KNOWN"),
            }
        }
        env
    }

    fn phases(&mut self, node: &Node) -> Vec<Phase> {
        let known: Vec<&str> = PhaseName::ALL.iter().map(|p| p.as_str()).collect();
        let mut phases = Vec::new();
        for (key, v) in self.map(node, "phases", &known) {
            let name = PhaseName::ALL
                .into_iter()
                .find(|p| p.as_str() == key)
                .expect("key checked against the phase names");
            phases.push(self.phase(name, v));
        }
        phases.sort_by_key(|p| p.name);
        phases
    }

    fn phase(&mut self, name: PhaseName, node: &Node) -> Phase {
        let base = join("phases", name.as_str());
        let mut known = vec!["run-as", "on-failure", "commands", "finally"];
        if name == PhaseName::Install {
            known.push("runtime-versions");
        }
        let mut phase = Phase {
            name,
            run_as: None,
            on_failure: OnFailure::Abort,
            commands: Vec::new(),
            finally: Vec::new(),
        };
        // An install phase may hold only runtime-versions; CodeBuild also
        // runs a phase whose commands are left out, doing nothing.
        if node.as_map().is_some()
            && node.get("commands").is_none()
            && node.get("runtime-versions").is_none()
        {
            self.c.warn(
                node.pos,
                join(&base, "commands"),
                "missing: the phase runs no command",
            );
        }
        for (key, v) in self.map(node, &base, &known) {
            let field = join(&base, key);
            match key {
                "run-as" => phase.run_as = self.run_as(v, &field),
                "on-failure" => match v.scalar() {
                    Some("ABORT") => phase.on_failure = OnFailure::Abort,
                    Some("CONTINUE") => phase.on_failure = OnFailure::Continue,
                    _ => self.c.push(v.pos, &field, "must be ABORT or CONTINUE"),
                },
                "commands" => phase.commands = self.commands(v, &field),
                "finally" => phase.finally = self.commands(v, &field),
                "runtime-versions" => {
                    if v.as_map().is_none() {
                        self.c
                            .push(v.pos, &field, "must be a map of runtime: version");
                    }
                    self.ignored(
                        v.pos,
                        &field,
                        "ignored: the build image provides its runtimes",
                    );
                }
                _ => unreachable!("key checked against the known keys"),
            }
        }
        phase
    }

    fn artifacts(&mut self, node: &Node) -> Artifacts {
        self.artifact_set(node, "artifacts", true)
    }

    fn artifact_set(&mut self, node: &Node, base: &str, primary: bool) -> Artifacts {
        const KNOWN: &[&str] = &[
            "files",
            "name",
            "discard-paths",
            "base-directory",
            "exclude-paths",
            "enable-symlinks",
            "s3-prefix",
            "secondary-artifacts",
            // CodeBuild ignores it: the project sets the artifact type.
            "type",
        ];
        let mut a = Artifacts::default();
        if node.as_map().is_some() && node.get("files").is_none() {
            self.c.push(node.pos, join(base, "files"), "missing");
        }
        for (key, v) in self.map(node, base, KNOWN) {
            let field = join(base, key);
            match key {
                "files" => {
                    a.files = self.strings(v, &field);
                    for (i, f) in a.files.iter().enumerate() {
                        if let Some(why) = outside_source(f) {
                            let pos = v.as_seq().map_or(v.pos, |s| s[i].pos);
                            self.c.warn(pos, format!("{field}[{i}]"), why);
                        }
                    }
                }
                "name" => a.name = self.string(v, &field),
                "discard-paths" => a.discard_paths = self.yes_no(v, &field),
                "base-directory" => {
                    a.base_directory = self.string(v, &field);
                    if let Some(why) = a.base_directory.as_deref().and_then(outside_source) {
                        self.c.warn(v.pos, &field, why);
                    }
                }
                "exclude-paths" => a.exclude_paths = self.strings(v, &field),
                "secondary-artifacts" if primary => {
                    let Some(entries) = v.as_map() else {
                        self.c
                            .push(v.pos, &field, "must be a map of artifact identifiers");
                        continue;
                    };
                    for (k, set) in entries {
                        let id = k.scalar().unwrap_or_default().to_string();
                        let sub = join(&field, &id);
                        if id.is_empty()
                            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            self.c.push(
                                k.pos,
                                &sub,
                                "an artifact identifier has only letters, digits and _",
                            );
                        }
                        let parsed = self.artifact_set(set, &sub, false);
                        a.secondary.insert(id, parsed);
                    }
                }
                "secondary-artifacts" => {
                    self.c
                        .push(v.pos, &field, "secondary artifacts cannot nest")
                }
                "type" => self.c.warn(
                    v.pos,
                    &field,
                    "ignored by CodeBuild: the project sets the artifact type",
                ),
                _ => self.ignored(v.pos, &field, "accepted and ignored on the local target"),
            }
        }
        a
    }
}

/// Why an artifact path, which CodeBuild resolves anywhere in the build
/// container, fails locally: kiln collects only from the source directory.
fn outside_source(p: &str) -> Option<&'static str> {
    if crate::artifacts::source_relative(p).is_some() {
        None
    } else if p.split('/').any(|s| s == "..") {
        Some(
            "leads out of the source directory with '..': CodeBuild takes it, but kiln collects artifacts only from the source directory, so a local build fails",
        )
    } else {
        Some(
            "an absolute path outside the source directory ($CODEBUILD_SRC_DIR): CodeBuild takes it, but kiln collects artifacts only from the source directory, so a local build fails",
        )
    }
}

/// The position of `key` in the map `node`, for a warning about the key itself.
fn k_pos(node: &Node, key: &str) -> Pos {
    node.as_map()
        .unwrap_or_default()
        .iter()
        .find(|(k, _)| k.scalar() == Some(key))
        .map_or(node.pos, |(k, _)| k.pos)
}

pub(crate) fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}
