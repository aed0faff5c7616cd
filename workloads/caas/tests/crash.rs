//! Crash safety of the write path through the real `caas standalone` process: concurrent
//! senders record every acknowledged (201) message, the process gets `kill -9` in the middle of
//! the burst, and after a restart on the same data directory every acknowledged message is
//! listed exactly once, at the position it was acknowledged with, and nothing is listed twice.
//! Sends cut off by the crash are retried with their client message id: still one message each.
//! Two rounds, so the second crash hits a data directory that has already recovered once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Standalone, check_order, unique, wait_for};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TASKS: usize = 8;
const CONVERSATIONS: [&str; 2] = ["crash-a", "crash-b"];
/// Acknowledgements to wait for before the kill, per round.
const KILL_AFTER: usize = 300;

/// An acknowledged send.
#[derive(Debug, Clone)]
struct Ack {
    conv: &'static str,
    id: String,
    position: i64,
    /// The send's key (`r<round>-t<task>-n<n>`); its client message id when the task is even.
    client_msg_id: String,
}

/// What one sender saw in one round.
#[derive(Debug, Default)]
struct Outcome {
    acks: Vec<Ack>,
    /// The send that was in flight when the process died (no answer).
    cut_off: Option<(&'static str, String)>,
}

async fn sender(
    http: Http,
    token: String,
    task: usize,
    round: usize,
    acked: Arc<AtomicUsize>,
) -> Outcome {
    let conv = CONVERSATIONS[task % CONVERSATIONS.len()];
    let mut out = Outcome::default();
    for n in 0.. {
        let key = format!("r{round}-t{task}-n{n}");
        // Half of the senders make their sends idempotent with a client message id.
        let body = if idempotent(task) {
            json!({"text": format!("crash test {key}"), "client_msg_id": key})
        } else {
            json!({ "text": format!("crash test {key}") })
        };
        match http
            .try_call(
                "POST",
                &format!("/v1/conversations/{conv}/messages"),
                Some(&token),
                Some(&body),
            )
            .await
        {
            Ok(r) if r.status == 201 => {
                out.acks.push(Ack {
                    conv,
                    id: r.body["message"]["id"].as_str().expect("id").to_string(),
                    position: r.body["position"].as_i64().expect("position"),
                    client_msg_id: key,
                });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // The process is gone: the answer never came.
            Err(_) => {
                out.cut_off = Some((conv, key));
                break;
            }
            Ok(r) => panic!(
                "task {task}: send {key} refused while the server was up: {} {}",
                r.status, r.body
            ),
        }
    }
    out
}

/// Whether a sender task sends with client message ids (every other one does).
fn idempotent(task: usize) -> bool {
    task & 1 == 0
}

/// The sender task of a key `r<round>-t<task>-n<n>`.
fn task_of(key: &str) -> usize {
    key.split("-t")
        .nth(1)
        .and_then(|s| s.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no task in {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sa = Standalone::start(
        dir.path(),
        &[("CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER", "1000000")],
    )
    .await;
    let http = sa.http.clone();
    let app = http.create_tenant(&unique("crash-")).await;
    let users: Vec<String> = (0..TASKS).map(|i| format!("u{i}")).collect();
    let mut tokens = Vec::new();
    for u in &users {
        tokens.push(http.token(&app, u).await);
    }
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    for c in CONVERSATIONS {
        http.create_group(&tokens[0], c, &others).await;
    }

    let mut all_acks: Vec<Ack> = Vec::new();
    let mut retried: Vec<(&'static str, String, String)> = Vec::new(); // conv, key, id
    for round in 0..2 {
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(sender(
                    http.clone(),
                    tokens[t].clone(),
                    t,
                    round,
                    acked.clone(),
                ))
            })
            .collect();
        wait_for(
            "acknowledged sends before the kill",
            Duration::from_secs(60),
            || {
                let n = acked.load(Ordering::SeqCst);
                async move { (n >= KILL_AFTER).then_some(()) }
            },
        )
        .await;
        sa.proc.kill9();
        let mut cut_off = Vec::new();
        for t in tasks {
            let o = t.await.expect("sender task");
            all_acks.extend(o.acks);
            cut_off.extend(o.cut_off);
        }
        assert!(
            all_acks.len() >= KILL_AFTER * (round + 1),
            "round {round}: {} acks",
            all_acks.len()
        );
        assert_eq!(
            cut_off.len(),
            TASKS,
            "every sender was cut off mid-burst by the kill"
        );

        sa.proc.restart().await;

        // The client retries what was cut off with its client message id, right away (before
        // anything was listed).
        for (conv, key) in cut_off {
            let task = task_of(&key);
            if !idempotent(task) {
                continue;
            }
            let t = &tokens[task];
            let r = http
                .post(
                    &format!("/v1/conversations/{conv}/messages"),
                    t,
                    json!({"text": format!("crash test {key}"), "client_msg_id": key}),
                )
                .await;
            let a = r.expect(201, "retry after restart");
            retried.push((conv, key, a["message"]["id"].as_str().expect("id").into()));
        }
        // And an acknowledged send retried after the crash is the same message.
        // The newest one: the most likely to be in the log but not yet in the store.
        let first = all_acks
            .iter()
            .rev()
            .find(|a| idempotent(task_of(&a.client_msg_id)))
            .expect("an acknowledged idempotent send")
            .clone();
        let task = task_of(&first.client_msg_id);
        let r = http
            .post(
                &format!("/v1/conversations/{}/messages", first.conv),
                &tokens[task],
                json!({"text": "again", "client_msg_id": first.client_msg_id}),
            )
            .await;
        let a = r.expect(201, "retry of an acknowledged send");
        assert_eq!(a["message"]["id"], first.id.as_str(), "same message: {a}");
        assert_eq!(
            a["position"], first.position,
            "same position as the first acknowledgement: {a}"
        );
    }

    // Every acknowledged message is listed once, where it was acknowledged; nothing twice.
    let mut listed_by_conv = BTreeMap::new();
    for c in CONVERSATIONS {
        let listed = http.list_all(&tokens[0], c).await;
        let by_id = check_order(c, &listed);
        // Every send has its own text: a text listed twice is a send stored twice.
        let texts: Vec<&str> = listed.iter().filter_map(|m| m["text"].as_str()).collect();
        let unique_texts: BTreeSet<&str> = texts.iter().copied().collect();
        assert_eq!(
            texts.len(),
            unique_texts.len(),
            "{c}: a send is listed twice"
        );
        listed_by_conv.insert(c, by_id);
    }
    let mut missing = Vec::new();
    let mut moved = Vec::new();
    for a in &all_acks {
        match listed_by_conv[a.conv].get(&a.id) {
            None => missing.push(a.client_msg_id.clone()),
            Some(p) if *p != a.position => moved.push(format!(
                "{} acked at {} listed at {p}",
                a.client_msg_id, a.position
            )),
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are lost after kill -9: {missing:?}",
        missing.len(),
        all_acks.len()
    );
    assert!(moved.is_empty(), "acknowledged messages moved: {moved:?}");
    for (conv, key, id) in &retried {
        assert!(
            listed_by_conv[conv].contains_key(id),
            "the retried send {key} is listed"
        );
    }
    let total: usize = listed_by_conv.values().map(BTreeMap::len).sum();
    assert!(
        total >= all_acks.len() + retried.len(),
        "listed {total}, acknowledged {} + retried {}",
        all_acks.len(),
        retried.len()
    );
    sa.proc.assert_no_panics();
}

/// A client message id names one send of one sender. Used again for a send to another
/// conversation, the answer must be honest: either the message is stored in that conversation,
/// or the send is refused (409). Checked while the de-duplication memory knows the first send,
/// and again after a restart, when only the store remembers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_msg_id_reused_in_another_conversation_is_not_acknowledged_and_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let app = http.create_tenant(&unique("reuse-")).await;
    let alice = http.token(&app, "alice").await;
    for c in ["first", "second"] {
        http.create_group(&alice, c, &[]).await;
    }
    let r = http
        .post(
            "/v1/conversations/first/messages",
            &alice,
            json!({"text": "to the first", "client_msg_id": "k-1"}),
        )
        .await;
    r.expect(201, "first send");

    /// Sends "to the second" with the reused key and checks the answer is honest.
    async fn reuse(http: &Http, token: &str, when: &str) {
        let r = http
            .post(
                "/v1/conversations/second/messages",
                token,
                json!({"text": "to the second", "client_msg_id": "k-1"}),
            )
            .await;
        if r.status == 409 {
            return;
        }
        let a = r.expect(201, &format!("{when}: reused key in another conversation"));
        assert_eq!(
            a["message"]["conversation_id"], "second",
            "{when}: a send to `second` was acknowledged with a message of another \
             conversation: {a}"
        );
        let listed = http.list_all(token, "second").await;
        assert!(
            listed.iter().any(|m| m["text"] == "to the second"),
            "{when}: the send to `second` was acknowledged (201 {a}) but is not listed: \
             {listed:?}"
        );
    }

    reuse(&http, &alice, "while the first send is remembered").await;
    sa.proc.kill9();
    sa.proc.restart().await;
    reuse(&http, &alice, "after a restart").await;
    sa.proc.assert_no_panics();
}
