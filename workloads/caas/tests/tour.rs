//! End to end through the real `caas standalone` process, over HTTP only: a tenant made through
//! the admin API, three users, a group conversation with 1,000 messages sent concurrently and
//! paged both ways, then edits, deletes, reactions, threads, read markers and unread counts,
//! forwarding, idempotent retries and the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Standalone, check_order, unique};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const MESSAGES: usize = 1_000;
const SENDERS: usize = 6;

/// The caller's membership of `conv` as listed by `GET /v1/conversations`.
async fn my_view(http: &Http, token: &str, conv: &str) -> Value {
    let r = http.get("/v1/conversations?limit=200", token).await;
    let b = r.expect(200, "list my conversations");
    b["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .find(|c| c["conversation"]["id"] == conv)
        .unwrap_or_else(|| panic!("{conv} is not in my conversations: {b}"))
        .clone()
}

async fn unread(http: &Http, token: &str, conv: &str) -> u64 {
    my_view(http, token, conv).await["membership"]["unread_count"]
        .as_u64()
        .expect("unread_count")
}

/// Other members see a send once the pipeline has persisted it (the conversation list does not
/// wait for the log, unlike message lists): waits, with a deadline, for the expected count.
async fn unread_becomes(http: &Http, token: &str, conv: &str, expected: u64, what: &str) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = unread(http, token, conv).await;
        if n == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: unread count is {n}, expected {expected} (waited 5 s)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn get_message(http: &Http, token: &str, conv: &str, id: &str) -> Value {
    http.get(&format!("/v1/conversations/{conv}/messages/{id}"), token)
        .await
        .expect(200, "get message")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(
        dir.path(),
        &[("CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER", "1000000")],
    )
    .await;
    let http = sa.http.clone();

    // ---- Tenant and users ------------------------------------------------------------------
    let tenant = unique("tour-");
    let app = http.create_tenant(&tenant).await;
    let r = http
        .admin(
            "PUT",
            &format!("/admin/v1/tenants/{tenant}"),
            Some(json!({"name": "Tour Inc.", "features": ["beta"]})),
        )
        .await;
    let b = r.expect(200, "update tenant");
    assert_eq!(b["tenant"]["features"], json!(["beta"]), "{b}");
    assert_eq!(b["tenant"]["name"], "Tour Inc.", "{b}");
    let users = ["alice", "bob", "carol"];
    let mut tokens = BTreeMap::new();
    for u in users {
        tokens.insert(u, http.token(&app, u).await);
    }
    let (alice, bob, carol) = (&tokens["alice"], &tokens["bob"], &tokens["carol"]);

    // ---- A group conversation --------------------------------------------------------------
    let g = "general";
    let created = http.create_group(alice, g, &["bob", "carol"]).await;
    assert_eq!(created["conversation"]["member_count"], 3, "{created}");
    assert_eq!(created["membership"]["role"], "owner", "{created}");
    let members = http
        .get(&format!("/v1/conversations/{g}/members"), bob)
        .await;
    let roles: BTreeMap<String, String> = members.expect(200, "members")["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().expect("user_id").into(),
                m["role"].as_str().expect("role").into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            ("alice".into(), "owner".into()),
            ("bob".into(), "member".into()),
            ("carol".into(), "member".into())
        ])
    );
    for u in users {
        assert_eq!(
            unread(&http, &tokens[u], g).await,
            0,
            "{u}: nothing unread yet"
        );
    }

    // ---- 1,000 messages from concurrent senders --------------------------------------------
    let mut tasks = Vec::new();
    for t in 0..SENDERS {
        let http = http.clone();
        let user = users[t % users.len()];
        let token = tokens[user].clone();
        let count = MESSAGES / SENDERS + usize::from(t < MESSAGES % SENDERS);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(count);
            for n in 0..count {
                let a = http.send(&token, g, &format!("m-{t}-{n}")).await;
                assert_eq!(a["message"]["sender_id"], user, "{a}");
                assert_eq!(a["position"], a["message"]["position"], "{a}");
                acks.push((
                    a["message"]["id"].as_str().expect("id").to_string(),
                    a["position"].as_i64().expect("position"),
                    user,
                ));
            }
            acks
        }));
    }
    let mut acked: BTreeMap<String, (i64, &str)> = BTreeMap::new();
    for t in tasks {
        for (id, pos, user) in t.await.expect("sender task") {
            assert!(
                acked.insert(id.clone(), (pos, user)).is_none(),
                "message id {id} acknowledged twice"
            );
        }
    }
    assert_eq!(acked.len(), MESSAGES);
    let positions: BTreeSet<i64> = acked.values().map(|(p, _)| *p).collect();
    assert_eq!(
        positions.len(),
        MESSAGES,
        "acknowledged positions are unique"
    );
    let sent_by = |u: &str| acked.values().filter(|(_, s)| *s == u).count() as u64;
    let newest = *positions.iter().next_back().expect("positions");

    // ---- Page backwards from the newest -----------------------------------------------------
    let latest = http
        .get(&format!("/v1/conversations/{g}/messages?limit=100"), carol)
        .await;
    let latest = latest.expect(200, "newest page").clone();
    let before_newest = http
        .get(
            &format!(
                "/v1/conversations/{g}/messages?limit=100&before={}",
                newest + 1
            ),
            carol,
        )
        .await;
    assert_eq!(
        before_newest.expect(200, "page before newest+1")["messages"],
        latest["messages"],
        "`before` just past the newest is the newest page"
    );
    let mut pages: Vec<Vec<Value>> = vec![latest["messages"].as_array().expect("page").clone()];
    assert_eq!(latest["has_more"], true, "{}", latest["has_more"]);
    loop {
        let oldest = pages.last().expect("page")[0]["position"]
            .as_i64()
            .expect("position");
        let r = http
            .get(
                &format!("/v1/conversations/{g}/messages?limit=100&before={oldest}"),
                carol,
            )
            .await;
        let b = r.expect(200, "page before").clone();
        let page = b["messages"].as_array().expect("page").clone();
        assert!(
            page.len() <= 100,
            "page larger than the limit: {}",
            page.len()
        );
        if page.is_empty() {
            assert_eq!(b["has_more"], false, "an empty page has no more");
            break;
        }
        pages.push(page);
        if b["has_more"] == false {
            break;
        }
        assert!(pages.len() <= MESSAGES / 100 + 2, "paging does not end");
    }
    let backwards: Vec<Value> = pages.into_iter().rev().flatten().collect();
    let listed = check_order("paging backwards", &backwards);
    assert_eq!(
        listed.len(),
        MESSAGES,
        "paging backwards lists every message"
    );
    for (id, (pos, _)) in &acked {
        assert_eq!(
            listed.get(id),
            Some(pos),
            "message {id} is listed at its acknowledged position"
        );
    }

    // ---- Page forwards from -1 (a limit that does not divide 1,000) --------------------------
    let mut forwards: Vec<Value> = Vec::new();
    let mut after = -1i64;
    loop {
        let r = http
            .get(
                &format!("/v1/conversations/{g}/messages?limit=73&after={after}"),
                bob,
            )
            .await;
        let b = r.expect(200, "page after").clone();
        let page = b["messages"].as_array().expect("page").clone();
        assert!(page.len() <= 73);
        if page.is_empty() {
            break;
        }
        after = page.last().expect("page")["position"]
            .as_i64()
            .expect("position");
        forwards.extend(page);
        if b["has_more"] == false {
            break;
        }
        assert!(forwards.len() <= MESSAGES, "paging does not end");
    }
    check_order("paging forwards", &forwards);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(
        ids(&forwards),
        ids(&backwards),
        "both directions list the same messages in the same order"
    );

    // ---- Unread counts and read markers ------------------------------------------------------
    for u in users {
        let view = my_view(&http, &tokens[u], g).await;
        assert_eq!(
            view["membership"]["unread_count"].as_u64(),
            Some(MESSAGES as u64 - sent_by(u)),
            "{u}: unread = messages of the others: {view}"
        );
        assert_eq!(
            view["conversation"]["last_message"]["position"].as_i64(),
            Some(newest),
            "{u}: last message is the newest: {view}"
        );
    }
    let r = http
        .post(&format!("/v1/conversations/{g}/read"), bob, json!({}))
        .await;
    let m = r.expect(200, "bob marks everything read");
    assert_eq!(m["unread_count"], 0, "{m}");
    assert!(m["last_read_position"].as_i64() >= Some(newest), "{m}");
    assert_eq!(unread(&http, bob, g).await, 0, "bob read everything");

    // Carol reads up to the middle.
    let middle = backwards[MESSAGES / 2]["position"]
        .as_i64()
        .expect("position");
    let expect_carol = acked
        .values()
        .filter(|(p, s)| *p > middle && *s != "carol")
        .count() as u64;
    let r = http
        .post(
            &format!("/v1/conversations/{g}/read"),
            carol,
            json!({ "position": middle }),
        )
        .await;
    let m = r.expect(200, "carol marks read up to the middle");
    assert_eq!(m["last_read_position"].as_i64(), Some(middle), "{m}");
    assert_eq!(m["unread_count"].as_u64(), Some(expect_carol), "{m}");
    assert_eq!(unread(&http, carol, g).await, expect_carol);
    let r = http
        .post(
            &format!("/v1/conversations/{g}/read"),
            carol,
            json!({ "position": 0 }),
        )
        .await;
    let m = r.expect(200, "carol marks an older position read");
    assert_eq!(
        m["last_read_position"].as_i64(),
        Some(middle),
        "a read marker only moves forward: {m}"
    );
    assert_eq!(m["unread_count"].as_u64(), Some(expect_carol), "{m}");
    let alice_unread = unread(&http, alice, g).await;

    // A new message: unread for bob and carol, not for its sender.
    let x = http.send(alice, g, "after the burst").await;
    let x_id = x["message"]["id"].as_str().expect("id").to_string();
    unread_becomes(&http, bob, g, 1, "bob sees one new message").await;
    unread_becomes(&http, carol, g, expect_carol + 1, "carol sees one more").await;
    assert_eq!(
        unread(&http, alice, g).await,
        alice_unread,
        "own messages are never unread"
    );

    // ---- Edit ----------------------------------------------------------------------------------
    let r = http
        .patch(
            &format!("/v1/conversations/{g}/messages/{x_id}"),
            alice,
            json!({"text": "after the burst, #edited"}),
        )
        .await;
    let e = r.expect(200, "alice edits her message");
    assert_eq!(e["message"]["text"], "after the burst, #edited", "{e}");
    assert!(e["message"]["edited_at"].is_string(), "{e}");
    let seen = get_message(&http, bob, g, &x_id).await;
    assert_eq!(seen["text"], "after the burst, #edited", "{seen}");
    assert_eq!(seen["hashtags"], json!(["edited"]), "{seen}");
    assert!(seen["edited_at"].is_string(), "{seen}");
    assert_eq!(
        seen["position"], x["position"],
        "an edit keeps the position"
    );
    http.patch(
        &format!("/v1/conversations/{g}/messages/{x_id}"),
        bob,
        json!({"text": "not mine"}),
    )
    .await
    .expect_error(403, "forbidden", "bob edits alice's message");

    // ---- Delete (own) ------------------------------------------------------------------------
    http.delete(&format!("/v1/conversations/{g}/messages/{x_id}"), alice)
        .await
        .expect(204, "alice deletes her message");
    let gone = get_message(&http, bob, g, &x_id).await;
    assert!(gone["deleted_at"].is_string(), "{gone}");
    assert_eq!(gone["text"], "", "a deleted message has no text: {gone}");
    assert_eq!(gone["deleted_by"], "alice", "{gone}");
    unread_becomes(&http, bob, g, 0, "a deleted message is not unread").await;
    http.delete(&format!("/v1/conversations/{g}/messages/{x_id}"), alice)
        .await
        .expect(204, "deleting twice is idempotent");
    http.patch(
        &format!("/v1/conversations/{g}/messages/{x_id}"),
        alice,
        json!({"text": "back"}),
    )
    .await
    .expect_error(404, "not_found", "editing a deleted message");

    // ---- Moderation: a moderator deletes someone else's message -------------------------------
    let r = http
        .patch(
            &format!("/v1/conversations/{g}/members/carol"),
            alice,
            json!({"role": "moderator"}),
        )
        .await;
    assert_eq!(
        r.expect(200, "carol becomes moderator")["role"],
        "moderator"
    );
    let alices: Vec<&String> = acked
        .iter()
        .filter(|(_, (_, s))| *s == "alice")
        .map(|(id, _)| id)
        .collect();
    let bobs: Vec<&String> = acked
        .iter()
        .filter(|(_, (_, s))| *s == "bob")
        .map(|(id, _)| id)
        .collect();
    http.delete(
        &format!("/v1/conversations/{g}/messages/{}", alices[0]),
        bob,
    )
    .await
    .expect_error(403, "forbidden", "a member deletes another's message");
    let victim = bobs[0].clone();
    http.delete(&format!("/v1/conversations/{g}/messages/{victim}"), carol)
        .await
        .expect(204, "moderator deletes bob's message");
    let gone = get_message(&http, alice, g, &victim).await;
    assert_eq!(gone["deleted_by"], "carol", "{gone}");

    // ---- Reactions -------------------------------------------------------------------------
    let m_id = alices[1].clone();
    let react = |token: &String, kind: &str| {
        let http = http.clone();
        let (token, kind, path) = (
            token.clone(),
            kind.to_string(),
            format!("/v1/conversations/{g}/messages/{m_id}/reactions"),
        );
        async move { http.post(&path, &token, json!({ "kind": kind })).await }
    };
    react(bob, "👍").await.expect(204, "bob reacts");
    react(carol, "👍").await.expect(204, "carol reacts");
    react(bob, "party").await.expect(204, "bob reacts again");
    react(bob, "party")
        .await
        .expect(204, "the same reaction twice");
    let m = get_message(&http, alice, g, &m_id).await;
    assert_eq!(
        m["reactions"],
        json!({"👍": ["bob", "carol"], "party": ["bob"]}),
        "{m}"
    );
    http.delete(
        &format!("/v1/conversations/{g}/messages/{m_id}/reactions/%F0%9F%91%8D"),
        bob,
    )
    .await
    .expect(204, "bob removes his reaction");
    http.delete(
        &format!("/v1/conversations/{g}/messages/{m_id}/reactions/%F0%9F%91%8D?user_id=carol"),
        bob,
    )
    .await
    .expect_error(403, "forbidden", "a member removes another's reaction");
    http.delete(
        &format!("/v1/conversations/{g}/messages/{m_id}/reactions/party?user_id=bob"),
        carol,
    )
    .await
    .expect(204, "a moderator removes bob's reaction");
    let m = get_message(&http, alice, g, &m_id).await;
    assert_eq!(m["reactions"], json!({"👍": ["carol"]}), "{m}");

    // ---- Threads -----------------------------------------------------------------------------
    let mut replies = Vec::new();
    for (n, token) in [bob, carol, bob].into_iter().enumerate() {
        let r = http
            .post(
                &format!("/v1/conversations/{g}/messages"),
                token,
                json!({"text": format!("reply {n}"), "parent_id": m_id}),
            )
            .await;
        let a = r.expect(201, "thread reply").clone();
        assert_eq!(a["message"]["parent_id"], m_id.as_str(), "{a}");
        replies.push(a["message"]["id"].as_str().expect("id").to_string());
    }
    let m = get_message(&http, alice, g, &m_id).await;
    assert_eq!(m["reply_count"], 3, "{m}");
    let r = http
        .get(
            &format!("/v1/conversations/{g}/messages/{m_id}/replies"),
            alice,
        )
        .await;
    let listed = r.expect(200, "replies")["messages"]
        .as_array()
        .expect("replies")
        .clone();
    check_order("replies", &listed);
    assert_eq!(ids(&listed), replies, "the replies, in order");
    assert!(
        listed.iter().all(|r| r["parent_id"] == m_id.as_str()),
        "{listed:?}"
    );
    let top = http
        .get(&format!("/v1/conversations/{g}/messages?limit=20"), alice)
        .await;
    let top_ids = ids(top.expect(200, "newest page")["messages"]
        .as_array()
        .expect("messages"));
    assert!(
        replies.iter().all(|r| !top_ids.contains(r)),
        "replies are not top-level messages"
    );
    http.post(
        &format!("/v1/conversations/{g}/messages"),
        bob,
        json!({"text": "nested", "parent_id": replies[0]}),
    )
    .await
    .expect_error(400, "invalid_argument", "a reply to a reply");
    http.post(
        &format!("/v1/conversations/{g}/messages"),
        bob,
        json!({"text": "orphan", "parent_id": uuid::Uuid::now_v7().to_string()}),
    )
    .await
    .expect_error(404, "not_found", "a reply to a missing message");

    // ---- Forward -----------------------------------------------------------------------------
    let g2 = "side";
    http.create_group(alice, g2, &["bob"]).await;
    let r = http
        .post(
            &format!("/v1/conversations/{g}/messages/{m_id}/forward"),
            alice,
            json!({ "conversation_id": g2 }),
        )
        .await;
    let f = r.expect(201, "forward").clone();
    assert_eq!(f["message"]["conversation_id"], g2, "{f}");
    assert_eq!(
        f["message"]["forwarded_from"],
        json!({"conversation_id": g, "message_id": m_id, "sender_id": "alice"}),
        "{f}"
    );
    let in_g2 = http.list_all(bob, g2).await;
    assert_eq!(in_g2.len(), 1, "{in_g2:?}");
    assert_eq!(in_g2[0]["id"], f["message"]["id"]);
    assert_eq!(in_g2[0]["text"], m["text"], "forwarded text");
    http.post(
        &format!("/v1/conversations/{g}/messages/{m_id}/forward"),
        carol,
        json!({ "conversation_id": g2 }),
    )
    .await
    .expect_error(
        404,
        "not_found",
        "forward into a conversation carol is not in",
    );
    http.post(
        &format!("/v1/conversations/{g}/messages/{x_id}/forward"),
        alice,
        json!({ "conversation_id": g2 }),
    )
    .await
    .expect_error(404, "not_found", "forward a deleted message");

    // ---- A retried send (same client_msg_id) is one message -----------------------------------
    let send_once = |token: String, key: &'static str| {
        let http = http.clone();
        async move {
            http.post(
                &format!("/v1/conversations/{g2}/messages"),
                &token,
                json!({"text": "exactly once", "client_msg_id": key}),
            )
            .await
        }
    };
    let first = send_once(alice.clone(), "retry-1").await;
    let first = first.expect(201, "first send").clone();
    let mut retries = vec![send_once(alice.clone(), "retry-1").await];
    let concurrent = futures::future::join_all(
        (0..4).map(|_| tokio::spawn(send_once(alice.clone(), "retry-1"))),
    )
    .await;
    retries.extend(concurrent.into_iter().map(|r| r.expect("retry task")));
    for r in &retries {
        let a = r.expect(201, "retried send");
        assert_eq!(a["message"]["id"], first["message"]["id"], "{a}");
        assert_eq!(a["position"], first["position"], "{a}");
    }
    let other = send_once(bob.clone(), "retry-1").await;
    assert_ne!(
        other.expect(201, "bob's send with the same key")["message"]["id"],
        first["message"]["id"],
        "client ids are per sender"
    );
    let in_g2 = http.list_all(alice, g2).await;
    let once = in_g2
        .iter()
        .filter(|m| m["id"] == first["message"]["id"])
        .count();
    assert_eq!(once, 1, "the retried send is listed once: {in_g2:?}");
    assert_eq!(in_g2.len(), 3, "forward + alice's + bob's: {in_g2:?}");

    // ---- Audit trail ---------------------------------------------------------------------------
    let r = http
        .admin(
            "GET",
            &format!("/admin/v1/audit?tenant_id={tenant}&limit=1000"),
            None,
        )
        .await;
    let entries = r.expect(200, "audit")["entries"]
        .as_array()
        .expect("entries")
        .clone();
    assert!(
        entries.iter().all(|e| e["tenant_id"] == tenant.as_str()),
        "only this tenant's entries"
    );
    let has = |actor: &str, action: &str, target: &str| {
        entries.iter().any(|e| {
            e["actor"] == actor && e["action"] == action && e["target"].as_str() == Some(target)
        })
    };
    let trail = serde_json::to_string_pretty(&entries).expect("json");
    assert!(
        has("admin", "tenant.create", &format!("tenant:{tenant}")),
        "{trail}"
    );
    assert!(
        has("admin", "tenant.update", &format!("tenant:{tenant}")),
        "{trail}"
    );
    assert!(
        has(
            "user:alice",
            "member.role_change",
            &format!("conversation:{g}/user:carol")
        ),
        "{trail}"
    );
    assert!(
        has(
            "user:carol",
            "message.delete_by_moderator",
            &format!("conversation:{g}/message:{victim}")
        ),
        "{trail}"
    );
    assert!(
        has(
            "user:carol",
            "reaction.remove_by_moderator",
            &format!("conversation:{g}/message:{m_id}/user:bob")
        ),
        "{trail}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e["target"].as_str().is_some_and(|t| t.contains(&x_id))),
        "deleting one's own message is not a moderation action: {trail}"
    );
    let ats: Vec<time::OffsetDateTime> = entries
        .iter()
        .map(|e| {
            let at = e["at"].as_str().expect("at");
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|err| panic!("audit time {at}: {err}"))
        })
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "the audit trail is newest first: {trail}"
    );

    sa.proc.assert_no_panics();
}
