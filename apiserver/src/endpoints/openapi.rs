//! OpenAPI v3 as Kubernetes publishes it: `/openapi/v3` lists one document per group-version,
//! `/openapi/v3/apis/<group>/<version>` (or `api/v1`) is an OpenAPI 3.0 document with the
//! group-version's operations and `components.schemas`.
//!
//! What clients rely on (kubectl 1.29+):
//! - `kubectl apply`/`create` look for the `fieldValidation` query parameter on the PATCH operation
//!   whose `x-kubernetes-group-version-kind` is the object's GVK; present means "the server
//!   validates" (otherwise kubectl refuses without `--validate=false`).
//! - client-side `kubectl apply` computes strategic merge patches from the schema carrying the
//!   GVK, reading `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key`.
//! - `kubectl explain` finds the GVK on the resource's path operations, then the schema with that
//!   `x-kubernetes-group-version-kind`, and follows `$ref`, `allOf`, `items` and
//!   `additionalProperties`. Schemas are generated with schemars' OpenAPI 3.0 settings, which
//!   (like Kubernetes) wrap a `$ref` that has siblings such as `description` in `allOf`.
//!
//! Documents are built once, on first use, from [`crate::registry::catalog::all`], and cached with their
//! hash. Building never panics the caller: a group-version whose schemas fail to build is logged
//! and left out.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use tracing::{debug, error};

use crate::endpoints::packed::Packed;
use crate::registry::{self, ResourceDef, Subresource};

const SCHEMA_PREFIX: &str = "#/components/schemas/";

/// One published group-version document (its JSON, ending in a newline as Kubernetes'
/// serializer ends documents, kept compressed).
struct Document {
    json: Packed,
    hash: String,
}

/// Everything served under `/openapi/v3`, built once.
struct Published {
    /// Keyed by the index path, e.g. `api/v1`, `apis/apps/v1`.
    documents: BTreeMap<String, Document>,
    index: Value,
}

static PUBLISHED: OnceLock<Published> = OnceLock::new();

fn published() -> &'static Published {
    PUBLISHED.get_or_init(|| publish(registry::catalog::all()))
}

/// The documents of the custom resources served now, rebuilt when they change.
fn custom_published() -> Arc<Published> {
    static CUSTOM: Mutex<Option<(u64, Arc<Published>)>> = Mutex::new(None);
    let generation = registry::custom::generation();
    let Ok(mut cached) = CUSTOM.lock() else {
        return Arc::new(publish(&[]));
    };
    if let Some((g, p)) = cached.as_ref()
        && *g == generation
    {
        return p.clone();
    }
    let defs: Vec<ResourceDef> = registry::custom::defs().into_iter().copied().collect();
    let p = Arc::new(publish(&defs));
    *cached = Some((generation, p.clone()));
    p
}

/// The `/openapi/v3` index: `{"paths":{"apis/apps/v1":{"serverRelativeURL":
/// "/openapi/v3/apis/apps/v1?hash=<HASH>"},…}}`, one entry per served group-version
/// (custom resources' included).
pub fn v3_index() -> Value {
    let mut index = published().index.clone();
    let custom = custom_published();
    if let (Some(Value::Object(paths)), Some(Value::Object(extra))) =
        (index.get_mut("paths"), custom.index.get("paths"))
    {
        for (k, v) in extra {
            paths.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    index
}

/// The OpenAPI 3.0 document (JSON, compressed) of a group-version path (`api/v1`,
/// `apis/<group>/<version>`; surrounding slashes are ignored) and its hash (use as ETag; it is
/// the `hash` query parameter of the index's URL). None for a group-version that is not served.
pub fn v3_document(group_version_path: &str) -> Option<(Packed, String)> {
    let path = group_version_path.trim_matches('/');
    if let Some(doc) = published().documents.get(path) {
        return Some((doc.json.clone(), doc.hash.clone()));
    }
    let custom = custom_published();
    let doc = custom.documents.get(path)?;
    Some((doc.json.clone(), doc.hash.clone()))
}

fn publish(resources: &[ResourceDef]) -> Published {
    let mut by_gv: BTreeMap<(String, String), Vec<&ResourceDef>> = BTreeMap::new();
    for r in resources {
        by_gv
            .entry((r.group.to_string(), r.version.to_string()))
            .or_default()
            .push(r);
    }
    let mut documents = BTreeMap::new();
    let mut index = Map::new();
    for ((group, version), defs) in by_gv {
        let path = gv_path(&group, &version);
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            group_version_document(&group, &version, &defs)
        }));
        let document = match built.map(|doc| serde_json::to_vec(&doc)) {
            Ok(Ok(json)) => json,
            Ok(Err(e)) => {
                error!(%path, error = %e, "cannot serialize OpenAPI v3 document");
                continue;
            }
            Err(_) => {
                error!(%path, "building the OpenAPI v3 document panicked; not serving it");
                continue;
            }
        };
        let hash = content_hash(&document);
        debug!(%path, bytes = document.len(), %hash, "built OpenAPI v3 document");
        let mut document = document;
        document.push(b'\n');
        index.insert(
            path.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") }),
        );
        documents.insert(
            path,
            Document {
                json: Packed::new(&document),
                hash,
            },
        );
    }
    Published {
        documents,
        index: json!({ "paths": index }),
    }
}

/// `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable 128-bit FNV-1a hash as 32 upper-case hex digits (clients treat it as opaque; it only
/// has to change when the document does).
fn content_hash(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME));
    format!("{hash:032X}")
}

/// `apps` → `Apps`, `rbac.authorization.k8s.io` → `RbacAuthorization`, `` → `Core`: the group
/// part of Kubernetes' operation IDs.
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .strip_suffix(".k8s.io")
        .unwrap_or(group)
        .split('.')
        .map(capitalize)
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The schema name a generator returned a `$ref` to, if it did.
fn ref_name(schema: &schemars::Schema) -> Option<String> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(SCHEMA_PREFIX))
        .map(str::to_string)
}

/// Adds `schema` to the generator's definitions under its own name (or `fallback` when the
/// type's schema was inlined) and returns the name.
fn definition_name(
    generator: &mut SchemaGenerator,
    schema: schemars::Schema,
    fallback: String,
) -> String {
    if let Some(name) = ref_name(&schema) {
        return name;
    }
    generator
        .definitions_mut()
        .insert(fallback.clone(), schema.to_value());
    fallback
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{SCHEMA_PREFIX}{name}") })
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

/// The resource's names as used in one document.
struct Names<'a> {
    def: &'a ResourceDef,
    kind_schema: String,
    list_schema: String,
}

/// Builds the OpenAPI 3.0 document of one group-version.
fn group_version_document(group: &str, version: &str, defs: &[&ResourceDef]) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let package = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let mut names = Vec::new();
    let object_meta = defs
        .iter()
        .any(|d| d.custom.is_some())
        .then(|| generator.subschema_for::<metav1::ObjectMeta>());
    for def in defs {
        if let Some(custom) = def.custom {
            // A custom resource's schema is the CRD's, under Kubernetes' name for it.
            let meta_ref = object_meta
                .as_ref()
                .and_then(|m| m.get("$ref"))
                .and_then(Value::as_str)
                .unwrap_or("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
            let kind_schema = custom.schema_name();
            generator
                .definitions_mut()
                .insert(kind_schema.clone(), custom.published_schema(meta_ref));
            names.push(Names {
                def,
                list_schema: format!("{kind_schema}List"),
                kind_schema,
            });
            continue;
        }
        let schema = (def.schema)(&mut generator);
        let fallback = format!("io.k8s.api.{package}.{version}.{}", def.kind);
        let kind_schema = definition_name(&mut generator, schema, fallback);
        let list_schema = format!("{kind_schema}List");
        names.push(Names {
            def,
            kind_schema,
            list_schema,
        });
    }
    let meta = "io.k8s.apimachinery.pkg.apis.meta.v1";
    let list_meta = generator.subschema_for::<metav1::ListMeta>();
    let list_meta = definition_name(&mut generator, list_meta, format!("{meta}.ListMeta"));
    for (schema, name) in [
        (
            generator.subschema_for::<metav1::DeleteOptions>(),
            "DeleteOptions",
        ),
        (generator.subschema_for::<metav1::Status>(), "Status"),
        (generator.subschema_for::<metav1::Patch>(), "Patch"),
        (
            generator.subschema_for::<metav1::APIResourceList>(),
            "APIResourceList",
        ),
    ] {
        definition_name(&mut generator, schema, format!("{meta}.{name}"));
    }
    let has_scale = defs.iter().any(|d| d.has_subresource(Subresource::Scale));
    if has_scale {
        generator.subschema_for::<Scale>();
    }

    let mut schemas = generator.take_definitions(true);
    if has_scale {
        add_gvk(
            &mut schemas,
            "io.k8s.api.autoscaling.v1.Scale",
            gvk("autoscaling", "v1", "Scale"),
        );
    }
    for n in &names {
        add_gvk(
            &mut schemas,
            &n.kind_schema,
            gvk(group, version, n.def.kind),
        );
        schemas.insert(
            n.list_schema.clone(),
            list_schema(n, &list_meta, group, version),
        );
    }
    // Patch and list metadata from the one table of Kubernetes' struct tags (k8s-openapi's
    // schemas do not carry them).
    for rule in crate::schema_strategy::RULES {
        let Some(prop) = schemas
            .get_mut(rule.type_name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(rule.property))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        crate::schema_strategy::annotate(prop, rule);
    }
    schemas.sort_keys();

    let mut paths = Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    let gv_camel = format!("{}{}", group_camel(group), capitalize(version));
    let tag = {
        let g = group_camel(group);
        let mut chars = g.chars();
        let lower: String = chars
            .next()
            .map(|c| c.to_lowercase().chain(chars).collect())
            .unwrap_or_default();
        format!("{lower}_{version}")
    };
    paths.insert(
        format!("{prefix}/"),
        json!({ "get": {
            "tags": [tag],
            "description": "get available resources",
            "operationId": format!("get{gv_camel}APIResources"),
            "responses": {
                "200": response("OK", "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList"),
                "401": { "description": "Unauthorized" },
            },
        }}),
    );
    for n in &names {
        resource_paths(&mut paths, &prefix, &gv_camel, &tag, group, version, n);
    }

    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": format!("lotse-{}", env!("CARGO_PKG_VERSION")) },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                },
            },
        },
    })
}

/// Appends a GVK to a schema's `x-kubernetes-group-version-kind` list.
fn add_gvk(schemas: &mut Map<String, Value>, name: &str, gvk: Value) {
    let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) else {
        return;
    };
    let list = schema
        .entry("x-kubernetes-group-version-kind")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        if !list.contains(&gvk) {
            list.push(gvk);
        }
    } else {
        *list = Value::Array(vec![gvk]);
    }
}

/// The `<Kind>List` schema, as Kubernetes publishes it.
fn list_schema(n: &Names<'_>, list_meta: &str, group: &str, version: &str) -> Value {
    let kind = n.def.kind;
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string",
            },
            "items": {
                "description": format!("Items is the list of {kind} objects."),
                "type": "array",
                "items": { "allOf": [schema_ref(&n.kind_schema)], "default": {} },
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string",
            },
            "metadata": {
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "allOf": [schema_ref(list_meta)],
                "default": {},
            },
        },
        "x-kubernetes-group-version-kind": [gvk(group, version, &n.def.list_kind())],
    })
}

fn response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema_ref(schema) } },
    })
}

fn param(name: &str, location: &str, type_: &str, description: &str) -> Value {
    let mut p = json!({
        "name": name,
        "in": location,
        "description": description,
        "schema": { "type": type_, "uniqueItems": true },
    });
    if location == "path" {
        p["required"] = Value::Bool(true);
    }
    p
}

fn pretty() -> Value {
    param(
        "pretty",
        "query",
        "string",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
    )
}

fn dry_run() -> Value {
    param(
        "dryRun",
        "query",
        "string",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
    )
}

fn field_manager(patch: bool) -> Value {
    let extra = if patch {
        " This field is required for apply requests (application/apply-patch) but optional for non-apply patch types (JsonPatch, MergePatch, StrategicMergePatch)."
    } else {
        ""
    };
    param(
        "fieldManager",
        "query",
        "string",
        &format!(
            "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.{extra}"
        ),
    )
}

fn field_validation() -> Value {
    param(
        "fieldValidation",
        "query",
        "string",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
    )
}

fn force() -> Value {
    param(
        "force",
        "query",
        "boolean",
        "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
    )
}

fn list_params() -> Vec<Value> {
    vec![
        param(
            "allowWatchBookmarks",
            "query",
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.",
        ),
        param(
            "continue",
            "query",
            "string",
            "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize. If the specified continue value is no longer valid whether due to expiration (generally five to fifteen minutes) or a configuration change on the server, the server will respond with a 410 ResourceExpired error together with a continue token.",
        ),
        param(
            "fieldSelector",
            "query",
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        param(
            "labelSelector",
            "query",
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        param(
            "limit",
            "query",
            "integer",
            "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.",
        ),
        param(
            "resourceVersion",
            "query",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
        ),
        param(
            "resourceVersionMatch",
            "query",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
        ),
        param(
            "sendInitialEvents",
            "query",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection. Once all such events have been sent, a synthetic \"Bookmark\" event  will be sent. The bookmark will report the ResourceVersion (RV) corresponding to the set of objects, and be marked with `\"k8s.io/initial-events-end\": \"true\"` annotation.",
        ),
        param(
            "timeoutSeconds",
            "query",
            "integer",
            "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.",
        ),
        param(
            "watch",
            "query",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        param(
            "gracePeriodSeconds",
            "query",
            "integer",
            "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.",
        ),
        param(
            "ignoreStoreReadErrorWithClusterDefaultValue",
            "query",
            "boolean",
            "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error. A resource is considered corrupt if it can not be retrieved from the underlying storage successfully because of a) its data can not be transformed e.g. decryption failure, or b) it fails to decode into an object. NOTE: unsafe deletion ignores finalizer constraints, skips precondition checks, and removes the object from the storage. WARNING: This may potentially break the cluster if the workload associated with the resource being unsafe-deleted relies on normal deletion flow. Use only if you REALLY know what you are doing. The default value is false, and the user must opt in to enable it",
        ),
        param(
            "orphanDependents",
            "query",
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.",
        ),
        param(
            "propagationPolicy",
            "query",
            "string",
            "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. The default policy is decided by the existing finalizer set in the metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.",
        ),
    ]
}

/// One operation object with Kubernetes' vendor extensions.
struct Op<'a> {
    id: String,
    description: String,
    action: &'a str,
    gvk: Value,
    parameters: Vec<Value>,
    request_body: Option<Value>,
    responses: Vec<(&'a str, Value)>,
}

impl Op<'_> {
    fn into_value(self, tag: &str) -> Value {
        let mut responses = Map::new();
        for (code, r) in self.responses {
            responses.insert(code.to_string(), r);
        }
        responses.insert("401".into(), json!({ "description": "Unauthorized" }));
        let mut op = json!({
            "tags": [tag],
            "description": self.description,
            "operationId": self.id,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if !self.parameters.is_empty() {
            op["parameters"] = Value::Array(self.parameters);
        }
        if let Some(body) = self.request_body {
            op["requestBody"] = body;
        }
        op
    }
}

fn body_of(schema: &str) -> Value {
    json!({ "content": { "*/*": { "schema": schema_ref(schema) } }, "required": true })
}

fn patch_body(def: &ResourceDef) -> Value {
    let schema = json!({ "schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch") });
    let mut body = json!({
        "content": {
            "application/apply-patch+yaml": schema,
            "application/json-patch+json": schema,
            "application/merge-patch+json": schema,
            "application/strategic-merge-patch+json": schema,
        },
        "required": true,
    });
    // Custom resources take no strategic merge patches (kubectl then sends a merge patch).
    if def.custom.is_some()
        && let Some(Value::Object(content)) = body.get_mut("content")
    {
        content.remove("application/strategic-merge-patch+json");
    }
    body
}

fn delete_body() -> Value {
    json!({ "content": { "*/*": { "schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions") } } })
}

/// Adds the collection, item, all-namespaces and `/status` / `/scale` paths of one resource.
fn resource_paths(
    paths: &mut Map<String, Value>,
    prefix: &str,
    gv_camel: &str,
    tag: &str,
    group: &str,
    version: &str,
    n: &Names<'_>,
) {
    let def = n.def;
    let kind = def.kind;
    let the_gvk = gvk(group, version, kind);
    let (ns, collection) = if def.namespaced {
        (
            "Namespaced",
            format!("{prefix}/namespaces/{{namespace}}/{}", def.plural),
        )
    } else {
        ("", format!("{prefix}/{}", def.plural))
    };
    let item = format!("{collection}/{{name}}");
    let scope_params = |with_name: bool| {
        let mut p = Vec::new();
        if with_name {
            p.push(param(
                "name",
                "path",
                "string",
                &format!("name of the {kind}"),
            ));
        }
        if def.namespaced {
            p.push(param(
                "namespace",
                "path",
                "string",
                "object name and auth scope, such as for teams and projects",
            ));
        }
        p.push(pretty());
        Value::Array(p)
    };
    let kind_ok = |code| (code, response("OK", &n.kind_schema));
    let kind_created = |code| (code, response("Created", &n.kind_schema));
    let kind_accepted = |code| (code, response("Accepted", &n.kind_schema));

    // Collection: list, create, deletecollection (Kubernetes serves no deletecollection for
    // namespaces).
    let list_response = json!({
        "description": "OK",
        "content": {
            "application/json": { "schema": schema_ref(&n.list_schema) },
            "application/json;stream=watch": { "schema": schema_ref(&n.list_schema) },
        },
    });
    let mut collection_item = json!({
        "get": Op {
            id: format!("list{gv_camel}{ns}{kind}"),
            description: format!("list or watch objects of kind {kind}"),
            action: "list",
            gvk: the_gvk.clone(),
            parameters: list_params(),
            request_body: None,
            responses: vec![("200", list_response.clone())],
        }.into_value(tag),
        "post": Op {
            id: format!("create{gv_camel}{ns}{kind}"),
            description: format!("create a {kind}"),
            action: "post",
            gvk: the_gvk.clone(),
            parameters: vec![dry_run(), field_manager(false), field_validation()],
            request_body: Some(body_of(&n.kind_schema)),
            responses: vec![kind_ok("200"), kind_created("201"), kind_accepted("202")],
        }.into_value(tag),
        "parameters": scope_params(false),
    });
    if !(group.is_empty() && def.plural == "namespaces") {
        let mut parameters = delete_params();
        parameters.extend(list_params());
        collection_item["delete"] = Op {
            id: format!("delete{gv_camel}Collection{ns}{kind}"),
            description: format!("delete collection of {kind}"),
            action: "deletecollection",
            gvk: the_gvk.clone(),
            parameters,
            request_body: Some(delete_body()),
            responses: vec![(
                "200",
                response("OK", "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
            )],
        }
        .into_value(tag);
    }
    paths.insert(collection, collection_item);

    // Item: read, replace, delete, patch.
    paths.insert(
        item.clone(),
        json!({
            "get": Op {
                id: format!("read{gv_camel}{ns}{kind}"),
                description: format!("read the specified {kind}"),
                action: "get",
                gvk: the_gvk.clone(),
                parameters: vec![],
                request_body: None,
                responses: vec![kind_ok("200")],
            }.into_value(tag),
            "put": Op {
                id: format!("replace{gv_camel}{ns}{kind}"),
                description: format!("replace the specified {kind}"),
                action: "put",
                gvk: the_gvk.clone(),
                parameters: vec![dry_run(), field_manager(false), field_validation()],
                request_body: Some(body_of(&n.kind_schema)),
                responses: vec![kind_ok("200"), kind_created("201")],
            }.into_value(tag),
            "delete": Op {
                id: format!("delete{gv_camel}{ns}{kind}"),
                description: format!("delete a {kind}"),
                action: "delete",
                gvk: the_gvk.clone(),
                parameters: delete_params(),
                request_body: Some(delete_body()),
                responses: vec![kind_ok("200"), kind_accepted("202")],
            }.into_value(tag),
            "patch": Op {
                id: format!("patch{gv_camel}{ns}{kind}"),
                description: format!("partially update the specified {kind}"),
                action: "patch",
                gvk: the_gvk.clone(),
                parameters: vec![dry_run(), field_manager(true), field_validation(), force()],
                request_body: Some(patch_body(def)),
                responses: vec![kind_ok("200"), kind_created("201")],
            }.into_value(tag),
            "parameters": scope_params(true),
        }),
    );

    if def.namespaced {
        let mut all_namespaces_params = list_params();
        all_namespaces_params.push(pretty());
        paths.insert(
            format!("{prefix}/{}", def.plural),
            json!({
                "get": Op {
                    id: format!("list{gv_camel}{kind}ForAllNamespaces"),
                    description: format!("list or watch objects of kind {kind}"),
                    action: "list",
                    gvk: the_gvk.clone(),
                    parameters: vec![],
                    request_body: None,
                    responses: vec![("200", list_response)],
                }.into_value(tag),
                "parameters": all_namespaces_params,
            }),
        );
    }

    // Subresources with the get/put/patch shape: /status and pods/ephemeralcontainers (the
    // kind itself) and /scale (autoscaling/v1 Scale).
    let mut subresources = Vec::new();
    if def.has_subresource(Subresource::Status) {
        subresources.push(("status", "Status", the_gvk.clone(), n.kind_schema.clone()));
    }
    if def.has_subresource(Subresource::EphemeralContainers) {
        subresources.push((
            "ephemeralcontainers",
            "Ephemeralcontainers",
            the_gvk.clone(),
            n.kind_schema.clone(),
        ));
    }
    if def.has_subresource(Subresource::Scale) {
        subresources.push((
            "scale",
            "Scale",
            gvk("autoscaling", "v1", "Scale"),
            "io.k8s.api.autoscaling.v1.Scale".to_string(),
        ));
    }
    for (segment, suffix, sub_gvk, schema) in subresources {
        let what = format!("{segment} of the specified {kind}");
        paths.insert(
            format!("{item}/{segment}"),
            json!({
                "get": Op {
                    id: format!("read{gv_camel}{ns}{kind}{suffix}"),
                    description: format!("read {what}"),
                    action: "get",
                    gvk: sub_gvk.clone(),
                    parameters: vec![],
                    request_body: None,
                    responses: vec![("200", response("OK", &schema))],
                }.into_value(tag),
                "put": Op {
                    id: format!("replace{gv_camel}{ns}{kind}{suffix}"),
                    description: format!("replace {what}"),
                    action: "put",
                    gvk: sub_gvk.clone(),
                    parameters: vec![dry_run(), field_manager(false), field_validation()],
                    request_body: Some(body_of(&schema)),
                    responses: vec![("200", response("OK", &schema)), ("201", response("Created", &schema))],
                }.into_value(tag),
                "patch": Op {
                    id: format!("patch{gv_camel}{ns}{kind}{suffix}"),
                    description: format!("partially update {what}"),
                    action: "patch",
                    gvk: sub_gvk,
                    parameters: vec![dry_run(), field_manager(true), field_validation(), force()],
                    request_body: Some(patch_body(def)),
                    responses: vec![("200", response("OK", &schema)), ("201", response("Created", &schema))],
                }.into_value(tag),
                "parameters": scope_params(true),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::{CONFIGMAPS, NAMESPACES};
    use crate::registry::schema_of;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;

    const DEPLOYMENTS: ResourceDef = ResourceDef {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        subresources: &[Subresource::Status, Subresource::Scale],
        schema: schema_of::<Deployment>,
        ..CONFIGMAPS
    };
    const PODS: ResourceDef = ResourceDef {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        subresources: &[Subresource::Status, Subresource::EphemeralContainers],
        schema: schema_of::<Pod>,
        ..CONFIGMAPS
    };

    fn test_docs() -> Published {
        publish(&[NAMESPACES, PODS, CONFIGMAPS, DEPLOYMENTS])
    }

    fn doc(published: &Published, path: &str) -> Value {
        serde_json::from_slice(&published.documents[path].json.plain().unwrap()).unwrap()
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn index_lists_group_versions_with_hashes() {
        let published = test_docs();
        let paths = published.index["paths"].as_object().unwrap();
        assert_eq!(paths.keys().collect::<Vec<_>>(), ["api/v1", "apis/apps/v1"]);
        let url = paths["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        let hash = &published.documents["apis/apps/v1"].hash;
        assert_eq!(url, format!("/openapi/v3/apis/apps/v1?hash={hash}"));
        // Stable: building again gives the same bytes and hash.
        assert_eq!(test_docs().documents["apis/apps/v1"].hash, *hash);
    }

    #[test]
    fn served_registry_is_published() {
        let index = v3_index();
        for r in registry::catalog::all() {
            let path = gv_path(r.group, r.version);
            assert!(
                index["paths"].get(&path).is_some(),
                "{path} missing from index"
            );
            let (json, hash) = v3_document(&format!("/{path}")).unwrap();
            let json = json.plain().unwrap();
            assert_eq!(hash, content_hash(json.strip_suffix(b"\n").unwrap()));
        }
        assert!(v3_document("apis/nope/v1").is_none());
    }

    #[test]
    fn deployment_schema_and_patch_operation() {
        let published = test_docs();
        let doc = doc(&published, "apis/apps/v1");
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{ "group": "apps", "kind": "Deployment", "version": "v1" }])
        );
        // kubectl explain deployment.spec: the field keeps its description, the type is behind allOf.
        let spec = &deployment["properties"]["spec"];
        assert!(
            spec["description"]
                .as_str()
                .unwrap()
                .contains("desired behavior")
        );
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(
            schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"]["description"]
                .is_string()
        );
        assert_eq!(
            schemas["io.k8s.api.apps.v1.DeploymentList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "DeploymentList"
        );

        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({ "group": "apps", "kind": "Deployment", "version": "v1" })
        );
        assert_eq!(patch["x-kubernetes-action"], "patch");
        let params: Vec<_> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            params,
            ["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        let content = patch["requestBody"]["content"].as_object().unwrap();
        assert!(content.contains_key("application/strategic-merge-patch+json"));
        assert!(content.contains_key("application/apply-patch+yaml"));

        // Every PATCH carrying the Deployment GVK advertises fieldValidation (kubectl checks the first
        // one it finds).
        for (path, item) in doc["paths"].as_object().unwrap() {
            if let Some(patch) = item.get("patch") {
                let names: Vec<_> = patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| &p["name"])
                    .collect();
                assert!(names.contains(&&json!("fieldValidation")), "{path}");
            }
        }
        let scale =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
        assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
        assert!(
            doc["paths"]["/apis/apps/v1/deployments"]["get"]["x-kubernetes-group-version-kind"]
                .is_object()
        );
    }

    #[test]
    fn core_document_has_patch_merge_keys_and_cluster_scoped_paths() {
        let published = test_docs();
        let doc = doc(&published, "api/v1");
        let containers =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert!(doc["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(doc["paths"]["/api/v1/namespaces"].get("delete").is_none());
        assert_eq!(
            doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["get"]["operationId"],
            "listCoreV1NamespacedPod"
        );
        let ec = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers"];
        assert_eq!(
            ec["patch"]["operationId"],
            "patchCoreV1NamespacedPodEphemeralcontainers"
        );
        assert_eq!(ec["get"]["x-kubernetes-group-version-kind"]["kind"], "Pod");
    }

    #[test]
    fn all_refs_resolve() {
        let published = test_docs();
        for path in published.documents.keys() {
            let doc = doc(&published, path);
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            assert!(!refs.is_empty());
            for r in refs {
                let name = r
                    .strip_prefix(SCHEMA_PREFIX)
                    .unwrap_or_else(|| panic!("{path}: foreign ref {r}"));
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{path}: dangling {r}"
                );
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(group_camel(""), "Core");
        assert_eq!(
            group_camel("rbac.authorization.k8s.io"),
            "RbacAuthorization"
        );
        assert_eq!(
            group_camel("flowcontrol.apiserver.k8s.io"),
            "FlowcontrolApiserver"
        );
        assert_eq!(content_hash(b"a").len(), 32);
    }
}
