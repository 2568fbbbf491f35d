//! The alert rules of `compose/alerts.yml`: promtool accepts them and their unit tests
//! (`compose/alerts_test.yml`) pass; every alert has a test where it fires and one
//! where it stays quiet, a summary, a description and a runbook section in the README.
//!
//! Without `promtool` (Debian's `prometheus` package) the promtool part says it is
//! skipped, unless `KV_REQUIRE_PROMETHEUS` is set (CI sets it): then it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every alerting rule of a rules file (`groups: [{rules: [...]}]`), by name.
fn alerts(rules: &Value) -> BTreeMap<String, Value> {
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                let previous = alerts.insert(name.to_string(), rule.clone());
                assert!(previous.is_none(), "alert {name} is defined twice");
            }
        }
    }
    alerts
}

fn promtool(args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool").args(args).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("KV_REQUIRE_PROMETHEUS").is_none(),
                "KV_REQUIRE_PROMETHEUS is set but promtool cannot run: {e}"
            );
            eprintln!("SKIPPED: install Debian's `prometheus` package for promtool");
            return None;
        }
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {}: {report}",
        args.join(" ")
    );
    Some(report)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let compose = root().join("compose");
    let Some(_) = promtool(&[
        "check",
        "rules",
        compose.join("alerts.yml").to_str().unwrap(),
    ]) else {
        return;
    };
    // The dev stack's Prometheus config names the rules file, and promtool loads it.
    promtool(&[
        "check",
        "config",
        compose.join("prometheus.yml").to_str().unwrap(),
    ]);
    let report = promtool(&[
        "test",
        "rules",
        compose.join("alerts_test.yml").to_str().unwrap(),
    ])
    .expect("promtool ran a moment ago");
    assert!(report.contains("SUCCESS"), "{report}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet_and_has_a_runbook() {
    let rules = yaml(&root().join("compose/alerts.yml"));
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());

    let tests = yaml(&root().join("compose/alerts_test.yml"));
    let mut fires: BTreeMap<&str, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<&str, usize> = BTreeMap::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname");
            assert!(
                alerts.contains_key(name),
                "a test names unknown alert {name}"
            );
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            *(if expected > 0 { &mut fires } else { &mut quiet })
                .entry(name)
                .or_default() += 1;
        }
    }

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let runbook = readme
        .split_once("\n### Alerts\n")
        .map(|(_, rest)| rest.split("\n### ").next().unwrap_or(rest))
        .expect("the README has an `### Alerts` section");
    for (name, rule) in &alerts {
        assert!(
            fires.contains_key(name.as_str()),
            "no test where {name} fires"
        );
        assert!(
            quiet.contains_key(name.as_str()),
            "no test where {name} stays quiet"
        );
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name} has no {annotation}");
        }
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}: severity must be critical or warning"
        );
        assert!(
            runbook.contains(&format!("\n#### {name}\n")),
            "the README's Alerts section has no `#### {name}` runbook"
        );
    }
}
