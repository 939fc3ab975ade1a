//! Envoy's command line.

use crate::support::*;

#[test]
fn version_and_unknown_flags() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("remora version: "), "{out}");
    let (code, _, err) = run(&["--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );
    let (code, _, err) = run(&["--mode", "validate"]);
    assert_ne!(code, 0);
    assert!(err.contains("no configuration"), "{err}");
}

#[test]
fn config_yaml_merges_over_file() {
    let dir = TempDir::new("cli");
    let p = dir.path("b.yaml");
    std::fs::write(
        &p,
        "static_resources:\n  clusters:\n  - {name: a, type: STATIC}\n",
    )
    .unwrap();
    // The overlay appends a cluster that the file's (absent) routes do not need, and sets the node.
    let (code, out, err) = run(&[
        "--mode",
        "validate",
        "-c",
        p.to_str().unwrap(),
        "--config-yaml",
        "node: {id: n1}\nstatic_resources: {clusters: [{name: b}]}",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK"), "{out}");
    // A bad overlay is reported as such.
    let (code, _, err) = run(&[
        "--mode",
        "validate",
        "-c",
        p.to_str().unwrap(),
        "--config-yaml",
        "static_resources: {clusters: [{name: c, lb_policy: NOPE}]}",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--config-yaml"), "{err}");
}

#[test]
fn json_bootstrap_and_flags_are_accepted() {
    let dir = TempDir::new("cli");
    let p = dir.path("b.json");
    std::fs::write(&p, r#"{"staticResources": {"clusters": [{"name": "a", "connectTimeout": "0.25s", "type": "STATIC"}]}}"#).unwrap();
    let (code, out, err) = run(&[
        "--mode",
        "validate",
        "-c",
        p.to_str().unwrap(),
        "--concurrency",
        "3",
        "-l",
        "debug",
        "--component-log-level",
        "upstream:trace,http:warning",
        "--service-node",
        "n",
        "--service-cluster",
        "c",
        "--drain-time-s",
        "5",
        "--parent-shutdown-time-s",
        "10",
        "--disable-hot-restart",
        "--log-format",
        "[%Y] %v",
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_as_advertised() {
    let port = closed_port().port();
    let admin = closed_port().port();
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let hello = loop {
        if let Ok((200, _, body)) = raw_http(
            addr,
            "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "demo did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(hello, "hello from remora\n");
    let echo = get(addr, "demo", "/echo").await;
    assert_eq!(echo.status, 200);
    assert!(
        echo.text().starts_with("GET /echo HTTP/1.1"),
        "{}",
        echo.text()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `--mode validate` names every error of a configuration, one per line, and fails.
#[test]
fn validate_reports_every_error() {
    let dir = TempDir::new("cli");
    let p = dir.path("b.yaml");
    std::fs::write(
        &p,
        r#"
flags_path: /x
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    freebind: true
    filter_chains:
    - filters:
      - name: t
        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: a}
  clusters:
  - {name: a, connect_timeout: 0s}
  - {name: b, upstream_http_protocol_options: {auto_sni: true}, outlier_detection: {interval: 0s}}
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["--mode", "validate", "-c", p.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        format!(
            "error initializing configuration '{}': flags_path: is not supported",
            p.display()
        ),
        "static_resources.clusters[0].connect_timeout: must be greater than 0".to_string(),
        "static_resources.clusters[1].upstream_http_protocol_options: is not supported".to_string(),
        "static_resources.clusters[1].outlier_detection.interval: must be greater than 0"
            .to_string(),
        "static_resources.listeners[0].freebind: is not supported".to_string(),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty".to_string(),
    ];
    assert_eq!(lines, expected, "{err}");
}

/// `remora iptables` (the init container) with the injected pod's flags: the dry run is
/// istio-iptables' record. The IPv4 part is host-independent (IPv6 rules follow only when the
/// host's first address is IPv6), so the output starts with the golden's IPv4 part.
#[test]
fn iptables_dry_run_prints_istio_record() {
    let golden = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/istio-iptables/inbound-ports-wildcard.golden"
    ))
    .unwrap();
    let v4_part = golden.strip_suffix("iptables-save\n").unwrap();
    let (code, out, err) = run(&[
        "iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-b",
        "*",
        "--dry-run",
        "--log_output_level=default:info",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(v4_part), "{out}");
    assert!(
        err.contains("PROXY_UID=1337"),
        "the configuration is logged on stderr: {err}"
    );

    let (code, _, err) = run(&[
        "iptables",
        "-m",
        "MAGIC",
        "-x",
        "*",
        "--run-validation",
        "--dry-run",
    ]);
    assert_eq!(code, 1);
    for flag in [
        "--istio-inbound-interception-mode",
        "--istio-service-exclude-cidr",
        "--run-validation",
    ] {
        assert!(err.contains(flag), "{flag}: {err}");
    }
}
