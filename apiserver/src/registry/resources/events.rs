//! events.k8s.io/v1 entries: events.
//!
//! Kubernetes stores core/v1 and events.k8s.io/v1 Events as the same objects (one key,
//! `/registry/events/<ns>/<name>`) and converts between the two shapes (`regarding` ↔
//! `involvedObject`, `note` ↔ `message`, `reportingController` ↔ `reportingComponent`,
//! `deprecatedSource` ↔ `source`, `deprecated*` ↔ `firstTimestamp`/`lastTimestamp`/`count`).
//! So does Lotse: [`EVENTS_V1`] shares the core prefix and is a [`StorageView`] that stores the
//! core/v1 shape ([`to_core_event`]) and serves the events.k8s.io/v1 one ([`from_core_event`]),
//! in handlers and the watch cache alike.

use k8s_openapi::api::events::v1 as eventsv1;
use serde_json::{Map, Value, json};

use super::core::{EVENT_COLUMNS, core_event_cells};
use super::util::*;
use crate::registry::*;

/// events.k8s.io/v1 events: a view of the core/v1 events in storage (see the module docs).
pub const EVENTS_V1: ResourceDef = ResourceDef {
    short_names: &["ev"],
    storage_prefix: "events",
    validate: validate_event_v1,
    columns: EVENT_COLUMNS,
    cells: |o| core_event_cells(&to_core_event(o)),
    field: event_v1_field,
    selectable_fields: &[
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "type",
    ],
    storage_view: Some(StorageView {
        to_storage: to_core_event,
        from_storage: from_core_event,
    }),
    ..def_of::<eventsv1::Event>("events.k8s.io", "v1", "Event", "events", "event")
};

/// (events.k8s.io/v1 field, core/v1 field) renames.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(o: &Value, from_v1: bool, api_version: &str) -> Value {
    let Some(m) = o.as_object() else {
        return o.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let key = RENAMES
            .iter()
            .find(|(a, b)| if from_v1 { a == k } else { b == k })
            .map(|(a, b)| if from_v1 { *b } else { *a })
            .unwrap_or(k.as_str());
        out.insert(key.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event in core/v1 shape.
pub fn to_core_event(o: &Value) -> Value {
    rename(o, true, "v1")
}

/// A core/v1 Event in events.k8s.io/v1 shape.
pub fn from_core_event(o: &Value) -> Value {
    rename(o, false, "events.k8s.io/v1")
}

fn event_v1_field(o: &Value, f: &str) -> Option<String> {
    if let Some(v) = object_reference_field(o, "regarding", f) {
        return Some(v.to_string());
    }
    let v = match f {
        "reason" => s(o, &["reason"]),
        "reportingController" => s(o, &["reportingController"]),
        "type" => s(o, &["type"]),
        _ => return None,
    };
    Some(v.to_string())
}

/// events.k8s.io/v1 fields an update may not change, with the (core) path Kubernetes reports
/// them under (it validates the stored shape).
const IMMUTABLE: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("reason", "reason"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("action", "action"),
    ("related", "related"),
    ("reportingController", "reportingController"),
    ("type", "type"),
];

fn validate_event_v1(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    if let Some(old) = old {
        // Updates (a series bump) keep what the event reported; the create-time rules are not
        // re-checked, so events written through core/v1 stay updatable through this view.
        return IMMUTABLE
            .iter()
            .filter(|(f, _)| o.get(*f) != old.get(*f))
            .map(|(f, path)| {
                FieldError::invalid(
                    *path,
                    o.get(*f).unwrap_or(&Value::Null),
                    "field is immutable",
                )
            })
            .collect();
    }
    let mut errs = Vec::new();
    if !present(o, &["eventTime"]) {
        errs.push(FieldError::required("eventTime", ""));
    }
    let ty = s(o, &["type"]);
    if ty != "Normal" && ty != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            &json!(""),
            &format!("has invalid value: {ty}"),
        ));
    }
    for f in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp"] {
        if present(o, &[f]) {
            errs.push(FieldError::invalid(f, &json!(""), "needs to be unset"));
        }
    }
    if int(o, &["deprecatedCount"]) != 0 {
        errs.push(FieldError::invalid(
            "deprecatedCount",
            &json!(""),
            "needs to be unset",
        ));
    }
    if !s(o, &["deprecatedSource", "component"]).is_empty()
        || !s(o, &["deprecatedSource", "host"]).is_empty()
    {
        errs.push(FieldError::invalid(
            "deprecatedSource",
            &json!(""),
            "needs to be unset",
        ));
    }
    let ns = fields::namespace(o);
    let rns = s(o, &["regarding", "namespace"]);
    if !ns.is_empty() && !rns.is_empty() && ns != rns {
        errs.push(FieldError::invalid(
            "regarding.namespace",
            &json!(rns),
            "does not match event.namespace",
        ));
    }
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if s(o, &[f]).is_empty() {
            errs.push(FieldError::required(f, ""));
        }
    }
    if s(o, &["note"]).len() > 1024 {
        let field = "note".to_string();
        let message = "note: Too long: may not be more than 1024 bytes".to_string();
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field,
            message,
        });
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_and_prints() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reportingController": "kubelet",
            "reportingInstance": "n1", "reason": "Started", "type": "Normal", "action": "Start",
            "eventTime": "2024-01-01T00:00:00.000000Z"});
        let core = to_core_event(&ev);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(from_core_event(&core), ev);
        let cells = (EVENTS_V1.cells)(&ev);
        assert_eq!(cells[3], "pod/p");
        assert_eq!(cells[5], "kubelet, n1");
        assert_eq!(event_v1_field(&ev, "regarding.name").as_deref(), Some("p"));
        assert!(validate_event_v1(&ev, None).is_empty());
        let msgs: Vec<String> = validate_event_v1(&json!({"type": "Bad"}), None)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(msgs[0], "eventTime: Required value");
        assert_eq!(msgs[1], "type: Invalid value: \"\": has invalid value: Bad");
    }
}
