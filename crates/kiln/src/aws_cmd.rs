//! `kiln aws deploy | status | trigger | gc | destroy`: the AWS target,
//! through kiln-aws. Progress goes to stderr, results to stdout.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kiln_aws::{Aws, Names, Options, Ui};
use kiln_synth::Stack;

use crate::output::{Format, print_json};

#[derive(Args)]
pub struct AwsArgs {
    /// The pipeline file whose aws: section names the region and prefix.
    #[arg(long, short, default_value = "kiln.yaml", global = true)]
    file: PathBuf,
    /// Overrides the region of the standard chain (AWS_REGION, the
    /// profile); kiln.yaml's aws.region is used when neither has one.
    #[arg(long, global = true)]
    region: Option<String>,
    /// Sends every request to this endpoint (AWS_ENDPOINT_URL also works).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: AwsCommand,
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Upload the components and templates, then create or update each
    /// stack through a change set, shown before it runs.
    Deploy {
        /// Execute the change sets without asking.
        #[arg(long)]
        yes: bool,
        /// Which stacks (repeatable); the pipeline deploys the image and
        /// deployment stacks itself on each run.
        #[arg(long = "stack", value_enum, default_values_t = [StackArg::Pipeline])]
        stacks: Vec<StackArg>,
        /// A stack parameter, NAME=VALUE (repeatable), for every stack that
        /// declares it; others keep their previous value or default.
        #[arg(long = "parameter", value_parser = parse_parameter)]
        parameters: Vec<(String, String)>,
        /// Leave resources of this type (and outputs naming them) out of
        /// the deployed templates (repeatable): for an emulator that lacks
        /// the type.
        #[arg(long = "without-type", value_name = "TYPE")]
        without_types: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// The stacks, the pipeline's latest executions and stages, the newest
    /// images, the group's instances and the target group's health.
    Status {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Start a pipeline execution.
    Trigger,
    /// Deregister the pipeline's AMIs beyond the newest N and those the
    /// fleet may need, and delete their snapshots.
    Gc {
        /// AMIs to keep besides those in use; retention.keep_images by
        /// default.
        #[arg(long)]
        keep: Option<usize>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove everything the pipeline made; safe to run again.
    Destroy {
        #[arg(long)]
        yes: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StackArg {
    Pipeline,
    Image,
    Deploy,
}

impl From<StackArg> for Stack {
    fn from(s: StackArg) -> Stack {
        match s {
            StackArg::Pipeline => Stack::Pipeline,
            StackArg::Image => Stack::Image,
            StackArg::Deploy => Stack::Deploy,
        }
    }
}

fn parse_parameter(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

/// Prints progress; asks on the terminal, or refuses when there is none.
struct Cli {
    yes: bool,
}

impl Ui for Cli {
    fn line(&self, text: &str) {
        say!("{text}");
    }

    fn confirm(&self, question: &str) -> bool {
        if self.yes {
            return true;
        }
        if !std::io::stdin().is_terminal() {
            say!("{question} not on a terminal: pass --yes to proceed");
            return false;
        }
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        matches!(answer.trim(), "y" | "Y" | "yes")
    }
}

pub fn main(args: AwsArgs) -> anyhow::Result<ExitCode> {
    let config = match kiln_pipeline::config::load(&args.file) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(1));
        }
    };
    let Some(names) = Names::new(&config) else {
        anyhow::bail!(
            "{}: the aws: section is missing; `kiln aws` needs at least aws.region and aws.source",
            args.file.display()
        );
    };
    let region = config
        .aws
        .as_ref()
        .map(|a| a.region.clone())
        .unwrap_or_default();
    let mut options = Options::new(&region);
    options.region = args.region.clone();
    options.endpoint_url = args.endpoint_url.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let aws = Aws::connect(&options).await;
        if aws.region != region {
            say!(
                "warning: working in {}, while {} says aws.region: {region}",
                aws.region,
                args.file.display()
            );
        }
        run(args, &config, &names, &aws).await
    })
}

async fn run(
    args: AwsArgs,
    config: &kiln_pipeline::Config,
    names: &Names,
    aws: &Aws,
) -> anyhow::Result<ExitCode> {
    match args.command {
        AwsCommand::Deploy {
            yes,
            stacks,
            parameters,
            without_types,
            output,
        } => {
            let synthesis = kiln_synth::synth(config, &args.file)?;
            for w in &synthesis.warnings {
                say!("warning: {w}");
            }
            let req = kiln_aws::deploy::Request {
                synthesis: &synthesis,
                components: config
                    .image
                    .components
                    .iter()
                    .map(|c| c.path.clone())
                    .collect(),
                stacks: stacks.into_iter().map(Stack::from).collect(),
                parameters: parameters.into_iter().collect::<BTreeMap<_, _>>(),
                without_types,
            };
            let report = kiln_aws::deploy::deploy(aws, names, &req, &Cli { yes }).await?;
            if output == Format::Json {
                print_json(&report)?;
            } else {
                for k in &report.uploaded {
                    println!("uploaded {k}");
                }
                if report.changed_nothing() {
                    println!("no changes: every stack and object is as kiln.yaml says");
                }
                for s in &report.stacks {
                    let what = match &s.outcome {
                        kiln_aws::deploy::Outcome::NoChanges => "no changes".to_string(),
                        kiln_aws::deploy::Outcome::Applied { status, changes } => {
                            format!("{status} ({} changes)", changes.len())
                        }
                        kiln_aws::deploy::Outcome::Declined { .. } => "not executed".to_string(),
                    };
                    println!("{}: {what}", s.stack);
                }
            }
            let declined = report
                .stacks
                .iter()
                .any(|s| matches!(s.outcome, kiln_aws::deploy::Outcome::Declined { .. }));
            Ok(if declined {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        AwsCommand::Status { output } => {
            let status = kiln_aws::status::status(aws, names).await?;
            if output == Format::Json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        AwsCommand::Trigger => {
            let id = kiln_aws::status::trigger(aws, names).await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        AwsCommand::Gc {
            keep,
            dry_run,
            output,
        } => {
            let keep = keep.unwrap_or(names.keep_images);
            let plan = kiln_aws::gc::gc(aws, names, keep, dry_run, &Cli { yes: true }).await?;
            if output == Format::Json {
                print_json(&plan)?;
            } else {
                println!(
                    "{} {} AMIs, kept {}",
                    if dry_run {
                        "would deregister"
                    } else {
                        "deregistered"
                    },
                    plan.remove.len(),
                    plan.keep.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AwsCommand::Destroy { yes, output } => {
            let ui = Cli { yes };
            let stacks = kiln_aws::destroy::existing_stacks(aws, names).await?;
            if !stacks.is_empty()
                && !ui.confirm(&format!(
                    "Delete {} and everything of {} in {} (bucket, parameters, AMIs, snapshots)?",
                    stacks.join(", "),
                    names.prefix,
                    aws.region
                ))
            {
                return Ok(ExitCode::from(1));
            }
            let report = kiln_aws::destroy::destroy(aws, names, &ui).await?;
            if output == Format::Json {
                print_json(&report)?;
            } else if report.is_empty() {
                println!("nothing is left of {} in {}", names.prefix, aws.region);
            } else {
                println!(
                    "removed {} stacks, {} bucket, {} parameters, {} AMIs, {} snapshots, {} Image Builder resources",
                    report.stacks.len(),
                    usize::from(report.bucket.is_some()),
                    report.parameters.len(),
                    report.images.len(),
                    report.snapshots.len(),
                    report.image_builder.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(s: &kiln_aws::status::Status) {
    println!("Stacks ({})", s.region);
    for st in &s.stacks {
        println!(
            "  {:<24} {}{}",
            st.name,
            st.status.as_deref().unwrap_or("not deployed"),
            st.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    match &s.pipeline {
        Some(p) => {
            println!("Pipeline {}", p.name);
            for stage in &p.stages {
                println!(
                    "  {:<12} {:<12} {}",
                    stage.name,
                    stage.status.as_deref().unwrap_or("-"),
                    stage.execution_id.as_deref().unwrap_or("")
                );
            }
            for e in &p.executions {
                println!(
                    "  execution {} {} started {} by {} {}",
                    e.id,
                    e.status.as_deref().unwrap_or("-"),
                    e.started.as_deref().unwrap_or("-"),
                    e.trigger.as_deref().unwrap_or("-"),
                    e.revisions.join(", ")
                );
            }
        }
        None => println!("Pipeline: none"),
    }
    println!("Images (newest first)");
    if s.images.is_empty() {
        println!("  none");
    }
    for i in &s.images {
        println!(
            "  {} {} version {} source {} created {}",
            i.id,
            i.name,
            i.version.as_deref().unwrap_or("-"),
            i.commit.as_deref().unwrap_or("-"),
            i.created
        );
    }
    match &s.group {
        Some(g) => {
            println!(
                "Group {}: desired {} (min {}, max {})",
                g.name, g.desired, g.min, g.max
            );
            for i in &g.instances {
                println!(
                    "  {} {} {} {} launch template version {}",
                    i.id,
                    i.zone.as_deref().unwrap_or("-"),
                    i.lifecycle.as_deref().unwrap_or("-"),
                    i.health.as_deref().unwrap_or("-"),
                    i.launch_template_version.as_deref().unwrap_or("-")
                );
            }
            if let Some(r) = &g.rollout {
                println!("  rollout in progress: {r}");
            }
        }
        None => println!("Group: none"),
    }
    if !s.targets.is_empty() {
        println!("Targets");
    }
    for t in &s.targets {
        println!(
            "  {}:{} {}{}",
            t.id,
            t.port.map(|p| p.to_string()).unwrap_or_default(),
            t.state.as_deref().unwrap_or("-"),
            t.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
}
