//! Shared state of the gateway, the caller extractors ([`Caller`] for users, [`Admin`] for the
//! internal API) and the helpers every write uses: access checks, rate limits, publishing to the
//! log and waiting for persistence (read-your-writes).

use axum::extract::FromRequestParts;
use caas_bus::{DynBus, Envelope, LogPosition, topics};
use caas_config::Config;
use caas_domain::event::{ConversationEvent, SCHEMA_VERSION};
use caas_domain::model::{AuditEntry, Conversation, Member, Role};
use caas_domain::permission::{self, Action, ConversationFacts, Request, Resource};
use caas_domain::{ConversationId, ErrorCode, TenantId, UserId};
use caas_kit::auth::{Authenticator, Principal, bearer};
use caas_kit::correlation::CorrelationId;
use caas_kit::dedupe::Dedupe;
use caas_kit::error::ApiError;
use caas_kit::ratelimit::RateLimiter;
use caas_store::DynStore;
use http::request::Parts;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

pub use caas_store::PERSIST_CONSUMER;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub bus: DynBus,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<dyn RateLimiter>,
    pub dedupe: Arc<dyn Dedupe>,
    pub config: Arc<Config>,
    /// The bearer token of the internal admin API.
    pub admin_token: Arc<String>,
    /// Media metadata, to check the files a message carries.
    pub media: caas_media::repo::DynRepo,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// An authenticated user, with the request's correlation id.
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(http::header::AUTHORIZATION))?;
        let principal = state.auth.authenticate(token).await?;
        let correlation_id = correlation(parts);
        Ok(Caller {
            principal,
            correlation_id,
        })
    }
}

fn correlation(parts: &Parts) -> String {
    parts
        .extensions
        .get::<CorrelationId>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| CorrelationId::new().0)
}

/// The platform operator on the internal API.
#[derive(Debug, Clone)]
pub struct Admin {
    pub correlation_id: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(http::header::AUTHORIZATION))?;
        if !caas_kit::random::constant_time_eq(token, &state.admin_token) {
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "invalid admin token",
            ));
        }
        Ok(Admin {
            correlation_id: correlation(parts),
        })
    }
}

/// A conversation as the caller may see it.
#[derive(Debug, Clone)]
pub struct Access {
    pub conversation: Conversation,
    pub member: Option<Member>,
}

impl Access {
    pub fn role(&self) -> Option<Role> {
        self.member.as_ref().map(|m| m.role)
    }

    /// Decides with the permission matrix.
    pub fn decide(
        &self,
        caller: &Caller,
        resource: Resource,
        action: Action,
        owner: Option<&UserId>,
    ) -> Result<(), ApiError> {
        self.decide_member(caller, resource, action, owner, None, None)
    }

    pub fn decide_member(
        &self,
        caller: &Caller,
        resource: Resource,
        action: Action,
        owner: Option<&UserId>,
        target_role: Option<Role>,
        new_role: Option<Role>,
    ) -> Result<(), ApiError> {
        permission::authorize(&Request {
            actor: caller.user(),
            actor_role: self.role(),
            conversation: ConversationFacts {
                kind: self.conversation.kind,
                archived: self.conversation.is_archived(),
            },
            resource,
            action,
            owner,
            target_role,
            new_role,
        })
        .map_err(Into::into)
    }
}

impl AppState {
    /// The conversation and the caller's membership; 404 when it does not exist in the caller's
    /// tenant. Permission is decided by the caller with [`Access::decide`].
    pub async fn access(&self, caller: &Caller, id: &ConversationId) -> Result<Access, ApiError> {
        let conversation = self
            .store
            .get_conversation(caller.tenant(), id)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        let member = self
            .store
            .get_member(caller.tenant(), id, caller.user())
            .await?;
        Ok(Access {
            conversation,
            member,
        })
    }

    /// Takes one unit of the caller's and the tenant's budget of `what` (`msg` or `search`).
    pub async fn rate_limit(&self, caller: &Caller, what: &str) -> Result<(), ApiError> {
        let (per_user, per_tenant) = match what {
            "search" => (
                self.config.limits.searches_per_minute_per_user,
                caller.principal.tenant.quotas.searches_per_minute,
            ),
            _ => (
                self.config.limits.messages_per_minute_per_user,
                caller.principal.tenant.quotas.messages_per_minute,
            ),
        };
        let user_key = format!("{what}:u:{}:{}", caller.tenant(), caller.user());
        let d = self.limiter.check(&user_key, per_user).await;
        if !d.allowed {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("limit of {per_user} per minute per user reached"),
            )
            .with_retry_after(d.retry_after.as_secs().max(1)));
        }
        let tenant_key = format!("{what}:t:{}", caller.tenant());
        let d = self.limiter.check(&tenant_key, per_tenant).await;
        if !d.allowed {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!("the tenant's limit of {per_tenant} per minute is reached"),
            )
            .with_retry_after(d.retry_after.as_secs().max(1)));
        }
        Ok(())
    }

    /// Publishes a conversation event; returns once the log has it durably.
    pub async fn publish(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        correlation_id: &str,
        event: ConversationEvent,
    ) -> Result<LogPosition, ApiError> {
        let env = Envelope {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant_id: tenant.clone(),
            key: conversation.to_string(),
            correlation_id: correlation_id.to_string(),
            occurred_at: OffsetDateTime::now_utc(),
            event,
        };
        let type_name = env.event.type_name();
        Ok(env
            .publish(self.bus.as_ref(), topics::CONVERSATION_EVENTS, type_name)
            .await?)
    }

    /// Publishes an announcement (membership, read marker, conversation change) whose effect is
    /// already in the store. A failure is logged, not returned: the change happened.
    pub async fn announce(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        correlation_id: &str,
        event: ConversationEvent,
    ) {
        let kind = event.type_name();
        if let Err(e) = self
            .publish(tenant, conversation, correlation_id, event)
            .await
        {
            tracing::warn!(error = %e, tenant_id = %tenant, conversation_id = %conversation, kind, "Failed to announce a change on the log.");
        }
    }

    /// The partition of a conversation.
    pub fn partition_of(&self, conversation: &ConversationId) -> i32 {
        caas_bus::partition_for(
            conversation.as_str(),
            self.bus.partitions(topics::CONVERSATION_EVENTS),
        )
    }

    /// Waits until everything published to the conversation's partition before this call is in
    /// the store. Returns `false` if that did not happen within the configured time (the caller
    /// answers with what is stored and says so).
    pub async fn wait_persisted(&self, conversation: &ConversationId) -> Result<bool, ApiError> {
        let partition = self.partition_of(conversation);
        let target = self
            .bus
            .high_watermark(topics::CONVERSATION_EVENTS, partition)
            .await?;
        self.wait_progress(&[(partition, target)]).await
    }

    /// [`AppState::wait_persisted`] for every partition at once: what "my conversations"
    /// (last message, unread counts) needs to include every write published before the call.
    pub async fn wait_all_persisted(&self) -> Result<bool, ApiError> {
        let partitions = self.bus.partitions(topics::CONVERSATION_EVENTS) as i32;
        let targets = futures::future::try_join_all(
            (0..partitions).map(|p| self.bus.high_watermark(topics::CONVERSATION_EVENTS, p)),
        )
        .await?;
        let targets: Vec<(i32, i64)> = targets
            .into_iter()
            .enumerate()
            .map(|(p, t)| (p as i32, t))
            .collect();
        self.wait_progress(&targets).await
    }

    /// Waits until the persisted progress reaches every `(partition, next offset)` target.
    async fn wait_progress(&self, targets: &[(i32, i64)]) -> Result<bool, ApiError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.config.limits.read_your_writes_timeout_ms);
        let mut pause = Duration::from_millis(1);
        loop {
            let progress = self.store.progress(PERSIST_CONSUMER).await?;
            let behind = targets
                .iter()
                .find(|(p, t)| progress.get(p).copied().unwrap_or(0) < *t);
            let Some((partition, target)) = behind else {
                return Ok(true);
            };
            if Instant::now() >= deadline {
                tracing::warn!(
                    partition,
                    target,
                    "Persistence is behind the log; answering with stale data."
                );
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Appends to the audit trail; a failure is logged (the action happened).
    pub async fn audit(
        &self,
        tenant: &TenantId,
        actor: &str,
        action: &str,
        target: String,
        details: serde_json::Value,
    ) {
        let entry = AuditEntry {
            tenant_id: tenant.clone(),
            id: uuid::Uuid::now_v7().to_string(),
            at: OffsetDateTime::now_utc(),
            actor: actor.to_string(),
            action: action.to_string(),
            target,
            details,
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action, "Failed to write the audit trail.");
        }
    }
}

/// The response header that marks an answer that may miss the newest writes.
pub const CONSISTENCY_HEADER: &str = "x-caas-consistency";
