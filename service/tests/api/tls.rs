//! TLS: the client API over HTTPS, a three-node cluster over mutual TLS, and a peer
//! whose certificate comes from another CA turned away. Certificates are made for each
//! test with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{eventually, free_port, get_json, put_ok};
use kvstore::config::{Member, Settings};
use kvstore::startup::Application;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem_path: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Ca {
            cert,
            key,
            pem_path,
        }
    }

    /// A certificate for 127.0.0.1, localhost and kv1.test (a name no resolver knows),
    /// good for serving and as a client; returns the paths of its PEM certificate and
    /// key.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let names = ["127.0.0.1", "localhost", "kv1.test"].map(String::from);
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn reqwest_root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).unwrap()
    }
}

fn identity(cert: &Path, key: &Path) -> reqwest::Identity {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}

/// Settings for an in-process node on loopback with TLS from `ca`.
fn settings(data_dir: &Path, ca: &Ca, cert: (PathBuf, PathBuf), mtls: bool) -> Settings {
    let mut s = Settings::load_from(None, |_| None).unwrap();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.cluster.raft_host = "127.0.0.1".into();
    s.cluster.raft_port = 0;
    s.storage.data_dir = data_dir.to_owned();
    s.raft.heartbeat_timeout = Duration::from_millis(50);
    s.raft.election_timeout = Duration::from_millis(300);
    s.tls.cert_file = Some(cert.0);
    s.tls.key_file = Some(cert.1);
    s.tls.ca_file = Some(ca.pem_path.clone());
    s.tls.peer_mtls = mtls;
    s
}

async fn start(settings: &Settings) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let app = Application::build(settings).await.expect("build");
    let api = format!("https://{}", app.local_addr());
    let raft = format!("https://{}", app.raft_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (api, raft, stop)
}

fn client(ca: &Ca) -> reqwest::Client {
    kvstore::tls::install_provider();
    reqwest::Client::builder()
        .add_root_certificate(ca.reqwest_root())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, api: &str) {
    eventually(Duration::from_secs(20), "the node to be ready", || async {
        match get_json(client, &format!("{api}/ready")).await {
            Some((200, _)) => Some(()),
            _ => None,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let node_cert = ca.issue(dir.path(), "node1");
    let (api, _, stop) = start(&settings(
        &dir.path().join("data"),
        &ca,
        node_cert.clone(),
        false,
    ))
    .await;
    let https = client(&ca);
    wait_ready(&https, &api).await;

    let body = put_ok(&https, &format!("{api}/kv/greeting"), "over tls").await;
    assert_eq!(body["value"], "over tls");
    let (status, body) = get_json(&https, &format!("{api}/kv/greeting"))
        .await
        .unwrap();
    assert_eq!((status, body["value"].as_str()), (200, Some("over tls")));

    // Plain HTTP to the same port gets no HTTP answer.
    let plain = api.replace("https://", "http://");
    let err = reqwest::Client::new()
        .get(format!("{plain}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(err.is_err(), "plain HTTP was answered: {err:?}");
    // A client that does not trust the node's CA refuses it.
    let other = Ca::new(dir.path(), "other-ca");
    let untrusting = client(&other);
    let err = untrusting.get(format!("{api}/health")).send().await;
    assert!(
        err.is_err(),
        "a certificate from an unknown CA was accepted"
    );

    // `kvstore health` checks an HTTPS node when it trusts the node's CA, given with
    // --ca-file or read from the node's settings; and with no --url it finds the node
    // from those settings, as the image's health check does: on loopback, checking the
    // certificate against the advertised host name.
    let health = format!("{api}/health");
    let port = api.rsplit(':').next().unwrap().to_string();
    let ca_pem = ca.pem_path.to_str().unwrap().to_string();
    let (cert_file, key_file) = (
        node_cert.0.to_str().unwrap().to_string(),
        node_cert.1.to_str().unwrap().to_string(),
    );
    let advertised = format!("https://kv1.test:{port}");
    let node_env = [
        ("KV_CLUSTER_ADVERTISE_API", advertised.as_str()),
        ("KV_SERVER_PORT", port.as_str()),
        ("KV_TLS_CERT_FILE", cert_file.as_str()),
        ("KV_TLS_KEY_FILE", key_file.as_str()),
        ("KV_TLS_CA_FILE", ca_pem.as_str()),
    ];
    let probe = |args: Vec<&str>, env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(crate::support::BIN);
        cmd.env_clear()
            .arg("health")
            .args(args)
            .envs(env.iter().copied());
        async move {
            let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
                .await
                .expect("kvstore health did not exit within 20 s")
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let other_pem = other.pem_path.to_str().unwrap();
    let (ok, err) = probe(vec!["--url", &health, "--ca-file", &ca_pem], &[]).await;
    assert!(ok, "health with --ca-file failed: {err}");
    let (ok, err) = probe(vec![], &node_env).await;
    assert!(ok, "health from the node's own settings failed: {err}");
    let refused = |err: &str| err.contains("certificate") && err.contains("UnknownIssuer");
    let (ok, err) = probe(vec!["--url", &health, "--ca-file", other_pem], &[]).await;
    assert!(
        !ok && refused(&err),
        "health trusted a certificate from another CA: {err}"
    );
    let (ok, err) = probe(vec!["--ca-file", other_pem], &node_env).await;
    assert!(
        !ok && refused(&err),
        "--ca-file did not override the node's CA: {err}"
    );
    let (ok, err) = probe(vec!["--url", &health], &[]).await;
    assert!(
        !ok && refused(&err),
        "health trusted the node's certificate without its CA: {err}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (free_port("127.0.0.1"), free_port("127.0.0.1")))
        .collect();
    let members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, (api, raft))| Member {
            id: i as u64 + 1,
            api_addr: format!("https://127.0.0.1:{api}"),
            raft_addr: format!("https://127.0.0.1:{raft}"),
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, (api, raft)) in ports.iter().enumerate() {
        let cert = ca.issue(dir.path(), &format!("node{}", i + 1));
        let mut s = settings(&dir.path().join(format!("data{i}")), &ca, cert, true);
        s.server.port = *api;
        s.cluster.raft_port = *raft;
        s.raft.node_id = i as u64 + 1;
        s.cluster.initial_members = members.clone();
        nodes.push(start(&s).await);
    }
    let https = client(&ca);
    for (api, _, _) in &nodes {
        wait_ready(&https, api).await;
    }
    // Writes through every node (followers forward to the leader over mutual TLS),
    // then every node reads every key.
    for (i, (api, _, _)) in nodes.iter().enumerate() {
        put_ok(&https, &format!("{api}/kv/k{i}"), &format!("v{i}")).await;
    }
    for (api, _, _) in &nodes {
        for i in 0..nodes.len() {
            let (status, body) = get_json(&https, &format!("{api}/kv/k{i}")).await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["value"], format!("v{i}"));
        }
    }
    for (_, _, stop) in nodes {
        let _ = stop.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "node1");
    let (api, raft, stop) = start(&settings(&dir.path().join("data"), &ca, cert, true)).await;
    wait_ready(&client(&ca), &api).await;

    // The same request to the Raft listener from three would-be peers, all trusting
    // the node's CA: one with a certificate from that CA, one with a certificate from
    // another CA, one with none.
    let rogue_ca = Ca::new(dir.path(), "rogue-ca");
    let (good_cert, good_key) = ca.issue(dir.path(), "peer");
    let (rogue_cert, rogue_key) = rogue_ca.issue(dir.path(), "rogue");
    let peer = |id: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(ca.reqwest_root())
            .timeout(Duration::from_secs(5));
        if let Some(id) = id {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let url = format!("{raft}/raft/vote");
    let answered = peer(Some(identity(&good_cert, &good_key)))
        .post(&url)
        .body("{}")
        .send()
        .await;
    assert!(
        answered.is_ok(),
        "a peer with the right CA got no HTTP answer: {answered:?}"
    );
    let rogue = peer(Some(identity(&rogue_cert, &rogue_key)))
        .post(&url)
        .body("{}")
        .send()
        .await;
    assert!(
        rogue.is_err(),
        "a peer from another CA was answered: {rogue:?}"
    );
    let anonymous = peer(None).post(&url).body("{}").send().await;
    assert!(
        anonymous.is_err(),
        "a peer without a certificate was answered: {anonymous:?}"
    );
    // Clients of the API need no certificate.
    let (status, _) = get_json(&client(&ca), &format!("{api}/kv/none"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let _ = stop.send(());
}
