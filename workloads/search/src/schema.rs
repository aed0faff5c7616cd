//! The index schema: the fields of the three kinds of documents (messages, conversations,
//! users), the analyzers, and the index version. What lives here is pure: no I/O.
//!
//! Isolation by construction: every document carries its tenant (`tenant`, a term every query
//! requires) and, for messages and conversations, the `access` key `"<tenant>/<conversation>"`
//! that queries restrict to the caller's conversations. Neither can be left out by a query
//! builder: [`crate::query`] adds both before anything else.

use tantivy::Index;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};

/// Version of the schema and analyzers. Bump it with any change to either: an index of another
/// version is rebuilt from the store at the next start, never read with the wrong analyzer.
pub const INDEX_VERSION: u32 = 1;

/// The analyzer of message text and of names: words, lower case, accents folded, stemmed in
/// the configured language.
pub const TEXT_ANALYZER: &str = "caas_text";
/// The same without stemming: prefixes, suggestions, exact forms, names.
pub const RAW_ANALYZER: &str = "caas_raw";

pub const KIND_MESSAGE: &str = "message";
pub const KIND_CONVERSATION: &str = "conversation";
pub const KIND_USER: &str = "user";

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// `message`, `conversation` or `user`.
    pub kind: Field,
    /// Unique per document: `<kind>/<tenant>/<id>`; upserts delete by it.
    pub key: Field,
    pub tenant: Field,
    /// `<tenant>/<conversation>`: what membership filters on.
    pub access: Field,
    pub conversation_id: Field,
    /// Message id, conversation id or user id (stored).
    pub id: Field,
    pub sender: Field,
    /// Message text, stemmed, with positions (phrases), stored (highlights).
    pub text: Field,
    /// Message text, not stemmed, with positions (prefixes, exact forms).
    pub text_raw: Field,
    /// Conversation or user name, not stemmed.
    pub name: Field,
    /// Creation time, milliseconds since the epoch.
    pub created: Field,
    /// Time order with a tie-break: `created << 20 | hash(id) & 0xFFFFF`.
    pub sort_key: Field,
    pub has_attachment: Field,
    pub parent_id: Field,
    /// Log offset of the message's creation: its position in the conversation.
    pub position: Field,
    pub edited: Field,
}

impl Fields {
    fn get(schema: &Schema, name: &str) -> tantivy::Result<Field> {
        schema
            .get_field(name)
            .map_err(|_| tantivy::TantivyError::SchemaError(format!("field {name} is missing")))
    }

    /// The fields of an index built with [`schema`].
    pub fn of(schema: &Schema) -> tantivy::Result<Self> {
        let f = |n: &str| Self::get(schema, n);
        Ok(Self {
            kind: f("kind")?,
            key: f("key")?,
            tenant: f("tenant")?,
            access: f("access")?,
            conversation_id: f("conversation_id")?,
            id: f("id")?,
            sender: f("sender")?,
            text: f("text")?,
            text_raw: f("text_raw")?,
            name: f("name")?,
            created: f("created")?,
            sort_key: f("sort_key")?,
            has_attachment: f("has_attachment")?,
            parent_id: f("parent_id")?,
            position: f("position")?,
            edited: f("edited")?,
        })
    }
}

/// The schema of every index of this version.
pub fn schema() -> Schema {
    let mut b = Schema::builder();
    let text = |analyzer: &str, stored: bool| {
        let o = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(analyzer)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        if stored { o.set_stored() } else { o }
    };
    b.add_text_field("kind", STRING);
    b.add_text_field("key", STRING | STORED);
    b.add_text_field("tenant", STRING | STORED);
    b.add_text_field("access", STRING);
    b.add_text_field("conversation_id", STRING | STORED);
    b.add_text_field("id", STRING | STORED);
    b.add_text_field("sender", STRING | STORED);
    b.add_text_field("text", text(TEXT_ANALYZER, true));
    b.add_text_field("text_raw", text(RAW_ANALYZER, false));
    b.add_text_field("name", text(RAW_ANALYZER, true));
    b.add_i64_field("created", INDEXED | STORED | FAST);
    b.add_u64_field("sort_key", INDEXED | FAST);
    b.add_u64_field("has_attachment", INDEXED | STORED);
    b.add_text_field("parent_id", STRING | STORED);
    b.add_i64_field("position", STORED);
    b.add_i64_field("edited", STORED);
    b.build()
}

/// The stemming language for a configured name; `None` for an unknown one.
pub fn language(name: &str) -> Option<Language> {
    Some(match name.to_ascii_lowercase().as_str() {
        "arabic" => Language::Arabic,
        "danish" => Language::Danish,
        "dutch" => Language::Dutch,
        "english" => Language::English,
        "finnish" => Language::Finnish,
        "french" => Language::French,
        "german" => Language::German,
        "greek" => Language::Greek,
        "hungarian" => Language::Hungarian,
        "italian" => Language::Italian,
        "norwegian" => Language::Norwegian,
        "portuguese" => Language::Portuguese,
        "romanian" => Language::Romanian,
        "russian" => Language::Russian,
        "spanish" => Language::Spanish,
        "swedish" => Language::Swedish,
        "tamil" => Language::Tamil,
        "turkish" => Language::Turkish,
        _ => return None,
    })
}

/// What an index was built with: version and language. An index whose fingerprint differs
/// from the running code's is rebuilt, not read.
pub fn fingerprint(language: Language) -> String {
    format!("v{INDEX_VERSION}-{language:?}").to_ascii_lowercase()
}

/// The analyzer of message text.
pub fn text_analyzer(language: Language) -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(Stemmer::new(language))
        .build()
}

/// The analyzer without stemming.
pub fn raw_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Registers the analyzers on an opened or created index (they are not stored in it).
pub fn register_analyzers(index: &Index, language: Language) {
    index
        .tokenizers()
        .register(TEXT_ANALYZER, text_analyzer(language));
    index.tokenizers().register(RAW_ANALYZER, raw_analyzer());
}

/// The tokens `analyzer` makes of `text`.
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

pub fn message_key(tenant: &str, id: &str) -> String {
    format!("{KIND_MESSAGE}/{tenant}/{id}")
}

pub fn conversation_key(tenant: &str, id: &str) -> String {
    format!("{KIND_CONVERSATION}/{tenant}/{id}")
}

pub fn user_key(tenant: &str, id: &str) -> String {
    format!("{KIND_USER}/{tenant}/{id}")
}

/// The access key of a conversation: what documents carry and queries filter on.
pub fn access_key(tenant: &str, conversation: &str) -> String {
    format!("{tenant}/{conversation}")
}

/// FNV-1a 64: a hash that is the same in every process and version (sort keys are stored).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Time order with a deterministic tie-break between messages of the same millisecond.
pub fn sort_key(created_ms: i64, id: &str) -> u64 {
    ((created_ms.max(0) as u64) << 20) | (fnv64(id.as_bytes()) & 0xF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzers_fold_stem_and_keep_raw_forms() {
        let mut t = text_analyzer(Language::English);
        assert_eq!(
            tokens(&mut t, "Running CAFÉS, dogs!"),
            ["run", "cafe", "dog"]
        );
        let mut r = raw_analyzer();
        assert_eq!(tokens(&mut r, "Running CAFÉS"), ["running", "cafes"]);
        let mut fr = text_analyzer(Language::French);
        assert_eq!(tokens(&mut fr, "chanteuses"), ["chanteux"]);
    }

    #[test]
    fn fingerprint_changes_with_language() {
        assert_ne!(
            fingerprint(Language::English),
            fingerprint(Language::French)
        );
        assert!(language("German").is_some());
        assert!(language("klingon").is_none());
    }

    #[test]
    fn sort_keys_order_by_time_first() {
        assert!(sort_key(2, "a") > sort_key(1, "z"));
        assert_ne!(sort_key(1, "a"), sort_key(1, "b"));
        assert!(Fields::of(&schema()).is_ok());
    }
}
