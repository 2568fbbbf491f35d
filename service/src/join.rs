//! `kvstore join`: makes this node a voter of an existing cluster through the membership
//! API, for deployments whose nodes start one at a time (a Kubernetes StatefulSet): the
//! first node initialises the cluster, and every later one starts with
//! `cluster.bootstrap: false` and runs this beside its own process.
//!
//! It reads the node's own settings (`--config`, `KV_*`), as the node does: its id, its
//! advertised addresses, the cluster secret, an `admin` token and the CA file. It asks
//! the peers for the membership until one answers, then adds this node as a learner
//! (which returns once the node has caught up) and promotes it. A node that is already
//! a voter (a restart) has nothing to do. A node the cluster lists as a member while
//! its own storage is empty has lost its data; joining under the same id would let it
//! vote twice in one term, so it refuses, naming what to do.
//!
//! `--check` only asks whether a cluster answers at any peer: the first node runs it
//! before it starts, so that a first node whose volume was lost does not initialise a
//! second cluster beside the one its peers still run.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::config::{Role, Settings};

/// How long one request may take, except the learner's catch-up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two rounds of asking the peers.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What `--check` found.
const FOUND: u8 = 0;
const NONE_FOUND: u8 = 3;

#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    id: u64,
    role: String,
    api_addr: String,
    raft_addr: String,
}

/// This node as the peers must see it, and how to talk to them.
struct Joiner {
    id: u64,
    api_addr: String,
    raft_addr: String,
    client: reqwest::Client,
    secret: String,
    admin_token: Option<String>,
    peers: Vec<String>,
}

/// Runs `kvstore join`. Exit codes: 0 done (or, with `check`, a cluster answers), 1 it
/// cannot be done, 2 bad settings, 3 (`check` only) no cluster answers.
pub async fn run(
    config_file: Option<&Path>,
    peers: &[String],
    timeout: Duration,
    check: bool,
) -> ExitCode {
    let joiner = match Settings::load(config_file)
        .map_err(anyhow::Error::from)
        .and_then(|settings| Joiner::new(&settings, peers))
    {
        Ok(joiner) => joiner,
        Err(e) => {
            eprintln!("kvstore join: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = if check {
        joiner.check().await
    } else {
        joiner.join(timeout).await.map(|()| FOUND)
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kvstore join: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Joiner {
    fn new(settings: &Settings, peers: &[String]) -> anyhow::Result<Joiner> {
        let cluster = &settings.cluster;
        for (name, value) in [
            ("cluster.advertise_api", &cluster.advertise_api),
            ("cluster.advertise_raft", &cluster.advertise_raft),
        ] {
            if value.trim().is_empty() {
                bail!("`{name}` must be set: the peers reach this node at that address");
            }
        }
        let admin_token = settings
            .auth
            .tokens
            .iter()
            .find(|t| t.role == Role::Admin)
            .map(|t| t.token.clone());
        if !settings.auth.tokens.is_empty() && admin_token.is_none() {
            bail!(
                "`auth.tokens` has no token with the `admin` role, which the /cluster routes need"
            );
        }
        let mut builder = reqwest::Client::builder().connect_timeout(REQUEST_TIMEOUT);
        if let Some(ca_file) = &settings.tls.ca_file {
            builder = builder
                .use_preconfigured_tls(crate::tls::tool_client_config("tls.ca_file", ca_file)?);
        }
        let api_addr = cluster
            .advertise_api
            .trim()
            .trim_end_matches('/')
            .to_string();
        let peers = peers
            .iter()
            .flat_map(|p| p.split(','))
            .map(|p| p.trim().trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case(&api_addr))
            .collect::<Vec<_>>();
        if peers.is_empty() {
            bail!("no peers to ask: give their API URLs with --peers");
        }
        Ok(Joiner {
            id: settings.raft.node_id,
            api_addr,
            raft_addr: cluster
                .advertise_raft
                .trim()
                .trim_end_matches('/')
                .to_string(),
            client: builder.build().context("the HTTP client")?,
            secret: cluster.secret.clone(),
            admin_token,
            peers,
        })
    }

    /// A request to a `/cluster` route, with the secret and the admin token.
    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, url).timeout(REQUEST_TIMEOUT);
        if !self.secret.is_empty() {
            req = req.header("x-kvstore-secret", &self.secret);
        }
        if let Some(token) = &self.admin_token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// The membership as `base` knows it (empty for a node that knows no cluster yet):
    /// `Ok(None)` when it does not answer; `Err` when it refuses us (wrong secret or
    /// token), which waiting will not mend.
    async fn members_at(&self, base: &str) -> anyhow::Result<Option<Vec<Member>>> {
        let Ok(resp) = self
            .request(reqwest::Method::GET, format!("{base}/cluster/members"))
            .send()
            .await
        else {
            return Ok(None);
        };
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let body = resp.text().await.unwrap_or_default();
            bail!("{base} refuses the membership request ({status}): check `cluster.secret` and the admin token in `auth.tokens`: {body}");
        }
        if !status.is_success() {
            return Ok(None);
        }
        Ok(resp.json::<Members>().await.ok().map(|m| m.members))
    }

    /// The first peer that knows a cluster, with its membership.
    async fn find_cluster(&self) -> anyhow::Result<Option<(&str, Vec<Member>)>> {
        for peer in &self.peers {
            match self.members_at(peer).await? {
                Some(members) if !members.is_empty() => return Ok(Some((peer.as_str(), members))),
                _ => {}
            }
        }
        Ok(None)
    }

    async fn check(&self) -> anyhow::Result<u8> {
        match self.find_cluster().await? {
            Some((peer, members)) => {
                let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
                println!("a cluster answers at {peer}: members {ids:?}");
                Ok(FOUND)
            }
            None => {
                println!("no cluster answers at {}", self.peers.join(", "));
                Ok(NONE_FOUND)
            }
        }
    }

    async fn join(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((peer, members)) = self.find_cluster().await? {
                if let Some(done) = self.try_join(peer, &members, deadline).await? {
                    println!("{done}");
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not join within {timeout:?}: no peer of {} took it in",
                    self.id,
                    self.peers.join(", ")
                );
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// One attempt through `peer`: `Some(what was done)`, or `None` to try again.
    async fn try_join(
        &self,
        peer: &str,
        members: &[Member],
        deadline: Instant,
    ) -> anyhow::Result<Option<String>> {
        let me = members.iter().find(|m| m.id == self.id);
        if me.is_some() && self.own_storage_is_empty(deadline).await? {
            bail!(
                "node {id} is a member of the cluster at {peer}, but this node's storage is empty: \
                 its data was lost. Remove it (DELETE /cluster/members/{id}) and start it with a \
                 new id (README, Deploy on Kubernetes)",
                id = self.id
            );
        }
        if me.is_some_and(|m| m.role == "voter") {
            return Ok(Some(format!("node {} is already a voter", self.id)));
        }
        let same_address = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b);
        if let Some(former) = members.iter().find(|m| {
            m.id != self.id
                && (same_address(&m.api_addr, &self.api_addr)
                    || same_address(&m.raft_addr, &self.raft_addr))
        }) {
            bail!(
                "node {former} still holds this node's address {addr}: it is this pod before \
                 it lost its data. Remove it (DELETE /cluster/members/{former}), then this \
                 node {id} can join (README, Deploy on Kubernetes)",
                former = former.id,
                addr = self.api_addr,
                id = self.id
            );
        }
        if me.is_none() {
            // Returns once this node has caught up, by log or snapshot: allow until the
            // deadline for that.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .max(REQUEST_TIMEOUT);
            let resp = self
                .request(reqwest::Method::POST, format!("{peer}/cluster/learners"))
                .timeout(wait)
                .json(&serde_json::json!({
                    "id": self.id,
                    "api_addr": self.api_addr,
                    "raft_addr": self.raft_addr,
                }))
                .send()
                .await;
            if !self.accepted(resp, "adding it as a learner").await? {
                return Ok(None);
            }
        }
        let resp = self
            .request(reqwest::Method::POST, format!("{peer}/cluster/voters"))
            .json(&serde_json::json!({ "ids": [self.id] }))
            .send()
            .await;
        if !self.accepted(resp, "promoting it to voter").await? {
            return Ok(None);
        }
        Ok(Some(format!(
            "node {} joined through {peer} as a voter",
            self.id
        )))
    }

    /// Whether a membership change went through: `Ok(false)` for what may pass on a
    /// retry (no answer, 503, 504), `Err` for a refusal that will not.
    async fn accepted(
        &self,
        resp: reqwest::Result<reqwest::Response>,
        what: &str,
    ) -> anyhow::Result<bool> {
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("kvstore join: {what}: {e}; trying again");
                return Ok(false);
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(true);
        }
        let body = resp.text().await.unwrap_or_default();
        if status.is_server_error() {
            eprintln!("kvstore join: {what}: {status} {body}; trying again");
            return Ok(false);
        }
        Err(anyhow!("{what} was refused: {status} {body}"))
    }

    /// Whether this node's own storage holds no membership (it waits to be added), as
    /// the node itself says; it must be running.
    async fn own_storage_is_empty(&self, deadline: Instant) -> anyhow::Result<bool> {
        loop {
            if let Some(members) = self.members_at(&self.api_addr).await? {
                return Ok(members.is_empty());
            }
            if Instant::now() >= deadline {
                bail!("this node does not answer at {}", self.api_addr);
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
