//! Validated identifiers. Tenant, user and conversation ids are chosen by apps (or generated),
//! so they are checked: 1 to 64 characters of `A-Z a-z 0-9 _ - . @`, which keeps them safe in
//! URLs, object keys, log lines and index terms. Message ids are UUIDv7 (time-ordered, unique):
//! identity and de-duplication only — order comes from the log position, never from the id.

use crate::error::{DomainError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted string id.
pub const MAX_ID_LEN: usize = 64;

fn check_id(kind: &str, s: &str) -> Result<(), DomainError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::new(
            ErrorCode::InvalidId,
            format!("{kind} id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ - . @"),
        ))
    }
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps.
            pub fn parse(s: impl Into<String>) -> Result<Self, DomainError> {
                let s = s.into();
                check_id($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, DomainError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, DomainError> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// A tenant: an app that embeds chat. Every stored thing belongs to exactly one.
    TenantId,
    "tenant"
);
string_id!(
    /// A user, unique within a tenant; chosen by the tenant's app.
    UserId,
    "user"
);
string_id!(
    /// A conversation, unique within a tenant.
    ConversationId,
    "conversation"
);

impl ConversationId {
    /// The id of the direct conversation between two users: the same whoever starts it, so a
    /// second "create direct" finds the first.
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        // FNV-1a 64 over both ids keeps the result within MAX_ID_LEN whatever the user ids.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in x.as_str().bytes().chain([0u8]).chain(y.as_str().bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(format!("dm-{h:016x}"))
    }

    /// A fresh random id for a group or channel created without one.
    pub fn generate() -> Self {
        Self(format!("c-{}", uuid::Uuid::now_v7().simple()))
    }
}

/// A message: UUIDv7, rendered as the standard hyphenated form.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = Uuid)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id of a message sent with a client message id: the same for every retry of the same
    /// send, so the log and the store can recognise a retried send as one message. The
    /// conversation is part of it: the same client id used in another conversation is another
    /// message, never a duplicate of the first.
    pub fn for_client_id(
        tenant: &TenantId,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Self {
        let name = format!("{tenant}\0{conversation}\0{sender}\0{client_msg_id}");
        Self(uuid::Uuid::new_v5(&CAAS_NAMESPACE, name.as_bytes()))
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| DomainError::new(ErrorCode::InvalidId, "message id must be a UUID"))
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

const CAAS_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6361_6173_2d6d_7367_2d69_6473_0000_0001);

impl TryFrom<String> for MessageId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::parse(&s)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, DomainError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b-c_d@e").is_ok());
        for bad in ["", "a b", "../x", "é", &"x".repeat(65), "a/b", "a\0b"] {
            let e = UserId::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidId, "{bad:?}");
        }
        assert!(serde_json::from_str::<TenantId>("\"x y\"").is_err());
    }

    #[test]
    fn direct_id_is_symmetric_and_distinct() {
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse("bob").unwrap();
        let c = UserId::parse("carol").unwrap();
        assert_eq!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&b, &a)
        );
        assert_ne!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&a, &c)
        );
        // "ab"+"c" and "a"+"bc" must not collide through concatenation.
        let ab = UserId::parse("ab").unwrap();
        let bc = UserId::parse("bc").unwrap();
        let x = UserId::parse("c").unwrap();
        let y = UserId::parse("a").unwrap();
        assert_ne!(
            ConversationId::direct(&ab, &x),
            ConversationId::direct(&y, &bc)
        );
    }

    #[test]
    fn client_ids_give_stable_message_ids() {
        let t = TenantId::parse("t1").unwrap();
        let c = ConversationId::parse("c1").unwrap();
        let d = ConversationId::parse("c2").unwrap();
        let u = UserId::parse("u1").unwrap();
        let v = UserId::parse("u2").unwrap();
        let id = |c: &ConversationId, u: &UserId, k: &str| MessageId::for_client_id(&t, c, u, k);
        assert_eq!(id(&c, &u, "k"), id(&c, &u, "k"));
        assert_ne!(id(&c, &u, "k"), id(&c, &v, "k"));
        assert_ne!(
            id(&c, &u, "k"),
            id(&d, &u, "k"),
            "another conversation, another message"
        );
        assert_ne!(id(&c, &u, "k"), id(&c, &u, "l"));
        assert!(MessageId::parse("nope").is_err());
        let g = MessageId::generate();
        assert_eq!(MessageId::parse(&g.to_string()).unwrap(), g);
    }
}
