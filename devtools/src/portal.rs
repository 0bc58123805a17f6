//! Portal session tokens made by tests with the session key, written here from the format in
//! docs/operators.md rather than with the plugin's code: an expired session, or one made on
//! one replica's key and used on another's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `pws_` + base64url(payload) + `.` + base64url(HMAC-SHA256(key, "pws_" + base64url(payload))),
/// payload `{"c", "x" (unix s), "i" (unix ms), "r"}`.
pub fn mint_session(
    key: &[u8],
    consumer: &str,
    expires_unix: u64,
    issued_ms: u64,
    read_only: bool,
) -> String {
    let payload =
        serde_json::json!({"c": consumer, "x": expires_unix, "i": issued_ms, "r": read_only});
    let signed = format!("pws_{}", URL_SAFE_NO_PAD.encode(payload.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
}
