//! `envoy.stat_sinks.dog_statsd`: the statsd lines of [`super::statsd`] with DogStatsD tags —
//! the tag-extracted name, then the tags after the value (`<prefix>.<name>:<v>|c|#k:v,k2:v2`;
//! nothing after the type when a stat has no tags) — over UDP. With `max_bytes_per_datagram`
//! the counter and gauge lines of a flush are joined by `\n` into datagrams of at most that
//! size (a longer line goes alone); histogram values go one per datagram, as Envoy writes them
//! when recorded.

use super::{Sink, Snapshot};
use crate::model::stats_sinks::DogStatsd;
use crate::telemetry::tags::Tags;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct DogStatsdSink {
    socket: UdpSocket,
    to: SocketAddr,
    prefix: String,
    buffer_size: usize,
    /// Datagrams the socket refused (dropped).
    pub dropped: AtomicU64,
}

impl DogStatsdSink {
    pub fn new(c: &DogStatsd) -> std::io::Result<Self> {
        Ok(Self {
            socket: super::statsd::udp_socket(c.address)?,
            to: c.address,
            prefix: c.prefix.clone(),
            buffer_size: c.max_bytes_per_datagram.unwrap_or(0) as usize,
            dropped: AtomicU64::new(0),
        })
    }

    fn send(&self, datagram: &str) {
        if let Err(e) = self.socket.send_to(datagram.as_bytes(), self.to)
            && self.dropped.fetch_add(1, Relaxed) == 0
        {
            tracing::debug!("dog_statsd: sending to {} failed: {e}", self.to);
        }
    }
}

/// One line: `<prefix>.<extracted name>:<value>|<type>` and the tags.
fn line(prefix: &str, tags: &Tags, value: impl std::fmt::Display, kind: &str) -> String {
    let mut out = format!("{prefix}.{}:{value}|{kind}", tags.extracted_name);
    for (i, (k, v)) in tags.tags.iter().enumerate() {
        let _ = write!(out, "{}{k}:{v}", if i == 0 { "|#" } else { "," });
    }
    out
}

/// The counter and gauge lines packed into datagrams of at most `size` bytes (Envoy's
/// `writeBuffer`: a line as long as the buffer goes alone; 0 means one line per datagram).
pub fn datagrams(lines: Vec<String>, size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = String::new();
    for l in lines {
        if l.len() >= size {
            out.push(l);
            continue;
        }
        if buf.len() + l.len() + 1 > size {
            if !buf.is_empty() {
                out.push(std::mem::take(&mut buf));
            }
        } else if !buf.is_empty() {
            buf.push('\n');
        }
        buf.push_str(&l);
    }
    if !buf.is_empty() {
        out.push(buf);
    }
    out
}

impl Sink for DogStatsdSink {
    fn flush(&self, s: &Snapshot) {
        let p = &self.prefix;
        let mut lines: Vec<String> = Vec::with_capacity(s.counters.len() + s.gauges.len());
        lines.extend(s.counters.iter().map(|c| line(p, &c.tags, c.delta, "c")));
        lines.extend(s.gauges.iter().map(|g| line(p, &g.tags, g.value, "g")));
        for d in datagrams(lines, self.buffer_size) {
            self.send(&d);
        }
        for h in &s.values {
            for v in &h.values {
                self.send(&line(p, &h.tags, v, "ms"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn tags_after_the_value() {
        let tags = Tags {
            extracted_name: "cluster.upstream_rq_total".into(),
            tags: Arc::from(vec![
                (Arc::from("envoy.cluster_name"), Arc::from("backend")),
                (Arc::from("k"), Arc::from("v")),
            ]),
        };
        assert_eq!(
            line("envoy", &tags, 3, "c"),
            "envoy.cluster.upstream_rq_total:3|c|#envoy.cluster_name:backend,k:v"
        );
        let plain = Tags {
            extracted_name: "server.live".into(),
            ..Tags::default()
        };
        assert_eq!(line("p", &plain, 1, "g"), "p.server.live:1|g");
    }

    #[test]
    fn lines_packed_up_to_the_datagram_size() {
        let l = |s: &str| s.to_string();
        assert_eq!(
            datagrams(vec![l("aaaa"), l("bbbb"), l("cccccccccc"), l("dd")], 10),
            ["cccccccccc", "aaaa\nbbbb", "dd"],
            "a line as long as a datagram goes at once, ahead of the buffered ones (as Envoy)"
        );
        assert_eq!(
            datagrams(vec![l("a"), l("b")], 0),
            ["a", "b"],
            "unset: one each"
        );
    }
}
