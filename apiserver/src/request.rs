//! Turning an HTTP request into what the API machinery needs: resource path, query options,
//! decoded body.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::registry::{self, ResourceDef};

/// Kubernetes' limit on request bodies (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// A parsed resource path: `/api/v1/namespaces/ns/pods/name/status` and friends.
#[derive(Clone)]
pub struct ResourcePath {
    /// The resource.
    pub def: &'static ResourceDef,
    /// Namespace from the URL, if any.
    pub namespace: Option<String>,
    /// Object name, if the path names one.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
}

/// Parses the segments after `/api/v1` or `/apis/<g>/<v>`.
pub fn parse_resource_path(group: &str, version: &str, segs: &[&str]) -> ApiResult<ResourcePath> {
    let mut namespace = None;
    let mut parts = segs;
    if parts.first() == Some(&"namespaces")
        && parts.len() > 2
        && !matches!(parts[2], "status" | "finalize")
    {
        namespace = Some(parts[1].to_string());
        parts = &parts[2..];
    }
    let Some(resource) = parts.first() else {
        return Err(ApiError::no_such_resource());
    };
    let def = registry::catalog::lookup(group, version, resource)
        .ok_or_else(ApiError::no_such_resource)?;
    if parts.len() > 3 {
        return Err(ApiError::no_such_resource());
    }
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::no_such_resource());
    }
    let name = parts.get(1).map(|s| s.to_string());
    let subresource = parts.get(2).map(|s| s.to_string());
    if let Some(n) = &name
        && n.is_empty()
    {
        return Err(ApiError::no_such_resource());
    }
    Ok(ResourcePath {
        def,
        namespace,
        name,
        subresource,
    })
}

/// Query parameters, first value wins.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(q: Option<&str>) -> Self {
        let mut m = HashMap::new();
        if let Some(q) = q {
            for (k, v) in form_urlencoded(q) {
                m.entry(k).or_insert(v);
            }
        }
        Query(m)
    }

    /// A parameter's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    /// An integer parameter; a malformed value is a 400.
    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?}: must be an integer"))
            }),
        }
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dryRun value: {other:?}: supported values: \"All\""
            ))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Field validation level requested with `fieldValidation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields, warn in a `Warning` header.
    Warn,
    /// Reject unknown fields with 400.
    Strict,
}

impl FieldValidation {
    /// From the query (default Warn, as Kubernetes).
    pub fn from_query(q: &Query) -> ApiResult<Self> {
        match q.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}, must be one of Ignore, Warn, or Strict"
            ))),
        }
    }
}

/// The media type of a body without parameters, lowercased.
pub fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a JSON or YAML body into an object; anything else is 415, syntax errors are 400.
pub fn decode_object(content_type: Option<&str>, body: &Bytes) -> ApiResult<Value> {
    let mt = media_type(content_type);
    let value: Value = match mt.as_str() {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_object(body)?,
        other => {
            return Err(ApiError::unsupported_media_type(
                other,
                &[
                    "application/json",
                    "application/yaml",
                    "application/vnd.kubernetes.protobuf",
                ],
            ));
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: the body is not a JSON object",
        ));
    }
    Ok(value)
}

/// Decodes YAML into JSON, as a 400 on failure.
pub fn decode_yaml(body: &[u8]) -> ApiResult<Value> {
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
}

/// What the client accepts for the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// The object or list as JSON.
    Json,
    /// A `meta.k8s.io/v1` Table (`as=Table`).
    Table,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (`as=PartialObjectMetadata`).
    Metadata,
}

/// Picks the response format from the Accept header.
pub fn response_format(accept: Option<&str>) -> ResponseFormat {
    let Some(accept) = accept else {
        return ResponseFormat::Json;
    };
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table")
            && p.contains("g=meta.k8s.io")
            && (p.contains("v=v1;") || p.ends_with("v=v1") || p.contains("v=v1beta1"))
        {
            return ResponseFormat::Table;
        }
        if p.contains("as=PartialObjectMetadata") {
            return ResponseFormat::Metadata;
        }
        if p.starts_with("application/json")
            || p.starts_with("*/*")
            || p.starts_with("application/vnd.kubernetes.protobuf")
            || p.starts_with("application/yaml")
        {
            return ResponseFormat::Json;
        }
    }
    ResponseFormat::Json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaced_and_cluster_paths() {
        let p =
            parse_resource_path("", "v1", &["namespaces", "default", "configmaps", "x"]).unwrap();
        assert_eq!(p.def.plural, "configmaps");
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.name.as_deref(), Some("x"));
        let p = parse_resource_path("", "v1", &["namespaces", "default", "status"]).unwrap();
        assert_eq!(p.def.plural, "namespaces");
        assert_eq!(p.name.as_deref(), Some("default"));
        assert_eq!(p.subresource.as_deref(), Some("status"));
        assert!(parse_resource_path("", "v1", &["nothings"]).is_err());
    }

    #[test]
    fn decodes_query_strings() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&limit=500&watch=1",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit").unwrap(), Some(500));
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }

    #[test]
    fn picks_table_format() {
        let a = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(response_format(Some(a)), ResponseFormat::Table);
        assert_eq!(
            response_format(Some("application/json")),
            ResponseFormat::Json
        );
    }
}
