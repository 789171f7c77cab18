//! The Jinja subset shared with Ansible: minijinja configured as Ansible configures Jinja2.
//!
//! - Undefined variables are errors (Ansible's default), except under `is defined` / `default`.
//! - Templates (`template:`) use `trim_blocks` and keep their trailing newline, as Ansible's
//!   `template` module does; the same environment evaluates `when` expressions and the
//!   `{{ }}` in task arguments.
//! - A string that is exactly one `{{ expression }}` evaluates to the expression's value with its
//!   type (a list stays a list), as Ansible does; anything else renders to a string.
//! - `true`, `false` and `none` print as `True`, `False` and `None`, as Python prints them.
//! - Filters that Ansible adds or changes: `bool` (`"yes"`, `"no"`, `"true"`, `"1"`... as
//!   Ansible reads them) and `quote` (POSIX shell quoting, byte for byte as Python's
//!   `shlex.quote`, so files rendered by either engine are identical).

use minijinja::{Environment, UndefinedBehavior, Value as JValue, syntax::SyntaxConfig};
use serde_json::{Map, Value};

/// A minijinja environment with Ansible's settings and filters.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = SyntaxConfig::builder().trim_blocks(true).keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    // booleans and none print as Python prints them, as under Ansible
    env.set_formatter(|out, state, value| {
        if value.kind() == minijinja::value::ValueKind::Bool {
            return out.write_str(if value.is_true() { "True" } else { "False" }).map_err(minijinja::Error::from);
        }
        if value.is_none() {
            return out.write_str("None").map_err(minijinja::Error::from);
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("bool", ansible_bool);
    env.add_filter("quote", |v: JValue| -> String { python_shlex_quote(&value_to_text(&v)) });
    env
}

/// Ansible's `bool` filter: booleans as they are, `yes/on/true/1` (any case) and the number 1
/// are true, everything else false.
fn ansible_bool(v: JValue) -> bool {
    if let Some(s) = v.as_str() {
        return matches!(s.trim().to_ascii_lowercase().as_str(), "yes" | "on" | "true" | "1" | "y" | "t");
    }
    match v.kind() {
        minijinja::value::ValueKind::Bool => v.is_true(),
        minijinja::value::ValueKind::Number => i64::try_from(v).is_ok_and(|n| n == 1),
        _ => false,
    }
}

fn value_to_text(v: &JValue) -> String {
    match v.as_str() {
        Some(s) => s.to_owned(),
        None => v.to_string(),
    }
}

/// Python's `shlex.quote`: unchanged when made only of `[A-Za-z0-9_@%+=:,./-]` and not empty,
/// else in single quotes with each `'` written `'"'"'`.
pub fn python_shlex_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-')
        })
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// Ansible's reading of a boolean keyword value (`yes`, `no`, `true`, `False`, `1`, ...).
pub fn ansible_truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" | "1" | "y" | "t" => Some(true),
            "no" | "off" | "false" | "0" | "n" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `true` if the string holds template syntax.
pub fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The expression inside `s` when `s` is exactly one `{{ ... }}`, nothing around it.
pub fn single_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Check the syntax of every template string inside `v` (at load time).
pub fn check_value(env: &Environment<'static>, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if is_templated(s) => match single_expression(s) {
            Some(expr) => env.compile_expression(expr).map(|_| ()).map_err(|e| describe(&e)),
            None => env.template_from_str(s).map(|_| ()).map_err(|e| describe(&e)),
        },
        Value::Array(items) => items.iter().try_for_each(|i| check_value(env, i)),
        Value::Object(map) => map.values().try_for_each(|i| check_value(env, i)),
        _ => Ok(()),
    }
}

/// The variables as a template context.
pub fn context(vars: &Map<String, Value>) -> JValue {
    JValue::from(minijinja::value::Serde(vars))
}

/// Render every string of `v`; a single `{{ expression }}` keeps its type.
pub fn render_value(env: &Environment<'static>, v: &Value, ctx: &JValue) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if is_templated(s) => match single_expression(s) {
            Some(expr) => {
                let value = env.compile_expression(expr).and_then(|e| e.eval(ctx)).map_err(|e| describe(&e))?;
                if value.is_undefined() {
                    return Err(format!("{expr:?} is undefined"));
                }
                serde_json::to_value(&value).map_err(|e| e.to_string())?
            }
            None => Value::String(env.render_str(s, ctx).map_err(|e| describe(&e))?),
        },
        Value::Array(items) => Value::Array(items.iter().map(|i| render_value(env, i, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, i)| Ok((k.clone(), render_value(env, i, ctx)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluate a `when` / `changed_when` / `failed_when` condition: a bare expression (no braces),
/// or a boolean.
pub fn eval_condition(env: &Environment<'static>, cond: &Value, ctx: &JValue) -> Result<bool, String> {
    match cond {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => {
            let expr = single_expression(s).unwrap_or(s.as_str());
            let value = env.compile_expression(expr).and_then(|e| e.eval(ctx)).map_err(|e| describe(&e))?;
            if value.is_undefined() {
                return Err(format!("{expr:?} is undefined"));
            }
            // a string result is read as Ansible reads booleans ("False" is false)
            if let Some(s) = value.as_str() {
                return Ok(ansible_truthy(&Value::String(s.to_owned())).unwrap_or(!s.is_empty()));
            }
            Ok(value.is_true())
        }
        other => Err(format!("a condition must be an expression or a boolean, not {other}")),
    }
}

/// Compile a condition at load time.
pub fn check_condition(env: &Environment<'static>, cond: &Value) -> Result<(), String> {
    match cond {
        Value::Bool(_) => Ok(()),
        Value::String(s) => {
            let expr = single_expression(s).unwrap_or(s.as_str());
            env.compile_expression(expr).map(|_| ()).map_err(|e| describe(&e))
        }
        other => Err(format!("a condition must be an expression or a boolean, not {other}")),
    }
}

/// An error with its cause chain, on one line.
pub fn describe(e: &minijinja::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: Value) -> JValue {
        match v {
            Value::Object(m) => context(&m),
            _ => unreachable!("test vars are objects"),
        }
    }

    #[test]
    fn quote_matches_python() {
        assert_eq!(python_shlex_quote("abc-1.2/x:y"), "abc-1.2/x:y");
        assert_eq!(python_shlex_quote(""), "''");
        assert_eq!(python_shlex_quote("a b"), "'a b'");
        assert_eq!(python_shlex_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(python_shlex_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let env = environment();
        let ctx = vars(json!({"l": ["a", "b"], "n": 5, "s": "x"}));
        assert_eq!(render_value(&env, &json!("{{ l }}"), &ctx).expect("list"), json!(["a", "b"]));
        assert_eq!(render_value(&env, &json!("{{ n }}"), &ctx).expect("num"), json!(5));
        assert_eq!(render_value(&env, &json!("{{ s }}\n"), &ctx).expect("newline kept"), json!("x\n"));
        assert_eq!(render_value(&env, &json!("v={{ n }}"), &ctx).expect("str"), json!("v=5"));
        assert_eq!(render_value(&env, &json!(["{{ s }}", 1]), &ctx).expect("arr"), json!(["x", 1]));
        assert!(render_value(&env, &json!("{{ missing }}"), &ctx).is_err());
        assert!(render_value(&env, &json!("a {{ missing }}"), &ctx).is_err());
    }

    #[test]
    fn conditions() {
        let env = environment();
        let ctx = vars(json!({"t": true, "yes": "yes", "r": {"stat": {"exists": false}}, "l": []}));
        assert!(eval_condition(&env, &json!("t"), &ctx).expect("t"));
        assert!(!eval_condition(&env, &json!("not t"), &ctx).expect("not t"));
        assert!(eval_condition(&env, &json!("yes | bool"), &ctx).expect("bool"));
        assert!(!eval_condition(&env, &json!("r.stat.exists"), &ctx).expect("exists"));
        assert!(eval_condition(&env, &json!("missing is not defined"), &ctx).expect("defined"));
        assert!(!eval_condition(&env, &json!("l | length > 0"), &ctx).expect("length"));
        assert!(eval_condition(&env, &json!("missing | default('') == ''"), &ctx).expect("default"));
        assert!(eval_condition(&env, &json!("missing"), &ctx).is_err(), "undefined is an error");
    }

    #[test]
    fn set_in_if_and_list_concatenation() {
        let env = environment();
        let src = "{% set o = ['a'] %}\n{% if x is defined %}\n{% set o = o + ['--x=' ~ x] %}\n{% endif %}\nO={{ o | join(' ') | quote }}\n";
        let out = env.render_str(src, vars(json!({"x": "1"}))).expect("render");
        assert_eq!(out, "O='a --x=1'\n");
        let out = env.render_str(src, vars(json!({}))).expect("render");
        assert_eq!(out, "O=a\n");
        let out = env.render_str("{{ t }} {{ f }} {{ n }}", vars(json!({"t": true, "f": false, "n": null})));
        assert_eq!(out.expect("render"), "True False None");
    }
}
