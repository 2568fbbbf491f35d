//! Observability: structured logs (JSON or text, to stdout or a file) and Prometheus
//! metrics ([`metrics`]).

pub mod metrics;

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingSettings};

/// Installs the global tracing subscriber described by `settings`.
///
/// Fails when the log file cannot be opened, naming `logging.file`.
pub fn init(settings: &LoggingSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match &settings.file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "invalid setting `logging.file`: cannot open {}: {e}",
                        path.display()
                    )
                })?;
            let builder = builder.with_writer(Mutex::new(file)).with_ansi(false);
            match settings.format {
                LogFormat::Json => builder.json().flatten_event(true).try_init(),
                LogFormat::Text => builder.try_init(),
            }
        }
        None => match settings.format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Text => builder.try_init(),
        },
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
