//! Helpers for reading fields of JSON objects and comparing decoded vs. raw objects.

use serde_json::Value;

/// `metadata.name` or "".
pub fn name(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"]).unwrap_or("")
}

/// `metadata.namespace` or "".
pub fn namespace(obj: &Value) -> &str {
    str_at(obj, &["metadata", "namespace"]).unwrap_or("")
}

/// The value at a path of object keys.
pub fn at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        cur = cur.get(p)?;
    }
    Some(cur)
}

/// The string at a path of object keys.
pub fn str_at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(obj, path)?.as_str()
}

/// The integer at a path of object keys.
pub fn i64_at(obj: &Value, path: &[&str]) -> Option<i64> {
    at(obj, path)?.as_i64()
}

/// Mutable object at a path, creating empty objects on the way.
pub fn ensure_object<'a>(
    obj: &'a mut Value,
    path: &[&str],
) -> &'a mut serde_json::Map<String, Value> {
    let mut cur = obj;
    for p in path {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let map = match cur {
            Value::Object(m) => m,
            _ => unreachable!("just made an object"),
        };
        cur = map
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Default::default());
    }
    match cur {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `key` in the object at `path` if absent (a Kubernetes default).
pub fn default_at(obj: &mut Value, path: &[&str], key: &str, value: Value) {
    let map = ensure_object(obj, path);
    match map.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(key.to_string(), value);
        }
    }
}

/// Age of the object as kubectl prints it (`5s`, `3m2s`, `4h`, `2d3h`, ...).
pub fn age(obj: &Value) -> String {
    let Some(ts) = str_at(obj, &["metadata", "creationTimestamp"]) else {
        return "<unknown>".to_string();
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".to_string();
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    human_duration(secs.max(0))
}

/// Kubernetes' `duration.HumanDuration` formatting of seconds.
pub fn human_duration(secs: i64) -> String {
    let s = secs;
    if s < 60 * 2 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rs = s % 60;
        return if rs == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rs}s")
        };
    }
    if m < 60 * 3 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = (s / 60) % 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let rh = h % 24;
        let d = h / 24;
        return if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let d = h / 24;
        let y = d / 365;
        let rd = d % 365;
        return if rd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{rd}d")
        };
    }
    format!("{}y", h / 24 / 365)
}

/// Collects paths present in `raw` but absent from `decoded` (fields the schema dropped).
/// Paths are dotted, with list indexes as `[i]`, e.g. `spec.template.spec.containers[0].imagez`.
pub fn unknown_fields(raw: &Value, decoded: &Value, prefix: &str, out: &mut Vec<String>) {
    match (raw, decoded) {
        (Value::Object(r), Value::Object(d)) => {
            for (k, rv) in r {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match d.get(k) {
                    Some(dv) => unknown_fields(rv, dv, &path, out),
                    None if rv.is_null() => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(r), Value::Array(d)) => {
            for (i, (rv, dv)) in r.iter().zip(d.iter()).enumerate() {
                unknown_fields(rv, dv, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Sets `metadata.resourceVersion`.
pub fn set_rv(obj: &mut Value, rv: crate::storage::Revision) {
    ensure_object(obj, &["metadata"])
        .insert("resourceVersion".into(), Value::String(rv.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(50 * 3600), "2d2h");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let raw = json!({"spec": {"replicaz": 3, "template": {"spec": {"containers": [{"name": "a", "imagez": "x"}]}}}});
        let decoded = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut out = Vec::new();
        unknown_fields(&raw, &decoded, "", &mut out);
        assert_eq!(
            out,
            vec!["spec.replicaz", "spec.template.spec.containers[0].imagez"]
        );
    }
}
