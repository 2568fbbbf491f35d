//! The cluster secret on the `/cluster` routes. Membership changes rewrite who holds
//! the data, so with `cluster.secret` set they need it as well as any bearer token
//! (see [`super::auth`]); it is the same secret the nodes send each other on the Raft
//! listener. Compared in constant time, never logged or put into a response.

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaParamIn, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::ApiError;
use crate::secret::secret_matches;

/// The configured `cluster.secret`, in the request data for [`ClusterSecret`] to check
/// against. Empty: no secret is asked for.
#[derive(Clone)]
pub struct ExpectedSecret(Arc<str>);

impl ExpectedSecret {
    pub fn new(secret: &str) -> Self {
        Self(Arc::from(secret))
    }
}

impl std::fmt::Debug for ExpectedSecret {
    // Hand-written so that the secret can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "ExpectedSecret(none)"
        } else {
            "ExpectedSecret(<redacted>)"
        })
    }
}

impl ExpectedSecret {
    /// Whether `given` (the header's value, if any) lets the request through.
    fn check(&self, given: Option<&str>) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        match given {
            Some(given) if secret_matches(given, &self.0) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("wrong cluster secret".into())),
            None => Err(ApiError::Unauthorized(
                "this route needs the cluster secret in the x-kvstore-secret header".into(),
            )),
        }
    }
}

/// An operation argument that admits the request only with the cluster secret, in the
/// header the argument is named after (`#[oai(name = "x-kvstore-secret")]`). The spec
/// shows that header as an optional parameter, since only a node with
/// `cluster.secret` asks for it; a refusal is 401 `UNAUTHORIZED`, before the body is
/// read.
pub struct ClusterSecret;

impl<'a> ApiExtractor<'a> for ClusterSecret {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    const PARAM_IS_REQUIRED: bool = false;

    type ParamType = String;
    type ParamRawType = String;

    fn register(registry: &mut Registry) {
        <String as Type>::register(registry);
    }

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Header)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(String::schema_ref())
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let expected = request
            .data::<ExpectedSecret>()
            .ok_or_else(|| ApiError::Internal("the cluster secret is not configured".into()))?;
        let given = request
            .headers()
            .get(param_opts.name)
            .and_then(|v| v.to_str().ok());
        expected.check(given)?;
        Ok(ClusterSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_lets_everything_through() {
        let none = ExpectedSecret::new("");
        assert!(none.check(None).is_ok());
        assert!(none.check(Some("anything")).is_ok());
    }

    #[test]
    fn a_secret_must_be_given_exactly() {
        let expected = ExpectedSecret::new("s3cret");
        assert!(expected.check(Some("s3cret")).is_ok());
        for given in [None, Some(""), Some("s3cre"), Some("s3cret+")] {
            let e = expected.check(given).unwrap_err();
            assert_eq!(e.status(), 401, "{given:?}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        assert!(!format!("{expected:?}").contains("s3cret"));
    }
}
