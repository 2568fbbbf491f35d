//! The layers every client request passes through, as `api::app` stacks them from the
//! outside in: [`observe`] (span, metrics, access log), [`authenticate`], [`shed_load`],
//! [`route_key_paths`], then [`json_errors`] around the routes. Each is a function of
//! the inner endpoint, the request and the state it needs.

use std::sync::Arc;
use std::time::Instant;

use ::metrics::{counter, gauge, histogram};
use percent_encoding::percent_decode_str;
use poem::http::uri::PathAndQuery;
use poem::http::{header, HeaderValue, StatusCode, Uri};
use poem::{Endpoint, IntoResponse, Request, Response};
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::body::BodyRules;
use super::error::{self, ApiError};
use super::request_log::{Finished, RequestLog};
use super::{Auth, Limits};
use crate::admission::ByteBudget;
use crate::telemetry::{metrics, trace};

/// Routes that answer even when the node is at `max_in_flight`: probes and metrics
/// must keep working under overload, and they are cheap.
const UNBOUNDED: &[&str] = &["/health", "/ready", "/metrics"];

/// The prefix under which the rest of the path is the key.
const KV_PREFIX: &str = "/kv/";

/// Turns every error the routes, the router or an extractor return into the JSON error
/// shape, with the `Allow` header on a 405.
pub(super) async fn json_errors<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    req: Request,
    allowed: Arc<AllowedMethods>,
) -> poem::Result<Response> {
    // Cheap clones (the URI shares its bytes): most requests never need them.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    Ok(match ep.call(req).await {
        Ok(resp) => resp,
        Err(err) => {
            let mut resp = error::to_json_response(err, method.as_str(), uri.path());
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                allowed.set_allow(uri.path(), &mut resp);
            }
            resp
        }
    })
}

/// Routes a `/kv/...` path whose key contains `/` (see [`route_key_path`]), or answers
/// the error that path earns.
pub(super) async fn route_key_paths<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    match route_key_path(req) {
        Ok(req) => ep.call(req).await,
        Err(e) => Ok(e.into_response()),
    }
}

/// What load shedding counts and the bounds it holds requests to.
pub(super) struct LoadShedding {
    /// One permit a request in flight (`server.max_in_flight`).
    pub in_flight: Semaphore,
    /// Bytes of write bodies in flight (`server.max_in_flight_bytes`).
    pub write_bytes: ByteBudget,
    pub limits: Limits,
    /// For reading and dropping the body of a refused write.
    pub body_rules: BodyRules,
}

/// Load shedding: a request beyond the bounds is refused at once, never queued.
pub(super) async fn shed_load<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    mut req: Request,
    shedding: Arc<LoadShedding>,
) -> poem::Result<Response> {
    if UNBOUNDED.contains(&req.uri().path()) {
        return ep.call(req).await;
    }
    let LoadShedding {
        in_flight,
        write_bytes,
        limits,
        body_rules,
    } = &*shedding;
    // Counted in kvstore_http_errors_total{code="OVERLOADED"} by the layer
    // outside this one.
    let Ok(_permit) = in_flight.try_acquire() else {
        return Ok(ApiError::Overloaded(format!(
            "{} requests are in flight (server.max_in_flight)",
            limits.max_in_flight
        ))
        .into_response());
    };
    let _bytes = match write_body_bytes(&req, limits) {
        None => None,
        Some(bytes) => match write_bytes.admit(bytes) {
            Some(admitted) => Some(admitted),
            None => {
                let refused = ApiError::Overloaded(write_bytes.refusal("on this node"));
                discard_body(&mut req, *body_rules).await;
                return Ok(refused.into_response());
            }
        },
    };
    ep.call(req).await
}

/// Client authentication: a request without a token that `auth` accepts is answered
/// here, before routing, so that it covers every route.
pub(super) async fn authenticate<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    req: Request,
    auth: Auth,
) -> poem::Result<Response> {
    match auth.check(&req) {
        Ok(()) => ep.call(req).await,
        Err(e) => Ok(e.into_response()),
    }
}

/// The request's span (joined to the caller's trace), the HTTP metrics and the access
/// log line, for every answer the layers inside give.
pub(super) async fn observe<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    req: Request,
    node_id: u64,
    request_log: Arc<RequestLog>,
) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "HTTP request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        node.id = node_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // The span is off unless logs or traces want it: then skip its upkeep.
    let traced = !span.is_disabled();
    if traced {
        let _ = span.set_parent(trace::extract(req.headers()));
        trace::record_ids(&span);
    }
    // The caller's trace, for the request's log line when this node exports
    // no spans of its own.
    let traceparent = req.headers().get(trace::TRACEPARENT).cloned();
    let in_flight = gauge!(metrics::HTTP_IN_FLIGHT);
    in_flight.increment(1.0);
    let resp = ep.call(req).instrument(span.clone()).await;
    in_flight.decrement(1.0);
    let resp = resp?;
    let route = route_label(&resp, &path);
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let method_label = method_label(&method);
    counter!(
        metrics::HTTP_REQUESTS,
        "route" => route,
        "method" => method_label,
        "status" => status.to_string()
    )
    .increment(1);
    histogram!(metrics::HTTP_DURATION, "route" => route, "method" => method_label)
        .record(elapsed.as_secs_f64());
    if let Some(code) = resp.data::<error::ErrorCode>() {
        counter!(metrics::HTTP_ERRORS, "route" => route, "code" => code.as_label()).increment(1);
    }
    if traced {
        span.record("http.route", route);
        span.record("http.response.status_code", status);
        trace::rename(&span, format!("{method} {route}"));
    }
    let finished = Finished {
        method: &method,
        path: &path,
        route,
        status,
        elapsed,
    };
    request_log.record(&finished, || {
        trace::trace_id(&span).or_else(|| trace::traceparent_trace_id(traceparent?))
    });
    Ok(resp)
}

/// What a write charges against `server.max_in_flight_bytes`, before its body is
/// read: its declared length, or, for a chunked body, the largest key and value.
/// `None` for requests that are not writes.
fn write_body_bytes(req: &Request, limits: &Limits) -> Option<usize> {
    if req.method() != poem::http::Method::PUT || !req.uri().path().starts_with(KV_PREFIX) {
        return None;
    }
    let declared = req
        .header(header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok());
    Some(declared.unwrap_or(limits.max_key_bytes + limits.max_value_bytes))
}

/// Reads and drops the body of a refused request (up to the body limit, within the
/// request timeout) so that the client, still sending, reads the answer instead of a
/// reset connection. Nothing of it is kept or parsed.
async fn discard_body(req: &mut Request, rules: BodyRules) {
    use tokio::io::AsyncReadExt;
    let body = req.take_body().into_async_read();
    let limit = u64::try_from(rules.max_bytes).unwrap_or(u64::MAX);
    let _ = tokio::time::timeout(
        rules.read_timeout,
        tokio::io::copy(&mut body.take(limit), &mut tokio::io::sink()),
    )
    .await;
}

/// The operations an OpenAPI path item can hold.
const HTTP_METHODS: &[&str] = &[
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// The methods each documented path answers, read from the OpenAPI spec, for the
/// `Allow` header a 405 answer must carry (RFC 9110, section 15.5.6).
pub(super) struct AllowedMethods {
    /// Path templates split into segments (`{key}` matches any one segment), each with
    /// its methods as an `Allow` value.
    paths: Vec<(Vec<String>, HeaderValue)>,
}

impl AllowedMethods {
    pub(super) fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let paths = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(template, operations)| {
                let mut methods: Vec<String> = operations
                    .as_object()?
                    .keys()
                    .map(|m| m.to_ascii_uppercase())
                    // An OpenAPI path item also holds `parameters`, `summary`, ...
                    .filter(|m| HTTP_METHODS.contains(&m.as_str()))
                    .collect();
                // poem answers HEAD wherever it answers GET.
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".into());
                }
                methods.sort();
                let allow = HeaderValue::from_str(&methods.join(", ")).ok()?;
                Some((segments(template).map(str::to_owned).collect(), allow))
            })
            .collect();
        Self { paths }
    }

    fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        let wanted: Vec<&str> = segments(path).collect();
        self.paths.iter().find_map(|(template, allow)| {
            let matches = template.len() == wanted.len()
                && template
                    .iter()
                    .zip(&wanted)
                    .all(|(t, w)| t == w || (t.starts_with('{') && t.ends_with('}')));
            matches.then_some(allow)
        })
    }

    fn set_allow(&self, path: &str, resp: &mut Response) {
        if let Some(allow) = self.for_path(path) {
            resp.headers_mut().insert(header::ALLOW, allow.clone());
        }
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The `method` label: the standard methods by name, anything else as `OTHER` (the
/// label's values stay few, and need no allocation).
fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// A low-cardinality name for the route that served `resp`: the OpenAPI operation id,
/// the documentation routes by path, and `unmatched` for everything else.
fn route_label(resp: &Response, path: &str) -> &'static str {
    if let Some(op) = resp.data::<poem_openapi::OperationId>() {
        return op.0;
    }
    match path {
        "/openapi.json" => "openapi_json",
        "/openapi.yaml" => "openapi_yaml",
        p if p == "/docs" || p.starts_with("/docs/") => "docs",
        _ => "unmatched",
    }
}

/// Lets keys contain `/`: the router matches `/kv/{key}` on one path segment, so the
/// rest of a `/kv/...` path is re-escaped into one segment before routing (poem
/// percent-decodes it again for the handler). Keys that cannot be decoded to UTF-8 are
/// refused here with `INVALID_KEY`. `/kv/` itself names no key and is no route: 404
/// `NOT_FOUND` for every method, as the README's error table says.
fn route_key_path(mut req: Request) -> Result<Request, ApiError> {
    let Some(raw_key) = req.uri().path().strip_prefix(KV_PREFIX) else {
        return Ok(req);
    };
    if raw_key.is_empty() {
        return Err(ApiError::NotFound(format!("{} {KV_PREFIX}", req.method())));
    }
    if percent_decode_str(raw_key).decode_utf8().is_err() {
        return Err(ApiError::InvalidKey(
            "key is not valid UTF-8 after percent-decoding".into(),
        ));
    }
    if !raw_key.contains('/') {
        return Ok(req);
    }
    let mut path = format!("{KV_PREFIX}{}", raw_key.replace('/', "%2F"));
    if let Some(query) = req.uri().query() {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path)
            .map_err(|e| ApiError::InvalidKey(format!("cannot route key: {e}")))?,
    );
    let uri = Uri::from_parts(parts).map_err(|e| ApiError::InvalidKey(e.to_string()))?;
    *req.uri_mut() = uri;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::AllowedMethods;

    #[test]
    fn allow_lists_the_methods_of_the_matching_path_template() {
        let spec = r#"{"paths": {
            "/kv/{key}": {"put": {}, "get": {}, "delete": {}, "parameters": []},
            "/health": {"get": {}},
            "/cluster/members/{id}/promote": {"post": {}}
        }}"#;
        let allowed = AllowedMethods::from_spec(spec);
        let allow = |path| {
            allowed
                .for_path(path)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            allow("/kv/a%2Fb").as_deref(),
            Some("DELETE, GET, HEAD, PUT")
        );
        assert_eq!(allow("/health").as_deref(), Some("GET, HEAD"));
        assert_eq!(allow("/cluster/members/3/promote").as_deref(), Some("POST"));
        assert_eq!(allow("/cluster/members/3"), None);
        assert_eq!(allow("/nope"), None);
    }
}
