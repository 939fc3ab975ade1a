//! Istio's TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`, the
//! network filter istiod names `istio.metadata_exchange`, on inbound filter chains and on
//! outbound clusters). When TLS negotiated the configured ALPN (`istio-peer-exchange`), each
//! side sends one frame before any application byte — magic `0x3D230467`, a 4-byte length, and
//! a `google.protobuf.Any` holding a Struct with this workload's metadata and node id — and
//! takes the peer's frame off the stream, so the application never sees it. remora sends its
//! frame first and then reads the peer's (Envoy answers the first bytes it receives with its
//! own), within a deadline. What the peer's frame says feeds Istio's telemetry, a later stage.
//! Stats: `metadata_exchange.{alpn_protocol_found, alpn_protocol_not_found,
//! initial_header_not_found, header_not_found, metadata_added}`.

use crate::model::bootstrap::Node;
use crate::telemetry::stats::{Counter, Store};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: u32 = 0x3D23_0467;

/// A cluster's side of the exchange: its stats and this workload's frame (built once, from the
/// server context's node, when the cluster is).
#[derive(Debug)]
pub struct Upstream {
    pub stats: MxStats,
    pub frame: Bytes,
}
/// A peer frame longer than this is not believed (Istio's metadata is a few hundred bytes).
const MAX_FRAME: usize = 64 * 1024;

/// `metadata_exchange.*`.
#[derive(Debug)]
pub struct MxStats {
    pub alpn_protocol_found: Arc<Counter>,
    pub alpn_protocol_not_found: Arc<Counter>,
    pub initial_header_not_found: Arc<Counter>,
    pub header_not_found: Arc<Counter>,
    pub metadata_added: Arc<Counter>,
}

impl MxStats {
    pub fn new(store: &Store) -> Self {
        let c = |n: &str| store.counter(&format!("metadata_exchange.{n}"));
        Self {
            alpn_protocol_found: c("alpn_protocol_found"),
            alpn_protocol_not_found: c("alpn_protocol_not_found"),
            initial_header_not_found: c("initial_header_not_found"),
            header_not_found: c("header_not_found"),
            metadata_added: c("metadata_added"),
        }
    }
}

/// This workload's frame: the Any-wrapped Struct `{x-envoy-peer-metadata: <workload>,
/// x-envoy-peer-metadata-id: <node id>}`, framed.
pub fn frame(node: &Node, additional_labels: &[String]) -> Bytes {
    let payload = crate::filters::http::peer_metadata::exchange_payload(node, additional_labels);
    let mut out = BytesMut::with_capacity(8 + payload.len());
    out.put_u32(MAGIC);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(&payload);
    out.freeze()
}

/// Run the exchange on a stream whose ALPN matched: send `ours`, then read and drop the peer's
/// frame. Returns the bytes read past it (or everything read, undrained, when the peer sent no
/// frame), which belong to the application.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &[u8],
    within: Duration,
    stats: &MxStats,
) -> std::io::Result<BytesMut> {
    Ok(exchange_peer(stream, ours, within, stats).await?.0)
}

/// [`exchange`], also returning the peer's workload when its frame carried one (what Istio's
/// telemetry reads).
pub async fn exchange_peer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &[u8],
    within: Duration,
    stats: &MxStats,
) -> std::io::Result<(BytesMut, Option<Arc<crate::telemetry::istio::Peer>>)> {
    stats.alpn_protocol_found.inc();
    stream.write_all(ours).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        while buf.len() < 8 {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(false);
            }
        }
        let magic = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Ok(false);
        }
        let len = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Ok(false);
        }
        while buf.len() < 8 + len {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let framed = match tokio::time::timeout(within, read).await {
        Ok(r) => r?,
        Err(_) => false,
    };
    if !framed {
        stats.initial_header_not_found.inc();
        return Ok((buf, None));
    }
    let len = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let frame = buf.split_to(8 + len);
    let any: Result<envoy_types::pb::google::protobuf::Any, _> =
        prost::Message::decode(&frame[8..]);
    let peer = match any {
        Ok(a) if a.type_url.ends_with("google.protobuf.Struct") => {
            stats.metadata_added.inc();
            crate::telemetry::istio::Peer::from_exchange(&frame[8..]).map(Arc::new)
        }
        _ => {
            stats.header_not_found.inc();
            None
        }
    };
    Ok((buf, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's reference frame for `{"x-envoy-peer-metadata":{"LABELS":{},"NAMESPACE":"default"},
    /// "x-envoy-peer-metadata-id":"sidecar~10.0.0.1~a.default~default.svc.cluster.local"}`.
    #[test]
    fn frame_matches_istios_reference() {
        let node = Node {
            id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            metadata: serde_json::json!({"NAMESPACE": "default"}),
            ..Default::default()
        };
        let f = frame(&node, &[]);
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(f.len(), 206);
        assert_eq!(
            hex,
            concat!(
                "3d230467000000c6",
                "0a2a747970652e676f6f676c65617069732e636f6d2f676f6f676c652e70726f746f6275662e537472756374",
                "1297010a410a15782d656e766f792d706565722d6d6574616461746112282a260a0c0a064c4142454c5312022a000a160a094e414d45535041434512091a0764656661756c740a520a18782d656e766f792d706565722d6d657461646174612d696412361a34736964656361727e31302e302e302e317e612e64656661756c747e64656661756c742e7376632e636c75737465722e6c6f63616c"
            )
        );
    }

    #[tokio::test]
    async fn both_sides_exchange_and_keep_the_application_bytes() {
        let store = Store::default();
        let stats = MxStats::new(&store);
        let (mut a, mut b) = tokio::io::duplex(4096);
        let fa = frame(&Node::default(), &[]);
        let fb = frame(
            &Node {
                id: "peer".into(),
                ..Default::default()
            },
            &[],
        );
        let peer = tokio::spawn(async move {
            let stats = MxStats::new(&Store::default());
            let mut left = exchange(&mut b, &fb, Duration::from_secs(1), &stats)
                .await
                .unwrap();
            b.write_all(b"hello").await.unwrap();
            // The application bytes that came with (or after) the frame are kept.
            while left.len() < 4 {
                b.read_buf(&mut left).await.unwrap();
            }
            left
        });
        let left = exchange(&mut a, &fa, Duration::from_secs(1), &stats)
            .await
            .unwrap();
        a.write_all(b"ping").await.unwrap();
        let mut got = left;
        while got.len() < 5 {
            a.read_buf(&mut got).await.unwrap();
        }
        assert_eq!(&got[..], b"hello");
        assert_eq!(&peer.await.unwrap()[..], b"ping");
        assert_eq!(stats.metadata_added.value(), 1);
    }

    #[tokio::test]
    async fn a_peer_without_a_frame_is_passed_through() {
        let stats = MxStats::new(&Store::default());
        let (mut a, mut b) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let mut sink = vec![0u8; 512];
            let _ = b.read(&mut sink).await;
        });
        let left = exchange(
            &mut a,
            &frame(&Node::default(), &[]),
            Duration::from_secs(1),
            &stats,
        )
        .await
        .unwrap();
        assert_eq!(&left[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(stats.initial_header_not_found.value(), 1);
        writer.await.unwrap();
    }
}
