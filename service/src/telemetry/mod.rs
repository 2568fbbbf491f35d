//! Observability: structured logs (JSON or text, to stdout or a file), Prometheus
//! metrics ([`metrics`]) and OpenTelemetry traces ([`trace`]).

pub mod metrics;
pub mod trace;

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LoggingSettings, TelemetrySettings};

/// Keeps trace export running; flushes pending spans when dropped at exit.
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber: logs as `logging` says, and spans exported over OTLP
/// when `telemetry` (or the `OTEL_*` environment) names an endpoint.
///
/// Fails when the log file cannot be opened (naming `logging.file`) or the OTLP
/// endpoint is malformed (naming `telemetry.otlp_endpoint`).
pub fn init(logging: &LoggingSettings, telemetry: &TelemetrySettings) -> anyhow::Result<Guard> {
    trace::install_propagator();
    let filter = EnvFilter::try_new(&logging.level)?;
    let fmt: BoxedLayer = match &logging.file {
        Some(path) => {
            // Like the data dir, the log file's directory is created when missing.
            let file = create_parent_dir(path)
                .and_then(|()| OpenOptions::new().create(true).append(true).open(path))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "invalid setting `logging.file`: cannot open {}: {e}",
                        path.display()
                    )
                })?;
            fmt_layer(logging.format, Mutex::new(file))
        }
        None => fmt_layer(logging.format, std::io::stdout),
    };
    let provider = trace::otlp_provider(telemetry)?;
    // Only kvstore's own spans are exported; openraft's internals would drown them.
    let otel: Option<BoxedLayer> = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(trace::tracer(p))
            .with_filter(Targets::new().with_target("kvstore", Level::INFO))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(
            vec![Some(fmt), otel]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .with_filter(filter),
        )
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(Guard { provider })
}

fn create_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

fn fmt_layer<W>(format: LogFormat, writer: W) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(true)
        .with_ansi(false);
    match format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => layer.boxed(),
    }
}
