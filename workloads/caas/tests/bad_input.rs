//! Bad input through the real `caas standalone` process: oversized bodies (with and without a
//! Content-Length), malformed JSON, unknown fields, wrong types, over-long and empty texts,
//! invalid ids in paths, wrong content types, bad query parameters, wrong methods and unknown
//! routes. Each gets a 4xx with a machine-readable code in the one error shape; the process
//! stays healthy and never logs a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Resp, Standalone, unique};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends raw bytes with a content type.
async fn raw(
    http: &Http,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let base = if path.starts_with("/admin") {
        &http.internal
    } else {
        &http.api
    };
    let mut req = http.client.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        format!("{base}{path}"),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.body(body).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    Resp {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        headers,
    }
}

/// A chunked upload without Content-Length, over a raw HTTP/1.1 connection: the limit must hold
/// while streaming too. Returns the status line and the body.
async fn chunked(api: &str, path: &str, token: &str, total: usize) -> (u16, String) {
    let addr = api.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut body = br#"{"text":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', total));
    body.extend(br#""}"#);
    // The server may answer and close before everything is written: stop writing then.
    for part in body.chunks(16 * 1024) {
        let chunk = [
            format!("{:x}\r\n", part.len()).into_bytes(),
            part.to_vec(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer to a chunked oversized body");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_coded_4xx_and_no_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let tenant = unique("bad-");
    let app = http.create_tenant(&tenant).await;
    let alice = http.token(&app, "alice").await;
    http.token(&app, "bob").await;
    let g = "inputs";
    http.create_group(&alice, g, &["bob"]).await;
    let sent = http.send(&alice, g, "a fine message").await;
    let mid = sent["message"]["id"].as_str().expect("id").to_string();
    let send_path = format!("/v1/conversations/{g}/messages");
    let json_ct = Some("application/json");
    let a = Some(alice.as_str());

    // ---- Oversized bodies (the default limit is 256 KiB) ------------------------------------
    let big = json!({"text": "x".repeat(300 * 1024)})
        .to_string()
        .into_bytes();
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("POST", send_path.as_str(), a),
        ("POST", "/v1/token", None),
        ("POST", "/v1/conversations", a),
        ("POST", "/admin/v1/tenants", Some(http.admin_token.as_str())),
    ];
    for (method, path, token) in cases {
        raw(&http, method, path, token, json_ct, big.clone())
            .await
            .expect_error(
                413,
                "payload_too_large",
                &format!("oversized body on {path}"),
            );
    }
    let (status, text) = chunked(&http.api, &send_path, &alice, 1024 * 1024).await;
    assert_eq!(
        status, 413,
        "a chunked body over the limit is refused: {text}"
    );
    assert!(text.contains("payload_too_large"), "{text}");

    // ---- Malformed JSON, unknown fields, wrong types ----------------------------------------
    let malformed: Vec<&[u8]> = vec![
        b"{",
        b"{\"text\": }",
        b"{\"text\": \"unterminated}",
        b"not json at all",
        b"{\"text\": \"a\",}",
        b"",
    ];
    for body in malformed {
        let r = raw(&http, "POST", &send_path, a, json_ct, body.to_vec()).await;
        assert_eq!(r.status, 400, "{:?}: {} {}", body, r.status, r.body);
        assert!(
            matches!(r.code(), Some("malformed_json" | "invalid_argument")),
            "{:?}: {}",
            String::from_utf8_lossy(body),
            r.body
        );
    }
    raw(
        &http,
        "POST",
        &send_path,
        a,
        json_ct,
        b"{\"text\": \"a\"".to_vec(),
    )
    .await
    .expect_error(400, "malformed_json", "truncated JSON");
    let r = raw(
        &http,
        "POST",
        &send_path,
        a,
        json_ct,
        b"{\"text\":\"\xff\xfe\"}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400, "invalid UTF-8: {} {}", r.status, r.body);
    assert!(r.code().is_some(), "invalid UTF-8: {}", r.body);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = raw(&http, "POST", &send_path, a, json_ct, deep.into_bytes()).await;
    assert_eq!(r.status, 400, "deeply nested JSON: {} {}", r.status, r.body);

    let unknown = [
        (send_path.clone(), json!({"text": "hi", "txt": "typo"})),
        (
            "/v1/conversations".to_string(),
            json!({"kind": "group", "nmae": "typo"}),
        ),
        (format!("/v1/conversations/{g}/read"), json!({"positon": 3})),
        (
            "/v1/token".to_string(),
            json!({"app_id": app.0, "app_secret": app.1, "user_id": "alice", "admin": true}),
        ),
    ];
    for (path, body) in &unknown {
        let token = if path == "/v1/token" { None } else { a };
        http.call("POST", path, token, Some(body))
            .await
            .expect_error(400, "unknown_field", &format!("unknown field on {path}"));
    }
    http.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"id": unique("t-"), "name": "x", "quota": {}})),
    )
    .await
    .expect_error(400, "unknown_field", "unknown field on the admin API");

    for body in [
        json!({"text": 5}),
        json!({"text": null}),
        json!({}),
        json!("text"),
        json!({"text": "hi", "parent_id": 7}),
    ] {
        let r = http.call("POST", &send_path, a, Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {} {}", r.status, r.body);
        assert!(r.code().is_some(), "{body}: a code: {}", r.body);
    }
    let r = http
        .post(
            "/v1/conversations",
            &alice,
            json!({"kind": "room", "id": "x"}),
        )
        .await;
    assert_eq!(
        r.status, 400,
        "unknown conversation kind: {} {}",
        r.status, r.body
    );

    // ---- Texts ---------------------------------------------------------------------------------
    http.post(&send_path, &alice, json!({"text": "x".repeat(4001)}))
        .await
        .expect_error(400, "text_too_long", "4,001 characters");
    http.post(&send_path, &alice, json!({"text": "é".repeat(4001)}))
        .await
        .expect_error(400, "text_too_long", "4,001 two-byte characters");
    http.post(&send_path, &alice, json!({"text": "é".repeat(4000)}))
        .await
        .expect(201, "4,000 characters is the limit, not bytes");
    http.patch(
        &format!("{send_path}/{mid}"),
        &alice,
        json!({"text": "y".repeat(4001)}),
    )
    .await
    .expect_error(400, "text_too_long", "edit to 4,001 characters");
    for empty in ["", "   ", "\n\t"] {
        http.post(&send_path, &alice, json!({ "text": empty }))
            .await
            .expect_error(400, "text_empty", &format!("text {empty:?}"));
    }
    http.post(&send_path, &alice, json!({"text": "a\u{0}b"}))
        .await
        .expect_error(400, "invalid_argument", "NUL in text");
    http.post(
        &send_path,
        &alice,
        json!({"text": "hi", "client_msg_id": "x".repeat(129)}),
    )
    .await
    .expect_error(400, "invalid_argument", "client_msg_id too long");
    http.post(
        &format!("{send_path}/{mid}/reactions"),
        &alice,
        json!({"kind": "x".repeat(33)}),
    )
    .await
    .expect_error(400, "invalid_argument", "reaction too long");

    // ---- Invalid ids in paths ---------------------------------------------------------------
    let long = "c".repeat(65);
    let bad_paths = [
        ("GET", "/v1/conversations/a%20b".to_string()),
        ("GET", format!("/v1/conversations/{long}")),
        (
            "GET",
            "/v1/conversations/%C3%A9t%C3%A9/messages".to_string(),
        ),
        ("POST", "/v1/conversations/a%2Fb/messages".to_string()),
        ("GET", format!("{send_path}/not-a-uuid")),
        ("PATCH", format!("{send_path}/123")),
        ("DELETE", format!("{send_path}/{mid}x")),
        ("GET", format!("{send_path}/zzzz/replies")),
        ("DELETE", format!("/v1/conversations/{g}/members/a%20b")),
        ("GET", "/v1/users/bad%20user".to_string()),
        ("GET", "/admin/v1/tenants/bad%20tenant".to_string()),
    ];
    for (method, path) in &bad_paths {
        let body = match *method {
            "POST" | "PATCH" => Some(json!({"text": "hi"})),
            _ => None,
        };
        let token = if path.starts_with("/admin") {
            http.admin_token.clone()
        } else {
            alice.clone()
        };
        http.call(method, path, Some(&token), body.as_ref())
            .await
            .expect_error(400, "invalid_id", &format!("{method} {path}"));
    }

    // ---- Content types ------------------------------------------------------------------------
    let ok_body = json!({"text": "hi"}).to_string().into_bytes();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        raw(&http, "POST", &send_path, a, ct, ok_body.clone())
            .await
            .expect_error(
                415,
                "unsupported_media_type",
                &format!("content type {ct:?}"),
            );
    }
    raw(
        &http,
        "POST",
        &send_path,
        a,
        Some("application/json; charset=utf-8"),
        ok_body.clone(),
    )
    .await
    .expect(201, "JSON with a charset parameter");

    // ---- Query parameters ----------------------------------------------------------------------
    for (q, code) in [
        ("limit=0", "invalid_argument"),
        ("limit=201", "invalid_argument"),
        ("limit=-1", "invalid_argument"),
        ("limit=abc", "invalid_argument"),
        ("before=abc", "invalid_argument"),
        ("after=1.5", "invalid_argument"),
        ("before=5&after=1", "invalid_cursor"),
        ("bogus=1", "invalid_argument"),
    ] {
        http.get(&format!("{send_path}?{q}"), &alice)
            .await
            .expect_error(400, code, q);
    }
    let r = http.get("/v1/conversations?cursor=%%%", &alice).await;
    assert_eq!(r.status, 400, "undecodable cursor: {}", r.body);
    assert!(
        matches!(r.code(), Some("invalid_argument" | "invalid_cursor")),
        "undecodable cursor: {}",
        r.body
    );
    http.get("/v1/conversations?cursor=bm90LWEtY3Vyc29y", &alice)
        .await
        .expect_error(400, "invalid_cursor", "a cursor that is not ours");

    // ---- Methods and routes ------------------------------------------------------------------
    http.call("PUT", &send_path, a, Some(&json!({"text": "hi"})))
        .await
        .expect_error(405, "method_not_allowed", "PUT on messages");
    http.call("GET", "/v1/nope", a, None)
        .await
        .expect_error(404, "not_found", "unknown route");
    http.call("GET", "/admin/v1/nope", Some(&http.admin_token), None)
        .await
        .expect_error(404, "not_found", "unknown admin route");

    // ---- Still healthy, nothing half-done, no panic ---------------------------------------------
    let r = http.call("GET", "/health", None, None).await;
    assert_eq!(r.status, 200, "healthy after all that: {}", r.body);
    let listed = http.list_all(&alice, g).await;
    assert_eq!(
        listed.len(),
        3,
        "only the three valid sends were stored: {listed:?}"
    );
    sa.proc.assert_no_panics();
}
