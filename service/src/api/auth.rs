//! Client authentication: optional bearer tokens with cumulative roles (`auth.tokens`).
//!
//! [`Auth::check`] runs as a middleware layer in [`super::app`], before
//! routing, so it covers every route, unknown ones included; the OpenAPI operations only
//! declare the scheme ([`ClientAuth`]). Tokens are compared in constant time, and no
//! token is ever logged or put into a response.

use std::sync::Arc;

use poem::http::{header, HeaderMap, HeaderValue, Method};
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::ApiError;
use crate::config::{AuthSettings, Role};
use crate::secret::secret_matches;

/// Paths any client may call without a token: the probes, metrics, and the docs and
/// spec (which describe the API but hold no data). Everything under `/docs/` too.
const OPEN: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/openapi.yaml",
];

/// The accepted tokens and their roles. Without tokens, authentication is off.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<[(String, Role)]>,
}

impl std::fmt::Debug for Auth {
    // Hand-written so that a token can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Auth {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            tokens: settings
                .tokens
                .iter()
                .map(|t| (t.token.clone(), t.role))
                .collect(),
        }
    }

    /// No tokens: every request is served without one.
    pub fn off() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `req` may proceed: always when authentication is off or the route is
    /// open, otherwise when it carries a known token whose role allows the route.
    pub fn check(&self, req: &Request) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(needed) = required_role(req.method(), req.uri().path()) else {
            return Ok(());
        };
        let role = self.role_of(req.headers())?;
        if role >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this request needs the `{}` role; the token has `{}`",
                needed.as_str(),
                role.as_str()
            )))
        }
    }

    fn role_of(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => {
                return Err(ApiError::MissingToken(
                    "this request needs a bearer token: send `Authorization: Bearer <token>`"
                        .into(),
                ))
            }
            (Some(value), None) => value,
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidToken(
                    "more than one Authorization header".into(),
                ))
            }
        };
        let token = bearer_token(value).ok_or_else(|| {
            ApiError::InvalidToken("the Authorization header is not `Bearer <token>`".into())
        })?;
        self.lookup(token)
            .ok_or_else(|| ApiError::InvalidToken("unknown bearer token".into()))
    }

    /// The role of `given`. Every configured token is compared, each in constant time,
    /// so how long this takes does not tell which token matched or how much of one.
    fn lookup(&self, given: &str) -> Option<Role> {
        self.tokens.iter().fold(None, |found, (token, role)| {
            let matched = secret_matches(given, token);
            found.or(matched.then_some(*role))
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The role a request needs, or `None` for an open route. Decided from the raw path
/// before routing: `/cluster/...` needs `admin`, writes under `/kv/` and `/leases`,
/// and every transaction (`/txn`, which may write), need `write`, and everything else
/// that is not open, unknown paths included, needs `read`. The first
/// non-empty segment decides, so `//cluster` is not a way around `admin`.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if OPEN.contains(&path) || path.starts_with("/docs/") {
        return None;
    }
    match path.split('/').find(|segment| !segment.is_empty()) {
        Some("cluster") => Some(Role::Admin),
        Some("kv" | "leases") if method == Method::GET || method == Method::HEAD => {
            Some(Role::Read)
        }
        Some("kv" | "leases" | "txn") => Some(Role::Write),
        _ => Some(Role::Read),
    }
}

/// The name of the bearer scheme in the OpenAPI spec.
const SCHEME: &str = "bearerAuth";

/// Declares the bearer scheme on an operation, for the spec and Swagger UI's Authorize
/// button. It checks nothing itself: the middleware has done that before routing.
/// The token is optional in the spec (`security: [{bearerAuth: []}, {}]`) because
/// only a node with `auth.tokens` asks for one.
pub struct ClientAuth;

impl<'a> ApiExtractor<'a> for ClientAuth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "A token from `auth.tokens`, sent as `Authorization: Bearer <token>`; asked \
                     for only when the node has tokens. Roles are cumulative, read < write < \
                     admin: `read` for GET /kv/{key}, GET /kv (listing) and /status, `write` \
                     for PUT and DELETE /kv/{key} and DELETE /kv (range delete), `admin` for \
                     the /cluster routes. /health, /ready, /metrics and \
                     the docs need no token.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![SCHEME]
    }

    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        _request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(ClientAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientToken;

    fn auth(tokens: &[(&str, Role)]) -> Auth {
        Auth::new(&AuthSettings {
            tokens: tokens
                .iter()
                .map(|(token, role)| ClientToken {
                    token: token.to_string(),
                    role: *role,
                })
                .collect(),
        })
    }

    fn request(method: Method, path: &str, authorization: &[&str]) -> Request {
        let mut builder = Request::builder().method(method).uri_str(path);
        for value in authorization {
            builder = builder.header(header::AUTHORIZATION, *value);
        }
        builder.finish()
    }

    #[test]
    fn roles_by_route() {
        let get = Method::GET;
        for path in [
            "/health",
            "/ready",
            "/metrics",
            "/docs",
            "/docs/",
            "/docs/index.html",
            "/openapi.json",
            "/openapi.yaml",
        ] {
            assert_eq!(required_role(&get, path), None, "{path}");
        }
        for (method, path, role) in [
            (Method::GET, "/kv/a", Role::Read),
            (Method::HEAD, "/kv/a", Role::Read),
            (Method::GET, "/kv/a/b", Role::Read),
            (Method::PUT, "/kv/a", Role::Write),
            (Method::DELETE, "/kv/a", Role::Write),
            (Method::GET, "/kv", Role::Read),
            (Method::DELETE, "/kv", Role::Write),
            (Method::POST, "/kv/a", Role::Write),
            (Method::GET, "/status", Role::Read),
            (Method::POST, "/txn", Role::Write),
            (Method::GET, "/leases/7", Role::Read),
            (Method::POST, "/leases", Role::Write),
            (Method::POST, "/leases/7/keepalive", Role::Write),
            (Method::DELETE, "/leases/7", Role::Write),
            (Method::GET, "/cluster/members", Role::Admin),
            (Method::POST, "/cluster/learners", Role::Admin),
            (Method::DELETE, "/cluster/members/3", Role::Admin),
            (Method::GET, "//cluster/members", Role::Admin),
            (Method::GET, "/cluster", Role::Admin),
            (Method::GET, "/no/such/route", Role::Read),
            (Method::GET, "/", Role::Read),
            (Method::GET, "/health/x", Role::Read),
            (Method::GET, "//health", Role::Read),
        ] {
            assert_eq!(required_role(&method, path), Some(role), "{method} {path}");
        }
    }

    #[test]
    fn off_lets_everything_through() {
        let off = Auth::off();
        assert!(!off.enabled());
        assert!(off
            .check(&request(Method::POST, "/cluster/leader", &[]))
            .is_ok());
    }

    #[test]
    fn tokens_and_roles() {
        let a = auth(&[("r", Role::Read), ("w", Role::Write), ("adm", Role::Admin)]);
        let code = |method: Method, path: &str, header: &[&str]| {
            a.check(&request(method, path, header))
                .err()
                .map(|e| (e.status().as_u16(), e.code().as_label()))
        };
        assert_eq!(code(Method::GET, "/health", &[]), None);
        assert_eq!(
            code(Method::GET, "/kv/k", &[]),
            Some((401, "UNAUTHORIZED".into()))
        );
        for bad in [
            "Bearer nope",
            "Bearer",
            "Bearer  ",
            "Basic cjpy",
            "r",
            "Bearer r x",
        ] {
            assert_eq!(
                code(Method::GET, "/kv/k", &[bad]),
                Some((401, "UNAUTHORIZED".into())),
                "{bad}"
            );
        }
        assert_eq!(
            code(Method::GET, "/kv/k", &["Bearer r", "Bearer r"]),
            Some((401, "UNAUTHORIZED".into()))
        );
        assert_eq!(code(Method::GET, "/kv/k", &["Bearer r"]), None);
        assert_eq!(code(Method::GET, "/kv/k", &["bearer   r "]), None);
        assert_eq!(
            code(Method::PUT, "/kv/k", &["Bearer r"]),
            Some((403, "FORBIDDEN".into()))
        );
        assert_eq!(code(Method::PUT, "/kv/k", &["Bearer w"]), None);
        assert_eq!(
            code(Method::GET, "/cluster/members", &["Bearer w"]),
            Some((403, "FORBIDDEN".into()))
        );
        assert_eq!(code(Method::GET, "/cluster/members", &["Bearer adm"]), None);
        assert_eq!(code(Method::DELETE, "/kv/k", &["Bearer adm"]), None);
        // A prefix or an extension of a token is not the token.
        assert!(code(Method::GET, "/kv/k", &["Bearer ad"]).is_some());
        assert!(code(Method::GET, "/kv/k", &["Bearer admin"]).is_some());
    }

    #[test]
    fn refusals_never_quote_the_token() {
        let a = auth(&[("s3cr3t-read", Role::Read)]);
        for header in ["Bearer s3cr3t-read", "Bearer s3cr3t-wrong", "s3cr3t-read"] {
            if let Err(e) = a.check(&request(Method::PUT, "/kv/k", &[header])) {
                assert!(!e.to_string().contains("s3cr3t"), "{e}");
            }
        }
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }
}
