//! Reading a JSON or YAML file into a JSON value: OpenAPI documents, plugin configurations and
//! Envoy configurations alike.

use serde_json::Value;
use std::path::Path;

/// Files larger than this are refused before they are read: an OpenAPI document or an Envoy
/// configuration is a few megabytes at most.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Reads `path` (JSON or YAML, see [`parse`]).
pub fn load(path: &Path) -> Result<Value, String> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: {size} bytes; files larger than {MAX_FILE_BYTES} bytes are refused"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    parse(&text).map_err(|e| format!("{shown}: {e}"))
}

/// JSON when the text starts with `{` or `[` (so that JSON errors are reported as JSON errors),
/// else YAML. YAML anchors and aliases are resolved; a mapping key is always read as a string,
/// so `200:` and `'200':` are the same response code.
pub fn parse(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with(['{', '[']) {
        return serde_json::from_str(trimmed).map_err(|e| format!("not valid JSON: {e}"));
    }
    serde_saphyr::from_str(trimmed).map_err(|e| format!("not valid YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_yaml_give_the_same_value() {
        let yaml = "a: 1\nb: [x, 'y']\nresponses:\n  200: {description: ok}\n";
        let json = r#"{"a": 1, "b": ["x", "y"], "responses": {"200": {"description": "ok"}}}"#;
        assert_eq!(parse(yaml).unwrap(), parse(json).unwrap());
    }

    #[test]
    fn aliases_are_resolved() {
        let v = parse("base: &b {k: 1}\ncopy: *b\n").unwrap();
        assert_eq!(v["copy"], json!({"k": 1}));
    }

    #[test]
    fn errors_say_which_language_and_where() {
        let e = parse("{\"a\": }").unwrap_err();
        assert!(
            e.starts_with("not valid JSON: ") && e.contains("line 1"),
            "{e}"
        );
        let e = parse("a: [1, 2\nb: c").unwrap_err();
        assert!(
            e.starts_with("not valid YAML: ") && e.contains("line 2"),
            "{e}"
        );
    }
}
