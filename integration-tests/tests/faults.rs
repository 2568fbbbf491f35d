//! Fault scenarios against a three-node kvstore cluster in containers. Each runs a
//! workload for 20-60 s around one kind of fault, checks the whole history for
//! linearizability, requires a floor of successful operations, and writes a report to
//! `target/integration-tests/<scenario>/report.txt`.
//!
//! The scenarios share the machine's two cores, so they run one at a time.

use std::time::Duration;

use integration_tests::cluster::Backend;
use integration_tests::{workload, Floor, Run};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WARM_UP: Duration = Duration::from_secs(5);
const FAULT: Duration = Duration::from_secs(10);
const RECOVERY: Duration = Duration::from_secs(8);
const FLOOR: Floor = Floor {
    ok: 1000,
    ok_after_heal: 100,
};
const READY: Duration = Duration::from_secs(30);

async fn leader_killed(name: &str, backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start(name, backend).await.expect("start") else {
        return;
    };
    run.run_for(WARM_UP).await;
    let leader = run.cluster.leader(READY).await.expect("leader");
    run.note(format!("SIGKILL the leader, node {}", leader + 1));
    run.cluster.kill(leader).await.expect("kill");
    run.run_for(FAULT).await;
    run.note(format!("starting node {} again", leader + 1));
    run.cluster.restart(leader).await.expect("restart");
    run.healed(format!("node {} is ready again", leader + 1));
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_redb() {
    leader_killed("leader-killed-redb", Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_postgres() {
    leader_killed("leader-killed-postgres", Backend::Postgres).await;
}

/// Disconnects the leader (or a follower) from the peers network for a while.
async fn cut_off(name: &str, backend: Backend, the_leader: bool) {
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start(name, backend).await.expect("start") else {
        return;
    };
    run.run_for(WARM_UP).await;
    let leader = run.cluster.leader(READY).await.expect("leader");
    let (node, role) = match the_leader {
        true => (leader, "the leader"),
        false => (run.cluster.other_than(leader), "a follower"),
    };
    run.note(format!(
        "cutting {role}, node {}, off from its peers",
        node + 1
    ));
    run.cluster.disconnect(node).await.expect("disconnect");
    run.run_for(FAULT).await;
    run.cluster.connect(node).await.expect("connect");
    run.note(format!("node {} reconnected", node + 1));
    run.cluster.wait_ready(READY).await.expect("ready");
    run.healed("every node is ready");
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_cut_off() {
    cut_off("follower-cut-off", Backend::Redb, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_off() {
    cut_off("leader-cut-off", Backend::Postgres, true).await;
}

/// A follower's link to its peers flaps: cut off for several election timeouts, back
/// for a few seconds, three times. Without Pre-Vote each return deposes the leader
/// (the follower's term rose meanwhile); with it the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_flapping() {
    const CUTS: u32 = 3;
    const OFF: Duration = Duration::from_secs(3);
    const ON: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start("follower-flapping", Backend::Redb)
        .await
        .expect("start")
    else {
        return;
    };
    run.run_for(WARM_UP).await;
    let leader = run.cluster.leader(READY).await.expect("leader");
    let node = run.cluster.other_than(leader);
    for cut in 1..=CUTS {
        run.note(format!(
            "cut {cut} of {CUTS}: follower node {} off from its peers",
            node + 1
        ));
        run.cluster.disconnect(node).await.expect("disconnect");
        run.run_for(OFF).await;
        run.cluster.connect(node).await.expect("connect");
        run.note(format!("node {} reconnected", node + 1));
        run.run_for(ON).await;
    }
    run.cluster.wait_ready(READY).await.expect("ready");
    run.healed("every node is ready");
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_paused() {
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start("leader-paused", Backend::Redb)
        .await
        .expect("start")
    else {
        return;
    };
    run.run_for(WARM_UP).await;
    let leader = run.cluster.leader(READY).await.expect("leader");
    run.note(format!("pausing the leader, node {}", leader + 1));
    run.cluster.pause(leader).await.expect("pause");
    run.run_for(FAULT).await;
    run.cluster.unpause(leader).await.expect("unpause");
    run.note(format!("node {} unpaused", leader + 1));
    run.cluster.wait_ready(READY).await.expect("ready");
    run.healed("every node is ready");
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted() {
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start("postgres-restarted", Backend::Postgres)
        .await
        .expect("start")
    else {
        return;
    };
    run.run_for(WARM_UP).await;
    run.note("stopping PostgreSQL for 5 s");
    run.cluster
        .restart_postgres(Duration::from_secs(5))
        .await
        .expect("restart PostgreSQL");
    run.note("PostgreSQL started again");
    run.cluster.wait_ready(READY).await.expect("ready");
    run.healed("every node is ready");
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart() {
    let _serial = SERIAL.lock().await;
    let Some(mut run) = Run::start("rolling-restart", Backend::Redb)
        .await
        .expect("start")
    else {
        return;
    };
    run.run_for(WARM_UP).await;
    for node in 0..3 {
        run.note(format!("SIGTERM node {}", node + 1));
        run.cluster.stop(node).await.expect("stop");
        run.run_for(Duration::from_secs(2)).await;
        run.note(format!("starting node {} again", node + 1));
        run.cluster.restart(node).await.expect("restart");
        run.note(format!("node {} is ready", node + 1));
        run.run_for(Duration::from_secs(3)).await;
    }
    run.cluster.wait_ready(READY).await.expect("ready");
    run.healed("every node restarted and ready");
    run.run_for(RECOVERY).await;
    run.finish(FLOOR).await;
}

/// The negative control: the same pipeline, with reads that are allowed to be stale
/// (`consistency=stale`), while a follower is cut off and keeps answering from its
/// frozen copy. The checker must find the stale reads; if it did not, the scenarios
/// above would prove nothing. (It usually finds some before the cut too: a follower
/// applies a write a moment after the leader acknowledges it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_from_a_cut_off_follower_are_caught() {
    let _serial = SERIAL.lock().await;
    let config = workload::Config {
        stale_reads: true,
        ..workload::Config::default()
    };
    let Some(mut run) = Run::start_with("stale-reads-caught", Backend::Redb, config)
        .await
        .expect("start")
    else {
        return;
    };
    run.run_for(Duration::from_secs(2)).await;
    let leader = run.cluster.leader(READY).await.expect("leader");
    let follower = run.cluster.other_than(leader);
    run.note(format!(
        "cutting follower node {} off from its peers",
        follower + 1
    ));
    run.cluster.disconnect(follower).await.expect("disconnect");
    run.run_for(FAULT).await;
    let report = run.finish_report().await;
    assert!(
        !report.linearizable(),
        "stale reads from a cut-off follower went unnoticed; see {}",
        report.dir.display()
    );
}
