//! Queries against one index generation: messages (full text, phrases, prefixes, filters, sort
//! by relevance or time, highlights, cursor pagination), suggestions, conversations and users by
//! name. Blocking (tantivy): callers run these on the blocking pool.
//!
//! Every query is built as `scope AND filters AND text`, where the scope — the document kind,
//! the caller's tenant and the set of the caller's conversations — is added here, first, from a
//! [`Scope`] that only the HTTP layer builds (from the token and the store's memberships at query
//! time). Hits are checked against the scope again before they are returned.
//!
//! The query language: words (all must match; stemmed, accents folded), `"a phrase"`, `pre*`
//! (prefix), `"a phrase pre"*` (phrase whose last word is a prefix), `-word` (must not match).

use crate::index::{Generation, MessageDoc, message_from, str_of};
use crate::schema::{self, KIND_CONVERSATION, KIND_MESSAGE, KIND_USER};
use base64::Engine as _;
use caas_domain::model::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    BooleanQuery, BoostQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Order, Searcher, TantivyDocument, Term};

/// Longest query text.
pub const MAX_QUERY_CHARS: usize = 512;
/// Most clauses in one query.
pub const MAX_CLAUSES: usize = 20;
/// Deepest relevance page (offset + limit).
pub const MAX_DEPTH: usize = 1_000;
/// Messages read to collect suggestions from.
const SUGGEST_SAMPLE: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidCursor(String),
    #[error(transparent)]
    Index(#[from] tantivy::TantivyError),
}

/// Who may see what: the caller's tenant and conversations (ids), as of this query.
#[derive(Debug, Clone)]
pub struct Scope {
    pub tenant: String,
    pub conversations: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Relevance,
    Time,
}

/// A message search.
#[derive(Debug, Clone, Default)]
pub struct MessageSearch {
    pub q: String,
    pub conversation: Option<String>,
    pub sender: Option<String>,
    /// Created at or after (ms).
    pub from_ms: Option<i64>,
    /// Created before (ms).
    pub to_ms: Option<i64>,
    pub has_attachment: Option<bool>,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub message: MessageDoc,
    /// Relevance (relevance sort only).
    pub score: Option<f32>,
    /// The best fragment of the text, HTML-escaped, matches in `<mark>`.
    pub highlight: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next_cursor: Option<String>,
    /// Matching messages in all pages.
    pub total: usize,
}

/// A conversation or user found by name.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Named {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Suggestions {
    /// Words of the caller's messages that complete the last word, most frequent first.
    pub terms: Vec<String>,
    pub conversations: Vec<Named>,
    pub users: Vec<Named>,
}

#[derive(Debug, Clone, PartialEq)]
enum Clause {
    Word(String),
    Prefix(String),
    Phrase { text: String, prefix: bool },
}

/// Parses the query language into (negated, clause) pairs.
fn parse(q: &str) -> Result<Vec<(bool, Clause)>, QueryError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::Invalid(format!(
            "q is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let negated = chars[i] == '-';
        if negated {
            i += 1;
        }
        if i < chars.len() && chars[i] == '"' {
            let start = i + 1;
            let Some(len) = chars[start..].iter().position(|c| *c == '"') else {
                return Err(QueryError::Invalid("q has an unclosed quote".into()));
            };
            let text: String = chars[start..start + len].iter().collect();
            i = start + len + 1;
            let prefix = i < chars.len() && chars[i] == '*';
            if prefix {
                i += 1;
            }
            out.push((negated, Clause::Phrase { text, prefix }));
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if let Some(p) = word.strip_suffix('*') {
                out.push((negated, Clause::Prefix(p.to_string())));
            } else {
                out.push((negated, Clause::Word(word)));
            }
        }
        if out.len() > MAX_CLAUSES {
            return Err(QueryError::Invalid(format!(
                "q has more than {MAX_CLAUSES} words or phrases"
            )));
        }
    }
    Ok(out)
}

fn term_q(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::WithFreqsAndPositions,
    ))
}

fn phrase_q(field: Field, tokens: &[String]) -> Option<Box<dyn Query>> {
    match tokens {
        [] => None,
        [one] => Some(term_q(field, one)),
        many => Some(Box::new(PhraseQuery::new(
            many.iter()
                .map(|t| Term::from_field_text(field, t))
                .collect(),
        ))),
    }
}

fn prefix_q(field: Field, tokens: &[String]) -> Option<Box<dyn Query>> {
    if tokens.is_empty() {
        return None;
    }
    Some(Box::new(PhrasePrefixQuery::new(
        tokens
            .iter()
            .map(|t| Term::from_field_text(field, t))
            .collect(),
    )))
}

/// The text part of a message query; `None` when the text has no searchable word.
fn text_query(g: &Generation, q: &str) -> Result<Option<Box<dyn Query>>, QueryError> {
    let f = &g.fields;
    let mut text = g
        .index
        .tokenizer_for_field(f.text)
        .map_err(QueryError::Index)?;
    let mut raw = schema::raw_analyzer();
    let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut positive = 0;
    for (negated, clause) in parse(q)? {
        let built = match clause {
            Clause::Word(w) => {
                let stemmed = schema::tokens(&mut text, &w);
                let exact = schema::tokens(&mut raw, &w);
                match (stemmed.as_slice(), exact.as_slice()) {
                    ([s], [e]) => Some(Box::new(BooleanQuery::new(vec![
                        (Occur::Should, term_q(f.text, s)),
                        (
                            Occur::Should,
                            Box::new(BoostQuery::new(term_q(f.text_raw, e), 0.5)),
                        ),
                    ])) as Box<dyn Query>),
                    _ => phrase_q(f.text, &stemmed),
                }
            }
            Clause::Prefix(p) => prefix_q(f.text_raw, &schema::tokens(&mut raw, &p)),
            Clause::Phrase { text: t, prefix } => {
                if prefix {
                    prefix_q(f.text_raw, &schema::tokens(&mut raw, &t))
                } else {
                    phrase_q(f.text, &schema::tokens(&mut text, &t))
                }
            }
        };
        if let Some(b) = built {
            if negated {
                must.push((Occur::MustNot, b));
            } else {
                positive += 1;
                must.push((Occur::Must, b));
            }
        }
    }
    if must.is_empty() {
        return Ok(None);
    }
    if positive == 0 {
        return Err(QueryError::Invalid(
            "q needs at least one word that is not excluded".into(),
        ));
    }
    Ok(Some(Box::new(BooleanQuery::new(must))))
}

/// `kind AND tenant AND access ∈ conversations`: what every scoped query starts with.
fn scope_clauses(g: &Generation, kind: &str, scope: &Scope) -> Vec<(Occur, Box<dyn Query>)> {
    let f = &g.fields;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
        (Occur::Must, term_q(f.kind, kind)),
        (Occur::Must, term_q(f.tenant, &scope.tenant)),
    ];
    if kind != KIND_USER {
        clauses.push((
            Occur::Must,
            Box::new(TermSetQuery::new(scope.conversations.iter().map(|c| {
                Term::from_field_text(f.access, &schema::access_key(&scope.tenant, c))
            }))),
        ));
    }
    clauses
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// Hash of the query the cursor belongs to.
    h: u64,
    /// Relevance: offset of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<usize>,
    /// Time: sort key of the last hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<u64>,
}

fn query_hash(s: &MessageSearch) -> u64 {
    let key = format!(
        "{}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{:?}",
        s.q, s.conversation, s.sender, s.from_ms, s.to_ms, s.has_attachment, s.sort
    );
    schema::fnv64(key.as_bytes())
}

fn encode_cursor(c: &Cursor) -> String {
    let json = serde_json::to_vec(c).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str, hash: u64) -> Result<Cursor, QueryError> {
    let bad = || QueryError::InvalidCursor("cursor is not one this search returned".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if c.h != hash {
        return Err(QueryError::InvalidCursor(
            "cursor belongs to another query".into(),
        ));
    }
    Ok(c)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// Longest highlight fragment.
const HIGHLIGHT_CHARS: usize = 160;

/// The highlight of `text`: the whole text when it is short, else the snippet's fragment with
/// `…` where it was cut; escaped, matches in `<mark>`.
fn highlight_html(text: &str, snippet: &tantivy::snippet::Snippet) -> String {
    if snippet.is_empty() {
        return escape(truncate(text, HIGHLIGHT_CHARS));
    }
    let frag = snippet.fragment_range();
    let whole = text.chars().count() <= HIGHLIGHT_CHARS;
    let (start, end) = if whole {
        (0, text.len())
    } else {
        (frag.start, frag.end)
    };
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for r in snippet.highlighted() {
        let (a, b) = (frag.start + r.start, frag.start + r.end);
        if a < at || b > end || !text.is_char_boundary(a) || !text.is_char_boundary(b) {
            continue;
        }
        out.push_str(&escape(&text[at..a]));
        out.push_str("<mark>");
        out.push_str(&escape(&text[a..b]));
        out.push_str("</mark>");
        at = b;
    }
    out.push_str(&escape(&text[at..end]));
    if end < text.len() {
        out.push('…');
    }
    out
}

fn truncate(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Searches messages within `scope`.
pub fn search_messages(
    g: &Generation,
    scope: &Scope,
    s: &MessageSearch,
) -> Result<Page, QueryError> {
    let empty = Page {
        hits: Vec::new(),
        next_cursor: None,
        total: 0,
    };
    let hash = query_hash(s);
    let cursor = s
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, hash))
        .transpose()?;
    let text = text_query(g, &s.q)?;
    let mut scope = scope.clone();
    if let Some(c) = &s.conversation {
        scope.conversations.retain(|x| x == c);
    }
    if scope.conversations.is_empty() {
        return Ok(empty);
    }
    let f = &g.fields;
    let mut clauses = scope_clauses(g, KIND_MESSAGE, &scope);
    if let Some(sender) = &s.sender {
        clauses.push((Occur::Must, term_q(f.sender, sender)));
    }
    if s.from_ms.is_some() || s.to_ms.is_some() {
        let lo = s.from_ms.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_i64(f.created, v))
        });
        let hi = s.to_ms.map_or(Bound::Unbounded, |v| {
            Bound::Excluded(Term::from_field_i64(f.created, v))
        });
        clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
    }
    if let Some(a) = s.has_attachment {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_u64(f.has_attachment, u64::from(a)),
                IndexRecordOption::Basic,
            )),
        ));
    }
    let limit = s.limit.clamp(1, 100);
    let offset = match (&cursor, s.sort) {
        (Some(c), Sort::Relevance) => {
            c.o.ok_or_else(|| QueryError::InvalidCursor("cursor is not a relevance cursor".into()))?
        }
        _ => 0,
    };
    if s.sort == Sort::Time
        && let Some(c) = &cursor
    {
        let k =
            c.k.ok_or_else(|| QueryError::InvalidCursor("cursor is not a time cursor".into()))?;
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(f.sort_key, k)),
            )),
        ));
    }
    if let Some(t) = &text {
        clauses.push((Occur::Must, t.box_clone()));
    }
    let query = BooleanQuery::new(clauses);
    let searcher = g.reader.searcher();
    type Found = Vec<(Option<f32>, u64, tantivy::DocAddress)>;
    let (hits, total, next_cursor): (Found, usize, _) = match s.sort {
        Sort::Relevance => {
            let (top, total) = searcher.search(
                &query,
                &(
                    TopDocs::with_limit(limit)
                        .and_offset(offset)
                        .order_by_score(),
                    Count,
                ),
            )?;
            let next = offset + top.len();
            let more = top.len() == limit && next < total && next + limit <= MAX_DEPTH;
            let hits = top.into_iter().map(|(s, a)| (Some(s), 0, a)).collect();
            let next_cursor = more.then(|| {
                encode_cursor(&Cursor {
                    h: hash,
                    o: Some(next),
                    k: None,
                })
            });
            (hits, total, next_cursor)
        }
        Sort::Time => {
            let (top, total) = searcher.search(
                &query,
                &(
                    TopDocs::with_limit(limit).order_by_fast_field::<u64>("sort_key", Order::Desc),
                    Count,
                ),
            )?;
            let last = top.last().and_then(|(k, _)| *k);
            let more = top.len() == limit && total > limit;
            let hits = top
                .into_iter()
                .map(|(k, a)| (None, k.unwrap_or(0), a))
                .collect();
            let next_cursor = match (more, last) {
                (true, Some(k)) => Some(encode_cursor(&Cursor {
                    h: hash,
                    o: None,
                    k: Some(k),
                })),
                _ => None,
            };
            (hits, total, next_cursor)
        }
    };
    let snippets = match &text {
        Some(t) => {
            let mut sg = SnippetGenerator::create(&searcher, t.as_ref(), f.text)?;
            sg.set_max_num_chars(HIGHLIGHT_CHARS);
            Some(sg)
        }
        None => None,
    };
    let allowed: HashSet<&str> = scope.conversations.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(hits.len());
    for (score, _, addr) in hits {
        let d: TantivyDocument = searcher.doc(addr)?;
        let m = message_from(f, &d);
        // Defence in depth: the query already required both.
        if m.tenant != scope.tenant || !allowed.contains(m.conversation_id.as_str()) {
            tracing::error!(tenant_id = %scope.tenant, "A search hit outside the caller's scope was dropped.");
            continue;
        }
        let highlight = match &snippets {
            Some(sg) => highlight_html(&m.text, &sg.snippet(&m.text)),
            None => escape(truncate(&m.text, HIGHLIGHT_CHARS)),
        };
        out.push(Hit {
            message: m,
            score,
            highlight,
        });
    }
    Ok(Page {
        hits: out,
        next_cursor,
        total,
    })
}

/// `name` matches every word of `q` as a prefix.
fn name_query(g: &Generation, q: &str) -> Result<Option<Box<dyn Query>>, QueryError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::Invalid(format!(
            "q is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let mut raw = schema::raw_analyzer();
    let words = schema::tokens(&mut raw, q);
    if words.len() > MAX_CLAUSES {
        return Err(QueryError::Invalid(format!(
            "q has more than {MAX_CLAUSES} words"
        )));
    }
    let clauses: Vec<(Occur, Box<dyn Query>)> = words
        .iter()
        .filter_map(|w| prefix_q(g.fields.name, std::slice::from_ref(w)))
        .map(|q| (Occur::Must, q))
        .collect();
    Ok((!clauses.is_empty()).then(|| Box::new(BooleanQuery::new(clauses)) as Box<dyn Query>))
}

fn named(
    g: &Generation,
    searcher: &Searcher,
    kind: &str,
    scope: &Scope,
    q: &str,
    limit: usize,
) -> Result<Vec<Named>, QueryError> {
    let Some(nq) = name_query(g, q)? else {
        return Ok(Vec::new());
    };
    if kind != KIND_USER && scope.conversations.is_empty() {
        return Ok(Vec::new());
    }
    let mut clauses = scope_clauses(g, kind, scope);
    clauses.push((Occur::Must, nq));
    let top = searcher.search(
        &BooleanQuery::new(clauses),
        &TopDocs::with_limit(limit.clamp(1, 100)).order_by_score(),
    )?;
    let f = &g.fields;
    let mut out = Vec::with_capacity(top.len());
    for (_, addr) in top {
        let d: TantivyDocument = searcher.doc(addr)?;
        if str_of(&d, f.tenant) != scope.tenant {
            continue;
        }
        out.push(Named {
            id: str_of(&d, f.id),
            name: str_of(&d, f.name),
        });
    }
    Ok(out)
}

/// The caller's conversations whose name matches.
pub fn search_conversations(
    g: &Generation,
    scope: &Scope,
    q: &str,
    limit: usize,
) -> Result<Vec<Named>, QueryError> {
    named(g, &g.reader.searcher(), KIND_CONVERSATION, scope, q, limit)
}

/// Users of the caller's tenant whose name matches.
pub fn search_users(
    g: &Generation,
    scope: &Scope,
    q: &str,
    limit: usize,
) -> Result<Vec<Named>, QueryError> {
    named(g, &g.reader.searcher(), KIND_USER, scope, q, limit)
}

/// Completions of the last word of `q` from the caller's own messages (never from the
/// dictionary of the whole index, which would leak other tenants' words), plus conversations
/// and users whose names match.
pub fn suggest(
    g: &Generation,
    scope: &Scope,
    q: &str,
    limit: usize,
) -> Result<Suggestions, QueryError> {
    let limit = limit.clamp(1, 20);
    let searcher = g.reader.searcher();
    let mut raw = schema::raw_analyzer();
    let words = schema::tokens(&mut raw, q);
    let Some(last) = words.last().cloned() else {
        return Err(QueryError::Invalid("q has no word to complete".into()));
    };
    let mut terms = Vec::new();
    if !scope.conversations.is_empty() {
        let f = &g.fields;
        let mut clauses = scope_clauses(g, KIND_MESSAGE, scope);
        if let Some(p) = prefix_q(f.text_raw, std::slice::from_ref(&last)) {
            clauses.push((Occur::Must, p));
        }
        let top = searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(SUGGEST_SAMPLE)
                .order_by_fast_field::<u64>("sort_key", Order::Desc),
        )?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            if str_of(&d, f.tenant) != scope.tenant {
                continue;
            }
            let mut seen = HashSet::new();
            for t in schema::tokens(&mut raw, &str_of(&d, f.text)) {
                if t.starts_with(&last) && seen.insert(t.clone()) {
                    *counts.entry(t).or_default() += 1;
                }
            }
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        terms = ranked.into_iter().take(limit).map(|(t, _)| t).collect();
    }
    Ok(Suggestions {
        terms,
        conversations: named(g, &searcher, KIND_CONVERSATION, scope, q, 5)?,
        users: named(g, &searcher, KIND_USER, scope, q, 5)?,
    })
}

/// A stored message as the rebuild indexes it.
pub fn message_doc_of(m: &Message) -> MessageDoc {
    MessageDoc {
        tenant: m.tenant_id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        id: m.id.to_string(),
        sender: m.sender_id.to_string(),
        text: m.text.clone(),
        created_ms: (m.created_at.unix_timestamp_nanos() / 1_000_000) as i64,
        edited_ms: m
            .edited_at
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        parent_id: m.parent_id.map(|p| p.to_string()),
        has_attachment: !m.attachments.is_empty(),
        position: m.position,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_query_language_parses() {
        let got = parse(r#"pizza -olives "at noon" del* "big ch"* "#).unwrap();
        assert_eq!(
            got,
            vec![
                (false, Clause::Word("pizza".into())),
                (true, Clause::Word("olives".into())),
                (
                    false,
                    Clause::Phrase {
                        text: "at noon".into(),
                        prefix: false
                    }
                ),
                (false, Clause::Prefix("del".into())),
                (
                    false,
                    Clause::Phrase {
                        text: "big ch".into(),
                        prefix: true
                    }
                ),
            ]
        );
        assert!(matches!(parse("\"open"), Err(QueryError::Invalid(_))));
        assert!(matches!(
            parse(&"a ".repeat(30)),
            Err(QueryError::Invalid(_))
        ));
        assert!(matches!(
            parse(&"x".repeat(600)),
            Err(QueryError::Invalid(_))
        ));
    }

    #[test]
    fn cursors_belong_to_their_query() {
        let s = MessageSearch {
            q: "a".into(),
            ..MessageSearch::default()
        };
        let c = encode_cursor(&Cursor {
            h: query_hash(&s),
            o: Some(20),
            k: None,
        });
        assert_eq!(decode_cursor(&c, query_hash(&s)).unwrap().o, Some(20));
        let other = MessageSearch {
            q: "b".into(),
            ..MessageSearch::default()
        };
        assert!(matches!(
            decode_cursor(&c, query_hash(&other)),
            Err(QueryError::InvalidCursor(_))
        ));
        assert!(matches!(
            decode_cursor("!!", 1),
            Err(QueryError::InvalidCursor(_))
        ));
    }

    #[test]
    fn escaping_and_truncation() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#x27;");
        assert_eq!(truncate("héllo", 2), "hé");
    }
}
