//! The client of a platform's internal tenant admin API (the gateway's `/admin/v1` on the
//! internal port, admin bearer token): create-or-update a tenant, register the credential the
//! operator generated, revoke one after a rotation, suspend, delete. [`TenantAdmin`] is the seam: the reconciler talks to
//! the trait, production uses [`HttpTenantAdmin`], tests a recording fake.

use crate::crd::tenant::TenantQuotas;
use serde::Serialize;
use std::time::Duration;

/// Why the admin API did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API at {url} could not be reached: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the admin API refused {what} with HTTP {status}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

/// The body of `PUT /admin/v1/tenants/{id}` (the gateway's `PutTenant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantUpsert {
    pub name: String,
    pub quotas: Quotas,
    pub features: Vec<String>,
    pub suspended: bool,
}

/// `caas_domain::Quotas` on the wire (snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quotas {
    pub max_connections: u64,
    pub messages_per_minute: u64,
    pub searches_per_minute: u64,
    pub max_upload_bytes: u64,
    pub storage_bytes: u64,
}

impl From<&TenantQuotas> for Quotas {
    fn from(q: &TenantQuotas) -> Self {
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Self {
            max_connections: u(q.connections),
            messages_per_minute: u(q.messages_per_minute),
            searches_per_minute: u(q.searches_per_minute),
            max_upload_bytes: u(q.max_upload_bytes),
            storage_bytes: u(q.storage_bytes),
        }
    }
}

/// Where a platform's admin API is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEndpoint {
    /// e.g. `http://chat-gateway.ns.svc:8081`
    pub base_url: String,
    pub token: String,
}

/// The admin operations the Tenant reconciler needs. Every call is idempotent.
#[async_trait::async_trait]
pub trait TenantAdmin: Send + Sync {
    async fn upsert_tenant(
        &self,
        at: &AdminEndpoint,
        id: &str,
        body: &TenantUpsert,
    ) -> Result<(), AdminError>;
    async fn register_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
        app_secret: &str,
    ) -> Result<(), AdminError>;
    async fn revoke_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
    ) -> Result<(), AdminError>;
    async fn suspend_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError>;
    async fn delete_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError>;
}

/// The HTTP client of the admin API.
#[derive(Debug, Clone)]
pub struct HttpTenantAdmin {
    client: reqwest::Client,
}

impl HttpTenantAdmin {
    pub fn new() -> Result<Self, AdminError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AdminError::Unreachable {
                url: String::new(),
                detail: e.to_string(),
            })?;
        Ok(Self { client })
    }

    async fn send(
        &self,
        what: String,
        request: reqwest::RequestBuilder,
        url: &str,
        ok_not_found: bool,
    ) -> Result<(), AdminError> {
        let response = request.send().await.map_err(|e| AdminError::Unreachable {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        let status = response.status();
        if status.is_success() || (ok_not_found && status == reqwest::StatusCode::NOT_FOUND) {
            return Ok(());
        }
        let mut body = response.text().await.unwrap_or_default();
        body.truncate(512);
        Err(AdminError::Refused {
            what,
            status: status.as_u16(),
            body,
        })
    }
}

#[async_trait::async_trait]
impl TenantAdmin for HttpTenantAdmin {
    async fn upsert_tenant(
        &self,
        at: &AdminEndpoint,
        id: &str,
        body: &TenantUpsert,
    ) -> Result<(), AdminError> {
        let url = format!("{}/admin/v1/tenants/{id}", at.base_url);
        let request = self.client.put(&url).bearer_auth(&at.token).json(body);
        self.send(format!("PUT tenant {id}"), request, &url, false)
            .await
    }

    async fn register_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
        app_secret: &str,
    ) -> Result<(), AdminError> {
        let url = format!("{}/admin/v1/tenants/{id}/credentials/{app_id}", at.base_url);
        let body = serde_json::json!({ "app_secret": app_secret });
        let request = self.client.put(&url).bearer_auth(&at.token).json(&body);
        self.send(
            format!("PUT credential {app_id} of tenant {id}"),
            request,
            &url,
            false,
        )
        .await
    }

    async fn revoke_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
    ) -> Result<(), AdminError> {
        let url = format!("{}/admin/v1/tenants/{id}/credentials/{app_id}", at.base_url);
        let request = self.client.delete(&url).bearer_auth(&at.token);
        self.send(
            format!("revoke credential {app_id} of tenant {id}"),
            request,
            &url,
            true,
        )
        .await
    }

    async fn suspend_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError> {
        let url = format!("{}/admin/v1/tenants/{id}/suspend", at.base_url);
        let request = self.client.post(&url).bearer_auth(&at.token);
        self.send(format!("suspend tenant {id}"), request, &url, true)
            .await
    }

    async fn delete_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError> {
        let url = format!("{}/admin/v1/tenants/{id}", at.base_url);
        let request = self.client.delete(&url).bearer_auth(&at.token);
        self.send(format!("delete tenant {id}"), request, &url, true)
            .await
    }
}
