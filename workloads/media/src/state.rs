//! The media workload's shared state, the authenticated [`Caller`], and the access checks:
//! every route resolves the caller's tenant from the token and reads only that tenant's records;
//! files are readable by current members of their conversation only.

use crate::blobs::Blobs;
use crate::error::MediaError;
use crate::metrics::MediaMetrics;
use crate::model::{MEDIA_EVENTS, Media, MediaEvent};
use crate::repo::DynRepo;
use crate::sign::Signer;
use axum::extract::FromRequestParts;
use caas_bus::{DynBus, Envelope};
use caas_config::MediaConfig;
use caas_domain::model::{Conversation, Member};
use caas_domain::permission::{self, Action, ConversationFacts, Request, Resource};
use caas_domain::{ConversationId, TenantId, UserId};
use caas_kit::auth::{Authenticator, Principal, bearer};
use caas_kit::correlation::CorrelationId;
use caas_store::DynStore;
use http::request::Parts;
use std::sync::Arc;
use time::OffsetDateTime;

/// Everything a media handler needs. Cheap to clone.
#[derive(Clone)]
pub struct MediaState {
    pub repo: DynRepo,
    pub blobs: Blobs,
    pub store: DynStore,
    pub bus: DynBus,
    pub auth: Arc<Authenticator>,
    pub config: Arc<MediaConfig>,
    pub signer: Signer,
    pub metrics: MediaMetrics,
}

impl std::fmt::Debug for MediaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaState")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub correlation_id: String,
}

impl Caller {
    pub fn tenant(&self) -> &TenantId {
        self.principal.tenant_id()
    }
    pub fn user(&self) -> &UserId {
        &self.principal.user_id
    }
}

pub(crate) fn correlation(parts: &Parts) -> String {
    parts
        .extensions
        .get::<CorrelationId>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| CorrelationId::new().0)
}

impl FromRequestParts<MediaState> for Caller {
    type Rejection = MediaError;

    async fn from_request_parts(parts: &mut Parts, state: &MediaState) -> Result<Self, MediaError> {
        let token = bearer(parts.headers.get(http::header::AUTHORIZATION))?;
        let principal = state.auth.authenticate(token).await?;
        Ok(Caller {
            principal,
            correlation_id: correlation(parts),
        })
    }
}

impl MediaState {
    /// The conversation and the caller's membership; 404 when the conversation does not exist
    /// in the caller's tenant.
    pub async fn conversation(
        &self,
        caller: &Caller,
        id: &ConversationId,
    ) -> Result<(Conversation, Option<Member>), MediaError> {
        let conversation = self
            .store
            .get_conversation(caller.tenant(), id)
            .await?
            .ok_or_else(|| MediaError::not_found("conversation"))?;
        let member = self
            .store
            .get_member(caller.tenant(), id, caller.user())
            .await?;
        Ok((conversation, member))
    }

    /// Uploading into a conversation is sending a message there: the permission matrix decides.
    pub async fn may_upload(&self, caller: &Caller, id: &ConversationId) -> Result<(), MediaError> {
        let (conversation, member) = self.conversation(caller, id).await?;
        decide(
            caller,
            &conversation,
            member.as_ref(),
            Action::Create,
            caller.user(),
        )
    }

    /// A live file of the caller's tenant that the caller may read: only current members of the
    /// file's conversation (whatever its kind) may; everyone else gets 404.
    pub async fn readable(&self, caller: &Caller, id: &str) -> Result<Media, MediaError> {
        crate::model::check_id(id)?;
        let media = self
            .repo
            .get_media(caller.tenant(), id)
            .await?
            .filter(|m| !m.is_deleted())
            .ok_or_else(|| MediaError::not_found("file"))?;
        let member = self
            .store
            .get_member(caller.tenant(), &media.conversation_id, caller.user())
            .await?;
        if member.is_none() {
            return Err(MediaError::not_found("file"));
        }
        Ok(media)
    }

    /// Deleting a file is deleting a message: own files, or anyone's for moderators and above.
    pub async fn may_delete(&self, caller: &Caller, media: &Media) -> Result<(), MediaError> {
        let (conversation, member) = self.conversation(caller, &media.conversation_id).await?;
        decide(
            caller,
            &conversation,
            member.as_ref(),
            Action::Delete,
            &media.owner_id,
        )
    }

    /// Publishes a media event keyed by conversation. The change already happened, so a failure
    /// is logged and counted, not returned.
    pub async fn announce(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        correlation_id: &str,
        event: MediaEvent,
    ) {
        let kind = event.type_name();
        let env = Envelope {
            v: 1,
            id: uuid::Uuid::now_v7(),
            tenant_id: tenant.clone(),
            key: conversation.to_string(),
            correlation_id: correlation_id.to_string(),
            occurred_at: OffsetDateTime::now_utc(),
            event,
        };
        if let Err(e) = env.publish(self.bus.as_ref(), MEDIA_EVENTS, kind).await {
            self.metrics.events_failed.inc();
            tracing::warn!(error = %e, tenant_id = %tenant, kind, "Failed to publish a media event.");
        }
    }
}

fn decide(
    caller: &Caller,
    conversation: &Conversation,
    member: Option<&Member>,
    action: Action,
    owner: &UserId,
) -> Result<(), MediaError> {
    permission::authorize(&Request {
        actor: caller.user(),
        actor_role: member.map(|m| m.role),
        conversation: ConversationFacts {
            kind: conversation.kind,
            archived: conversation.is_archived(),
        },
        resource: Resource::Message,
        action,
        owner: Some(owner),
        target_role: None,
        new_role: None,
    })
    .map_err(|e| MediaError::from(caas_kit::error::ApiError::from(e)))
}
