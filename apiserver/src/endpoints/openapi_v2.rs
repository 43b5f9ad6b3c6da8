//! OpenAPI v2 (Swagger 2.0) as a gnostic `openapi.v2.Document` protobuf, served at
//! `/openapi/v2` for kubectl 1.27/1.28 (Accept
//! `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) and as JSON otherwise.
//!
//! kubectl reads it for two things: whether the PATCH operation of a kind (found by its
//! `x-kubernetes-group-version-kind`) has the `fieldValidation` query parameter (so the server
//! validates), and the definitions with `x-kubernetes-patch-strategy` /
//! `x-kubernetes-patch-merge-key` for client-side apply. The document is converted from the
//! OpenAPI v3 documents of [`crate::endpoints::openapi`], so both always describe the same API.
//!
//! The message types below are the subset of gnostic's `OpenAPIv2.proto` (package
//! `openapi.v2`) that Lotse fills, with the field numbers of that file.

use std::sync::{Arc, Mutex};

use prost::Message;
use serde_json::{Map, Value, json};

use crate::endpoints::openapi;
use crate::endpoints::packed::Packed;

/// Content-Type of the protobuf document as kube-openapi serves it (clients ask for
/// `...spec.v2@v1.0+protobuf`, which Go's media type parser rejects in a response).
pub const PROTOBUF_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

#[allow(missing_docs)]
pub mod pb {
    //! gnostic `openapi.v2` messages (subset).

    /// Declares prost messages, one line per field: `(prost field options) name: Type`.
    macro_rules! messages {
        ($($name:ident { $(($($opt:tt)*) $field:ident: $ty:ty),* $(,)? })*) => {$(
            #[derive(Clone, PartialEq, prost::Message)]
            pub struct $name {
                $(#[prost($($opt)*)] pub $field: $ty,)*
            }
        )*};
    }

    /// Declares gnostic's `Named<X>` pair messages: `name` (1) and `value` (2).
    macro_rules! named {
        ($($name:ident => $value:ty),* $(,)?) => {
            messages! {$(
                $name {
                    (string, tag = "1") name: String,
                    (message, optional, tag = "2") value: Option<$value>,
                }
            )*}
        };
    }

    /// Declares the non-body parameter sub-schemas, which differ only in the tags of `type` and
    /// `uniqueItems`.
    macro_rules! sub_schemas {
        ($($name:ident { type: $type_tag:tt, unique_items: $unique_tag:tt }),* $(,)?) => {
            messages! {$(
                $name {
                    (bool, tag = "1") required: bool,
                    (string, tag = "2") r#in: String,
                    (string, tag = "3") description: String,
                    (string, tag = "4") name: String,
                    (string, tag = $type_tag) r#type: String,
                    (bool, tag = $unique_tag) unique_items: bool,
                }
            )*}
            $(impl $name {
                /// A parameter located `r#in`, with `uniqueItems` set as kube-openapi writes it.
                pub fn new(
                    required: bool,
                    r#in: &str,
                    description: String,
                    name: String,
                    r#type: String,
                ) -> Self {
                    Self {
                        required,
                        r#in: r#in.into(),
                        description,
                        name,
                        r#type,
                        unique_items: true,
                    }
                }
            })*
        };
    }

    sub_schemas! {
        QueryParameterSubSchema { type: "6", unique_items: "20" },
        PathParameterSubSchema { type: "5", unique_items: "19" },
    }

    named! {
        NamedAny => Any,
        NamedPathItem => PathItem,
        NamedResponseValue => ResponseValue,
        NamedSchema => Schema,
    }

    messages! {
        Document {
            (string, tag = "1") swagger: String,
            (message, optional, tag = "2") info: Option<Info>,
            (string, repeated, tag = "7") produces: Vec<String>,
            (message, optional, tag = "8") paths: Option<Paths>,
            (message, optional, tag = "9") definitions: Option<Definitions>,
        }
        Info {
            (string, tag = "1") title: String,
            (string, tag = "2") version: String,
        }
        Any { (string, tag = "2") yaml: String }
        Paths { (message, repeated, tag = "2") path: Vec<NamedPathItem> }
        PathItem {
            (message, optional, tag = "2") get: Option<Operation>,
            (message, optional, tag = "3") put: Option<Operation>,
            (message, optional, tag = "4") post: Option<Operation>,
            (message, optional, tag = "5") delete: Option<Operation>,
            (message, optional, tag = "8") patch: Option<Operation>,
            (message, repeated, tag = "9") parameters: Vec<ParametersItem>,
        }
        Operation {
            (string, repeated, tag = "1") tags: Vec<String>,
            (string, tag = "3") description: String,
            (string, tag = "5") operation_id: String,
            (string, repeated, tag = "6") produces: Vec<String>,
            (string, repeated, tag = "7") consumes: Vec<String>,
            (message, repeated, tag = "8") parameters: Vec<ParametersItem>,
            (message, optional, tag = "9") responses: Option<Responses>,
            (string, repeated, tag = "10") schemes: Vec<String>,
            (message, repeated, tag = "13") vendor_extension: Vec<NamedAny>,
        }
        ParametersItem { (message, optional, tag = "1") parameter: Option<Parameter> }
        Parameter {
            (message, optional, tag = "1") body_parameter: Option<BodyParameter>,
            (message, optional, tag = "2") non_body_parameter: Option<NonBodyParameter>,
        }
        BodyParameter {
            (string, tag = "1") description: String,
            (string, tag = "2") name: String,
            (string, tag = "3") r#in: String,
            (bool, tag = "4") required: bool,
            (message, optional, tag = "5") schema: Option<Schema>,
        }
        NonBodyParameter {
            (message, optional, tag = "3") query_parameter_sub_schema: Option<QueryParameterSubSchema>,
            (message, optional, tag = "4") path_parameter_sub_schema: Option<PathParameterSubSchema>,
        }
        Responses { (message, repeated, tag = "1") response_code: Vec<NamedResponseValue> }
        ResponseValue { (message, optional, tag = "1") response: Option<Response> }
        Response {
            (string, tag = "1") description: String,
            (message, optional, tag = "2") schema: Option<SchemaItem>,
        }
        SchemaItem { (message, optional, tag = "1") schema: Option<Schema> }
        Definitions { (message, repeated, tag = "1") additional_properties: Vec<NamedSchema> }
        Properties { (message, repeated, tag = "1") additional_properties: Vec<NamedSchema> }
        AdditionalPropertiesItem {
            (message, optional, boxed, tag = "1") schema: Option<Box<Schema>>,
            (bool, optional, tag = "2") boolean: Option<bool>,
        }
        TypeItem { (string, repeated, tag = "1") value: Vec<String> }
        ItemsItem { (message, repeated, tag = "1") schema: Vec<Schema> }
        Schema {
            (string, tag = "1") r#ref: String,
            (string, tag = "2") format: String,
            (string, tag = "4") description: String,
            (string, repeated, tag = "19") required: Vec<String>,
            (message, optional, boxed, tag = "21") additional_properties: Option<Box<AdditionalPropertiesItem>>,
            (message, optional, tag = "22") r#type: Option<TypeItem>,
            (message, optional, tag = "23") items: Option<ItemsItem>,
            (message, optional, tag = "25") properties: Option<Properties>,
            (message, repeated, tag = "31") vendor_extension: Vec<NamedAny>,
        }
    }
}

/// Both encodings, kept compressed.
struct Built {
    json: Packed,
    protobuf: Packed,
}

/// The document, rebuilt when the served custom resources change.
fn built() -> Arc<Built> {
    static BUILT: Mutex<Option<(u64, Arc<Built>)>> = Mutex::new(None);
    let generation = crate::registry::custom::generation();
    let build = || {
        let doc = document_json();
        let protobuf = to_proto(&doc).encode_to_vec();
        Arc::new(Built {
            json: Packed::new(&serde_json::to_vec(&doc).unwrap_or_default()),
            protobuf: Packed::new(&protobuf),
        })
    };
    let Ok(mut cached) = BUILT.lock() else {
        return build();
    };
    if let Some((g, b)) = cached.as_ref()
        && *g == generation
    {
        return b.clone();
    }
    let b = build();
    *cached = Some((generation, b.clone()));
    b
}

/// The document as gnostic protobuf.
pub fn protobuf() -> Packed {
    built().protobuf.clone()
}

/// The document as Swagger 2.0 JSON.
pub fn json() -> Packed {
    built().json.clone()
}

/// `#/components/schemas/X` → `#/definitions/X`.
fn v2_ref(r: &str) -> String {
    format!("#/definitions/{}", r.rsplit('/').next().unwrap_or(r))
}

/// Converts a v3 schema (schemars OpenAPI 3.0 output) into Swagger 2.0 JSON schema.
fn schema_v2(s: &Value) -> Value {
    let Value::Object(m) = s else {
        return json!({});
    };
    let mut out = Map::new();
    // `allOf: [{$ref}]` with siblings is how v3 writes a described reference.
    if let Some(Value::Array(all)) = m.get("allOf")
        && let [only] = all.as_slice()
        && let Some(r) = only.get("$ref").and_then(Value::as_str)
    {
        out.insert("$ref".into(), Value::from(v2_ref(r)));
    }
    for (k, v) in m {
        match k.as_str() {
            "$ref" => {
                out.insert(
                    "$ref".into(),
                    Value::from(v2_ref(v.as_str().unwrap_or_default())),
                );
            }
            "type" | "format" | "description" | "required" => {
                out.insert(k.clone(), v.clone());
            }
            "items" => {
                out.insert(k.clone(), schema_v2(v));
            }
            "additionalProperties" => {
                out.insert(
                    k.clone(),
                    if v.is_object() {
                        schema_v2(v)
                    } else {
                        v.clone()
                    },
                );
            }
            "properties" => {
                let props: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(n, p)| (n.clone(), schema_v2(p)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            x if x.starts_with("x-kubernetes-") => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    // Swagger arrays need items; a v3 array without them holds anything.
    if out.get("type").and_then(Value::as_str) == Some("array") && !out.contains_key("items") {
        out.insert("items".into(), json!({}));
    }
    Value::Object(out)
}

fn parameter_v2(p: &Value) -> Value {
    let mut out = json!({
        "name": p.get("name").cloned().unwrap_or_default(),
        "in": p.get("in").cloned().unwrap_or_default(),
        "description": p.get("description").cloned().unwrap_or_default(),
    });
    if p.get("required").and_then(Value::as_bool) == Some(true) {
        out["required"] = Value::Bool(true);
    }
    out["type"] = p
        .pointer("/schema/type")
        .cloned()
        .unwrap_or_else(|| Value::from("string"));
    out["uniqueItems"] = Value::Bool(true);
    out
}

fn operation_v2(op: &Value) -> Value {
    let mut out = Map::new();
    for k in ["description", "operationId", "tags"] {
        if let Some(v) = op.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("schemes".into(), json!(["https"]));
    let mut consumes = Vec::new();
    let mut params: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(parameter_v2)
        .collect();
    if let Some(Value::Object(content)) = op.pointer("/requestBody/content") {
        consumes = content.keys().cloned().collect();
        let schema = content
            .values()
            .next()
            .and_then(|c| c.get("schema"))
            .map(schema_v2)
            .unwrap_or_else(|| json!({}));
        params.insert(
            0,
            json!({"name": "body", "in": "body", "required": true, "schema": schema}),
        );
    }
    if !consumes.is_empty() {
        out.insert("consumes".into(), json!(consumes));
    }
    out.insert(
        "produces".into(),
        json!([
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf"
        ]),
    );
    out.insert("parameters".into(), Value::Array(params));
    let mut responses = Map::new();
    for (code, r) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut resp = json!({"description": r.get("description").cloned().unwrap_or_default()});
        if let Some(s) = r.pointer("/content/application~1json/schema") {
            resp["schema"] = schema_v2(s);
        }
        responses.insert(code.clone(), resp);
    }
    out.insert("responses".into(), Value::Object(responses));
    for (k, v) in op.as_object().into_iter().flatten() {
        if k.starts_with("x-kubernetes-") {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The whole API as one Swagger 2.0 document, from the per-group-version v3 documents.
fn document_json() -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    let index = openapi::v3_index();
    for gv in index
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        let Some(bytes) = openapi::v3_document(gv).and_then(|(doc, _)| doc.plain().ok()) else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        for (name, s) in doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            definitions
                .entry(name.clone())
                .or_insert_with(|| schema_v2(s));
        }
        for (path, item) in doc
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let mut out = Map::new();
            for (method, op) in item.as_object().into_iter().flatten() {
                if method == "parameters" {
                    let ps: Vec<Value> = op
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(parameter_v2)
                        .collect();
                    out.insert("parameters".into(), Value::Array(ps));
                } else {
                    out.insert(method.clone(), operation_v2(op));
                }
            }
            paths.insert(path.clone(), Value::Object(out));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("lotse-{}", env!("CARGO_PKG_VERSION"))},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A vendor extension value as gnostic stores it: YAML text (JSON is YAML).
fn named_any(name: &str, v: &Value) -> pb::NamedAny {
    pb::NamedAny {
        name: name.to_string(),
        value: Some(pb::Any {
            yaml: format!("{v}\n"),
        }),
    }
}

fn extensions(m: &Map<String, Value>) -> Vec<pb::NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| named_any(k, v))
        .collect()
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn schema_pb(s: &Value) -> pb::Schema {
    let empty = Map::new();
    let m = s.as_object().unwrap_or(&empty);
    pb::Schema {
        r#ref: str_of(s, "$ref"),
        format: str_of(s, "format"),
        description: str_of(s, "description"),
        required: strings(s, "required"),
        additional_properties: match m.get("additionalProperties") {
            Some(Value::Bool(b)) => Some(Box::new(pb::AdditionalPropertiesItem {
                schema: None,
                boolean: Some(*b),
            })),
            Some(v @ Value::Object(_)) => Some(Box::new(pb::AdditionalPropertiesItem {
                schema: Some(Box::new(schema_pb(v))),
                boolean: None,
            })),
            _ => None,
        },
        r#type: m.get("type").and_then(Value::as_str).map(|t| pb::TypeItem {
            value: vec![t.to_string()],
        }),
        items: m.get("items").map(|i| pb::ItemsItem {
            schema: vec![schema_pb(i)],
        }),
        properties: m
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| pb::Properties {
                additional_properties: p.iter().map(|(n, v)| named_schema(n, v)).collect(),
            }),
        vendor_extension: extensions(m),
    }
}

fn parameter_pb(p: &Value) -> pb::ParametersItem {
    let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let (description, name) = (str_of(p, "description"), str_of(p, "name"));
    let parameter = match p.get("in").and_then(Value::as_str) {
        Some("body") => pb::Parameter {
            body_parameter: Some(pb::BodyParameter {
                description,
                name,
                r#in: "body".into(),
                required,
                schema: p.get("schema").map(schema_pb),
            }),
            ..Default::default()
        },
        Some("path") => non_body(pb::NonBodyParameter {
            path_parameter_sub_schema: Some(pb::PathParameterSubSchema::new(
                true,
                "path",
                description,
                name,
                str_of(p, "type"),
            )),
            ..Default::default()
        }),
        _ => non_body(pb::NonBodyParameter {
            query_parameter_sub_schema: Some(pb::QueryParameterSubSchema::new(
                required,
                "query",
                description,
                name,
                str_of(p, "type"),
            )),
            ..Default::default()
        }),
    };
    pb::ParametersItem {
        parameter: Some(parameter),
    }
}

fn non_body(p: pb::NonBodyParameter) -> pb::Parameter {
    pb::Parameter {
        non_body_parameter: Some(p),
        ..Default::default()
    }
}

/// A named schema (definitions and properties).
fn named_schema(name: &str, s: &Value) -> pb::NamedSchema {
    pb::NamedSchema {
        name: name.to_string(),
        value: Some(schema_pb(s)),
    }
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn operation_pb(op: Option<&Value>) -> Option<pb::Operation> {
    let op = op?;
    let empty = Map::new();
    Some(pb::Operation {
        tags: strings(op, "tags"),
        description: str_of(op, "description"),
        operation_id: str_of(op, "operationId"),
        produces: strings(op, "produces"),
        consumes: strings(op, "consumes"),
        parameters: op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(parameter_pb)
            .collect(),
        responses: Some(pb::Responses {
            response_code: op
                .get("responses")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(code, r)| pb::NamedResponseValue {
                    name: code.clone(),
                    value: Some(pb::ResponseValue {
                        response: Some(pb::Response {
                            description: str_of(r, "description"),
                            schema: r.get("schema").map(|s| pb::SchemaItem {
                                schema: Some(schema_pb(s)),
                            }),
                        }),
                    }),
                })
                .collect(),
        }),
        schemes: strings(op, "schemes"),
        vendor_extension: extensions(op.as_object().unwrap_or(&empty)),
    })
}

fn to_proto(doc: &Value) -> pb::Document {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, item)| pb::NamedPathItem {
            name: name.clone(),
            value: Some(pb::PathItem {
                get: operation_pb(item.get("get")),
                put: operation_pb(item.get("put")),
                post: operation_pb(item.get("post")),
                delete: operation_pb(item.get("delete")),
                patch: operation_pb(item.get("patch")),
                parameters: item
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(parameter_pb)
                    .collect(),
            }),
        })
        .collect();
    let definitions = doc
        .get("definitions")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, s)| named_schema(name, s))
        .collect();
    pb::Document {
        swagger: "2.0".into(),
        info: Some(pb::Info {
            title: "Kubernetes".into(),
            version: str_of(doc.get("info").unwrap_or(&Value::Null), "version"),
        }),
        produces: vec![],
        paths: Some(pb::Paths { path: paths }),
        definitions: Some(pb::Definitions {
            additional_properties: definitions,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_patch_has_field_validation_and_gvk() {
        let doc =
            pb::Document::decode(protobuf().plain().expect("plain").as_ref()).expect("decodes");
        let paths = doc.paths.expect("paths").path;
        let item = paths
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .and_then(|p| p.value.clone())
            .expect("deployment path");
        let patch = item.patch.expect("patch op");
        let gvk = patch
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .expect("gvk");
        let yaml: Value =
            serde_yaml::from_str(&gvk.value.clone().expect("value").yaml).expect("yaml");
        assert_eq!(
            yaml,
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        assert!(patch.parameters.iter().any(|p| {
            p.parameter
                .as_ref()
                .and_then(|p| p.non_body_parameter.as_ref())
                .and_then(|n| n.query_parameter_sub_schema.as_ref())
                .is_some_and(|q| q.name == "fieldValidation")
        }));
    }

    #[test]
    fn definitions_carry_merge_keys_and_refs_resolve() {
        let doc: Value = serde_json::from_slice(&json().plain().expect("plain")).expect("json");
        let defs = doc["definitions"].as_object().expect("definitions");
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            containers["items"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|c| refs(c, out));
                }
                Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let name = r.trim_start_matches("#/definitions/");
            assert!(defs.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn protobuf_matches_json_document() {
        let bytes = protobuf().plain().expect("plain");
        let doc = pb::Document::decode(bytes.as_ref()).expect("decodes");
        // Every field written is a declared one: re-encoding gives the same bytes.
        assert_eq!(doc.encode_to_vec(), bytes.as_ref());
        let js: Value = serde_json::from_slice(&json().plain().expect("plain")).expect("json");
        let paths = &doc.paths.as_ref().expect("paths").path;
        let defs = &doc
            .definitions
            .as_ref()
            .expect("defs")
            .additional_properties;
        assert_eq!(paths.len(), js["paths"].as_object().expect("paths").len());
        assert_eq!(
            defs.len(),
            js["definitions"].as_object().expect("defs").len()
        );
        let item = paths
            .iter()
            .find(|p| p.name == "/api/v1/namespaces/{namespace}/pods")
            .and_then(|p| p.value.clone())
            .expect("pods path");
        let params = |op: &pb::Operation| -> Vec<pb::Parameter> {
            op.parameters
                .iter()
                .filter_map(|p| p.parameter.clone())
                .collect()
        };
        let post = item.post.expect("post");
        let body = params(&post)
            .into_iter()
            .find_map(|p| p.body_parameter)
            .expect("body parameter");
        assert_eq!((body.name.as_str(), body.r#in.as_str()), ("body", "body"));
        assert!(body.required);
        assert_eq!(
            body.schema.expect("schema").r#ref,
            "#/definitions/io.k8s.api.core.v1.Pod"
        );
        let ns = item
            .parameters
            .iter()
            .filter_map(|p| p.parameter.as_ref()?.non_body_parameter.as_ref())
            .find_map(|n| n.path_parameter_sub_schema.clone())
            .expect("namespace path parameter");
        assert_eq!((ns.name.as_str(), ns.r#in.as_str()), ("namespace", "path"));
        assert!(ns.required && ns.unique_items);
        let ok = post
            .responses
            .expect("responses")
            .response_code
            .into_iter()
            .find(|r| r.name == "200")
            .and_then(|r| r.value?.response?.schema?.schema)
            .expect("200 schema");
        assert_eq!(ok.r#ref, "#/definitions/io.k8s.api.core.v1.Pod");
        let labels = defs
            .iter()
            .find(|d| d.name == "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .and_then(|d| d.value.clone()?.properties)
            .and_then(|p| {
                p.additional_properties
                    .into_iter()
                    .find(|p| p.name == "labels")
            })
            .and_then(|p| p.value)
            .expect("ObjectMeta.labels");
        assert_eq!(labels.r#type.expect("type").value, ["object"]);
        let ap = labels.additional_properties.expect("additionalProperties");
        assert_eq!(
            ap.schema.and_then(|s| s.r#type).map(|t| t.value),
            Some(vec!["string".to_string()])
        );
    }
}
