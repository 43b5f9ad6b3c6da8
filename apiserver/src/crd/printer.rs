//! `additionalPrinterColumns`: the columns `kubectl get` shows for a custom resource, with the
//! JSONPath subset CRDs use in practice (`.spec.replicas`, `.status.conditions[0].status`,
//! `.metadata.labels.app`, escaped dots `.metadata.annotations.a\.b/c`).

use serde_json::Value;

/// One printer column of a served version.
#[derive(Debug, Clone)]
pub struct Column {
    /// Header.
    pub name: String,
    /// OpenAPI type: integer, number, string, boolean, date.
    pub type_: String,
    /// OpenAPI format.
    pub format: String,
    /// Description.
    pub description: String,
    /// 0 = always shown, >0 only with `-o wide`.
    pub priority: i32,
    /// Compiled `jsonPath`.
    pub path: JsonPath,
}

/// A step of a JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.field`.
    Field(String),
    /// `[n]`.
    Index(usize),
}

/// A compiled JSONPath (`.a.b[0].c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(pub Vec<Step>);

impl JsonPath {
    /// Compiles a JSONPath of the supported subset; `{…}` braces are accepted around it.
    pub fn parse(src: &str) -> Result<JsonPath, String> {
        let s = src.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(s);
        let s = s.strip_prefix('$').unwrap_or(s);
        if !s.starts_with('.') {
            return Err(format!("unsupported JSONPath {src:?}: must start with '.'"));
        }
        let mut steps = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    let mut name = String::new();
                    while let Some(&n) = chars.peek() {
                        if n == '\\' {
                            chars.next();
                            if let Some(esc) = chars.next() {
                                name.push(esc);
                            }
                        } else if n == '.' || n == '[' {
                            break;
                        } else {
                            name.push(n);
                            chars.next();
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("unsupported JSONPath {src:?}: empty field name"));
                    }
                    steps.push(Step::Field(name));
                }
                '[' => {
                    let mut inner = String::new();
                    for n in chars.by_ref() {
                        if n == ']' {
                            break;
                        }
                        inner.push(n);
                    }
                    let inner = inner.trim();
                    if let Ok(i) = inner.parse::<usize>() {
                        steps.push(Step::Index(i));
                    } else if let Some(k) = inner
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                    {
                        steps.push(Step::Field(k.to_string()));
                    } else {
                        return Err(format!(
                            "unsupported JSONPath {src:?}: only numeric or quoted indexes"
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "unsupported JSONPath {src:?}: unexpected {other:?}"
                    ));
                }
            }
        }
        Ok(JsonPath(steps))
    }

    /// The value at this path, if any.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for s in &self.0 {
            cur = match s {
                Step::Field(f) => cur.get(f.as_str())?,
                Step::Index(i) => cur.get(*i)?,
            };
        }
        Some(cur)
    }
}

/// The cell of a column for an object: the value at the path as the column's type (missing →
/// null, which kubectl prints as `<none>`; lists and objects as their JSON text).
pub fn cell(c: &Column, obj: &Value) -> Value {
    match c.path.get(obj) {
        None | Some(Value::Null) => Value::Null,
        Some(v @ (Value::String(_) | Value::Bool(_) | Value::Number(_))) => v.clone(),
        Some(other) => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_of_the_supported_subset() {
        let obj = json!({"spec": {"replicas": 3, "image": "x"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            "metadata": {"annotations": {"a.b/c": "d"}}});
        let get = |p: &str| JsonPath::parse(p).expect(p).get(&obj).cloned();
        assert_eq!(get(".spec.replicas"), Some(json!(3)));
        assert_eq!(get("{.status.conditions[0].status}"), Some(json!("True")));
        assert_eq!(get(".metadata.annotations.a\\.b/c"), Some(json!("d")));
        assert_eq!(get(".metadata.annotations['a.b/c']"), Some(json!("d")));
        assert_eq!(get(".status.conditions[3].status"), None);
        assert!(JsonPath::parse("spec").is_err());
        assert!(JsonPath::parse(".items[?(@.x)]").is_err());
    }

    #[test]
    fn cells_keep_scalars_and_render_the_rest() {
        let col = |p: &str| Column {
            name: "X".into(),
            type_: "string".into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            path: JsonPath::parse(p).expect("path"),
        };
        let obj = json!({"spec": {"n": 2, "l": ["a", "b"], "b": true}});
        assert_eq!(cell(&col(".spec.n"), &obj), json!(2));
        assert_eq!(cell(&col(".spec.b"), &obj), json!(true));
        assert_eq!(cell(&col(".spec.l"), &obj), json!("[\"a\",\"b\"]"));
        assert_eq!(cell(&col(".spec.missing"), &obj), Value::Null);
    }
}
