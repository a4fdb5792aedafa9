//! `kiln synth aws`: kiln.yaml as the CloudFormation of the AWS pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct SynthArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Write the pipeline, image and deployment stacks' templates and a
    /// summary (deterministic: the same kiln.yaml gives the same bytes).
    Aws {
        /// The pipeline file.
        #[arg(default_value = "kiln.yaml")]
        file: PathBuf,
        /// Where the templates go; the pipeline reads the image and
        /// deployment templates from aws/ in its source, the default.
        #[arg(long, default_value = "aws")]
        out: PathBuf,
    },
}

pub fn main(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let Target::Aws { file, out } = args.target;
    let config = match kiln_pipeline::config::load(&file) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(1));
        }
    };
    let synthesis = kiln_synth::synth(&config, &file)?;
    synthesis
        .write(&out)
        .with_context(|| format!("writing the templates to {}", out.display()))?;
    for w in &synthesis.warnings {
        eprintln!("warning: {w}");
    }
    for name in synthesis.files.keys() {
        println!("{}", out.join(name).display());
    }
    Ok(ExitCode::SUCCESS)
}
