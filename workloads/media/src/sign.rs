//! Signed download URLs: `/v1/media/signed/{tenant}/{id}?exp=<unix secs>&sig=<hex>` where `sig`
//! is HMAC-SHA256 over `tenant`, `id` and `exp` with the workload's signing key. A URL works
//! without a token until `exp`, and only while the file exists and is not deleted (the download
//! looks the file up every time). Rotating the key invalidates every URL.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest accepted signing key.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            key.len() >= MIN_KEY_BYTES,
            "the media signing key must be at least {MIN_KEY_BYTES} bytes"
        );
        Ok(Self { key: key.to_vec() })
    }

    fn mac(&self, tenant: &str, id: &str, exp: i64) -> HmacSha256 {
        // Invariant: HMAC takes keys of any length.
        #[allow(clippy::expect_used)]
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        m.update(b"caas-media-v1\0");
        m.update(tenant.as_bytes());
        m.update(b"\0");
        m.update(id.as_bytes());
        m.update(b"\0");
        m.update(exp.to_string().as_bytes());
        m
    }

    /// The hex signature of a URL to `tenant`/`id` valid until `exp`.
    pub fn sign(&self, tenant: &str, id: &str, exp: i64) -> String {
        hex::encode(self.mac(tenant, id, exp).finalize().into_bytes())
    }

    /// Checks a signature in constant time.
    pub fn verify(&self, tenant: &str, id: &str, exp: i64, sig: &str) -> bool {
        match hex::decode(sig) {
            Ok(bytes) => self.mac(tenant, id, exp).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_field() {
        let s = Signer::new(&[7u8; 32]).unwrap();
        let sig = s.sign("acme", "f1", 100);
        assert!(s.verify("acme", "f1", 100, &sig));
        assert!(!s.verify("acme", "f1", 101, &sig));
        assert!(!s.verify("acme", "f2", 100, &sig));
        assert!(!s.verify("other", "f1", 100, &sig));
        assert!(!s.verify("acme", "f1", 100, "zz"));
        let other = Signer::new(&[8u8; 32]).unwrap();
        assert!(!other.verify("acme", "f1", 100, &sig));
        assert!(Signer::new(b"short").is_err());
    }
}
