//! Field schemas and the check that names the field at fault.

use serde_json::Value;

/// The JSON kind of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A string, or null (used for `finished_at` before an operation ends).
    OptStr,
    /// A non-negative integer.
    Int,
    /// A list of strings.
    StrList,
    /// A JSON object.
    Dict,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::OptStr => "a string or null",
            Kind::Int => "a non-negative integer",
            Kind::StrList => "a list of strings",
            Kind::Dict => "an object",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            Kind::Str => value.is_string(),
            Kind::OptStr => value.is_string() || value.is_null(),
            Kind::Int => value.is_u64(),
            Kind::StrList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
            Kind::Dict => value.is_object(),
        }
    }
}

/// One attribute of a model.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Required attributes have no default (primary keys).
    pub required: bool,
}

impl Field {
    pub const fn required(name: &'static str, kind: Kind) -> Self {
        Self { name, kind, required: true }
    }
    pub const fn optional(name: &'static str, kind: Kind) -> Self {
        Self { name, kind, required: false }
    }
}

/// What to do with attributes a model does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Refuse them (client input: a typo must not be silently dropped).
    Reject,
    /// Drop them (stored data and bus messages from other versions).
    Ignore,
}

/// One thing wrong with one attribute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A document that is not a valid model, with every reason found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub model: &'static str,
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    /// A document serde could not read as `model` (not tied to one field).
    pub fn undecodable(model: &'static str, err: serde_json::Error) -> Self {
        Self { model, errors: vec![FieldError { field: String::new(), message: err.to_string() }] }
    }
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let details: Vec<String> = self
            .errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}.{}: {}", self.model, e.field, e.message)
                }
            })
            .collect();
        write!(f, "invalid {}: {}", self.model, details.join("; "))
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "an integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a number with a fraction",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks `value` against the schema: an object, every required attribute
/// present, every present attribute of its kind, and (with [`Unknown::Reject`])
/// no attribute outside the schema.
pub fn check_fields(
    model: &'static str,
    fields: &[Field],
    value: &Value,
    unknown: Unknown,
) -> Result<(), ValidationError> {
    let Some(map) = value.as_object() else {
        return Err(ValidationError {
            model,
            errors: vec![FieldError::new("", format!("expected a JSON object, got {}", type_name(value)))],
        });
    };
    let mut errors = Vec::new();
    for field in fields {
        match map.get(field.name) {
            None if field.required => errors.push(FieldError::new(field.name, "is required")),
            None => {}
            Some(v) if !field.kind.accepts(v) => errors
                .push(FieldError::new(field.name, format!("expected {}, got {}", field.kind.describe(), type_name(v)))),
            Some(_) => {}
        }
    }
    if unknown == Unknown::Reject {
        let mut extra: Vec<&String> = map.keys().filter(|k| !fields.iter().any(|f| f.name == k.as_str())).collect();
        extra.sort();
        for key in extra {
            errors.push(FieldError::new(key.as_str(), "is not a known field"));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ValidationError { model, errors }) }
}
