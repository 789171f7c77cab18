//! How answers are shown: readable tables (the default), JSON or YAML.

use serde_json::Value;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The server's JSON, pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
}

/// `value` as JSON or YAML, or as a table (see [`table`]).
pub fn render(value: &Value, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        Format::Yaml => yaml_serde::to_string(value).unwrap_or_default().trim_end().to_string(),
        Format::Table => table(value, None),
    }
}

/// One cell: strings as they are, lists joined with `, `, `null` as `-`,
/// objects as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// A table for people:
/// * a list of scalars: one per line;
/// * a list of objects: one row each, a header of the (upper-cased) member
///   names, `columns` when given, else every member in order of appearance;
/// * an object: `member  value` lines (a nested object's members indented);
/// * anything else: its text.
pub fn table(value: &Value, columns: Option<&[&str]>) -> String {
    match value {
        Value::Array(items) if items.iter().all(|i| !i.is_object()) => {
            items.iter().map(cell).collect::<Vec<_>>().join("\n")
        }
        Value::Array(items) => {
            let names: Vec<String> = match columns {
                Some(columns) => columns.iter().map(|c| c.to_string()).collect(),
                None => {
                    let mut names: Vec<String> = Vec::new();
                    for item in items {
                        for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                            if !names.contains(key) {
                                names.push(key.clone());
                            }
                        }
                    }
                    names
                }
            };
            let header: Vec<String> = names.iter().map(|n| n.replace('_', " ").to_uppercase()).collect();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| names.iter().map(|n| cell(item.get(n).unwrap_or(&Value::Null))).collect())
                .collect();
            columns_text(&header, &rows)
        }
        Value::Object(map) => {
            let mut lines = Vec::new();
            object_lines(map, 0, &mut lines);
            let width = lines.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
            lines
                .into_iter()
                .map(|(k, v)| if v.is_empty() { k } else { format!("{k:width$}  {v}") }.trim_end().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
        Value::Null => String::new(),
        other => cell(other),
    }
}

fn object_lines(map: &serde_json::Map<String, Value>, depth: usize, lines: &mut Vec<(String, String)>) {
    for (key, value) in map {
        let name = format!("{}{key}", "  ".repeat(depth));
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                lines.push((format!("{name}:"), String::new()));
                object_lines(inner, depth + 1, lines);
            }
            other => lines.push((name, cell(other))),
        }
    }
}

/// Left-aligned columns separated by two spaces.
pub fn columns_text(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(header)).chain(rows.iter().map(|r| line(r))).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_of_names_one_per_line() {
        assert_eq!(table(&json!(["a", "b"]), None), "a\nb");
        assert_eq!(table(&json!([]), None), "");
    }

    #[test]
    fn objects_as_aligned_pairs() {
        let text =
            table(&json!({"name": "prod", "hostset": ["h1", "h2"], "hosts": {"total": 2}, "finished_at": null}), None);
        assert_eq!(text, "name         prod\nhostset      h1, h2\nhosts:\n  total      2\nfinished_at  -");
    }

    #[test]
    fn rows_with_chosen_columns() {
        let rows =
            json!([{"address": "10.0.0.1", "status": "active", "cpus": 2}, {"address": "10.0.0.22", "status": ""}]);
        assert_eq!(
            table(&rows, Some(&["address", "status", "cpus"])),
            "ADDRESS    STATUS  CPUS\n10.0.0.1   active  2\n10.0.0.22  -       -"
        );
    }

    #[test]
    fn json_and_yaml() {
        let value = json!({"name": "prod", "hostset": ["h1"]});
        assert_eq!(render(&value, Format::Json), "{\n  \"name\": \"prod\",\n  \"hostset\": [\n    \"h1\"\n  ]\n}");
        assert_eq!(render(&value, Format::Yaml), "name: prod\nhostset:\n- h1");
    }
}
