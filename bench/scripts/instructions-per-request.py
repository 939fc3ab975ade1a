#!/usr/bin/env python3
"""Instructions remora executes per proxied HTTP/1.1 request, under valgrind's callgrind.

Repeatable on noisy machines (it counts instructions, not time), so it is how hot-path changes
are compared. Runs remora twice under callgrind, serving N and 3N keep-alive requests from four
client connections to a keep-alive upstream, and reports the difference divided by 2N (startup
cancels out), plus the functions that account for it.

usage: bench/scripts/instructions-per-request.py [--remora target/release/remora] [-n 2000] [--top 25]
needs: valgrind (callgrind_annotate), python3
"""
import argparse, os, re, socket, subprocess, sys, tempfile, threading, time

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\nAccept: */*\r\n\r\n"


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


def run(remora, config, port, n, out):
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", remora, "-c", config,
         "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    threads = [threading.Thread(target=client, args=(port, n // 4)) for _ in range(4)]
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
    args = a.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=upstream, args=(listener,), daemon=True).start()
    up = listener.getsockname()[1]
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "remora.yaml")
        with open(config, "w") as f:
            f.write(f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          http_filters: [{{name: envoy.filters.http.router}}]
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
  clusters:
  - name: up
    type: STATIC
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]}}
""")
        small = run(args.remora, config, port, args.n, os.path.join(d, "small.out"))
        large = run(args.remora, config, port, 3 * args.n, os.path.join(d, "large.out"))
    per = lambda k: (large.get(k, 0) - small.get(k, 0)) / (2 * args.n)
    print(f"instructions per proxied request: {per('PROGRAM TOTALS'):.0f}")
    rows = sorted(((per(k), k) for k in large if k != "PROGRAM TOTALS"), reverse=True)
    for v, k in rows[: args.top]:
        print(f"{v:8.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
