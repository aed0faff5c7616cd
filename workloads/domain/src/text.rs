//! Text transforms: message text is plain text; this renders it to safe HTML and extracts
//! @mentions, links and #hashtags. Links are found by `linkify`.
//!
//! The HTML is safe by construction: every piece of the user's text is escaped for the context
//! it lands in (`&`, `<`, `>` in text; `&` and `"` in a double-quoted attribute), the only tags
//! are fixed literals (`a`, `span`, `br`) and a link's `href` is only ever an `http(s)` URL.
//! The output is exactly what `ammonia` (an allow-list of those tags) would make of it — a
//! fixed point of the sanitiser — which the tests check on generated input against an
//! `ammonia`-sanitised reference rendering. Running the sanitiser on every message at runtime
//! (an HTML parse per message) cost more than everything else the pipeline does per message.
//!
//! Mentions come out as candidate user ids; which of them are members (and so really mentioned)
//! is decided by the caller, who can look that up.

use regex::Regex;
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// What a text renders to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    pub html: String,
    /// Candidate user ids mentioned as `@id`, in first-seen order, without duplicates.
    pub mentions: Vec<String>,
    /// http(s) links, in order, without duplicates.
    pub links: Vec<String>,
    /// Lower-cased hashtags without `#`, in order, without duplicates.
    pub hashtags: Vec<String>,
}

static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // a literal pattern, checked by the tests
    Regex::new(r"@([A-Za-z0-9_](?:[A-Za-z0-9_.@\-]{0,62}[A-Za-z0-9_])?)|#([\p{L}\p{N}_]{1,64})")
        .expect("valid pattern")
});

/// The `rel` every link gets.
const LINK_REL: &str = "noopener noreferrer nofollow";

/// Renders plain text to sanitised HTML and extracts mentions, links and hashtags.
pub fn render(text: &str) -> Rendered {
    // Line breaks as HTML parsing sees them (CR LF and CR are LF); NUL is not text.
    let normalized;
    let text = if text.contains(['\r', '\0']) {
        normalized = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\0', "\u{FFFD}");
        normalized.as_str()
    } else {
        text
    };
    let mut out = Rendered::default();
    let mut html = String::with_capacity(text.len() + 16);
    let mut seen_links = BTreeSet::new();
    let mut seen_mentions = BTreeSet::new();
    let mut seen_tags = BTreeSet::new();

    let mut finder = linkify::LinkFinder::new();
    finder.kinds(&[linkify::LinkKind::Url]);
    for span in finder.spans(text) {
        match span.kind() {
            Some(linkify::LinkKind::Url) if is_web_url(span.as_str()) => {
                let url = span.as_str();
                html.push_str("<a class=\"link\" href=\"");
                push_attribute(&mut html, url);
                html.push_str("\" rel=\"");
                html.push_str(LINK_REL);
                html.push_str("\">");
                push_text(&mut html, url);
                html.push_str("</a>");
                if seen_links.insert(url.to_string()) {
                    out.links.push(url.to_string());
                }
            }
            _ => render_plain(
                span.as_str(),
                &mut html,
                &mut out,
                &mut seen_mentions,
                &mut seen_tags,
            ),
        }
    }
    out.html = html;
    out
}

/// Escapes text content as an HTML serialiser does.
fn push_text(html: &mut String, s: &str) {
    push_escaped_by(html, s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '\u{a0}' => Some("&nbsp;"),
        _ => None,
    });
}

/// Escapes a double-quoted attribute value as an HTML serialiser does.
fn push_attribute(html: &mut String, s: &str) {
    push_escaped_by(html, s, |c| match c {
        '&' => Some("&amp;"),
        '"' => Some("&quot;"),
        '\u{a0}' => Some("&nbsp;"),
        _ => None,
    });
}

/// Appends `s`, each character that `entity` names replaced by that entity.
fn push_escaped_by(html: &mut String, s: &str, entity: fn(char) -> Option<&'static str>) {
    let mut last = 0;
    for (i, c) in s.char_indices() {
        if let Some(esc) = entity(c) {
            html.push_str(&s[last..i]);
            html.push_str(esc);
            last = i + c.len_utf8();
        }
    }
    html.push_str(&s[last..]);
}

fn is_web_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn render_plain(
    s: &str,
    html: &mut String,
    out: &mut Rendered,
    seen_mentions: &mut BTreeSet<String>,
    seen_tags: &mut BTreeSet<String>,
) {
    let mut last = 0;
    for caps in TOKEN.captures_iter(s) {
        let Some(whole) = caps.get(0) else { continue };
        // A token starts a word: not glued to a letter, digit or another marker (e.g. in
        // an e-mail address or `a#b`).
        let glued = s[..whole.start()]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '@' | '#' | '_' | '&' | '/'));
        if glued {
            continue;
        }
        push_escaped(html, &s[last..whole.start()]);
        if let Some(m) = caps.get(1) {
            let id = m.as_str();
            html.push_str("<span class=\"mention\">@");
            push_escaped(html, id);
            html.push_str("</span>");
            if seen_mentions.insert(id.to_string()) {
                out.mentions.push(id.to_string());
            }
        } else if let Some(t) = caps.get(2) {
            let tag = t.as_str();
            if !tag.chars().any(char::is_alphabetic) {
                // `#1` is an issue number, not a tag.
                push_escaped(html, whole.as_str());
            } else {
                html.push_str("<span class=\"hashtag\">#");
                push_escaped(html, tag);
                html.push_str("</span>");
                let lower = tag.to_lowercase();
                if seen_tags.insert(lower.clone()) {
                    out.hashtags.push(lower);
                }
            }
        }
        last = whole.end();
    }
    push_escaped(html, &s[last..]);
}

fn push_escaped(html: &mut String, s: &str) {
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            html.push_str("<br>");
        }
        push_text(html, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The sanitiser the output must be a fixed point of: the allow-list the renderer uses.
    fn sanitizer() -> ammonia::Builder<'static> {
        let mut b = ammonia::Builder::empty();
        b.add_tags(["a", "span", "br"])
            .add_tag_attributes("a", ["href"])
            .add_allowed_classes("span", ["mention", "hashtag"])
            .add_allowed_classes("a", ["link"])
            .url_schemes(HashSet::from(["http", "https", "mailto"]))
            .link_rel(Some(LINK_REL));
        b
    }

    /// The renderer as it was before the sanitiser left the hot path: `ammonia::clean_text`
    /// for every piece, then the whole through `ammonia`.
    fn reference(text: &str) -> String {
        let mut html = String::new();
        let mut finder = linkify::LinkFinder::new();
        finder.kinds(&[linkify::LinkKind::Url]);
        let mut scratch = Rendered::default();
        for span in finder.spans(text) {
            match span.kind() {
                Some(linkify::LinkKind::Url) if is_web_url(span.as_str()) => {
                    let url = ammonia::clean_text(span.as_str());
                    html.push_str(&format!("<a class=\"link\" href=\"{url}\">{url}</a>"));
                }
                _ => {
                    let mut plain = String::new();
                    render_plain(
                        span.as_str(),
                        &mut plain,
                        &mut scratch,
                        &mut BTreeSet::new(),
                        &mut BTreeSet::new(),
                    );
                    html.push_str(&plain);
                }
            }
        }
        sanitizer().clean(&html).to_string()
    }

    /// Pieces that exercise every branch: markup, quotes, entities, links (good and bad),
    /// mentions, hashtags, line breaks, no-break spaces, non-ASCII.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("@alice".to_string()),
            Just("@bob.smith".to_string()),
            Just("#Rust".to_string()),
            Just("#1".to_string()),
            Just("a#b".to_string()),
            Just("me@example.com".to_string()),
            Just("https://example.com/a?b=1&c=2".to_string()),
            Just("http://x.y/\"onmouseover=alert(1)".to_string()),
            Just("HTTPS://EXAMPLE.COM/<b>".to_string()),
            Just("https://ex.com/&amp;&lt;\u{a0}é".to_string()),
            Just("javascript:alert(1)".to_string()),
            Just("mailto:a@b.c".to_string()),
            Just("www.example.com".to_string()),
            Just("<script>alert('x')</script>".to_string()),
            Just("<img src=x onerror=alert(1)>".to_string()),
            Just("&amp; &lt; &#60; &".to_string()),
            Just("\"'`=/".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("\r".to_string()),
            Just("\u{a0}".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("<!-- -->".to_string()),
            Just("]]>".to_string()),
            "[a-zA-Z0-9 .,:;!?()\\[\\]{}@#&<>\"'/=_-]{0,12}",
            "\\PC{0,6}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// What the sanitiser would make of the output is the output itself: it is as safe as
        /// if it had been sanitised.
        #[test]
        fn the_output_is_a_fixed_point_of_the_sanitiser(pieces in prop::collection::vec(piece(), 0..12)) {
            let text = pieces.concat();
            let html = render(&text).html;
            prop_assert_eq!(sanitizer().clean(&html).to_string(), html);
        }

        /// Without carriage returns (which HTML parsing turns into line feeds) or NUL, the
        /// output is byte for byte what the sanitised renderer made.
        #[test]
        fn the_output_is_what_the_sanitised_renderer_made(pieces in prop::collection::vec(piece(), 0..12)) {
            let text = pieces.concat();
            prop_assume!(!text.contains(['\r', '\0']));
            prop_assert_eq!(render(&text).html, reference(&text));
        }
    }

    #[test]
    fn carriage_returns_are_line_breaks_and_nul_is_replaced() {
        assert_eq!(render("a\r\nb\rc\0").html, "a<br>b<br>c\u{FFFD}");
    }

    #[test]
    fn markup_is_escaped_not_executed() {
        let r = render("<script>alert(1)</script><img src=x onerror=alert(1)>");
        assert!(!r.html.contains("<script"), "{}", r.html);
        assert!(!r.html.contains("<img"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;"), "{}", r.html);
    }

    #[test]
    fn links_mentions_hashtags() {
        let r =
            render("hey @alice and @bob.smith, see https://example.com/a?b=1&c=2 #Rust #rust #1");
        assert_eq!(r.mentions, vec!["alice", "bob.smith"]);
        assert_eq!(r.links, vec!["https://example.com/a?b=1&c=2"]);
        assert_eq!(r.hashtags, vec!["rust"]);
        assert!(
            r.html.contains("<span class=\"mention\">@alice</span>"),
            "{}",
            r.html
        );
        assert!(
            r.html
                .contains("href=\"https://example.com/a?b=1&amp;c=2\""),
            "{}",
            r.html
        );
        assert!(
            r.html.contains("rel=\"noopener noreferrer nofollow\""),
            "{}",
            r.html
        );
        assert!(r.html.contains("#1"), "{}", r.html);
    }

    #[test]
    fn emails_and_glued_markers_are_not_tokens() {
        let r = render("write to me@example.com or a#b");
        assert!(r.mentions.is_empty(), "{:?}", r.mentions);
        assert!(r.hashtags.is_empty());
    }

    #[test]
    fn dangerous_schemes_never_become_links() {
        let r = render("javascript:alert(1) data:text/html,x");
        assert!(r.links.is_empty());
        assert!(!r.html.contains("href"), "{}", r.html);
    }

    #[test]
    fn newlines_become_breaks() {
        assert_eq!(render("a\nb").html, "a<br>b");
    }
}
