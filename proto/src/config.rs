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

/// Reads and parses a YAML config file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

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
