//! The webhook stage: notification events are POSTed to the tenant's webhook (set through the
//! admin API), signed with HMAC-SHA256 of the tenant's secret. A 2xx answer is delivered; a
//! network failure, a timeout, 408, 429 or 5xx is transient (the record goes to the next retry
//! topic, and to the dead letters after `webhook.maxAttempts`); any other answer (4xx,
//! redirects) is permanent (a dead letter at once).
//!
//! The request: `content-type: application/json`, the notification as the body, and headers
//! `x-caas-event` (kind), `x-caas-delivery` (notification id: the same on every attempt),
//! `x-caas-attempt` (1, 2, ...), `x-caas-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`. Receivers check it with [`verify`] (or its few lines in their language).

use crate::ctx::{Ctx, Stopped};
use crate::error::{Stage, StageError, codes};
use crate::notify::Notification;
use crate::retry;
use caas_bus::{Delivery, Envelope};
use caas_store::TenantWebhook;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

pub const HEADER_SIGNATURE: &str = "x-caas-signature";
pub const HEADER_EVENT: &str = "x-caas-event";
pub const HEADER_DELIVERY: &str = "x-caas-delivery";
pub const HEADER_ATTEMPT: &str = "x-caas-attempt";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `"<t>.<body>"` under `secret`, ready for the digest.
fn mac(secret: &str, t: i64, body: &[u8]) -> HmacSha256 {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(format!("{t}.").as_bytes());
    m.update(body);
    m
}

/// The `x-caas-signature` value of `body` sent at `t` (Unix seconds).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

/// Checks an `x-caas-signature` value against `body` (constant time in the digest). Receivers
/// should also refuse a `t` far from their clock (replays).
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    mac(secret, t, body).verify_slice(&v1).is_ok()
}

/// The HTTP client of the deliverer: bounded by `webhook.timeoutMs`, no redirects.
pub fn client(ctx: &Ctx) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(ctx.cfg.webhook.timeout_ms.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("caas-webhooks")
        .build()
        .unwrap_or_default()
}

/// Posts one notification once.
pub async fn post(
    client: &reqwest::Client,
    hook: &TenantWebhook,
    n: &Notification,
    attempt: u32,
) -> Result<(), StageError> {
    let body = serde_json::to_vec(n).map_err(|e| {
        StageError::permanent(Stage::Webhook, codes::MALFORMED_PAYLOAD, e.to_string())
    })?;
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(&hook.secret, t, &body);
    let res = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header(HEADER_EVENT, &n.kind)
        .header(HEADER_DELIVERY, &n.id)
        .header(HEADER_ATTEMPT, attempt.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            StageError::transient(Stage::Webhook, codes::WEBHOOK_UNREACHABLE, e.to_string())
        })?;
    let status = res.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(StageError::transient(
            Stage::Webhook,
            codes::WEBHOOK_SERVER_ERROR,
            format!("{} answered {status}", hook.url),
        ))
    } else {
        Err(StageError::permanent(
            Stage::Webhook,
            codes::WEBHOOK_REJECTED,
            format!("{} answered {status}", hook.url),
        ))
    }
}

/// Attempt number `attempt` (1-based) of delivering the notification in `d`: delivered, or
/// skipped (no webhook wants it), or handed to the retry topics / dead letters.
pub async fn attempt(
    ctx: &Ctx,
    client: &reqwest::Client,
    d: &Delivery,
    attempt: u32,
) -> Result<(), Stopped> {
    let n = match Envelope::<Notification>::from_delivery(d) {
        Ok(env) => env.event,
        Err(e) => {
            let err =
                StageError::permanent(Stage::Webhook, codes::MALFORMED_PAYLOAD, e.to_string());
            ctx.count(&err);
            return crate::dead_letter::send(ctx, d, &err, attempt).await;
        }
    };
    let tenant = &n.tenant_id;
    let hook = ctx
        .until_ok(Stage::Webhook, move || ctx.webhook(tenant))
        .await;
    let hook = match hook {
        Ok(Some(h)) if h.wants(&n.kind) => h,
        Ok(_) => {
            ctx.metrics.discarded.inc();
            return Ok(());
        }
        Err(Ok(Stopped)) => return Err(Stopped),
        Err(Err(e)) => {
            ctx.count(&e);
            return crate::dead_letter::send(ctx, d, &e, attempt).await;
        }
    };
    match post(client, &hook, &n, attempt).await {
        Ok(()) => {
            ctx.metrics
                .webhook_deliveries
                .with_label_values(&["delivered"])
                .inc();
            Ok(())
        }
        Err(e) => {
            ctx.count(&e);
            tracing::warn!(error = %e, attempt, tenant_id = %n.tenant_id, delivery = %n.id, "Webhook delivery failed.");
            retry::schedule(ctx, d, &e, attempt, ctx.cfg.webhook.max_attempts).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // Computed independently: Python's hmac.new(b"whsec", b'1700000000.{"a":1}', sha256).
        assert_eq!(
            sign("whsec", 1_700_000_000, b"{\"a\":1}"),
            "t=1700000000,v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let s = sign("whsec", 1_700_000_000, b"{\"a\":1}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert!(verify("whsec", &s, b"{\"a\":1}"));
        assert!(!verify("whsec", &s, b"{\"a\":2}"));
        assert!(!verify("other", &s, b"{\"a\":1}"));
        assert!(!verify("whsec", "t=1,v1=zz", b"{\"a\":1}"));
        assert!(!verify("whsec", "garbage", b""));
    }
}
