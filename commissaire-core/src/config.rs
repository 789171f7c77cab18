//! The JSON configuration files of the server and the services: an explicit file
//! (`-` for standard input) or the default path (skipped when absent). Member
//! names are normalised (`listen-port` ≡ `listen_port`), recursively.

use std::{io::Read, path::Path};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("configuration {path} is not valid JSON: {reason}")]
    NotJson { path: String, reason: String },
    #[error("configuration {path} must be a JSON object")]
    NotAnObject { path: String },
    #[error("configuration member {member}: {reason}")]
    BadMember { member: String, reason: String },
}

/// Where the configuration came from (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(String),
    Stdin,
    Defaults,
}

/// Reads the configuration: `explicit` if given (an unreadable file is an
/// error), else `default_path` if it exists, else an empty object.
pub fn load(explicit: Option<&Path>, default_path: &Path) -> Result<(Map<String, Value>, Source), ConfigError> {
    let (text, source) = match explicit {
        Some(path) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| ConfigError::Unreadable { path: "-".into(), reason: e.to_string() })?;
            (text, Source::Stdin)
        }
        Some(path) => (read(path)?, Source::File(path.display().to_string())),
        None if default_path.exists() => (read(default_path)?, Source::File(default_path.display().to_string())),
        None => return Ok((Map::new(), Source::Defaults)),
    };
    let shown = match &source {
        Source::File(p) => p.clone(),
        _ => "-".to_string(),
    };
    parse(&text, &shown).map(|map| (map, source))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: path.display().to_string(), reason: e.to_string() })
}

/// Parses configuration text and normalises its member names.
pub fn parse(text: &str, shown: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::NotJson { path: shown.to_string(), reason: e.to_string() })?;
    match normalise(value) {
        Value::Object(map) => Ok(map),
        _ => Err(ConfigError::NotAnObject { path: shown.to_string() }),
    }
}

fn normalise(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k.replace('-', "_"), normalise(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

/// A string member, if present; an error if present with another type.
pub fn string_member(config: &Map<String, Value>, member: &str) -> Result<Option<String>, ConfigError> {
    match config.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ConfigError::BadMember { member: member.into(), reason: "must be a string".into() }),
    }
}

/// A list of strings (a single string is taken as a list of one), empty if absent.
pub fn string_list_member(config: &Map<String, Value>, member: &str) -> Result<Vec<String>, ConfigError> {
    let bad = || ConfigError::BadMember { member: member.into(), reason: "must be a list of strings".into() };
    match config.get(member) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_files_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.conf");
        std::fs::write(&path, r#"{"listen-port": 8000, "storage-handlers": [{"server-url": "x"}]}"#).expect("write");
        let (config, source) = load(Some(&path), Path::new("/nonexistent")).expect("load");
        assert_eq!(source, Source::File(path.display().to_string()));
        assert_eq!(config["listen_port"], 8000);
        assert_eq!(config["storage_handlers"][0]["server_url"], "x");

        let (empty, source) = load(None, &dir.path().join("absent.conf")).expect("defaults");
        assert!(empty.is_empty());
        assert_eq!(source, Source::Defaults);

        assert!(matches!(
            load(Some(&dir.path().join("absent.conf")), Path::new("/x")),
            Err(ConfigError::Unreadable { .. })
        ));
        std::fs::write(&path, "[1]").expect("write");
        assert!(matches!(load(Some(&path), Path::new("/x")), Err(ConfigError::NotAnObject { .. })));
        assert!(string_member(&parse(r#"{"bus_uri": 1}"#, "t").expect("parse"), "bus_uri").is_err());
        let lists = parse(r#"{"a": ["x", "y"], "b": "z", "c": [1]}"#, "t").expect("parse");
        assert_eq!(string_list_member(&lists, "a").expect("a"), vec!["x", "y"]);
        assert_eq!(string_list_member(&lists, "b").expect("b"), vec!["z"]);
        assert!(string_list_member(&lists, "c").is_err());
        assert!(string_list_member(&lists, "absent").expect("absent").is_empty());
    }
}
