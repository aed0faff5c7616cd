//! Random secrets and tokens from the operating system's CSPRNG.

use base64::Engine as _;

/// `n` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom fails only when the OS has no entropy source at all; nothing can run then.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

/// A URL-safe secret of 256 random bits with a readable prefix, e.g. `sk_...`.
pub fn secret(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes::<32>())
    )
}

/// A short random id with a prefix, e.g. `app_...` (96 bits).
pub fn id(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(bytes::<12>()))
}

/// Hex SHA-256 of a secret, the form credentials are stored in.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_and_hash_stable() {
        let a = secret("sk_");
        assert!(a.starts_with("sk_") && a.len() > 40);
        assert_ne!(a, secret("sk_"));
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert!(constant_time_eq(&a, &a.clone()));
        assert!(!constant_time_eq(&a, "x"));
    }
}
