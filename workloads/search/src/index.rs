//! One generation of the index on disk: a tantivy index in `<indexDir>/gen-<id>/`, its writer
//! and reader, and the log positions it has consumed, kept **in the tantivy commit payload**
//! so that the documents and the positions they reflect are committed atomically.
//!
//! `<indexDir>/state.json` names the current generation. A rebuild writes a new generation
//! beside it and switches the pointer (write to a temporary file, fsync, rename) when the new
//! one has caught up; a generation that is not current is garbage (an interrupted rebuild) and is
//! deleted at start.
//!
//! Everything here is blocking (tantivy is): callers run it on the blocking pool.

use crate::schema::{self, Fields, KIND_CONVERSATION, KIND_MESSAGE, KIND_USER};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tantivy::collector::TopDocs;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::tokenizer::Language;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("index state: {0}")]
    State(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// A message as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDoc {
    pub tenant: String,
    pub conversation_id: String,
    pub id: String,
    pub sender: String,
    pub text: String,
    pub created_ms: i64,
    pub edited_ms: Option<i64>,
    pub parent_id: Option<String>,
    pub has_attachment: bool,
    /// The log offset of its creation (its position in the conversation).
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationDoc {
    pub tenant: String,
    pub id: String,
    pub name: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserDoc {
    pub tenant: String,
    pub id: String,
    pub name: String,
}

/// One change to the index. Upserts replace by key, so applying an op twice is applying it once.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Message(MessageDoc),
    DeleteMessage { tenant: String, id: String },
    Conversation(ConversationDoc),
    DeleteConversation { tenant: String, id: String },
    User(UserDoc),
}

/// What a commit records besides the documents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Version and analyzer language the index was built with.
    pub fingerprint: String,
    /// Per partition of the conversation-events log: the next offset to index.
    pub positions: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    current: Option<String>,
}

/// One generation of the index.
pub struct Generation {
    pub id: String,
    pub dir: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
    pub fingerprint: String,
    writer: Mutex<IndexWriter>,
    positions: Mutex<BTreeMap<i32, i64>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn gen_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("gen-{id}"))
}

/// Writer threads and arena: tantivy wants at least 15 MB per thread.
fn writer(index: &Index, memory_mb: usize) -> Result<IndexWriter> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2);
    let bytes = (memory_mb.max(16 * threads)) * 1024 * 1024;
    Ok(index.writer_with_num_threads(threads, bytes)?)
}

impl Generation {
    /// Creates an empty generation with a new id.
    pub fn create(root: &Path, language: Language, memory_mb: usize) -> Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = gen_dir(root, &id);
        std::fs::create_dir_all(&dir)?;
        let index = Index::create_in_dir(&dir, schema::schema())?;
        let g = Self::from_index(id, dir, index, language, memory_mb, BTreeMap::new())?;
        // An empty commit that records the fingerprint.
        g.commit(BTreeMap::new())?;
        Ok(g)
    }

    /// Opens generation `id`; `Ok(None)` when it was built with another version or language.
    pub fn open(
        root: &Path,
        id: &str,
        language: Language,
        memory_mb: usize,
    ) -> Result<Option<Self>> {
        let dir = gen_dir(root, id);
        let index = Index::open_in_dir(&dir)?;
        let payload: Payload = match index.load_metas()?.payload {
            Some(p) => serde_json::from_str(&p).map_err(|e| IndexError::State(e.to_string()))?,
            None => return Ok(None),
        };
        if payload.fingerprint != schema::fingerprint(language)
            || index.schema() != schema::schema()
        {
            return Ok(None);
        }
        Ok(Some(Self::from_index(
            id.to_string(),
            dir,
            index,
            language,
            memory_mb,
            payload.positions,
        )?))
    }

    fn from_index(
        id: String,
        dir: PathBuf,
        index: Index,
        language: Language,
        memory_mb: usize,
        positions: BTreeMap<i32, i64>,
    ) -> Result<Self> {
        schema::register_analyzers(&index, language);
        let fields = Fields::of(&index.schema())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = writer(&index, memory_mb)?;
        Ok(Self {
            id,
            dir,
            index,
            reader,
            fields,
            fingerprint: schema::fingerprint(language),
            writer: Mutex::new(writer),
            positions: Mutex::new(positions),
        })
    }

    /// Per partition, the next log offset to index (what the last commit recorded).
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.positions.lock().clone()
    }

    /// Adds `ops` to the writer (not yet visible or durable: see [`Generation::commit`]).
    pub fn apply(&self, ops: &[Op]) -> Result<()> {
        let w = self.writer.lock();
        for op in ops {
            self.apply_one(&w, op)?;
        }
        Ok(())
    }

    fn apply_one(&self, w: &IndexWriter, op: &Op) -> Result<()> {
        let f = &self.fields;
        match op {
            Op::Message(m) => {
                let key = schema::message_key(&m.tenant, &m.id);
                w.delete_term(Term::from_field_text(f.key, &key));
                let mut d = TantivyDocument::default();
                d.add_text(f.kind, KIND_MESSAGE);
                d.add_text(f.key, &key);
                d.add_text(f.tenant, &m.tenant);
                d.add_text(f.access, schema::access_key(&m.tenant, &m.conversation_id));
                d.add_text(f.conversation_id, &m.conversation_id);
                d.add_text(f.id, &m.id);
                d.add_text(f.sender, &m.sender);
                d.add_text(f.text, &m.text);
                d.add_text(f.text_raw, &m.text);
                d.add_i64(f.created, m.created_ms);
                d.add_u64(f.sort_key, schema::sort_key(m.created_ms, &m.id));
                d.add_u64(f.has_attachment, u64::from(m.has_attachment));
                if let Some(p) = &m.parent_id {
                    d.add_text(f.parent_id, p);
                }
                d.add_i64(f.position, m.position);
                if let Some(e) = m.edited_ms {
                    d.add_i64(f.edited, e);
                }
                w.add_document(d)?;
            }
            Op::DeleteMessage { tenant, id } => {
                w.delete_term(Term::from_field_text(
                    f.key,
                    &schema::message_key(tenant, id),
                ));
            }
            Op::Conversation(c) => {
                let key = schema::conversation_key(&c.tenant, &c.id);
                w.delete_term(Term::from_field_text(f.key, &key));
                let mut d = TantivyDocument::default();
                d.add_text(f.kind, KIND_CONVERSATION);
                d.add_text(f.key, &key);
                d.add_text(f.tenant, &c.tenant);
                d.add_text(f.access, schema::access_key(&c.tenant, &c.id));
                d.add_text(f.conversation_id, &c.id);
                d.add_text(f.id, &c.id);
                d.add_text(f.name, &c.name);
                d.add_i64(f.created, c.created_ms);
                d.add_u64(f.sort_key, schema::sort_key(c.created_ms, &c.id));
                w.add_document(d)?;
            }
            Op::DeleteConversation { tenant, id } => {
                w.delete_term(Term::from_field_text(
                    f.key,
                    &schema::conversation_key(tenant, id),
                ));
            }
            Op::User(u) => {
                let key = schema::user_key(&u.tenant, &u.id);
                w.delete_term(Term::from_field_text(f.key, &key));
                let mut d = TantivyDocument::default();
                d.add_text(f.kind, KIND_USER);
                d.add_text(f.key, &key);
                d.add_text(f.tenant, &u.tenant);
                d.add_text(f.id, &u.id);
                d.add_text(f.name, &u.name);
                d.add_u64(f.sort_key, 0);
                w.add_document(d)?;
            }
        }
        Ok(())
    }

    /// Makes everything applied durable and visible, together with `positions` (merged over the
    /// previous ones, never moving back), in one tantivy commit.
    pub fn commit(&self, positions: BTreeMap<i32, i64>) -> Result<()> {
        let mut merged = self.positions();
        for (p, o) in positions {
            let e = merged.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
        let payload = serde_json::to_string(&Payload {
            fingerprint: self.fingerprint.clone(),
            positions: merged.clone(),
        })
        .map_err(|e| IndexError::State(e.to_string()))?;
        {
            let mut w = self.writer.lock();
            let mut prepared = w.prepare_commit()?;
            prepared.set_payload(&payload);
            prepared.commit()?;
        }
        self.reader.reload()?;
        *self.positions.lock() = merged;
        Ok(())
    }

    /// Drops what was applied since the last commit (after a failed batch).
    pub fn rollback(&self) -> Result<()> {
        self.writer.lock().rollback()?;
        Ok(())
    }

    /// The indexed form of a message, as of the last commit.
    pub fn lookup_message(&self, tenant: &str, id: &str) -> Result<Option<MessageDoc>> {
        let f = &self.fields;
        let searcher = self.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(f.key, &schema::message_key(tenant, id)),
            IndexRecordOption::Basic,
        );
        let top = searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?;
        let Some((_, addr)) = top.first() else {
            return Ok(None);
        };
        let d: TantivyDocument = searcher.doc(*addr)?;
        Ok(Some(message_from(f, &d)))
    }

    /// Documents visible to searches.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn str_of(d: &TantivyDocument, f: tantivy::schema::Field) -> String {
    d.get_first(f)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub(crate) fn i64_of(d: &TantivyDocument, f: tantivy::schema::Field) -> Option<i64> {
    d.get_first(f).and_then(|v| v.as_i64())
}

/// A stored message document back into its parts.
pub fn message_from(f: &Fields, d: &TantivyDocument) -> MessageDoc {
    let parent = str_of(d, f.parent_id);
    MessageDoc {
        tenant: str_of(d, f.tenant),
        conversation_id: str_of(d, f.conversation_id),
        id: str_of(d, f.id),
        sender: str_of(d, f.sender),
        text: str_of(d, f.text),
        created_ms: i64_of(d, f.created).unwrap_or(0),
        edited_ms: i64_of(d, f.edited),
        parent_id: (!parent.is_empty()).then_some(parent),
        has_attachment: d
            .get_first(f.has_attachment)
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            == 1,
        position: i64_of(d, f.position).unwrap_or(0),
    }
}

/// The current generation named by `<root>/state.json`, if any.
pub fn current_id(root: &Path) -> Result<Option<String>> {
    let path = root.join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let s: State =
                serde_json::from_slice(&bytes).map_err(|e| IndexError::State(e.to_string()))?;
            Ok(s.current)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes `id` the current generation, atomically and durably.
pub fn set_current(root: &Path, id: &str) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join("state.json.tmp");
    let bytes = serde_json::to_vec(&State {
        current: Some(id.to_string()),
    })
    .map_err(|e| IndexError::State(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, root.join("state.json"))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deletes every generation directory except `keep`.
pub fn remove_other_generations(root: &Path, keep: Option<&str>) -> Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(0);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(id) = name.strip_prefix("gen-")
            && Some(id) != keep
        {
            remove_dir_settled(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// `remove_dir_all`, tried again for up to 2 s while the directory keeps getting files: a
/// retired generation's writer can still be finishing a segment merge in the background (its
/// last handle was just dropped), and a file created during the removal makes it fail with
/// "directory not empty".
fn remove_dir_settled(dir: &Path) -> Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(id: &str, text: &str) -> MessageDoc {
        MessageDoc {
            tenant: "t1".into(),
            conversation_id: "c1".into(),
            id: id.into(),
            sender: "u1".into(),
            text: text.into(),
            created_ms: 1_000,
            edited_ms: None,
            parent_id: None,
            has_attachment: false,
            position: 7,
        }
    }

    #[test]
    fn upserts_replace_and_positions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generation::create(dir.path(), Language::English, 16).unwrap();
        g.apply(&[
            Op::Message(msg("m1", "first")),
            Op::Message(msg("m1", "second")),
        ])
        .unwrap();
        g.commit(BTreeMap::from([(0, 5), (1, 2)])).unwrap();
        assert_eq!(g.num_docs(), 1, "an upsert replaces");
        assert_eq!(
            g.lookup_message("t1", "m1").unwrap().unwrap().text,
            "second"
        );
        assert_eq!(
            g.lookup_message("t2", "m1").unwrap(),
            None,
            "tenant is part of the key"
        );
        g.commit(BTreeMap::from([(0, 3)])).unwrap();
        assert_eq!(
            g.positions(),
            BTreeMap::from([(0, 5), (1, 2)]),
            "never back"
        );
        let id = g.id.clone();
        drop(g);
        set_current(dir.path(), &id).unwrap();
        assert_eq!(
            current_id(dir.path()).unwrap().as_deref(),
            Some(id.as_str())
        );
        let g = Generation::open(dir.path(), &id, Language::English, 16)
            .unwrap()
            .unwrap();
        assert_eq!(g.positions(), BTreeMap::from([(0, 5), (1, 2)]));
        assert_eq!(g.num_docs(), 1);
        drop(g);
        assert!(
            Generation::open(dir.path(), &id, Language::French, 16)
                .unwrap()
                .is_none(),
            "another analyzer means another index"
        );
    }

    #[test]
    fn rollback_drops_uncommitted_ops() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generation::create(dir.path(), Language::English, 16).unwrap();
        g.apply(&[Op::Message(msg("m1", "kept"))]).unwrap();
        g.commit(BTreeMap::new()).unwrap();
        g.apply(&[Op::DeleteMessage {
            tenant: "t1".into(),
            id: "m1".into(),
        }])
        .unwrap();
        g.rollback().unwrap();
        g.commit(BTreeMap::new()).unwrap();
        assert_eq!(g.num_docs(), 1);
    }
}
