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
    #[arg(long, short = 'c', value_name = "FILE")]
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
}

/// Where `kvstore health` looks by default: this node's API as its settings describe
/// it, or `http://127.0.0.1:8080/health` when they cannot be read.
fn own_health_url(settings: Option<&Settings>) -> String {
    let Some(settings) = settings else {
        return "http://127.0.0.1:8080/health".into();
    };
    let scheme = if settings.tls.cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match settings.server.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => settings.server.host.clone(),
    };
    format!("{scheme}://{host}:{}/health", settings.server.port)
}

/// `kvstore health`: a health probe that needs no curl in the image.
async fn probe(url: &str, ca_file: Option<&std::path::Path>) -> ExitCode {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3));
    if let Some(ca_file) = ca_file {
        match kvstore::tls::tool_client_config("--ca-file", ca_file) {
            Ok(tls) => builder = builder.use_preconfigured_tls(tls),
            Err(e) => {
                eprintln!("kvstore health: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kvstore health: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send().await {
        Ok(resp) if resp.status().is_success() => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("kvstore health: {url} answered {}", resp.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kvstore health: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { url, ca_file }) = &cli.command {
        let own = Settings::load(cli.config.as_deref()).ok();
        let url = url.clone().unwrap_or_else(|| own_health_url(own.as_ref()));
        let ca_file = ca_file.clone().or_else(|| own.and_then(|s| s.tls.ca_file));
        return probe(&url, ca_file.as_deref()).await;
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match kvstore::telemetry::init(&settings.logging, &settings.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?cli.config, "starting kvstore");
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
