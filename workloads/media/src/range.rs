//! HTTP `Range` (RFC 9110 §14): one byte range per request. Several ranges, or a header that is
//! not a valid byte-range set, are ignored and the whole file is sent (as the RFC allows); a
//! valid range that selects nothing is `416` with `Content-Range: bytes */<size>`.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Send the whole file (no usable Range header).
    Full,
    /// Send these bytes with 206.
    Partial(Range<u64>),
    /// 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a file of `size` bytes (`size > 0`).
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    if a.is_empty() {
        // Suffix: the last n bytes.
        return match num(b) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
        };
    }
    let Some(start) = num(a) else {
        return RangeRequest::Full;
    };
    let end = if b.is_empty() {
        size
    } else {
        match num(b) {
            Some(last) if last >= start => last.saturating_add(1).min(size),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial(start..end)
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn edge_cases() {
        let p = |h: &str| parse(Some(h), 100);
        assert_eq!(parse(None, 100), Full);
        assert_eq!(p("bytes=0-0"), Partial(0..1));
        assert_eq!(p("bytes=0-99"), Partial(0..100));
        assert_eq!(p("bytes=0-1000"), Partial(0..100));
        assert_eq!(p("bytes=99-"), Partial(99..100));
        assert_eq!(p("bytes=10-"), Partial(10..100));
        assert_eq!(p("bytes=-1"), Partial(99..100));
        assert_eq!(p("bytes=-100"), Partial(0..100));
        assert_eq!(p("bytes=-500"), Partial(0..100));
        assert_eq!(p("bytes=100-"), Unsatisfiable);
        assert_eq!(p("bytes=100-200"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        // Ignored: invalid or several ranges.
        assert_eq!(p("bytes=5-4"), Full);
        assert_eq!(p("bytes=a-b"), Full);
        assert_eq!(p("items=0-1"), Full);
        assert_eq!(p("bytes=0-1,5-6"), Full);
        assert_eq!(p("bytes=-"), Full);
        assert_eq!(p("bytes=+1-2"), Full);
    }
}
