//! Files attached to messages over REST, through `caas standalone`: what a message carries,
//! which files are refused, edit, delete, forward.

use crate::common;
use serde_json::{Value, json};

/// The attachment `id` as a message carries it, checked against the file's metadata.
#[track_caller]
fn assert_attachment(got: &Value, file: &Value) {
    assert_eq!(got["id"], file["id"], "{got}");
    assert_eq!(got["name"], file["name"], "{got}");
    assert_eq!(got["content_type"], file["content_type"], "{got}");
    assert_eq!(got["size"], file["size"], "{got}");
    assert_eq!(got["width"], file["width"], "{got}");
    assert_eq!(got["height"], file["height"], "{got}");
    assert_eq!(
        got["has_thumbnail"].as_bool(),
        Some(file["thumbnail"].is_object()),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_files_uploaded_to_their_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let sa = common::Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let acme = http.create_tenant("files-acme").await;
    let other = http.create_tenant("files-other").await;
    let ann = http.token(&acme, "ann").await;
    let bob = http.token(&acme, "bob").await;
    let carol = http.token(&acme, "carol").await;
    let ann_elsewhere = http.token(&other, "ann").await;
    http.create_group(&ann, "room", &["bob"]).await;
    http.create_group(&ann, "side", &["bob"]).await;
    http.create_group(&ann_elsewhere, "room", &[]).await;

    // Ann uploads a picture and a text file to the room.
    let picture = http
        .upload(&ann, "room", "cat.png", "image/png", common::png(64, 48))
        .await
        .expect(201, "upload cat.png")
        .clone();
    assert!(picture["thumbnail"].is_object(), "{picture}");
    let notes = http
        .upload(
            &ann,
            "room",
            "notes.txt",
            "text/plain",
            b"shopping list\n".to_vec(),
        )
        .await
        .expect(201, "upload notes.txt")
        .clone();
    let (pic_id, notes_id) = (
        picture["id"].as_str().unwrap(),
        notes["id"].as_str().unwrap(),
    );

    // Sent with text and both files: the answer, the list and the single message carry them.
    let sent = http
        .send_files(&ann, "room", "look at this", &[pic_id, notes_id])
        .await
        .expect(201, "send with files")
        .clone();
    let a = sent["message"]["attachments"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{sent}");
    assert_attachment(&a[0], &picture);
    assert_attachment(&a[1], &notes);
    assert_eq!(a[0]["width"], 64);
    assert_eq!(a[0]["height"], 48);
    assert_eq!(a[0]["has_thumbnail"], true);
    assert_eq!(a[1]["content_type"], "text/plain");
    assert!(
        a[1].get("width").is_none(),
        "no dimensions for text: {}",
        a[1]
    );
    let id = sent["message"]["id"].as_str().unwrap().to_string();
    let listed = http.list_all(&bob, "room").await;
    let m = listed.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(m["attachments"], sent["message"]["attachments"], "{m}");
    let one = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await;
    assert_eq!(
        one.expect(200, "get")["attachments"],
        sent["message"]["attachments"]
    );
    // Bob, a member, reads the file the message names.
    let r = http.get(&format!("/v1/media/files/{pic_id}"), &bob).await;
    r.expect(200, "bob reads the attached file's metadata");

    // Files only, no text: fine. No text and no files: text_empty.
    let only = http
        .upload(&ann, "room", "only.png", "image/png", common::png(8, 8))
        .await
        .expect(201, "upload only.png")
        .clone();
    let only_id = only["id"].as_str().unwrap();
    let files_only = http
        .send_files(&ann, "room", "", &[only_id])
        .await
        .expect(201, "files-only message")
        .clone();
    assert_eq!(files_only["message"]["text"], "");
    assert_attachment(&files_only["message"]["attachments"][0], &only);
    http.send_files(&ann, "room", "", &[]).await.expect_error(
        400,
        "text_empty",
        "no text, no files",
    );
    http.send_files(&ann, "room", "   ", &[])
        .await
        .expect_error(400, "text_empty", "blank text, no files");

    // Refusals: one code for every reason.
    let bobs = http
        .upload_id(&bob, "room", "bob.txt", "text/plain", b"bob's\n".to_vec())
        .await;
    let side = http
        .upload_id(&ann, "side", "side.txt", "text/plain", b"side\n".to_vec())
        .await;
    let elsewhere = http
        .upload_id(
            &ann_elsewhere,
            "room",
            "other.txt",
            "text/plain",
            b"other tenant\n".to_vec(),
        )
        .await;
    let deleted = http
        .upload_id(&ann, "room", "gone.txt", "text/plain", b"gone\n".to_vec())
        .await;
    http.delete(&format!("/v1/media/files/{deleted}"), &ann)
        .await
        .expect(204, "delete a file");
    let mut eleven = Vec::new();
    for n in 0..11 {
        eleven.push(
            http.upload_id(
                &ann,
                "room",
                &format!("f{n}.txt"),
                "text/plain",
                format!("file {n}\n").into_bytes(),
            )
            .await,
        );
    }
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    let refusals: [(&str, Vec<&str>); 8] = [
        ("another user's file", vec![bobs.as_str()]),
        ("a file of another conversation", vec![side.as_str()]),
        ("another tenant's file", vec![elsewhere.as_str()]),
        ("a deleted file", vec![deleted.as_str()]),
        ("the same file twice", vec![pic_id, pic_id]),
        ("eleven files", eleven.clone()),
        ("a garbage id", vec!["not-a-media-id"]),
        ("a path as id", vec!["../../etc/passwd"]),
    ];
    for (what, ids) in &refusals {
        for text in ["with text", ""] {
            http.send_files(&ann, "room", text, ids).await.expect_error(
                400,
                "invalid_attachment",
                what,
            );
        }
    }
    // The same file of another conversation, from a member of both, in the right one: fine.
    http.send_files(&ann, "side", "", &[side.as_str()])
        .await
        .expect(201, "the file in its own conversation");
    // Ten is the most.
    http.send_files(&ann, "room", "ten files", &eleven[..10])
        .await
        .expect(201, "ten files");
    // Carol is in no conversation here: not_found, as for any send.
    http.send_files(&carol, "room", "x", &[pic_id])
        .await
        .expect_error(404, "not_found", "a non-member");
    // Attachments is an array of ids.
    http.post(
        "/v1/conversations/room/messages",
        &ann,
        json!({"text": "x", "attachments": "notes"}),
    )
    .await
    .expect_error(400, "invalid_argument", "attachments as a string");

    // Forward: text with files forwards the text only; files only cannot be forwarded.
    let fwd = http
        .post(
            &format!("/v1/conversations/room/messages/{id}/forward"),
            &ann,
            json!({"conversation_id": "side"}),
        )
        .await
        .expect(201, "forward text with files")
        .clone();
    assert_eq!(fwd["message"]["text"], "look at this");
    assert!(
        fwd["message"].get("attachments").is_none(),
        "files are not copied: {fwd}"
    );
    let only_msg = files_only["message"]["id"].as_str().unwrap();
    http.post(
        &format!("/v1/conversations/room/messages/{only_msg}/forward"),
        &ann,
        json!({"conversation_id": "side"}),
    )
    .await
    .expect_error(400, "invalid_attachment", "forward a files-only message");

    // An edit changes the text and keeps the files.
    http.patch(
        &format!("/v1/conversations/room/messages/{id}"),
        &ann,
        json!({"text": "look at this cat"}),
    )
    .await
    .expect(200, "edit");
    let edited = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await
        .expect(200, "get edited")
        .clone();
    assert_eq!(edited["text"], "look at this cat");
    assert!(edited["edited_at"].is_string(), "{edited}");
    assert_eq!(edited["attachments"], sent["message"]["attachments"]);

    // A delete redacts them: the shell names no files. The files themselves stay.
    http.delete(&format!("/v1/conversations/room/messages/{id}"), &ann)
        .await
        .expect(204, "delete");
    let listed = http.list_all(&bob, "room").await;
    let shell = listed.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert!(shell["deleted_at"].is_string(), "{shell}");
    assert!(shell.get("attachments").is_none(), "{shell}");
    let shell = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await
        .expect(200, "get deleted")
        .clone();
    assert!(shell.get("attachments").is_none(), "{shell}");
    let r = http
        .client
        .get(format!("{}/v1/media/files/{pic_id}/content", http.api))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the file outlives the message");
    sa.proc.assert_no_panics();
}
