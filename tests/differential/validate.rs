//! `--mode validate` verdicts on the shared Envoy configurations and Istio's bootstraps: both
//! proxies accept, or both refuse. remora may refuse what it does not implement (a known
//! difference, with its reason); it must never accept what Envoy refuses.

use crate::CaseResult;
use crate::support::{BIN, TempDir, write_example_certs};
use std::path::{Path, PathBuf};

/// The marker of a difference `known.txt` cannot excuse.
pub const NEVER: &str = "remora accepts a configuration Envoy refuses";

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        "envoy-configs/envoy-repo",
        "envoy-configs/examples",
        "istio-bootstrap",
    ] {
        for e in std::fs::read_dir(data().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml" | "json")
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Exit status and the error's first line.
fn verdict(bin: &Path, file: &Path, cwd: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(file)
        .current_dir(cwd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("error initializing configuration") || l.contains("rror"))
        .unwrap_or("")
        .to_string();
    (out.status.success(), line)
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cwd = TempDir::new("diff-validate");
    write_example_certs(&cwd.0);
    let mut results = Vec::new();
    for f in files() {
        let rel = f.strip_prefix(data()).unwrap().display().to_string();
        let id = format!("validate/{rel}");
        if filter.is_some_and(|x| !id.contains(x)) {
            continue;
        }
        let (e_ok, e_err) = verdict(envoy, &f, &cwd.0);
        let (r_ok, r_err) = verdict(Path::new(BIN), &f, &cwd.0);
        let diff = match (e_ok, r_ok) {
            (true, true) | (false, false) => None,
            (true, false) => Some(format!("Envoy accepts, remora refuses: {r_err}")),
            (false, true) => Some(format!("{NEVER}: {e_err}")),
        };
        results.push(CaseResult {
            group: "validate",
            id,
            diff,
        });
    }
    results
}
