//! The ways a setting may be written besides plain YAML: durations as `500ms` or bare
//! milliseconds, and the list settings as one line of text, which is all an environment
//! variable can hold.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::schema::{ClientToken, Member};

/// Reads a duration written as `500ms`, `1s`, `2m`, or a bare number of milliseconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(text) => {
            let text = text.trim();
            if let Ok(ms) = text.parse::<u64>() {
                return Ok(Duration::from_millis(ms));
            }
            humantime::parse_duration(text).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration `{text}`: {e} (write e.g. 500ms, 1s, 2m)"
                ))
            })
        }
    }
}

/// Reads `initial_members` as a YAML list of `{id, api_addr, raft_addr}`, or, for
/// environment variables, as text: `1=http://h1:8081|http://h1:9001,2=...`.
pub(super) fn members<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Member>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<Member>),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::List(list) => Ok(list),
        Raw::Text(text) => parse_members(&text).map_err(serde::de::Error::custom),
    }
}

fn parse_members(text: &str) -> Result<Vec<Member>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let bad = || format!("cannot read member `{item}`: write ID=API_URL|RAFT_URL");
            let (id, addrs) = item.split_once('=').ok_or_else(bad)?;
            let (api, raft) = addrs.split_once('|').ok_or_else(bad)?;
            Ok(Member {
                id: id.trim().parse().map_err(|_| bad())?,
                api_addr: api.trim().to_string(),
                raft_addr: raft.trim().to_string(),
            })
        })
        .collect()
}

/// Reads `auth.tokens` as a YAML list of `{token, role}`, or, for the environment
/// variable, as text: `TOKEN:ROLE,TOKEN:ROLE`. Errors name entries by position and
/// never quote a token.
pub(super) fn client_tokens<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ClientToken>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        token: String,
        role: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<Entry>),
        Text(String),
    }
    let entries: Vec<(String, String)> = match Raw::deserialize(deserializer)? {
        Raw::List(list) => list.into_iter().map(|e| (e.token, e.role)).collect(),
        Raw::Text(text) => parse_client_tokens(&text).map_err(serde::de::Error::custom)?,
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, (token, role))| {
            let role = role
                .trim()
                .parse()
                .map_err(|e| serde::de::Error::custom(format!("entry {}: {e}", i + 1)))?;
            Ok(ClientToken { token, role })
        })
        .collect()
}

fn parse_client_tokens(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .enumerate()
        .map(|(i, item)| {
            // The role is after the last `:`, so a token may contain `:`.
            let (token, role) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("entry {} is not TOKEN:ROLE", i + 1))?;
            Ok((token.trim().to_string(), role.trim().to_string()))
        })
        .collect()
}
