//! The served set: the built-in resources of [`super::resources`] and the custom resources
//! of established CRDs ([`super::custom`]), with lookups by URL segments and by kind.

use super::ResourceDef;

/// All built-in resources, in discovery order.
pub fn all() -> &'static [ResourceDef] {
    static ALL: std::sync::LazyLock<Vec<ResourceDef>> = std::sync::LazyLock::new(|| {
        let mut all = super::resources::ALL.to_vec();
        all.push(super::custom::CUSTOMRESOURCEDEFINITIONS);
        all
    });
    &ALL
}

/// Every resource served now: the built-in ones, then the custom resources of established
/// CRDs (which come and go at run time).
pub fn served() -> Vec<&'static ResourceDef> {
    let mut v: Vec<&'static ResourceDef> = all().iter().collect();
    v.extend(super::custom::defs());
    v
}

/// Looks up a resource by group, version and plural.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    all()
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| super::custom::lookup(group, version, plural))
}

/// Looks up a resource by group and kind (any version).
pub fn lookup_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    all()
        .iter()
        .find(|r| r.group == group && r.kind == kind)
        .or_else(|| super::custom::lookup_kind(group, kind))
}
