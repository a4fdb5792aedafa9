//! `kiln secrets`: the local store that `env.secrets-manager` reads,
//! written in the state directory directly. A value comes on stdin, so it
//! is never on a command line, and nothing here prints one.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_build::secrets::Secrets;

#[derive(Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Stores the value read from stdin (a trailing newline is dropped)
    /// as secret NAME, encrypted; a buildspec reads it with
    /// `env.secrets-manager: { VAR: NAME[:json-key] }`.
    Put {
        name: String,
    },
    /// The names of the secrets, never their values.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Rm {
        name: String,
    },
}

pub fn main(args: SecretsArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let secrets = Secrets::new(&state.path);
    match args.command {
        SecretsCommand::Put { name } => {
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value)?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            anyhow::ensure!(
                !value.is_empty(),
                "secret {name}: no value on stdin (e.g. printf %s VALUE | kiln secrets put {name})"
            );
            std::fs::create_dir_all(&state.path)?;
            secrets.put(&name, value)?;
            println!("stored secret {name}");
        }
        SecretsCommand::Ls { output } => {
            let names = secrets.list()?;
            if output == Format::Json {
                print_json(&names)?;
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        SecretsCommand::Rm { name } => {
            if secrets.remove(&name)? {
                println!("removed secret {name}");
            } else {
                anyhow::bail!("secret {name} does not exist");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
