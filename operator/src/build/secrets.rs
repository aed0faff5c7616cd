//! Secrets the operator generates when the spec names none: the signing keys (one Ed25519 key
//! as `<kid>.pem`, PKCS#8) and the admin token. The builders take the random material as input;
//! [`generate_signing_key`] and [`generate_token`] make it from the OS RNG. The reconciler
//! creates these once and never rewrites them, so keys and tokens are stable across passes.

use super::{BuildError, Names, object_meta};
use crate::build::config::ADMIN_TOKEN_FILE;
use crate::crd::ChatPlatform;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// Errors of making random secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretGenError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("failed to encode the signing key as PKCS#8: {0}")]
    Encode(String),
}

/// A new Ed25519 private key as PKCS#8 PEM.
pub fn generate_signing_key() -> Result<String, SecretGenError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(SecretGenError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| SecretGenError::Encode(e.to_string()))?;
    Ok(pem.to_string())
}

/// 256 random bits, hex-encoded.
pub fn generate_token() -> Result<String, SecretGenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(SecretGenError::Random)?;
    Ok(hex::encode(bytes))
}

/// The generated signing-keys Secret with one key `kid`.
pub fn signing_keys_secret(
    platform: &ChatPlatform,
    names: &Names,
    kid: &str,
    pkcs8_pem: &str,
) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: object_meta(platform, names, names.signing_keys_secret(), None)?,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            format!("{kid}.pem"),
            pkcs8_pem.to_owned(),
        )])),
        ..Secret::default()
    })
}

/// The generated admin token Secret (key `token`).
pub fn admin_token_secret(
    platform: &ChatPlatform,
    names: &Names,
    token: &str,
) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: object_meta(platform, names, names.admin_token_secret(), None)?,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            ADMIN_TOKEN_FILE.to_owned(),
            token.to_owned(),
        )])),
        ..Secret::default()
    })
}

/// The key of the media signing Secret that holds the HMAC key.
pub const MEDIA_SIGNING_KEY: &str = "key";

/// The generated media signing Secret: the HMAC key of signed download URLs, shared by every
/// media pod (a URL signed by one pod is honoured by all).
pub fn media_signing_secret(
    platform: &ChatPlatform,
    names: &Names,
    key: &str,
) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: object_meta(platform, names, names.media_signing_secret(), None)?,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            MEDIA_SIGNING_KEY.to_owned(),
            key.to_owned(),
        )])),
        ..Secret::default()
    })
}
