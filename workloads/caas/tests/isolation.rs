//! Isolation through the real `caas standalone` process: users of another tenant (one of them
//! with the same user id as the conversation's owner) and a non-member of the same tenant drive
//! the whole conversation and message route table of a tenant-A conversation. Every call is
//! refused with 403 or 404, and afterwards nothing about the conversation has changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Standalone, unique};
use serde_json::{Value, json};

/// What a member sees of a conversation: everything a refused call must leave unchanged.
async fn snapshot(http: &Http, token: &str, conv: &str, msg: &str) -> Value {
    let get = |path: String| {
        let http = http.clone();
        let token = token.to_string();
        async move {
            let r = http.get(&path, &token).await;
            r.expect(200, &format!("snapshot {path}")).clone()
        }
    };
    let mut mine = get("/v1/conversations?limit=200".into()).await;
    // The order of the conversation list is not under test here.
    if let Some(list) = mine["conversations"].as_array_mut() {
        list.sort_by_key(|c| c["conversation"]["id"].to_string());
    }
    json!({
        "conversation": get(format!("/v1/conversations/{conv}")).await,
        "members": get(format!("/v1/conversations/{conv}/members")).await,
        "messages": http.list_all(token, conv).await,
        "message": get(format!("/v1/conversations/{conv}/messages/{msg}")).await,
        "replies": get(format!("/v1/conversations/{conv}/messages/{msg}/replies")).await,
        "mine": mine,
    })
}

/// One call of the route table.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

fn call(method: &'static str, path: String, body: Option<Value>) -> Call {
    Call { method, path, body }
}

/// Every conversation and message route, aimed at `conv` / `msg` (a message of alice with a
/// reply `reply`, and bob's reaction `+1`). `me` is the intruder, `own` a conversation of the
/// intruder, `own_msg` a message in it.
fn route_table(
    conv: &str,
    msg: &str,
    reply: &str,
    me: &str,
    own: &str,
    own_msg: &str,
) -> Vec<Call> {
    let c = format!("/v1/conversations/{conv}");
    let m = format!("{c}/messages/{msg}");
    vec![
        call("GET", c.clone(), None),
        call("PATCH", c.clone(), Some(json!({"name": "pwned"}))),
        call("PATCH", c.clone(), Some(json!({"topic": "pwned"}))),
        call("PATCH", c.clone(), Some(json!({"archived": true}))),
        call("GET", format!("{c}/members"), None),
        call("GET", format!("{c}/members?limit=1&cursor=alice"), None),
        call("POST", format!("{c}/members"), Some(json!({"user_id": me}))),
        call(
            "POST",
            format!("{c}/members"),
            Some(json!({"user_id": me, "role": "owner"})),
        ),
        call(
            "POST",
            format!("{c}/members"),
            Some(json!({"user_id": "alice"})),
        ),
        call("DELETE", format!("{c}/members/bob"), None),
        call("DELETE", format!("{c}/members/alice"), None),
        call("DELETE", format!("{c}/members/{me}"), None),
        call(
            "PATCH",
            format!("{c}/members/bob"),
            Some(json!({"role": "owner"})),
        ),
        call(
            "PATCH",
            format!("{c}/members/{me}"),
            Some(json!({"role": "owner"})),
        ),
        call("POST", format!("{c}/read"), Some(json!({}))),
        call("POST", format!("{c}/read"), Some(json!({"position": 0}))),
        call("GET", format!("{c}/messages"), None),
        call("GET", format!("{c}/messages?after=-1&limit=200"), None),
        call("GET", format!("{c}/messages?before=1000000"), None),
        call(
            "POST",
            format!("{c}/messages"),
            Some(json!({"text": "intrusion"})),
        ),
        call(
            "POST",
            format!("{c}/messages"),
            Some(json!({"text": "intrusion", "client_msg_id": "x1"})),
        ),
        call(
            "POST",
            format!("{c}/messages"),
            Some(json!({"text": "intrusion", "parent_id": msg})),
        ),
        call("GET", m.clone(), None),
        call("GET", format!("{c}/messages/{reply}"), None),
        call("PATCH", m.clone(), Some(json!({"text": "pwned"}))),
        call("DELETE", m.clone(), None),
        call("DELETE", format!("{c}/messages/{reply}"), None),
        call("GET", format!("{m}/replies"), None),
        call("GET", format!("{m}/replies?after=-1"), None),
        call(
            "POST",
            format!("{m}/forward"),
            Some(json!({"conversation_id": own})),
        ),
        call(
            "POST",
            format!("{m}/forward"),
            Some(json!({"conversation_id": conv})),
        ),
        // Into tenant A's conversation from the intruder's own one.
        call(
            "POST",
            format!("/v1/conversations/{own}/messages/{own_msg}/forward"),
            Some(json!({"conversation_id": conv})),
        ),
        call(
            "POST",
            format!("{m}/reactions"),
            Some(json!({"kind": "+1"})),
        ),
        call("DELETE", format!("{m}/reactions/+1"), None),
        call("DELETE", format!("{m}/reactions/+1?user_id=bob"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_tenants_and_non_members_see_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();

    // Tenant A: alice (owner) and bob in a group and in a direct conversation; carol is in the
    // tenant but in neither.
    let a = http.create_tenant(&unique("a-")).await;
    let alice = http.token(&a, "alice").await;
    let bob = http.token(&a, "bob").await;
    let carol = http.token(&a, "carol").await;
    let group = "secret-group";
    http.create_group(&alice, group, &["bob"]).await;
    let r = http
        .post(
            "/v1/conversations",
            &alice,
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await;
    let direct = r.expect(201, "direct conversation")["conversation"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut targets = Vec::new();
    for conv in [group, direct.as_str()] {
        let m = http.send(&alice, conv, "top secret").await;
        let msg = m["message"]["id"].as_str().expect("id").to_string();
        let r = http
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                &bob,
                json!({"text": "secret reply", "parent_id": msg}),
            )
            .await;
        let reply = r.expect(201, "reply")["message"]["id"]
            .as_str()
            .expect("id")
            .to_string();
        http.post(
            &format!("/v1/conversations/{conv}/messages/{msg}/reactions"),
            &bob,
            json!({"kind": "+1"}),
        )
        .await
        .expect(204, "bob reacts");
        targets.push((conv.to_string(), msg, reply));
    }

    // Tenant B: a user with the same id as A's owner, and another.
    let b = http.create_tenant(&unique("b-")).await;
    let b_alice = http.token(&b, "alice").await;
    let mallory = http.token(&b, "mallory").await;

    // Each intruder owns a conversation with a message (the source or target of forwards).
    let intruders = [
        ("tenant B alice", b_alice.clone(), "alice"),
        ("tenant B mallory", mallory.clone(), "mallory"),
        ("tenant A non-member carol", carol.clone(), "carol"),
    ];
    let mut owned = Vec::new();
    for (n, (_, token, _)) in intruders.iter().enumerate() {
        let own = format!("own-{n}");
        http.create_group(token, &own, &[]).await;
        let m = http.send(token, &own, "mine").await;
        owned.push((own, m["message"]["id"].as_str().expect("id").to_string()));
    }

    let mut before = Vec::new();
    for (conv, msg, _) in &targets {
        before.push(snapshot(&http, &alice, conv, msg).await);
        before.push(snapshot(&http, &bob, conv, msg).await);
    }
    let own_before: Vec<usize> = {
        let mut v = Vec::new();
        for ((_, token, _), (own, _)) in intruders.iter().zip(&owned) {
            v.push(http.list_all(token, own).await.len());
        }
        v
    };

    let mut calls = 0;
    for ((who, token, me), (own, own_msg)) in intruders.iter().zip(&owned) {
        // The conversation list never shows tenant A's conversations.
        let r = http.get("/v1/conversations?limit=200", token).await;
        let listed: Vec<&str> = r.expect(200, "list my conversations")["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .filter_map(|c| c["conversation"]["id"].as_str())
            .collect();
        assert_eq!(listed, vec![own.as_str()], "{who} lists only its own");
        if who.starts_with("tenant B") {
            http.get("/v1/users/bob", token).await.expect_error(
                404,
                "not_found",
                &format!("{who} reads tenant A's user"),
            );
        }

        for (conv, msg, reply) in &targets {
            for c in route_table(conv, msg, reply, me, own, own_msg) {
                let r = http
                    .call(c.method, &c.path, Some(token), c.body.as_ref())
                    .await;
                calls += 1;
                assert!(
                    matches!(r.status, 403 | 404),
                    "{who}: {} {} {} answered {} {}",
                    c.method,
                    c.path,
                    c.body.as_ref().map(|b| b.to_string()).unwrap_or_default(),
                    r.status,
                    r.body
                );
                // A refusal by the handler, not by the router: the route exists.
                assert_ne!(
                    r.body["error"]["message"], "no such route",
                    "{} {} is not a route",
                    c.method, c.path
                );
                assert!(
                    matches!(r.code(), Some("forbidden" | "not_found" | "not_member")),
                    "{who}: {} {}: error code {}",
                    c.method,
                    c.path,
                    r.body
                );
            }
        }
    }
    assert!(calls >= 3 * 2 * 30, "the whole table was driven ({calls})");

    // Nothing changed: not the conversations, their members, messages, reactions, threads or
    // read markers, and no forward reached the intruders' own conversations.
    let mut after = Vec::new();
    for (conv, msg, _) in &targets {
        after.push(snapshot(&http, &alice, conv, msg).await);
        after.push(snapshot(&http, &bob, conv, msg).await);
    }
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b,
            a,
            "state changed by refused calls:\nbefore {}\nafter {}",
            serde_json::to_string_pretty(b).expect("json"),
            serde_json::to_string_pretty(a).expect("json")
        );
    }
    for (n, ((who, token, _), (own, _))) in intruders.iter().zip(&owned).enumerate() {
        assert_eq!(
            http.list_all(token, own).await.len(),
            own_before[n],
            "{who}: nothing was forwarded into its own conversation"
        );
    }
    // The intruders are still not members.
    for (conv, _, _) in &targets {
        let r = http
            .get(&format!("/v1/conversations/{conv}/members"), &alice)
            .await;
        let ids: Vec<&str> = r.expect(200, "members")["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["user_id"].as_str())
            .collect();
        assert_eq!(ids, vec!["alice", "bob"], "{conv}");
    }
    sa.proc.assert_no_panics();
}
