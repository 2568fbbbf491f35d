//! The Kubernetes deployment (`deploy/kubernetes/`) without a Kubernetes cluster:
//! - its PrometheusRule carries exactly the rules of `compose/alerts.yml`, and its
//!   ServiceMonitor points at what exists (custom resources have no schema offline);
//! - the bootstrap the pods run, with real processes: each "pod" is the StatefulSet's
//!   container command (`entrypoint.sh` from the ConfigMap) with the environment the
//!   manifest gives it, started in StatefulSet order. The first initialises the cluster,
//!   the others join; then the README's scaling procedure, 3 -> 5 -> 3 and up again on a
//!   new volume, a restarted pod, a first pod that lost its volume, and a stop of every
//!   pod at once.
//!
//! What differs from a cluster, and only that: each pod's IP is a loopback address of
//! its own (`127.0.0.1<ordinal>`, so every pod keeps the manifest's ports), the volume
//! is a directory, the Secrets are the test's own (a CA and a certificate made with
//! `openssl`), and the client Service is the first pod's address.
//!
//! Rendering and schema validation are `make kubernetes-test` (`kubectl kustomize`, then
//! `kubernetes-validate`), which `make test` runs.

mod processes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use processes::{clean_command, eventually, kvstore_bin, Process};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value;

const NAMESPACE: &str = "kvtest";
const SECRET: &str = "k8s-test-cluster-secret";
const ADMIN: &str = "k8s-test-admin";
const READER: &str = "k8s-test-reader";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_prometheus_rule_carries_the_alert_rules_of_compose() {
    let rule = yaml(&root().join("deploy/kubernetes/base/prometheusrule.yaml"));
    let alerts = yaml(&root().join("compose/alerts.yml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/base/prometheusrule.yaml differs from compose/alerts.yml: copy the groups over"
    );
}

/// The custom resources have no schema offline, so their references are checked here:
/// the ServiceMonitor selects the headless Service (every pod, ready or not), scrapes
/// its API port by name, and trusts the CA of the Secret the pods serve TLS from.
#[test]
fn the_service_monitor_scrapes_every_pod_over_tls() {
    let base = root().join("deploy/kubernetes/base");
    let monitor = yaml(&base.join("servicemonitor.yaml"));
    let services = std::fs::read_to_string(base.join("services.yaml")).unwrap();
    let headless = serde_yaml::Deserializer::from_str(&services)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|svc| svc["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &headless["metadata"]["labels"][label], value,
            "the ServiceMonitor selects {label:?}={value:?}, which the headless Service lacks"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    let port = endpoint["port"].as_str().unwrap();
    assert!(
        headless["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the headless Service has no port named {port}"
    );
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["path"], "/metrics");
    let manifest = Manifest::load();
    let tls_secret = manifest
        .volumes
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .expect("the pods mount a TLS Secret");
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["name"], tls_secret);
}

/// The pod template's container and the StatefulSet around it.
struct Manifest {
    service_name: String,
    container: Value,
    volumes: Value,
}

impl Manifest {
    fn load() -> Manifest {
        let set = yaml(&root().join("deploy/kubernetes/base/statefulset.yaml"));
        assert_eq!(set["kind"], "StatefulSet");
        let spec = &set["spec"]["template"]["spec"];
        Manifest {
            service_name: set["spec"]["serviceName"].as_str().unwrap().to_string(),
            container: spec["containers"][0].clone(),
            volumes: spec["volumes"].clone(),
        }
    }

    /// The script the container runs, from this checkout: the command names it under
    /// the mount of the ConfigMap the kustomization makes from `entrypoint.sh`.
    fn entrypoint(&self) -> (String, PathBuf) {
        let command: Vec<&str> = self.container["command"]
            .as_sequence()
            .expect("the container has a command")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let [shell, script] = command[..] else {
            panic!("expected [shell, script], got {command:?}")
        };
        let mount = self.mount_of_volume_from_config_map("kvstore-entrypoint");
        assert_eq!(
            Path::new(script),
            Path::new(&mount).join("entrypoint.sh"),
            "the command runs the ConfigMap's entrypoint.sh"
        );
        (
            shell.to_string(),
            root().join("deploy/kubernetes/base/entrypoint.sh"),
        )
    }

    fn mount_of_volume_from_config_map(&self, config_map: &str) -> String {
        let volume = self
            .volumes
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"] == config_map)
            .unwrap_or_else(|| panic!("no volume from ConfigMap {config_map}"));
        self.container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .and_then(|m| m["mountPath"].as_str())
            .expect("the ConfigMap volume is mounted")
            .to_string()
    }

    /// The environment of pod `ordinal`, as the kubelet would build it from the
    /// manifest: literal values (with `$(VAR)` references to earlier variables
    /// expanded), the downward API, and `secrets` for the secret keys. Then
    /// `overrides`, which must all name variables the manifest sets.
    fn env(
        &self,
        ordinal: usize,
        secrets: &BTreeMap<&str, String>,
        overrides: &BTreeMap<&str, String>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for var in self.container["env"].as_sequence().expect("env") {
            let name = var["name"].as_str().unwrap().to_string();
            let value = if let Some(value) = var["value"].as_str() {
                expand(value, &env)
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => format!("kvstore-{ordinal}"),
                    "metadata.namespace" => NAMESPACE.to_string(),
                    other => panic!("{name}: no stand-in for the field {other}"),
                }
            } else if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
                secrets
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: no test value for the secret key {key}"))
                    .clone()
            } else {
                panic!("{name}: a value the test cannot make: {var:?}")
            };
            env.push((name, value));
        }
        for (name, value) in overrides {
            let slot = env
                .iter_mut()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("the manifest no longer sets {name}"));
            slot.1 = value.clone();
        }
        env
    }
}

/// `$(VAR)` references to variables defined before, as the kubelet expands them.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (name, val) in env {
        out = out.replace(&format!("$({name})"), val);
    }
    out
}

/// A CA and a certificate for every pod address, as the `kvstore-tls` Secret holds them
/// (`ca.crt`, `tls.crt`, `tls.key`).
fn make_certificates(dir: &Path, ordinals: usize) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kvstore test CA",
    ]);
    let sans: Vec<String> = (0..ordinals).map(|i| format!("IP:127.0.0.1{i}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:kvstore,{}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        ),
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=kvstore",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// The StatefulSet's pods as processes.
struct StatefulSet {
    manifest: Manifest,
    dir: tempfile::TempDir,
    pods: BTreeMap<usize, Process>,
    client: reqwest::Client,
}

impl StatefulSet {
    fn new() -> StatefulSet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        make_certificates(&dir.path().join("tls"), 6);
        let ca = std::fs::read(dir.path().join("tls/ca.crt")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        StatefulSet {
            manifest: Manifest::load(),
            dir,
            pods: BTreeMap::new(),
            client,
        }
    }

    fn api(ordinal: usize) -> String {
        format!("https://127.0.0.1{ordinal}:8080")
    }

    /// The pod's volume.
    fn volume(&self, ordinal: usize) -> PathBuf {
        self.dir.path().join(format!("data-kvstore-{ordinal}"))
    }

    /// The node id the pod keeps in its volume.
    fn node_id(&self, ordinal: usize) -> u64 {
        std::fs::read_to_string(self.volume(ordinal).join("node-id"))
            .expect("the pod wrote its node id")
            .trim()
            .parse()
            .unwrap()
    }

    /// Creates pod `ordinal` (its container's process).
    fn start(&mut self, ordinal: usize) {
        let tls = self.dir.path().join("tls");
        let secrets = BTreeMap::from([
            ("cluster-secret", SECRET.to_string()),
            ("auth-tokens", format!("{ADMIN}:admin,{READER}:read")),
        ]);
        let ip = format!("127.0.0.1{ordinal}");
        let overrides = BTreeMap::from([
            (
                "KV_API_URL_TEMPLATE",
                "https://127.0.0.1{ordinal}:8080".to_string(),
            ),
            (
                "KV_RAFT_URL_TEMPLATE",
                "https://127.0.0.1{ordinal}:9001".to_string(),
            ),
            ("KV_CLIENT_URL", Self::api(0)),
            ("KV_SERVER_HOST", ip.clone()),
            ("KV_CLUSTER_RAFT_HOST", ip),
            (
                "KV_STORAGE_DATA_DIR",
                self.volume(ordinal).display().to_string(),
            ),
            (
                "KV_TLS_CERT_FILE",
                tls.join("tls.crt").display().to_string(),
            ),
            ("KV_TLS_KEY_FILE", tls.join("tls.key").display().to_string()),
            ("KV_TLS_CA_FILE", tls.join("ca.crt").display().to_string()),
        ]);
        let env = self.manifest.env(ordinal, &secrets, &overrides);
        let (shell, script) = self.manifest.entrypoint();
        let bin_dir = kvstore_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = clean_command(shell);
        command.arg(script).envs(env).env("PATH", path);
        let pod = Process::spawn(&format!("kvstore-{ordinal}"), command, self.dir.path());
        self.pods.insert(ordinal, pod);
    }

    /// Waits until pod `ordinal` passes its readiness probe (`/ready`), as the
    /// StatefulSet controller does before it creates the next pod.
    async fn wait_ready(&mut self, ordinal: usize) {
        let url = format!("{}/ready", Self::api(ordinal));
        let client = self.client.clone();
        let pod = self.pods.get_mut(&ordinal).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = pod.exited() {
                panic!("kvstore-{ordinal} exited ({status}):\n{}", pod.tail());
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kvstore-{ordinal} is not ready after 60 s:\n{}",
                pod.tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for pod `ordinal` to exit by itself: its status and last lines.
    async fn wait_exit(&mut self, ordinal: usize) -> (std::process::ExitStatus, String) {
        let mut pod = self.pods.remove(&ordinal).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = pod.exited() {
                return (status, pod.tail());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kvstore-{ordinal} still runs after 60 s:\n{}",
                pod.tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to the pod's PID 1, as the kubelet sends it; it must exit 0 in time.
    fn stop(&mut self, ordinal: usize) {
        let mut pod = self.pods.remove(&ordinal).unwrap();
        let status = pod.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "kvstore-{ordinal} did not stop cleanly on SIGTERM ({status:?}):\n{}",
            pod.tail()
        );
    }

    fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(ADMIN).header("x-kvstore-secret", SECRET)
    }

    /// `GET /cluster/members` at pod `ordinal`: (id, role, api_addr) sorted by id.
    async fn members(&self, ordinal: usize) -> Vec<(u64, String, String)> {
        let body: Json = self
            .admin(
                self.client
                    .get(format!("{}/cluster/members", Self::api(ordinal))),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut members: Vec<(u64, String, String)> = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap(),
                    m["role"].as_str().unwrap().to_string(),
                    m["api_addr"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        members.sort();
        members
    }

    /// The voters are exactly the pods `ordinals`, with their ids and addresses.
    async fn assert_voters(&self, ask: usize, ordinals: &[usize]) {
        let mut expected: Vec<(u64, String, String)> = ordinals
            .iter()
            .map(|o| (self.node_id(*o), "voter".to_string(), Self::api(*o)))
            .collect();
        expected.sort();
        let members = eventually(Duration::from_secs(20), "the expected voters", || async {
            let members = self.members(ask).await;
            (members == expected).then_some(members)
        })
        .await;
        assert_eq!(members, expected);
    }

    /// `DELETE /cluster/members/{id}` through pod `ordinal`, again after a 503 (another
    /// membership change still committing, or an election), as an operator would.
    async fn remove_member(&self, ordinal: usize, id: u64) {
        let url = format!("{}/cluster/members/{id}", Self::api(ordinal));
        eventually(
            Duration::from_secs(20),
            &format!("DELETE {url}"),
            || async {
                let resp = self.admin(self.client.delete(&url)).send().await.ok()?;
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                assert!(
                    status == 200 || status == 503,
                    "DELETE {url}: {status} {body}"
                );
                (status == 200).then_some(())
            },
        )
        .await;
    }

    async fn put(&self, ordinal: usize, key: &str, value: &str) {
        let resp = self
            .admin(self.client.put(format!("{}/kv/{key}", Self::api(ordinal))))
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "PUT {key} on kvstore-{ordinal}");
    }

    async fn get(&self, ordinal: usize, key: &str) -> String {
        let body: Json = self
            .client
            .get(format!("{}/kv/{key}", Self::api(ordinal)))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["value"].as_str().unwrap_or_default().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_started_in_statefulset_order_form_a_cluster_and_scale_3_5_3() {
    let mut set = StatefulSet::new();
    assert_eq!(set.manifest.service_name, "kvstore-peers");

    // Creation in ordinal order, each pod once the one before is ready.
    for ordinal in 0..3 {
        set.start(ordinal);
        set.wait_ready(ordinal).await;
    }
    set.assert_voters(2, &[0, 1, 2]).await;
    set.put(2, "k8s", "formed").await;
    assert_eq!(set.get(0, "k8s").await, "formed");

    // Scale up to five (`kubectl scale statefulset kvstore --replicas=5`).
    for ordinal in 3..5 {
        set.start(ordinal);
        set.wait_ready(ordinal).await;
    }
    set.assert_voters(0, &[0, 1, 2, 3, 4]).await;
    assert_eq!(set.get(4, "k8s").await, "formed");

    // Scale down to three, as the README says: remove the members of the pods that go,
    // highest ordinal first, then scale, then delete their volumes.
    let removed: Vec<u64> = [4, 3].iter().map(|o| set.node_id(*o)).collect();
    for id in &removed {
        set.remove_member(0, *id).await;
    }
    set.stop(4);
    set.stop(3);
    for ordinal in [3, 4] {
        std::fs::remove_dir_all(set.volume(ordinal)).unwrap();
    }
    set.assert_voters(1, &[0, 1, 2]).await;
    set.put(1, "k8s", "after scale-down").await;
    assert_eq!(set.get(2, "k8s").await, "after scale-down");

    // Up to four again: kvstore-3 comes back on a new volume, under a new id (its old
    // one is retired for good).
    set.start(3);
    set.wait_ready(3).await;
    assert!(
        !removed.contains(&set.node_id(3)),
        "kvstore-3 took a retired id"
    );
    set.assert_voters(3, &[0, 1, 2, 3]).await;

    // A restarted pod keeps its volume and its id, and is a voter again.
    let id = set.node_id(1);
    set.stop(1);
    set.start(1);
    set.wait_ready(1).await;
    assert_eq!(set.node_id(1), id);
    set.assert_voters(1, &[0, 1, 2, 3]).await;

    // kvstore-0 loses its volume. On a new volume the first pod asks before it
    // initialises anything: a cluster answers, so it joins under a new id, which it
    // cannot while its old id holds its address; the pod exits, saying so. Once the old
    // id is removed, the next start joins.
    let old = set.node_id(0);
    set.stop(0);
    std::fs::remove_dir_all(set.volume(0)).unwrap();
    set.start(0);
    let (status, log) = set.wait_exit(0).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("a cluster already runs"), "{log}");
    assert!(
        log.contains(&format!("node {old} still holds this node's address")),
        "{log}"
    );
    set.remove_member(1, old).await;
    set.start(0);
    set.wait_ready(0).await;
    assert_ne!(set.node_id(0), old);
    set.assert_voters(1, &[0, 1, 2, 3]).await;
    assert_eq!(set.get(0, "k8s").await, "after scale-down");

    // Every pod stopped, then all created at once (podManagementPolicy: Parallel):
    // they find each other and elect a leader; no pod initialises a second cluster.
    for ordinal in [3, 2, 1, 0] {
        set.stop(ordinal);
    }
    for ordinal in 0..4 {
        set.start(ordinal);
    }
    for ordinal in 0..4 {
        set.wait_ready(ordinal).await;
    }
    set.assert_voters(0, &[0, 1, 2, 3]).await;
    assert_eq!(set.get(3, "k8s").await, "after scale-down");
}
