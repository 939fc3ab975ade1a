//! The network filter chain runner: one chain per filter chain, its factories built when the
//! listener starts. On a connection, `on_new_connection` runs in order, then every read from
//! downstream (the bytes listener filters and the metadata exchange already took first) goes
//! through `on_data` in order before the terminal filter (tcp_proxy or the HTTP connection
//! manager) sees it. A `Close` ends the connection before its bytes reach the terminal filter
//! (so before any reaches an upstream), its detail kept for `%CONNECTION_TERMINATION_DETAILS%`.
//! An empty chain costs nothing: the connection's stream is not wrapped.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConnCx, NetFlow, NetworkFilter, NetworkFilterFactory};
use crate::model::listener::NetworkFilter as Model;
use crate::stream_info::{ConnectionInfo, DynamicMetadata, ResponseFlags};

/// What factories are built with.
pub struct BuildCx<'a> {
    pub server: &'a crate::context::ServerContext,
    pub clusters: &'a Arc<crate::upstream::cluster::ClusterManager>,
    /// The listener's `traffic_direction` (Istio's stats pick their reporter from it).
    pub direction: crate::model::listener::Direction,
    /// The terminal tcp_proxy's cluster, when it names one.
    pub tcp_cluster: Option<&'a Arc<str>>,
}

/// A filter chain's network filters, from the translated ones (one arm per model variant).
pub fn build(filters: &[Model], cx: &BuildCx<'_>) -> Vec<Arc<dyn NetworkFilterFactory>> {
    let mut out: Vec<Arc<dyn NetworkFilterFactory>> = Vec::new();
    for f in filters {
        match f {
            Model::LocalRateLimit(c) => out.push(Arc::new(
                super::local_ratelimit::NetworkLocalRateLimitFactory::new(
                    c,
                    &cx.server.store,
                    Arc::clone(&cx.server.runtime),
                ),
            )),
            Model::Noop(n) => crate::filters::http::noop::register(&cx.server.store, n),
            // Run by the listener right after the TLS handshake (it writes this workload's
            // frame and takes the peer's off the stream before anything else reads).
            Model::MetadataExchange(_) => {}
            Model::IstioStats(c) => {
                out.push(Arc::new(super::istio_stats::IstioStatsNetFactory::new(
                    c,
                    cx.direction,
                    cx.server,
                    cx.clusters,
                    cx.tcp_cluster,
                )))
            }
            Model::Rbac(r) => out.push(Arc::new(super::rbac::NetworkRbacFactory::new(
                r.clone(),
                &cx.server.store,
            ))),
        }
    }
    out
}

/// What a connection's filters share: its dynamic metadata, the response flags they set and,
/// once a filter closed it, why.
#[derive(Debug, Default)]
pub struct ConnState {
    pub metadata: DynamicMetadata,
    pub response_flags: ResponseFlags,
    /// Why a filter closed the connection (its local close reason).
    pub closed: Option<Cow<'static, str>>,
    /// What a filter set as the connection's termination details.
    pub termination_details: Option<Cow<'static, str>>,
    /// Set by the terminal tcp_proxy once connected; handed to the filters (`on_upstream`)
    /// before their next hook.
    pub upstream: Option<UpstreamPeer>,
    upstream_delivered: bool,
}

/// The upstream connection, as Istio's stats read it: the exchanged peer and the TLS info.
#[derive(Debug, Clone)]
pub struct UpstreamPeer {
    pub peer: Option<Arc<crate::telemetry::istio::Peer>>,
    pub tls: Option<Arc<crate::transport_sockets::tls::TlsInfo>>,
}

/// The state, shared with the terminal filter (its access log reads it).
pub type SharedState = Arc<Mutex<ConnState>>;

/// One connection's network filters.
pub struct NetChain {
    filters: Vec<Box<dyn NetworkFilter>>,
    /// Some filter has a write hook.
    writes: bool,
    conn: Arc<ConnectionInfo>,
    state: SharedState,
}

/// What a paused filter waits on.
type PausedOn = Pin<Box<dyn Future<Output = NetFlow> + Send>>;

/// Which way bytes go: read from downstream (filters in order) or written to it (reverse).
#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// Where running the chain on some bytes stopped.
enum Step {
    Done,
    Paused(usize, PausedOn),
    Closed(Cow<'static, str>),
}

impl NetChain {
    /// The connection's filters; `None` when there are none (nothing to run).
    pub fn create(
        factories: &[Arc<dyn NetworkFilterFactory>],
        conn: &Arc<ConnectionInfo>,
    ) -> Option<Self> {
        if factories.is_empty() {
            return None;
        }
        let state = SharedState::default();
        let filters: Vec<_> = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut *st;
            let cx = ConnCx {
                connection: conn,
                metadata: &mut st.metadata,
                response_flags: &mut st.response_flags,
                termination_details: &mut st.termination_details,
            };
            factories.iter().filter_map(|f| f.create(&cx)).collect()
        };
        (!filters.is_empty()).then(|| Self {
            writes: filters.iter().any(|f| f.watches_writes()),
            filters,
            conn: conn.clone(),
            state,
        })
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Run `hook` on filters `from..` until one stops: in order for reads and connection
    /// events, in reverse order for writes (`from` counts from the last filter then).
    fn run(
        &mut self,
        dir: Dir,
        from: usize,
        mut hook: impl FnMut(&mut dyn NetworkFilter, &mut ConnCx<'_>) -> NetFlow,
    ) -> Step {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        deliver_upstream(st, &mut self.filters);
        let mut cx = ConnCx {
            connection: &self.conn,
            metadata: &mut st.metadata,
            response_flags: &mut st.response_flags,
            termination_details: &mut st.termination_details,
        };
        let n = self.filters.len();
        for i in from..n {
            let f = match dir {
                Dir::Read => &mut self.filters[i],
                Dir::Write => &mut self.filters[n - 1 - i],
            };
            match hook(&mut **f, &mut cx) {
                NetFlow::Continue => {}
                NetFlow::Close(detail) => return Step::Closed(detail),
                NetFlow::Pause(fut) => return Step::Paused(i, fut),
            }
        }
        Step::Done
    }

    /// Act on a paused filter's outcome and go on from the next one.
    fn resume(
        &mut self,
        dir: Dir,
        i: usize,
        flow: NetFlow,
        hook: impl FnMut(&mut dyn NetworkFilter, &mut ConnCx<'_>) -> NetFlow,
    ) -> Step {
        match flow {
            NetFlow::Continue => self.run(dir, i + 1, hook),
            NetFlow::Close(detail) => Step::Closed(detail),
            NetFlow::Pause(fut) => Step::Paused(i, fut),
        }
    }

    fn closed(&self, detail: Cow<'static, str>) -> Cow<'static, str> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = Some(detail.clone());
        detail
    }

    /// Run a hook over the whole chain, waiting out pauses. `Err(detail)`: a filter closed
    /// the connection.
    async fn run_all(
        &mut self,
        mut hook: impl FnMut(&mut dyn NetworkFilter, &mut ConnCx<'_>) -> NetFlow,
    ) -> Result<(), Cow<'static, str>> {
        let mut step = self.run(Dir::Read, 0, &mut hook);
        loop {
            match step {
                Step::Done => return Ok(()),
                Step::Closed(d) => return Err(self.closed(d)),
                Step::Paused(i, fut) => {
                    let flow = fut.await;
                    step = self.resume(Dir::Read, i, flow, &mut hook);
                }
            }
        }
    }

    /// Istio's metadata exchange read the peer (before `on_new_connection`).
    pub fn on_peer(&mut self, peer: &Arc<crate::telemetry::istio::Peer>) {
        for f in &mut self.filters {
            f.on_peer(peer);
        }
    }

    /// The connection was accepted on the filter chain.
    pub async fn on_new_connection(&mut self) -> Result<(), Cow<'static, str>> {
        self.run_all(|f, cx| f.on_new_connection(cx)).await
    }

    /// Bytes from downstream read before the terminal filter (listener filters, metadata
    /// exchange).
    pub async fn on_data(
        &mut self,
        data: &[u8],
        end_stream: bool,
    ) -> Result<(), Cow<'static, str>> {
        self.run_all(|f, cx| f.on_data(data, end_stream, cx)).await
    }
}

/// Hand the terminal's upstream to the filters, once.
fn deliver_upstream(st: &mut ConnState, filters: &mut [Box<dyn NetworkFilter>]) {
    if st.upstream_delivered {
        return;
    }
    if let Some(up) = &st.upstream {
        st.upstream_delivered = true;
        for f in filters.iter_mut() {
            f.on_upstream(up);
        }
    }
}

impl Drop for NetChain {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        deliver_upstream(st, &mut self.filters);
        let mut cx = ConnCx {
            connection: &self.conn,
            metadata: &mut st.metadata,
            response_flags: &mut st.response_flags,
            termination_details: &mut st.termination_details,
        };
        for f in &mut self.filters {
            f.on_close(&mut cx);
        }
    }
}

/// The error a read returns once a filter closed the connection.
#[derive(Debug, thiserror::Error)]
#[error("closed by a network filter: {0}")]
pub struct ClosedByFilter(pub Cow<'static, str>);

/// Why a filter closed the connection, if this read error says so.
pub fn closed_by_filter(e: &io::Error) -> Option<&Cow<'static, str>> {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<ClosedByFilter>())
        .map(|c| &c.0)
}

/// A downstream stream whose reads go through the network filters first.
pub struct Filtered<S> {
    inner: S,
    chain: NetChain,
    /// Bytes read and held while a filter pauses on them.
    held: BytesMut,
    /// The held read was the end of the stream.
    held_end: bool,
    paused: Option<(usize, PausedOn)>,
    /// Bytes the chain let through, not yet handed to the reader.
    ready: BytesMut,
    /// The end of the stream was let through (after `ready`).
    eof: bool,
    closed: Option<Cow<'static, str>>,
    /// Bytes the write filters let through that the socket has not taken yet.
    out: BytesMut,
    /// A write filter paused on these bytes (`true`: the end of the stream).
    out_paused: Option<(usize, PausedOn, BytesMut, bool)>,
    /// The write filters saw the end of the stream.
    out_ended: bool,
}

impl<S> Filtered<S> {
    pub fn new(inner: S, chain: NetChain) -> Self {
        Self {
            inner,
            chain,
            held: BytesMut::new(),
            held_end: false,
            paused: None,
            ready: BytesMut::new(),
            eof: false,
            closed: None,
            out: BytesMut::new(),
            out_paused: None,
            out_ended: false,
        }
    }

    fn close_error(&self) -> io::Error {
        let detail = self.closed.clone().unwrap_or_default();
        io::Error::new(io::ErrorKind::ConnectionAborted, ClosedByFilter(detail))
    }

    /// Where the chain stopped on the held bytes.
    fn settle(&mut self, step: Step) {
        match step {
            Step::Done => {
                let held = std::mem::take(&mut self.held);
                self.ready.extend_from_slice(&held);
                self.eof |= self.held_end;
            }
            Step::Paused(i, fut) => self.paused = Some((i, fut)),
            Step::Closed(d) => self.closed = Some(self.chain.closed(d)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Filtered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.closed.is_some() {
                return Poll::Ready(Err(this.close_error()));
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some((i, fut)) = this.paused.as_mut() {
                let flow = std::task::ready!(fut.as_mut().poll(cx));
                let i = *i;
                this.paused = None;
                let (held, end) = (std::mem::take(&mut this.held), this.held_end);
                let step = this
                    .chain
                    .resume(Dir::Read, i, flow, |f, c| f.on_data(&held, end, c));
                this.held = held;
                this.settle(step);
                continue;
            }
            if buf.remaining() == 0 {
                // Nothing can be read into a full buffer (not the end of the stream).
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len() == before;
            let step = {
                let data = &buf.filled()[before..];
                this.chain.run(Dir::Read, 0, |f, c| f.on_data(data, end, c))
            };
            if let Step::Done = step {
                if end {
                    this.eof = true;
                }
                return Poll::Ready(Ok(()));
            }
            // Held back until the chain lets them through.
            this.held = BytesMut::from(&buf.filled()[before..]);
            this.held_end = end;
            buf.set_filled(before);
            this.settle(step);
        }
    }
}

impl<S: AsyncWrite + Unpin> Filtered<S> {
    /// Write what the write filters let through and settle a paused write filter, before
    /// anything newer is accepted (so bytes keep their order and each is filtered once).
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.closed.is_some() {
                return Poll::Ready(Err(self.close_error()));
            }
            if !self.out.is_empty() {
                let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out.advance(n);
                continue;
            }
            let Some((i, fut, _, _)) = self.out_paused.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let flow = std::task::ready!(fut.as_mut().poll(cx));
            let i = *i;
            let (_, _, data, end) = self.out_paused.take().expect("paused write");
            let step = self
                .chain
                .resume(Dir::Write, i, flow, |f, c| f.on_write(&data, end, c));
            self.settle_out(step, data, end);
        }
    }

    /// Where the write filters stopped on `data`.
    fn settle_out(&mut self, step: Step, data: BytesMut, end: bool) {
        match step {
            Step::Done => self.out.extend_from_slice(&data),
            Step::Paused(i, fut) => self.out_paused = Some((i, fut, data, end)),
            Step::Closed(d) => self.closed = Some(self.chain.closed(d)),
        }
    }

    /// Run the write filters on `data`; `Ok(true)`: it may go to the socket now.
    fn filter_out(&mut self, data: &[u8], end: bool) -> io::Result<bool> {
        match self
            .chain
            .run(Dir::Write, 0, |f, c| f.on_write(data, end, c))
        {
            Step::Done => Ok(true),
            step => {
                self.settle_out(step, BytesMut::from(data), end);
                match self.closed {
                    Some(_) => Err(self.close_error()),
                    None => Ok(false),
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Filtered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.chain.writes {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        std::task::ready!(this.poll_out(cx))?;
        if buf.is_empty() || !this.filter_out(buf, false)? {
            return Poll::Ready(Ok(buf.len()));
        }
        // The filters have seen these bytes: what the socket does not take now is kept and
        // written before anything newer, never filtered twice.
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => this.out.extend_from_slice(&buf[n.min(buf.len())..]),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => this.out.extend_from_slice(buf),
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(cx))?;
        if !this.out_ended && this.chain.writes {
            this.out_ended = true;
            if !this.filter_out(&[], true)? {
                std::task::ready!(this.poll_out(cx))?;
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.chain.writes {
            return Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs);
        }
        // One slice at a time through the filters (each sees a write as Envoy's onWrite does).
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.poll_write(cx, b),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        !self.chain.writes && self.inner.is_write_vectored()
    }
}

impl<S: crate::io::Split> crate::io::Split for Filtered<S> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug, Clone, Copy)]
    enum Act {
        Continue,
        /// Close when the data contains this.
        CloseOn(&'static str),
        /// Pause on the first data for this long.
        DelayFirst(u64),
        CloseOnConnect,
    }

    #[derive(Debug)]
    struct TestFactory(Act);

    struct TestFilter(Act, bool);

    impl NetworkFilterFactory for TestFactory {
        fn create(&self, _cx: &ConnCx<'_>) -> Option<Box<dyn NetworkFilter>> {
            Some(Box::new(TestFilter(self.0, false)))
        }
    }

    impl NetworkFilter for TestFilter {
        fn on_new_connection(&mut self, cx: &mut ConnCx<'_>) -> NetFlow {
            cx.metadata.set("test", "connected", true.into());
            match self.0 {
                Act::CloseOnConnect => NetFlow::Close("test_refused".into()),
                _ => NetFlow::Continue,
            }
        }

        fn on_data(&mut self, data: &[u8], _end: bool, _cx: &mut ConnCx<'_>) -> NetFlow {
            match self.0 {
                Act::CloseOn(s) if data.windows(s.len()).any(|w| w == s.as_bytes()) => {
                    NetFlow::Close("test_denied".into())
                }
                Act::DelayFirst(ms) if !self.1 => {
                    self.1 = true;
                    NetFlow::Pause(Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        NetFlow::Continue
                    }))
                }
                _ => NetFlow::Continue,
            }
        }
    }

    fn conn() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            requested_server_name: None,
            application_protocols: Vec::new(),
            transport_protocol: "raw_buffer",
            tls: None,
        })
    }

    fn chain(acts: &[Act]) -> NetChain {
        let f: Vec<Arc<dyn NetworkFilterFactory>> = acts
            .iter()
            .map(|a| Arc::new(TestFactory(*a)) as Arc<dyn NetworkFilterFactory>)
            .collect();
        NetChain::create(&f, &conn()).expect("filters")
    }

    #[test]
    fn an_empty_chain_is_none() {
        assert!(NetChain::create(&[], &conn()).is_none());
    }

    #[tokio::test]
    async fn new_connection_close_is_reported_with_its_detail() {
        let mut c = chain(&[Act::Continue, Act::CloseOnConnect]);
        let st = c.state();
        assert_eq!(c.on_new_connection().await.unwrap_err(), "test_refused");
        let st = st.lock().unwrap();
        assert_eq!(st.closed.as_deref(), Some("test_refused"));
        assert_eq!(
            st.metadata.namespace("test").unwrap()["connected"],
            serde_json::Value::Bool(true)
        );
    }

    #[tokio::test]
    async fn data_passes_until_a_filter_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let c = chain(&[Act::Continue, Act::CloseOn("deny")]);
        let st = c.state();
        let mut s = Filtered::new(server, c);
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        client.write_all(b"deny me").await.unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(closed_by_filter(&e).map(|d| &**d), Some("test_denied"));
        assert_eq!(st.lock().unwrap().closed.as_deref(), Some("test_denied"));
        // Closed for good.
        assert!(s.read(&mut buf).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_the_bytes_then_lets_them_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = Filtered::new(server, chain(&[Act::DelayFirst(5_000), Act::Continue]));
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        let started = tokio::time::Instant::now();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abc");
        assert!(started.elapsed() >= Duration::from_millis(5_000));
    }

    /// Records its writes into a shared log; closes or pauses as told.
    #[derive(Debug, Clone)]
    struct WriteProbe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        close_on: Option<&'static str>,
        delay_first_ms: Option<u64>,
    }

    impl NetworkFilterFactory for WriteProbe {
        fn create(&self, _cx: &ConnCx<'_>) -> Option<Box<dyn NetworkFilter>> {
            Some(Box::new(self.clone()))
        }
    }

    impl NetworkFilter for WriteProbe {
        fn on_write(&mut self, data: &[u8], end: bool, _cx: &mut ConnCx<'_>) -> NetFlow {
            let text = String::from_utf8_lossy(data);
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:{text}:{end}", self.name));
            if let Some(ms) = self.delay_first_ms.take() {
                return NetFlow::Pause(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    NetFlow::Continue
                }));
            }
            match self.close_on {
                Some(s) if text.contains(s) => NetFlow::Close("test_write_denied".into()),
                _ => NetFlow::Continue,
            }
        }

        fn watches_writes(&self) -> bool {
            true
        }
    }

    fn probes(specs: &[WriteProbe]) -> NetChain {
        let f: Vec<Arc<dyn NetworkFilterFactory>> = specs
            .iter()
            .map(|p| Arc::new(p.clone()) as Arc<dyn NetworkFilterFactory>)
            .collect();
        NetChain::create(&f, &conn()).expect("filters")
    }

    fn probe(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> WriteProbe {
        WriteProbe {
            name,
            log: log.clone(),
            close_on: None,
            delay_first_ms: None,
        }
    }

    #[tokio::test]
    async fn writes_run_the_filters_in_reverse_order_once_each() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut client, server) = tokio::io::duplex(4);
        let mut s = Filtered::new(server, probes(&[probe("a", &log), probe("b", &log)]));
        // Larger than the pipe: the socket takes it in parts, the filters see it once.
        let writer = tokio::spawn(async move {
            s.write_all(b"hello world").await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, b"hello world");
        assert_eq!(
            *log.lock().unwrap(),
            [
                "b:hello world:false",
                "a:hello world:false",
                "b::true",
                "a::true"
            ]
        );
    }

    #[tokio::test]
    async fn a_write_filter_closes_the_connection() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut client, server) = tokio::io::duplex(1024);
        let mut denier = probe("a", &log);
        denier.close_on = Some("secret");
        let c = probes(&[denier]);
        let st = c.state();
        let mut s = Filtered::new(server, c);
        s.write_all(b"fine ").await.unwrap();
        let e = s.write_all(b"a secret").await.unwrap_err();
        assert_eq!(
            closed_by_filter(&e).map(|d| &**d),
            Some("test_write_denied")
        );
        assert_eq!(
            st.lock().unwrap().closed.as_deref(),
            Some("test_write_denied")
        );
        assert!(s.write_all(b"more").await.is_err());
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"fine ");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_write_keeps_its_bytes_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut client, server) = tokio::io::duplex(1024);
        let mut slow = probe("b", &log);
        slow.delay_first_ms = Some(3_000);
        let mut s = Filtered::new(server, probes(&[probe("a", &log), slow]));
        let started = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            s.write_all(b"one ").await.unwrap();
            s.write_all(b"two").await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, b"one two");
        assert!(started.elapsed() >= Duration::from_millis(3_000));
        // The paused filter (last configured, so first on writes) resumed into the next one.
        assert_eq!(
            log.lock().unwrap()[..3],
            ["b:one :false", "a:one :false", "b:two:false"]
        );
    }
}
