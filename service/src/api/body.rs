//! A JSON request body extractor whose every failure is an [`ApiError`] with its own
//! code (poem-openapi's `Json<T>` answers these cases with plain-text errors). The
//! answers are those of the README's error table: 400 for a `Content-Type` that is not JSON (a body without
//! one is read as JSON), `EMPTY_BODY`, and `INVALID_JSON` with `details`.
//!
//! The body size is bounded before reading: a `Content-Length` over the limit is refused
//! at once, and a chunked body is cut off as soon as it passes the limit.

use std::time::Duration;

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use super::error::{ApiError, InvalidJsonDetails};

/// How request bodies are read; set once at start-up from the `server` settings.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// The largest body accepted, in bytes.
    pub max_bytes: usize,
    /// How long the client may take to send the whole body.
    pub read_timeout: Duration,
}

impl BodyRules {
    /// Room for a value of `max_value_bytes` even if every byte needed a six-byte JSON
    /// escape (`\u0000`), plus the object around it.
    pub fn new(max_value_bytes: usize, read_timeout: Duration) -> Self {
        BodyRules {
            max_bytes: max_value_bytes.saturating_mul(6).saturating_add(4096),
            read_timeout,
        }
    }
}

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<'a, T> ApiExtractor<'a> for JsonBody<T>
where
    T: Type + DeserializeOwned + Send,
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: schema::<T>(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let rules = request
            .data::<BodyRules>()
            .copied()
            .ok_or_else(|| ApiError::Internal("body rules are not configured".into()))?;
        let limit = rules.max_bytes;
        check_content_type(request.content_type())?;
        let declared = request
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit).into());
        }
        tracing::debug!(declared_length = declared, "reading request body");
        let read = tokio::time::timeout(rules.read_timeout, body.take()?.into_bytes_limit(limit));
        let bytes = read
            .await
            .map_err(|_| ApiError::BodyTimeout(rules.read_timeout))?
            .map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => too_large(limit),
                other => ApiError::InvalidJson(InvalidJsonDetails::new(other.to_string(), b"")),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::EmptyBody.into());
        }
        crate::cpu::heavy(bytes.len(), || serde_json::from_slice(&bytes))
            .map(JsonBody)
            .map_err(|e| {
                ApiError::InvalidJson(InvalidJsonDetails::new(e.to_string(), &bytes)).into()
            })
    }
}

fn schema<T: Type>() -> MetaSchemaRef {
    T::schema_ref()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::ValueTooLarge(format!("request body exceeds the limit of {limit} bytes"))
}

/// Accepts `application/json` and any `application/*+json`, with or without parameters,
/// and a body without a `Content-Type` (or with an empty one), which is read as JSON, as
/// the README's error table promises existing clients.
fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(raw) = content_type.filter(|ct| !ct.trim().is_empty()) else {
        return Ok(());
    };
    match raw.parse::<mime::Mime>() {
        Ok(m)
            if m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON)) =>
        {
            Ok(())
        }
        _ => Err(ApiError::InvalidContentType(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_accepted() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(check_content_type(Some(ct)).is_ok(), "{ct}");
        }
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("")).is_ok());
    }

    #[test]
    fn other_content_types_are_refused() {
        for ct in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(check_content_type(Some(ct)).is_err(), "{ct:?}");
        }
    }
}
