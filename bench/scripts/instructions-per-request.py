#!/usr/bin/env python3
"""Instructions remora executes per proxied HTTP/1.1 (or, with --http2, HTTP/2) request, under
valgrind's callgrind.

Repeatable on noisy machines (it counts instructions, not time), so it is how hot-path changes
are compared. Runs remora twice under callgrind, serving N and 3N keep-alive requests from four
client connections to a keep-alive upstream, and reports the difference divided by 2N (startup
cancels out), plus the functions that account for it.

usage: bench/scripts/instructions-per-request.py [--remora target/release/remora] [-n 2000] [--top 25]
       [--http2] [--http-filters rbac-fault]   (bench/policy/NAME.yaml's filters before the router)
       [--telemetry]   (Istio's telemetry as the bench's remora-telemetry system: both istio.stats
                        filters with Istio's node metadata, a file access log in Istio's format,
                        Zipkin tracing at 1 % to the upstream)
needs: valgrind (callgrind_annotate), python3
"""
import argparse, os, re, socket, subprocess, sys, tempfile, threading, time

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\nAccept: */*\r\n\r\n"


NODE = """node:
  id: sidecar~10.52.0.34~productpage-v1-84975bc778-pxz2w.default~default.svc.cluster.local
  cluster: productpage.default
  metadata:
    CLUSTER_ID: client-cluster
    ISTIO_VERSION: 1.5-dev
    LABELS: {app: productpage, version: v1, service.istio.io/canonical-name: productpage-v1, service.istio.io/canonical-revision: version-1}
    MESH_ID: mesh
    NAME: productpage-v1-84975bc778-pxz2w
    NAMESPACE: default
    WORKLOAD_NAME: productpage-v1
"""

# Istio's default access-log format (istiod's EnvoyTextLogFormat), to a file; Zipkin at 1 %.
TELEMETRY_HCM = r"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_PATH
              log_format: {text_format_source: {inline_string: "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"}}
          tracing:
            random_sampling: {value: 1}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                shared_span_context: false
"""

COLLECTOR = """  - name: zipkin
    type: STATIC
    load_assignment: {cluster_name: zipkin, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UP_PORT}}}}]}]}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def upstream(listener):
    """A keep-alive HTTP/1.1 server: one thread per connection, a fixed small response."""
    def serve(c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[buf.index(b"\r\n\r\n") + 4:]
                c.sendall(RESPONSE)
    while True:
        c, _ = listener.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def client(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    for _ in range(n):
        s.sendall(REQUEST)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                cl = 0
                for line in buf[:i].lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        cl = int(line.split(b":")[1])
                if len(buf) >= i + 4 + cl:
                    buf = buf[i + 4 + cl:]
                    break
            d = s.recv(65536)
            if not d:
                sys.exit("remora closed the connection")
            buf += d
    s.close()


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def client_h2(port, n):
    """n GET streams, one after another, on one HTTP/2 connection (prior knowledge). The frames
    are written by hand (HPACK static-table entries and one literal), so no h2 library is needed."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0))
    # GET, http, /, :authority "bench" (literal with incremental indexing, then indexed: 0xbe).
    first = bytes([0x82, 0x86, 0x84, 0x41, 0x05]) + b"bench"
    later = bytes([0x82, 0x86, 0x84, 0xbe])
    buf = b""
    for i in range(n):
        sid = 1 + 2 * i
        s.sendall(h2_frame(1, 0x5, sid, first if i == 0 else later))
        done = False
        while not done:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                d = s.recv(65536)
                if not d:
                    sys.exit("remora closed the connection")
                buf += d
            ln = int.from_bytes(buf[:3], "big")
            kind, flags, fsid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
            payload, buf = buf[9:9 + ln], buf[9 + ln:]
            if kind == 4 and not flags & 1:
                s.sendall(h2_frame(4, 1, 0))
            elif kind == 3 and fsid == sid or kind == 7:
                sys.exit(f"stream {sid} reset or connection closed: frame type {kind}")
            elif kind == 1 and fsid == sid and not payload.startswith(b"\x88"):
                sys.exit(f"stream {sid}: not 200")
            elif kind == 0 and ln:
                # Give the connection and the stream their window back.
                s.sendall(h2_frame(8, 0, 0, ln.to_bytes(4, "big")))
            if kind in (0, 1) and fsid == sid and flags & 1:
                done = True
    s.close()


def run(remora, config, port, n, out, h2=False):
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", remora, "-c", config,
         "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Up to two minutes: starting under valgrind on a loaded machine is slow.
    for _ in range(1200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    threads = [threading.Thread(target=client_h2 if h2 else client, args=(port, n // 4))
               for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    p.send_signal(2)
    p.wait()
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", out],
                          capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if m:
            name = re.sub(r"\s*\[.*\]$", "", m.group(2))
            # Drop the "file:" prefix: the first ':' after which no '/' follows.
            name = re.sub(r"^.*?:(?=[^/]*$)", "", name) if "PROGRAM TOTALS" not in name else name
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--remora", default="target/release/remora")
    a.add_argument("-n", type=int, default=2000)
    a.add_argument("--top", type=int, default=25)
    a.add_argument("--http2", action="store_true", help="HTTP/2 clients (prior knowledge)")
    a.add_argument("--http-filters", metavar="NAME",
                   help="put bench/policy/NAME.yaml's HTTP filters before the router")
    a.add_argument("--telemetry", action="store_true",
                   help="Istio's telemetry (the bench's remora-telemetry system)")
    a.add_argument("--no-network-stats", action="store_true",
                   help="with --telemetry: without the network istio.stats filter (Istio puts it on "
                        "TCP chains only)")
    args = a.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    policy = lambda name: [l for l in open(os.path.join(here, "..", "policy", f"{name}.yaml"))
                           if not l.startswith("#")]
    filters = ""
    if args.http_filters:
        filters = "".join("          " + l for l in policy(args.http_filters))
    node = network = hcm = collector = ""
    if args.telemetry:
        filters = "".join("          " + l for l in policy("telemetry")) + filters
        if not args.no_network_stats:
            network = "".join("      " + l for l in policy("telemetry"))
        node = NODE
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=upstream, args=(listener,), daemon=True).start()
    up = listener.getsockname()[1]
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        if args.telemetry:
            hcm = TELEMETRY_HCM.replace("LOG_PATH", os.path.join(d, "access.log"))
            collector = COLLECTOR.replace("UP_PORT", str(up))
        config = os.path.join(d, "remora.yaml")
        with open(config, "w") as f:
            f.write(f"""{node}admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
{network}      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
{hcm}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
  clusters:
  - name: up
    type: STATIC
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]}}
{collector}""")
        small = run(args.remora, config, port, args.n, os.path.join(d, "small.out"), args.http2)
        large = run(args.remora, config, port, 3 * args.n, os.path.join(d, "large.out"), args.http2)
    per = lambda k: (large.get(k, 0) - small.get(k, 0)) / (2 * args.n)
    print(f"instructions per proxied request: {per('PROGRAM TOTALS'):.0f}")
    rows = sorted(((per(k), k) for k in large if k != "PROGRAM TOTALS"), reverse=True)
    for v, k in rows[: args.top]:
        print(f"{v:8.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
