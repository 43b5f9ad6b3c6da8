//! Label selectors, one copy for every component: the string syntax (`a=b,c!=d,e in (x,y),!f`,
//! parsed and matched as the apiserver's `labelSelector` query), field selectors, the string form
//! of a `metav1.LabelSelector` (`LabelSelectorAsSelector(...).String()`), and matching of
//! `metav1.LabelSelector`s and node selector requirements (typed, and as JSON for the apiserver).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaLabelSelector;
use serde_json::{Map, Value};

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also matches objects without the key).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also matches objects without the key).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>N` (Kubernetes supports Gt/Lt on integer label values).
    Gt(String, i64),
    /// `key<N`.
    Lt(String, i64),
}

/// A parsed label selector (all requirements must match). Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

/// A selector parse error (message as Kubernetes words it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError(pub String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectorError {}

fn valid_label_key(k: &str) -> bool {
    if k.is_empty() || k.len() > 317 {
        return false;
    }
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
    {
        return false;
    }
    valid_label_value(name) && !name.is_empty()
}

/// Whether `v` is a valid label value (empty allowed).
pub fn valid_label_value(v: &str) -> bool {
    if v.len() > 63 {
        return false;
    }
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!(
                "unable to parse requirement: found '{rest}', expected: '('"
            ))
        })?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &vals {
        if !valid_label_value(v) {
            return Err(SelectorError(format!(
                "unable to parse requirement: values[0][{whole}]: Invalid value: \"{v}\""
            )));
        }
    }
    Ok(vals)
}

impl LabelSelector {
    /// Parses a label selector string.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError(format!(
                    "unable to parse requirement: found '', expected: identifier in \"{s}\""
                )));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                LabelRequirement::DoesNotExist(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = p.find(" notin ").or_else(|| p.find(" notin(")) {
                let k = p[..idx].trim().to_string();
                LabelRequirement::NotIn(k, parse_set(&p[idx + 6..], p)?)
            } else if let Some(idx) = p.find(" in ").or_else(|| p.find(" in(")) {
                let k = p[..idx].trim().to_string();
                LabelRequirement::In(k, parse_set(&p[idx + 3..], p)?)
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v.trim().parse().map_err(|_| SelectorError(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v}")))?;
                LabelRequirement::Gt(k.trim().to_string(), n)
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v.trim().parse().map_err(|_| SelectorError(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v}")))?;
                LabelRequirement::Lt(k.trim().to_string(), n)
            } else {
                LabelRequirement::Exists(p.to_string())
            };
            let (key, value) = match &req {
                LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => (k, Some(v)),
                LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k)
                | LabelRequirement::Gt(k, _)
                | LabelRequirement::Lt(k, _) => (k, None),
            };
            if !valid_label_key(key) {
                return Err(SelectorError(format!(
                    "unable to parse requirement: <nil>: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                )));
            }
            if let Some(v) = value
                && !valid_label_value(v)
            {
                return Err(SelectorError(format!(
                    "unable to parse requirement: values[0][{key}]: Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                )));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
            LabelRequirement::Gt(k, n) => labels
                .get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelRequirement::Lt(k, n) => labels
                .get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// One field requirement: `field=value` or `field!=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path, e.g. `spec.nodeName`.
    pub field: String,
    /// Value to compare with.
    pub value: String,
    /// True for `!=`.
    pub negate: bool,
}

/// A parsed field selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses a field selector string (`a=b,c!=d`, `==` allowed, `\,` escapes).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, value, negate) = if let Some((f, v)) = p.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, v, false)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            reqs.push(FieldRequirement {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negate,
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object matches; `lookup` returns a field's value (None = unsupported field).
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let v = lookup(&r.field).unwrap_or_default();
            (v == r.value) != r.negate
        })
    }

    /// The value required for `field` by an `=` requirement, if any (used to narrow lists).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == field && !r.negate)
            .map(|r| r.value.as_str())
    }
}

/// The string form of a `metav1.LabelSelector` given as JSON, as
/// `metav1.LabelSelectorAsSelector(sel).String()`: requirements sorted by key, `matchLabels` as
/// `k=v`, `In` as `k in (a,b)` and `NotIn` as `k notin (a,b)` (values sorted), `Exists` as `k`,
/// `DoesNotExist` as `!k`; "" for a missing or empty selector. A plain label map
/// (ReplicationController's `spec.selector`, no `matchLabels`/`matchExpressions`) is rendered as
/// `labels.SelectorFromSet(map).String()`: `k=v` sorted by key. Unknown operators (refused by
/// validation) are left out.
pub fn selector_string(sel: Option<&Value>) -> String {
    let Some(m) = sel.and_then(Value::as_object) else {
        return String::new();
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut reqs: Vec<(String, String)> = Vec::new();
    if !m.contains_key("matchLabels") && !m.contains_key("matchExpressions") {
        for (k, v) in m {
            reqs.push((k.clone(), equals_string(k, &text(v))));
        }
        return join_by_key(reqs);
    }
    if let Some(labels) = m.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            reqs.push((k.clone(), equals_string(k, &text(v))));
        }
    }
    for e in m
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let op = e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let values = json_strings(e.get("values"));
        if let Some(r) = expression_string(key, op, &values) {
            reqs.push((key.to_string(), r));
        }
    }
    join_by_key(reqs)
}

/// [`selector_string`] of a typed `metav1.LabelSelector`.
pub fn label_selector_string(sel: &MetaLabelSelector) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        reqs.push((k.clone(), equals_string(k, v)));
    }
    for e in sel.match_expressions.iter().flatten() {
        let values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
        if let Some(r) = expression_string(&e.key, &e.operator, &values) {
            reqs.push((e.key.clone(), r));
        }
    }
    join_by_key(reqs)
}

/// `k=v`.
fn equals_string(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// `Requirement.String()` of one `matchExpressions` entry (None for an unknown operator).
fn expression_string(key: &str, op: &str, values: &[&str]) -> Option<String> {
    let mut values = values.to_vec();
    values.sort_unstable();
    let values = values.join(",");
    match op {
        "In" => Some(format!("{key} in ({values})")),
        "NotIn" => Some(format!("{key} notin ({values})")),
        "Exists" => Some(key.to_string()),
        "DoesNotExist" => Some(format!("!{key}")),
        _ => None,
    }
}

/// Joins rendered requirements sorted by key (stable: for one key, `matchLabels` first).
fn join_by_key(mut reqs: Vec<(String, String)>) -> String {
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(",")
}

/// The strings of a JSON array (non-strings skipped; nothing when absent).
fn json_strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether a label value `have` (None: no such label) satisfies a set-based requirement
/// (`In`, `NotIn`, `Exists`, `DoesNotExist`); None for other operators.
fn set_requirement_matches<S: AsRef<str>>(
    op: &str,
    values: &[S],
    have: Option<&str>,
) -> Option<bool> {
    let listed = |v: &str| values.iter().any(|x| x.as_ref() == v);
    match op {
        "In" => Some(have.is_some_and(listed)),
        "NotIn" => Some(have.is_none_or(|v| !listed(v))),
        "Exists" => Some(have.is_some()),
        "DoesNotExist" => Some(have.is_none()),
        _ => None,
    }
}

/// Whether `labels` satisfy a `metav1.LabelSelector` (`LabelSelectorAsSelector` semantics:
/// matchLabels and matchExpressions ANDed, an empty selector matches everything, an unknown
/// operator matches nothing).
pub fn label_selector_matches(sel: &MetaLabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            set_requirement_matches(&e.operator, values, labels.get(&e.key).map(String::as_str))
                .unwrap_or(false)
        })
}

/// [`label_selector_matches`] of a `metav1.LabelSelector` given as JSON against a JSON label map
/// (None: no labels).
pub fn selector_value_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()))
        && sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                set_requirement_matches(op, &json_strings(e.get("values")), get(key))
                    .unwrap_or(false)
            })
}

/// One node selector requirement (`matchExpressions` or `matchFields` of a `NodeSelectorTerm`)
/// against a value (label value or field value; None: absent): the set-based operators plus `Gt`
/// and `Lt` (exactly one integer value, compared with an integer label value).
pub fn node_requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        op => set_requirement_matches(op, values, value.map(String::as_str)).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_label_selectors() {
        let s =
            LabelSelector::parse("app=web,tier!=db,env in (prod, staging),!legacy,team").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "")
        ])));
        let n = LabelSelector::parse("env notin (prod)").unwrap();
        assert!(n.matches(&labels(&[])));
        assert!(!n.matches(&labels(&[("env", "prod")])));
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_label_selectors() {
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("a in x").is_err());
    }

    #[test]
    fn parses_field_selectors() {
        let f = FieldSelector::parse("metadata.name=web,status.phase!=Running").unwrap();
        assert!(f.matches(|k| match k {
            "metadata.name" => Some("web".into()),
            "status.phase" => Some("Pending".into()),
            _ => None,
        }));
        assert_eq!(f.required_value("metadata.name"), Some("web"));
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn selector_string_is_kubernetes_string_form() {
        let sel = json!({
            "matchLabels": {"tier": "db", "app": "web"},
            "matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["b", "a"]},
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "app", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "x", "operator": "Bogus", "values": ["1"]},
            ],
        });
        let want = "app=web,app,env in (dev,prod),!legacy,tier=db,zone notin (a,b)";
        assert_eq!(selector_string(Some(&sel)), want);
        let typed: MetaLabelSelector = serde_json::from_value(sel).unwrap();
        assert_eq!(label_selector_string(&typed), want);
        // Duplicate values are kept, as Kubernetes' Requirement.String() does.
        let dup = json!({"matchExpressions": [{"key": "k", "operator": "In", "values": ["b", "a", "b"]}]});
        assert_eq!(selector_string(Some(&dup)), "k in (a,b,b)");
        // A plain map (ReplicationController) is SelectorFromSet: sorted by key.
        assert_eq!(
            selector_string(Some(&json!({"a.b": "2", "a": "1"}))),
            "a=1,a.b=2"
        );
        assert_eq!(selector_string(None), "");
        assert_eq!(selector_string(Some(&Value::Null)), "");
        assert_eq!(selector_string(Some(&json!({}))), "");
        assert_eq!(label_selector_string(&MetaLabelSelector::default()), "");
        // The string form parses back to a selector with the same meaning.
        let parsed = LabelSelector::parse(want).unwrap();
        assert!(parsed.matches(&labels(&[("app", "web"), ("tier", "db"), ("env", "dev")])));
        assert!(!parsed.matches(&labels(&[("app", "web"), ("tier", "db"), ("env", "qa")])));
    }

    #[test]
    fn matches_label_selectors_typed_and_json() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        });
        let typed: MetaLabelSelector = serde_json::from_value(sel.clone()).unwrap();
        let cases = [
            (labels(&[("app", "web"), ("tier", "a")]), true),
            (labels(&[("app", "web"), ("tier", "c")]), false),
            (labels(&[("app", "db"), ("tier", "a")]), false),
            (
                labels(&[("app", "web"), ("tier", "a"), ("legacy", "")]),
                false,
            ),
            (labels(&[]), false),
        ];
        for (l, want) in cases {
            assert_eq!(label_selector_matches(&typed, &l), want, "{l:?}");
            let json: Map<String, Value> = l
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            assert_eq!(selector_value_matches(&sel, Some(&json)), want, "{l:?}");
        }
        assert!(label_selector_matches(
            &MetaLabelSelector::default(),
            &labels(&[])
        ));
        assert!(selector_value_matches(&json!({}), None));
        let not_in =
            json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["x"]}]});
        assert!(selector_value_matches(&not_in, None));
        let bogus = json!({"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]});
        assert!(!selector_value_matches(
            &bogus,
            Some(&json!({"k": "2"}).as_object().cloned().unwrap())
        ));
    }

    #[test]
    fn matches_node_requirements() {
        let req = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let v = |s: &str| Some(s.to_string());
        assert!(node_requirement_matches(
            &req("In", &["a", "b"]),
            v("a").as_ref()
        ));
        assert!(!node_requirement_matches(&req("In", &["a"]), None));
        assert!(node_requirement_matches(&req("NotIn", &["a"]), None));
        assert!(node_requirement_matches(
            &req("Exists", &[]),
            v("").as_ref()
        ));
        assert!(node_requirement_matches(&req("DoesNotExist", &[]), None));
        assert!(node_requirement_matches(
            &req("Gt", &["3"]),
            v("4").as_ref()
        ));
        assert!(!node_requirement_matches(
            &req("Gt", &["3"]),
            v("3").as_ref()
        ));
        assert!(node_requirement_matches(
            &req("Lt", &["3"]),
            v("2").as_ref()
        ));
        assert!(!node_requirement_matches(
            &req("Lt", &["3", "4"]),
            v("2").as_ref()
        ));
        assert!(!node_requirement_matches(
            &req("Lt", &["3"]),
            v("x").as_ref()
        ));
        assert!(!node_requirement_matches(
            &req("Bogus", &["a"]),
            v("a").as_ref()
        ));
    }
}
