//! Distributed tracing: spans from `tracing`, exported with OpenTelemetry (OTLP over
//! gRPC or HTTP) when an endpoint is configured, and W3C `traceparent` propagation
//! between nodes.
//!
//! Export follows the OpenTelemetry SDK's environment variables: the endpoint
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`), the protocol
//! (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`), the resource
//! (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`) and `OTEL_TRACES_EXPORTER=none`.
//! Every span carries the node in its resource (`service.instance.id` is the Raft node
//! id), so a trace backend tells the nodes of one cluster apart without opening spans.
//!
//! A write that reaches a follower is one trace: the follower's HTTP span, the
//! forwarded call, the leader's RPC span, the Raft proposal, and the storage append and
//! apply on every node. Storage work runs in openraft's own tasks, so the proposing
//! span's `traceparent` travels inside the log entry ([`crate::types::Proposal`]) and
//! the append and apply spans take it as their parent.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
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

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (collectors listen on 4317): kvstore's default, as before the
    /// HTTP transport existed.
    Grpc,
    /// OTLP over HTTP with protobuf bodies, POSTed to `/v1/traces` (port 4318).
    HttpProtobuf,
}

/// Where spans go and how: the resolved export settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub protocol: Protocol,
    /// For gRPC, the collector's address; for HTTP, the full URL spans are POSTed to.
    pub endpoint: String,
}

const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The path the OTLP/HTTP spec puts after a base endpoint for traces.
const HTTP_TRACES_PATH: &str = "/v1/traces";

/// Resolves the export settings from `telemetry.otlp_endpoint` and the environment
/// (`env`), as the OpenTelemetry specification defines the variables; `None` when
/// tracing is off (no endpoint anywhere, or `OTEL_TRACES_EXPORTER=none`).
///
/// The endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as it is; else
/// `telemetry.otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`, both base URLs to
/// which HTTP export adds `/v1/traces`. The protocol: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
/// else `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
pub fn export_target(
    settings: &TelemetrySettings,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Export>> {
    let env = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    match env(TRACES_EXPORTER).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => anyhow::bail!(
            "invalid {TRACES_EXPORTER}={other:?}: kvstore exports spans with `otlp`, or not at all with `none`"
        ),
    }
    let (protocol_var, protocol) = match env(TRACES_PROTOCOL) {
        Some(p) => (TRACES_PROTOCOL, Some(p)),
        None => (PROTOCOL, env(PROTOCOL)),
    };
    let protocol = match protocol.as_deref() {
        None | Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => anyhow::bail!(
            "invalid {protocol_var}={other:?}: kvstore exports spans with `grpc` or `http/protobuf`"
        ),
    };
    let signal = env(TRACES_ENDPOINT);
    let base = Some(settings.otlp_endpoint.trim().to_owned())
        .filter(|e| !e.is_empty())
        .or_else(|| env(ENDPOINT));
    let endpoint = match (signal, base) {
        (Some(endpoint), _) => endpoint,
        (None, Some(base)) if protocol == Protocol::HttpProtobuf => {
            format!("{}{HTTP_TRACES_PATH}", base.trim_end_matches('/'))
        }
        (None, Some(base)) => base,
        (None, None) => return Ok(None),
    };
    Ok(Some(Export { protocol, endpoint }))
}

/// The resource every exported span carries: `service.name`, `service.instance.id`
/// (the Raft node id) and `service.version`, then what `OTEL_RESOURCE_ATTRIBUTES` says
/// (the operator's word wins, e.g. a pod name as the instance id), then
/// `OTEL_SERVICE_NAME`, which the specification puts above both.
pub fn resource(service_name: &str, node_id: u64) -> Resource {
    let builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service_name.to_owned()),
            KeyValue::new("service.instance.id", node_id.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.trim().is_empty() => builder.with_service_name(name),
        _ => builder,
    }
    .build()
}

/// Builds the OTLP tracer provider if an endpoint is configured (see [`export_target`]),
/// else `None`. The sampler follows `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
pub fn otlp_provider(
    settings: &TelemetrySettings,
    node_id: u64,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(export) = export_target(settings, |name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    let endpoint = export.endpoint.clone();
    let exporter = match export.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        // The HTTP client is the crate's blocking one: the batch processor exports from
        // a thread of its own, outside the Tokio runtime.
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build(),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "invalid OTLP trace endpoint {endpoint} (`telemetry.otlp_endpoint` or {TRACES_ENDPOINT} / {ENDPOINT}): {e}"
        )
    })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(&settings.service_name, node_id))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(otlp_endpoint: &str) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint: otlp_endpoint.into(),
            service_name: "kvstore".into(),
        }
    }

    fn target(config: &str, vars: &[(&str, &str)]) -> anyhow::Result<Option<Export>> {
        export_target(&settings(config), |name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
    }

    fn export(protocol: Protocol, endpoint: &str) -> Option<Export> {
        Some(Export {
            protocol,
            endpoint: endpoint.into(),
        })
    }

    #[test]
    fn without_an_endpoint_tracing_is_off() {
        assert_eq!(target("", &[]).unwrap(), None);
        assert_eq!(target("", &[(PROTOCOL, "http/protobuf")]).unwrap(), None);
        assert_eq!(
            target("http://tempo:4317", &[(TRACES_EXPORTER, "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn grpc_is_the_default_and_takes_the_endpoint_as_it_is() {
        assert_eq!(
            target("", &[(ENDPOINT, "http://collector:4317")]).unwrap(),
            export(Protocol::Grpc, "http://collector:4317")
        );
        // The setting wins over the general variable, as it did before.
        assert_eq!(
            target("http://tempo:4317", &[(ENDPOINT, "http://collector:4317")]).unwrap(),
            export(Protocol::Grpc, "http://tempo:4317")
        );
    }

    #[test]
    fn http_adds_the_traces_path_to_a_base_endpoint_only() {
        assert_eq!(
            target(
                "",
                &[
                    (PROTOCOL, "http/protobuf"),
                    (ENDPOINT, "http://collector:4318/")
                ]
            )
            .unwrap(),
            export(Protocol::HttpProtobuf, "http://collector:4318/v1/traces")
        );
        assert_eq!(
            target("http://tempo:4318", &[(PROTOCOL, "http/protobuf")]).unwrap(),
            export(Protocol::HttpProtobuf, "http://tempo:4318/v1/traces")
        );
        // The signal's own endpoint is a full URL: used as it is, above everything.
        assert_eq!(
            target(
                "http://tempo:4318",
                &[
                    (PROTOCOL, "http/protobuf"),
                    (TRACES_ENDPOINT, "http://collector:4318/custom"),
                    (ENDPOINT, "http://other:4318"),
                ]
            )
            .unwrap(),
            export(Protocol::HttpProtobuf, "http://collector:4318/custom")
        );
    }

    #[test]
    fn the_traces_protocol_wins_over_the_general_one() {
        assert_eq!(
            target(
                "",
                &[
                    (PROTOCOL, "grpc"),
                    (TRACES_PROTOCOL, "http/protobuf"),
                    (ENDPOINT, "http://collector:4318"),
                ]
            )
            .unwrap(),
            export(Protocol::HttpProtobuf, "http://collector:4318/v1/traces")
        );
    }

    #[test]
    fn unknown_protocols_and_exporters_are_refused_by_name() {
        let err = target("http://c:4318", &[(PROTOCOL, "http/json")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("http/json"),
            "{err}"
        );
        let err = target("http://c:4318", &[(TRACES_PROTOCOL, "thrift")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{err}");
        let err = target("http://c:4318", &[(TRACES_EXPORTER, "jaeger")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_TRACES_EXPORTER"), "{err}");
    }

    #[test]
    fn the_resource_names_the_node_and_the_version() {
        let resource = resource("kvstore", 3);
        let get = |key: &'static str| {
            resource
                .get(&opentelemetry::Key::from_static_str(key))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.instance.id").as_deref(), Some("3"));
        assert_eq!(
            get("service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(get("service.name").is_some());
        assert_eq!(get("telemetry.sdk.name").as_deref(), Some("opentelemetry"));
    }
}
