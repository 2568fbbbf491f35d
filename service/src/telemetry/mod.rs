//! Observability: structured logs (JSON or text, to stdout or a file), Prometheus
//! metrics ([`metrics`]) and OpenTelemetry traces ([`trace`]).
//!
//! Log lines are formatted on the thread that logs them, then handed to one writer
//! thread through a bounded queue (tracing-appender's non-blocking writer, lossy): a
//! slow disk or a stalled stdout reader costs dropped lines, counted in
//! `kvstore_log_lines_dropped_total`, never a request's latency.

mod log_file;
pub mod metrics;
pub mod trace;

use std::path::Path;
use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{Directive, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use self::log_file::{LogFile, ReopenHandle};
use crate::config::{LogFormat, LoggingSettings, TelemetrySettings};

/// The target of the per-request lines (access log, slow requests, server errors), so
/// that a filter can name them: `warn,kvstore::access=info`.
pub const ACCESS_TARGET: &str = "kvstore::access";

/// Counts the lines the writer dropped because its queue was full (set once the
/// logger is installed).
static DROPPED_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the writer could not keep up.
pub fn dropped_log_lines() -> u64 {
    DROPPED_LINES.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps trace export and the log writer running; flushes pending spans, then the
/// queued log lines, when dropped at exit.
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Reopens `logging.file`; `None` when logs go to stdout.
    reopen: Option<ReopenHandle>,
    /// Dropped after `provider` (fields drop after `Drop::drop`), so lines logged while
    /// spans flush are written too.
    _writer: WorkerGuard,
}

impl Guard {
    /// Reopens `logging.file` on every SIGHUP, for logrotate (`postrotate kill -HUP`).
    /// With logs on stdout, SIGHUP is logged and otherwise ignored (its default would
    /// end the process). Needs a Tokio runtime.
    #[cfg(unix)]
    pub fn reopen_on_sighup(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let reopen = self.reopen.clone();
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match &reopen {
                    Some(reopen) => {
                        reopen.request();
                        // The first line in the new file.
                        tracing::info!("SIGHUP received: reopened the log file");
                    }
                    None => tracing::info!("SIGHUP received: logs go to stdout, nothing to reopen"),
                }
            }
        });
    }
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
/// when `telemetry` (or the `OTEL_*` environment) names an endpoint, each span's
/// resource naming this node (`node_id`).
///
/// Fails when the log file cannot be opened (naming `logging.file`) or the OTLP
/// settings are wrong (naming `telemetry.otlp_endpoint` or the `OTEL_*` variable).
pub fn init(
    logging: &LoggingSettings,
    telemetry: &TelemetrySettings,
    node_id: u64,
) -> anyhow::Result<Guard> {
    trace::install_propagator();
    let filter = log_filter(logging)?;
    let builder = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(logging.buffer_lines)
        .thread_name("kvstore-log-writer");
    let (writer, writer_guard, reopen) = match &logging.file {
        Some(path) => {
            // Like the data dir, the log file's directory is created when missing.
            let (file, reopen) = create_parent_dir(path)
                .and_then(|()| LogFile::open(path))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "invalid setting `logging.file`: cannot open {}: {e}",
                        path.display()
                    )
                })?;
            let (writer, guard) = builder.finish(file);
            (writer, guard, Some(reopen))
        }
        None => {
            let (writer, guard) = builder.finish(std::io::BufWriter::new(std::io::stdout()));
            (writer, guard, None)
        }
    };
    let _ = DROPPED_LINES.set(writer.error_counter());
    let provider = trace::otlp_provider(telemetry, node_id)?;
    let tracer = provider.as_ref().map(trace::tracer);
    tracing_subscriber::registry()
        .with(layers(logging.format, filter, writer, tracer))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(Guard {
        provider,
        reopen,
        _writer: writer_guard,
    })
}

/// The log lines, written by `writer` as `filter` lets them through, and the spans
/// exported through `tracer`, each layer with its own filter: trace export does not
/// depend on `logging.level`.
fn layers<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let gate = Gate::new(filter, tracer.is_some());
    let fmt = fmt_layer(format, writer, gate.spans_in_logs);
    // Only kvstore's own spans are exported; openraft's internals would drown them.
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("kvstore", Level::INFO))
            .boxed()
    });
    // `and_then`: what the gate refuses reaches neither layer (in a `Vec`, a layer's
    // refusal would only speak for itself).
    gate.and_then(std::iter::once(fmt).chain(otel).collect::<Vec<_>>())
        .boxed()
}

/// What reaches the layers: events as `logging.level` says; spans when the log lines
/// show them (at `debug` and below) or when they are exported (kvstore's own, at
/// `info`, whatever `logging.level` says). At `info` without export, spans are off and
/// cost nothing: formatting every request's spans cost a sixth of a busy node's time,
/// for lines that are rarely written.
///
/// One filter in front of the whole stack rather than one per layer: with the log
/// filter as a per-layer filter, a node on PostgreSQL lost some of its own `info`
/// lines (the start-up and repair lines the PostgreSQL tests look for), while the
/// same lines on redb came through.
struct Gate {
    env: EnvFilter,
    spans_in_logs: bool,
    exported: bool,
}

impl Gate {
    fn new(env: EnvFilter, exported: bool) -> Self {
        let spans_in_logs = env
            .max_level_hint()
            .is_some_and(|level| level >= LevelFilter::DEBUG);
        Self {
            env,
            spans_in_logs,
            exported,
        }
    }

    /// Whether a span is wanted for export, whatever the log filter says.
    fn exported(&self, meta: &tracing::Metadata<'_>) -> bool {
        self.exported && *meta.level() <= Level::INFO && meta.target().starts_with("kvstore")
    }
}

impl<S> Layer<S> for Gate
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.is_span() {
            if self.exported(meta) {
                return tracing::subscriber::Interest::always();
            }
            if !self.spans_in_logs {
                return tracing::subscriber::Interest::never();
            }
        }
        Layer::<S>::register_callsite(&self.env, meta)
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if meta.is_span() {
            if self.exported(meta) {
                return true;
            }
            if !self.spans_in_logs {
                return false;
            }
        }
        Layer::<S>::enabled(&self.env, meta, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let logs = Layer::<S>::max_level_hint(&self.env);
        if self.exported {
            logs.map(|level| level.max(LevelFilter::INFO))
        } else {
            logs
        }
    }

    // The log filter follows spans for its span-scoped directives (`[span]=debug`).
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.env.on_new_span(attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.env.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.env.on_enter(id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.env.on_exit(id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        self.env.on_close(id, cx);
    }
}

/// The filter of `logging.level`, with two defaults an operator would otherwise have
/// to spell out:
/// - openraft logs every vote request and state change at `info` and below; unless the
///   filter names `openraft` (`info,openraft=debug`), its lines stop at `warn` (or at
///   the general level, when that is quieter);
/// - with `logging.access_log` on, the access lines are let through whatever the
///   general level, unless the filter names their target.
pub fn log_filter(logging: &LoggingSettings) -> anyhow::Result<EnvFilter> {
    let level = &logging.level;
    let mut filter = EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("invalid setting `logging.level`: {e}"))?;
    // The general level: the directive without a target (the last, if several);
    // without one, EnvFilter lets only errors through.
    let general = level
        .rsplit(',')
        .find_map(|d| d.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::ERROR);
    if !level.contains("openraft") && general > LevelFilter::WARN {
        filter = filter.add_directive(directive("openraft=warn"));
    }
    if logging.access_log && !level.contains(ACCESS_TARGET) {
        filter = filter.add_directive(directive(&format!("{ACCESS_TARGET}=info")));
    }
    Ok(filter)
}

fn directive(text: &str) -> Directive {
    text.parse().expect("a valid literal directive")
}

fn create_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// The log lines; `spans`: whether JSON lines carry the spans they were logged in.
fn fmt_layer<W>(format: LogFormat, writer: W, spans: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(true)
        .with_ansi(false);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(spans)
            .with_span_list(spans)
            .boxed(),
        LogFormat::Text => layer.boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(level: &str, access_log: bool) -> String {
        let settings = LoggingSettings {
            level: level.into(),
            format: LogFormat::Json,
            file: None,
            access_log,
            slow_request_threshold: std::time::Duration::from_millis(200),
            buffer_lines: 1,
        };
        log_filter(&settings).unwrap().to_string()
    }

    /// A writer into a shared buffer, for reading back what the fmt layer wrote.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// Logs one warning inside a request-like span with `level`, exporting spans to
    /// memory; answers the log text and the names of the exported spans.
    fn log_in_a_span(level: &str) -> (String, Vec<String>) {
        log_with(level, true, || {
            let span = tracing::info_span!(target: "kvstore::api", "HTTP request", key = "k1");
            span.in_scope(|| tracing::warn!(target: "kvstore::api", "inside"));
        })
    }

    fn log_with(level: &str, export: bool, log: impl FnOnce()) -> (String, Vec<String>) {
        use opentelemetry::trace::TracerProvider as _;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let buffer = Buffer::default();
        let settings = LoggingSettings {
            level: level.into(),
            format: LogFormat::Json,
            file: None,
            access_log: false,
            slow_request_threshold: std::time::Duration::from_millis(200),
            buffer_lines: 1,
        };
        let layers = layers(
            LogFormat::Json,
            log_filter(&settings).unwrap(),
            buffer.clone(),
            export.then(|| provider.tracer("test")),
        );
        let subscriber = tracing_subscriber::registry().with(layers);
        tracing::subscriber::with_default(subscriber, log);
        provider.force_flush().unwrap();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let names = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect();
        (text, names)
    }

    #[test]
    fn spans_are_exported_whatever_the_log_level() {
        for level in ["error", "warn", "info", "debug"] {
            let (_, exported) = log_in_a_span(level);
            assert_eq!(exported, ["HTTP request"], "at {level}");
        }
    }

    #[test]
    fn log_lines_carry_their_spans_only_at_debug() {
        let (info, _) = log_in_a_span("info");
        assert!(info.contains("inside"), "{info}");
        assert!(!info.contains("k1"), "{info}");
        let (debug, _) = log_in_a_span("debug");
        assert!(debug.contains("inside"), "{debug}");
        assert!(debug.contains("\"key\":\"k1\""), "{debug}");
        let (error, _) = log_in_a_span("error");
        assert!(!error.contains("inside"), "{error}");
    }

    #[test]
    fn openraft_stays_at_warn_unless_named_or_quieter() {
        assert!(filter("info", false).contains("openraft=warn"));
        assert!(filter("debug,kvstore=trace", false).contains("openraft=warn"));
        assert!(!filter("info,openraft=debug", false).contains("openraft=warn"));
        // A quieter general level is not made louder for openraft.
        assert!(!filter("warn", false).contains("openraft"));
        assert!(!filter("error", false).contains("openraft"));
    }

    #[test]
    fn the_access_log_passes_whatever_the_level_unless_named() {
        assert!(!filter("info", false).contains(ACCESS_TARGET));
        assert!(filter("error", true).contains("kvstore::access=info"));
        assert!(!filter("info,kvstore::access=warn", true).contains("kvstore::access=info"));
    }
}
