//! The caas HTTP API as the benchmark uses it: admin calls, token exchange, conversations,
//! sends, history pages, and the Prometheus text of the metrics port.

use crate::server::Info;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub info: Info,
}

/// One user with a token.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub bearer: String,
}

/// A send that the server acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub partition: i64,
    pub position: i64,
}

/// One page of history.
#[derive(Debug)]
pub struct Page {
    pub positions: Vec<i64>,
    pub has_more: bool,
    pub fresh: bool,
}

pub fn client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn ok_json(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {body}");
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
}

impl Api {
    /// Replaces the demo tenant's quotas (admin API).
    pub async fn set_quotas(&self, quotas: Value) -> anyhow::Result<()> {
        let resp = self
            .http
            .put(format!(
                "{}/admin/v1/tenants/{}",
                self.info.admin, self.info.tenant_id
            ))
            .bearer_auth(&self.info.admin_token)
            .json(&json!({"name": "Demo", "quotas": quotas}))
            .send()
            .await?;
        ok_json(resp, "PUT /admin/v1/tenants/{id}").await?;
        Ok(())
    }

    /// Exchanges the demo app credentials for a token of `user_id`.
    pub async fn token(&self, user_id: &str) -> anyhow::Result<User> {
        let resp = self
            .http
            .post(format!("{}/v1/token", self.info.api))
            .json(&json!({
                "app_id": self.info.app_id,
                "app_secret": self.info.app_secret,
                "user_id": user_id,
            }))
            .send()
            .await?;
        let v = ok_json(resp, "POST /v1/token").await?;
        let token = v["token"].as_str().context("no token in the answer")?;
        Ok(User {
            id: user_id.to_string(),
            bearer: token.to_string(),
        })
    }

    /// Creates a group conversation owned by `owner` with `members`.
    pub async fn group(&self, owner: &User, id: &str, members: &[User]) -> anyhow::Result<()> {
        let ids: Vec<&str> = members.iter().map(|u| u.id.as_str()).collect();
        let resp = self
            .http
            .post(format!("{}/v1/conversations", self.info.api))
            .bearer_auth(&owner.bearer)
            .json(&json!({"kind": "group", "id": id, "name": id, "members": ids}))
            .send()
            .await?;
        ok_json(resp, "POST /v1/conversations").await?;
        Ok(())
    }

    /// Sends a message; an error carries the HTTP status (or the transport failure).
    pub async fn send(
        &self,
        user: &User,
        conversation: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Sent, String> {
        let mut body = json!({"text": text});
        if let Some(c) = client_msg_id {
            body["client_msg_id"] = json!(c);
        }
        let resp = self
            .http
            .post(format!(
                "{}/v1/conversations/{conversation}/messages",
                self.info.api
            ))
            .bearer_auth(&user.bearer)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_string()
                } else {
                    "transport".to_string()
                }
            })?;
        let status = resp.status();
        if status.as_u16() != 201 {
            // Drain the body so the connection is reused.
            let _ = resp.bytes().await;
            return Err(status.as_u16().to_string());
        }
        let v: Value = resp.json().await.map_err(|_| "bad body".to_string())?;
        Ok(Sent {
            partition: v["partition"].as_i64().unwrap_or(-1),
            position: v["position"].as_i64().unwrap_or(-1),
        })
    }

    /// One page of top-level history. `cursor` is `before=N` or `after=N`, or empty for the
    /// newest page.
    pub async fn page(
        &self,
        user: &User,
        conversation: &str,
        cursor: &str,
        limit: u32,
    ) -> anyhow::Result<Page> {
        let sep = if cursor.is_empty() { "" } else { "&" };
        let resp = self
            .http
            .get(format!(
                "{}/v1/conversations/{conversation}/messages?limit={limit}{sep}{cursor}",
                self.info.api
            ))
            .bearer_auth(&user.bearer)
            .send()
            .await?;
        let fresh = resp
            .headers()
            .get("x-caas-consistency")
            .and_then(|v| v.to_str().ok())
            != Some("stale");
        let v = ok_json(resp, "GET /v1/conversations/{id}/messages").await?;
        let positions = v["messages"]
            .as_array()
            .context("no messages array")?
            .iter()
            .filter_map(|m| m["position"].as_i64())
            .collect();
        Ok(Page {
            positions,
            has_more: v["has_more"].as_bool().unwrap_or(false),
            fresh,
        })
    }

    /// Unlabelled samples of the metrics endpoint (`name value`).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(&self.info.metrics)
            .send()
            .await?
            .text()
            .await?;
        Ok(Metrics(text))
    }
}

/// The Prometheus text exposition of the server.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of an unlabelled sample, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}
