//! `metadata.managedFields` (FieldsV1 per manager and operation) and server-side apply, with the
//! semantics of Kubernetes' structured-merge-diff:
//! - an `Apply` entry holds exactly the fields its manager's last configuration set (leaves and
//!   list items; lists and structs follow the schema's list types from
//!   [`crate::schema_strategy`]);
//! - an `Update` entry (create, update, non-apply patch) gains the fields that operation changed,
//!   and every other manager loses them;
//! - applying a value to a field another manager owns with a different value is a conflict (409)
//!   unless `force=true`, which moves ownership; the same value shares ownership;
//! - a field a manager stops applying is removed from the object when nobody else owns it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::schema_strategy::{ListType, Node};

/// A set of field paths, encoded like FieldsV1: children keyed `f:<field>`, `k:<keys json>`,
/// `v:<value json>`; `member` is the `.` marker (or a leaf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    /// Decodes FieldsV1 (malformed parts are ignored: managedFields written by clients are
    /// validated elsewhere).
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut s = FieldSet::default();
        if let Value::Object(m) = v {
            if m.is_empty() {
                s.member = true;
            }
            for (k, c) in m {
                if k == "." {
                    s.member = true;
                } else {
                    s.children.insert(k.clone(), FieldSet::from_fields_v1(c));
                }
            }
        }
        s
    }

    /// Encodes as FieldsV1.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    /// True when no path is a member.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((h, rest)) => self.children.entry(h.clone()).or_default().insert(rest),
        }
    }

    fn get(&self, path: &[String]) -> Option<&FieldSet> {
        match path.split_first() {
            None => Some(self),
            Some((h, rest)) => self.children.get(h)?.get(rest),
        }
    }

    fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((h, rest)) => self.children.get(h).is_some_and(|c| c.contains(rest)),
        }
    }

    fn remove(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = false,
            Some((h, rest)) => {
                if let Some(c) = self.children.get_mut(h) {
                    c.remove(rest);
                    if c.is_empty() {
                        self.children.remove(h);
                    }
                }
            }
        }
    }

    /// Every member path.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }
}

/// How a set is built: Apply sets hold leaves and list items; Update sets also mark maps.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Apply,
    Update,
}

fn is_map(node: Node) -> bool {
    node.is_map()
}

/// The field set of an object's fields (`apiVersion`, `kind` and server-owned metadata left out).
fn object_set(obj: &Value, node: Node, mode: Mode, top: bool) -> FieldSet {
    let mut s = FieldSet::default();
    let Value::Object(m) = obj else { return s };
    for (k, v) in m {
        if top
            && (matches!(k.as_str(), "apiVersion" | "kind")
                || (k == "status" && mode == Mode::Apply))
        {
            continue;
        }
        if top && k == "metadata" {
            let mut meta = v.clone();
            if let Value::Object(mm) = &mut meta {
                for f in SERVER_META {
                    mm.remove(*f);
                }
                if mm.is_empty() {
                    continue;
                }
            }
            s.children.insert(
                "f:metadata".into(),
                value_set(&meta, node.child(k), None, mode),
            );
            continue;
        }
        let lt = node.declared_list_type(k);
        s.children
            .insert(format!("f:{k}"), value_set(v, node.child(k), lt, mode));
    }
    s
}

const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn value_set(v: &Value, node: Node, list_type: Option<ListType>, mode: Mode) -> FieldSet {
    match v {
        Value::Object(m) if !m.is_empty() && !node.is_atomic_struct() => {
            let mut s = object_set(v, node, mode, false);
            s.member = mode == Mode::Update && is_map(node);
            if s.children.is_empty() {
                s.member = true;
            }
            s
        }
        Value::Array(items) => match list_type.unwrap_or(ListType::Atomic) {
            ListType::Atomic => FieldSet {
                member: true,
                children: BTreeMap::new(),
            },
            ListType::Set => {
                let mut s = FieldSet {
                    member: mode == Mode::Update,
                    children: BTreeMap::new(),
                };
                for it in items {
                    s.children.insert(
                        format!("v:{it}"),
                        FieldSet {
                            member: true,
                            children: BTreeMap::new(),
                        },
                    );
                }
                s
            }
            ListType::Map(keys) => {
                let mut s = FieldSet {
                    member: mode == Mode::Update,
                    children: BTreeMap::new(),
                };
                let item_node = node.items();
                for it in items {
                    let mut c = object_set(it, item_node, mode, false);
                    c.member = true;
                    s.children.insert(item_key(it, keys), c);
                }
                s
            }
        },
        _ => FieldSet {
            member: true,
            children: BTreeMap::new(),
        },
    }
}

/// `k:{"name":"x"}` (keys in the schema's order, missing keys left out).
fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut m = Map::new();
    let mut sorted: Vec<&&str> = keys.iter().collect();
    sorted.sort();
    for k in sorted {
        match item.get(*k) {
            Some(v) => {
                m.insert((*k).to_string(), v.clone());
            }
            // Map keys with a Kubernetes default (`+default="TCP"`) identify items without them.
            None if *k == "protocol" => {
                m.insert("protocol".into(), Value::from("TCP"));
            }
            None => {}
        }
    }
    format!("k:{}", Value::Object(m))
}

/// The value at a FieldsV1 path, if present.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((h, rest)) = path.split_first() else {
        return Some(obj);
    };
    let next = if let Some(f) = h.strip_prefix("f:") {
        obj.get(f)?
    } else if let Some(k) = h.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        obj.as_array()?
            .iter()
            .find(|it| keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)))?
    } else if let Some(v) = h.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        obj.as_array()?.iter().find(|it| **it == want)?
    } else {
        return None;
    };
    value_at(next, rest)
}

/// Removes the value at a FieldsV1 path.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((h, rest)) = path.split_first() else {
        return;
    };
    if let Some(f) = h.strip_prefix("f:") {
        let Value::Object(m) = obj else { return };
        if rest.is_empty() {
            m.remove(f);
        } else if let Some(c) = m.get_mut(f) {
            remove_at(c, rest);
        }
        return;
    }
    let Value::Array(items) = obj else { return };
    let matches: Box<dyn Fn(&Value) -> bool> = if let Some(k) = h.strip_prefix("k:") {
        let Ok(keys) = serde_json::from_str::<Map<String, Value>>(k) else {
            return;
        };
        Box::new(move |it: &Value| keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)))
    } else if let Some(v) = h.strip_prefix("v:") {
        let Ok(want) = serde_json::from_str::<Value>(v) else {
            return;
        };
        Box::new(move |it: &Value| *it == want)
    } else {
        return;
    };
    if rest.is_empty() {
        items.retain(|it| !matches(it));
    } else if let Some(it) = items.iter_mut().find(|it| matches(it)) {
        remove_at(it, rest);
    }
}

/// A path as Kubernetes prints it: `.spec.containers[name="nginx"].image`, `[="x"]` for set
/// values.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = p.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn new_entry(manager: &str, operation: &str, api_version: &str, set: &FieldSet) -> Value {
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": set.to_fields_v1(),
    })
}

/// A managedFields entry for `manager` owning every field of `obj` (a create; status is owned
/// through the status subresource).
pub fn entry(manager: &str, operation: &str, def: &ResourceDef, obj: &Value) -> Value {
    let mode = if operation == "Apply" {
        Mode::Apply
    } else {
        Mode::Update
    };
    // Status on create is the server's (reset or initialised), not the creator's.
    let mut owned = obj.clone();
    if def.has_status
        && let Value::Object(m) = &mut owned
    {
        m.remove("status");
    }
    new_entry(
        manager,
        operation,
        &def.api_version(),
        &object_set(&owned, Node::root(def), mode, true),
    )
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn entry_set(e: &Value) -> FieldSet {
    e.get("fieldsV1")
        .map(FieldSet::from_fields_v1)
        .unwrap_or_default()
}

fn is(e: &Value, manager: &str, operation: &str) -> bool {
    e.get("manager").and_then(Value::as_str) == Some(manager)
        && e.get("operation").and_then(Value::as_str) == Some(operation)
}

fn set_entries(obj: &mut Value, list: Vec<Value>) {
    if let Value::Object(m) = obj
        && let Some(Value::Object(meta)) = m.get_mut("metadata")
    {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records an update (or non-apply patch) by `manager`: it gains the fields that changed between
/// `old` and `new`, which every other manager loses.
pub fn record(new: &mut Value, old: &Value, manager: &str, operation: &str, def: &ResourceDef) {
    record_for(new, old, manager, operation, None, def);
}

/// [`record`] for a write through a subresource (`status`, `scale`): the entry carries
/// `subresource` and is distinct from the same manager's entry for the main resource.
pub fn record_for(
    new: &mut Value,
    old: &Value,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    def: &ResourceDef,
) {
    let node = Node::root(def);
    let old_set = object_set(old, node, Mode::Update, true);
    let new_set = object_set(new, node, Mode::Update, true);
    let mut changed = FieldSet::default();
    for p in new_set.members() {
        if !old_set.contains(&p) || value_at(old, &p) != value_at(new, &p) {
            // A map or list item whose content changed is not itself changed.
            let container = value_at(new, &p).is_some_and(|v| v.is_object() || v.is_array())
                && old_set.contains(&p);
            if !container {
                changed.insert(&p);
            }
        }
    }
    // Client-supplied managedFields replace ours (as in Kubernetes); otherwise keep the old ones.
    let mut list = if new.pointer("/metadata/managedFields").is_some()
        && new.pointer("/metadata/managedFields") != old.pointer("/metadata/managedFields")
    {
        entries(new)
    } else {
        entries(old)
    };
    let mut mine = FieldSet::default();
    list.retain_mut(|e| {
        let mut s = entry_set(e);
        if is(e, manager, operation) && e.get("subresource").and_then(Value::as_str) == subresource
        {
            mine = s;
            return false;
        }
        for p in changed.members() {
            s.remove(&p);
        }
        if let Value::Object(m) = e {
            m.insert("fieldsV1".into(), s.to_fields_v1());
        }
        !s.is_empty()
    });
    for p in changed.members() {
        mine.insert(&p);
    }
    // Fields that disappeared are owned by nobody.
    for p in mine.members() {
        if value_at(new, &p).is_none() {
            mine.remove(&p);
        }
    }
    if !mine.is_empty() {
        let mut e = new_entry(manager, operation, &def.api_version(), &mine);
        if let (Some(sub), Value::Object(m)) = (subresource, &mut e) {
            m.insert("subresource".into(), Value::from(sub));
        }
        list.push(e);
    }
    set_entries(new, list);
}

/// Server-side apply of `config` by `manager` onto `current`: merges the configuration by the
/// schema's list types, removes fields the manager stopped applying and owns alone, and updates
/// managedFields. Conflicts with other managers are 409 unless `force`.
pub fn apply(
    def: &ResourceDef,
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> ApiResult<Value> {
    let Value::Object(_) = config else {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration is not an object",
        ));
    };
    for (field, want) in [
        ("apiVersion", def.api_version()),
        ("kind", def.kind.to_string()),
    ] {
        match config.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the apply configuration ({v}) does not match the object's ({want})"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "the apply configuration has no {field}; it must be {want:?}"
                )));
            }
        }
    }
    let node = Node::root(def);
    let api_version = def.api_version();
    let applied = object_set(config, node, Mode::Apply, true);
    let mut list = entries(current);

    let mut out = current.clone();
    merge(&mut out, config, node, true);
    // The applied leaves (list items and maps with content are containers, not values) whose
    // value the apply changes: they conflict with other owners, and leave them when forced.
    let changed: Vec<Vec<String>> = applied
        .members()
        .into_iter()
        .filter(|p| applied.get(p).is_some_and(|n| n.children.is_empty()))
        .filter(|p| value_at(current, p) != value_at(&out, p))
        .collect();
    let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
    for e in &list {
        if is(e, manager, "Apply") {
            continue;
        }
        let theirs = entry_set(e);
        for p in &changed {
            if theirs.contains(p) {
                conflicts.push((manager_label(e), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }

    let previous = list
        .iter()
        .find(|e| is(e, manager, "Apply"))
        .map(entry_set)
        .unwrap_or_default();
    let others_lose = changed;
    list.retain_mut(|e| {
        if is(e, manager, "Apply") {
            return false;
        }
        let mut s = entry_set(e);
        for p in &others_lose {
            s.remove(p);
        }
        if let Value::Object(m) = e {
            m.insert("fieldsV1".into(), s.to_fields_v1());
        }
        !s.is_empty()
    });
    // Fields this manager stopped applying and nobody else owns are removed.
    let others: Vec<FieldSet> = list.iter().map(entry_set).collect();
    for p in previous.members() {
        if !applied.contains(&p) && !others.iter().any(|s| s.contains(&p)) {
            remove_at(&mut out, &p);
        }
    }
    list.push(new_entry(manager, "Apply", &api_version, &applied));
    set_entries(&mut out, list);
    Ok(out)
}

/// Merges an applied configuration into the live object by the schema's list types.
fn merge(target: &mut Value, config: &Value, node: Node, top: bool) {
    let (Value::Object(t), Value::Object(c)) = (&mut *target, config) else {
        *target = config.clone();
        return;
    };
    for (k, cv) in c {
        if top && k == "status" {
            continue;
        }
        if top && k == "metadata" {
            // Server-owned metadata is never taken from the configuration.
            let mut cm = cv.clone();
            if let Value::Object(m) = &mut cm {
                for f in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "generation",
                    "managedFields",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "selfLink",
                ] {
                    m.remove(f);
                }
            }
            merge(
                t.entry(k.clone()).or_insert_with(|| json!({})),
                &cm,
                node.child(k),
                false,
            );
            continue;
        }
        let child = node.child(k);
        match (t.get_mut(k), cv) {
            (_, Value::Null) => {
                t.remove(k);
            }
            (Some(tv @ Value::Object(_)), Value::Object(_)) if !child.is_atomic_struct() => {
                merge(tv, cv, child, false)
            }
            (Some(Value::Array(tl)), Value::Array(cl)) => {
                match node.declared_list_type(k).unwrap_or(ListType::Atomic) {
                    ListType::Atomic => *tl = cl.clone(),
                    ListType::Set => {
                        for v in cl {
                            if !tl.contains(v) {
                                tl.push(v.clone());
                            }
                        }
                    }
                    ListType::Map(keys) => {
                        for item in cl {
                            let id = item_key(item, keys);
                            match tl.iter_mut().find(|t| item_key(t, keys) == id) {
                                Some(t) => merge(t, item, child.items(), false),
                                None => tl.push(item.clone()),
                            }
                        }
                    }
                }
            }
            _ => {
                t.insert(k.clone(), cv.clone());
            }
        }
    }
}

/// `"kubectl-client-side-apply" using apps/v1` for Update managers, `"mgr"` for Apply ones.
fn manager_label(e: &Value) -> String {
    let name = e.get("manager").and_then(Value::as_str).unwrap_or_default();
    let mut s = format!("{name:?}");
    if let Some(sub) = e
        .get("subresource")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        s.push_str(&format!(" with subresource {sub:?}"));
    }
    if e.get("operation").and_then(Value::as_str) == Some("Update") {
        s.push_str(&format!(
            " using {}",
            e.get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ));
    }
    s
}

/// Kubernetes' apply conflict error (409 Conflict, one cause per field).
fn conflict_error(conflicts: &[(String, Vec<String>)]) -> ApiError {
    let message = if let [(m, p)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {m}: {}",
            path_string(p)
        )
    } else {
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (m, p) in conflicts {
            by.entry(m.as_str()).or_default().push(path_string(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": path_string(p)}))
        .collect();
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn deploy() -> &'static ResourceDef {
        registry::catalog::lookup_kind("apps", "Deployment").expect("deployments served")
    }

    /// The managedFields entry of `manager`.
    fn entry_of(obj: &Value, manager: &str) -> Value {
        entries(obj)
            .into_iter()
            .find(|e| e["manager"] == manager)
            .unwrap_or_else(|| panic!("no managedFields entry of {manager}"))
    }

    fn owns_replicas(entry: &Value) -> bool {
        FieldSet::from_fields_v1(&entry["fieldsV1"])
            .contains(&["f:spec".into(), "f:replicas".into()])
    }

    fn cfg(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn live() -> Value {
        let mut c = cfg(1, "nginx");
        c["metadata"]["uid"] = json!("u");
        c
    }

    fn owners(obj: &Value) -> Vec<(String, String)> {
        entries(obj)
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap_or_default().to_string(),
                    e["operation"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn apply_set_is_leaves_and_items() {
        let set =
            object_set(&cfg(1, "nginx"), Node::root(deploy()), Mode::Apply, true).to_fields_v1();
        assert_eq!(
            set,
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:selector": {},
                "f:template": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
    }

    #[test]
    fn apply_then_conflict_then_force() {
        let obj = apply(deploy(), &live(), &cfg(1, "nginx"), "a", false).expect("first apply");
        assert_eq!(owners(&obj), vec![("a".into(), "Apply".into())]);
        // Same values: shared ownership, no conflict.
        let obj = apply(deploy(), &obj, &cfg(1, "nginx"), "b", false).expect("same values share");
        let err = apply(deploy(), &obj, &cfg(3, "nginx"), "b", false).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        let obj = apply(deploy(), &obj, &cfg(3, "nginx"), "b", true).expect("forced");
        assert_eq!(obj["spec"]["replicas"], 3);
        let a = entry_of(&obj, "a");
        assert!(!owns_replicas(&a));
    }

    #[test]
    fn update_manager_conflict_message() {
        let mut obj = live();
        let old =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        record(
            &mut obj,
            &old,
            "kubectl-client-side-apply",
            "Update",
            deploy(),
        );
        let err = apply(deploy(), &obj, &cfg(2, "nginx"), "kubectl", false).expect_err("conflict");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let err = apply(deploy(), &obj, &cfg(2, "other"), "kubectl", false).expect_err("conflicts");
        assert!(err.message.starts_with("Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"c\"].image"), "{}", err.message);
    }

    #[test]
    fn dropped_fields_removed_when_owned_alone() {
        let mut c = cfg(1, "nginx");
        c["metadata"]["labels"]["extra"] = json!("x");
        let obj = apply(deploy(), &live(), &c, "a", false).expect("apply");
        assert_eq!(obj["metadata"]["labels"]["extra"], "x");
        let obj = apply(deploy(), &obj, &cfg(1, "nginx"), "a", false).expect("apply without extra");
        assert!(obj["metadata"]["labels"].get("extra").is_none());
        // Owned by someone else too: kept.
        let obj = apply(deploy(), &obj, &c, "a", false).expect("apply");
        let obj = apply(deploy(), &obj, &c, "b", false).expect("b shares");
        let obj = apply(deploy(), &obj, &cfg(1, "nginx"), "a", false).expect("a drops");
        assert_eq!(obj["metadata"]["labels"]["extra"], "x");
    }

    #[test]
    fn list_types() {
        let mut c = cfg(1, "nginx");
        c["spec"]["template"]["spec"]["containers"] = json!([{"name": "s", "image": "side"}]);
        let obj = apply(deploy(), &live(), &cfg(1, "nginx"), "a", false).expect("a");
        let obj = apply(deploy(), &obj, &c, "b", false).expect("b adds a container (map list)");
        let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["c", "s"]);
        // Atomic: command replaced whole.
        let mut c2 = cfg(1, "nginx");
        c2["spec"]["template"]["spec"]["containers"][0]["command"] = json!(["a", "b"]);
        let obj = apply(deploy(), &obj, &c2, "a", false).expect("a sets command");
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["command"],
            json!(["a", "b"])
        );
        // Set: finalizers union.
        let mut f = cfg(1, "nginx");
        f["metadata"]["finalizers"] = json!(["x"]);
        let obj = apply(deploy(), &obj, &f, "f", false).expect("f");
        let mut g = cfg(1, "nginx");
        g["metadata"]["finalizers"] = json!(["y"]);
        let obj = apply(deploy(), &obj, &g, "g", false).expect("g");
        assert_eq!(obj["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn update_takes_changed_fields_only() {
        let obj = apply(deploy(), &live(), &cfg(1, "nginx"), "a", false).expect("a");
        let mut new = obj.clone();
        new["spec"]["replicas"] = json!(5);
        record(&mut new, &obj, "kubectl-scale", "Update", deploy());
        let scale = entry_of(&new, "kubectl-scale");
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        let a = entry_of(&new, "a");
        assert!(!owns_replicas(&a));
    }

    #[test]
    fn apply_config_must_match_kind() {
        let mut c = cfg(1, "x");
        c["kind"] = json!("Pod");
        assert_eq!(
            apply(deploy(), &live(), &c, "a", false)
                .expect_err("mismatch")
                .code,
            400
        );
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    fn cm_def() -> &'static ResourceDef {
        registry::catalog::lookup_kind("", "ConfigMap").expect("configmaps served")
    }

    /// One step of a server-side apply scenario.
    enum Step {
        /// (manager, configuration, force, expected error message or None)
        Apply(&'static str, Value, bool, Option<&'static str>),
        /// (manager, object after a plain update)
        Update(&'static str, Value),
        /// Expected `data` of the live object.
        Data(Value),
    }

    #[test]
    fn configmap_scenarios() {
        use Step::*;
        let scenarios: Vec<(&str, Vec<Step>)> = vec![
            (
                "apply creates fields",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Data(json!({"x": "1"})),
                ],
            ),
            (
                "dropping a field removes it",
                vec![
                    Apply("a", cm(json!({"x": "1", "y": "2"})), false, None),
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Data(json!({"x": "1"})),
                ],
            ),
            (
                "shared field survives one owner dropping it",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Apply("b", cm(json!({"x": "1"})), false, None),
                    Apply("a", cm(json!({})), false, None),
                    Data(json!({"x": "1"})),
                    Apply("b", cm(json!({})), false, None),
                    Data(json!({})),
                ],
            ),
            (
                "different value conflicts",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Apply(
                        "b",
                        cm(json!({"x": "2"})),
                        false,
                        Some("Apply failed with 1 conflict: conflict with \"a\": .data.x"),
                    ),
                    Data(json!({"x": "1"})),
                ],
            ),
            (
                "force takes ownership; the old owner dropping it no longer removes it",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Apply("b", cm(json!({"x": "2"})), true, None),
                    Apply("a", cm(json!({})), false, None),
                    Data(json!({"x": "2"})),
                ],
            ),
            (
                "an Update manager's field conflicts",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Update("editor", cm(json!({"x": "9"}))),
                    Apply(
                        "a",
                        cm(json!({"x": "1"})),
                        false,
                        Some(
                            "Apply failed with 1 conflict: conflict with \"editor\" using v1: .data.x",
                        ),
                    ),
                    Apply("a", cm(json!({"x": "1"})), true, None),
                    Data(json!({"x": "1"})),
                ],
            ),
            (
                "an update of a field takes it from the applier, which then cannot remove it",
                vec![
                    Apply("a", cm(json!({"x": "1", "y": "1"})), false, None),
                    Update("editor", cm(json!({"x": "1", "y": "5"}))),
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Data(json!({"x": "1", "y": "5"})),
                ],
            ),
            (
                "multiple conflicting managers are listed by manager",
                vec![
                    Apply("a", cm(json!({"x": "1"})), false, None),
                    Apply("b", cm(json!({"y": "1"})), false, None),
                    Apply(
                        "c",
                        cm(json!({"x": "2", "y": "2"})),
                        false,
                        Some(
                            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.x\nconflicts with \"b\":\n- .data.y",
                        ),
                    ),
                ],
            ),
        ];
        for (name, steps) in scenarios {
            let mut live = cm(json!({}));
            live["metadata"]["uid"] = json!("u");
            for step in steps {
                match step {
                    Apply(mgr, config, force, want) => {
                        match (apply(cm_def(), &live, &config, mgr, force), want) {
                            (Ok(next), None) => live = next,
                            (Err(e), Some(msg)) => assert_eq!(e.message, msg, "{name}"),
                            (Ok(_), Some(msg)) => panic!("{name}: expected {msg}"),
                            (Err(e), None) => panic!("{name}: {}", e.message),
                        }
                    }
                    Update(mgr, mut new) => {
                        new["metadata"] = live["metadata"].clone();
                        record(&mut new, &live, mgr, "Update", cm_def());
                        live = new;
                    }
                    Data(want) => assert_eq!(live["data"], want, "{name}"),
                }
            }
        }
    }

    #[test]
    fn fields_v1_round_trip_and_paths() {
        let v = json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"x\"": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}}}});
        let s = FieldSet::from_fields_v1(&v);
        assert_eq!(s.to_fields_v1(), v);
        let paths: Vec<String> = s.members().iter().map(|p| path_string(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.finalizers",
                ".metadata.finalizers[=\"x\"]",
                ".spec.containers[name=\"a\"]",
                ".spec.containers[name=\"a\"].image"
            ]
        );
    }

    #[test]
    fn container_only_one_manager_applies_is_removed_when_dropped() {
        let mut two = cfg(1, "nginx");
        two["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "c", "image": "nginx"}, {"name": "side", "image": "s"}]);
        let obj = apply(deploy(), &live(), &two, "a", false).expect("two containers");
        let obj = apply(deploy(), &obj, &cfg(1, "nginx"), "a", false).expect("one container");
        let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn atomic_selector_conflicts_as_a_whole() {
        let obj = apply(deploy(), &live(), &cfg(1, "nginx"), "a", false).expect("a");
        let mut other = cfg(1, "nginx");
        other["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let err = apply(deploy(), &obj, &other, "b", false).expect_err("conflict");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.selector"
        );
    }

    #[test]
    fn status_and_server_metadata_are_not_applied() {
        let mut c = cfg(1, "nginx");
        c["status"] = json!({"replicas": 9});
        c["metadata"]["uid"] = json!("forged");
        let obj = apply(deploy(), &live(), &c, "a", false).expect("apply");
        assert_eq!(obj["metadata"]["uid"], "u");
        assert!(obj.get("status").is_none());
    }

    #[test]
    fn status_updates_are_recorded_with_their_subresource() {
        let obj = apply(deploy(), &live(), &cfg(1, "nginx"), "a", false).expect("a");
        let mut new = obj.clone();
        new["status"] = json!({"replicas": 1, "readyReplicas": 1});
        record_for(
            &mut new,
            &obj,
            "controller",
            "Update",
            Some("status"),
            deploy(),
        );
        let e = entry_of(&new, "controller");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:readyReplicas": {}, "f:replicas": {}}})
        );
    }
}
