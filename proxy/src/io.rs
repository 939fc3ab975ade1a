//! A byte-counting stream wrapper shared by downstream and upstream connections: counts reads
//! and writes into stats counters, can replay bytes already read (by a listener filter or the
//! codec detection) before reading the socket, and can own something that must live exactly as
//! long as the connection (an upstream connection's stats guard). Also the worker-local buffer
//! pools that keep idle connections from holding buffers.

use crate::telemetry::stats::Counter;
use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct Counted<T, K = ()> {
    pub inner: T,
    prefix: Bytes,
    rx: Option<Arc<Counter>>,
    tx: Option<Arc<Counter>>,
    /// Dropped with the connection.
    pub keep: K,
}

impl<T> Counted<T> {
    pub fn new(inner: T, rx: Option<Arc<Counter>>, tx: Option<Arc<Counter>>) -> Self {
        Self {
            inner,
            prefix: Bytes::new(),
            rx,
            tx,
            keep: (),
        }
    }
}

impl<T, K> Counted<T, K> {
    pub fn keeping<K2>(self, keep: K2) -> Counted<T, K2> {
        Counted {
            inner: self.inner,
            prefix: self.prefix,
            rx: self.rx,
            tx: self.tx,
            keep,
        }
    }

    /// Bytes to return before reading `inner` (they are not counted again).
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = prefix;
        self
    }
}

impl<T: AsyncRead + Unpin, K: Unpin> AsyncRead for Counted<T, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0
            && let Some(c) = &self.rx
        {
            c.add(n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, K: Unpin> AsyncWrite for Counted<T, K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(c)) = (&r, &self.tx) {
            c.add(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(c)) = (&r, &self.tx) {
            c.add(*n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === transports ===

/// An upstream connection: plaintext, or TLS originated by remora.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether an idle pooled connection is still usable: nothing to read, not closed. A TLS
    /// connection may have received handshake records (session tickets) while idle; those are
    /// consumed here without counting as data.
    pub fn idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.tcp().poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => {
                let mut byte = [0u8; 1];
                let mut rb = ReadBuf::new(&mut byte);
                matches!(
                    Pin::new(t.as_mut()).poll_read(&mut cx, &mut rb),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A downstream TLS connection: the ClientHello bytes a listener filter read are replayed.
pub type DownstreamTlsStream = tokio_rustls::server::TlsStream<Counted<TcpStream>>;

/// A downstream connection the HTTP/1.1 loop can split into independently used halves.
pub trait Split: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Split for DownstreamTlsStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_and_replays_prefix() {
        let (a, mut b) = tokio::io::duplex(64);
        let rx = Arc::new(Counter::default());
        let tx = Arc::new(Counter::default());
        let mut c = Counted::new(a, Some(rx.clone()), Some(tx.clone()))
            .with_prefix(Bytes::from_static(b"pre"));
        b.write_all(b"-body").await.unwrap();
        let mut buf = [0u8; 8];
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pre");
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"-body");
        assert_eq!(rx.value(), 5);
        c.write_all(b"xyz").await.unwrap();
        assert_eq!(tx.value(), 3);
    }
}

// === worker-local buffers ===

/// Buffers kept per worker thread; beyond this, returned buffers are freed.
const POOLED: usize = 64;
/// Larger buffers (a big head, a long chunked body) are freed rather than kept.
const MAX_POOLED_CAPACITY: usize = 256 * 1024;

thread_local! {
    static WRITE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    static READ_BUFFERS: std::cell::RefCell<Vec<bytes::BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A serialisation buffer from this worker's pool; give it back with [`give_write_buffer`].
pub fn take_write_buffer() -> Vec<u8> {
    WRITE_BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(4096))
}

pub fn give_write_buffer(mut buf: Vec<u8>) {
    if buf.capacity() > MAX_POOLED_CAPACITY {
        return;
    }
    buf.clear();
    WRITE_BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < POOLED {
            b.push(buf);
        }
    });
}

/// A read buffer with at least `min` bytes of room, from this worker's pool.
pub fn take_read_buffer(min: usize) -> bytes::BytesMut {
    let mut buf = READ_BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_default();
    buf.reserve(min);
    buf
}

/// Return an empty read buffer (one with little room left is freed instead).
pub fn give_read_buffer(buf: bytes::BytesMut) {
    debug_assert!(buf.is_empty());
    if buf.capacity() < 1024 || buf.capacity() > MAX_POOLED_CAPACITY {
        return;
    }
    READ_BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < POOLED {
            b.push(buf);
        }
    });
}
