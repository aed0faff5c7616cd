//! Applying the log to the embedded store: one event at a time inside the batch transaction
//! ([`apply_one`]), with what new messages do to their conversations gathered per batch
//! ([`Pending`]).

use super::{load_conversation, load_message, save_conversation, save_message, sql, to_json};
use crate::{LogEvent, Result};
use caas_domain::UserId;
use caas_domain::event::ConversationEvent;
use caas_domain::model::{Conversation, Message, Position};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// What the new messages of a batch do to their conversations, gathered and written once per
/// conversation ([`Pending::flush`]): the last-message preview and the members' unread counts.
/// A batch of a thousand messages in one conversation rewrites its document and its members'
/// rows once, not a thousand times.
#[derive(Default)]
pub(super) struct Pending {
    conversations: HashMap<(String, String), PendingConversation>,
}

struct PendingConversation {
    /// `None`: the conversation does not exist (its messages are skipped).
    conversation: Option<Conversation>,
    preview_changed: bool,
    /// (sender, position) of each top-level message created in this batch, not yet counted.
    unread: Vec<(UserId, Position)>,
}

impl Pending {
    fn conversation<'a>(
        &'a mut self,
        c: &Connection,
        t: &str,
        id: &str,
    ) -> Result<&'a mut PendingConversation> {
        Ok(
            match self.conversations.entry((t.to_string(), id.to_string())) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(PendingConversation {
                    conversation: load_conversation(c, t, id)?,
                    preview_changed: false,
                    unread: Vec::new(),
                }),
            },
        )
    }

    /// Writes what was gathered and forgets it (the next event reads the store afresh).
    pub(super) fn flush(&mut self, c: &Connection) -> Result<()> {
        for ((t, id), p) in self.conversations.drain() {
            let Some(conv) = p.conversation else { continue };
            if p.preview_changed {
                save_conversation(c, &conv)?;
            }
            if p.unread.is_empty() {
                continue;
            }
            // Each member gains one unread message per new message by someone else that is
            // after their read marker.
            let members: Vec<(String, i64)> = c
                .prepare_cached(
                    "SELECT user_id, last_read FROM members WHERE tenant_id = ?1 AND conversation_id = ?2",
                )
                .map_err(sql)?
                .query_map(params![t, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql)?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql)?;
            let mut bump = c
                .prepare_cached(
                    "UPDATE members SET unread = unread + ?4
                     WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3",
                )
                .map_err(sql)?;
            for (user, last_read) in members {
                let n = p
                    .unread
                    .iter()
                    .filter(|(sender, position)| sender.as_str() != user && last_read < *position)
                    .count();
                if n > 0 {
                    bump.execute(params![t, id, user, n as i64]).map_err(sql)?;
                }
            }
        }
        Ok(())
    }
}

/// Applies one event inside the batch transaction. Returns whether it had an effect. New
/// messages update their conversation through `pending`; every other event first has what is
/// pending written, so it reads and changes the store as if events were applied one by one.
pub(super) fn apply_one(c: &Connection, pending: &mut Pending, ev: &LogEvent) -> Result<Outcome> {
    let t = ev.tenant_id.as_str();
    let conv_id = ev.conversation_id.as_str();
    if !matches!(ev.event, ConversationEvent::MessageCreated(_)) {
        pending.flush(c)?;
    }
    match &ev.event {
        ConversationEvent::MessageCreated(m) => {
            let p = pending.conversation(c, t, conv_id)?;
            let Some(conv) = p.conversation.as_mut() else {
                return Ok(Outcome::Skipped);
            };
            let msg = m.to_message(&ev.tenant_id, &ev.conversation_id, ev.offset);
            let inserted = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages
                     (tenant_id, id, conversation_id, position, parent_id, sender_id, deleted, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                )
                .map_err(sql)?
                .execute(params![
                    t,
                    msg.id.to_string(),
                    conv_id,
                    msg.position,
                    msg.parent_id.map(|p| p.to_string()),
                    msg.sender_id.as_str(),
                    to_json(&msg)?
                ])
                .map_err(sql)?;
            if inserted == 0 {
                return Ok(Outcome::Duplicate);
            }
            if let Some(parent) = msg.parent_id {
                if let Some(mut p) = load_message(c, t, &parent.to_string())? {
                    p.reply_count += 1;
                    save_message(c, &p)?;
                }
                return Ok(Outcome::Applied);
            }
            if conv
                .last_message
                .as_ref()
                .is_none_or(|l| l.position < msg.position)
            {
                conv.last_message = Some(msg.preview());
                p.preview_changed = true;
            }
            p.unread.push((msg.sender_id, msg.position));
            Ok(Outcome::Applied)
        }
        ConversationEvent::MessageUpdated(u) => {
            let Some(mut msg) = load_message(c, t, &u.message_id.to_string())? else {
                return Ok(Outcome::Skipped);
            };
            if msg.conversation_id != ev.conversation_id {
                return Ok(Outcome::Skipped);
            }
            if msg.deleted_at.is_some() {
                return Ok(Outcome::Duplicate);
            }
            msg.text = u.text.clone();
            msg.html = u.html.clone();
            msg.mentions = u.mentions.clone();
            msg.links = u.links.clone();
            msg.hashtags = u.hashtags.clone();
            msg.edited_at = Some(u.edited_at);
            save_message(c, &msg)?;
            refresh_preview(c, &msg)?;
            Ok(Outcome::Applied)
        }
        ConversationEvent::MessageDeleted(d) => {
            let Some(mut msg) = load_message(c, t, &d.message_id.to_string())? else {
                return Ok(Outcome::Skipped);
            };
            if msg.conversation_id != ev.conversation_id {
                return Ok(Outcome::Skipped);
            }
            if msg.deleted_at.is_some() {
                return Ok(Outcome::Duplicate);
            }
            msg.deleted_at = Some(d.deleted_at);
            msg.deleted_by = Some(d.deleted_by.clone());
            save_message(c, &msg)?;
            if msg.parent_id.is_none() {
                c.prepare_cached(
                    "UPDATE members SET unread = unread - 1
                     WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id <> ?3
                       AND last_read < ?4 AND unread > 0",
                )
                .map_err(sql)?
                .execute(params![t, conv_id, msg.sender_id.as_str(), msg.position])
                .map_err(sql)?;
            }
            refresh_preview(c, &msg.redacted())?;
            Ok(Outcome::Applied)
        }
        ConversationEvent::ReactionAdded(r) | ConversationEvent::ReactionRemoved(r) => {
            let Some(mut msg) = load_message(c, t, &r.message_id.to_string())? else {
                return Ok(Outcome::Skipped);
            };
            if msg.conversation_id != ev.conversation_id {
                return Ok(Outcome::Skipped);
            }
            let added = matches!(ev.event, ConversationEvent::ReactionAdded(_));
            let users = msg.reactions.entry(r.kind.clone()).or_default();
            let present = users.contains(&r.user_id);
            match (added, present) {
                (true, false) => users.push(r.user_id.clone()),
                (false, true) => users.retain(|u| u != &r.user_id),
                _ => return Ok(Outcome::Duplicate),
            }
            msg.reactions.retain(|_, users| !users.is_empty());
            save_message(c, &msg)?;
            Ok(Outcome::Applied)
        }
        // Written to the store by the gateway directly; on the log for fan-out and search.
        ConversationEvent::ReadUpdated(_)
        | ConversationEvent::MemberAdded(_)
        | ConversationEvent::MemberRemoved(_)
        | ConversationEvent::MemberUpdated(_)
        | ConversationEvent::ConversationUpdated(_)
        | ConversationEvent::UserUpdated(_)
        | ConversationEvent::MessageRejected(_) => {
            if load_conversation(c, t, conv_id)?.is_none() {
                return Ok(Outcome::Skipped);
            }
            Ok(Outcome::Applied)
        }
    }
}

/// Keeps the conversation's last-message preview in step with an edited or deleted message.
fn refresh_preview(c: &Connection, msg: &Message) -> Result<()> {
    let Some(mut conv) =
        load_conversation(c, msg.tenant_id.as_str(), msg.conversation_id.as_str())?
    else {
        return Ok(());
    };
    if conv.last_message.as_ref().is_some_and(|l| l.id == msg.id) {
        conv.last_message = Some(msg.preview());
        save_conversation(c, &conv)?;
    }
    Ok(())
}

pub(super) enum Outcome {
    Applied,
    Duplicate,
    Skipped,
}
