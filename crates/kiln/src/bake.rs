//! `kiln bake RECIPE.yaml`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_bake::{BakeObserver, BakeOptions, TestReport};
use kiln_image::Store;
use kiln_toe::{Observer, StepRecord};

#[derive(Args)]
pub struct BakeArgs {
    /// The recipe: name, version, parent, components, instance settings.
    recipe: PathBuf,
    /// Keep the build root of a failed component mounted, and print where.
    #[arg(long)]
    keep_on_failure: bool,
    /// The commit the image is built from, recorded in its labels.
    #[arg(long)]
    source_commit: Option<String>,
    /// For a docker:// parent: verify its registry's TLS certificate
    /// (overrides the recipe's parent_tls_verify); `--tls-verify=false`
    /// for a registry on loopback or with a self-signed certificate.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_verify: Option<bool>,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// Bake progress as plain lines on stderr.
struct Lines {
    terminal: bool,
}

impl Observer for Lines {
    fn step_finished(&mut self, phase: &str, record: &StepRecord) {
        let detail = if record.failure_message.is_empty() {
            String::new()
        } else {
            format!(": {}", record.failure_message)
        };
        eprintln!(
            "    {:?} {phase}/{} ({}) {:.2}s{detail}",
            record.status,
            record.name,
            record.action,
            record.duration_ms as f64 / 1000.0
        );
    }
}

impl BakeObserver for Lines {
    fn event(&mut self, message: &str) {
        if self.terminal {
            eprintln!("\x1b[1m==>\x1b[0m {message}");
        } else {
            eprintln!("==> {message}");
        }
    }
}

pub fn main(args: BakeArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let mut recipe = kiln_bake::recipe::load(&args.recipe).map_err(|d| anyhow::anyhow!("{d}"))?;
    if let Some(verify) = args.tls_verify {
        recipe.parent_tls_verify = verify;
    }
    let store = Store::open(&state.join("images"))?;
    let opts = BakeOptions {
        isolation: Arc::new(kiln_sandbox::Bubblewrap::detect()?),
        log_root: state.join("toe/logs"),
        artifacts: Some(kiln_toe::ArtifactStore {
            bucket: "kiln-artifacts".into(),
            dir: state.join("artifacts/kiln-artifacts"),
            prefix: String::new(),
        }),
        source_commit: args.source_commit.clone(),
        source_labels: Default::default(),
        keep_on_failure: args.keep_on_failure,
    };
    let mut observer = Lines {
        terminal: std::io::stderr().is_terminal(),
    };
    let report = match kiln_bake::bake(&store, &recipe, &opts, &mut observer) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: bake of {} failed: {e}", args.recipe.display());
            return Ok(ExitCode::from(1));
        }
    };
    if args.output == Format::Json {
        print_json(&report)?;
    } else {
        for c in &report.components {
            let how = if c.cached { "cached" } else { "baked" };
            eprintln!("  {how:<6} {} {:.2}s", c.path.display(), c.seconds);
        }
        println!("{} {} {}", report.image, report.status, report.digest);
        if report.unchanged {
            eprintln!("unchanged recipe: nothing to bake ({:.3}s)", report.seconds);
        }
    }
    if let TestReport::Failed { message, log } = &report.tests {
        eprintln!(
            "error: {} failed its tests and cannot be deployed: {message}\n  test log: {log}",
            report.image
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
