//! A JSON request body extractor whose every failure is an [`ApiError`] with its own
//! code (poem-openapi's `Json<T>` answers these cases with plain-text errors).
//!
//! The body size is bounded before reading: a `Content-Length` over the limit is refused
//! at once, and a chunked body is cut off as soon as it passes the limit.

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest request body any route accepts, in bytes. Set once at start-up from
/// `server.max_value_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl BodyLimit {
    /// Room for a value of `max_value_bytes` even if every byte needed a six-byte JSON
    /// escape (`\u0000`), plus the object around it.
    pub fn for_max_value(max_value_bytes: usize) -> Self {
        BodyLimit(max_value_bytes.saturating_mul(6).saturating_add(4096))
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
        let limit = request
            .data::<BodyLimit>()
            .copied()
            .unwrap_or(BodyLimit::for_max_value(1024 * 1024))
            .0;
        check_content_type(request.content_type())?;
        let declared = request
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit).into());
        }
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => ApiError::from(too_large(limit)),
                other => ApiError::InvalidJson(other.to_string()),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::EmptyBody.into());
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidJson(e.to_string()).into())
    }
}

fn schema<T: Type>() -> MetaSchemaRef {
    T::schema_ref()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::ValueTooLarge(format!("request body exceeds the limit of {limit} bytes"))
}

/// Accepts `application/json` and any `application/*+json`, with or without parameters.
fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(raw) = content_type else {
        return Err(ApiError::InvalidContentType("(none)".into()));
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
    }

    #[test]
    fn other_content_types_are_refused() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("json"),
        ] {
            assert!(check_content_type(ct).is_err(), "{ct:?}");
        }
    }
}
