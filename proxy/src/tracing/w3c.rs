//! W3C trace context: `traceparent` (`00-{trace-id}-{parent-id}-{flags}`), read when no B3
//! header is (zipkin's `USE_B3_WITH_W3C_PROPAGATION`) and injected beside B3.

use super::SpanContext;
use super::b3::{Malformed, hex16, hex64};
use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The sampled flag of a well-formed `traceparent`.
pub fn extract_sampled(h: &HeaderMap) -> Option<bool> {
    parse(h.get(TRACEPARENT)?.as_bytes())
        .ok()
        .map(|cx| cx.sampled)
}

/// The parent context of `traceparent` (`Ok(None)`: absent). The sampling decision is
/// `sampled` (what the caller decided), as Envoy's extractor passes it.
pub fn extract(h: &HeaderMap, sampled: bool) -> Result<Option<SpanContext>, Malformed> {
    let Some(v) = h.get(TRACEPARENT) else {
        return Ok(None);
    };
    let mut cx = parse(v.as_bytes())?;
    cx.sampled = sampled;
    Ok(Some(cx))
}

fn parse(b: &[u8]) -> Result<SpanContext, Malformed> {
    // version(2) - trace id(32) - parent id(16) - flags(2)
    if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || &b[..2] != b"00" {
        return Err(Malformed);
    }
    let trace_high = hex64(&b[3..19])?;
    let trace_id = hex64(&b[19..35])?;
    let id = hex64(&b[36..52])?;
    let flags = std::str::from_utf8(&b[53..55]).map_err(|_| Malformed)?;
    let flags = u8::from_str_radix(flags, 16).map_err(|_| Malformed)?;
    if (trace_high == 0 && trace_id == 0) || id == 0 {
        return Err(Malformed);
    }
    Ok(SpanContext {
        trace_high,
        trace_id,
        id,
        parent_id: 0,
        sampled: flags & 1 == 1,
    })
}

/// `traceparent` for the span (a 64-bit trace id is padded with zeros).
pub fn inject(cx: &SpanContext, h: &mut HeaderMap) {
    let mut s = [0u8; 55];
    let (mut a, mut b, mut c) = ([0u8; 16], [0u8; 16], [0u8; 16]);
    s[..3].copy_from_slice(b"00-");
    s[3..19].copy_from_slice(hex16(cx.trace_high, &mut a).as_bytes());
    s[19..35].copy_from_slice(hex16(cx.trace_id, &mut b).as_bytes());
    s[35] = b'-';
    s[36..52].copy_from_slice(hex16(cx.id, &mut c).as_bytes());
    s[52..].copy_from_slice(if cx.sampled { b"-01" } else { b"-00" });
    if let Ok(v) = HeaderValue::from_bytes(&s) {
        h.insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let v = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, v.parse().unwrap());
        assert_eq!(extract_sampled(&h), Some(true));
        let cx = extract(&h, true).unwrap().unwrap();
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out.get(TRACEPARENT).unwrap(), v);
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(extract(&h, true), Err(Malformed));
    }
}
