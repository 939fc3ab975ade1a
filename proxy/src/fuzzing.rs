//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): bytes in, never a panic.
//! All the glue between the targets and remora's functions is here, so that a signature change
//! elsewhere touches this file only.

use crate::config::FieldPath;
use crate::http::codec::chunked::{BodyState, ChunkState, Decoded};
use crate::http::codec::{h1, h1_client};
use crate::model::hcm::UnderscoreHeaders;
use crate::model::pb;
use bytes::BytesMut;
use prost::Message;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// The server codec's limits, varied by the input's first byte.
fn limits(flags: u8) -> h1::Limits {
    h1::Limits {
        max_header_bytes: if flags & 1 == 0 { 60 * 1024 } else { 256 },
        max_headers: if flags & 2 == 0 { 100 } else { 3 },
        allow_absolute_url: flags & 4 == 0,
        accept_http_10: flags & 8 != 0,
        default_host_for_http_10: (flags & 16 != 0).then(|| "default.host".to_string()),
        allow_chunked_length: flags & 32 != 0,
        underscores: match flags >> 6 {
            0 => UnderscoreHeaders::Allow,
            1 => UnderscoreHeaders::DropHeader,
            _ => UnderscoreHeaders::RejectRequest,
        },
    }
}

/// The HTTP/1 server codec: pipelined request heads and their bodies (Content-Length or
/// chunked, with trailers), all from one buffer, as a connection would read them.
pub fn h1_request(data: &[u8]) {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let limits = limits(flags);
    let slot = Arc::new(h1::ReaderSlot::default());
    let mut buf = BytesMut::from(wire);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let head = match h1::parse_head(&mut buf, &limits) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        let reader = h1::Reader::new(Box::new(tokio::io::empty()), buf);
        // Boxed, not pinned on the stack: dropping it hands the connection's buffer back.
        let mut body = Box::pin(h1::RequestBody::new(
            reader,
            slot.clone(),
            head.framing,
            limits.max_header_bytes,
        ));
        // The reader reads from an empty stream: every poll is ready.
        while let Poll::Ready(Some(Ok(_))) = body.as_mut().poll_frame(&mut cx) {}
        drop(body);
        match slot.take() {
            Some(r) => buf = r.buf,
            None => return,
        }
    }
}

/// The HTTP/1 client codec: a response head (after a GET or, by the first byte, a HEAD) and
/// its body as framed by the head.
pub fn h1_response(data: &[u8]) {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(wire);
    while let Ok(Some(head)) = h1_client::parse_response(&mut buf, flags & 1 != 0) {
        let mut state = match head.framing {
            h1_client::Framing::Empty => continue,
            h1_client::Framing::Length(n) => BodyState::Length(n),
            h1_client::Framing::Chunked => BodyState::Chunked(ChunkState::Size),
            h1_client::Framing::Eof => BodyState::Eof,
        };
        if !drain(&mut state, &mut buf) || !head.keep_alive {
            return;
        }
    }
}

/// Decode body frames until the body ends (true) or fails or needs more bytes (false).
fn drain(state: &mut BodyState, buf: &mut BytesMut) -> bool {
    loop {
        match state.decode(buf, 8192) {
            Ok(Decoded::Data(_)) => {}
            Ok(Decoded::End(_)) => return true,
            Ok(Decoded::NeedMore) | Err(_) => return false,
        }
    }
}

/// The chunked decoder alone, the input split in two at a point chosen by its first byte (a
/// body that arrives in two reads).
pub fn chunked(data: &[u8]) {
    let Some((&split, wire)) = data.split_first() else {
        return;
    };
    let at = (split as usize).min(wire.len());
    let mut state = BodyState::Chunked(ChunkState::Size);
    let mut buf = BytesMut::from(&wire[..at]);
    drain(&mut state, &mut buf);
    buf.extend_from_slice(&wire[at..]);
    drain(&mut state, &mut buf);
}

/// The configuration decoder: YAML or JSON text (by the first byte) → Bootstrap proto.
pub fn config(data: &[u8]) {
    use crate::config::{descriptors, json, load};
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let format = if flags & 1 == 0 {
        load::Format::Yaml
    } else {
        load::Format::Json
    };
    let Ok(doc) = load::parse_document(text, format, "fuzz") else {
        return;
    };
    thread_local! {
        static POOL: prost_reflect::DescriptorPool = descriptors::envoy_pool();
    }
    POOL.with(|pool| {
        let mut decoder = json::JsonDecoder::new(pool, flags & 2 != 0);
        let _ = json::decode_into::<pb::bootstrap::Bootstrap>(
            &mut decoder,
            "envoy.config.bootstrap.v3.Bootstrap",
            &doc,
            &FieldPath::root(),
        );
    });
}

/// xDS resource translation: the bytes as a Cluster, Listener or RouteConfiguration (by the
/// first byte), through the model's validation.
pub fn xds_resource(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let path = FieldPath::new("fuzz");
    // What an xDS translation reads besides the resource: an empty runtime and static
    // secrets, an SDS registry of its own, and no inputs (a file or variable the resource
    // names is "not read": translation itself never reads one).
    let inputs = std::sync::Arc::new(crate::model::inputs::Inputs::none());
    let cx = crate::model::context::TranslateContext {
        runtime: Default::default(),
        secrets: Default::default(),
        reload: Default::default(),
        sds: std::sync::Arc::new(crate::xds::sds::SdsRegistry::default()),
        inputs: inputs.clone(),
        dns_resolver: Default::default(),
    };
    match kind % 3 {
        0 => {
            if let Ok(c) = pb::cluster::Cluster::decode(bytes) {
                let _ = crate::model::cluster::Cluster::from_proto(&path, &c, &cx);
            }
        }
        1 => {
            if let Ok(l) = pb::listener::Listener::decode(bytes) {
                let _ = crate::model::listener::Listener::from_proto(&path, &l, &cx);
            }
        }
        _ => {
            if let Ok(rc) = pb::route::RouteConfiguration::decode(bytes) {
                let _ = crate::model::route::RouteConfig::from_proto(&path, &rc, 4096, &inputs);
            }
        }
    }
}

/// Istio's TCP metadata exchange: the peer's bytes (a frame, or not) read by `exchange`.
pub fn metadata_exchange(data: &[u8]) {
    use crate::filters::network::metadata_exchange::{MxStats, exchange};
    use crate::telemetry::{stats::Store, tags::TagProducer};
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
    }
    let store = Store::new(TagProducer::envoy_defaults(), None);
    let stats = MxStats::new(&store);
    RT.with(|rt| {
        let Some(rt) = rt else { return };
        rt.block_on(async {
            let mut stream = tokio::io::join(data, tokio::io::sink());
            let within = std::time::Duration::from_secs(1);
            let _ = exchange(&mut stream, b"ours", within, &stats).await;
        });
    });
}

/// Istio's peer metadata: a node's metadata (JSON) made into this workload's header value and
/// exchange frame.
pub fn peer_metadata(data: &[u8]) {
    use crate::filters::{http::peer_metadata::PeerMetadata, network::metadata_exchange};
    let Ok(metadata) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let labels = match metadata.get("LABELS").and_then(|l| l.as_object()) {
        Some(l) => l.keys().cloned().collect(),
        None => Vec::new(),
    };
    let node = crate::model::bootstrap::Node {
        id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".to_string(),
        cluster: "a.default".to_string(),
        metadata,
        region: String::new(),
        zone: String::new(),
    };
    let config = crate::model::hcm::PeerMetadataConfig {
        discovers: true,
        downstream_istio_headers: true,
        upstream_istio_headers: true,
        upstream_propagation: Some(true),
        downstream_propagation: Some(true),
        additional_labels: labels.clone(),
    };
    let _ = PeerMetadata::new(&config, &node);
    let _ = metadata_exchange::frame(&node, &labels);
}

/// A DNS answer as a nameserver would send it: parsed, and its addresses for its own
/// question followed through CNAMEs.
pub fn dns_message(data: &[u8]) {
    use crate::upstream::dns::wire;
    if let Ok(m) = wire::parse(data)
        && let Some((name, qtype)) = &m.question
    {
        let _ = wire::addresses(&m, name, *qtype);
    }
}
