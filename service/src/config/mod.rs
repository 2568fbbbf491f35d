//! Node configuration: built-in defaults, then an optional YAML file, then `KV_*`
//! environment variables, in that order of precedence (last wins).
//!
//! The section and key names (`server`, `storage`, `database`, `raft`, `logging`) and
//! the environment variables (`KV_DB_HOST`, `KV_LOG_LEVEL`, ...) are a contract with
//! existing deployments (README, "Configuration") and every other setting has a `KV_` override
//! listed in [`ENV_OVERRIDES`].
//!
//! `schema.rs` holds the sections and what each setting means, `env.rs` the variables,
//! `parse.rs` the text forms a setting may take, and `validate.rs` the rules across
//! settings. The defaults are `config/server.yaml`, compiled in.

mod env;
mod parse;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use self::env::ENV_OVERRIDES;
pub use self::schema::*;

/// A configuration problem, always naming the setting at fault so an operator can fix
/// it without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// The defaults: what a node runs with when no file and no variable says otherwise.
/// They are `config/server.yaml`, the annotated file `make run` starts a node with, so
/// the file a user reads and the values the node falls back to cannot drift apart.
const DEFAULTS: &str = include_str!("../../../config/server.yaml");

impl Settings {
    /// Loads defaults, then `file` if given, then the `KV_*` variables from the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// Like [`Settings::load`], reading variables through `env` (tests pass a map).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        let builder = env::apply(builder, &env)?;
        let mut settings: Settings = builder
            .build()
            .map_err(|e| match e {
                config::ConfigError::FileParse { uri, cause } => ConfigError::File {
                    path: uri.unwrap_or_default().into(),
                    reason: cause.to_string(),
                },
                other => ConfigError::Parse(other.to_string()),
            })?
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        // An empty path (e.g. `KV_DB_SSL_ROOT_CERT=`) means unset.
        settings.database.ssl_root_cert = settings
            .database
            .ssl_root_cert
            .take()
            .filter(|p| !p.as_os_str().is_empty());
        // An empty TLS path (e.g. `KV_TLS_CA_FILE=`) means unset.
        for path in [
            &mut settings.tls.cert_file,
            &mut settings.tls.key_file,
            &mut settings.tls.ca_file,
        ] {
            *path = path.take().filter(|p| !p.as_os_str().is_empty());
        }
        // An empty `logging.file` (e.g. `KV_LOG_FILE=`) means stdout.
        settings.logging.file = settings
            .logging
            .file
            .take()
            .filter(|p| !p.as_os_str().is_empty());
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests;
