//! Secret values that need not sit in Envoy's `/config_dump`: every field that holds a secret
//! takes either the value itself or `{"env": "NAME"}`, an environment variable of the Wasm VM
//! (`vm_config.environment_variables` in envoy.yaml; Envoy hands them to the VM as WASI's
//! environment, which `std::env::var` reads). Any new secret field uses [`secret`].

use super::{err, ConfigError, Obj};
use crate::support::sealing::{Key, KEY_LEN};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use serde_json::Value;

/// The fields of `{"env": "NAME"}`.
pub(super) const ENV_FIELDS: &[&str] = &["env"];

/// Looks an environment variable up (the VM's in Envoy, a table in tests).
pub type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// The process's (in Envoy: the VM's) environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The secret at `field`: a string, or `{"env": "NAME"}` read from `env`.
pub(super) fn secret(field: &str, v: &Value, env: Env<'_>) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(_) => {
            let o = Obj::new(field, v, ENV_FIELDS)?;
            let name = o.required_str("env")?;
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(err(
                    o.field("env"),
                    "must name an environment variable (not empty, no = or NUL)",
                ));
            }
            env(name).ok_or_else(|| {
                err(
                    field,
                    format!(
                        "the environment variable {name:?} is not set in the Wasm VM (give it in vm_config.environment_variables)"
                    ),
                )
            })
        }
        _ => Err(err(
            field,
            "must be a string or {\"env\": \"NAME\"} naming an environment variable",
        )),
    }
}

/// An encryption key at `field`: a [`secret`] holding the base64 of 32 bytes.
pub(super) fn encryption_key(field: &str, v: &Value, env: Env<'_>) -> Result<Key, ConfigError> {
    let text = secret(field, v, env)?;
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
        .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
        .ok_or_else(|| {
            err(
                field,
                "must be the base64 of 32 bytes (make one with `openssl rand -base64 32`)",
            )
        })?;
    Ok(Key::new(&bytes))
}
