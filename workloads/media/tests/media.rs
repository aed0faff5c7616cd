//! The media workload end to end through its HTTP routes, on both backends: a local directory
//! (metadata in SQLite) and a real S3 server, s3s-fs, which checks signatures (metadata in
//! MongoDB). See `common` for the harness and the variables it needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use common::*;
use serde_json::json;
use time::OffsetDateTime;

async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Backend) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for b in BACKENDS {
        f(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_upload_download_range_conditional_thumbnail() {
    each_backend(|backend| async move {
        let h = harness(backend, Opts::default()).await;
        let img = png(640, 480);
        let sha = sha256(&img);
        let r = h
            .upload("alice", "cat.png", "image/png", img.clone(), Some(&sha))
            .await;
        assert_eq!(r.status, 201, "{backend:?} {:?}", r.json());
        let m = r.json();
        let id = m["id"].as_str().unwrap().to_string();
        assert_eq!(m["content_type"], "image/png");
        assert_eq!(m["size"], img.len());
        assert_eq!(m["sha256"], sha);
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(640), Some(480))
        );
        assert_eq!(m["owner_id"], "alice");
        assert_eq!(m["conversation_id"], "general");
        assert_eq!(m["thumbnail"]["width"], 320);
        assert_eq!(h.usage().await, img.len() as u64);

        // Another member reads it whole.
        let url = format!("/v1/media/files/{id}/content");
        let r = h.get(&url, Some("bob"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref(), img.as_slice());
        assert_eq!(r.header("content-type").unwrap(), "image/png");
        assert_eq!(r.header("accept-ranges").unwrap(), "bytes");
        let etag = r.header("etag").unwrap();
        assert_eq!(etag, format!("\"{sha}\""));
        assert!(
            r.header("content-disposition")
                .unwrap()
                .starts_with("inline;")
        );

        // Conditional.
        let r = h.get(&url, Some("bob"), &[("if-none-match", &etag)]).await;
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty());
        let r = h
            .get(&url, Some("bob"), &[("if-none-match", "\"other\"")])
            .await;
        assert_eq!(r.status, 200);

        // Ranges.
        let n = img.len();
        let r = h.get(&url, Some("bob"), &[("range", "bytes=0-0")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body.as_ref(), &img[..1]);
        assert_eq!(r.header("content-range").unwrap(), format!("bytes 0-0/{n}"));
        assert_eq!(r.header("content-length").unwrap(), "1");
        let r = h.get(&url, Some("bob"), &[("range", "bytes=-10")]).await;
        assert_eq!((r.status, r.body.as_ref()), (206, &img[n - 10..]));
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {}-{}/{n}", n - 10, n - 1)
        );
        let r = h.get(&url, Some("bob"), &[("range", "bytes=100-")]).await;
        assert_eq!((r.status, r.body.as_ref()), (206, &img[100..]));
        let r = h
            .get(
                &url,
                Some("bob"),
                &[("range", &format!("bytes=10-{}", n + 500))],
            )
            .await;
        assert_eq!((r.status, r.body.as_ref()), (206, &img[10..]));
        let r = h
            .get(&url, Some("bob"), &[("range", &format!("bytes={n}-"))])
            .await;
        assert_eq!((r.status, r.code()), (416, "range_not_satisfiable".into()));
        assert_eq!(r.header("content-range").unwrap(), format!("bytes */{n}"));
        let r = h.get(&url, Some("bob"), &[("range", "bytes=-0")]).await;
        assert_eq!(r.status, 416);
        // Several ranges or nonsense: the whole file.
        let r = h
            .get(&url, Some("bob"), &[("range", "bytes=0-1,5-6")])
            .await;
        assert_eq!((r.status, r.body.len()), (200, n));
        let r = h.get(&url, Some("bob"), &[("range", "bytes=9-2")]).await;
        assert_eq!((r.status, r.body.len()), (200, n));
        // If-Range with a stale validator: the whole file.
        let r = h
            .get(
                &url,
                Some("bob"),
                &[("range", "bytes=0-0"), ("if-range", "\"stale\"")],
            )
            .await;
        assert_eq!((r.status, r.body.len()), (200, n));
        let r = h
            .get(
                &url,
                Some("bob"),
                &[("range", "bytes=0-0"), ("if-range", &etag)],
            )
            .await;
        assert_eq!(r.status, 206);

        // Metadata and thumbnail.
        let r = h
            .get(&format!("/v1/media/files/{id}"), Some("bob"), &[])
            .await;
        assert_eq!(
            (r.status, r.json()["id"].as_str()),
            (200, Some(id.as_str()))
        );
        let r = h
            .get(&format!("/v1/media/files/{id}/thumbnail"), Some("bob"), &[])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type").unwrap(), "image/jpeg");
        let thumb = image::load_from_memory(&r.body).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (320, 240));

        // Not an image: no thumbnail; served as an attachment.
        let text = b"hello, world\n".to_vec();
        let r = h
            .upload(
                "bob",
                "notes.txt",
                "text/plain; charset=utf-8",
                text.clone(),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json());
        assert_eq!(r.json()["sha256"], sha256(&text));
        assert!(r.json().get("thumbnail").is_none());
        let tid = r.json()["id"].as_str().unwrap().to_string();
        let r = h
            .get(
                &format!("/v1/media/files/{tid}/thumbnail"),
                Some("alice"),
                &[],
            )
            .await;
        assert_eq!(r.status, 404);
        let r = h
            .get(
                &format!("/v1/media/files/{tid}/content"),
                Some("alice"),
                &[],
            )
            .await;
        assert!(
            r.header("content-disposition")
                .unwrap()
                .starts_with("attachment;")
        );
        assert_eq!(r.header("x-content-type-options").unwrap(), "nosniff");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_resumes_after_a_dropped_part() {
    each_backend(|backend| async move {
        let h = harness(backend, Opts::default()).await;
        let five = 5 * MIB as usize;
        let file = noise(2 * five + 12_345, 7);
        let sha = sha256(&file);
        let parts = [&file[..five], &file[five..2 * five], &file[2 * five..]];
        let r = h
            .initiate("alice", json!({"name": "big.bin", "content_type": "application/octet-stream", "size": file.len(), "sha256": sha}))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json());
        let up = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(h.usage().await, file.len() as u64, "reserved at the start");

        // The last part first.
        let r = h.part("alice", &up, 3, parts[2].to_vec(), Some(&sha256(parts[2]))).await;
        assert_eq!((r.status, r.json()["size"].as_u64()), (200, Some(12_345)), "{:?}", r.json());
        // Part 1 drops half way: refused, nothing recorded.
        let r = h
            .call(
                h.req("PUT", &format!("/v1/media/uploads/{up}/parts/1"), Some("alice"))
                    .body(truncated(parts[0][..1000].to_vec()))
                    .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "incomplete_body".into()));
        // Part 2 with a corrupted checksum: refused.
        let r = h.part("alice", &up, 2, parts[1].to_vec(), Some(&sha256(b"other"))).await;
        assert_eq!((r.status, r.code()), (400, "checksum_mismatch".into()));
        let st = h.get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[]).await.json();
        assert_eq!(st["received_bytes"], 12_345);
        assert_eq!(st["parts"].as_array().unwrap().len(), 1);
        // Completing now names what is missing and leaves the upload open.
        let r = h.complete("alice", &up, json!({})).await;
        assert_eq!((r.status, r.code()), (400, "parts_incomplete".into()), "{:?}", r.json());
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("[1, 2]"));

        // Resume: part 1 and 2 again, part 2 twice (the second replaces the first).
        assert_eq!(h.part("alice", &up, 1, parts[0].to_vec(), None).await.status, 200);
        assert_eq!(h.part("alice", &up, 2, noise(five, 99), None).await.status, 200);
        assert_eq!(h.part("alice", &up, 2, parts[1].to_vec(), None).await.status, 200);
        let st = h.get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[]).await.json();
        assert_eq!(st["received_bytes"], file.len());
        assert_eq!(st["progress"], 100.0);
        assert_eq!(st["state"], "open");
        // Only the owner sees or touches the upload.
        assert_eq!(h.get(&format!("/v1/media/uploads/{up}"), Some("bob"), &[]).await.status, 404);
        assert_eq!(h.part("bob", &up, 1, parts[0].to_vec(), None).await.status, 404);
        assert_eq!(h.complete("eve", &up, json!({})).await.status, 404);

        let r = h.complete("alice", &up, json!({})).await;
        assert_eq!(r.status, 201, "{:?}", r.json());
        let m = r.json();
        assert_eq!((m["size"].as_u64(), m["sha256"].as_str()), (Some(file.len() as u64), Some(sha.as_str())));
        assert_eq!(m["content_type"], "application/octet-stream");
        let id = m["id"].as_str().unwrap();
        let r = h.get(&format!("/v1/media/files/{id}/content"), Some("bob"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), sha);
        // A range across a part boundary.
        let r = h
            .get(&format!("/v1/media/files/{id}/content"), Some("bob"), &[("range", &format!("bytes={}-{}", five - 3, five + 2))])
            .await;
        assert_eq!((r.status, r.body.as_ref()), (206, &file[five - 3..five + 3]));
        // The upload is gone; parts are cleaned up; usage is the file.
        assert_eq!(h.get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[]).await.status, 404);
        assert_eq!(h.usage().await, file.len() as u64);
        assert_eq!(h.objects().await, 1, "only the file remains");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_checksums_are_refused_and_nothing_is_kept() {
    each_backend(|backend| async move {
        let h = harness(backend, Opts::default()).await;
        let five = 5 * MIB as usize;
        let file = noise(five + 200_000, 3);
        let wrong = sha256(b"not the file");
        // Single upload.
        let r = h
            .upload(
                "alice",
                "a.bin",
                "application/octet-stream",
                file.clone(),
                Some(&wrong),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "checksum_mismatch".into()));
        // Chunked: the whole-file checksum is verified on complete.
        let r = h
            .initiate("alice", json!({"name": "a.bin", "size": file.len()}))
            .await;
        let up = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            h.part("alice", &up, 1, file[..five].to_vec(), None)
                .await
                .status,
            200
        );
        assert_eq!(
            h.part("alice", &up, 2, file[five..].to_vec(), None)
                .await
                .status,
            200
        );
        let r = h.complete("alice", &up, json!({})).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_argument".into()),
            "the checksum is required"
        );
        let r = h.complete("alice", &up, json!({"sha256": wrong})).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "checksum_mismatch".into()),
            "{:?}",
            r.json()
        );
        assert_eq!(
            h.get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[])
                .await
                .status,
            404
        );
        assert_eq!(h.usage().await, 0);
        assert_eq!(h.objects().await, 0);
        assert_eq!(h.state.repo.usage(&h.tenant).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_work_without_a_token_until_expiry_or_deletion() {
    each_backend(|backend| async move {
        let h = harness(backend, Opts::default()).await;
        let file = b"%PDF-1.7\n% a tiny pdf\n".to_vec();
        let r = h
            .upload("alice", "doc.pdf", "application/pdf", file.clone(), None)
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json());
        let id = r.json()["id"].as_str().unwrap().to_string();
        let r = h
            .call(
                h.req(
                    "POST",
                    &format!("/v1/media/files/{id}/url?ttl_secs=60"),
                    Some("bob"),
                )
                .body(Body::empty())
                .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        let url = r.json()["url"].as_str().unwrap().to_string();
        assert!(url.starts_with(&format!("/v1/media/signed/{}/{id}?exp=", h.tenant)));
        let r = h.get(&url, None, &[]).await;
        assert_eq!((r.status, r.body.as_ref()), (200, file.as_slice()));
        let r = h.get(&url, None, &[("range", "bytes=1-3")]).await;
        assert_eq!((r.status, r.body.as_ref()), (206, &file[1..4]));
        // Tampered: another file id, another tenant, another expiry, no signature.
        let tampered = url.replace(&id, &"0".repeat(32));
        assert_eq!(
            h.get(&tampered, None, &[]).await.code(),
            "invalid_signature"
        );
        let r = h
            .get(
                &url.replace(h.tenant.as_str(), h.other_tenant.as_str()),
                None,
                &[],
            )
            .await;
        assert_eq!((r.status, r.code()), (403, "invalid_signature".into()));
        let (base, query) = url.split_once('?').unwrap();
        let exp: i64 = query
            .split('&')
            .next()
            .unwrap()
            .trim_start_matches("exp=")
            .parse()
            .unwrap();
        let later = url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 1000));
        assert_eq!(h.get(&later, None, &[]).await.status, 403);
        assert_eq!(h.get(base, None, &[]).await.status, 403);
        // Expired (signed correctly, in the past).
        let past = OffsetDateTime::now_utc().unix_timestamp() - 1;
        let sig = h.state.signer.sign(h.tenant.as_str(), &id, past);
        let r = h
            .get(&format!("{base}?exp={past}&sig={sig}"), None, &[])
            .await;
        assert_eq!((r.status, r.code()), (403, "url_expired".into()));
        // Longer than allowed.
        let r = h
            .call(
                h.req(
                    "POST",
                    &format!("/v1/media/files/{id}/url?ttl_secs=99999999"),
                    Some("bob"),
                )
                .body(Body::empty())
                .unwrap(),
            )
            .await;
        assert_eq!(r.status, 400);
        // A suspended tenant's URLs stop working, and work again when it is reactivated.
        let mut tenant = h.store.get_tenant(&h.tenant).await.unwrap().unwrap();
        tenant.status = caas_domain::model::TenantStatus::Suspended;
        h.store.put_tenant(&tenant).await.unwrap();
        h.state.auth.invalidate_tenant(&h.tenant);
        let r = h.get(&url, None, &[]).await;
        assert_eq!((r.status, r.code()), (401, "tenant_suspended".into()));
        tenant.status = caas_domain::model::TenantStatus::Active;
        h.store.put_tenant(&tenant).await.unwrap();
        h.state.auth.invalidate_tenant(&h.tenant);
        assert_eq!(h.get(&url, None, &[]).await.status, 200);
        // Deleted: the URL stops working.
        let r = h
            .call(
                h.req("DELETE", &format!("/v1/media/files/{id}"), Some("alice"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 204);
        let r = h.get(&url, None, &[]).await;
        assert_eq!((r.status, r.code()), (404, "not_found".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_soft_then_purged() {
    each_backend(|backend| async move {
        let h = harness(backend, Opts::default()).await;
        let img = png(64, 64);
        let r = h
            .upload("alice", "a.png", "image/png", img.clone(), None)
            .await;
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(h.objects().await, 2, "file and thumbnail");
        let del = |user: &'static str| {
            let h = &h;
            let id = id.clone();
            async move {
                h.call(
                    h.req("DELETE", &format!("/v1/media/files/{id}"), Some(user))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
            }
        };
        assert_eq!(del("carol").await.status, 404, "not a member");
        assert_eq!(del("eve").await.status, 404, "another tenant");
        let r = del("bob").await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden".into()),
            "a member may delete only own files"
        );
        assert_eq!(del("alice").await.status, 204);
        assert_eq!(del("alice").await.status, 404, "already deleted");
        for path in ["", "/content", "/thumbnail"] {
            assert_eq!(
                h.get(&format!("/v1/media/files/{id}{path}"), Some("alice"), &[])
                    .await
                    .status,
                404
            );
        }
        assert_eq!(h.usage().await, 0, "quota is given back at deletion");
        // Still stored until the purge.
        assert_eq!(h.objects().await, 2);
        let now = OffsetDateTime::now_utc();
        caas_media::sweep(&h.state, now).await.unwrap();
        assert_eq!(h.objects().await, 2, "not yet");
        let later = now + time::Duration::seconds(h.state.config.purge_after_secs as i64 + 5);
        let done = caas_media::sweep(&h.state, later).await.unwrap();
        assert!(done.purged_files >= 1);
        assert_eq!(h.objects().await, 0);
        assert!(
            h.state
                .repo
                .get_media(&h.tenant, &id)
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_and_aborted_uploads_are_cleaned_up() {
    each_backend(|backend| async move {
        let h = harness(
            backend,
            Opts {
                min_part_bytes: 1,
                ..Opts::default()
            },
        )
        .await;
        let h = &h;
        let start = |size: usize| async move {
            let r = h
                .initiate("alice", json!({"name": "x.bin", "size": size}))
                .await;
            assert_eq!(r.status, 201, "{:?}", r.json());
            r.json()["id"].as_str().unwrap().to_string()
        };
        let up = start(2000).await;
        assert_eq!(
            h.part("alice", &up, 1, noise(1000, 1), None).await.status,
            200
        );
        // Abort.
        let r = h
            .call(
                h.req("DELETE", &format!("/v1/media/uploads/{up}"), Some("alice"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 204);
        assert_eq!(
            h.part("alice", &up, 2, noise(1000, 2), None).await.status,
            404
        );
        assert_eq!(h.usage().await, 0);
        assert_eq!(h.objects().await, 0);
        // Abandoned: expired by the janitor.
        let up = start(3000).await;
        assert_eq!(
            h.part("alice", &up, 1, noise(1000, 1), None).await.status,
            200
        );
        assert_eq!(h.usage().await, 3000);
        // (The janitor works across tenants: counts may include other tests' uploads.)
        let now = OffsetDateTime::now_utc();
        caas_media::sweep(&h.state, now).await.unwrap();
        assert!(
            h.state
                .repo
                .get_upload(&h.tenant, &up)
                .await
                .unwrap()
                .is_some(),
            "not yet"
        );
        let later = now + time::Duration::seconds(h.state.config.upload_expiry_secs as i64 + 5);
        assert!(
            caas_media::sweep(&h.state, later)
                .await
                .unwrap()
                .expired_uploads
                >= 1
        );
        assert!(
            h.state
                .repo
                .get_upload(&h.tenant, &up)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(h.usage().await, 0);
        assert_eq!(h.objects().await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_races_cannot_overshoot() {
    each_backend(|backend| async move {
        let h = harness(
            backend,
            Opts {
                storage_bytes: 35_000,
                min_part_bytes: 1,
                ..Opts::default()
            },
        )
        .await;
        // Twelve concurrent single uploads of 10 kB: three fit.
        let results = futures::future::join_all((0..12u64).map(|i| {
            let h = &h;
            async move {
                h.upload(
                    "alice",
                    "n.bin",
                    "application/octet-stream",
                    noise(10_000, i + 1),
                    None,
                )
                .await
            }
        }))
        .await;
        let ok = results.iter().filter(|r| r.status == 201).count();
        let refused: Vec<_> = results
            .iter()
            .filter(|r| r.status != 201)
            .map(|r| (r.status, r.code()))
            .collect();
        assert_eq!(ok, 3, "{refused:?}");
        assert!(
            refused
                .iter()
                .all(|r| *r == (429, "quota_exceeded".to_string())),
            "{refused:?}"
        );
        assert_eq!(h.usage().await, 30_000);
        // Concurrent chunked uploads reserve at the start: one of two 4 kB uploads fits.
        let results = futures::future::join_all(
            (0..2).map(|_| h.initiate("alice", json!({"name": "c.bin", "size": 4000}))),
        )
        .await;
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(h.usage().await, 34_000);
        let text = h.metrics.render();
        assert!(
            text.contains("caas_media_quota_rejections_total 10"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_and_leaves_nothing() {
    each_backend(|backend| async move {
        let h = harness(
            backend,
            Opts {
                max_upload_bytes: 1_000_000,
                max_part_bytes: 200_000,
                min_part_bytes: 1,
                ..Opts::default()
            },
        )
        .await;
        let png_bytes = png(32, 32);
        let cases: Vec<(&str, Resp, u16, &str)> = vec![
            (
                "png declared as pdf",
                h.upload("alice", "a.pdf", "application/pdf", png_bytes.clone(), None)
                    .await,
                415,
                "content_type_mismatch",
            ),
            (
                "text declared as png",
                h.upload("alice", "a.png", "image/png", b"just text".to_vec(), None)
                    .await,
                415,
                "content_type_mismatch",
            ),
            (
                "zero bytes",
                h.upload("alice", "empty.txt", "text/plain", vec![], None)
                    .await,
                400,
                "empty_file",
            ),
            (
                "path-like name",
                h.upload(
                    "alice",
                    "..%2F..%2Fetc%2Fpasswd",
                    "text/plain",
                    b"x".to_vec(),
                    None,
                )
                .await,
                400,
                "invalid_name",
            ),
            (
                "dot-dot name",
                h.upload("alice", "..", "text/plain", b"x".to_vec(), None)
                    .await,
                400,
                "invalid_name",
            ),
            (
                "backslash name",
                h.upload("alice", "a%5Cb", "text/plain", b"x".to_vec(), None)
                    .await,
                400,
                "invalid_name",
            ),
            (
                "over the tenant's limit",
                h.upload(
                    "alice",
                    "big.bin",
                    "application/octet-stream",
                    noise(1_000_001, 5),
                    None,
                )
                .await,
                413,
                "payload_too_large",
            ),
            (
                "decompression bomb",
                h.upload(
                    "alice",
                    "bomb.png",
                    "image/png",
                    bomb_png(100_000, 100_000),
                    None,
                )
                .await,
                422,
                "image_too_large",
            ),
            (
                "initiate zero",
                h.initiate("alice", json!({"name": "z", "size": 0})).await,
                400,
                "empty_file",
            ),
            (
                "initiate path",
                h.initiate("alice", json!({"name": "../x", "size": 10}))
                    .await,
                400,
                "invalid_name",
            ),
            (
                "initiate too big",
                h.initiate("alice", json!({"name": "x", "size": 1_000_001}))
                    .await,
                413,
                "payload_too_large",
            ),
            (
                "initiate bad sha",
                h.initiate("alice", json!({"name": "x", "size": 10, "sha256": "zz"}))
                    .await,
                400,
                "invalid_argument",
            ),
            (
                "initiate unknown field",
                h.initiate("alice", json!({"name": "x", "size": 10, "evil": 1}))
                    .await,
                400,
                "unknown_field",
            ),
        ];
        for (what, r, status, code) in cases {
            assert_eq!(
                (r.status, r.code()),
                (status, code.to_string()),
                "{backend:?} {what}: {:?}",
                r.json()
            );
        }
        // A body that ends early (the connection dropped), with and without a length.
        let uri = format!("/v1/media/conversations/{}/files?name=t.bin", h.conv);
        let r = h
            .call(
                h.req("POST", &uri, Some("alice"))
                    .body(truncated(noise(70_000, 9)))
                    .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "incomplete_body".into()));
        let r = h
            .call(
                h.req("POST", &uri, Some("alice"))
                    .header("content-length", "100")
                    .body(Body::from(noise(50, 9)))
                    .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "incomplete_body".into()));
        // Streamed without a length past the limit.
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..20)
            .map(|i| Ok(bytes::Bytes::from(noise(100_000, i + 1))))
            .collect();
        let r = h
            .call(
                h.req("POST", &uri, Some("alice"))
                    .body(Body::from_stream(futures::stream::iter(chunks)))
                    .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.code()), (413, "payload_too_large".into()));
        // Chunked: oversized part, lying first part, empty part, truncated part, bad number.
        let up = h
            .initiate(
                "alice",
                json!({"name": "p.png", "content_type": "image/png", "size": 500_000}),
            )
            .await
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = h.part("alice", &up, 1, noise(200_001, 1), None).await;
        assert_eq!((r.status, r.code()), (413, "payload_too_large".into()));
        let r = h.part("alice", &up, 1, noise(1000, 1), None).await;
        assert_eq!((r.status, r.code()), (415, "content_type_mismatch".into()));
        let r = h.part("alice", &up, 2, vec![], None).await;
        assert_eq!((r.status, r.code()), (400, "empty_part".into()));
        let r = h
            .call(
                h.req(
                    "PUT",
                    &format!("/v1/media/uploads/{up}/parts/2"),
                    Some("alice"),
                )
                .body(truncated(noise(10, 1)))
                .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "incomplete_body".into()));
        let r = h.part("alice", &up, 0, noise(10, 1), None).await;
        assert_eq!(r.status, 400);
        let r = h.part("alice", &up, 99_999, noise(10, 1), None).await;
        assert_eq!(r.status, 400);
        let r = h
            .get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[])
            .await;
        assert_eq!(
            r.json()["received_bytes"],
            0,
            "no refused part was recorded"
        );
        let r = h
            .call(
                h.req("DELETE", &format!("/v1/media/uploads/{up}"), Some("alice"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 204);
        // A tenant that accepts images only.
        assert_eq!(h.usage().await, 0);
        assert_eq!(h.objects().await, 0, "nothing half-stored");

        let images_only = harness(
            backend,
            Opts {
                allowed_types: Some(vec!["image/*".into()]),
                ..Opts::default()
            },
        )
        .await;
        let r = images_only
            .upload(
                "alice",
                "a.pdf",
                "application/pdf",
                b"%PDF-1.4\n".to_vec(),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (415, "unsupported_media_type".into()));
        let r = images_only
            .upload("alice", "a.png", "", png(8, 8), None)
            .await;
        assert_eq!(r.status, 201, "sniffed, not declared: {:?}", r.json());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tenants_non_members_and_anonymous_get_403_or_404_everywhere() {
    each_backend(|backend| async move {
        let h = harness(
            backend,
            Opts {
                min_part_bytes: 1,
                ..Opts::default()
            },
        )
        .await;
        let r = h
            .upload("alice", "a.png", "image/png", png(16, 16), None)
            .await;
        let id = r.json()["id"].as_str().unwrap().to_string();
        let up = h
            .initiate("alice", json!({"name": "u.bin", "size": 10}))
            .await
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let conv = h.conv.clone();
        let routes: Vec<(&str, String)> = vec![
            ("GET", format!("/v1/media/files/{id}")),
            ("GET", format!("/v1/media/files/{id}/content")),
            ("GET", format!("/v1/media/files/{id}/thumbnail")),
            ("POST", format!("/v1/media/files/{id}/url")),
            ("DELETE", format!("/v1/media/files/{id}")),
            ("GET", format!("/v1/media/uploads/{up}")),
            ("PUT", format!("/v1/media/uploads/{up}/parts/1")),
            ("POST", format!("/v1/media/uploads/{up}/complete")),
            ("DELETE", format!("/v1/media/uploads/{up}")),
            (
                "POST",
                format!("/v1/media/conversations/{conv}/files?name=x.txt"),
            ),
            ("POST", format!("/v1/media/conversations/{conv}/uploads")),
        ];
        for (method, uri) in &routes {
            // Eve has a conversation with the same id in her tenant: she may upload there.
            let users: &[Option<&str>] = if uri.contains("/conversations/") {
                &[Some("carol"), None]
            } else {
                &[Some("carol"), Some("eve"), None]
            };
            for &user in users {
                let body = if uri.ends_with("uploads") {
                    json!({"name": "x", "size": 10, "sha256": "a".repeat(64)}).to_string()
                } else if uri.ends_with("complete") {
                    json!({"sha256": "a".repeat(64)}).to_string()
                } else {
                    "hello".into()
                };
                let r = h
                    .call(
                        h.req(method, uri, user)
                            .header(
                                "content-type",
                                if body.starts_with('{') {
                                    "application/json"
                                } else {
                                    "text/plain"
                                },
                            )
                            .body(Body::from(body))
                            .unwrap(),
                    )
                    .await;
                let want: &[u16] = if user.is_none() { &[401] } else { &[403, 404] };
                assert!(
                    want.contains(&r.status),
                    "{backend:?} {method} {uri} as {user:?}: {} {:?}",
                    r.status,
                    r.json()
                );
            }
        }
        // Eve's own conversation with the same id does not reach alice's files.
        let r = h
            .upload("eve", "e.txt", "text/plain", b"eve".to_vec(), None)
            .await;
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["tenant_id"], h.other_tenant.as_str());
        let eid = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            h.get(&format!("/v1/media/files/{eid}"), Some("alice"), &[])
                .await
                .status,
            404
        );
        // Everything of alice's still there.
        assert_eq!(
            h.get(&format!("/v1/media/files/{id}/content"), Some("bob"), &[])
                .await
                .status,
            200
        );
        assert_eq!(
            h.get(&format!("/v1/media/uploads/{up}"), Some("alice"), &[])
                .await
                .status,
            200
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_deletes_are_published_and_counted() {
    let h = harness(Backend::Local, Opts::default()).await;
    let r = h
        .upload("alice", "a.txt", "text/plain", b"abc".to_vec(), None)
        .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = h
        .call(
            h.req("DELETE", &format!("/v1/media/files/{id}"), Some("alice"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 204);
    let mut consumer = h
        .bus
        .consumer("test", &[caas_media::MEDIA_EVENTS])
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        got.extend(
            consumer
                .next_batch(10, std::time::Duration::from_millis(100))
                .await
                .unwrap(),
        );
    }
    let events: Vec<serde_json::Value> = got
        .iter()
        .map(|d| serde_json::from_slice(&d.payload).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"]["type"], "media.uploaded");
    assert_eq!(events[0]["event"]["media"]["id"], id.as_str());
    assert_eq!(events[0]["tenant_id"], h.tenant.as_str());
    assert_eq!(events[1]["event"]["type"], "media.deleted");
    assert_eq!(events[1]["event"]["deleted_by"], "alice");
    assert!(
        got.iter()
            .all(|d| d.key == "general" && d.header("caas-tenant") == Some(h.tenant.as_str()))
    );

    let text = h.metrics.render();
    assert!(text.contains("caas_media_bytes_in_total 3"), "{text}");
    assert!(
        text.contains("caas_media_uploads_total{outcome=\"stored\"} 1"),
        "{text}"
    );
    let _ = h
        .get(&format!("/v1/media/files/{id}/content"), Some("alice"), &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_next_to_other_routes_in_its_own_stack() {
    use tower::ServiceExt as _;
    let h = harness(Backend::Local, Opts::default()).await;
    let settings = caas_kit::server::HttpSettings {
        body_limit: 16,
        timeout: std::time::Duration::from_secs(30),
        max_concurrency: 8,
    };
    let other = axum::Router::new().route("/v1/other", axum::routing::get(|| async { "other" }));
    let app = caas_media::mount(
        caas_kit::server::wrap(other, &h.metrics, &settings),
        h.state.clone(),
        &h.metrics,
        &caas_config::ServerConfig::default(),
    );
    let call = |req: http::Request<Body>| {
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, body)
        }
    };
    // An upload far above the outer stack's 16-byte body limit goes through the media stack.
    let file = noise(100_000, 4);
    let (status, body) = call(
        h.req(
            "POST",
            &format!("/v1/media/conversations/{}/files?name=n.bin", h.conv),
            Some("alice"),
        )
        .body(Body::from(file.clone()))
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body:?}");
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = call(
        h.req("GET", &format!("/v1/media/files/{id}/content"), Some("bob"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.len()), (200, file.len()));
    let (status, body) = call(
        h.req("GET", "/v1/media/nope", Some("bob"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
    let (status, body) = call(h.req("GET", "/v1/other", None).body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_ref()), (200, b"other".as_ref()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_upload_that_never_ends_gives_its_quota_back() {
    use futures::StreamExt as _;
    let h = harness(Backend::Local, Opts::default()).await;
    // A body that sends a little and then nothing: the request is dropped (as the request
    // timeout does) while the handler waits for more.
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(noise(
        1000, 1,
    )))])
    .chain(futures::stream::pending());
    let req = h
        .req(
            "POST",
            &format!("/v1/media/conversations/{}/files?name=slow.bin", h.conv),
            Some("alice"),
        )
        .header("content-length", "5000")
        .body(Body::from_stream(chunks))
        .unwrap();
    let app = h.app.clone();
    let task = tokio::spawn(async move { tower::ServiceExt::oneshot(app, req).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.usage().await != 5000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reserved its quota"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        h.usage().await,
        5000,
        "still reserved: nobody ran the request's cleanup"
    );
    let now = OffsetDateTime::now_utc();
    caas_media::sweep(&h.state, now).await.unwrap();
    assert_eq!(
        h.usage().await,
        5000,
        "not before the request could have ended"
    );
    let later = now
        + time::Duration::milliseconds(h.state.config.request_timeout_ms as i64)
        + time::Duration::minutes(2);
    caas_media::sweep(&h.state, later).await.unwrap();
    assert_eq!(h.usage().await, 0);
    // A finished upload leaves no record behind to be swept.
    let r = h
        .upload("alice", "ok.txt", "text/plain", b"fine".to_vec(), None)
        .await;
    assert_eq!(r.status, 201);
    caas_media::sweep(&h.state, later).await.unwrap();
    assert_eq!(h.usage().await, 4);
}
