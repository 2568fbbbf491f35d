//! `kvstore health`: a health probe for container health checks that needs no curl in
//! the image. It asks a node's `/health` and succeeds only on a 2xx answer; by default
//! it finds the node from the same settings the node reads (`--config`, `KV_*`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;

/// How long the probe waits for an answer: a node that takes longer is not healthy.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Where the probe asks when the node's settings cannot be read.
const DEFAULT_URL: &str = "http://127.0.0.1:8080/health";

/// What `kvstore health` probes.
struct HealthTarget {
    url: String,
    /// A host name in `url` to reach at this address instead of looking it up: with
    /// TLS, the node's certificate names its advertised host, not the loopback address
    /// the probe connects to.
    resolve: Option<(String, SocketAddr)>,
}

/// Runs the probe: `url` if given, else this node's own API as the settings in
/// `config_file` and the environment describe it. The CA certificates for https are
/// `ca_file`, else the node's `tls.ca_file`. Problems are printed on stderr.
pub async fn run(
    config_file: Option<&Path>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
) -> ExitCode {
    let own = match Settings::load(config_file) {
        Ok(settings) => Some(settings),
        Err(e) if url.is_none() => {
            eprintln!("kvstore health: the node's settings: {e}; probing the defaults");
            None
        }
        Err(_) => None,
    };
    let target = match url {
        Some(url) => HealthTarget { url, resolve: None },
        None => own_health_target(own.as_ref()),
    };
    let ca_file = ca_file.or_else(|| own.and_then(|s| s.tls.ca_file));
    match probe(&target, ca_file.as_deref()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the probe looks by default: this node's API as its settings describe it, or
/// [`DEFAULT_URL`] when they cannot be read.
fn own_health_target(settings: Option<&Settings>) -> HealthTarget {
    let Some((settings, bound)) = settings.and_then(|s| Some((s, s.listen_addr().ok()?))) else {
        return HealthTarget {
            url: DEFAULT_URL.into(),
            resolve: None,
        };
    };
    let addr = crate::startup::reachable_locally(bound);
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

/// One request to `target`; `Err` says why the node does not count as healthy.
async fn probe(target: &HealthTarget, ca_file: Option<&Path>) -> Result<(), String> {
    let url = &target.url;
    let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some((name, addr)) = &target.resolve {
        builder = builder.resolve(name, *addr);
    }
    if let Some(ca_file) = ca_file {
        let tls =
            crate::tls::tool_client_config("--ca-file", ca_file).map_err(|e| e.to_string())?;
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("{url} answered {}", resp.status())),
        // With its causes: "error sending request" alone does not say that the
        // certificate was refused or the connection was.
        Err(e) => Err(format!("{url}: {:#}", anyhow::Error::new(e))),
    }
}
