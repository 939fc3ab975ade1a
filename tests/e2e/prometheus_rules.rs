//! The mesh's Prometheus rules (examples/prometheus): promtool checks them and runs their unit
//! tests (`rules_test.yaml`: the mTLS percentage, the P99 latency and 5xx-rate alerts).

use crate::support::{TempDir, have_tool};
use std::path::PathBuf;
use std::process::Command;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn mesh_rules_check_and_pass_their_unit_tests() {
    if !have_tool("promtool") {
        return;
    }
    let (ok, text) = promtool(&["check", "rules", "rules.yaml"]);
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "rules_test.yaml"]);
    assert!(ok, "{text}");
}

/// The unit tests can fail: a rule file whose alert threshold is off makes them fail.
#[test]
fn a_wrong_threshold_fails_the_unit_tests() {
    if !have_tool("promtool") {
        return;
    }
    let dir = TempDir::new("promtool");
    let rules = std::fs::read_to_string(rules_dir().join("rules.yaml")).expect("rules");
    let wrong = rules.replace(
        "istio:mesh:mtls_traffic_percentage < 95",
        "istio:mesh:mtls_traffic_percentage < 85",
    );
    assert_ne!(rules, wrong);
    std::fs::write(dir.path("rules.yaml"), wrong).expect("write");
    std::fs::copy(
        rules_dir().join("rules_test.yaml"),
        dir.path("rules_test.yaml"),
    )
    .expect("copy");
    let out = Command::new("promtool")
        .args(["test", "rules", "rules_test.yaml"])
        .current_dir(&dir.0)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("IstioMtlsTrafficLow"), "{text}");
}
