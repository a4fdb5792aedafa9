//! `kiln params`: the parameter store, read and written in the state
//! directory's database directly (WAL lets it share the file with the
//! daemon).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_params::Params;

#[derive(Args)]
pub struct ParamsArgs {
    #[command(subcommand)]
    command: ParamsCommand,
}

#[derive(Subcommand)]
enum ParamsCommand {
    Get {
        name: String,
        /// Show a SecureString's value (otherwise `***`).
        #[arg(long)]
        with_decryption: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Stores a new version.
    Put {
        name: String,
        value: String,
        /// String, StringList or SecureString (masked in build logs);
        /// by default the type of the version before, or String.
        #[arg(long = "type")]
        kind: Option<kiln_params::ParamType>,
    },
    History {
        name: String,
        #[arg(long)]
        with_decryption: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Every parameter under a path (default: all).
    Ls {
        #[arg(default_value = "/")]
        prefix: String,
        #[arg(long)]
        with_decryption: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    Rm {
        name: String,
    },
}

pub fn main(args: ParamsArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&state.path)?;
    let mut params = Params::open(&state.join("kiln.db"))?;
    let reveal = |p: kiln_params::Param, decrypt: bool| if decrypt { p } else { p.redacted() };
    let show =
        |list: Vec<kiln_params::Param>, decrypt: bool, output: Format| -> anyhow::Result<()> {
            let list: Vec<_> = list.into_iter().map(|p| reveal(p, decrypt)).collect();
            if output == Format::Json {
                return print_json(&list);
            }
            for p in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.name, p.version, p.kind, p.value, p.time
                );
            }
            Ok(())
        };
    match args.command {
        ParamsCommand::Get {
            name,
            with_decryption,
            output,
        } => {
            let p = reveal(params.get(&name)?, with_decryption);
            if output == Format::Json {
                print_json(&p)?;
            } else {
                println!("{}", p.value);
            }
        }
        ParamsCommand::Put { name, value, kind } => {
            let p = params.put_typed(&name, &value, kind)?;
            println!("{} version {}", p.name, p.version);
        }
        ParamsCommand::History {
            name,
            with_decryption,
            output,
        } => show(params.history(&name)?, with_decryption, output)?,
        ParamsCommand::Ls {
            prefix,
            with_decryption,
            output,
        } => show(params.list(&prefix)?, with_decryption, output)?,
        ParamsCommand::Rm { name } => {
            params.remove(&name)?;
            println!("removed {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
