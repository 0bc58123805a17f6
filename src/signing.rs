//! Standard Webhooks signing. (Stub: only secret parsing, for configuration validation.)

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A subscription's signing secret, decoded from its `whsec_` form.
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// `whsec_` followed by standard base64 of 1 to 64 bytes.
    pub fn parse(s: &str) -> Result<Secret, String> {
        let bad = || "secret must be whsec_ followed by base64".to_string();
        let encoded = s.strip_prefix("whsec_").ok_or_else(bad)?;
        let key = STANDARD.decode(encoded).map_err(|_| bad())?;
        if key.is_empty() || key.len() > 64 {
            return Err(bad());
        }
        Ok(Secret { key })
    }

    /// The raw HMAC key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}
