//! The typed form of a record: a versioned envelope around an event. The payload is JSON; the
//! fields a consumer routes on (tenant, event type, correlation id, schema version) are also
//! record headers, so a consumer can route or drop a record without parsing it.

use crate::{Bus, BusError, Delivery, LogPosition, Record, Result};
use bytes::Bytes;
use caas_domain::TenantId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

pub const HEADER_TENANT: &str = "caas-tenant";
pub const HEADER_EVENT_TYPE: &str = "caas-event-type";
pub const HEADER_CORRELATION_ID: &str = "x-correlation-id";
pub const HEADER_SCHEMA: &str = "caas-schema";

/// An event with its routing facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Schema version of `event`.
    pub v: u16,
    /// Unique per publish (a retried publish of the same event gets the same id).
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    /// The partition key (conversation id for conversation events).
    pub key: String,
    pub correlation_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub event: T,
}

impl<T: Serialize + DeserializeOwned> Envelope<T> {
    /// Encodes into a record; `event_type` becomes a header.
    pub fn to_record(&self, event_type: &str) -> Result<Record> {
        let payload = serde_json::to_vec(self).map_err(|e| BusError::BadRecord(e.to_string()))?;
        Ok(Record {
            key: self.key.clone(),
            payload: Bytes::from(payload),
            headers: vec![
                (HEADER_TENANT.into(), self.tenant_id.to_string()),
                (HEADER_EVENT_TYPE.into(), event_type.into()),
                (HEADER_CORRELATION_ID.into(), self.correlation_id.clone()),
                (HEADER_SCHEMA.into(), self.v.to_string()),
            ],
        })
    }

    /// Decodes a delivery.
    pub fn from_delivery(d: &Delivery) -> Result<Self> {
        serde_json::from_slice(&d.payload).map_err(|e| BusError::BadRecord(e.to_string()))
    }

    /// Encodes and publishes.
    pub async fn publish(
        &self,
        bus: &dyn Bus,
        topic: &str,
        event_type: &str,
    ) -> Result<LogPosition> {
        bus.publish(topic, self.to_record(event_type)?).await
    }
}
