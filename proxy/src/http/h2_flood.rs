//! HTTP/2 flood protection, as Envoy's `http2_protocol_options` limits define it for downstream
//! connections (Envoy's `ProtocolConstraints`).
//!
//! hyper's HTTP/2 server never learns about these limits: [`FloodGuard`] sits between the
//! socket and hyper, reads the frame headers in both directions and fails the connection when
//! a limit is exceeded.
//!
//! - Outbound: the frames hyper handed over that the socket has not taken yet are queued here.
//!   While nothing is queued, writes go straight to the socket and a frame it takes at once is
//!   neither copied nor counted as queued (only DATA frames sent are counted, for the
//!   WINDOW_UPDATE budget); once something is queued, later writes queue behind it, in order,
//!   until the socket has taken it all. More than `max_outbound_frames` queued,
//!   or more than `max_outbound_control_frames` among them (PING and SETTINGS acknowledgements,
//!   RST_STREAM), is a flood: the peer is not reading. Past the connection's buffer limit the
//!   guard pushes back on hyper instead of queueing (what Envoy's write-buffer watermark does).
//! - Inbound: consecutive HEADERS/CONTINUATION/DATA frames without payload or end of stream,
//!   PRIORITY frames beyond a budget per opened stream, WINDOW_UPDATE frames beyond a budget
//!   per DATA frame sent. A flood frame never reaches hyper.
//!
//! On a flood the `http2.*` counter increments and the connection closes without flushing.

use crate::model::hcm::FloodLimits;
use crate::telemetry::stats::{Counter, Store};
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: u64 = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;

/// Envoy's `http2.*` flood counters (root scope, shared by every connection manager).
#[derive(Debug)]
pub struct FloodStats {
    outbound_flood: Arc<Counter>,
    outbound_control_flood: Arc<Counter>,
    inbound_empty_frames_flood: Arc<Counter>,
    inbound_priority_frames_flood: Arc<Counter>,
    inbound_window_update_frames_flood: Arc<Counter>,
}

impl FloodStats {
    pub fn new(store: &Arc<Store>) -> Self {
        let c = |n: &str| store.counter(&format!("http2.{n}"));
        Self {
            outbound_flood: c("outbound_flood"),
            outbound_control_flood: c("outbound_control_flood"),
            inbound_empty_frames_flood: c("inbound_empty_frames_flood"),
            inbound_priority_frames_flood: c("inbound_priority_frames_flood"),
            inbound_window_update_frames_flood: c("inbound_window_update_frames_flood"),
        }
    }

    fn count(&self, flood: Flood) {
        match flood {
            Flood::Outbound => &self.outbound_flood,
            Flood::OutboundControl => &self.outbound_control_flood,
            Flood::InboundEmpty => &self.inbound_empty_frames_flood,
            Flood::InboundPriority => &self.inbound_priority_frames_flood,
            Flood::InboundWindowUpdate => &self.inbound_window_update_frames_flood,
        }
        .inc();
    }
}

/// Which limit a peer exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Outbound,
    OutboundControl,
    InboundEmpty,
    InboundPriority,
    InboundWindowUpdate,
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flood::Outbound => "Too many frames in the outbound queue.",
            Flood::OutboundControl => "Too many control frames in the outbound queue.",
            Flood::InboundEmpty => "Too many consecutive frames with an empty payload",
            Flood::InboundPriority => "Too many PRIORITY frames",
            Flood::InboundWindowUpdate => "Too many WINDOW_UPDATE frames",
        })
    }
}

impl std::error::Error for Flood {}

/// A frame header as the accounting needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// Padding bytes including the pad-length byte (padded DATA and HEADERS).
    pub pad: u32,
}

/// Finds the frame headers in one direction of the byte stream, across reads/writes of any
/// size: payloads are skipped, not buffered.
#[derive(Debug)]
pub struct Scanner {
    /// Bytes still to skip (payload, or the client preface).
    skip: u64,
    head: [u8; FRAME_HEADER_LEN + 1],
    have: usize,
    /// 9, or 10 when a padded frame's pad-length byte is needed too.
    need: usize,
    /// Stream offset of the next byte fed.
    pos: u64,
}

impl Scanner {
    /// `skip`: bytes before the first frame (the client preface inbound).
    pub fn new(skip: u64) -> Self {
        Self {
            skip,
            head: [0; FRAME_HEADER_LEN + 1],
            have: 0,
            need: FRAME_HEADER_LEN,
            pos: 0,
        }
    }

    /// Feed the next bytes; `on_frame` gets each frame header and the stream offset just past
    /// its frame. Stops at the first error `on_frame` returns.
    pub fn feed<E>(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(FrameHead, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                self.pos += n;
                data = &data[n as usize..];
                continue;
            }
            let take = (self.need - self.have).min(data.len());
            self.head[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            self.pos += take as u64;
            data = &data[take..];
            if self.have < self.need {
                continue;
            }
            let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
            let (kind, flags) = (self.head[3], self.head[4]);
            if self.need == FRAME_HEADER_LEN
                && flags & FLAG_PADDED != 0
                && matches!(kind, DATA | HEADERS)
                && len > 0
            {
                self.need += 1;
                continue;
            }
            let pad = if self.need > FRAME_HEADER_LEN {
                u32::from(self.head[FRAME_HEADER_LEN]) + 1
            } else {
                0
            };
            let rest = u64::from(len) - (self.need - FRAME_HEADER_LEN) as u64;
            self.have = 0;
            self.need = FRAME_HEADER_LEN;
            self.skip = rest;
            let head = FrameHead {
                len,
                kind,
                flags,
                pad,
            };
            on_frame(head, self.pos + rest)?;
        }
        Ok(())
    }
}

/// Envoy's accounting of one connection against its limits.
#[derive(Debug)]
pub struct Constraints {
    limits: FloodLimits,
    outbound_frames: u64,
    outbound_control_frames: u64,
    outbound_data_frames: u64,
    consecutive_empty: u64,
    inbound_streams: u64,
    inbound_priority: u64,
    inbound_window_update: u64,
    violated: Option<Flood>,
}

impl Constraints {
    pub fn new(limits: FloodLimits) -> Self {
        Self {
            limits,
            outbound_frames: 0,
            outbound_control_frames: 0,
            outbound_data_frames: 0,
            consecutive_empty: 0,
            inbound_streams: 0,
            inbound_priority: 0,
            inbound_window_update: 0,
            violated: None,
        }
    }

    /// A frame received. A violation is reported once; later calls return it again.
    pub fn inbound(&mut self, h: FrameHead) -> Result<(), Flood> {
        self.check()?;
        match h.kind {
            HEADERS | CONTINUATION | DATA => {
                if h.kind != DATA && h.flags & FLAG_END_HEADERS != 0 {
                    self.inbound_streams += 1;
                }
                let end_stream = h.kind != CONTINUATION && h.flags & FLAG_END_STREAM != 0;
                if h.len.saturating_sub(h.pad) == 0 && !end_stream {
                    self.consecutive_empty += 1;
                } else {
                    self.consecutive_empty = 0;
                }
            }
            PRIORITY => self.inbound_priority += 1,
            WINDOW_UPDATE => self.inbound_window_update += 1,
            _ => {}
        }
        let l = &self.limits;
        let flood = if self.consecutive_empty
            > u64::from(l.max_consecutive_inbound_frames_with_empty_payload)
        {
            Flood::InboundEmpty
        } else if self.inbound_priority
            > u64::from(l.max_inbound_priority_frames_per_stream) * (1 + self.inbound_streams)
        {
            Flood::InboundPriority
        } else if self.inbound_window_update
            > 1 + 2
                * (self.inbound_streams
                    + u64::from(l.max_inbound_window_update_frames_per_data_frame_sent)
                        * self.outbound_data_frames)
        {
            Flood::InboundWindowUpdate
        } else {
            return Ok(());
        };
        Err(self.violate(flood))
    }

    /// A frame the socket took as soon as it was handed over: never queued, so it only counts
    /// as a DATA frame sent (the WINDOW_UPDATE budget).
    pub fn sent(&mut self, h: FrameHead) {
        if h.kind == DATA {
            self.outbound_data_frames += 1;
        }
    }

    /// A frame queued for the peer; returns whether it is a flood-monitored control frame.
    pub fn queued(&mut self, h: FrameHead) -> Result<bool, Flood> {
        self.check()?;
        let control =
            (matches!(h.kind, PING | SETTINGS) && h.flags & FLAG_ACK != 0) || h.kind == RST_STREAM;
        self.outbound_frames += 1;
        if control {
            self.outbound_control_frames += 1;
        }
        self.sent(h);
        if self.outbound_frames > u64::from(self.limits.max_outbound_frames) {
            return Err(self.violate(Flood::Outbound));
        }
        if self.outbound_control_frames > u64::from(self.limits.max_outbound_control_frames) {
            return Err(self.violate(Flood::OutboundControl));
        }
        Ok(control)
    }

    /// A queued frame was written to the socket.
    pub fn written(&mut self, control: bool) {
        self.outbound_frames = self.outbound_frames.saturating_sub(1);
        if control {
            self.outbound_control_frames = self.outbound_control_frames.saturating_sub(1);
        }
    }

    fn check(&self) -> Result<(), Flood> {
        self.violated.map_or(Ok(()), Err)
    }

    fn violate(&mut self, flood: Flood) -> Flood {
        self.violated = Some(flood);
        flood
    }

    pub fn violated(&self) -> Option<Flood> {
        self.violated
    }
}

/// The IO shim between a downstream connection and hyper's HTTP/2 server.
pub struct FloodGuard<T> {
    io: T,
    constraints: Constraints,
    stats: Arc<FloodStats>,
    rx: Scanner,
    tx: Scanner,
    /// Frames handed over and not yet fully written: (stream offset past the frame, control).
    queued: VecDeque<(u64, bool)>,
    /// Bytes handed over and not yet written.
    pending: BytesMut,
    /// Stream offset of the next byte to write to `io`.
    written: u64,
    /// Past this many pending bytes, writes wait for the socket.
    high_watermark: usize,
    /// Set on the first violation, for the connection's owner.
    outcome: Arc<OnceLock<Flood>>,
}

impl<T> FloodGuard<T> {
    /// `io` starts with the client preface (replayed or not yet read).
    pub fn new(io: T, limits: FloodLimits, stats: Arc<FloodStats>, high_watermark: usize) -> Self {
        Self {
            io,
            constraints: Constraints::new(limits),
            stats,
            rx: Scanner::new(PREFACE_LEN),
            tx: Scanner::new(0),
            queued: VecDeque::new(),
            pending: BytesMut::new(),
            written: 0,
            high_watermark: high_watermark.max(16 * 1024),
            outcome: Arc::default(),
        }
    }

    /// Where the connection's owner finds the flood that failed the connection, if any.
    pub fn outcome(&self) -> Arc<OnceLock<Flood>> {
        self.outcome.clone()
    }

    /// Count a violation once and turn it into the error hyper sees; the queue is dropped.
    fn fail(&mut self, flood: Flood) -> io::Error {
        self.stats.count(flood);
        let _ = self.outcome.set(flood);
        self.pending = BytesMut::new();
        self.queued.clear();
        io::Error::other(flood)
    }

    fn flooded(&self) -> io::Result<()> {
        match self.constraints.violated() {
            Some(f) => Err(io::Error::other(f)),
            None => Ok(()),
        }
    }

    /// Account for bytes hyper hands over: the frames that end at or before stream offset
    /// `direct_end` went straight to the socket and were never queued; the others are queued
    /// until the socket takes them (no allocation per frame: the queue keeps its capacity).
    fn scan_out(&mut self, buf: &[u8], direct_end: u64) -> io::Result<()> {
        let (constraints, queued) = (&mut self.constraints, &mut self.queued);
        let scanned = self.tx.feed(buf, |h, end| {
            if end <= direct_end {
                constraints.sent(h);
            } else {
                let control = constraints.queued(h)?;
                queued.push_back((end, control));
            }
            Ok(())
        });
        scanned.map_err(|f| self.fail(f))
    }

    /// `n` more bytes reached the socket: release the frames they complete.
    fn advance(&mut self, n: usize) {
        self.written += n as u64;
        while let Some(&(end, control)) = self.queued.front() {
            if end > self.written {
                break;
            }
            self.queued.pop_front();
            self.constraints.written(control);
        }
    }
}

impl<T: AsyncWrite + Unpin> FloodGuard<T> {
    /// Write pending bytes until none is left or the socket is full (`Pending`, waker set).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drain what the socket takes now; `Pending` only past the high watermark.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        if self.pending.len() >= self.high_watermark {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.flooded()?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let constraints = &mut this.constraints;
        let scanned = this
            .rx
            .feed(&buf.filled()[before..], |h, _| constraints.inbound(h));
        if let Err(f) = scanned {
            buf.set_filled(before);
            return Poll::Ready(Err(this.fail(f)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
    /// While nothing is pending the bytes go straight to the socket, and only what it does not
    /// take is copied and its frames counted as queued; once something is pending, every
    /// write queues behind it (in order) until the socket has taken it all.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.flooded()?;
        if !this.pending.is_empty() {
            ready!(this.poll_room(cx))?;
        }
        let taken = if this.pending.is_empty() {
            match Pin::new(&mut this.io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            }
        } else {
            0
        };
        this.scan_out(buf, this.written + taken as u64)?;
        this.advance(taken);
        if taken < buf.len() {
            this.pending.extend_from_slice(&buf[taken..]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.flooded()?;
        if !this.pending.is_empty() {
            ready!(this.poll_room(cx))?;
        }
        let taken = if this.pending.is_empty() {
            match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            }
        } else {
            0
        };
        let direct_end = this.written + taken as u64;
        let mut total = 0;
        for b in bufs {
            this.scan_out(b, direct_end)?;
            total += b.len();
        }
        this.advance(taken);
        if taken < total {
            let mut skip = taken;
            for b in bufs {
                let s = skip.min(b.len());
                skip -= s;
                this.pending.extend_from_slice(&b[s..]);
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes on every turn of its connection: what the socket cannot take stays
    /// queued (and counted) without stopping hyper from reading, up to the high watermark.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.flooded()?;
        if !this.pending.is_empty() {
            ready!(this.poll_room(cx))?;
        }
        if this.pending.is_empty() {
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.flooded()?;
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn heads(bytes: &[u8], chunk: usize, skip: u64) -> Vec<(FrameHead, u64)> {
        let mut s = Scanner::new(skip);
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            s.feed(c, |h, end| {
                out.push((h, end));
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn scanner_finds_frames_across_any_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes.extend(frame(DATA, FLAG_PADDED, 1, &[3, 0, 0, 0]));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let whole = heads(&bytes, bytes.len(), PREFACE_LEN);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].1, 33);
        assert_eq!(whole[1].0.pad, 4);
        assert_eq!(whole[1].0.len, 4);
        assert_eq!(whole[2].0.kind, PING);
        assert_eq!(whole[2].1, bytes.len() as u64);
        for chunk in [1, 2, 5, 9, 10, 11] {
            assert_eq!(heads(&bytes, chunk, PREFACE_LEN), whole, "chunk {chunk}");
        }
    }

    fn head(kind: u8, flags: u8, len: u32) -> FrameHead {
        FrameHead {
            len,
            kind,
            flags,
            pad: 0,
        }
    }

    #[test]
    fn consecutive_empty_frames() {
        let mut c = Constraints::new(FloodLimits::default());
        // One empty DATA frame is allowed, a second in a row is not...
        assert_eq!(c.inbound(head(DATA, 0, 0)), Ok(()));
        assert_eq!(c.inbound(head(DATA, 0, 1)), Ok(()));
        assert_eq!(c.inbound(head(DATA, 0, 0)), Ok(()));
        // ...nor is a padded frame with only padding; END_STREAM makes an empty frame fine.
        let padded = FrameHead {
            pad: 4,
            ..head(DATA, FLAG_PADDED, 4)
        };
        assert_eq!(c.inbound(padded), Err(Flood::InboundEmpty));
        // Sticky: the connection stays failed.
        assert_eq!(c.inbound(head(DATA, 0, 5)), Err(Flood::InboundEmpty));
        let mut c = Constraints::new(FloodLimits::default());
        for _ in 0..5 {
            assert_eq!(c.inbound(head(DATA, FLAG_END_STREAM, 0)), Ok(()));
        }
    }

    #[test]
    fn priority_frames_per_opened_stream() {
        let limits = FloodLimits {
            max_inbound_priority_frames_per_stream: 2,
            ..FloodLimits::default()
        };
        let mut c = Constraints::new(limits);
        for _ in 0..2 {
            assert_eq!(c.inbound(head(PRIORITY, 0, 5)), Ok(()));
        }
        assert_eq!(c.inbound(head(HEADERS, FLAG_END_HEADERS, 10)), Ok(()));
        for _ in 0..2 {
            assert_eq!(c.inbound(head(PRIORITY, 0, 5)), Ok(()));
        }
        assert_eq!(c.inbound(head(PRIORITY, 0, 5)), Err(Flood::InboundPriority));
    }

    #[test]
    fn window_updates_per_data_frame_sent() {
        let mut c = Constraints::new(FloodLimits::default());
        // 1 + 2 * (streams + 10 * data frames sent)
        assert_eq!(c.inbound(head(WINDOW_UPDATE, 0, 4)), Ok(()));
        assert_eq!(c.queued(head(DATA, 0, 100)), Ok(false));
        for _ in 0..20 {
            assert_eq!(c.inbound(head(WINDOW_UPDATE, 0, 4)), Ok(()));
        }
        assert_eq!(
            c.inbound(head(WINDOW_UPDATE, 0, 4)),
            Err(Flood::InboundWindowUpdate)
        );
    }

    #[test]
    fn outbound_queue_counts_frames_until_written() {
        let limits = FloodLimits {
            max_outbound_frames: 3,
            max_outbound_control_frames: 2,
            ..FloodLimits::default()
        };
        let mut c = Constraints::new(limits);
        assert_eq!(c.queued(head(PING, FLAG_ACK, 8)), Ok(true));
        assert_eq!(c.queued(head(PING, 0, 8)), Ok(false));
        assert_eq!(c.queued(head(RST_STREAM, 0, 4)), Ok(true));
        c.written(true);
        c.written(false);
        assert_eq!(c.queued(head(SETTINGS, FLAG_ACK, 0)), Ok(true));
        assert_eq!(
            c.queued(head(SETTINGS, FLAG_ACK, 0)),
            Err(Flood::OutboundControl)
        );
        let mut c = Constraints::new(limits);
        for _ in 0..3 {
            assert_eq!(c.queued(head(DATA, 0, 1)), Ok(false));
        }
        assert_eq!(c.queued(head(HEADERS, 0, 1)), Err(Flood::Outbound));
    }

    fn store() -> Arc<Store> {
        Arc::new(Store::default())
    }

    /// A peer that never reads: the PING acknowledgements queue up in the guard until the
    /// control-frame limit fails the connection.
    #[tokio::test]
    async fn guard_fails_when_acks_pile_up() {
        let (a, mut peer) = tokio::io::duplex(64);
        let stats = Arc::new(FloodStats::new(&store()));
        let limits = FloodLimits {
            max_outbound_control_frames: 10,
            ..FloodLimits::default()
        };
        let mut g = FloodGuard::new(a, limits, stats.clone(), 1 << 20);
        let outcome = g.outcome();
        let mut failed = None;
        for i in 0..20 {
            if let Err(e) = g.write_all(&frame(PING, FLAG_ACK, 0, &[0; 8])).await {
                failed = Some((i, e));
                break;
            }
            g.flush().await.unwrap();
        }
        let (i, e) = failed.expect("the guard fails the connection");
        // 64 bytes fit in the pipe (3 frames), then 10 are queued: the 14th is one too many.
        assert_eq!(i, 13);
        assert_eq!(e.to_string(), Flood::OutboundControl.to_string());
        assert_eq!(outcome.get(), Some(&Flood::OutboundControl));
        assert_eq!(stats.outbound_control_flood.value(), 1);
        // Nothing more is written after the failure.
        drop(g);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 3 * 17 + 13);
    }

    /// A reading peer gets every byte in order, whichever writes were queued.
    #[tokio::test]
    async fn guard_passes_bytes_through_in_order() {
        let (a, mut peer) = tokio::io::duplex(100);
        let stats = Arc::new(FloodStats::new(&store()));
        let mut g = FloodGuard::new(a, FloodLimits::default(), stats, 1 << 20);
        let mut sent = Vec::new();
        for i in 0..50u8 {
            sent.extend(frame(DATA, 0, 1, &[i; 30]));
        }
        let expect = sent.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        for chunk in sent.chunks(7) {
            g.write_all(chunk).await.unwrap();
        }
        g.shutdown().await.unwrap();
        drop(g);
        assert_eq!(reader.await.unwrap(), expect);
    }

    /// The guard switches between writing straight through (the peer keeps up) and queueing
    /// (the pipe is full) within every burst: the peer gets every byte in order, the queue
    /// empties once the peer has read, and each DATA frame counts once as sent, whichever way
    /// it went.
    #[tokio::test]
    async fn guard_switches_between_pass_through_and_queueing_in_order() {
        use std::io::IoSlice;
        let (a, mut peer) = tokio::io::duplex(256);
        let stats = Arc::new(FloodStats::new(&store()));
        let limits = FloodLimits {
            max_outbound_frames: 8,
            ..FloodLimits::default()
        };
        let mut g = FloodGuard::new(a, limits, stats.clone(), 1 << 20);
        let (mut expect, mut got): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
        let mut tmp = [0u8; 100];
        let mut queueing_seen = 0;
        for round in 0..30u8 {
            assert!(g.pending.is_empty() && g.queued.is_empty());
            // 8 frames of 50 bytes into a 256-byte pipe: the first ones go straight through,
            // the rest is queued.
            for i in 0..8u8 {
                let f = frame(DATA, 0, 1, &[round.wrapping_mul(8).wrapping_add(i); 41]);
                expect.extend(&f);
                if i % 2 == 0 {
                    g.write_all(&f).await.unwrap();
                } else {
                    let (head, payload) = f.split_at(FRAME_HEADER_LEN);
                    let n = g
                        .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
                        .await
                        .unwrap();
                    assert_eq!(n, f.len());
                }
            }
            g.flush().await.unwrap();
            if !g.pending.is_empty() {
                queueing_seen += 1;
                assert!(!g.queued.is_empty());
            }
            // The peer reads in small steps; each flush writes more of the queue.
            while got.len() < expect.len() {
                let n = peer.read(&mut tmp).await.unwrap();
                got.extend_from_slice(&tmp[..n]);
                g.flush().await.unwrap();
            }
            assert_eq!(got, expect, "round {round}");
        }
        assert_eq!(queueing_seen, 30);
        assert!(g.queued.is_empty());
        assert_eq!(g.constraints.outbound_frames, 0);
        assert_eq!(g.constraints.outbound_data_frames, 30 * 8);
        assert_eq!(stats.outbound_flood.value(), 0);
    }

    /// Inbound floods are refused before hyper sees the frame.
    #[tokio::test]
    async fn guard_refuses_inbound_flood() {
        let (a, mut peer) = tokio::io::duplex(1 << 16);
        let stats = Arc::new(FloodStats::new(&store()));
        let mut g = FloodGuard::new(a, FloodLimits::default(), stats.clone(), 1 << 20);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &[0x82]));
        bytes.extend(frame(DATA, 0, 1, &[]));
        bytes.extend(frame(DATA, 0, 1, &[]));
        peer.write_all(&bytes).await.unwrap();
        let mut buf = vec![0; 4096];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), Flood::InboundEmpty.to_string());
        assert_eq!(stats.inbound_empty_frames_flood.value(), 1);
        assert!(g.read(&mut buf).await.is_err());
    }
}
