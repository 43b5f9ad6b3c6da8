//! Events: core/v1 events and their events.k8s.io/v1 view.
//!
//! Kubernetes stores core/v1 and events.k8s.io/v1 Events as the same objects (one key,
//! `/registry/events/<ns>/<name>`) and converts between the two shapes (`regarding` ↔
//! `involvedObject`, `note` ↔ `message`, `reportingController` ↔ `reportingComponent`,
//! `deprecatedSource` ↔ `source`, `deprecated*` ↔ `firstTimestamp`/`lastTimestamp`/`count`).
//! So does Lotse: [`EVENTS_V1`] shares the core prefix and is a [`StorageView`] that stores the
//! core/v1 shape ([`to_core_event`]) and serves the events.k8s.io/v1 one ([`from_core_event`]),
//! in handlers and the watch cache alike.

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::events::v1 as eventsv1;
use serde_json::{Map, Value, json};

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

// ---------------------------------------------------------------------------------------------
// events (core/v1)

/// core/v1 events. Stored under `events` (Kubernetes stores core and events.k8s.io Events as the
/// same objects; here events.k8s.io has its own prefix, see `events.rs`).
pub const EVENTS: ResourceDef = ResourceDef {
    short_names: &["ev"],
    validate: validate_core_event,
    columns: EVENT_COLUMNS,
    cells: core_event_cells,
    field: core_event_field,
    selectable_fields: EVENT_SELECTABLE,
    ..def_of::<corev1::Event>("", "v1", "Event", "events", "event")
};

/// The event table columns (shared with events.k8s.io).
pub(crate) const EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        0,
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        0,
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        0,
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col(
        "Object",
        "string",
        0,
        "The object that this event is about.",
    ),
    col(
        "Subobject",
        "string",
        1,
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    col(
        "Source",
        "string",
        1,
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    col(
        "Message",
        "string",
        0,
        "A human-readable description of the status of this operation.",
    ),
    col(
        "First Seen",
        "string",
        1,
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    col(
        "Count",
        "string",
        1,
        "The number of times this event has occurred.",
    ),
    Column {
        priority: 1,
        ..NAME_COLUMN
    },
];

/// Field selectors of core/v1 events.
pub(crate) const EVENT_SELECTABLE: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn validate_core_event(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns = fields::namespace(o);
    let ino = s(o, &["involvedObject", "namespace"]);
    if !ns.is_empty() && !ino.is_empty() && ns != ino {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(ino),
            "does not match event.namespace",
        ));
    }
    let ty = s(o, &["type"]);
    if (!s(o, &["reportingComponent"]).is_empty() || present(o, &["eventTime"]))
        && ty != "Normal"
        && ty != "Warning"
    {
        errs.push(FieldError::invalid(
            "type",
            &json!(ty),
            "has invalid value: expected Normal or Warning",
        ));
    }
    errs
}

fn since(ts: &str) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => {
            fields::human_duration((jiff::Timestamp::now().as_second() - t.as_second()).max(0))
        }
        Err(_) => "<unknown>".to_string(),
    }
}

/// The event row from core/v1-shaped fields (`printEvent`).
pub(crate) fn core_event_cells(o: &Value) -> Vec<Value> {
    let first_ts = s(o, &["firstTimestamp"]);
    let first = if first_ts.is_empty() {
        since(s(o, &["eventTime"]))
    } else {
        since(first_ts)
    };
    let last_ts = s(o, &["lastTimestamp"]);
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        since(last_ts)
    };
    let mut count = int(o, &["count"]);
    if present(o, &["series"]) {
        last = since(s(o, &["series", "lastObservedTime"]));
        count = int(o, &["series", "count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = lower(s(o, &["involvedObject", "kind"]));
    let name = s(o, &["involvedObject", "name"]);
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let component = match s(o, &["source", "component"]) {
        "" => s(o, &["reportingComponent"]),
        c => c,
    };
    let host = match s(o, &["source", "host"]) {
        "" => s(o, &["reportingInstance"]),
        h => h,
    };
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        cell(last),
        cell(s(o, &["type"])),
        cell(s(o, &["reason"])),
        cell(target),
        cell(s(o, &["involvedObject", "fieldPath"])),
        cell(source),
        cell(s(o, &["message"]).trim()),
        cell(first),
        Value::from(count),
        name_cell(o),
    ]
}

/// Field selector values of a core/v1-shaped event.
pub(crate) fn core_event_field(o: &Value, f: &str) -> Option<String> {
    if let Some(v) = object_reference_field(o, "involvedObject", f) {
        return Some(v.to_string());
    }
    let v = match f {
        "reason" => s(o, &["reason"]),
        "reportingComponent" => s(o, &["reportingComponent"]),
        "source" => match s(o, &["source", "component"]) {
            "" => s(o, &["reportingComponent"]),
            c => c,
        },
        "type" => s(o, &["type"]),
        _ => return None,
    };
    Some(v.to_string())
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

    #[test]
    fn core_event_cells_and_fields() {
        let ev = json!({"metadata": {"name": "e", "namespace": "default"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Started", "message": " hi ", "type": "Normal", "count": 3,
            "source": {"component": "kubelet", "host": "n1"}});
        let cells = core_event_cells(&ev);
        assert_eq!(cells[3], "pod/p");
        assert_eq!(cells[5], "kubelet, n1");
        assert_eq!(cells[6], "hi");
        assert_eq!(cells[8], 3);
        assert_eq!(core_event_field(&ev, "source").as_deref(), Some("kubelet"));
    }
}
