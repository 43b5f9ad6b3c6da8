//! One served version of a CRD: everything the generic handlers need to serve its objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value, json};

use super::printer::{self, Column, JsonPath};
use super::schema::{self, Schema};
use super::{Cause, definition};

/// The `scale` subresource's paths.
#[derive(Debug, Clone)]
pub struct Scale {
    /// `specReplicasPath`, e.g. `.spec.replicas`.
    pub spec_replicas: JsonPath,
    /// `statusReplicasPath`.
    pub status_replicas: JsonPath,
    /// `labelSelectorPath`.
    pub label_selector: Option<JsonPath>,
}

impl Scale {
    /// `(spec replicas, status replicas, selector)` of an object (missing → 0, "").
    pub fn read(&self, obj: &Value) -> (i64, i64, String) {
        let int = |p: &JsonPath| p.get(obj).and_then(Value::as_i64).unwrap_or(0);
        let selector = self
            .label_selector
            .as_ref()
            .and_then(|p| p.get(obj))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        (
            int(&self.spec_replicas),
            int(&self.status_replicas),
            selector,
        )
    }

    /// Sets the spec replicas of an object (creating the path's objects as needed).
    pub fn set_spec_replicas(&self, obj: &mut Value, replicas: i64) {
        let steps = &self.spec_replicas.0;
        let mut cur = obj;
        for (i, step) in steps.iter().enumerate() {
            let last = i + 1 == steps.len();
            cur = match step {
                printer::Step::Field(f) => {
                    if !cur.is_object() {
                        *cur = Value::Object(Map::new());
                    }
                    let Value::Object(m) = cur else { return };
                    if last {
                        m.insert(f.clone(), json!(replicas));
                        return;
                    }
                    m.entry(f.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                }
                printer::Step::Index(n) => match cur.get_mut(*n) {
                    Some(v) => v,
                    None => return,
                },
            };
        }
    }
}

/// One served version of a CRD.
#[derive(Debug, Clone)]
pub struct Served {
    /// The CRD's name (`<plural>.<group>`).
    pub crd_name: String,
    /// The CRD's uid (a re-created CRD is a new resource).
    pub crd_uid: String,
    /// Group.
    pub group: String,
    /// This version.
    pub version: String,
    /// The storage version (objects are stored with this apiVersion).
    pub storage_version: String,
    /// Kind.
    pub kind: String,
    /// List kind.
    pub list_kind: String,
    /// Plural.
    pub plural: String,
    /// Singular.
    pub singular: String,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// The structural schema (None: everything preserved, as for a CRD without a schema).
    pub schema: Option<Schema>,
    /// The version's `openAPIV3Schema` as given.
    pub openapi_schema: Value,
    /// Printer columns after NAME (Kubernetes' default: Age).
    pub columns: Vec<Column>,
    /// The `status` subresource is enabled.
    pub status: bool,
    /// The `scale` subresource, if enabled.
    pub scale: Option<Scale>,
    /// `deprecated` and the warning clients get.
    pub deprecation_warning: Option<String>,
    /// `selectableFields`: field-selector names (`spec.color`) and their paths.
    pub selectable: Vec<(String, JsonPath)>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Served {
    /// The served versions of a (valid, stored) CRD, in the order of `spec.versions`. A CRD
    /// being deleted serves nothing new but keeps serving until its objects are gone, so this
    /// does not look at `deletionTimestamp`.
    pub fn all_from(crd: &Value) -> Vec<Served> {
        let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
        let group = str_at(&spec, &["group"]).to_string();
        let names = spec.get("names").cloned().unwrap_or(Value::Null);
        let kind = str_at(&names, &["kind"]).to_string();
        let plural = str_at(&names, &["plural"]).to_string();
        if group.is_empty() || kind.is_empty() || plural.is_empty() {
            return Vec::new();
        }
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let storage_version = versions
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .map(|v| str_at(v, &["name"]).to_string())
            .unwrap_or_default();
        let singular = match str_at(&names, &["singular"]) {
            "" => kind.to_lowercase(),
            s => s.to_string(),
        };
        let list_kind = match str_at(&names, &["listKind"]) {
            "" => format!("{kind}List"),
            s => s.to_string(),
        };
        versions
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
            .filter_map(|v| {
                let openapi_schema = v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or(Value::Null);
                let schema = if openapi_schema.is_null() {
                    None
                } else {
                    Some(Schema::parse(&openapi_schema, "").ok()?)
                };
                let columns = columns_of(v);
                let scale = v.pointer("/subresources/scale").map(|s| Scale {
                    spec_replicas: JsonPath::parse(str_at(s, &["specReplicasPath"]))
                        .unwrap_or(JsonPath(Vec::new())),
                    status_replicas: JsonPath::parse(str_at(s, &["statusReplicasPath"]))
                        .unwrap_or(JsonPath(Vec::new())),
                    label_selector: JsonPath::parse(str_at(s, &["labelSelectorPath"])).ok(),
                });
                let name = str_at(v, &["name"]).to_string();
                let deprecation_warning = (v.get("deprecated").and_then(Value::as_bool)
                    == Some(true))
                .then(|| match str_at(v, &["deprecationWarning"]) {
                    "" => format!("{group}/{name} {kind} is deprecated"),
                    w => w.to_string(),
                });
                let selectable = v
                    .get("selectableFields")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| {
                                let jp = str_at(f, &["jsonPath"]);
                                let path = JsonPath::parse(jp).ok()?;
                                Some((jp.trim_start_matches('.').to_string(), path))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Served {
                    selectable,
                    crd_name: str_at(crd, &["metadata", "name"]).to_string(),
                    crd_uid: str_at(crd, &["metadata", "uid"]).to_string(),
                    group: group.clone(),
                    version: name,
                    storage_version: storage_version.clone(),
                    kind: kind.clone(),
                    list_kind: list_kind.clone(),
                    plural: plural.clone(),
                    singular: singular.clone(),
                    short_names: strings(names.get("shortNames")),
                    categories: strings(names.get("categories")),
                    namespaced: str_at(&spec, &["scope"]) != "Cluster",
                    schema,
                    openapi_schema,
                    columns,
                    status: v.pointer("/subresources/status").is_some(),
                    scale,
                    deprecation_warning,
                })
            })
            .collect()
    }

    /// `<group>/<version>`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// Prunes unknown fields (reported as `spec.x` paths for `fieldValidation`) and checks
    /// `metadata` decodes as ObjectMeta. Err is a decoding error (the caller prefixes it with
    /// `<Kind> in version "<v>" cannot be handled as a <Kind>`).
    pub fn normalize(&self, obj: &Value) -> Result<(Value, Vec<String>), String> {
        let Value::Object(m) = obj else {
            return Err("expected an object".into());
        };
        let mut unknown = Vec::new();
        let mut out = m.clone();
        if let Some(meta) = out.get("metadata").cloned() {
            let typed: ObjectMeta = serde_json::from_value(meta.clone())
                .map_err(|e| format!("error decoding metadata: {e}"))?;
            let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
            unknown_in(&meta, &back, "metadata", &mut unknown);
            out.insert("metadata".into(), back);
        }
        let Some(schema) = &self.schema else {
            return Ok((Value::Object(out), unknown));
        };
        let reserved: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| out.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        let mut body = Value::Object(out);
        schema::prune(&mut body, schema, "", &mut unknown);
        let mut result = Map::new();
        for (k, v) in reserved {
            result.insert(k, v);
        }
        if let Value::Object(rest) = body {
            result.extend(rest);
        }
        Ok((Value::Object(result), unknown))
    }

    /// Applies the schema's defaults.
    pub fn defaults(&self, obj: &mut Value) {
        if let Some(schema) = &self.schema {
            let meta = obj.as_object_mut().and_then(|m| m.remove("metadata"));
            schema::apply_defaults(obj, schema);
            if let (Some(meta), Value::Object(m)) = (meta, obj) {
                m.insert("metadata".into(), meta);
            }
        }
    }

    /// Validates an object against the schema (not `apiVersion`, `kind`, `metadata`: the
    /// server checks those for every resource).
    pub fn validate(&self, obj: &Value) -> Vec<Cause> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let mut body = obj.clone();
        if let Value::Object(m) = &mut body {
            for k in ["apiVersion", "kind", "metadata"] {
                m.remove(k);
            }
        }
        let mut root = schema.clone();
        for k in ["apiVersion", "kind", "metadata"] {
            root.properties.remove(k);
        }
        let mut out = Vec::new();
        schema::validate(&body, &root, "", &mut out);
        out
    }

    /// The value of a selectable field for field selectors (scalars as text; missing → "").
    pub fn field(&self, obj: &Value, name: &str) -> Option<String> {
        let (_, path) = self.selectable.iter().find(|(n, _)| n == name)?;
        Some(match path.get(obj) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        })
    }

    /// The cells of the printer columns (after NAME) for an object.
    pub fn cells(&self, obj: &Value) -> Vec<Value> {
        self.columns.iter().map(|c| printer::cell(c, obj)).collect()
    }

    /// The OpenAPI v3 schema Kubernetes publishes for this version: the CRD's schema with
    /// `apiVersion`, `kind` and `metadata` (a `$ref` to ObjectMeta at `meta_ref`) filled in and
    /// the GVK extension.
    pub fn published_schema(&self, meta_ref: &str) -> Value {
        let mut s = match &self.openapi_schema {
            Value::Object(m) => m.clone(),
            _ => {
                let mut m = Map::new();
                m.insert("type".into(), json!("object"));
                m.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                m
            }
        };
        let props = s
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(p) = props {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
            p.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": meta_ref}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
            );
        }
        s.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": self.group, "version": self.version, "kind": self.kind}]),
        );
        Value::Object(s)
    }

    /// The schema name Kubernetes publishes the kind under: the group reversed
    /// (`stable.example.com` → `com.example.stable.v1.CronTab`).
    pub fn schema_name(&self) -> String {
        let reversed: Vec<&str> = self.group.split('.').rev().collect();
        format!("{}.{}.{}", reversed.join("."), self.version, self.kind)
    }

    /// A change of these makes the registry entry a new one (names, scope, subresources,
    /// columns).
    pub fn same_shape(&self, other: &Served) -> bool {
        definition::shape_key(self) == definition::shape_key(other)
    }
}

/// Paths in `raw` that `decoded` dropped.
fn unknown_in(raw: &Value, decoded: &Value, prefix: &str, out: &mut Vec<String>) {
    if let (Value::Object(r), Value::Object(d)) = (raw, decoded) {
        for (k, rv) in r {
            let path = format!("{prefix}.{k}");
            match d.get(k) {
                Some(dv) => unknown_in(rv, dv, &path, out),
                None if rv.is_null() => {}
                None => out.push(path),
            }
        }
    }
}

/// The printer columns of a version: the CRD's, or Kubernetes' default Age column.
fn columns_of(v: &Value) -> Vec<Column> {
    let given = v
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if given.is_empty() {
        return vec![Column {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata".into(),
            priority: 0,
            path: JsonPath(vec![
                printer::Step::Field("metadata".into()),
                printer::Step::Field("creationTimestamp".into()),
            ]),
        }];
    }
    given
        .iter()
        .filter_map(|c| {
            Some(Column {
                name: str_at(c, &["name"]).to_string(),
                type_: str_at(c, &["type"]).to_string(),
                format: str_at(c, &["format"]).to_string(),
                description: str_at(c, &["description"]).to_string(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                path: JsonPath::parse(str_at(c, &["jsonPath"])).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn crontab_crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com", "uid": "u1"},
        "spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}],
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}, "replicas": {"type": "integer", "default": 1}}},
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}},
                {"name": "v0", "served": false, "storage": false}
            ]}})
    }

    #[test]
    fn served_versions_of_a_crd() {
        let served = Served::all_from(&crontab_crd());
        assert_eq!(served.len(), 2);
        let v1 = &served[1];
        assert_eq!(
            (v1.version.as_str(), v1.storage_version.as_str()),
            ("v1", "v1")
        );
        assert_eq!(served[0].storage_version, "v1");
        assert_eq!(v1.singular, "crontab");
        assert_eq!(v1.list_kind, "CronTabList");
        assert!(v1.namespaced && v1.status && v1.scale.is_some());
        assert_eq!(served[0].columns[0].name, "Age");
        assert_eq!(v1.schema_name(), "com.example.stable.v1.CronTab");
    }

    #[test]
    fn normalize_defaults_and_validate() {
        let v1 = Served::all_from(&crontab_crd()).remove(1);
        let (mut obj, unknown) = v1
            .normalize(&json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab",
                "metadata": {"name": "a", "bogus": 1}, "spec": {"cronSpec": "* * * * */5", "x": 1}}))
            .expect("decodes");
        assert_eq!(unknown, vec!["metadata.bogus", "spec.x"]);
        v1.defaults(&mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["metadata"]["name"], "a");
        assert!(v1.validate(&obj).is_empty());
        obj["spec"]["replicas"] = json!("two");
        assert_eq!(
            v1.validate(&obj)[0].message,
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
        assert_eq!(v1.cells(&obj), vec![json!("* * * * */5")]);
        assert!(v1.normalize(&json!({"metadata": {"name": 3}})).is_err());
    }
}
