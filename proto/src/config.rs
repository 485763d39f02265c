//! The one YAML loader for every daemon's config file (serde_yaml, as the user named it).
//! Errors name file:line:column and what was wrong; unknown keys are refused by the types
//! (`#[serde(deny_unknown_fields)]`).

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Parses YAML text; `path` is only used in error messages.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        // serde_yaml appends "at line L column C" itself; keep the message clean.
        let message = e.to_string();
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    })
}

/// Reads a config file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The keys a config's JSON Schema names that `doc` lacks, as dotted paths (`limits.max_pixels`,
/// `stock_servers[].url`). For the packaged default configs, which must list every key: the
/// schema comes from the config type (`schemars`), so a new field fails the test until the
/// default config documents it.
pub fn missing_keys(schema: &serde_json::Value, doc: &serde_json::Value) -> Vec<String> {
    let mut missing = Vec::new();
    walk(schema, schema, doc, "", &mut missing);
    missing.sort();
    missing
}

fn walk(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    doc: &serde_json::Value,
    at: &str,
    missing: &mut Vec<String>,
) {
    // `$ref: "#/definitions/Name"` (schemars 0.8) points into the root's definitions.
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or(r);
        if let Some(def) = root.get("definitions").and_then(|d| d.get(name)) {
            walk(root, def, doc, at, missing);
        }
        return;
    }
    // Option<T> is `anyOf: [T, null]`; a flattened or defaulted struct may be `allOf: [T]`.
    for key in ["anyOf", "allOf", "oneOf"] {
        for sub in schema
            .get(key)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            walk(root, sub, doc, at, missing);
        }
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (k, sub) in props {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            match doc.get(k) {
                Some(v) => walk(root, sub, v, &path, missing),
                None => missing.push(path),
            }
        }
    }
    if let (Some(items), Some(first)) =
        (schema.get("items"), doc.as_array().and_then(|a| a.first()))
    {
        walk(root, items, first, &format!("{at}[]"), missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_follow_refs_options_and_lists() {
        let schema = serde_json::json!({
            "properties": {
                "a": { "type": "integer" },
                "tls": { "$ref": "#/definitions/Tls" },
                "opt": { "anyOf": [ { "$ref": "#/definitions/Tls" }, { "type": "null" } ] },
                "list": { "type": "array", "items": { "$ref": "#/definitions/Item" } }
            },
            "definitions": {
                "Tls": { "properties": { "cert": {}, "key": {} } },
                "Item": { "properties": { "name": {}, "url": {} } }
            }
        });
        let full = serde_json::json!({
            "a": 1, "tls": { "cert": "c", "key": "k" }, "opt": { "cert": "c", "key": "k" },
            "list": [ { "name": "n", "url": "u" } ]
        });
        assert!(missing_keys(&schema, &full).is_empty());
        let partial = serde_json::json!({
            "tls": { "cert": "c" }, "opt": { "key": "k" }, "list": [ { "name": "n" } ]
        });
        assert_eq!(
            missing_keys(&schema, &partial),
            ["a", "list[].url", "opt.cert", "tls.key"]
        );
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        listen: String,
        limit: u64,
    }

    #[test]
    fn errors_name_file_line_column() {
        let err = parse_yaml::<Cfg>(Path::new("svc.yaml"), "listen: a\nlimit: lots\n").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("svc.yaml:2:8: "), "{s}");
        assert!(s.contains("invalid type"), "{s}");
        let err = parse_yaml::<Cfg>(Path::new("svc.yaml"), "listen: a\nlimit: 1\nbogus: 2\n")
            .unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("svc.yaml:3:"), "{s}");
        assert!(s.contains("unknown field `bogus`"), "{s}");
    }
}
