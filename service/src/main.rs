//! The `kvstore` binary: parse flags, load config, start logging, serve.

use std::net::SocketAddr;
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
}

/// What `kvstore health` probes.
struct HealthTarget {
    url: String,
    /// A host name in `url` to reach at this address instead of looking it up: with
    /// TLS, the node's certificate names its advertised host, not the loopback address
    /// the probe connects to.
    resolve: Option<(String, SocketAddr)>,
}

/// Where `kvstore health` looks by default: this node's API as its settings describe
/// it, or `http://127.0.0.1:8080/health` when they cannot be read.
fn own_health_target(settings: Option<&Settings>) -> HealthTarget {
    let Some((settings, bound)) = settings.and_then(|s| Some((s, s.listen_addr().ok()?))) else {
        return HealthTarget {
            url: "http://127.0.0.1:8080/health".into(),
            resolve: None,
        };
    };
    let addr = kvstore::startup::reachable_locally(bound);
    let tls = settings.tls.cert_file.is_some();
    // The advertised API host, when it is a name: the one a certificate would carry.
    let advertised = reqwest::Url::parse(&settings.cluster.advertise_api)
        .ok()
        .and_then(|url| url.domain().map(str::to_owned));
    match advertised {
        Some(name) if tls => HealthTarget {
            url: format!("https://{name}:{}/health", addr.port()),
            resolve: Some((name, addr)),
        },
        _ => HealthTarget {
            url: format!("{}://{addr}/health", if tls { "https" } else { "http" }),
            resolve: None,
        },
    }
}

/// `kvstore health`: a health probe that needs no curl in the image.
async fn probe(target: &HealthTarget, ca_file: Option<&std::path::Path>) -> ExitCode {
    let url = &target.url;
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3));
    if let Some((name, addr)) = &target.resolve {
        builder = builder.resolve(name, *addr);
    }
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
            // With its causes: "error sending request" alone does not say that the
            // certificate was refused or the connection was.
            eprintln!("kvstore health: {url}: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { url, ca_file }) = &cli.command {
        let own = match Settings::load(cli.config.as_deref()) {
            Ok(settings) => Some(settings),
            Err(e) if url.is_none() => {
                eprintln!("kvstore health: the node's settings: {e}; probing the defaults");
                None
            }
            Err(_) => None,
        };
        let target = match url {
            Some(url) => HealthTarget {
                url: url.clone(),
                resolve: None,
            },
            None => own_health_target(own.as_ref()),
        };
        let ca_file = ca_file.clone().or_else(|| own.and_then(|s| s.tls.ca_file));
        return probe(&target, ca_file.as_deref()).await;
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
