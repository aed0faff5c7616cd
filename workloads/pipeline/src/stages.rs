//! The per-event stages before persistence, each a function of its own: validation (decode the
//! envelope, check its fields), tenant context (the tenant exists and is active),
//! authorization (the actor is still a member and their role allows the action) and
//! transformation (render the text again: sanitised HTML, mentions, links, hashtags).
//!
//! Lookups go through [`Lookups`], a cache that lives for one batch: a batch of a thousand
//! messages in one conversation reads the tenant, the conversation and the sender's membership
//! once. Store failures are [`Kind::Transient`](crate::error::Kind) (the batch waits for the
//! store) or permanent (the event becomes a dead letter); refusals are permanent.

use crate::error::{Stage, StageError, codes};
use caas_bus::{Delivery, Envelope, HEADER_TENANT};
use caas_domain::event::{ConversationEvent, SCHEMA_VERSION};
use caas_domain::model::{Conversation, Member, Tenant, TenantStatus};
use caas_domain::permission::{Action, ConversationFacts, Request, Resource, authorize};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_store::{LogEvent, Store};
use std::collections::HashMap;

/// A decoded conversation event with what the later stages need.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub envelope: Envelope<ConversationEvent>,
    pub conversation_id: ConversationId,
}

/// Validation, first half: the record is a conversation event of a schema this version reads,
/// keyed by a valid conversation id, and its tenant header (when present) agrees with its body.
pub fn decode(d: &Delivery) -> Result<Decoded, StageError> {
    let envelope = Envelope::<ConversationEvent>::from_delivery(d).map_err(|e| {
        StageError::permanent(Stage::Validate, codes::MALFORMED_PAYLOAD, e.to_string())
    })?;
    if envelope.v > SCHEMA_VERSION {
        return Err(StageError::permanent(
            Stage::Validate,
            codes::UNSUPPORTED_SCHEMA,
            format!(
                "schema version {} is newer than this pipeline reads ({SCHEMA_VERSION})",
                envelope.v
            ),
        ));
    }
    let conversation_id = ConversationId::parse(envelope.key.as_str())
        .map_err(|e| StageError::permanent(Stage::Validate, codes::INVALID_KEY, e.to_string()))?;
    if d.key != envelope.key {
        return Err(StageError::permanent(
            Stage::Validate,
            codes::INVALID_KEY,
            "the record key is not the envelope's key",
        ));
    }
    if let Some(h) = d.header(HEADER_TENANT)
        && h != envelope.tenant_id.as_str()
    {
        return Err(StageError::permanent(
            Stage::Validate,
            codes::TENANT_MISMATCH,
            format!(
                "tenant header {h} differs from the event's tenant {}",
                envelope.tenant_id
            ),
        ));
    }
    Ok(Decoded {
        envelope,
        conversation_id,
    })
}

/// Validation, second half: the event's own fields (text, reaction, ids).
pub fn validate(event: &ConversationEvent) -> Result<(), StageError> {
    use caas_domain::model::{
        validate_body, validate_client_msg_id, validate_reaction, validate_text,
    };
    let v = |r: Result<(), caas_domain::DomainError>| {
        r.map_err(|e| StageError::domain(Stage::Validate, &e))
    };
    match event {
        ConversationEvent::MessageCreated(m) => {
            v(validate_body(&m.text, !m.attachments.is_empty()))?;
            if let Some(c) = &m.client_msg_id {
                v(validate_client_msg_id(c))?;
            }
            if m.parent_id == Some(m.message_id) {
                return Err(StageError::permanent(
                    Stage::Validate,
                    "invalid_argument",
                    "a message cannot reply to itself",
                ));
            }
            Ok(())
        }
        ConversationEvent::MessageUpdated(m) => v(validate_text(&m.text)),
        ConversationEvent::ReactionAdded(r) | ConversationEvent::ReactionRemoved(r) => {
            v(validate_reaction(&r.kind))
        }
        _ => Ok(()),
    }
}

/// Whether an event carries content that the stages check. The others (read markers,
/// membership and conversation changes) are announcements of changes the accepter already
/// stored; they pass through for the store to count.
pub fn is_content(event: &ConversationEvent) -> bool {
    matches!(
        event,
        ConversationEvent::MessageCreated(_)
            | ConversationEvent::MessageUpdated(_)
            | ConversationEvent::MessageDeleted(_)
            | ConversationEvent::ReactionAdded(_)
            | ConversationEvent::ReactionRemoved(_)
    )
}

type ConvKey = (TenantId, ConversationId);

/// Senders of recently created messages, by tenant and message id.
pub type Senders = HashMap<(TenantId, MessageId), UserId>;

/// Store lookups of one batch, cached.
pub struct Lookups<'a> {
    store: &'a dyn Store,
    tenants: HashMap<TenantId, Option<Tenant>>,
    conversations: HashMap<ConvKey, Option<Conversation>>,
    members: HashMap<(ConvKey, UserId), Option<Member>>,
    /// Senders of messages created earlier in this batch (not stored yet).
    senders: Senders,
}

impl<'a> Lookups<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self {
            store,
            tenants: HashMap::new(),
            conversations: HashMap::new(),
            members: HashMap::new(),
            senders: HashMap::new(),
        }
    }

    async fn tenant(&mut self, id: &TenantId) -> Result<Option<Tenant>, StageError> {
        if let Some(t) = self.tenants.get(id) {
            return Ok(t.clone());
        }
        let t = self
            .store
            .get_tenant(id)
            .await
            .map_err(|e| StageError::store(Stage::Tenant, &e))?;
        self.tenants.insert(id.clone(), t.clone());
        Ok(t)
    }

    async fn conversation(
        &mut self,
        t: &TenantId,
        c: &ConversationId,
    ) -> Result<Option<Conversation>, StageError> {
        let key = (t.clone(), c.clone());
        if let Some(x) = self.conversations.get(&key) {
            return Ok(x.clone());
        }
        let x = self
            .store
            .get_conversation(t, c)
            .await
            .map_err(|e| StageError::store(Stage::Authorize, &e))?;
        self.conversations.insert(key, x.clone());
        Ok(x)
    }

    async fn member(
        &mut self,
        t: &TenantId,
        c: &ConversationId,
        u: &UserId,
    ) -> Result<Option<Member>, StageError> {
        let key = ((t.clone(), c.clone()), u.clone());
        if let Some(x) = self.members.get(&key) {
            return Ok(x.clone());
        }
        let x = self
            .store
            .get_member(t, c, u)
            .await
            .map_err(|e| StageError::store(Stage::Authorize, &e))?;
        self.members.insert(key, x.clone());
        Ok(x)
    }

    async fn sender_of(
        &mut self,
        t: &TenantId,
        c: &ConversationId,
        m: &MessageId,
    ) -> Result<Option<UserId>, StageError> {
        if let Some(s) = self.senders.get(&(t.clone(), *m)) {
            return Ok(Some(s.clone()));
        }
        Ok(self
            .store
            .get_message(t, c, m)
            .await
            .map_err(|e| StageError::store(Stage::Authorize, &e))?
            .map(|msg| msg.sender_id))
    }

    /// Remembers a message created in this batch, for edits and deletes later in the batch.
    pub fn created(&mut self, t: &TenantId, m: &MessageId, sender: &UserId) {
        self.senders.insert((t.clone(), *m), sender.clone());
    }

    /// Lookups that also know the messages created by the previous batch (which may still
    /// be being persisted while this one is prepared).
    pub fn after(store: &'a dyn Store, previous: Senders) -> Self {
        let mut l = Self::new(store);
        l.senders = previous;
        l
    }

    /// The messages created in this batch (for [`Lookups::after`]).
    pub fn into_created(self) -> Senders {
        self.senders
    }
}

/// Tenant context: the tenant exists and, for content, is active.
pub async fn tenant_context(
    lookups: &mut Lookups<'_>,
    tenant: &TenantId,
    content: bool,
) -> Result<(), StageError> {
    match lookups.tenant(tenant).await? {
        None => Err(StageError::permanent(
            Stage::Tenant,
            codes::UNKNOWN_TENANT,
            format!("no tenant {tenant}"),
        )),
        Some(t) if content && t.status == TenantStatus::Suspended => Err(StageError::permanent(
            Stage::Tenant,
            codes::TENANT_SUSPENDED,
            format!("tenant {tenant} is suspended"),
        )),
        Some(_) => Ok(()),
    }
}

/// Authorization: the actor of a content event is a member of the conversation now, and the
/// permission matrix (role, ownership, archived) allows the action.
pub async fn authorize_event(
    lookups: &mut Lookups<'_>,
    tenant: &TenantId,
    conversation: &ConversationId,
    event: &ConversationEvent,
) -> Result<(), StageError> {
    use ConversationEvent as E;
    let (actor, resource, action, message) = match event {
        E::MessageCreated(m) => (&m.sender_id, Resource::Message, Action::Create, None),
        E::MessageUpdated(m) => (
            &m.editor_id,
            Resource::Message,
            Action::Update,
            Some(m.message_id),
        ),
        E::MessageDeleted(m) => (
            &m.deleted_by,
            Resource::Message,
            Action::Delete,
            Some(m.message_id),
        ),
        E::ReactionAdded(r) => (&r.user_id, Resource::Reaction, Action::Create, None),
        E::ReactionRemoved(r) => (&r.user_id, Resource::Reaction, Action::Delete, None),
        _ => return Ok(()),
    };
    let Some(conv) = lookups.conversation(tenant, conversation).await? else {
        return Err(StageError::permanent(
            Stage::Authorize,
            codes::UNKNOWN_CONVERSATION,
            format!("no conversation {conversation}"),
        ));
    };
    let role = lookups
        .member(tenant, conversation, actor)
        .await?
        .map(|m| m.role);
    if role.is_none() {
        return Err(StageError::permanent(
            Stage::Authorize,
            codes::NOT_MEMBER,
            format!("{actor} is not a member of {conversation}"),
        ));
    }
    let owner = match message {
        Some(id) => match lookups.sender_of(tenant, conversation, &id).await? {
            Some(s) => Some(s),
            None => {
                return Err(StageError::permanent(
                    Stage::Authorize,
                    codes::UNKNOWN_MESSAGE,
                    format!("no message {id} in {conversation}"),
                ));
            }
        },
        None => Some(actor.clone()),
    };
    authorize(&Request {
        actor,
        actor_role: role,
        conversation: ConversationFacts {
            kind: conv.kind,
            archived: conv.is_archived(),
        },
        resource,
        action,
        owner: owner.as_ref(),
        target_role: None,
        new_role: None,
    })
    .map_err(|e| StageError::domain(Stage::Authorize, &e))
}

/// Transformation: renders message text again here, so what is stored never depends on what a
/// producer claimed: the HTML, links and hashtags are this version's rendering of the raw
/// text, and mentions are kept only where the text really mentions them (the accepter has
/// already limited them to members).
pub fn transform(event: ConversationEvent) -> ConversationEvent {
    use caas_domain::text::render;
    match event {
        ConversationEvent::MessageCreated(mut m) => {
            let r = render(&m.text);
            m.mentions
                .retain(|u| r.mentions.iter().any(|c| c == u.as_str()));
            (m.html, m.links, m.hashtags) = (r.html, r.links, r.hashtags);
            ConversationEvent::MessageCreated(m)
        }
        ConversationEvent::MessageUpdated(mut m) => {
            let r = render(&m.text);
            m.mentions
                .retain(|u| r.mentions.iter().any(|c| c == u.as_str()));
            (m.html, m.links, m.hashtags) = (r.html, r.links, r.hashtags);
            ConversationEvent::MessageUpdated(m)
        }
        other => other,
    }
}

/// The stages of one record that need no store: validation (decode, then the event's fields)
/// and transformation. Pure, so a batch runs them in parallel ([`pure_all`]).
pub fn pure(d: &Delivery) -> Result<Decoded, StageError> {
    let Decoded {
        mut envelope,
        conversation_id,
    } = decode(d)?;
    validate(&envelope.event)?;
    envelope.event = transform(envelope.event);
    Ok(Decoded {
        envelope,
        conversation_id,
    })
}

/// [`pure`] over a batch, split across the blocking pool's threads (one chunk per core) when
/// the batch is large enough to be worth it. Results are in batch order.
pub async fn pure_all(batch: &[Delivery]) -> Vec<Result<Decoded, StageError>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || batch.len() < 256 {
        return batch.iter().map(pure).collect();
    }
    let chunk = batch.len().div_ceil(cores);
    let tasks: Vec<_> = batch
        .chunks(chunk)
        .map(|c| {
            let c = c.to_vec();
            tokio::task::spawn_blocking(move || c.iter().map(pure).collect::<Vec<_>>())
        })
        .collect();
    let mut out = Vec::with_capacity(batch.len());
    for (t, c) in tasks.into_iter().zip(batch.chunks(chunk)) {
        match t.await {
            Ok(r) => out.extend(r),
            // A panic in a pure stage (a bug): run that chunk here to get its errors or results.
            Err(_) => out.extend(c.iter().map(pure)),
        }
    }
    out
}

/// The stages of one record that read the store, after [`pure`]: tenant context, then
/// authorization. Returns the event ready for the store and the correlation id.
pub async fn checked(
    lookups: &mut Lookups<'_>,
    d: &Delivery,
    decoded: Decoded,
) -> Result<(LogEvent, String), StageError> {
    let Decoded {
        envelope,
        conversation_id,
    } = decoded;
    let content = is_content(&envelope.event);
    tenant_context(lookups, &envelope.tenant_id, content).await?;
    authorize_event(
        lookups,
        &envelope.tenant_id,
        &conversation_id,
        &envelope.event,
    )
    .await?;
    if let ConversationEvent::MessageCreated(m) = &envelope.event {
        lookups.created(&envelope.tenant_id, &m.message_id, &m.sender_id);
    }
    Ok((
        LogEvent {
            partition: d.partition,
            offset: d.offset,
            tenant_id: envelope.tenant_id,
            conversation_id,
            event: envelope.event,
        },
        envelope.correlation_id,
    ))
}

/// Every stage before persistence for one record, in order: validate, transform, tenant,
/// authorize.
pub async fn prepare(
    lookups: &mut Lookups<'_>,
    d: &Delivery,
) -> Result<(LogEvent, String), StageError> {
    let decoded = pure(d)?;
    checked(lookups, d, decoded).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_domain::event::MessageCreated;

    #[test]
    fn a_producer_cannot_smuggle_html_or_mentions() {
        let ev = ConversationEvent::MessageCreated(MessageCreated {
            message_id: MessageId::generate(),
            sender_id: UserId::parse("eve").unwrap(),
            text: "hi @bob".into(),
            html: "<img src=x onerror=alert(1)>".into(),
            mentions: vec![
                UserId::parse("bob").unwrap(),
                UserId::parse("carl").unwrap(),
            ],
            links: vec!["javascript:alert(1)".into()],
            hashtags: vec![],
            parent_id: None,
            client_msg_id: None,
            forwarded_from: None,
            attachments: Vec::new(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        });
        let ConversationEvent::MessageCreated(m) = transform(ev) else {
            panic!("kind changed")
        };
        assert!(!m.html.contains("<img"), "{}", m.html);
        assert!(m.links.is_empty());
        assert_eq!(m.mentions, vec![UserId::parse("bob").unwrap()]);
    }

    fn delivery(payload: &str, key: &str, tenant: Option<&str>) -> Delivery {
        Delivery {
            topic: "conversation-events".into(),
            partition: 0,
            offset: 7,
            key: key.into(),
            payload: bytes::Bytes::from(payload.to_string()),
            headers: tenant
                .map(|t| vec![(HEADER_TENANT.to_string(), t.to_string())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn decode_refuses_what_it_cannot_trust() {
        let e = decode(&delivery("{oops", "room", Some("acme"))).unwrap_err();
        assert_eq!(
            (e.stage, e.code),
            (Stage::Validate, codes::MALFORMED_PAYLOAD)
        );
        let env = Envelope {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant_id: TenantId::parse("acme").unwrap(),
            key: "room".into(),
            correlation_id: "c".into(),
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
            event: ConversationEvent::MessageDeleted(caas_domain::event::MessageDeleted {
                message_id: MessageId::generate(),
                deleted_by: UserId::parse("ann").unwrap(),
                deleted_at: time::OffsetDateTime::UNIX_EPOCH,
            }),
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(decode(&delivery(&json, "room", Some("acme"))).is_ok());
        let e = decode(&delivery(&json, "room", Some("other"))).unwrap_err();
        assert_eq!(e.code, codes::TENANT_MISMATCH);
        let e = decode(&delivery(&json, "hall", Some("acme"))).unwrap_err();
        assert_eq!(e.code, codes::INVALID_KEY);
        let mut newer = env.clone();
        newer.v = SCHEMA_VERSION + 1;
        let e = decode(&delivery(
            &serde_json::to_string(&newer).unwrap(),
            "room",
            None,
        ))
        .unwrap_err();
        assert_eq!(e.code, codes::UNSUPPORTED_SCHEMA);
    }

    #[test]
    fn validation_uses_the_domain_rules() {
        let ev = ConversationEvent::MessageCreated(MessageCreated {
            message_id: MessageId::generate(),
            sender_id: UserId::parse("eve").unwrap(),
            text: "   ".into(),
            html: String::new(),
            mentions: vec![],
            links: vec![],
            hashtags: vec![],
            parent_id: None,
            client_msg_id: None,
            forwarded_from: None,
            attachments: Vec::new(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        });
        let e = validate(&ev).unwrap_err();
        assert_eq!((e.stage, e.code), (Stage::Validate, "text_empty"));

        // The same empty text is a message when it carries a file.
        let ConversationEvent::MessageCreated(mut m) = ev else {
            unreachable!()
        };
        m.attachments.push(caas_domain::model::Attachment {
            id: "f1".into(),
            name: "a.png".into(),
            content_type: "image/png".into(),
            size: 1,
            width: None,
            height: None,
            has_thumbnail: false,
        });
        assert!(validate(&ConversationEvent::MessageCreated(m)).is_ok());
    }
}
