//! API groups served without storage (access reviews, token reviews). Their discovery entries
//! are listed here so discovery stays in one place.

use serde_json::Value;

/// Groups served outside the registry: (group, version).
pub fn extra_groups() -> &'static [(&'static str, &'static str)] {
    &[]
}

/// Extra `APIResourceList` entries of a group-version.
pub fn extra_resources(_group: &str, _version: &str) -> Vec<Value> {
    Vec::new()
}

/// Extra aggregated-discovery resources of a group-version.
pub fn extra_aggregated_resources(_group: &str, _version: &str) -> Vec<Value> {
    Vec::new()
}
