//! The body type every HTTP path uses: bytes from the downstream HTTP/1 codec, from hyper
//! (HTTP/2 downstream, any upstream response), or a local buffer.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Boxed body errors (upstream resets, downstream disconnects, codec errors).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Hyper(hyper::body::Incoming),
    /// An upstream HTTP/2 response body, holding its stream's place on the pooled connection.
    H2Upstream(hyper::body::Incoming, crate::upstream::pool::StreamSlot),
    /// A downstream HTTP/1 request body read by the codec.
    H1(super::codec::h1::RequestBody),
    /// An upstream HTTP/1 response body read by the client codec.
    H1Upstream(super::codec::h1_client::ResponseBody),
    /// A response body with its stream's accounting (stats, timeouts, access log at the end).
    Tracked(Box<super::stream::TrackedBody>),
    /// A request body whose progress the router watches (end of request, activity, bytes).
    Watched(Box<super::stream::WatchedBody>),
    /// Anything else.
    Boxed(Pin<Box<dyn HttpBody<Data = Bytes, Error = BodyError> + Send + 'static>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
            Body::Hyper(_) => f.write_str("Body::Hyper"),
            Body::H2Upstream(..) => f.write_str("Body::H2Upstream"),
            Body::H1(_) => f.write_str("Body::H1"),
            Body::H1Upstream(_) => f.write_str("Body::H1Upstream"),
            Body::Tracked(_) => f.write_str("Body::Tracked"),
            Body::Watched(_) => f.write_str("Body::Watched"),
            Body::Boxed(_) => f.write_str("Body::Boxed"),
        }
    }
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Hyper(h) | Body::H2Upstream(h, _) => Pin::new(h)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BodyError),
            Body::H1(b) => Pin::new(b).poll_frame(cx),
            Body::H1Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Tracked(b) => Pin::new(&mut **b).poll_frame(cx),
            Body::Watched(b) => Pin::new(&mut **b).poll_frame(cx),
            Body::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Hyper(h) | Body::H2Upstream(h, _) => h.is_end_stream(),
            Body::H1(b) => b.is_end_stream(),
            Body::H1Upstream(b) => b.is_end_stream(),
            Body::Tracked(b) => b.is_end_stream(),
            Body::Watched(b) => b.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Hyper(h) | Body::H2Upstream(h, _) => h.size_hint(),
            Body::H1(b) => b.size_hint(),
            Body::H1Upstream(b) => b.size_hint(),
            Body::Tracked(b) => b.size_hint(),
            Body::Watched(b) => b.size_hint(),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

/// A frame helper: trailers of a body, if the frame is trailers.
pub fn trailers_of(frame: &Frame<Bytes>) -> Option<&HeaderMap> {
    frame.trailers_ref()
}
