//! Talking to the process under test: JSON over HTTP with the service and admin tokens, and
//! the few calls most tests make (tenants, tokens, groups, sends, uploads, full listings).

use serde_json::{Value, json};
use std::time::Duration;

/// An answer: status, JSON body (`Null` when empty or not JSON) and headers.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The machine-readable error code, if any.
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> &Value {
        assert_eq!(
            self.status, status,
            "{what}: expected {status}, got {} {}",
            self.status, self.body
        );
        &self.body
    }

    /// Asserts an error status with its code.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, Some(code)),
            "{what}: expected {status} {code}, got {} {}",
            self.status,
            self.body
        );
    }
}

/// A client for one caas deployment: the public API and the admin API.
#[derive(Debug, Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub api: String,
    pub internal: String,
    pub admin_token: String,
}

impl Http {
    pub fn new(api: &str, internal: &str, admin_token: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()
                .expect("reqwest client"),
            api: api.to_string(),
            internal: internal.to_string(),
            admin_token: admin_token.to_string(),
        }
    }

    /// Sends a request; `path` is relative to the public API unless it starts with `/admin`.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Resp, reqwest::Error> {
        let base = if path.starts_with("/admin") {
            &self.internal
        } else {
            &self.api
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        Ok(Resp {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        })
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        self.try_call(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("POST", path, Some(token), Some(&body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("PATCH", path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call("DELETE", path, Some(token), None).await
    }

    /// An admin API call with the admin token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let token = self.admin_token.clone();
        self.call(method, path, Some(&token), body.as_ref()).await
    }

    /// Creates a tenant through the admin API; returns its `(app_id, app_secret)`.
    pub async fn create_tenant(&self, id: &str) -> (String, String) {
        let r = self
            .admin(
                "POST",
                "/admin/v1/tenants",
                Some(json!({"id": id, "name": format!("Tenant {id}")})),
            )
            .await;
        let b = r.expect(201, "create tenant");
        assert_eq!(b["tenant"]["id"], id, "created tenant: {b}");
        assert_eq!(b["tenant"]["status"], "active", "created tenant: {b}");
        (
            b["credentials"]["app_id"]
                .as_str()
                .expect("app_id")
                .to_string(),
            b["credentials"]["app_secret"]
                .as_str()
                .expect("app_secret")
                .to_string(),
        )
    }

    /// Exchanges app credentials and a user id for a user token.
    pub async fn token(&self, app: &(String, String), user: &str) -> String {
        let r = self
            .call(
                "POST",
                "/v1/token",
                None,
                Some(&json!({"app_id": app.0, "app_secret": app.1, "user_id": user})),
            )
            .await;
        let b = r.expect(200, "token exchange");
        assert_eq!(b["token_type"], "Bearer", "token response: {b}");
        assert_eq!(b["user"]["id"], user, "token response: {b}");
        b["token"].as_str().expect("token").to_string()
    }

    /// Creates a group conversation with `members` (the caller becomes owner).
    pub async fn create_group(&self, token: &str, id: &str, members: &[&str]) -> Value {
        let r = self
            .post(
                "/v1/conversations",
                token,
                json!({"kind": "group", "id": id, "name": format!("Group {id}"), "members": members}),
            )
            .await;
        r.expect(201, "create group").clone()
    }

    /// Sends a message; returns the `Accepted` answer.
    pub async fn send(&self, token: &str, conv: &str, text: &str) -> Value {
        let r = self
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                token,
                json!({ "text": text }),
            )
            .await;
        r.expect(201, "send message").clone()
    }

    /// Uploads a file to a conversation through the media API (`POST
    /// /v1/media/conversations/{conv}/files?name=`), the body as is.
    pub async fn upload(
        &self,
        token: &str,
        conv: &str,
        name: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        let resp = self
            .client
            .post(format!(
                "{}/v1/media/conversations/{conv}/files?name={name}",
                self.api
            ))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("upload {name} to {conv}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("upload answer");
        Resp {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        }
    }

    /// Uploads a file and returns its media id (asserts `201`).
    pub async fn upload_id(
        &self,
        token: &str,
        conv: &str,
        name: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> String {
        let r = self.upload(token, conv, name, content_type, body).await;
        r.expect(201, &format!("upload {name} to {conv}"))["id"]
            .as_str()
            .expect("media id")
            .to_string()
    }

    /// Sends a message with attachments (media ids); the answer as it came.
    pub async fn send_files(&self, token: &str, conv: &str, text: &str, ids: &[&str]) -> Resp {
        self.post(
            &format!("/v1/conversations/{conv}/messages"),
            token,
            json!({ "text": text, "attachments": ids }),
        )
        .await
    }

    /// Every top-level message of a conversation, paging forward from the start.
    pub async fn list_all(&self, token: &str, conv: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = -1i64;
        loop {
            let r = self
                .get(
                    &format!("/v1/conversations/{conv}/messages?after={after}&limit=200"),
                    token,
                )
                .await;
            let b = r.expect(200, "list messages");
            assert_eq!(
                r.headers
                    .get("x-caas-consistency")
                    .and_then(|v| v.to_str().ok()),
                Some("fresh"),
                "a list answers with persisted data"
            );
            let page = b["messages"].as_array().expect("messages").clone();
            if page.is_empty() {
                break;
            }
            after = page.last().expect("non-empty")["position"]
                .as_i64()
                .expect("position");
            let more = b["has_more"].as_bool().expect("has_more");
            out.extend(page);
            if !more {
                break;
            }
        }
        out
    }
}
