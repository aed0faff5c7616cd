//! One behavioural suite every [`MediaRepo`] adapter passes: run by the adapters' tests with a
//! fresh repository each (SQLite in a temporary directory; MongoDB in a fresh database when
//! `CAAS_TEST_MONGODB_URI` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{DynRepo, RepoError};
use crate::model::{Media, Part, Upload, UploadState, new_id};
use caas_domain::{ConversationId, TenantId, UserId};
use time::{Duration, OffsetDateTime};

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn upload(t: &str, expires_in: Duration) -> Upload {
    let now = OffsetDateTime::now_utc();
    Upload {
        tenant_id: tenant(t),
        id: new_id(),
        conversation_id: ConversationId::parse("c1").unwrap(),
        owner_id: UserId::parse("alice").unwrap(),
        name: "a.bin".into(),
        declared_type: "application/octet-stream".into(),
        size: 10,
        sha256: None,
        state: UploadState::Open,
        media_id: new_id(),
        backend_id: String::new(),
        single: false,
        created_at: now,
        expires_at: now + expires_in,
    }
}

fn media(t: &str) -> Media {
    Media {
        tenant_id: tenant(t),
        id: new_id(),
        conversation_id: ConversationId::parse("c1").unwrap(),
        owner_id: UserId::parse("alice").unwrap(),
        name: "a.png".into(),
        content_type: "image/png".into(),
        size: 1234,
        sha256: "ab".repeat(32),
        width: Some(2),
        height: Some(3),
        thumbnail: None,
        created_at: OffsetDateTime::now_utc(),
        deleted_at: None,
    }
}

/// Runs every case. Tenants are named afresh on every run, so a database may be reused.
pub async fn run_all(repo: DynRepo) {
    repo.ping().await.unwrap();
    uploads_and_parts(&repo).await;
    expiry(&repo).await;
    files_and_soft_delete(&repo).await;
    quota_is_atomic(&repo).await;
}

/// A tenant id unique to this run.
fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[16..]
    )
}

async fn uploads_and_parts(repo: &DynRepo) {
    let u = upload(&fresh("s-up"), Duration::hours(1));
    repo.create_upload(&u).await.unwrap();
    assert!(matches!(
        repo.create_upload(&u).await,
        Err(RepoError::AlreadyExists)
    ));
    assert_eq!(
        repo.get_upload(&u.tenant_id, &u.id).await.unwrap(),
        Some(u.clone())
    );
    // Tenant first: another tenant does not see it.
    assert_eq!(
        repo.get_upload(&tenant("s-other"), &u.id).await.unwrap(),
        None
    );

    let part = |n: u32, tag: &str| Part {
        number: n,
        size: u64::from(n) * 10,
        sha256: tag.repeat(64),
        etag: format!("e{n}{tag}"),
    };
    // Any order; a part uploaded again replaces the first.
    repo.put_part(&u.tenant_id, &u.id, &part(3, "a"))
        .await
        .unwrap();
    repo.put_part(&u.tenant_id, &u.id, &part(1, "a"))
        .await
        .unwrap();
    repo.put_part(&u.tenant_id, &u.id, &part(3, "b"))
        .await
        .unwrap();
    let parts = repo.list_parts(&u.tenant_id, &u.id).await.unwrap();
    assert_eq!(parts, vec![part(1, "a"), part(3, "b")]);
    assert!(
        repo.list_parts(&tenant("s-other"), &u.id)
            .await
            .unwrap()
            .is_empty()
    );

    // State changes are compare-and-set.
    assert!(
        repo.set_upload_state(
            &u.tenant_id,
            &u.id,
            UploadState::Open,
            UploadState::Completing
        )
        .await
        .unwrap()
    );
    assert!(
        !repo
            .set_upload_state(
                &u.tenant_id,
                &u.id,
                UploadState::Open,
                UploadState::Completing
            )
            .await
            .unwrap()
    );
    assert_eq!(
        repo.get_upload(&u.tenant_id, &u.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        UploadState::Completing
    );
    assert!(
        !repo
            .set_upload_state(
                &tenant("s-other"),
                &u.id,
                UploadState::Completing,
                UploadState::Open
            )
            .await
            .unwrap()
    );

    repo.delete_upload(&u.tenant_id, &u.id).await.unwrap();
    assert_eq!(repo.get_upload(&u.tenant_id, &u.id).await.unwrap(), None);
    assert!(
        repo.list_parts(&u.tenant_id, &u.id)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn expiry(repo: &DynRepo) {
    let t = fresh("s-exp");
    let old = upload(&t, Duration::seconds(-10));
    let fresh = upload(&t, Duration::hours(1));
    repo.create_upload(&old).await.unwrap();
    repo.create_upload(&fresh).await.unwrap();
    let expired = repo
        .expired_uploads(OffsetDateTime::now_utc(), 100)
        .await
        .unwrap();
    assert!(expired.iter().any(|u| u.id == old.id));
    assert!(!expired.iter().any(|u| u.id == fresh.id));
}

async fn files_and_soft_delete(repo: &DynRepo) {
    let t = fresh("s-files");
    let m = media(&t);
    repo.insert_media(&m).await.unwrap();
    assert!(matches!(
        repo.insert_media(&m).await,
        Err(RepoError::AlreadyExists)
    ));
    assert_eq!(
        repo.get_media(&m.tenant_id, &m.id).await.unwrap(),
        Some(m.clone())
    );
    assert_eq!(
        repo.get_media(&tenant("s-other"), &m.id).await.unwrap(),
        None
    );
    assert!(
        repo.mark_deleted(&tenant("s-other"), &m.id, OffsetDateTime::now_utc())
            .await
            .unwrap()
            .is_none()
    );

    let at = OffsetDateTime::now_utc() - Duration::minutes(5);
    let deleted = repo
        .mark_deleted(&m.tenant_id, &m.id, at)
        .await
        .unwrap()
        .unwrap();
    assert!(deleted.is_deleted());
    // The second delete does not delete again.
    assert!(
        repo.mark_deleted(&m.tenant_id, &m.id, at)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.get_media(&m.tenant_id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .is_deleted()
    );

    let now = OffsetDateTime::now_utc();
    let live = media(&t);
    repo.insert_media(&live).await.unwrap();
    let purge = repo
        .purgeable(now - Duration::minutes(1), 100)
        .await
        .unwrap();
    assert!(purge.iter().any(|p| p.id == m.id));
    assert!(!purge.iter().any(|p| p.id == live.id));
    assert!(
        !repo
            .purgeable(now - Duration::minutes(10), 100)
            .await
            .unwrap()
            .iter()
            .any(|p| p.id == m.id)
    );
    repo.remove_media(&m.tenant_id, &m.id).await.unwrap();
    assert_eq!(repo.get_media(&m.tenant_id, &m.id).await.unwrap(), None);
}

async fn quota_is_atomic(repo: &DynRepo) {
    let t = tenant(&fresh("s-quota"));
    assert_eq!(repo.usage(&t).await.unwrap(), 0);
    assert!(repo.reserve(&t, 60, 100).await.unwrap());
    assert!(!repo.reserve(&t, 41, 100).await.unwrap());
    assert!(repo.reserve(&t, 40, 100).await.unwrap());
    assert_eq!(repo.usage(&t).await.unwrap(), 100);
    repo.release(&t, 70).await.unwrap();
    assert_eq!(repo.usage(&t).await.unwrap(), 30);
    repo.release(&t, 1_000).await.unwrap();
    assert_eq!(repo.usage(&t).await.unwrap(), 0);

    // Twenty concurrent reservations of 10 against a limit of 55: exactly five win.
    let t2 = tenant(&fresh("s-race"));
    let wins = futures::future::join_all((0..20).map(|_| {
        let repo = repo.clone();
        let t2 = t2.clone();
        async move { repo.reserve(&t2, 10, 55).await.unwrap() }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 5);
    assert_eq!(repo.usage(&t2).await.unwrap(), 50);
}
