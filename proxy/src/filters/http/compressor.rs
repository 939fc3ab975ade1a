//! `envoy.filters.http.compressor` at runtime: the compressor filters of one connection
//! manager choose an encoding from the request's `accept-encoding` (highest q-value; equal
//! q-values go to `choose_first`, then to chain order), then compress the response body as it
//! streams (each data frame flushed, as Envoy does) when the response qualifies.
//! Stats: `http.<prefix>.compressor.<library name>.<library>.[response.]*`.

use crate::http::body::{Body, BodyError};
use crate::model::compressor::{BrotliMode, CompressorConfig, Library, ResponseConfig};
use crate::telemetry::stats::{Counter, Store};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Envoy's compressor stats (per filter).
#[derive(Debug)]
struct CompressorStats {
    compressed: Arc<Counter>,
    not_compressed: Arc<Counter>,
    total_uncompressed_bytes: Arc<Counter>,
    total_compressed_bytes: Arc<Counter>,
    content_length_too_small: Arc<Counter>,
    no_accept_header: Arc<Counter>,
    header_identity: Arc<Counter>,
    header_compressor_used: Arc<Counter>,
    header_compressor_overshadowed: Arc<Counter>,
    header_wildcard: Arc<Counter>,
    header_not_valid: Arc<Counter>,
    not_compressed_etag: Arc<Counter>,
}

/// One compressor filter with response compression enabled.
#[derive(Debug)]
struct Compressor {
    library: Library,
    response: ResponseConfig,
    choose_first: bool,
    stats: Arc<CompressorStats>,
}

/// The compressor filters of a connection manager, in chain order.
#[derive(Debug, Default)]
pub struct CompressorChain {
    filters: Vec<Compressor>,
    remove_accept_encoding: bool,
}

/// What the request side decided: the index of the compressor to use, if any.
pub type Choice = Option<u8>;

// === impl CompressorChain ===

impl CompressorChain {
    /// `hcm_prefix`: the connection manager's `stat_prefix`.
    pub fn new<'a>(
        configs: impl Iterator<Item = &'a CompressorConfig>,
        store: &Arc<Store>,
        hcm_prefix: &str,
    ) -> Self {
        let mut chain = Self::default();
        for c in configs {
            let Some(response) = &c.response else {
                continue;
            };
            let p = format!(
                "http.{hcm_prefix}.compressor.{}.{}.{}",
                c.library_name,
                c.library.stat_prefix(),
                if c.direction_in_stats {
                    "response."
                } else {
                    ""
                }
            );
            let n = |s: &str| store.counter(&format!("{p}{s}"));
            chain.remove_accept_encoding |= response.remove_accept_encoding_header;
            chain.filters.push(Compressor {
                library: c.library,
                response: response.clone(),
                choose_first: c.choose_first,
                stats: Arc::new(CompressorStats {
                    compressed: n("compressed"),
                    not_compressed: n("not_compressed"),
                    total_uncompressed_bytes: n("total_uncompressed_bytes"),
                    total_compressed_bytes: n("total_compressed_bytes"),
                    content_length_too_small: n("content_length_too_small"),
                    no_accept_header: n("no_accept_header"),
                    header_identity: n("header_identity"),
                    header_compressor_used: n("header_compressor_used"),
                    header_compressor_overshadowed: n("header_compressor_overshadowed"),
                    header_wildcard: n("header_wildcard"),
                    header_not_valid: n("header_not_valid"),
                    not_compressed_etag: n("not_compressed_etag"),
                }),
            });
        }
        chain
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Request side: choose by `accept-encoding` and count each filter's `header_*` stat.
    pub fn on_request(&self, headers: &mut HeaderMap) -> Choice {
        if self.filters.is_empty() {
            return None;
        }
        let accept = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if self.remove_accept_encoding {
            headers.remove(header::ACCEPT_ENCODING);
        }
        let Some(accept) = accept else {
            for f in &self.filters {
                f.stats.no_accept_header.inc();
            }
            return None;
        };
        let codings = parse_accept_encoding(&accept);
        let identity = codings
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case("identity"))
            .map(|(_, q)| *q);
        // (q, via wildcard) for each filter.
        let offers: Vec<Option<(f32, bool)>> = self
            .filters
            .iter()
            .map(|f| q_for(&codings, f.library.encoding()))
            .collect();
        let best = offers
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.filter(|(q, _)| *q > 0.0).map(|(q, w)| (i, q, w)))
            .min_by(|a, b| {
                b.1.total_cmp(&a.1)
                    .then(
                        self.filters[b.0]
                            .choose_first
                            .cmp(&self.filters[a.0].choose_first),
                    )
                    .then(a.0.cmp(&b.0))
            });
        match best {
            Some((i, q, wildcard)) if identity.is_none_or(|iq| q >= iq) => {
                for (j, f) in self.filters.iter().enumerate() {
                    if j == i {
                        if wildcard {
                            f.stats.header_wildcard.inc();
                        } else {
                            f.stats.header_compressor_used.inc();
                        }
                    } else {
                        f.stats.header_compressor_overshadowed.inc();
                    }
                }
                Some(i as u8)
            }
            _ => {
                let identity_ok = identity.is_some_and(|q| q > 0.0);
                for f in &self.filters {
                    if identity_ok {
                        f.stats.header_identity.inc();
                    } else {
                        f.stats.header_not_valid.inc();
                    }
                }
                None
            }
        }
    }

    /// Response side, headers: whether the chosen filter compresses this response (its
    /// headers changed accordingly); `Vary` names `Accept-Encoding` whenever some filter could
    /// compress it. `end_stream`: the response has no body.
    pub fn on_response_headers(
        &self,
        choice: Choice,
        parts: &mut http::response::Parts,
        end_stream: bool,
    ) -> Option<usize> {
        let mut compressible_by_any = false;
        let mut compress_with = None;
        for (i, f) in self.filters.iter().enumerate() {
            let chosen = choice == Some(i as u8);
            let verdict = if end_stream {
                Verdict::No
            } else {
                f.response.verdict(parts.status.as_u16(), &parts.headers)
            };
            match verdict {
                Verdict::Yes => {
                    compressible_by_any = true;
                    if chosen {
                        compress_with = Some(i);
                        continue;
                    }
                }
                Verdict::TooSmall if chosen => f.stats.content_length_too_small.inc(),
                Verdict::Etag if chosen => f.stats.not_compressed_etag.inc(),
                _ => {}
            }
            f.stats.not_compressed.inc();
        }
        if compressible_by_any {
            add_vary(&mut parts.headers);
        }
        let f = &self.filters[compress_with?];
        f.stats.compressed.inc();
        let h = &mut parts.headers;
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(f.library.encoding()),
        );
        if let Some(etag) = h.get(header::ETAG).cloned()
            && !etag.as_bytes().starts_with(b"W/")
        {
            if f.response.weaken_etag_on_compress {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(etag.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&weak) {
                    h.insert(header::ETAG, v);
                }
            } else {
                h.remove(header::ETAG);
            }
        }
        compress_with
    }

    /// Response side, body: compressed by filter `i` as it streams.
    pub fn compress_body(&self, i: usize, body: Body) -> Body {
        let f = &self.filters[i];
        let encoder = Encoder::new(&f.library);
        let body = CompressedBody {
            inner: body,
            encoder: Some(encoder),
            chunk_size: f.library.chunk_size(),
            pending: Bytes::new(),
            trailers: None,
            ended: false,
            uncompressed: 0,
            compressed: 0,
            stats: f.stats.clone(),
        };
        Body::Boxed(Box::pin(body))
    }

    /// Both response sides at once (tests).
    #[cfg(test)]
    pub fn on_response(&self, choice: Choice, resp: http::Response<Body>) -> http::Response<Body> {
        let (mut parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        match self.on_response_headers(choice, &mut parts, end) {
            Some(i) => http::Response::from_parts(parts, self.compress_body(i, body)),
            None => http::Response::from_parts(parts, body),
        }
    }
}

// === the chain's filter ===

/// `envoy.filters.http.compressor` on the chain: the compressor filters of a connection manager
/// decide together (the encoding is chosen among all of them), so they run as one filter at
/// the first one's place, named after it.
#[derive(Debug)]
pub struct CompressorFactory {
    name: String,
    chain: Arc<CompressorChain>,
}

impl CompressorFactory {
    pub fn new(name: String, chain: CompressorChain) -> Self {
        Self {
            name,
            chain: Arc::new(chain),
        }
    }
}

impl super::HttpFilterFactory for CompressorFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        _per_route: Option<&crate::model::per_filter::PerFilterConfig>,
        _cx: &super::StreamCx<'_>,
    ) -> Option<Box<dyn super::HttpFilter>> {
        if self.chain.is_empty() {
            return None;
        }
        Some(Box::new(CompressorFilter {
            chain: self.chain.clone(),
            choice: None,
            compress_with: None,
        }))
    }
}

/// One stream's compression: the choice made on the request, the compressor the response got.
struct CompressorFilter {
    chain: Arc<CompressorChain>,
    choice: Choice,
    compress_with: Option<usize>,
}

impl super::HttpFilter for CompressorFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        _cx: &mut super::StreamCx<'_>,
    ) -> super::Flow {
        self.choice = self.chain.on_request(&mut req.headers);
        super::Flow::Continue
    }

    fn on_response_headers(
        &mut self,
        resp: &mut http::response::Parts,
        end_stream: bool,
        _cx: &mut super::StreamCx<'_>,
    ) -> super::Flow {
        self.compress_with = self
            .chain
            .on_response_headers(self.choice, resp, end_stream);
        super::Flow::Continue
    }

    fn on_response_body(&mut self, body: Body, _cx: &mut super::StreamCx<'_>) -> Body {
        match self.compress_with {
            Some(i) => self.chain.compress_body(i, body),
            None => body,
        }
    }
}

enum Verdict {
    Yes,
    No,
    TooSmall,
    Etag,
}

// === impl ResponseConfig (the response-side conditions) ===

impl ResponseConfig {
    fn verdict(&self, status: u16, h: &HeaderMap) -> Verdict {
        if self.uncompressible_response_codes.contains(&status) {
            return Verdict::No;
        }
        if h.contains_key(header::CONTENT_ENCODING) {
            return Verdict::No;
        }
        if h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        }) {
            return Verdict::No;
        }
        if h.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',').any(|t| {
                    matches!(
                        t.trim().to_ascii_lowercase().as_str(),
                        "gzip" | "deflate" | "br" | "zstd" | "compress"
                    )
                })
            })
        }) {
            return Verdict::No;
        }
        let media = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if !media.is_some_and(|m| self.content_types.contains(&m)) {
            return Verdict::No;
        }
        if let Some(len) = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len < self.min_content_length
        {
            return Verdict::TooSmall;
        }
        if self.disable_on_etag_header && h.contains_key(header::ETAG) {
            return Verdict::Etag;
        }
        Verdict::Yes
    }
}

fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if present {
        return;
    }
    match h.get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(existing) => {
            if let Ok(v) = HeaderValue::from_str(&format!("{existing}, Accept-Encoding")) {
                h.insert(header::VARY, v);
            }
        }
        None => {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// `gzip;q=0.8, br, *;q=0.1` → [(coding, q)]; a malformed q-value counts as 0.
fn parse_accept_encoding(v: &str) -> Vec<(&str, f32)> {
    v.split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim();
            if coding.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for p in parts {
                if let Some((k, val)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = val
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
            Some((coding, q))
        })
        .collect()
}

/// The q-value an encoding gets: its own entry, else the wildcard's.
fn q_for(codings: &[(&str, f32)], encoding: &str) -> Option<(f32, bool)> {
    if let Some((_, q)) = codings
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(encoding))
    {
        return Some((*q, false));
    }
    codings
        .iter()
        .find(|(c, _)| *c == "*")
        .map(|(_, q)| (*q, true))
}

// === Encoder ===

/// A streaming compressor writing into a buffer that is drained after every step.
enum Encoder {
    Gzip(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Brotli(_) => "Encoder::Brotli",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    fn new(lib: &Library) -> Self {
        match *lib {
            Library::Gzip {
                level, window_bits, ..
            } => Encoder::Gzip(flate2::write::ZlibEncoder::new_with_compress(
                Vec::new(),
                flate2::Compress::new_gzip(flate2::Compression::new(level), window_bits),
            )),
            Library::Brotli {
                quality,
                window_bits,
                input_block_bits,
                mode,
                disable_literal_context_modeling,
                chunk_size,
            } => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    mode: match mode {
                        BrotliMode::Generic => {
                            brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_GENERIC
                        }
                        BrotliMode::Text => {
                            brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_TEXT
                        }
                        BrotliMode::Font => {
                            brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_FONT
                        }
                    },
                    disable_literal_context_modeling: i32::from(disable_literal_context_modeling),
                    ..Default::default()
                };
                Encoder::Brotli(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    chunk_size,
                    &params,
                )))
            }
            Library::Zstd {
                level,
                checksum,
                strategy,
                ..
            } => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)
                    .expect("zstd encoder with a validated level");
                let _ = e.include_checksum(checksum);
                if let Some(s) = zstd_strategy(strategy) {
                    let _ = e.set_parameter(zstd::stream::raw::CParameter::Strategy(s));
                }
                Encoder::Zstd(e)
            }
        }
    }

    /// Compress `input` and flush, so the peer can decode everything sent so far.
    fn write_flush(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Brotli(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zstd(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// End the compressed stream.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

fn zstd_strategy(s: u32) -> Option<zstd::zstd_safe::Strategy> {
    use zstd::zstd_safe::Strategy as S;
    Some(match s {
        1 => S::ZSTD_fast,
        2 => S::ZSTD_dfast,
        3 => S::ZSTD_greedy,
        4 => S::ZSTD_lazy,
        5 => S::ZSTD_lazy2,
        6 => S::ZSTD_btlazy2,
        7 => S::ZSTD_btopt,
        8 => S::ZSTD_btultra,
        9 => S::ZSTD_btultra2,
        _ => return None,
    })
}

// === CompressedBody ===

/// The response body, compressed as it streams; output leaves in frames of at most the
/// library's `chunk_size`.
struct CompressedBody {
    inner: Body,
    encoder: Option<Encoder>,
    chunk_size: usize,
    pending: Bytes,
    trailers: Option<HeaderMap>,
    ended: bool,
    uncompressed: u64,
    compressed: u64,
    stats: Arc<CompressorStats>,
}

impl CompressedBody {
    fn take_chunk(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let n = self.pending.len().min(self.chunk_size);
        Some(self.pending.split_to(n))
    }

    fn finish(&mut self) -> Result<(), BodyError> {
        if let Some(enc) = self.encoder.take() {
            let out = enc.finish()?;
            self.push(out);
            self.stats.total_uncompressed_bytes.add(self.uncompressed);
            self.stats.total_compressed_bytes.add(self.compressed);
        }
        Ok(())
    }

    fn push(&mut self, out: Vec<u8>) {
        if out.is_empty() {
            return;
        }
        self.compressed += out.len() as u64;
        if self.pending.is_empty() {
            self.pending = Bytes::from(out);
        } else {
            let mut b = BytesMut::from(&self.pending[..]);
            b.extend_from_slice(&out);
            self.pending = b.freeze();
        }
    }
}

impl HttpBody for CompressedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.take_chunk() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.ended {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.uncompressed += data.len() as u64;
                        if let Some(enc) = this.encoder.as_mut() {
                            let out = enc.write_flush(&data)?;
                            this.push(out);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                        this.finish()?;
                        this.ended = true;
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.finish()?;
                    this.ended = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn config(lib: Library, choose_first: bool) -> CompressorConfig {
        CompressorConfig {
            library_name: lib.stat_prefix().to_string(),
            library: lib,
            response: Some(ResponseConfig {
                min_content_length: 30,
                content_types: vec!["text/plain".into(), "application/json".into()],
                disable_on_etag_header: false,
                weaken_etag_on_compress: false,
                remove_accept_encoding_header: false,
                uncompressible_response_codes: vec![206],
            }),
            direction_in_stats: true,
            choose_first,
        }
    }

    fn gzip() -> Library {
        Library::Gzip {
            level: 6,
            window_bits: 12,
            chunk_size: 4096,
        }
    }
    fn brotli() -> Library {
        Library::Brotli {
            quality: 3,
            window_bits: 18,
            input_block_bits: 24,
            mode: BrotliMode::Generic,
            disable_literal_context_modeling: false,
            chunk_size: 4096,
        }
    }
    fn zstd() -> Library {
        Library::Zstd {
            level: 3,
            checksum: true,
            strategy: 0,
            chunk_size: 4096,
        }
    }

    fn chain(libs: &[(Library, bool)]) -> (CompressorChain, Arc<Store>) {
        let store = Arc::new(Store::default());
        let cfgs: Vec<_> = libs.iter().map(|(l, f)| config(*l, *f)).collect();
        (CompressorChain::new(cfgs.iter(), &store, "p"), store)
    }

    fn choose(c: &CompressorChain, accept: Option<&str>) -> Choice {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        c.on_request(&mut h)
    }

    #[test]
    fn choice_follows_q_values_then_choose_first_then_order() {
        let (c, store) = chain(&[(brotli(), false), (zstd(), false), (gzip(), false)]);
        assert_eq!(choose(&c, Some("gzip, br")), Some(0));
        assert_eq!(choose(&c, Some("gzip;q=1, br;q=0.5")), Some(2));
        assert_eq!(choose(&c, Some("*")), Some(0));
        assert_eq!(choose(&c, Some("gzip;q=0, *;q=1")), Some(0));
        assert_eq!(choose(&c, Some("*;q=0, gzip;q=1")), Some(2));
        assert_eq!(choose(&c, Some("identity")), None);
        assert_eq!(choose(&c, Some("deflate")), None);
        assert_eq!(choose(&c, Some("gzip;q=0.5, identity;q=1")), None);
        assert_eq!(choose(&c, None), None);
        let v = |n: &str| {
            store
                .counter(&format!("http.p.compressor.gzip.gzip.response.{n}"))
                .value()
        };
        assert_eq!(v("header_compressor_used"), 2);
        assert_eq!(v("header_compressor_overshadowed"), 3);
        assert_eq!(v("header_identity"), 2);
        assert_eq!(v("header_not_valid"), 1);
        assert_eq!(v("no_accept_header"), 1);
        let (c, _) = chain(&[(gzip(), false), (brotli(), true)]);
        assert_eq!(choose(&c, Some("gzip, br")), Some(1));
    }

    async fn roundtrip(lib: Library, chunks: &[&str]) -> (HeaderMap, Vec<u8>) {
        let (c, _) = chain(&[(lib, false)]);
        let choice = choose(&c, Some(lib.encoding()));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, BodyError>(Frame::data(b)), rx))
        });
        let body = Body::Boxed(Box::pin(http_body_util::StreamBody::new(stream)));
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::ETAG, "\"abc\"")
            .body(body)
            .unwrap();
        let resp = c.on_response(choice, resp);
        let (parts, body) = resp.into_parts();
        for ch in chunks {
            tx.send(Bytes::from(ch.to_string())).await.unwrap();
        }
        drop(tx);
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.headers, bytes.to_vec())
    }

    fn decode(enc: &str, data: &[u8]) -> String {
        let mut out = String::new();
        match enc {
            "gzip" => {
                flate2::read::GzDecoder::new(data)
                    .read_to_string(&mut out)
                    .unwrap();
            }
            "br" => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_string(&mut out)
                    .unwrap();
            }
            "zstd" => {
                out = String::from_utf8(zstd::decode_all(data).unwrap()).unwrap();
            }
            _ => unreachable!(),
        }
        out
    }

    #[tokio::test]
    async fn every_library_round_trips_a_streamed_body() {
        let chunks = [
            "hello hello hello hello hello hello ",
            "world ",
            "again and again",
        ];
        for lib in [gzip(), brotli(), zstd()] {
            let (h, bytes) = roundtrip(lib, &chunks).await;
            assert_eq!(h[header::CONTENT_ENCODING], lib.encoding());
            assert_eq!(h[header::VARY], "Accept-Encoding");
            assert!(!h.contains_key(header::ETAG), "a strong etag is dropped");
            assert_eq!(decode(lib.encoding(), &bytes), chunks.concat());
        }
    }

    #[test]
    fn response_conditions() {
        let (c, store) = chain(&[(gzip(), false)]);
        let run = |status: u16, headers: &[(&str, &str)], body: &'static str| {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let resp = c.on_response(Some(0), b.body(Body::full(body)).unwrap());
            resp.headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v == "gzip")
        };
        let long = "0123456789012345678901234567890123456789";
        assert!(run(
            200,
            &[("content-type", "text/plain"), ("content-length", "40")],
            long
        ));
        assert!(!run(
            200,
            &[("content-type", "image/png"), ("content-length", "40")],
            long
        ));
        assert!(!run(
            200,
            &[("content-type", "text/plain"), ("content-length", "10")],
            "0123456789"
        ));
        assert!(!run(
            200,
            &[("content-type", "text/plain"), ("content-encoding", "br")],
            long
        ));
        assert!(!run(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "public, no-transform")
            ],
            long
        ));
        assert!(!run(206, &[("content-type", "text/plain")], long));
        assert!(!run(204, &[("content-type", "text/plain")], ""));
        let v = |n: &str| {
            store
                .counter(&format!("http.p.compressor.gzip.gzip.response.{n}"))
                .value()
        };
        assert_eq!(v("compressed"), 1);
        assert_eq!(v("not_compressed"), 6);
        assert_eq!(v("content_length_too_small"), 1);
    }
}
