//! Three kvstore containers (and, for the PostgreSQL backend, their PostgreSQL) started
//! with testcontainers, and faults injected through the Docker API.
//!
//! Two Docker networks:
//! - `<name>-access`: the test reaches each node's API on its address here, and nodes
//!   reach PostgreSQL here.
//! - `<name>-peers`: node-to-node traffic (Raft and forwarded requests). Nodes know each
//!   other as `kv1`..`kv3`, aliases that exist only on this network, so disconnecting a
//!   node from it is a partition: the node keeps serving clients (and its database) but
//!   can no longer reach its peers, nor they it.
//!
//! Images: `KV_TEST_KVSTORE_IMAGE` (default `kvstore:local`, built by
//! `images/build.sh kvstore`) and `KV_TEST_POSTGRES_IMAGE` (default
//! `kvstore-postgres:15`); `make test` builds both.
//!
//! `KV_FAULTS_PRE_VOTE=false` starts the nodes with Pre-Vote off (`KV_RAFT_PRE_VOTE`), to
//! compare elections with and without it (`bench/prevote.sh`); unset, the nodes run
//! with their default, on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use testcontainers::bollard::models::{
    EndpointSettings, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::{KillContainerOptions, ListNetworksOptions};
use testcontainers::bollard::Docker;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::workload::Endpoints;

const API_PORT: u16 = 8080;
const RAFT_PORT: u16 = 9001;
const PG_PASSWORD: &str = "kv-integration-pw";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded redb file, in each container's own file system.
    Redb,
    /// One PostgreSQL container, a database per node.
    Postgres,
}

/// Whether Docker can run containers here. Without a daemon the scenarios are skipped
/// with a message, unless `KV_REQUIRE_DOCKER` is set (CI sets it): then they fail.
pub fn docker_available() -> bool {
    let ok = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KV_REQUIRE_DOCKER").is_none(),
            "KV_REQUIRE_DOCKER is set but no Docker daemon answers `docker info`"
        );
        eprintln!(
            "SKIPPED: no Docker daemon; the fault scenarios run kvstore in containers \
             (KV_REQUIRE_DOCKER=1 makes this a failure)"
        );
    }
    ok
}

/// Whether the nodes run Pre-Vote: `KV_FAULTS_PRE_VOTE`, else the default (on).
pub fn pre_vote_from_env() -> Result<bool> {
    match std::env::var("KV_FAULTS_PRE_VOTE") {
        Err(_) => Ok(true),
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" => Ok(true),
            "false" | "0" | "off" => Ok(false),
            _ => bail!("KV_FAULTS_PRE_VOTE={v:?}: expected true or false"),
        },
    }
}

fn image_from_env(var: &str, default: &str) -> (String, String) {
    let image = std::env::var(var).unwrap_or_else(|_| default.into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    (name.to_string(), tag.to_string())
}

pub struct Cluster {
    pub name: String,
    pub backend: Backend,
    /// Whether the nodes run Pre-Vote.
    pub pre_vote: bool,
    docker: Docker,
    nodes: Vec<ContainerAsync<GenericImage>>,
    postgres: Option<ContainerAsync<GenericImage>>,
    access: String,
    peers: String,
    /// The nodes' API base URLs, as the workload uses them.
    pub endpoints: Endpoints,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts a three-node cluster and waits until every node is ready. `None` when
    /// Docker is not available (see [`docker_available`]).
    pub async fn start(name: &str, backend: Backend) -> Result<Option<Cluster>> {
        if !docker_available() {
            return Ok(None);
        }
        let docker = Docker::connect_with_local_defaults().context("connect to Docker")?;
        let (image, tag) = image_from_env("KV_TEST_KVSTORE_IMAGE", "kvstore:local");
        docker
            .inspect_image(&format!("{image}:{tag}"))
            .await
            .with_context(|| {
                format!(
                    "image {image}:{tag} is missing: build it with `images/build.sh kvstore` \
                     (`make test` does)"
                )
            })?;
        let pre_vote = pre_vote_from_env()?;
        prune_networks(&docker).await;
        let name = format!("kvit-{name}-{}", std::process::id());
        let access = format!("{name}-access");
        let peers = format!("{name}-peers");
        docker
            .create_network(NetworkCreateRequest {
                name: peers.clone(),
                internal: Some(true),
                ..Default::default()
            })
            .await
            .context("create the peers network")?;

        let postgres = match backend {
            Backend::Redb => None,
            Backend::Postgres => Some(start_postgres(&name, &access).await?),
        };
        let members = (1..=3)
            .map(|i| format!("{i}=http://kv{i}:{API_PORT}|http://kv{i}:{RAFT_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        // The nodes talk over a network of their own, with the secret a deployment uses.
        let secret = format!("{name}-secret");
        let mut nodes = Vec::new();
        for i in 1..=3u32 {
            let mut request = GenericImage::new(&image, &tag)
                .with_wait_for(WaitFor::Nothing)
                .with_exposed_port(API_PORT.tcp())
                .with_network(&access)
                .with_container_name(format!("{name}-node{i}"))
                .with_env_var("KV_RAFT_NODE_ID", i.to_string())
                .with_env_var("KV_SERVER_PORT", API_PORT.to_string())
                .with_env_var("KV_CLUSTER_RAFT_PORT", RAFT_PORT.to_string())
                .with_env_var(
                    "KV_CLUSTER_ADVERTISE_API",
                    format!("http://kv{i}:{API_PORT}"),
                )
                .with_env_var(
                    "KV_CLUSTER_ADVERTISE_RAFT",
                    format!("http://kv{i}:{RAFT_PORT}"),
                )
                .with_env_var("KV_CLUSTER_INITIAL_MEMBERS", &members)
                .with_env_var("KV_CLUSTER_SECRET", &secret)
                .with_env_var("KV_RAFT_ELECTION_TIMEOUT", "500ms")
                .with_env_var("KV_RAFT_PRE_VOTE", pre_vote.to_string())
                .with_env_var("KV_SERVER_REQUEST_TIMEOUT", "2s")
                .with_env_var("KV_LOG_FORMAT", "text");
            request = match backend {
                Backend::Redb => request.with_env_var("KV_STORAGE_TYPE", "file"),
                Backend::Postgres => request
                    .with_env_var("KV_STORAGE_TYPE", "database")
                    .with_env_var("KV_DB_HOST", format!("{name}-pg"))
                    .with_env_var("KV_DB_NAME", format!("kv{i}"))
                    .with_env_var("KV_DB_USER", "postgres")
                    .with_env_var("KV_DB_PASSWORD", PG_PASSWORD)
                    .with_env_var("KV_DB_SSL_MODE", "disable")
                    .with_env_var("KV_DB_MIN_CONNS", "0")
                    .with_env_var("KV_DB_MAX_CONNS", "4"),
            };
            let container = request
                .start()
                .await
                .with_context(|| format!("start node {i}"))?;
            nodes.push(container);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let cluster = Cluster {
            name,
            backend,
            pre_vote,
            docker,
            nodes,
            postgres,
            access,
            peers,
            endpoints: Endpoints::new(vec![String::new(); 3]),
            http,
        };
        for i in 0..3 {
            cluster.connect(i).await?;
            cluster.refresh_endpoint(i).await?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(Some(cluster))
    }

    fn id(&self, node: usize) -> &str {
        self.nodes[node].id()
    }

    /// Looks up node `node`'s address on the access network (it may change when the
    /// container restarts).
    async fn refresh_endpoint(&self, node: usize) -> Result<()> {
        let info = self.docker.inspect_container(self.id(node), None).await?;
        let ip = info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get(&self.access).cloned())
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| anyhow!("node {} has no address on {}", node + 1, self.access))?;
        self.endpoints.set(node, format!("http://{ip}:{API_PORT}"));
        Ok(())
    }

    async fn is_running(&self, node: usize) -> bool {
        self.nodes[node].is_running().await.unwrap_or(false)
    }

    /// Waits until every node answers `/ready`. A node whose process exited (it gives
    /// up at start when PostgreSQL is not reachable yet) is started again.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        for node in 0..self.nodes.len() {
            self.wait_node_ready(node, within).await?;
        }
        Ok(())
    }

    pub async fn wait_node_ready(&self, node: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if !self.is_running(node).await {
                self.nodes[node].start().await?;
                self.refresh_endpoint(node).await?;
            }
            let url = format!("{}/ready", self.endpoints.get(node));
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {} not ready within {within:?}", node + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node (0-based) that leads, as the nodes themselves report it: one that says
    /// it is the leader, in the highest term any node reports.
    pub async fn leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let mut best: Option<(u64, usize)> = None;
            for node in 0..self.nodes.len() {
                let url = format!("{}/status", self.endpoints.get(node));
                let Ok(r) = self.http.get(&url).send().await else {
                    continue;
                };
                let Ok(status) = r.json::<Json>().await else {
                    continue;
                };
                let term = status["term"].as_u64().unwrap_or(0);
                if status["role"] == "leader" && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, node));
                }
            }
            if let Some((_, node)) = best {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("no leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Some node other than `node`.
    pub fn other_than(&self, node: usize) -> usize {
        (node + 1) % self.nodes.len()
    }

    /// SIGKILL: the process dies at once, nothing flushed beyond what it already did.
    pub async fn kill(&self, node: usize) -> Result<()> {
        self.docker
            .kill_container(
                self.id(node),
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await?;
        Ok(())
    }

    /// SIGTERM and wait (up to 20 s) for a clean exit.
    pub async fn stop(&self, node: usize) -> Result<()> {
        self.nodes[node].stop_with_timeout(Some(20)).await?;
        Ok(())
    }

    /// Starts a stopped or killed node again; returns once it is ready.
    pub async fn restart(&self, node: usize) -> Result<()> {
        self.nodes[node].start().await?;
        self.refresh_endpoint(node).await?;
        self.wait_node_ready(node, Duration::from_secs(60)).await
    }

    /// Freezes every process in the container (a stall like a long GC pause).
    pub async fn pause(&self, node: usize) -> Result<()> {
        self.nodes[node].pause().await?;
        Ok(())
    }

    pub async fn unpause(&self, node: usize) -> Result<()> {
        self.nodes[node].unpause().await?;
        Ok(())
    }

    /// Cuts the node off from its peers (it stays reachable from the test).
    pub async fn disconnect(&self, node: usize) -> Result<()> {
        self.docker
            .disconnect_network(
                &self.peers,
                NetworkDisconnectRequest {
                    container: self.id(node).to_string(),
                    force: Some(true),
                },
            )
            .await?;
        Ok(())
    }

    /// Joins the node to the peers network as `kv<n>`.
    pub async fn connect(&self, node: usize) -> Result<()> {
        self.docker
            .connect_network(
                &self.peers,
                NetworkConnectRequest {
                    container: self.id(node).to_string(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(vec![format!("kv{}", node + 1)]),
                        ..Default::default()
                    }),
                },
            )
            .await?;
        Ok(())
    }

    /// Stops PostgreSQL (fast shutdown) for `down`, then starts it again.
    pub async fn restart_postgres(&self, down: Duration) -> Result<()> {
        let pg = self
            .postgres
            .as_ref()
            .ok_or_else(|| anyhow!("this cluster runs on redb"))?;
        pg.stop_with_timeout(Some(20)).await?;
        tokio::time::sleep(down).await;
        pg.start().await?;
        Ok(())
    }

    /// Writes each container's output to `dir` (for a failed scenario).
    pub async fn save_logs(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let mut log = node.stdout_to_vec().await.unwrap_or_default();
            log.extend(node.stderr_to_vec().await.unwrap_or_default());
            std::fs::write(dir.join(format!("node{}.log", i + 1)), log)?;
        }
        if let Some(pg) = &self.postgres {
            let log = pg.stderr_to_vec().await.unwrap_or_default();
            std::fs::write(dir.join("postgres.log"), log)?;
        }
        Ok(())
    }

    /// Removes the containers and networks.
    pub async fn teardown(self) {
        for node in 0..self.nodes.len() {
            let _ = self.nodes[node].unpause().await;
        }
        for node in self.nodes {
            let _ = node.rm().await;
        }
        if let Some(pg) = self.postgres {
            let _ = pg.rm().await;
        }
        let _ = self.docker.remove_network(&self.peers).await;
    }
}

async fn start_postgres(name: &str, access: &str) -> Result<ContainerAsync<GenericImage>> {
    let (image, tag) = image_from_env("KV_TEST_POSTGRES_IMAGE", "kvstore-postgres:15");
    let init = b"CREATE DATABASE kv1;\nCREATE DATABASE kv2;\nCREATE DATABASE kv3;\n".to_vec();
    let container = GenericImage::new(&image, &tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_network(access)
        .with_container_name(format!("{name}-pg"))
        .with_env_var("POSTGRES_PASSWORD", PG_PASSWORD)
        .with_copy_to("/docker-entrypoint-initdb.d/kvstore.sql", init)
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .context("start PostgreSQL")?;
    Ok(container)
}

/// Removes networks left behind by earlier runs that were interrupted: those whose test
/// process (the pid in the name) is gone. Another run's network is left alone even
/// before its containers join it (a network in use could not be removed anyway).
async fn prune_networks(docker: &Docker) {
    let Ok(networks) = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some([("name".to_string(), vec!["kvit-".to_string()])].into()),
        }))
        .await
    else {
        return;
    };
    for network in networks {
        if let Some(name) = network.name.filter(|n| n.starts_with("kvit-")) {
            if !owner_alive(&name) {
                let _ = docker.remove_network(&name).await;
            }
        }
    }
}

/// Whether the test process that made network `name` (`kvit-<scenario>-<pid>-peers` or
/// `-access`) still runs.
fn owner_alive(name: &str) -> bool {
    name.strip_suffix("-peers")
        .or_else(|| name.strip_suffix("-access"))
        .and_then(|rest| rest.rsplit_once('-'))
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::owner_alive;

    #[test]
    fn a_network_of_a_running_test_is_not_pruned() {
        let me = std::process::id();
        assert!(owner_alive(&format!("kvit-leader-cut-off-{me}-peers")));
        assert!(owner_alive(&format!("kvit-leader-cut-off-{me}-access")));
        assert!(!owner_alive(&format!(
            "kvit-leader-cut-off-{}-peers",
            u32::MAX
        )));
        assert!(!owner_alive("kvit-something-else"));
    }
}
