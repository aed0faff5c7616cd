//! Text transforms: message text is plain text; this renders it to safe HTML and extracts
//! @mentions, links and #hashtags. Links are found by `linkify`; the HTML we build escapes
//! everything and then passes through `ammonia` with an allow-list of `a`, `span` and `br`, so
//! even a bug in the rendering cannot let markup or `javascript:` URLs through.
//!
//! Mentions come out as candidate user ids; which of them are members (and so really mentioned)
//! is decided by the caller, who can look that up.

use regex::Regex;
use std::collections::{BTreeSet, HashSet};
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

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::empty();
    b.add_tags(["a", "span", "br"])
        .add_tag_attributes("a", ["href"])
        .add_allowed_classes("span", ["mention", "hashtag"])
        .add_allowed_classes("a", ["link"])
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer nofollow"));
    b
});

/// Renders plain text to sanitised HTML and extracts mentions, links and hashtags.
pub fn render(text: &str) -> Rendered {
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
                html.push_str(&ammonia::clean_text(url));
                html.push_str("\">");
                html.push_str(&ammonia::clean_text(url));
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
    out.html = SANITIZER.clean(&html).to_string();
    out
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
        html.push_str(&ammonia::clean_text(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
