//! TLS: downstream mTLS listeners with `match_typed_subject_alt_names` (URI exact, prefix,
//! suffix, regex, contains, DNS, `ignore_case`, several matchers) and several client
//! certificates (the right CA with matching and non-matching identities, RSA, expired, not yet
//! valid, another CA, none; TLS 1.2 and 1.3), plaintext to a TLS port, ALPN as the client sees
//! it, upstream TLS clusters verifying the upstream's SANs, `/certs`, and the `ssl.*` stats
//! after the same traffic. Certificates come from remora's development CA, written once to a
//! directory both bootstraps name.
//!
//! A connection case compares what the client saw (the handshake's version, cipher and ALPN,
//! or the alert that refused it; then the response and how the connection ended), the
//! request's access-log line (by the `x-case` header) and the connection's listener access-log
//! line (by the client's port: refused handshakes have no request).

use crate::CaseResult;
use crate::cases;
use crate::compare::{diff, observe};
use crate::oracle::{Pair, Side};
use crate::support::{TempDir, bootstrap, cluster, http_listener, serve_tcp, upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_certs::SpiffeId;
use remora_certs::ca::{DevCa, Issued, KeyAlgorithm, LeafRequest};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GW: &str = "spiffe://cluster.local/ns/autolytiq/sa/api-gateway";
const DEAL: &str = "spiffe://cluster.local/ns/autolytiq/sa/deal";
const OTHER: &str = "spiffe://cluster.local/ns/other/sa/x";
const UPPER: &str = "spiffe://cluster.local/ns/autolytiq/sa/API-Gateway";
const PROXY: &str = "spiffe://cluster.local/ns/diff/sa/proxy";
const UPSTREAM: &str = "spiffe://cluster.local/ns/diff/sa/upstream";

/// The request access log of every listener (the first field is the case, by `x-case`).
const REQUEST_LOG: &str = "[%REQ(X-CASE)%] %RESPONSE_CODE% %RESPONSE_FLAGS% \
%RESPONSE_CODE_DETAILS% %PROTOCOL% %UPSTREAM_CLUSTER% %DOWNSTREAM_PEER_URI_SAN% \
%DOWNSTREAM_PEER_DNS_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_TLS_VERSION% \
%DOWNSTREAM_TLS_CIPHER% %REQUESTED_SERVER_NAME% %UPSTREAM_TRANSPORT_FAILURE_REASON% \
%UPSTREAM_PEER_URI_SAN% %UPSTREAM_TLS_VERSION%";

/// The listener access log: one line per connection, by the client's port.
const CONNECTION_LOG: &str = "%DOWNSTREAM_REMOTE_PORT% %RESPONSE_FLAGS% \
%DOWNSTREAM_TRANSPORT_FAILURE_REASON% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TLS_VERSION% \
%REQUESTED_SERVER_NAME%";

/// The certificates of a run, as files under one directory.
struct Pki {
    ca: DevCa,
    dir: TempDir,
    clients: BTreeMap<&'static str, Option<Issued>>,
}

fn leaf(ca: &DevCa, uri: Option<&str>, dns: &[&str]) -> Issued {
    leaf_with(ca, uri, dns, |_| {})
}

fn leaf_with(
    ca: &DevCa,
    uri: Option<&str>,
    dns: &[&str],
    tweak: impl FnOnce(&mut LeafRequest),
) -> Issued {
    let mut req = match uri {
        Some(u) => LeafRequest::spiffe(SpiffeId::parse(u).unwrap(), Duration::from_secs(86400)),
        None => LeafRequest::new(Duration::from_secs(86400)),
    };
    req.dns_names = dns.iter().map(|d| d.to_string()).collect();
    tweak(&mut req);
    ca.issue(&req).unwrap()
}

impl Pki {
    fn new() -> Self {
        let ca = DevCa::generate_root("diff", KeyAlgorithm::EcdsaP256).unwrap();
        let foreign = DevCa::generate_root("foreign", KeyAlgorithm::EcdsaP256).unwrap();
        let dir = TempDir::new("diff-tls-pki");
        // The proxies' own certificates: the listeners' and the clusters'.
        leaf(&ca, Some(PROXY), &["localhost"])
            .write_istio_layout(&dir.path("proxy"))
            .unwrap();
        leaf(&ca, Some(UPSTREAM), &["upstream.test"])
            .write_istio_layout(&dir.path("upstream"))
            .unwrap();
        std::fs::create_dir_all(dir.path("foreign")).unwrap();
        std::fs::write(dir.path("foreign/root-cert.pem"), foreign.root_pem()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let clients = BTreeMap::from([
            ("gw", Some(leaf(&ca, Some(GW), &["gw.autolytiq.svc"]))),
            ("deal", Some(leaf(&ca, Some(DEAL), &[]))),
            ("other", Some(leaf(&ca, Some(OTHER), &[]))),
            ("upper", Some(leaf(&ca, Some(UPPER), &[]))),
            ("dns", Some(leaf(&ca, None, &["api.example.com"]))),
            ("wildcard", Some(leaf(&ca, None, &["*.example.com"]))),
            ("foreign", Some(leaf(&foreign, Some(GW), &[]))),
            (
                "rsa",
                Some(leaf_with(&ca, Some(GW), &[], |r| {
                    r.algorithm = KeyAlgorithm::Rsa2048
                })),
            ),
            (
                "expired",
                Some(leaf_with(&ca, Some(GW), &[], |r| {
                    r.not_before = now - Duration::from_secs(7200);
                    r.not_after = now - Duration::from_secs(3600);
                })),
            ),
            (
                "not_yet_valid",
                Some(leaf_with(&ca, Some(GW), &[], |r| {
                    r.not_before = now + Duration::from_secs(3600);
                    r.not_after = now + Duration::from_secs(7200);
                })),
            ),
            ("none", None),
        ]);
        Self { ca, dir, clients }
    }

    fn file(&self, f: &str) -> String {
        self.dir.path(f).display().to_string()
    }
}

/// A downstream listener: its name, `require_client_certificate`, the validation context's
/// extra lines (indented for `validation_context`; `None`: no validation context) and the ALPN
/// list (`None`: no `alpn_protocols`).
struct Listener {
    name: &'static str,
    require: bool,
    validation: Option<&'static str>,
    alpn: Option<&'static str>,
}

const fn listener(
    name: &'static str,
    require: bool,
    validation: Option<&'static str>,
    alpn: Option<&'static str>,
) -> Listener {
    Listener {
        name,
        require,
        validation,
        alpn,
    }
}

const LISTENERS: &[Listener] = &[
    listener(
        "san_exact",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {exact: \"spiffe://cluster.local/ns/autolytiq/sa/api-gateway\"}}\n",
        ),
        None,
    ),
    listener(
        "san_prefix",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {prefix: \"spiffe://cluster.local/ns/autolytiq/\"}}\n",
        ),
        None,
    ),
    listener(
        "san_suffix",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {suffix: \"/sa/deal\"}}\n",
        ),
        None,
    ),
    listener(
        "san_regex",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {safe_regex: {regex: \"^spiffe://cluster\\\\.local/ns/[a-z]+/sa/api-[a-z]+$\"}}}\n",
        ),
        None,
    ),
    listener(
        "san_contains",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {contains: \"/ns/other/\"}}\n",
        ),
        None,
    ),
    listener(
        "san_dns",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: DNS, matcher: {exact: \"api.example.com\"}}\n",
        ),
        None,
    ),
    listener(
        "san_nocase",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {exact: \"spiffe://cluster.local/ns/autolytiq/sa/api-gateway\", ignore_case: true}}\n",
        ),
        None,
    ),
    listener(
        "san_any_of",
        true,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: DNS, matcher: {exact: \"gw.autolytiq.svc\"}}\n              - {san_type: URI, matcher: {suffix: \"/sa/deal\"}}\n",
        ),
        None,
    ),
    listener("ca_only", true, Some(""), None),
    listener(
        "optional",
        false,
        Some(
            "              match_typed_subject_alt_names:\n              - {san_type: URI, matcher: {exact: \"spiffe://cluster.local/ns/autolytiq/sa/api-gateway\"}}\n",
        ),
        None,
    ),
    listener("alpn_both", false, None, Some("[h2, http/1.1]")),
    listener("alpn_h1", false, None, Some("[http/1.1]")),
    listener("alpn_none", false, None, None),
];

/// A plaintext listener (the same routes): TLS only upstream.
const PLAIN: &str = "plain";

/// A listener whose certificate and validation context are static secrets (`proxy_cert`,
/// `proxy_ca`): their names are what `/certs` and the `ssl.certificate.*` gauges show.
const SECRETS: &str = "secrets";

const SECRETS_TLS: &str = r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs: [{name: proxy_cert}]
            validation_context_sds_secret_config: {name: proxy_ca}
"#;

fn static_secrets(pki: &Pki) -> String {
    format!(
        "  secrets:\n  - name: proxy_cert\n    tls_certificate: {{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}\n  - name: proxy_ca\n    validation_context: {{trusted_ca: {{filename: {}}}}}\n",
        pki.file("proxy/cert-chain.pem"),
        pki.file("proxy/key.pem"),
        pki.file("proxy/root-cert.pem")
    )
}

fn downstream_tls(pki: &Pki, l: &Listener) -> String {
    let validation = l
        .validation
        .map(|extra| {
            format!(
                "            validation_context:\n              trusted_ca: {{filename: {}}}\n{extra}",
                pki.file("proxy/root-cert.pem")
            )
        })
        .unwrap_or_default();
    let alpn = l
        .alpn
        .map(|a| format!("            alpn_protocols: {a}\n"))
        .unwrap_or_default();
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: {require}
          common_tls_context:
{alpn}            tls_certificates:
            - certificate_chain: {{filename: {chain}}}
              private_key: {{filename: {key}}}
{validation}"#,
        require = l.require,
        chain = pki.file("proxy/cert-chain.pem"),
        key = pki.file("proxy/key.pem"),
    )
}

/// An upstream TLS cluster: its name, the validation context's extra lines, the trusted CA
/// file and the ALPN list.
struct UpCluster {
    name: &'static str,
    validation: &'static str,
    ca: &'static str,
    h2: bool,
}

const UP_CLUSTERS: &[UpCluster] = &[
    UpCluster {
        name: "up_uri",
        validation: "            match_typed_subject_alt_names:\n            - {san_type: URI, matcher: {exact: \"spiffe://cluster.local/ns/diff/sa/upstream\"}}\n",
        ca: "proxy/root-cert.pem",
        h2: false,
    },
    UpCluster {
        name: "up_dns",
        validation: "            match_typed_subject_alt_names:\n            - {san_type: DNS, matcher: {exact: \"upstream.test\"}}\n",
        ca: "proxy/root-cert.pem",
        h2: false,
    },
    UpCluster {
        name: "up_bad_san",
        validation: "            match_typed_subject_alt_names:\n            - {san_type: URI, matcher: {prefix: \"spiffe://cluster.local/ns/elsewhere/\"}}\n",
        ca: "proxy/root-cert.pem",
        h2: false,
    },
    UpCluster {
        name: "up_wrong_ca",
        validation: "",
        ca: "foreign/root-cert.pem",
        h2: false,
    },
    UpCluster {
        name: "up_h2",
        validation: "            match_typed_subject_alt_names:\n            - {san_type: URI, matcher: {suffix: \"/sa/upstream\"}}\n",
        ca: "proxy/root-cert.pem",
        h2: true,
    },
];

fn upstream_tls(pki: &Pki, c: &UpCluster) -> String {
    let (alpn, h2) = if c.h2 {
        (
            "[h2]",
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n",
        )
    } else {
        ("[http/1.1]", "")
    };
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: upstream.test
        common_tls_context:
          alpn_protocols: {alpn}
          tls_certificates:
          - certificate_chain: {{filename: {chain}}}
            private_key: {{filename: {key}}}
          validation_context:
            trusted_ca: {{filename: {ca}}}
{validation}{h2}"#,
        chain = pki.file("proxy/cert-chain.pem"),
        key = pki.file("proxy/key.pem"),
        ca = pki.file(c.ca),
        validation = c.validation,
    )
}

/// `http_listener` with the request log, a listener access log, and routes: `/up/<cluster>` to
/// each upstream TLS cluster, anything else to the plaintext backend.
fn http_tls_listener(name: &str) -> String {
    let mut routes = String::from(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n",
    );
    for c in UP_CLUSTERS {
        routes.push_str(&format!(
            "              - {{name: {n}, match: {{prefix: \"/up/{n}\"}}, route: {{cluster: {n}, prefix_rewrite: \"/\"}}}}\n",
            n = c.name
        ));
    }
    routes.push_str(
        "              - {name: backend, match: {prefix: \"/\"}, route: {cluster: backend}}\n",
    );
    let request_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/access.log\n              log_format: {{text_format_source: {{inline_string: \"{REQUEST_LOG}\\n\"}}}}\n"
    );
    http_listener(name, &request_log, &routes).replacen(
        "    filter_chains:\n",
        &format!(
            "    stat_prefix: {name}\n    access_log:\n    - name: envoy.access_loggers.file\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n        path: RUN_DIR/connections.log\n        log_format: {{text_format_source: {{inline_string: \"{CONNECTION_LOG}\\n\"}}}}\n    filter_chains:\n"
        ),
        1,
    )
}

/// A TLS upstream: terminates TLS with the `upstream` certificate (ALPN h2 and http/1.1), then
/// relays the bytes to the plaintext echo upstream `to`.
async fn tls_upstream(pki: &Pki, to: SocketAddr) -> SocketAddr {
    let chain = std::fs::read(pki.dir.path("upstream/cert-chain.pem")).unwrap();
    let key = std::fs::read(pki.dir.path("upstream/key.pem")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(remora_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            remora_certs::pem::certificates(&chain).unwrap(),
            remora_certs::pem::private_key(&key).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let (addr, task) = serve_tcp(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let Ok(mut plain) = TcpStream::connect(to).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        }
    })
    .await;
    // Detached: it relays for the rest of the suite's process.
    drop(task);
    addr
}

/// One connection case: the listener, the client certificate, what the client offers as ALPN.
struct TlsCase {
    id: String,
    /// The client offers TLS 1.2 only.
    tls12: bool,
    listener: &'static str,
    client: &'static str,
    alpn: &'static [&'static str],
    path: String,
}

/// A case; its id is `tls/<listener>/<client>` (with what the client offers as ALPN unless
/// it is `http/1.1` alone), or `tls/upstream/<cluster>` for the upstream clusters.
fn tls_case(
    listener: &'static str,
    client: &'static str,
    alpn: &'static [&'static str],
    path: &str,
) -> TlsCase {
    let alpn_tag = match alpn {
        ["http/1.1"] => String::new(),
        [] => "/no_alpn".to_string(),
        a => format!("/alpn_{}", a.join("_").replace(['/', '.'], "")),
    };
    let id = match path.strip_prefix("/up/") {
        Some(cluster) if listener == PLAIN => format!("tls/upstream/{cluster}/from_plaintext"),
        Some(cluster) => format!("tls/upstream/{cluster}"),
        None => format!("tls/{listener}/{client}{alpn_tag}"),
    };
    TlsCase {
        id,
        tls12: false,
        listener,
        client,
        alpn,
        path: path.to_string(),
    }
}

const H1: &[&str] = &["http/1.1"];
const H2_H1: &[&str] = &["h2", "http/1.1"];

fn connection_cases() -> Vec<TlsCase> {
    let mut c = Vec::new();
    for (l, clients) in [
        ("san_exact", &["gw", "deal", "upper", "foreign", "none"][..]),
        ("san_prefix", &["gw", "other"][..]),
        ("san_suffix", &["deal", "gw"][..]),
        ("san_regex", &["gw", "deal", "upper"][..]),
        ("san_contains", &["other", "gw"][..]),
        ("san_dns", &["dns", "wildcard", "gw"][..]),
        ("san_nocase", &["upper", "gw", "deal"][..]),
        ("san_any_of", &["gw", "deal", "other"][..]),
        (
            "ca_only",
            &[
                "other",
                "dns",
                "rsa",
                "foreign",
                "expired",
                "not_yet_valid",
                "none",
            ][..],
        ),
        ("optional", &["none", "gw", "deal", "foreign"][..]),
    ] {
        for client in clients {
            c.push(tls_case(l, client, H1, "/"));
        }
    }
    c.extend([
        tls_case("alpn_both", "none", H2_H1, "/"),
        tls_case("alpn_both", "none", H1, "/"),
        tls_case("alpn_both", "none", &[], "/"),
        tls_case("alpn_both", "none", &["h3"], "/"),
        tls_case("alpn_h1", "none", H2_H1, "/"),
        tls_case("alpn_none", "none", H2_H1, "/"),
        tls_case("alpn_none", "none", &[], "/"),
        // Plaintext HTTP to a TLS port.
        tls_case("alpn_none", "plaintext", &[], "/"),
        tls_case("san_exact", "plaintext", &[], "/"),
        tls_case(SECRETS, "gw", H1, "/"),
        tls_case(SECRETS, "foreign", H1, "/"),
    ]);
    for (l, client) in [
        ("ca_only", "gw"),
        ("san_exact", "deal"),
        ("alpn_both", "none"),
    ] {
        let mut t = tls_case(l, client, H1, "/");
        t.id.push_str("/tls12");
        t.tls12 = true;
        c.push(t);
    }
    for u in UP_CLUSTERS {
        c.push(tls_case(
            "alpn_none",
            "none",
            H1,
            &format!("/up/{}", u.name),
        ));
    }
    c.push(tls_case(PLAIN, "plaintext", &[], "/up/up_h2"));
    c.push(tls_case(PLAIN, "plaintext", &[], "/up/up_uri"));
    c
}

const STAT_CASES: &[&str] = &["tls/stats/listeners", "tls/stats/clusters"];
const CERTS_CASE: &str = "tls/certs";

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let wanted = |id: &str| filter.is_none_or(|f| id.contains(f));
    let cases: Vec<TlsCase> = connection_cases()
        .into_iter()
        .filter(|c| wanted(&c.id))
        .collect();
    // The stats and /certs cases need the traffic of every connection case.
    let aggregate: Vec<&str> = STAT_CASES
        .iter()
        .copied()
        .chain([CERTS_CASE])
        .filter(|id| wanted(id))
        .collect();
    if cases.is_empty() && aggregate.is_empty() {
        return Vec::new();
    }
    let cases = if aggregate.is_empty() {
        cases
    } else {
        connection_cases()
    };
    let pki = Pki::new();
    let backend = upstream("backend").await;
    let tls_backend = tls_upstream(&pki, backend.addr).await;
    let mut listeners = String::new();
    for l in LISTENERS {
        listeners.push_str(&http_tls_listener(l.name));
        listeners.push_str(&downstream_tls(&pki, l));
    }
    listeners.push_str(&http_tls_listener(PLAIN));
    listeners.push_str(&http_tls_listener(SECRETS));
    listeners.push_str(SECRETS_TLS);
    let mut clusters = cluster("backend", &[backend.addr], "");
    for u in UP_CLUSTERS {
        clusters.push_str(&cluster(u.name, &[tls_backend], &upstream_tls(&pki, u)));
    }
    let yaml = bootstrap(&listeners, &clusters) + &static_secrets(&pki);
    let pair = Pair::start(envoy, &yaml).await;

    let mut results = Vec::new();
    // Each side's client port per case, for the connection log (a port may come back for a
    // later case: its cases in order).
    let mut ports: [HashMap<u16, Vec<String>>; 2] = Default::default();
    for c in &cases {
        let mut seen = Vec::new();
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let addr = pair.get(side).addr(c.listener);
            let (text, port) = connect(&pki, addr, c).await;
            if let Some(p) = port {
                ports[i].entry(p).or_default().push(c.id.clone());
            }
            seen.push(text);
        }
        results.push(CaseResult {
            group: "tls",
            id: c.id.clone(),
            diff: diff(&seen[0], &seen[1]).map(|d| format!("client: {d}")),
        });
    }
    cases::compare_logs(&pair, "tls", &mut results).await;
    compare_connection_logs(&pair, &ports, &mut results);
    results.retain(|r| wanted(&r.id));

    for id in aggregate {
        let [e, r] = match id {
            CERTS_CASE => both(&pair, "/certs", |_, b| certs(b)).await,
            _ => {
                let scope = id.strip_prefix("tls/stats/").unwrap();
                both(&pair, "/stats", |_, b| ssl_stats(b, scope)).await
            }
        };
        let d = match id {
            CERTS_CASE => diff(&e, &r),
            _ => line_diff(&e, &r),
        };
        results.push(CaseResult {
            group: "tls",
            id: id.to_string(),
            diff: d,
        });
    }
    results
}

/// `name: value` lines compared as sets: each name only one side has, each differing value.
fn line_diff(envoy: &str, remora: &str) -> Option<String> {
    let map = |t: &str| -> BTreeMap<String, String> {
        t.lines()
            .map(|l| match l.split_once(": ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect()
    };
    let (e, r) = (map(envoy), map(remora));
    let mut out = String::new();
    for (k, v) in &e {
        match r.get(k) {
            None => out.push_str(&format!("\n  missing in remora: {k}: {v}")),
            Some(w) if w != v => out.push_str(&format!("\n  {k}: envoy {v} / remora {w}")),
            Some(_) => {}
        }
    }
    for (k, v) in r.iter().filter(|(k, _)| !e.contains_key(*k)) {
        out.push_str(&format!("\n  only in remora: {k}: {v}"));
    }
    (!out.is_empty()).then(|| format!("differs:{out}"))
}

async fn both(pair: &Pair, path: &str, f: impl Fn(Side, &str) -> String) -> [String; 2] {
    let mut out = [String::new(), String::new()];
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        out[i] = match pair.get(side).admin_get(path).await {
            Ok((status, body)) => format!("status {status}\n{}", f(side, &body)),
            Err(e) => format!("<admin error {e}>"),
        };
    }
    out
}

/// A client trusting the development CA (any server name), presenting `client`'s certificate.
fn client_config(pki: &Pki, client: &str, alpn: &[&str], tls12: bool) -> Arc<rustls::ClientConfig> {
    use remora_certs::source::{Data, FileTrust};
    use remora_certs::verify::{ServerVerifier, Validation};
    let trust = FileTrust::load(Data::Inline(pki.ca.root_pem().as_bytes().to_vec()), None).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = rustls::ClientConfig::builder_with_provider(remora_certs::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            validation: Validation {
                trust: Some(trust),
                san_matchers: vec![],
                pins: vec![],
            },
        }));
    let mut cfg = match pki.clients.get(client).cloned().flatten() {
        Some(c) => builder
            .with_client_auth_cert(
                remora_certs::pem::certificates(c.cert_chain_pem.as_bytes()).unwrap(),
                remora_certs::pem::private_key(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// One connection: what the client saw, and its local port.
async fn connect(pki: &Pki, addr: SocketAddr, c: &TlsCase) -> (String, Option<u16>) {
    let mut tcp = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return (format!("<connect error {e}>"), None),
    };
    let port = tcp.local_addr().ok().map(|a| a.port());
    let key = c.id.strip_prefix("tls/").unwrap_or(&c.id);
    if c.client == "plaintext" {
        let request = cases::req(key, "GET", "tls.test", &c.path, &[]);
        let _ = tcp.write_all(&request).await;
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut bytes)).await;
        return (format!("plaintext\n{}", observe(&bytes).text), port);
    }
    let connector = tokio_rustls::TlsConnector::from(client_config(pki, c.client, c.alpn, c.tls12));
    let sni = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio::time::timeout(Duration::from_secs(5), connector.connect(sni, tcp)).await;
    let mut tls = match handshake {
        Err(_) => return ("handshake: no answer within 5 s".into(), port),
        Ok(Err(e)) => return (format!("handshake refused: {e}"), port),
        Ok(Ok(s)) => s,
    };
    let (version, cipher, alpn) = {
        let (_, conn) = tls.get_ref();
        (
            format!("{:?}", conn.protocol_version()),
            format!("{:?}", conn.negotiated_cipher_suite().map(|s| s.suite())),
            conn.alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_else(|| "-".into()),
        )
    };
    let mut text = format!("handshake: {version} {cipher} alpn={alpn}\n");
    if alpn == "h2" {
        text.push_str(&h2_exchange(tls, key, &c.path).await);
        return (text, port);
    }
    let request = cases::req(key, "GET", "tls.test", &c.path, &[]);
    if let Err(e) = tls.write_all(&request).await {
        text.push_str(&format!("write: {e}\n"));
    }
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut bytes)).await;
    let end = match read {
        Err(_) => "no close within 5 s".to_string(),
        Ok(Ok(_)) => "closed with close_notify".to_string(),
        Ok(Err(e)) => format!("read error: {e}"),
    };
    if bytes.is_empty() {
        text.push_str(&format!("no response; {end}"));
    } else {
        text.push_str(&observe(&bytes).text);
        text.push_str(&format!("\n{end}"));
    }
    (text, port)
}

/// A GET over HTTP/2 on the negotiated connection, written as `observe` reads a response.
async fn h2_exchange(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    key: &str,
    path: &str,
) -> String {
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(format!("https://tls.test{path}"))
            .header("x-case", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let mut raw = format!("HTTP/2 {}\r\n", parts.status.as_u16());
        for (k, v) in &parts.headers {
            raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("<binary>")));
        }
        raw.push_str("\r\n");
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&body);
        Ok::<_, String>(observe(&raw).text)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => format!("h2 error: {e}"),
        Err(_) => "h2: no answer within 5 s".into(),
    }
}

/// Each case's connection-log line (the client's port replaced by the case). Connections are
/// logged as they close, in case order: the k-th line of a port is its k-th case's.
fn compare_connection_logs(
    pair: &Pair,
    ports: &[HashMap<u16, Vec<String>>; 2],
    results: &mut [CaseResult],
) {
    let lines = |i: usize, side: Side| -> HashMap<String, String> {
        let path = pair.get(side).dir.path("connections.log");
        let mut seen: HashMap<u16, usize> = HashMap::new();
        let mut out = HashMap::new();
        for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
            let Some((port, rest)) = l.split_once(' ') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let k = seen.entry(port).or_default();
            if let Some(case) = ports[i].get(&port).and_then(|cases| cases.get(*k)) {
                out.insert(case.clone(), rest.to_string());
            }
            *k += 1;
        }
        out
    };
    let (envoy, remora) = (lines(0, Side::Envoy), lines(1, Side::Remora));
    for r in results.iter_mut() {
        let none = String::from("<no connection-log line>");
        let e = envoy.get(&r.id).unwrap_or(&none);
        let m = remora.get(&r.id).unwrap_or(&none);
        if let Some(d) = diff(e, m) {
            let d = format!("connection log: {d}");
            r.diff = Some(match r.diff.take() {
                Some(prev) => format!("{prev}\n{d}"),
                None => d,
            });
        }
    }
}

/// `/stats` lines `listener.<name>.ssl.*` (the listeners have a `stat_prefix`: with port 0
/// Envoy names a listener's stats by its configured address, remora by its bound one) or
/// `cluster.<name>.ssl.*`, with their values.
fn ssl_stats(body: &str, scope: &str) -> String {
    let prefix = match scope {
        "listeners" => "listener.",
        _ => "cluster.",
    };
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if name.starts_with(prefix)
            && name.contains(".ssl.")
            && !name.starts_with("listener.admin.")
        {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// `/certs`: the contexts sorted (Envoy's order is that of a hash set), each as JSON.
fn certs(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return format!("<not JSON> {body}");
    };
    let mut contexts: Vec<String> = v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_json::to_string_pretty(c).unwrap_or_default())
        .collect();
    contexts.sort();
    let other: Vec<&String> = v
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "certificates").collect())
        .unwrap_or_default();
    format!(
        "{} contexts; other keys {other:?}\n{}",
        contexts.len(),
        contexts.join("\n")
    )
}
