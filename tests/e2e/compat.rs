//! Keeps docs/compat.md honest: every shared Envoy configuration is validated with the real
//! binary and its status must match the table.

use crate::support::*;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `loads`, or the error (first line, without the file name suffix). Run where `certs/` holds
/// generated certificates, as Envoy's examples expect.
fn status_of(file: &std::path::Path, cwd: &std::path::Path) -> (String, String) {
    let out = std::process::Command::new(BIN)
        .args(["--mode", "validate", "-c", file.to_str().unwrap()])
        .current_dir(cwd)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if code == 0 {
        return ("loads".into(), String::new());
    }
    let line = err.lines().next().unwrap_or("").to_string();
    let detail = line
        .split_once("': ")
        .map(|(_, d)| d.to_string())
        .unwrap_or(line);
    let detail = match detail.rfind(" (in ") {
        Some(i) => detail[..i].to_string(),
        None => detail,
    };
    ("refused".into(), detail)
}

#[test]
fn compat_table_matches_validate_mode() {
    let data = repo().join("tests/data/envoy-configs");
    let mut files = Vec::new();
    for sub in ["envoy-repo", "examples"] {
        for e in std::fs::read_dir(data.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert_eq!(
        files.len(),
        26,
        "the shared set has 26 Envoy configurations"
    );
    let doc = std::fs::read_to_string(repo().join("docs/compat.md")).unwrap();
    let rows: std::collections::HashMap<String, (String, String)> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let detail = cells
                .get(2)
                .unwrap_or(&"")
                .trim_matches('`')
                .replace("\\|", "|");
            (
                cells[0].trim_matches('`').to_string(),
                (cells[1].to_string(), detail),
            )
        })
        .collect();
    let cwd = TempDir::new("compat");
    write_example_certs(&cwd.0);
    let mut table = String::new();
    let mut mismatches = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&data).unwrap().display().to_string();
        let (status, detail) = status_of(f, &cwd.0);
        table.push_str(&format!(
            "| `{rel}` | {status} | {} | |\n",
            if detail.is_empty() {
                String::new()
            } else {
                format!("`{}`", detail.replace('|', "\\|"))
            }
        ));
        match rows.get(&rel) {
            Some((s, d)) if *s == status && *d == detail => {}
            other => mismatches.push(format!(
                "{rel}: table says {other:?}, remora says ({status}, {detail})"
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "docs/compat.md is out of date:\n{}\n\nCurrent status rows:\n{table}",
        mismatches.join("\n")
    );
}

/// Envoy's own demo bootstrap, run for real: listener_0 proxies to listener_1, whose empty
/// route table answers 404 and whose `local_reply_config` turns GET replies into an HTML page.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_demo_config_runs() {
    let data = repo().join("tests/data/envoy-configs/envoy-repo/configs_envoy-demo.yaml");
    let p0 = closed_port().port();
    let p1 = closed_port().port();
    let yaml = with_typed_router(&std::fs::read_to_string(data).unwrap())
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 10000", &format!("port_value: {p0}"))
        .replace("port_value: 10001", &format!("port_value: {p1}"));
    let r = Remora::start(&yaml).await;
    let resp = get(r.addr("listener_0"), "example.com", "/").await;
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
    assert!(
        resp.text().contains("<h1>Welcome to Envoy</h1>"),
        "{}",
        resp.text()
    );
    // Not a GET: no mapper, the plain 404.
    let post = request(
        r.addr("listener_0"),
        false,
        http::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "x")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 404);
    assert!(post.body.is_empty());
    r.wait_stat("cluster.loopback.upstream_rq_404", 2).await;
}
