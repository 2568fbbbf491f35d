//! Distributed tracing: spans from `tracing`, exported with OpenTelemetry (OTLP over
//! gRPC) when an endpoint is configured, and W3C `traceparent` propagation between
//! nodes.
//!
//! A write that reaches a follower is one trace: the follower's HTTP span, the
//! forwarded call, the leader's RPC span, the Raft proposal, and the storage append and
//! apply on every node. Storage work runs in openraft's own tasks, so the proposing
//! span's `traceparent` travels inside the log entry ([`crate::types::Proposal`]) and
//! the append and apply spans take it as their parent.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, Context};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetrySettings;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// Installs the W3C trace-context propagator. Idempotent.
pub fn install_propagator() {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![Box::new(
        TraceContextPropagator::new(),
    )]));
}

/// Builds the OTLP tracer provider if an endpoint is configured
/// (`telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`), else `None`.
/// The sampler follows `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
pub fn otlp_provider(settings: &TelemetrySettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let env_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let endpoint = if settings.otlp_endpoint.is_empty() {
        env_endpoint
    } else {
        settings.otlp_endpoint.clone()
    };
    if endpoint.is_empty() {
        return Ok(None);
    }
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| settings.service_name.clone());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| {
            anyhow::anyhow!("invalid setting `telemetry.otlp_endpoint` ({endpoint}): {e}")
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build();
    global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// The tracer the `tracing` layer exports through.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("kvstore")
}

/// The OpenTelemetry context carried by incoming request headers.
pub fn extract(headers: &poem::http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Whether the headers carry a `traceparent`.
pub fn has_traceparent(headers: &poem::http::HeaderMap) -> bool {
    headers.contains_key(TRACEPARENT)
}

/// Headers carrying the current span's context, for an outgoing request.
pub fn inject_current() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(&mut headers))
        });
    }
    headers
}

/// The current span's `traceparent`, to travel inside a log entry; `None` when no
/// trace is being recorded.
pub fn current_traceparent() -> Option<String> {
    let headers = inject_current();
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Makes the span described by `traceparent` the parent of `span`.
pub fn set_parent_from_traceparent(span: &Span, traceparent: &str) {
    let mut headers = poem::http::HeaderMap::new();
    if let Ok(value) = traceparent.parse() {
        headers.insert(TRACEPARENT, value);
        let _ = span.set_parent(extract(&headers));
    }
}

/// The trace id of `span`, when it is being exported.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id a W3C `traceparent` header value names, if it is well formed.
pub fn traceparent_trace_id(traceparent: poem::http::HeaderValue) -> Option<String> {
    let mut headers = poem::http::HeaderMap::new();
    headers.insert(TRACEPARENT, traceparent);
    let cx = extract(&headers);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Records the span's trace and span ids as its `trace_id` and `span_id` fields, so
/// every log line inside it carries them.
pub fn record_ids(span: &Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
        span.record("span_id", sc.span_id().to_string());
    }
}

/// Renames the exported span (its name is fixed before routing knows the route).
pub fn rename(span: &Span, name: String) {
    span.context().span().update_name(name);
}
