//! Content types are sniffed from the bytes, never trusted from the header: [`sniff`] names the
//! type of the first bytes of a file, [`consistent`] says whether the type a client declared can
//! be that file (a PNG declared as a PDF is a lie and refused), [`allowed`] applies a tenant's
//! list of accepted types.

/// Bytes of a file's head kept for sniffing and image headers.
pub const HEAD_BYTES: usize = 256 * 1024;

pub const OCTET_STREAM: &str = "application/octet-stream";
pub const TEXT_PLAIN: &str = "text/plain";

/// The type of a file from its first bytes: a known signature, else `text/plain` for UTF-8
/// without NUL bytes, else `application/octet-stream`.
pub fn sniff(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        return t.mime_type().to_string();
    }
    if looks_like_text(head) {
        TEXT_PLAIN.into()
    } else {
        OCTET_STREAM.into()
    }
}

fn looks_like_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut at the end of the head is still text.
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

/// The media type of a `Content-Type` value: lowercase, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Families whose files carry a signature the sniffer knows: a file declared as one of these
/// must sniff as exactly that type.
fn detectable(t: &str) -> bool {
    t.starts_with("image/")
        || t.starts_with("video/")
        || t.starts_with("audio/")
        || matches!(
            t,
            "application/pdf" | "application/zip" | "application/gzip" | "application/x-tar"
        )
}

fn texty(t: &str) -> bool {
    t.starts_with("text/")
        || matches!(
            t,
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-yaml"
        )
}

fn alias(t: &str) -> &str {
    match t {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "audio/mp3" => "audio/mpeg",
        "application/x-zip-compressed" => "application/zip",
        other => other,
    }
}

/// Whether a file of sniffed type `sniffed` may have been declared as `declared` (an essence).
pub fn consistent(declared: &str, sniffed: &str) -> bool {
    let declared = alias(declared);
    if declared.is_empty() || declared == OCTET_STREAM || declared == sniffed {
        return true;
    }
    if sniffed == TEXT_PLAIN {
        return texty(declared);
    }
    if sniffed == OCTET_STREAM {
        return !detectable(declared) && !texty(declared);
    }
    false
}

/// Whether `content_type` matches one of `patterns` (`type/subtype` or `type/*`).
pub fn allowed(patterns: &[String], content_type: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix("/*") {
        Some(family) => content_type
            .split_once('/')
            .is_some_and(|(f, _)| f.eq_ignore_ascii_case(family)),
        None => p.eq_ignore_ascii_case(content_type),
    })
}

/// Whether files of this type may be shown inline by a browser (images that cannot carry
/// script). Everything else is served as an attachment.
pub fn inline_safe(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "image/avif" | "image/bmp"
    ) || content_type.starts_with("video/")
        || content_type.starts_with("audio/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn sniffs_signatures_and_text() {
        assert_eq!(sniff(PNG), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff(b"PK\x03\x04\x14\0\0\0"), "application/zip");
        assert_eq!(sniff("hello, wörld".as_bytes()), "text/plain");
        // A multi-byte character cut at the end of the head.
        assert_eq!(sniff(&"é".as_bytes()[..1]), "text/plain");
        assert_eq!(sniff(b"\x00\x01\x02\xff"), OCTET_STREAM);
    }

    #[test]
    fn lying_declarations_are_inconsistent() {
        assert!(consistent("image/png", "image/png"));
        assert!(consistent("image/jpg", "image/jpeg"));
        assert!(consistent("", "image/png"));
        assert!(consistent(OCTET_STREAM, "application/zip"));
        assert!(consistent("text/csv", TEXT_PLAIN));
        assert!(consistent("application/x-custom", OCTET_STREAM));
        // Lies.
        assert!(!consistent("image/png", "application/zip"));
        assert!(!consistent("image/png", TEXT_PLAIN));
        assert!(!consistent("application/pdf", OCTET_STREAM));
        assert!(!consistent("text/plain", "image/png"));
        assert!(!consistent("text/html", OCTET_STREAM));
    }

    #[test]
    fn patterns() {
        let p = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert!(allowed(&p, "image/png"));
        assert!(allowed(&p, "application/pdf"));
        assert!(!allowed(&p, "application/zip"));
        assert!(!allowed(&p, "imagex/png"));
        assert_eq!(essence("Image/PNG; charset=x"), "image/png");
    }
}
