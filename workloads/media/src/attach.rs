//! Attaching files to messages: what the write path checks before a message that names files
//! is accepted. Each id must be a live file of the sender's tenant, in the message's
//! conversation, uploaded by the sender; at most [`MAX_ATTACHMENTS`], no duplicates. The
//! answer is what the message carries about each file ([`Attachment`]), so clients can render
//! it without another request.

use crate::error::MediaError;
use crate::model::{self, Media};
use crate::repo::MediaRepo;
use caas_domain::{ConversationId, ErrorCode, TenantId, UserId};
use caas_kit::error::ApiError;

/// Most files one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

pub use caas_domain::model::Attachment;

impl From<&Media> for Attachment {
    fn from(m: &Media) -> Self {
        Self {
            id: m.id.clone(),
            name: m.name.clone(),
            content_type: m.content_type.clone(),
            size: m.size,
            width: m.width,
            height: m.height,
            has_thumbnail: m.thumbnail.is_some(),
        }
    }
}

fn refused(message: String) -> MediaError {
    MediaError::shared(ApiError::new(ErrorCode::InvalidAttachment, message))
}

/// Checks the files a message by `sender` in `conversation` wants to carry.
pub async fn validate(
    repo: &dyn MediaRepo,
    tenant: &TenantId,
    conversation: &ConversationId,
    sender: &UserId,
    ids: &[String],
) -> Result<Vec<Attachment>, MediaError> {
    if ids.len() > MAX_ATTACHMENTS {
        return Err(refused(format!(
            "a message carries at most {MAX_ATTACHMENTS} files"
        )));
    }
    let mut out: Vec<Attachment> = Vec::with_capacity(ids.len());
    for id in ids {
        if out.iter().any(|a| &a.id == id) {
            return Err(refused(format!("file {id} is attached twice")));
        }
        let not_usable = || refused(format!("file {id} does not exist or cannot be attached"));
        model::check_id(id).map_err(|_| not_usable())?;
        // One answer for "no such file", "another tenant's", "another conversation's" and
        // "someone else's": the sender learns nothing about files they cannot attach.
        let media = repo
            .get_media(tenant, id)
            .await?
            .filter(|m| {
                !m.is_deleted() && &m.conversation_id == conversation && &m.owner_id == sender
            })
            .ok_or_else(not_usable)?;
        out.push(Attachment::from(&media));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::sqlite::SqliteRepo;
    use time::OffsetDateTime;

    fn media(tenant: &str, conv: &str, owner: &str) -> Media {
        Media {
            tenant_id: TenantId::parse(tenant).unwrap(),
            id: model::new_id(),
            conversation_id: ConversationId::parse(conv).unwrap(),
            owner_id: UserId::parse(owner).unwrap(),
            name: "a.png".into(),
            content_type: "image/png".into(),
            size: 10,
            sha256: "0".repeat(64),
            width: Some(1),
            height: Some(1),
            thumbnail: None,
            created_at: OffsetDateTime::now_utc(),
            deleted_at: None,
        }
    }

    #[tokio::test]
    async fn only_the_senders_live_files_of_the_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepo::open(dir.path().join("m.db")).unwrap();
        let mine = media("acme", "c1", "alice");
        let other_conv = media("acme", "c2", "alice");
        let bobs = media("acme", "c1", "bob");
        let other_tenant = media("zeta", "c1", "alice");
        let deleted = media("acme", "c1", "alice");
        for m in [&mine, &other_conv, &bobs, &other_tenant, &deleted] {
            repo.insert_media(m).await.unwrap();
        }
        repo.mark_deleted(&deleted.tenant_id, &deleted.id, OffsetDateTime::now_utc())
            .await
            .unwrap();
        let (t, c, u) = (
            TenantId::parse("acme").unwrap(),
            ConversationId::parse("c1").unwrap(),
            UserId::parse("alice").unwrap(),
        );
        let got = validate(&repo, &t, &c, &u, std::slice::from_ref(&mine.id))
            .await
            .unwrap();
        assert_eq!(got, vec![Attachment::from(&mine)]);
        assert!(validate(&repo, &t, &c, &u, &[]).await.unwrap().is_empty());
        for bad in [
            &other_conv.id,
            &bobs.id,
            &other_tenant.id,
            &deleted.id,
            &model::new_id(),
            &"../x".to_string(),
        ] {
            let e = validate(&repo, &t, &c, &u, &[mine.id.clone(), bad.clone()])
                .await
                .unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_attachment"),
                "{bad}"
            );
        }
        let e = validate(&repo, &t, &c, &u, &[mine.id.clone(), mine.id.clone()])
            .await
            .unwrap_err();
        assert!(e.message.contains("twice"));
        let many: Vec<String> = (0..=MAX_ATTACHMENTS).map(|_| mine.id.clone()).collect();
        assert!(validate(&repo, &t, &c, &u, &many).await.is_err());
    }
}
