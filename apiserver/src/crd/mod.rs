//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): what a CRD object means for the API,
//! on plain JSON and without server state, so the server hands this module objects and gets
//! back decisions:
//!
//! - [`definition`]: validation of CRD objects as Kubernetes' `ValidateCustomResourceDefinition`
//!   (names, group, versions, structural schemas), their defaults, and their `status`
//!   (`NamesAccepted`/`Established` conditions, `acceptedNames`, `storedVersions`).
//! - [`schema`]: the structural `openAPIV3Schema` of a version: pruning, defaulting, validation
//!   with kube-openapi's wording.
//! - [`printer`]: `additionalPrinterColumns` (a JSONPath subset) for Table output.
//! - [`served`]: one served version of a CRD ([`Served`]), built from the CRD object, with what
//!   the generic handlers need (names, scope, schema, subresources, columns) and its OpenAPI
//!   schema.
//!
//! The registry (its `custom` entries) turns each [`Served`] into a registry entry and the
//! CRD controller there keeps the entries in step with the stored CRDs.

pub mod definition;
pub mod printer;
pub mod schema;
pub mod served;

pub use served::{Scale, Served};

use serde_json::Value;

/// The API group of CRDs.
pub const GROUP: &str = "apiextensions.k8s.io";

/// The finalizer that makes deleting a CRD delete its objects first.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One field error, as Kubernetes' `field.Error` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Cause type: `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// Field path, e.g. `spec.replicas`.
    pub field: String,
    /// Full message, e.g. `spec.replicas: Required value`.
    pub message: String,
}

impl Cause {
    /// `Required value` (with an optional detail).
    pub fn required(field: String, detail: &str) -> Self {
        let message = if detail.is_empty() {
            format!("{field}: Required value")
        } else {
            format!("{field}: Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field,
            message,
        }
    }

    /// `Invalid value: <v>: <detail>`.
    pub fn invalid(field: String, value: &Value, detail: &str) -> Self {
        let message = format!(
            "{field}: Invalid value: {}: {detail}",
            schema::render(value)
        );
        Cause {
            reason: "FieldValueInvalid",
            field,
            message,
        }
    }

    /// `Unsupported value: <v>: supported values: "a", "b"`.
    pub fn not_supported(field: String, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        let message = format!(
            "{field}: Unsupported value: {}: supported values: {}",
            schema::render(value),
            list.join(", ")
        );
        Cause {
            reason: "FieldValueNotSupported",
            field,
            message,
        }
    }

    /// `Duplicate value: <v>`.
    pub fn duplicate(field: String, value: &Value) -> Self {
        let message = format!("{field}: Duplicate value: {}", schema::render(value));
        Cause {
            reason: "FieldValueDuplicate",
            field,
            message,
        }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(field: String, detail: &str) -> Self {
        let message = format!("{field}: Forbidden: {detail}");
        Cause {
            reason: "FieldValueForbidden",
            field,
            message,
        }
    }
}

/// Kubernetes' version priority: "kube-like" versions (`v1`, `v2beta1`, `v1alpha2`) first, GA
/// before beta before alpha, higher major then higher minor first; others after, by name.
pub fn version_priority(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 3, 0));
        }
        let (stage, minor) = if let Some(m) = tail.strip_prefix("beta") {
            (2, m)
        } else if let Some(m) = tail.strip_prefix("alpha") {
            (1, m)
        } else {
            return None;
        };
        Some((major, stage, minor.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec![
            "foo1",
            "v1alpha2",
            "v11alpha2",
            "v10",
            "v2",
            "v10beta3",
            "v3beta1",
            "v1",
            "v12alpha1",
            "foo10",
            "v11beta2",
        ];
        v.sort_by(|a, b| super::version_priority(a, b));
        assert_eq!(
            v,
            vec![
                "v10",
                "v2",
                "v1",
                "v11beta2",
                "v10beta3",
                "v3beta1",
                "v12alpha1",
                "v11alpha2",
                "v1alpha2",
                "foo1",
                "foo10"
            ]
        );
    }
}
