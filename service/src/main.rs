//! The `kvstore` binary: parse flags, load config, start logging, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kvstore::config::Settings;
use kvstore::startup::{shutdown_signal, Application};

/// mimalloc instead of the system allocator: a node allocates on every request and
/// every log entry, and glibc's malloc cost about a tenth of a busy cluster's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A distributed, strongly consistent key-value store on Raft.
///
/// Settings come from built-in defaults, then the YAML file given with --config, then
/// KV_* environment variables (see README.md for the full list).
#[derive(Parser)]
#[command(name = "kvstore", version, about)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", env = "KV_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check a node's /health and exit 0 if it answers 200 (for container health checks).
    Health {
        /// The node's health URL. By default, from the node's own settings (--config
        /// and KV_* variables, as the node reads them): its client port on loopback,
        /// https:// when it serves TLS.
        #[arg(long)]
        url: Option<String>,
        /// For an https:// URL: the CA certificates (PEM) the node's certificate must
        /// chain to. By default the node's own `tls.ca_file` setting.
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
    },
    /// Make this node a voter of the cluster its peers run (for nodes that start after
    /// the first, as a StatefulSet's pods do). Reads the node's own settings; the node
    /// must be running with `cluster.bootstrap: false`. Exits 0 once it is a voter.
    Join {
        /// The peers' API base URLs, comma-separated (this node's own is skipped).
        #[arg(long, value_delimiter = ',', required = true, env = "KV_JOIN_PEERS")]
        peers: Vec<String>,
        /// Give up after this long (the new node's catch-up counts).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Only ask whether a cluster answers at any peer: exit 0 if one does, 3 if
        /// none does (the first node runs this before it initialises a cluster).
        #[arg(long)]
        check: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Health { url, ca_file }) => {
            return kvstore::probe::run(cli.config.as_deref(), url, ca_file).await;
        }
        Some(Command::Join {
            peers,
            timeout,
            check,
        }) => return kvstore::join::run(cli.config.as_deref(), &peers, timeout, check).await,
        None => {}
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match kvstore::telemetry::init(
        &settings.logging,
        &settings.telemetry,
        settings.raft.node_id,
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(unix)]
    _telemetry.reopen_on_sighup();
    // The path as text (no field without --config), not Rust's `Some("...")`.
    let config_file = cli.config.as_deref().map(|p| p.display().to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config_file.as_deref(),
        "starting kvstore"
    );
    let app = match Application::build(&settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            eprintln!("kvstore: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("stopped with an error: {e:#}");
            eprintln!("kvstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}
