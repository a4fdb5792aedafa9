//! `kiln synth aws`: the same kiln.yaml that runs locally, as the
//! CloudFormation of the AWS pipeline it re-implements. Three stacks, as the
//! seed splits them by lifecycle: the pipeline (artifact bucket, source,
//! CodeBuild, the version step, the actions that deploy the other two), the
//! image (Image Builder) and the deployment (launch template, Auto Scaling
//! group, load balancer). IAM comes from one table in [`iam`].
//!
//! Output is deterministic: maps are emitted in key order, nothing reads the
//! clock or the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_pipeline::Config;
use kiln_pipeline::config::AwsConfig;
use serde_json::{Value, json};

mod deploy;
pub mod iam;
mod image;
mod pipeline;
pub mod yaml;

/// Where the pipeline finds the image and deployment templates in its
/// source: the synthesized files are committed to the repository there.
pub const TEMPLATE_DIR: &str = "aws";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stack {
    Pipeline,
    Image,
    Deploy,
}

impl Stack {
    /// In the order they are deployed: the image stack's parameter feeds
    /// the deployment stack.
    pub const ALL: [Stack; 3] = [Stack::Pipeline, Stack::Image, Stack::Deploy];

    /// The stack's name for the `aws.prefix`.
    pub fn name(self, prefix: &str) -> String {
        match self {
            Stack::Pipeline => format!("{prefix}-pipeline"),
            Stack::Image => format!("{prefix}-image"),
            Stack::Deploy => format!("{prefix}-deploy"),
        }
    }

    pub fn file(self) -> &'static str {
        match self {
            Stack::Pipeline => "pipeline.yaml",
            Stack::Image => "image.yaml",
            Stack::Deploy => "deploy.yaml",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{file}: {field}: {message}")]
    Unsupported {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error(
        "{file}: the aws: section is missing; `kiln synth aws` needs at least aws.region and aws.source"
    )]
    NoAwsSection { file: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Buildspec(kiln_doc::diag::Diagnostics),
}

/// The templates by file name, and the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthesis {
    pub files: BTreeMap<String, String>,
    /// Each stack's template as data, by stack: what `kiln aws deploy`
    /// reads the parameters from.
    pub templates: BTreeMap<Stack, Value>,
    /// What kiln.yaml asked for that AWS does differently, or not at all.
    pub warnings: Vec<String>,
}

impl Synthesis {
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in &self.files {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    }
}

/// What the templates are computed from.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub aws: &'a AwsConfig,
    pub prefix: String,
    /// The parameter-store names the repository's buildspec reads.
    pub build_parameters: Vec<String>,
    file: PathBuf,
}

impl Ctx<'_> {
    pub fn stack_name(&self, s: Stack) -> String {
        s.name(&self.prefix)
    }

    pub fn role_name(&self, r: iam::Role) -> String {
        format!("{}-{}", self.prefix, iam::info(r).suffix)
    }

    /// The SSM parameter the image stack publishes the AMI id to, as the
    /// seed does, and the deployment stack reads.
    pub fn ami_parameter(&self) -> String {
        ami_parameter(&self.prefix)
    }

    /// The fleet gets a role only when it reads secrets.
    pub fn fleet_role(&self) -> bool {
        self.config
            .deploy
            .as_ref()
            .is_some_and(|d| !d.secrets.is_empty())
    }

    pub fn tags(&self) -> Value {
        let mut tags: BTreeMap<&str, &str> = BTreeMap::new();
        tags.insert("Application", &self.prefix);
        for (k, v) in &self.aws.tags {
            tags.insert(k, v);
        }
        Value::Array(
            tags.into_iter()
                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                .collect(),
        )
    }

    fn unsupported(&self, field: &str, message: impl Into<String>) -> SynthError {
        SynthError::Unsupported {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The SSM parameter holding the newest AMI id for the `aws.prefix`.
pub fn ami_parameter(prefix: &str) -> String {
    format!("/{prefix}/ImageId")
}

/// The tag every AMI, component and Image Builder resource carries, with
/// the prefix as value: how `kiln aws gc` and `destroy` find them.
pub const PIPELINE_TAG: &str = "kiln:pipeline";

pub fn sub(s: &str) -> Value {
    json!({ "Fn::Sub": s })
}

/// `${` in literal text, escaped for Fn::Sub.
pub fn sub_escape(s: &str) -> String {
    s.replace("${", "${!")
}

/// Synthesizes the three templates and the summary for kiln.yaml at
/// `file` (already parsed into `config`).
pub fn synth(config: &Config, file: &Path) -> Result<Synthesis, SynthError> {
    let aws = config
        .aws
        .as_ref()
        .ok_or_else(|| SynthError::NoAwsSection {
            file: file.to_path_buf(),
        })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut build_parameters = Vec::new();
    if let Some(b) = &config.build {
        let spec =
            kiln_build::buildspec::load(&base.join(&b.buildspec)).map_err(SynthError::Buildspec)?;
        build_parameters = spec
            .env
            .parameter_store
            .iter()
            .map(|(_, name)| name.clone())
            .collect();
        build_parameters.sort();
        build_parameters.dedup();
    }
    let ctx = Ctx {
        config,
        aws,
        prefix: aws.prefix.clone(),
        build_parameters,
        file: file.to_path_buf(),
    };
    let mut warnings = Vec::new();
    let pipeline = pipeline::template(&ctx, &mut warnings)?;
    let image = image::template(&ctx, &mut warnings)?;
    let mut files = BTreeMap::new();
    let mut templates = BTreeMap::new();
    let mut stacks = vec![(Stack::Pipeline, pipeline), (Stack::Image, image)];
    if config.deploy.is_some() {
        stacks.push((Stack::Deploy, deploy::template(&ctx, &mut warnings)?));
    }
    let mut summary = format!(
        "kiln synth aws: {} in {}\n\nDeploy {} first (CAPABILITY_NAMED_IAM); its pipeline \
         deploys the others from {TEMPLATE_DIR}/ in the source, so commit these files there.\n",
        config.name,
        aws.region,
        ctx.stack_name(Stack::Pipeline)
    );
    for (stack, template) in &stacks {
        summary.push_str(&summarize(&ctx, *stack, template));
        files.insert(stack.file().to_string(), yaml::to_string(template));
        templates.insert(*stack, template.clone());
    }
    summary.push_str("\nWarnings\n");
    if warnings.is_empty() {
        summary.push_str("  none\n");
    }
    for w in &warnings {
        summary.push_str(&format!("  - {w}\n"));
    }
    files.insert("summary.txt".into(), summary);
    Ok(Synthesis {
        files,
        templates,
        warnings,
    })
}

fn summarize(ctx: &Ctx, stack: Stack, t: &Value) -> String {
    let mut out = format!(
        "\nStack {} ({})\n  Parameters:\n",
        ctx.stack_name(stack),
        stack.file()
    );
    let params = t["Parameters"].as_object().cloned().unwrap_or_default();
    if params.is_empty() {
        out.push_str("    none\n");
    }
    for (name, p) in &params {
        out.push_str(&format!(
            "    {name}: {}\n",
            p["Description"].as_str().unwrap_or("")
        ));
    }
    out.push_str("  Resources:\n");
    for (id, r) in t["Resources"].as_object().into_iter().flatten() {
        let what = r["Metadata"]["Purpose"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                r["Properties"]["Description"]
                    .as_str()
                    .map(|d| d.trim_start_matches("kiln: ").to_string())
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "    {id} ({}): {what}\n",
            r["Type"].as_str().unwrap_or("")
        ));
    }
    out
}

/// A template's frame.
fn template(description: String, parameters: Value, resources: Value, outputs: Value) -> Value {
    let mut t = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": description,
        "Resources": resources,
    });
    if parameters.as_object().is_some_and(|m| !m.is_empty()) {
        t["Parameters"] = parameters;
    }
    if outputs.as_object().is_some_and(|m| !m.is_empty()) {
        t["Outputs"] = outputs;
    }
    t
}

/// A resource with the purpose the summary shows.
fn resource(ty: &str, purpose: &str, properties: Value) -> Value {
    json!({ "Type": ty, "Metadata": { "Purpose": purpose }, "Properties": properties })
}

/// Seconds, at least `min`: AWS counts health checks and pauses in whole
/// seconds where kiln takes milliseconds.
fn secs(ms: u64, min: u64, max: u64) -> u64 {
    ms.div_ceil(1000).clamp(min, max)
}

/// ISO 8601 duration for PauseTime.
fn iso_duration(secs: u64) -> String {
    format!("PT{secs}S")
}
