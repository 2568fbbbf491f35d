//! Traces across nodes: three in-process nodes export their spans to an in-memory
//! OpenTelemetry exporter; a write sent to a follower must be one trace with spans
//! from the follower and the leader, parents and children linked.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{eventually, free_port, get_json, put_json};
use kvstore::config::{Member, Settings};
use kvstore::startup::Application;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_follower_is_one_trace_across_both_nodes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    kvstore::telemetry::trace::install_propagator();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(Targets::new().with_target("kvstore", Level::INFO));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the only subscriber in this test binary");

    // Three nodes in this process, each told the others' addresses up front.
    let ports: BTreeMap<u64, (u16, u16)> = (1..=3)
        .map(|id| (id, (free_port("127.0.0.1"), free_port("127.0.0.1"))))
        .collect();
    let members: Vec<Member> = ports
        .iter()
        .map(|(id, (api, raft))| Member {
            id: *id,
            api_addr: format!("http://127.0.0.1:{api}"),
            raft_addr: format!("http://127.0.0.1:{raft}"),
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut stops = Vec::new();
    for (i, (id, (api, raft))) in ports.iter().enumerate() {
        let mut s = Settings::load_from(None, |_| None).unwrap();
        s.server.host = "127.0.0.1".into();
        s.server.port = *api;
        s.cluster.raft_host = "127.0.0.1".into();
        s.cluster.raft_port = *raft;
        s.cluster.initial_members = members.clone();
        s.storage.data_dir = dirs[i].path().to_owned();
        s.raft.node_id = *id;
        s.raft.heartbeat_timeout = Duration::from_millis(50);
        s.raft.election_timeout = Duration::from_millis(500);
        let app = Application::build(&s).await.expect("build node");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        stops.push(tx);
    }
    let client = reqwest::Client::new();
    let url = |id: u64, path: &str| format!("http://127.0.0.1:{}{path}", ports[&id].0);
    let leader = eventually(Duration::from_secs(10), "a leader", || async {
        let (code, body) = get_json(&client, &url(1, "/status")).await?;
        (code == 200).then_some(())?;
        let leader = body["leader_id"].as_u64()?;
        let (code, _) = get_json(&client, &url(leader, "/ready")).await?;
        (code == 200).then_some(leader)
    })
    .await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    eventually(
        Duration::from_secs(10),
        "the follower to know the leader",
        || async {
            let (code, _) = get_json(&client, &url(follower, "/ready")).await?;
            (code == 200).then_some(())
        },
    )
    .await;

    let (code, _) = put_json(&client, &url(follower, "/kv/traced"), "yes")
        .await
        .unwrap();
    assert_eq!(code, 201);

    // The follower's request span is the root; find its trace.
    let spans = eventually(
        Duration::from_secs(10),
        "the spans of the write",
        || async {
            let _ = provider.force_flush();
            let spans = exporter.get_finished_spans().ok()?;
            let root = spans.iter().find(|s| {
                s.name == "PUT put_key"
                    && attr(s, "node.id").as_deref() == Some(&follower.to_string())
            })?;
            let trace_id = root.span_context.trace_id();
            let in_trace: Vec<SpanData> = spans
                .iter()
                .filter(|s| s.span_context.trace_id() == trace_id)
                .cloned()
                .collect();
            // Wait until the apply on the leader has been exported too.
            in_trace
                .iter()
                .any(|s| s.name == "storage.apply")
                .then_some(in_trace)
        },
    )
    .await;
    let trace_id: TraceId = spans[0].span_context.trace_id();
    let find = |name: &str, node: Option<u64>| {
        spans
            .iter()
            .find(|s| {
                s.name == name && node.is_none_or(|n| attr(s, "node.id") == Some(n.to_string()))
            })
            .unwrap_or_else(|| {
                let names: Vec<_> = spans
                    .iter()
                    .map(|s| (s.name.to_string(), attr(s, "node.id")))
                    .collect();
                panic!("no `{name}` span from node {node:?} in trace {trace_id}: {names:?}")
            })
    };
    let root = find("PUT put_key", Some(follower));
    let put = find("kv.put", Some(follower));
    let forward = find("raft.forward", None);
    let rpc = find("raft.forwarded_write", Some(leader));
    let propose = find("raft.propose", Some(leader));
    let append = find("storage.append", None);
    let apply = find("storage.apply", None);

    // Parents and children are linked across the process boundary.
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the follower's request is the root"
    );
    assert_eq!(put.parent_span_id, root.span_context.span_id());
    assert_eq!(forward.parent_span_id, put.span_context.span_id());
    assert_eq!(
        rpc.parent_span_id,
        forward.span_context.span_id(),
        "traceparent crossed to the leader"
    );
    assert_eq!(
        propose.parent_span_id,
        rpc.span_context.span_id(),
        "the proposal is the leader's work for the forwarded request"
    );
    // Under load a proposal can be retried (a leader change during the write): the
    // entry's storage spans belong to the proposal that reached the log.
    let proposals: Vec<SpanId> = spans
        .iter()
        .filter(|s| s.name == "raft.propose")
        .map(|s| s.span_context.span_id())
        .collect();
    assert!(
        proposals.contains(&append.parent_span_id),
        "storage append is in the trace, under a proposal"
    );
    assert!(
        proposals.contains(&apply.parent_span_id),
        "storage apply is in the trace, under a proposal"
    );
    assert_eq!(
        attr(root, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(attr(root, "http.route").as_deref(), Some("put_key"));

    for stop in stops {
        let _ = stop.send(());
    }
}
