//! `meta.k8s.io/v1` Table and PartialObjectMetadata renderings (what `kubectl get` asks for).

use serde_json::{Map, Value, json};

use crate::registry::ResourceDef;
use crate::request::Query;

/// A `PartialObjectMetadata` for an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Column definitions of a resource.
pub fn column_definitions(def: &ResourceDef) -> Value {
    Value::Array(
        def.columns
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

/// One row for an object, honouring `includeObject` (None, Metadata (default), Object).
pub fn row(def: &ResourceDef, obj: &Value, query: &Query) -> Value {
    let mut r = Map::new();
    r.insert("cells".into(), Value::Array((def.cells)(obj)));
    match query.get("includeObject") {
        Some("None") => {}
        Some("Object") => {
            r.insert("object".into(), obj.clone());
        }
        _ => {
            r.insert("object".into(), partial_metadata(obj));
        }
    }
    Value::Object(r)
}

/// A Table of `objects`; `with_columns` false omits columnDefinitions (watch events after the
/// first). Objects may be decoded as they are consumed: each becomes its (much smaller) row
/// before the next is read, so a LIST of many never holds them all decoded.
pub fn build<V: std::borrow::Borrow<Value>>(
    def: &ResourceDef,
    objects: impl IntoIterator<Item = V>,
    query: &Query,
    rv: Option<String>,
    cont: Option<String>,
    with_columns: bool,
) -> Value {
    let mut meta = Map::new();
    if let Some(rv) = rv {
        meta.insert("resourceVersion".into(), Value::String(rv));
    }
    if let Some(c) = cont {
        meta.insert("continue".into(), Value::String(c));
    }
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| row(def, o.borrow(), query))
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": Value::Object(meta),
        "rows": rows,
    });
    if let Value::Object(m) = &mut t {
        m.insert(
            "columnDefinitions".into(),
            if with_columns {
                column_definitions(def)
            } else {
                Value::Array(vec![])
            },
        );
    }
    t
}
