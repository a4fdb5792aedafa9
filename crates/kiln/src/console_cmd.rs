//! `kiln console`: the web console's URL with a one-time login code.

use std::process::ExitCode;

use clap::Args;

use crate::client::Client;
use crate::state::StateDir;

#[derive(Args)]
pub struct ConsoleArgs {
    /// Only print the URL; do not open a browser.
    #[arg(long)]
    no_open: bool,
}

pub fn main(args: ConsoleArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state)?;
    let answer = client.send("POST", "/v1/console/codes", None)?;
    let path = answer["path"].as_str().unwrap_or("/");
    let url = format!("{}{path}", client.base());
    println!("{url}");
    eprintln!(
        "the login works once, within five minutes ({} access)",
        answer["access"].as_str().unwrap_or("read-only")
    );
    // A desktop session has a display; a server or CI does not, and there
    // the URL is all the user needs.
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !args.no_open && desktop {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(opened, Ok(s) if s.success()) {
            eprintln!("could not open a browser (xdg-open); open the URL above");
        }
    }
    Ok(ExitCode::SUCCESS)
}
