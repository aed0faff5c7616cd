//! Search through the real `caas standalone` process: a message sent over REST becomes
//! searchable; an edit replaces it; another tenant's user with the same id sees nothing; a
//! member removed from the conversation loses its messages at the next search; after `kill -9`
//! and a restart the index still has every message once. Messages sent with files (uploaded
//! through `/v1/media`) are found with `has_attachment=true`, after an edit and after a rebuild
//! from the store too. A renamed user is found by the new name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Standalone, wait_for};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

async fn total(http: &Http, token: &str, q: &str) -> u64 {
    let r = http.get(&format!("/v1/search/messages?q={q}"), token).await;
    r.expect(200, &format!("search {q}"))["total"]
        .as_u64()
        .unwrap()
}

async fn until_total(http: &Http, token: &str, q: &str, want: u64) {
    wait_for(&format!("{q} to have {want} hits"), WAIT, || async {
        (total(http, token, q).await == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_in_standalone_follows_sends_edits_membership_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let acme = http.create_tenant("search-acme").await;
    let other = http.create_tenant("search-other").await;
    let ann = http.token(&acme, "ann").await;
    let bob = http.token(&acme, "bob").await;
    let ann_elsewhere = http.token(&other, "ann").await;
    http.create_group(&ann, "room", &["bob"]).await;
    let sent = http.send(&ann, "room", "a quokka on the bridge").await;
    let id = sent["message"]["id"].as_str().unwrap().to_string();

    until_total(&http, &ann, "quokka", 1).await;
    assert_eq!(total(&http, &bob, "quokka").await, 1);
    assert_eq!(
        total(&http, &ann_elsewhere, "quokka").await,
        0,
        "another tenant"
    );
    let hit = http
        .get("/v1/search/messages?q=quokka", &bob)
        .await
        .expect(200, "search")
        .clone();
    assert_eq!(hit["hits"][0]["message"]["id"], id.as_str());
    assert_eq!(
        hit["hits"][0]["highlight"],
        "a <mark>quokka</mark> on the bridge"
    );

    http.patch(
        &format!("/v1/conversations/room/messages/{id}"),
        &ann,
        json!({"text": "a wombat on the bridge"}),
    )
    .await
    .expect(200, "edit");
    until_total(&http, &ann, "wombat", 1).await;
    assert_eq!(
        total(&http, &ann, "quokka").await,
        0,
        "the old text is gone"
    );

    http.delete("/v1/conversations/room/members/bob", &ann)
        .await
        .expect(204, "remove bob");
    assert_eq!(
        total(&http, &bob, "wombat").await,
        0,
        "a former member sees nothing at the very next search"
    );
    let bad = http.get("/v1/search/messages?q=%22open", &ann).await;
    bad.expect_error(400, "invalid_argument", "unclosed quote");

    let status = http.admin("GET", "/admin/v1/search/status", None).await;
    assert!(
        status.expect(200, "status")["documents"].as_u64().unwrap() >= 1,
        "the admin status counts documents"
    );

    sa.proc.kill9();
    sa.proc.restart().await;
    until_total(&http, &ann, "wombat", 1).await;
    http.send(&ann, "room", "after the restart, a wombat again")
        .await;
    until_total(&http, &ann, "wombat", 2).await;
    sa.proc.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_attachment_finds_messages_sent_with_files() {
    let dir = tempfile::tempdir().unwrap();
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let acme = http.create_tenant("search-files").await;
    let ann = http.token(&acme, "ann").await;
    let bob = http.token(&acme, "bob").await;
    http.create_group(&ann, "room", &["bob"]).await;
    let picture = http
        .upload_id(&ann, "room", "kiwi.png", "image/png", common::png(32, 32))
        .await;
    let doc = http
        .upload_id(&ann, "room", "kiwi.txt", "text/plain", b"a kiwi\n".to_vec())
        .await;
    let with = http
        .send_files(&ann, "room", "a kiwi in the picture", &[&picture])
        .await
        .expect(201, "send with a file")["message"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let files_only = http
        .send_files(&ann, "room", "", &[&doc])
        .await
        .expect(201, "files only")["message"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    http.send(&ann, "room", "a kiwi without a picture").await;

    let ids = |v: &serde_json::Value| -> Vec<String> {
        let mut out: Vec<String> = v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["message"]["id"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    };
    let mut both = vec![with.clone(), files_only.clone()];
    both.sort();
    let check = |what: &'static str| {
        let (http, bob, with, both) = (&http, &bob, &with, &both);
        async move {
            until_total(http, bob, "kiwi", 2).await;
            let r = http
                .get("/v1/search/messages?q=kiwi&has_attachment=true", bob)
                .await;
            let b = r.expect(200, what).clone();
            assert_eq!(ids(&b), vec![with.clone()], "{what}: {b}");
            assert_eq!(b["hits"][0]["message"]["has_attachment"], true, "{what}");
            let r = http
                .get("/v1/search/messages?q=kiwi&has_attachment=false", bob)
                .await;
            let b = r.expect(200, what).clone();
            assert_eq!(b["total"], 1, "{what}: {b}");
            assert_eq!(b["hits"][0]["message"]["has_attachment"], false, "{what}");
            // A filter alone (no words) finds the files-only message too.
            let r = http
                .get("/v1/search/messages?has_attachment=true&sort=time", bob)
                .await;
            let b = r.expect(200, what).clone();
            assert_eq!(ids(&b), *both, "{what}: {b}");
        }
    };
    check("after the sends").await;

    // An edit changes the text; the files stay, and so does the filter.
    http.patch(
        &format!("/v1/conversations/room/messages/{with}"),
        &ann,
        json!({"text": "a kiwi and a photo"}),
    )
    .await
    .expect(200, "edit");
    until_total(&http, &bob, "photo", 1).await;
    check("after the edit").await;

    // A rebuild reads the stored messages, which keep their files.
    let r = http.admin("POST", "/admin/v1/search/rebuild", None).await;
    r.expect(202, "start a rebuild");
    wait_for("the rebuild to finish", Duration::from_secs(60), || async {
        let r = http.admin("GET", "/admin/v1/search/rebuild", None).await;
        let state = r.expect(200, "rebuild status")["state"].clone();
        assert_ne!(state, "failed", "{}", r.body);
        (state == "done").then_some(())
    })
    .await;
    check("after a rebuild").await;
    sa.proc.assert_no_panics();
}

/// The names of the users found for `q` by `token`'s caller.
async fn user_names(http: &Http, token: &str, q: &str) -> Vec<String> {
    let r = http.get(&format!("/v1/search/users?q={q}"), token).await;
    r.expect(200, &format!("users {q}"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

/// A rename (`PUT /v1/users/{id}`) is announced as `user.updated` on the user's conversations,
/// and search follows: the new name is found, the old one no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_users_are_found_by_their_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let acme = http.create_tenant("rename-acme").await;
    let ann = http.token(&acme, "ann").await;
    let bob = http.token(&acme, "bob").await;
    http.create_group(&ann, "room", &["bob"]).await;
    wait_for("bob to be searchable", WAIT, || async {
        (user_names(&http, &ann, "bob").await == ["bob"]).then_some(())
    })
    .await;

    http.call(
        "PUT",
        "/v1/users/bob",
        Some(&bob),
        Some(&json!({"name": "Roberta Quill"})),
    )
    .await
    .expect(200, "rename");
    wait_for("the new name to be found", WAIT, || async {
        (user_names(&http, &ann, "quill").await == ["Roberta Quill"]).then_some(())
    })
    .await;
    assert!(
        user_names(&http, &ann, "bob").await.is_empty(),
        "the old name is no longer found"
    );
    sa.proc.assert_no_panics();
}
