//! Reading TOML configuration files of any schema (`deny_unknown_fields` throughout): parse,
//! find unknown keys (named with their table), apply `--set key=value` overrides, deserialise,
//! with errors that name the file, the key, the line and the column.
use std::path::Path;

use serde::de::DeserializeOwned;

use super::{ConfigError, ConfigFile};

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses TOML text into a table; `path` names the file in errors.
pub fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|err| {
        let (line, column) = err
            .span()
            .map_or((0, 0), |span| line_column(text, span.start));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().trim().to_string(),
        }
    })
}

/// Parses the value of `--set key=value`: a TOML value, else the raw text as a string.
fn parse_set_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Sets `value` at dotted `key` in `table`, creating intermediate tables.
fn set_path(table: &mut toml::Table, key: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().expect("non-empty key");
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(format!(
                    "`{}` is a {}, not a table",
                    parents[..=i].join("."),
                    other.type_str()
                ));
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// Deserialises a table into the file types.
fn deserialize<T: DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_string())
}

/// Whether `message` is serde's unknown-field error.
fn is_unknown_field(message: &str) -> bool {
    message.contains("unknown field")
}

/// Deserialises a table holding only `key = value`: `Err(message)` when that fails.
fn probe<T: DeserializeOwned>(key: &[&str], value: toml::Value) -> Result<(), String> {
    let mut table = toml::Table::new();
    set_path(&mut table, key, value)?;
    deserialize::<T>(&table).map(|_| ())
}

/// Finds the first key of `table` (depth first, dotted) the schema does not know.
fn find_unknown_key<T: DeserializeOwned>(
    table: &toml::Table,
    prefix: &mut Vec<String>,
) -> Option<(String, String)> {
    for (key, value) in table {
        prefix.push(key.clone());
        let parts: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let probe_value = match value {
            toml::Value::Table(_) => toml::Value::Table(toml::Table::new()),
            other => other.clone(),
        };
        if let Err(message) = probe::<T>(&parts, probe_value)
            && is_unknown_field(&message)
        {
            return Some((prefix.join("."), message));
        }
        // `model.heads` is a map keyed by task name: its children are not schema keys.
        if let toml::Value::Table(child) = value
            && let found @ Some(_) = find_unknown_key::<T>(child, prefix)
        {
            return found;
        }
        prefix.pop();
    }
    None
}

/// Applies `--set KEY=VALUE` overrides to a table, rejecting keys the schema does not know.
pub fn apply_overrides<T: DeserializeOwned>(
    table: &mut toml::Table,
    overrides: &[String],
) -> Result<(), ConfigError> {
    for arg in overrides {
        let Some((key, raw)) = arg.split_once('=') else {
            return Err(ConfigError::SetSyntax { arg: arg.clone() });
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::SetSyntax { arg: arg.clone() });
        }
        let value = parse_set_value(raw.trim());
        if let Err(message) = probe::<T>(&parts, value.clone()) {
            return Err(if is_unknown_field(&message) {
                ConfigError::SetUnknownKey {
                    key: key.into(),
                    message,
                }
            } else {
                ConfigError::SetValue {
                    key: key.into(),
                    message,
                }
            });
        }
        set_path(table, &parts, value).map_err(|message| ConfigError::SetValue {
            key: key.into(),
            message,
        })?;
    }
    Ok(())
}

/// Reads a TOML file of any config type `T` (`deny_unknown_fields` throughout), applying
/// `--set` overrides: unknown keys, bad values and malformed TOML are errors naming the file.
pub fn read_config<T: DeserializeOwned>(
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text, path, overrides)
}

/// [`read_config`] on text already read; `path` names it in errors.
pub fn parse_config<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut table = parse_table(text, path)?;
    if let Some((key, message)) = find_unknown_key::<T>(&table, &mut Vec::new()) {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key,
            message,
        });
    }
    if overrides.is_empty() {
        // From the text, so that value errors carry a line, a column and the key.
        return match toml::from_str::<T>(text) {
            Ok(file) => Ok(file),
            Err(err) => Err(ConfigError::Value {
                path: path.to_path_buf(),
                location: err.span().map(|span| {
                    let (line, column) = line_column(text, span.start);
                    let key = key_at(text, span.start)
                        .map_or_else(String::new, |k| format!(", key `{k}`"));
                    format!(" at line {line}, column {column}{key}")
                }),
                message: err.message().trim().to_string(),
            }),
        };
    }
    apply_overrides::<T>(&mut table, overrides)?;
    deserialize::<T>(&table).map_err(|message| ConfigError::Value {
        path: path.to_path_buf(),
        location: Some(" (after --set overrides)".into()),
        message,
    })
}

/// The dotted key whose value holds byte `offset` of `text`: the last `[table]` header before
/// it and the `key =` of its line (simple `key = value` lines and `[table]` headers; `None`
/// when the line is not of that form).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Reads a configuration file, applies overrides and deserialises it (no validation yet).
pub fn read_config_file(path: &Path, overrides: &[String]) -> Result<ConfigFile, ConfigError> {
    read_config(path, overrides)
}

/// [`read_config_file`] on text already read; `path` names it in errors.
pub fn config_from_str(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<ConfigFile, ConfigError> {
    parse_config(text, path, overrides)
}
