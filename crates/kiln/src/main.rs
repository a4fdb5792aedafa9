//! kiln: immutable-server pipelines in one binary.
//!
//! This file only parses the command line and hands over; the work lives
//! in the library crates (kiln-toe, kiln-sandbox, ...).
//!
//! Async policy: the commands here are synchronous. The daemon, the API and
//! the load balancer will run on tokio, with blocking work (processes,
//! tar, hashing, copying trees) in `spawn_blocking`.

/// `eprintln!` that never panics: when stderr is a pipe that went away
/// (`kiln demo | tee` and Ctrl-C), clean-up still runs.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod aws_cmd;
mod bake;
mod client;
mod console_cmd;
mod demo;
mod fleet_cmd;
mod gc;
mod images;
mod lineage;
mod output;
mod params;
mod pipeline_cmd;
mod secrets_cmd;
mod serve;
mod state;
mod synth;
mod toe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Immutable-server pipelines: build, bake, test and roll out golden images"
)]
struct Cli {
    /// The directory holding everything kiln owns (database, images, logs).
    #[arg(long, env = "KILN_STATE", global = true)]
    state_dir: Option<std::path::PathBuf>,

    /// Log what kiln does (RUST_LOG syntax also works: KILN_LOG=debug).
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and run AWSTOE component documents (EC2 Image Builder components).
    Toe(toe::ToeArgs),
    /// Bake a golden image from a recipe: parent, components, test gate.
    Bake(bake::BakeArgs),
    /// List, inspect, remove and export images.
    Images(images::ImagesArgs),
    /// Run the daemon: API, fleet controller, load balancers.
    Serve(serve::ServeArgs),
    /// Launch templates: image, entrypoint, env, limits, tags; versioned.
    Templates(fleet_cmd::TemplatesArgs),
    /// Groups of instances behind a load balancer.
    Groups(fleet_cmd::GroupsArgs),
    /// Instances and their logs.
    Instances(fleet_cmd::InstancesArgs),
    /// The parameter store: versions and values with history.
    Params(params::ParamsArgs),
    /// The secrets store that buildspecs' env.secrets-manager reads:
    /// encrypted at rest, masked in build logs.
    Secrets(secrets_cmd::SecretsArgs),
    /// Keep the newest images and those in use; remove the rest and every
    /// blob nothing references.
    Gc(gc::GcArgs),
    /// The whole pipeline on a sample repository: two commits, two
    /// rollouts, with each stage's time.
    Demo(demo::DemoArgs),
    /// Check kiln.yaml and the buildspec and components it names.
    Validate(pipeline_cmd::ValidateArgs),
    /// Pipelines: create one from a repository's kiln.yaml, list, show.
    Pipelines(pipeline_cmd::PipelinesArgs),
    /// One pipeline execution for the repository's branch head, followed
    /// to its end.
    Run(pipeline_cmd::RunArgs),
    /// Start an execution for the branch head now.
    Trigger(pipeline_cmd::TriggerArgs),
    /// Git hooks that trigger a pipeline on every commit or push.
    Hooks(pipeline_cmd::HooksArgs),
    /// Executions: list, show, logs, retry.
    Executions(pipeline_cmd::ExecutionsArgs),
    /// Remove everything a pipeline made, in one idempotent command.
    Destroy(pipeline_cmd::DestroyArgs),
    /// Synthesize kiln.yaml for a cloud target: `kiln synth aws`.
    Synth(synth::SynthArgs),
    /// The web console's URL with a one-time login code (opened in the
    /// desktop's browser when there is one).
    Console(console_cmd::ConsoleArgs),
    /// Print the API's OpenAPI document (docs/openapi.json).
    Openapi,
    /// Deploy the synthesized stacks to AWS, see their state, trigger the
    /// pipeline, collect old AMIs, remove everything.
    Aws(aws_cmd::AwsArgs),
}

/// Raises the soft limit on open files to the hard one: the daemon holds a
/// descriptor per client connection and per backend connection, and the
/// common default of 1,024 is what a thousand idle clients exhausted. The
/// servers' connection caps stay at a fraction of the raised limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "raising the open-file limit to its hard limit");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("KILN_LOG").unwrap_or_else(|_| {
        if cli.verbose {
            "debug".into()
        } else {
            "warn".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    raise_fd_limit();
    let state = state::StateDir::resolve(cli.state_dir.as_deref());
    // Checking documents needs no state; `kiln toe run` creates it itself.
    if !matches!(
        cli.command,
        Command::Validate(_)
            | Command::Toe(_)
            | Command::Synth(_)
            | Command::Openapi
            | Command::Aws(_)
    ) && let Err(e) = state.create()
    {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Toe(args) => toe::main(args, &state),
        Command::Bake(args) => bake::main(args, &state),
        Command::Images(args) => images::main(args, &state),
        Command::Serve(args) => serve::main(args, &state),
        Command::Templates(args) => fleet_cmd::templates(args, &state),
        Command::Groups(args) => fleet_cmd::groups(args, &state),
        Command::Instances(args) => fleet_cmd::instances(args, &state),
        Command::Params(args) => params::main(args, &state),
        Command::Secrets(args) => secrets_cmd::main(args, &state),
        Command::Gc(args) => gc::main(args, &state),
        Command::Demo(args) => demo::main(args, &state),
        Command::Validate(args) => pipeline_cmd::validate(args),
        Command::Pipelines(args) => pipeline_cmd::pipelines(args, &state),
        Command::Run(args) => pipeline_cmd::run(args, &state),
        Command::Trigger(args) => pipeline_cmd::trigger(args, &state),
        Command::Hooks(args) => pipeline_cmd::hooks(args, &state),
        Command::Executions(args) => pipeline_cmd::executions(args, &state),
        Command::Destroy(args) => pipeline_cmd::destroy(args, &state),
        Command::Synth(args) => synth::main(args),
        Command::Console(args) => console_cmd::main(args, &state),
        Command::Openapi => {
            print!("{}", kiln_api::openapi::json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Aws(args) => aws_cmd::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
