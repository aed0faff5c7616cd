//! Platform user tokens (RFC 8725 practices):
//! - EdDSA (Ed25519) only: the algorithm is pinned by us, never taken from the token, so `none`,
//!   HMAC-with-the-public-key and other algorithm confusions fail;
//! - explicit typing: header `typ` must be [`TOKEN_TYPE`];
//! - `kid` picks the verification key from a set, so several keys verify during a rotation while
//!   one signs;
//! - `iss`, `aud`, `exp`, `nbf`, `iat`, `sub` and `tid` are required and checked, with a leeway.
//!
//! The [`Authenticator`] adds what a signature cannot know: that the tenant is still active and
//! the user's tokens were not revoked (with a short per-process cache; changes made through this
//! process invalidate it at once).

use crate::error::ApiError;
use caas_config::AuthConfig;
use caas_domain::model::Tenant;
use caas_domain::{ErrorCode, TenantId, UserId};
use caas_store::DynStore;
use dashmap::DashMap;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The `typ` header of platform user tokens.
pub const TOKEN_TYPE: &str = "caas-user+jwt";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read keys in {dir}: {reason}")]
    Io { dir: String, reason: String },
    #[error("key {kid}: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("no signing key in {0}")]
    NoSigningKey(String),
}

/// The keys: one signs, all verify.
#[derive(Clone)]
pub struct KeySet {
    signing: Option<(String, EncodingKey)>,
    verifying: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signing", &self.signing.as_ref().map(|(k, _)| k))
            .field("verifying", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn check_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl KeySet {
    /// Loads `<kid>.pem` (PKCS#8 private) and `<kid>.pub.pem` (SPKI public) files from `dir`.
    /// `active_kid` signs; empty means the greatest private kid.
    pub fn load_dir(dir: &Path, active_kid: &str) -> Result<Self, KeyError> {
        let io = |e: std::io::Error| KeyError::Io {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        };
        let mut private: Vec<(String, String)> = Vec::new();
        let mut verifying = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (kid, public) = if let Some(k) = name.strip_suffix(".pub.pem") {
                (k.to_string(), true)
            } else if let Some(k) = name.strip_suffix(".pem") {
                (k.to_string(), false)
            } else {
                continue;
            };
            if !check_kid(&kid) {
                return Err(KeyError::BadKey {
                    kid,
                    reason: "kid must be [A-Za-z0-9_-]{1,64}".into(),
                });
            }
            let pem = std::fs::read_to_string(&path).map_err(io)?;
            let bad = |reason: String| KeyError::BadKey {
                kid: kid.clone(),
                reason,
            };
            if public {
                let dk =
                    DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
                verifying.insert(kid, dk);
            } else {
                let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|e| bad(e.to_string()))?;
                let pub_pem = sk
                    .verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .map_err(|e| bad(e.to_string()))?;
                let dk =
                    DecodingKey::from_ed_pem(pub_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
                verifying.insert(kid.clone(), dk);
                private.push((kid, pem));
            }
        }
        private.sort();
        let chosen = if active_kid.is_empty() {
            private.pop()
        } else {
            private.into_iter().find(|(k, _)| k == active_kid)
        };
        let signing = match chosen {
            Some((kid, pem)) => {
                let ek =
                    EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| KeyError::BadKey {
                        kid: kid.clone(),
                        reason: e.to_string(),
                    })?;
                Some((kid, ek))
            }
            None => None,
        };
        Ok(Self { signing, verifying })
    }

    /// Writes a new private key `<kid>.pem` (mode 0600) into `dir` and returns its kid.
    pub fn generate_into(dir: &Path) -> Result<String, KeyError> {
        let io = |e: std::io::Error| KeyError::Io {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let kid = format!(
            "k{}-{}",
            OffsetDateTime::now_utc().unix_timestamp(),
            hex::encode(crate::random::bytes::<4>())
        );
        let sk = ed25519_dalek::SigningKey::from_bytes(&crate::random::bytes::<32>());
        let pem = sk
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::BadKey {
                kid: kid.clone(),
                reason: e.to_string(),
            })?;
        let path = dir.join(format!("{kid}.pem"));
        write_private(&path, pem.as_bytes()).map_err(io)?;
        Ok(kid)
    }

    pub fn signing_kid(&self) -> Option<&str> {
        self.signing.as_ref().map(|(k, _)| k.as_str())
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The claims of a platform user token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The tenant id.
    pub tid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Issues and verifies tokens.
#[derive(Debug, Clone)]
pub struct TokenService {
    keys: KeySet,
    issuer: String,
    audience: String,
    ttl: Duration,
    leeway: u64,
}

/// An issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

impl TokenService {
    pub fn new(keys: KeySet, cfg: &AuthConfig) -> Self {
        Self {
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: Duration::from_secs(cfg.token_ttl_secs.max(1)),
            leeway: cfg.leeway_secs,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for `user` of `tenant`, valid from `now` for the configured TTL.
    pub fn issue(
        &self,
        tenant: &TenantId,
        user: &UserId,
        now: OffsetDateTime,
    ) -> Result<Issued, ApiError> {
        let Some((kid, key)) = &self.keys.signing else {
            return Err(ApiError::internal("no signing key configured"));
        };
        let iat = now.unix_timestamp();
        let exp = iat + self.ttl.as_secs() as i64;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.to_string(),
            tid: tenant.to_string(),
            iat,
            nbf: iat,
            exp,
            jti: uuid::Uuid::now_v7().simple().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.into());
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, key).map_err(ApiError::internal)?;
        Ok(Issued {
            token,
            expires_at: OffsetDateTime::from_unix_timestamp(exp).unwrap_or(now),
        })
    }

    /// Verifies signature, type, algorithm and registered claims.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid = |m: &str| ApiError::new(ErrorCode::TokenInvalid, m.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("token algorithm not allowed"));
        }
        if header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(invalid("wrong token type"));
        }
        let kid = header.kid.ok_or_else(|| invalid("token has no kid"))?;
        let key = self
            .keys
            .verifying
            .get(&kid)
            .ok_or_else(|| invalid("unknown signing key"))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.algorithms = vec![Algorithm::EdDSA];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub", "iat"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => ApiError::new(ErrorCode::TokenExpired, "token expired"),
                K::ImmatureSignature => {
                    ApiError::new(ErrorCode::TokenNotYetValid, "token not yet valid")
                }
                K::InvalidAudience => invalid("wrong audience"),
                K::InvalidIssuer => invalid("wrong issuer"),
                K::InvalidSignature => invalid("bad signature"),
                _ => invalid("invalid token"),
            }
        })?;
        Ok(data.claims)
    }
}

/// Who is calling: an authenticated user of an active tenant.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Arc<Tenant>,
    pub user_id: UserId,
    pub claims: Claims,
}

impl Principal {
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant.id
    }
}

/// Verifies tokens and checks tenant and user state.
pub struct Authenticator {
    tokens: Arc<TokenService>,
    store: DynStore,
    ttl: Duration,
    tenants: DashMap<TenantId, (Instant, Option<Arc<Tenant>>)>,
    revoked: DashMap<(TenantId, UserId), (Instant, Option<OffsetDateTime>)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(tokens: Arc<TokenService>, store: DynStore, cache_ttl: Duration) -> Self {
        Self {
            tokens,
            store,
            ttl: cache_ttl,
            tenants: DashMap::new(),
            revoked: DashMap::new(),
        }
    }

    pub fn tokens(&self) -> &Arc<TokenService> {
        &self.tokens
    }

    /// The tenant, from the short cache or the store.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, ApiError> {
        if let Some(e) = self.tenants.get(id)
            && e.0.elapsed() < self.ttl
        {
            return Ok(e.1.clone());
        }
        let t = self.store.get_tenant(id).await?.map(Arc::new);
        self.tenants.insert(id.clone(), (Instant::now(), t.clone()));
        Ok(t)
    }

    /// Forgets what is cached about a tenant (after an admin change).
    pub fn invalidate_tenant(&self, id: &TenantId) {
        self.tenants.remove(id);
    }

    /// Forgets what is cached about a user (after a revocation).
    pub fn invalidate_user(&self, tenant: &TenantId, user: &UserId) {
        self.revoked.remove(&(tenant.clone(), user.clone()));
    }

    async fn valid_after(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Option<OffsetDateTime>, ApiError> {
        let key = (tenant.clone(), user.clone());
        if let Some(e) = self.revoked.get(&key)
            && e.0.elapsed() < self.ttl
        {
            return Ok(e.1);
        }
        let at = self
            .store
            .get_user(tenant, user)
            .await?
            .and_then(|u| u.tokens_valid_after);
        self.revoked.insert(key, (Instant::now(), at));
        Ok(at)
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = self.tokens.verify(token)?;
        let invalid = || ApiError::new(ErrorCode::TokenInvalid, "invalid token");
        let tenant_id = TenantId::parse(&claims.tid).map_err(|_| invalid())?;
        let user_id = UserId::parse(&claims.sub).map_err(|_| invalid())?;
        let tenant = self.tenant(&tenant_id).await?.ok_or_else(invalid)?;
        if !tenant.is_active() {
            return Err(ApiError::new(
                ErrorCode::TenantSuspended,
                "the tenant is suspended",
            ));
        }
        if let Some(after) = self.valid_after(&tenant_id, &user_id).await? {
            // Second granularity of `iat`: a token issued in the same second as the revocation
            // is refused too (the safe side).
            if claims.iat <= after.unix_timestamp() {
                return Err(ApiError::new(
                    ErrorCode::TokenRevoked,
                    "the token was revoked",
                ));
            }
        }
        Ok(Principal {
            tenant,
            user_id,
            claims,
        })
    }
}

impl Authenticator {
    /// Checks again a principal authenticated earlier (a long-lived connection, before each of
    /// its actions): the token has not expired, the tenant is still active, the user's tokens
    /// were not revoked since. No signature check: the claims were verified once.
    pub async fn recheck(&self, p: &Principal) -> Result<Principal, ApiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if p.claims.exp <= now {
            return Err(ApiError::new(ErrorCode::TokenExpired, "the token expired"));
        }
        let tenant = self
            .tenant(p.tenant_id())
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::TokenInvalid, "invalid token"))?;
        if !tenant.is_active() {
            return Err(ApiError::new(
                ErrorCode::TenantSuspended,
                "the tenant is suspended",
            ));
        }
        if let Some(after) = self.valid_after(&tenant.id, &p.user_id).await?
            && p.claims.iat <= after.unix_timestamp()
        {
            return Err(ApiError::new(
                ErrorCode::TokenRevoked,
                "the token was revoked",
            ));
        }
        Ok(Principal {
            tenant,
            user_id: p.user_id.clone(),
            claims: p.claims.clone(),
        })
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: Option<&http::HeaderValue>) -> Result<&str, ApiError> {
    let v = value
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?;
    let (scheme, token) = v
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated("missing bearer token"));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn service(dir: &Path) -> TokenService {
        KeySet::generate_into(dir).unwrap();
        let keys = KeySet::load_dir(dir, "").unwrap();
        TokenService::new(
            keys,
            &AuthConfig {
                leeway_secs: 0,
                ..AuthConfig::default()
            },
        )
    }

    fn ids() -> (TenantId, UserId) {
        (
            TenantId::parse("t1").unwrap(),
            UserId::parse("alice").unwrap(),
        )
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let (t, u) = ids();
        let tok = s.issue(&t, &u, OffsetDateTime::now_utc()).unwrap();
        let c = s.verify(&tok.token).unwrap();
        assert_eq!((c.tid.as_str(), c.sub.as_str()), ("t1", "alice"));
        // A second key signs; tokens of the first still verify.
        let new_kid = KeySet::generate_into(dir.path()).unwrap();
        let s2 = TokenService::new(
            KeySet::load_dir(dir.path(), &new_kid).unwrap(),
            &AuthConfig::default(),
        );
        assert_eq!(s2.keys.signing_kid(), Some(new_kid.as_str()));
        assert_ne!(s2.keys.signing_kid(), s.keys.signing_kid());
        assert!(s2.verify(&tok.token).is_ok());
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let (t, u) = ids();
        let now = OffsetDateTime::now_utc();
        let code = |tok: &str| s.verify(tok).unwrap_err().code;

        // alg none
        let claims = serde_json::json!({"iss":"caas","aud":"caas-api","sub":"alice","tid":"t1",
            "iat": now.unix_timestamp(), "nbf": now.unix_timestamp(), "exp": now.unix_timestamp() + 60, "jti": "x"});
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":TOKEN_TYPE})),
            b64(&claims)
        );
        assert_eq!(code(&none), ErrorCode::TokenInvalid);

        // another key with the same kid
        let other = tempfile::tempdir().unwrap();
        let kid = s.keys.signing_kid().unwrap().to_string();
        let other_kid = KeySet::generate_into(other.path()).unwrap();
        std::fs::rename(
            other.path().join(format!("{other_kid}.pem")),
            other.path().join(format!("{kid}.pem")),
        )
        .unwrap();
        let forger = TokenService::new(
            KeySet::load_dir(other.path(), "").unwrap(),
            &AuthConfig::default(),
        );
        assert_eq!(
            code(&forger.issue(&t, &u, now).unwrap().token),
            ErrorCode::TokenInvalid
        );

        // expired, not yet valid
        let past = now - time::Duration::hours(3);
        assert_eq!(
            code(&s.issue(&t, &u, past).unwrap().token),
            ErrorCode::TokenExpired
        );
        let future = now + time::Duration::hours(1);
        assert_eq!(
            code(&s.issue(&t, &u, future).unwrap().token),
            ErrorCode::TokenNotYetValid
        );

        // wrong audience
        let aud = TokenService::new(
            s.keys.clone(),
            &AuthConfig {
                audience: "other".into(),
                ..AuthConfig::default()
            },
        );
        assert_eq!(
            code(&aud.issue(&t, &u, now).unwrap().token),
            ErrorCode::TokenInvalid
        );

        // unknown kid
        let unknown = tempfile::tempdir().unwrap();
        let stranger = service(unknown.path());
        assert_eq!(
            code(&stranger.issue(&t, &u, now).unwrap().token),
            ErrorCode::TokenInvalid
        );

        // wrong typ: re-sign with the right key but a plain JWT type
        let (kid, key) = s.keys.signing.clone().unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid);
        let plain = jsonwebtoken::encode(&h, &claims, &key).unwrap();
        assert_eq!(code(&plain), ErrorCode::TokenInvalid);

        // garbage
        assert_eq!(code("a.b.c"), ErrorCode::TokenInvalid);
    }

    #[test]
    fn bearer_parsing() {
        let v = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&v)).unwrap(), "abc");
        assert!(bearer(None).is_err());
        assert!(bearer(Some(&http::HeaderValue::from_static("Basic abc"))).is_err());
    }
}
