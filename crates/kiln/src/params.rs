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
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Stores a new version.
    Put {
        name: String,
        value: String,
    },
    History {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Every parameter under a path (default: all).
    Ls {
        #[arg(default_value = "/")]
        prefix: String,
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
    let show = |list: &[kiln_params::Param], output: Format| -> anyhow::Result<()> {
        if output == Format::Json {
            return print_json(&list);
        }
        for p in list {
            println!("{}\t{}\t{}\t{}", p.name, p.version, p.value, p.time);
        }
        Ok(())
    };
    match args.command {
        ParamsCommand::Get { name, output } => {
            let p = params.get(&name)?;
            if output == Format::Json {
                print_json(&p)?;
            } else {
                println!("{}", p.value);
            }
        }
        ParamsCommand::Put { name, value } => {
            let p = params.put(&name, &value)?;
            println!("{} version {}", p.name, p.version);
        }
        ParamsCommand::History { name, output } => show(&params.history(&name)?, output)?,
        ParamsCommand::Ls { prefix, output } => show(&params.list(&prefix)?, output)?,
        ParamsCommand::Rm { name } => {
            params.remove(&name)?;
            println!("removed {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
