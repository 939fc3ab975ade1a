//! Where each header sits in a parsed head. httparse borrows the read buffer; the head is then
//! split off as one shared `Bytes` and header values become zero-copy slices of it. The spans
//! bridge the two without allocating for any head of up to [`INLINE`] headers.

use bytes::Bytes;
use std::ops::Range;

/// Heads with at most this many headers keep their spans on the stack (Envoy's default
/// `max_headers_count` is 100).
pub const INLINE: usize = 100;

#[derive(Clone, Copy, Default)]
pub struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

// === impl Span ===

impl Span {
    /// The span of `h`, whose slices point into the buffer starting at `base`. Heads are bounded
    /// by the codecs' limits (at most megabytes), so offsets and lengths fit in u32 and the
    /// slices, taken by httparse from that buffer, start at or after `base`.
    pub fn of(base: *const u8, h: &httparse::Header<'_>) -> Span {
        let offset = |p: *const u8| (p as usize - base as usize) as u32;
        Span {
            name: (offset(h.name.as_ptr()), h.name.len() as u32),
            value: (offset(h.value.as_ptr()), h.value.len() as u32),
        }
    }

    pub fn name<'b>(&self, head: &'b Bytes) -> &'b [u8] {
        &head[range(self.name)]
    }

    pub fn value(&self, head: &Bytes) -> Bytes {
        head.slice(range(self.value))
    }
}

fn range((start, len): (u32, u32)) -> Range<usize> {
    start as usize..(start + len) as usize
}

/// Spans for `n` headers: the inline array when it is large enough, else `spill`.
pub fn storage<'a>(
    inline: &'a mut [Span; INLINE],
    spill: &'a mut Vec<Span>,
    n: usize,
) -> &'a mut [Span] {
    if n <= INLINE {
        &mut inline[..n]
    } else {
        spill.resize(n, Span::default());
        spill
    }
}
