//! xenpool-had: the HA daemon of one host.
//!
//! Exit status: 0 when disarmed (SIGTERM, or the arming superseded), 75 when the host
//! fenced, 1 when it could not arm, 2 for bad arguments.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "xenpool-had",
    version,
    about = "The xenpool HA daemon of one host (started by xenpoold)"
)]
struct Args {
    /// The daemon's configuration: a HadConfig as JSON.
    #[arg(long, short = 'c')]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = xenpool_had::load_config(&args.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(xenpool_had::run(config))?;
    // Disarmed. Exit now rather than wait for threads that may be stuck on the SR.
    std::process::exit(0)
}
