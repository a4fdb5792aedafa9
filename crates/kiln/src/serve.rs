//! `kiln serve`: the daemon. tokio runs the API, the load balancers and
//! the fleet controller; blocking work (mounts, process starts, image
//! unpacking) goes to `spawn_blocking`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use crate::state::StateDir;

#[derive(Args)]
pub struct ServeArgs {
    /// Where the API listens (loopback only); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// What a client needs to find the daemon: written at start, read by the CLI.
pub const DAEMON_FILE: &str = "daemon.json";

pub fn main(args: ServeArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen {}: kiln serves on loopback only",
        args.listen
    );
    std::fs::create_dir_all(&state.path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, &state.path))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: ServeArgs, state: &Path) -> anyhow::Result<()> {
    let fleet = kiln_fleet::Fleet::open(state)?;
    fleet.start().await?;
    let pipelines = kiln_pipeline::Pipelines::open(state, fleet.clone())?;
    pipelines.start().await?;
    let tokens = kiln_api::token::Tokens::load_or_create(state)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let info = serde_json::json!({ "address": addr.to_string(), "pid": std::process::id() });
    // Written whole under another name, then renamed: a client that finds
    // the file reads all of it, never a half-written one.
    let partial = state.join(format!("{DAEMON_FILE}.partial"));
    std::fs::write(&partial, serde_json::to_vec_pretty(&info)?)?;
    std::fs::rename(&partial, state.join(DAEMON_FILE))?;
    tracing::info!(%addr, "kiln daemon serving");
    println!("kiln daemon listening on http://{addr}");
    println!("web console: `kiln console` prints its URL with a one-time login");
    // Where the tokens are, never what they are.
    println!(
        "API tokens: {} (every call), {} (read only)",
        state.join(kiln_api::token::FILE).display(),
        state.join(kiln_api::token::READ_FILE).display()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let app = kiln_api::router(fleet.clone(), pipelines, tokens, state);
    kiln_api::serve(listener, app, kiln_api::LIMITS, shutdown).await;
    fleet.shutdown().await;
    if let Err(e) = std::fs::remove_file(state.join(DAEMON_FILE))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        // A client then finds no daemon answering at the address, and
        // the next start replaces the file.
        tracing::warn!(file = %state.join(DAEMON_FILE).display(), error = %e, "the daemon file stays");
    }
    tracing::info!("kiln daemon stopped; instances keep running for the next start to adopt");
    Ok(())
}
