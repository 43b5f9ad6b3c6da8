//! The RBAC authorizer: Roles, ClusterRoles and their bindings, read from the apiserver's own
//! watch caches (no extra storage watches), with Kubernetes' rule matching, the rule listing
//! behind SelfSubjectRulesReview, escalation prevention, and the ClusterRole aggregation loop.
//!
//! The authorizer keeps a compiled snapshot of all RBAC objects. Any event on one of the four
//! caches marks it dirty; the next request rebuilds it. A denial is re-checked once after the
//! caches caught up with storage, so a binding written just before is always seen
//! (read-your-writes for the client that created it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lotse_core::selectors::{LabelSelector, selector_string};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Attributes, Decision};
use crate::auth::{MASTERS, UserInfo};
use crate::cache::cacher::{Broadcast, Cacher, WatchStart};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::registry::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
use crate::write::{ObjectWriter, UpdateScope};

/// One RBAC rule (`rbac.authorization.k8s.io/v1` PolicyRule).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs, `*` for all.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups, `""` for core, `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources, optionally `resource/subresource`, `*`, or `*/subresource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names the rule is limited to (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/api/*`, `*`).
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// Kubernetes' compact rendering used in escalation errors, e.g.
    /// `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
    pub fn compact_string(&self) -> String {
        fn q(v: &[String]) -> String {
            let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(" "))
        }
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", q(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", q(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", q(&self.non_resource_urls)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", q(&self.resource_names)));
        }
        if !self.verbs.is_empty() {
            parts.push(format!("Verbs:{}", q(&self.verbs)));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

fn has(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x == s)
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    has(&rule.verbs, "*") || has(&rule.verbs, verb)
}

fn group_matches(rule: &PolicyRule, group: &str) -> bool {
    has(&rule.api_groups, "*") || has(&rule.api_groups, group)
}

fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

fn name_matches(rule: &PolicyRule, name: &str) -> bool {
    rule.resource_names.is_empty() || (!name.is_empty() && has(&rule.resource_names, name))
}

fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.iter().any(|u| {
        u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// Whether `rule` allows the request (Kubernetes' `RuleAllows`).
pub fn rule_allows(a: &Attributes, rule: &PolicyRule) -> bool {
    if a.resource_request {
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        verb_matches(rule, &a.verb)
            && group_matches(rule, &a.api_group)
            && resource_matches(rule, &combined, &a.subresource)
            && name_matches(rule, &a.name)
    } else {
        verb_matches(rule, &a.verb) && url_matches(rule, &a.path)
    }
}

/// A subject of a binding.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Clone, Debug, Deserialize)]
struct RoleRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

#[derive(Clone, Debug)]
struct Binding {
    name: String,
    /// Namespace of a RoleBinding; "" for a ClusterRoleBinding.
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

fn subject_matches(s: &Subject, user: &UserInfo, binding_ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = if s.namespace.is_empty() {
                binding_ns
            } else {
                &s.namespace
            };
            user.service_account_parts() == Some((ns, s.name.as_str()))
        }
        _ => false,
    }
}

/// All RBAC objects, compiled for lookups.
#[derive(Default)]
struct Snapshot {
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
    /// Cache revision the snapshot was built at.
    revision: i64,
}

fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .cloned()
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default()
}

fn binding_of(obj: &Value, namespace: &str) -> Option<Binding> {
    let role_ref: RoleRef = serde_json::from_value(obj.get("roleRef")?.clone()).ok()?;
    let subjects: Vec<Subject> = obj
        .get("subjects")
        .cloned()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let name = crate::registry::fields::name(obj).to_string();
    Some(Binding {
        name,
        namespace: namespace.to_string(),
        role_ref,
        subjects,
    })
}

async fn list_objects(reader: &CacheReader, def: &ResourceDef) -> ApiResult<(Vec<Value>, i64)> {
    list_cached(reader.cacher(def)?, def).await
}

async fn list_cached(cacher: &Cacher, def: &ResourceDef) -> ApiResult<(Vec<Value>, i64)> {
    let prefix = format!("/registry/{}/", def.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    let objs = list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .collect();
    Ok((objs, list.revision))
}

impl Snapshot {
    async fn build(reader: &CacheReader) -> ApiResult<Snapshot> {
        let mut s = Snapshot::default();
        let (crs, rev) = list_objects(reader, &CLUSTERROLES).await?;
        s.revision = rev;
        for o in crs {
            s.cluster_roles.insert(
                crate::registry::fields::name(&o).to_string(),
                Arc::new(rules_of(&o)),
            );
        }
        for o in list_objects(reader, &ROLES).await?.0 {
            let key = (
                crate::registry::fields::namespace(&o).to_string(),
                crate::registry::fields::name(&o).to_string(),
            );
            s.roles.insert(key, Arc::new(rules_of(&o)));
        }
        for o in list_objects(reader, &CLUSTERROLEBINDINGS).await?.0 {
            if let Some(b) = binding_of(&o, "") {
                s.cluster_bindings.push(b);
            }
        }
        for o in list_objects(reader, &ROLEBINDINGS).await?.0 {
            let ns = crate::registry::fields::namespace(&o).to_string();
            if let Some(b) = binding_of(&o, &ns) {
                s.bindings.entry(ns).or_default().push(b);
            }
        }
        Ok(s)
    }

    fn role_rules(&self, b: &Binding) -> Option<&Arc<Vec<PolicyRule>>> {
        match b.role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_ref.name),
            "Role" => self
                .roles
                .get(&(b.namespace.clone(), b.role_ref.name.clone())),
            _ => None,
        }
    }

    /// Calls `f` with each rule that applies to `user` in `namespace` (cluster-wide rules always;
    /// namespaced rules only when `namespace` is non-empty). Stops when `f` returns true.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        f: &mut dyn FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in &self.cluster_bindings {
            if b.role_ref.kind == "ClusterRole"
                && b.subjects.iter().any(|s| subject_matches(s, user, ""))
                && let Some(rules) = self.cluster_roles.get(&b.role_ref.name)
                && rules.iter().any(&mut *f)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        if let Some(bs) = self.bindings.get(namespace) {
            for b in bs {
                if b.subjects
                    .iter()
                    .any(|s| subject_matches(s, user, namespace))
                    && let Some(rules) = self.role_rules(b)
                    && rules.iter().any(&mut *f)
                {
                    return true;
                }
            }
        }
        false
    }
}

/// RBAC authorizer over the watch caches.
pub struct Authorizer {
    snapshot: RwLock<Arc<Snapshot>>,
    dirty: Arc<AtomicBool>,
    started: AtomicBool,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            dirty: Arc::new(AtomicBool::new(true)),
            started: AtomicBool::new(false),
        }
    }
}

impl Authorizer {
    /// Subscribes to the four RBAC caches so the snapshot is rebuilt after changes.
    pub fn start(&self, reader: &CacheReader) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        for def in [&CLUSTERROLES, &ROLES, &CLUSTERROLEBINDINGS, &ROLEBINDINGS] {
            let Ok(cacher) = reader.cacher(def) else {
                continue;
            };
            let cacher = cacher.clone();
            let dirty = self.dirty.clone();
            tokio::spawn(async move {
                loop {
                    let mut rx = match cacher.watch_from(None).await {
                        Ok(WatchStart::Snapshot(_, _, rx)) | Ok(WatchStart::Replay(_, rx)) => rx,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    dirty.store(true, Ordering::SeqCst);
                    loop {
                        match rx.recv().await {
                            Ok(Broadcast::Event(_)) | Ok(_) => dirty.store(true, Ordering::SeqCst),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                dirty.store(true, Ordering::SeqCst)
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        }
                    }
                }
            });
        }
    }

    async fn current(&self, reader: &CacheReader) -> ApiResult<Arc<Snapshot>> {
        if self.dirty.swap(false, Ordering::SeqCst) {
            match Snapshot::build(reader).await {
                Ok(s) => {
                    let s = Arc::new(s);
                    if let Ok(mut w) = self.snapshot.write() {
                        *w = s.clone();
                    }
                    return Ok(s);
                }
                Err(e) => {
                    self.dirty.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        self.snapshot
            .read()
            .map(|s| s.clone())
            .map_err(|_| ApiError::internal("RBAC snapshot lock poisoned"))
    }

    /// A snapshot at least as fresh as storage (used before denying).
    async fn fresh(&self, reader: &CacheReader) -> ApiResult<Arc<Snapshot>> {
        let cacher = reader.cacher(&CLUSTERROLES)?;
        let rev = cacher.wait_fresh().await?;
        let snap = self.current(reader).await?;
        if snap.revision >= rev {
            return Ok(snap);
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.current(reader).await
    }

    /// RBAC's decision on a request: some bound rule must allow it. (The chain in
    /// [`super::chain`] asks it after `system:masters` and the Node authorizer.)
    pub async fn authorize(&self, reader: &CacheReader, a: &Attributes) -> ApiResult<Decision> {
        let snap = self.current(reader).await?;
        if let Some(d) = Self::decide(&snap, a) {
            return Ok(d);
        }
        let snap = self.fresh(reader).await?;
        Ok(Self::decide(&snap, a).unwrap_or(Decision::Deny))
    }

    fn decide(snap: &Snapshot, a: &Attributes) -> Option<Decision> {
        let mut allowed = false;
        snap.visit(&a.user, &a.namespace, &mut |r| {
            allowed = rule_allows(a, r);
            allowed
        });
        allowed.then(|| Decision::Allow(allow_reason(snap, a)))
    }

    /// Every rule that applies to `user` in `namespace` (SelfSubjectRulesReview), in binding
    /// order. `system:masters` gets cluster-admin's rules.
    pub async fn rules_for(
        &self,
        reader: &CacheReader,
        user: &UserInfo,
        namespace: &str,
    ) -> ApiResult<Vec<PolicyRule>> {
        let snap = self.fresh(reader).await?;
        let mut out: Vec<PolicyRule> = Vec::new();
        if user.in_group(MASTERS) {
            out.push(PolicyRule {
                verbs: vec!["*".into()],
                api_groups: vec!["*".into()],
                resources: vec!["*".into()],
                ..Default::default()
            });
            out.push(PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: vec!["*".into()],
                ..Default::default()
            });
        }
        snap.visit(user, namespace, &mut |r| {
            if !out.contains(r) {
                out.push(r.clone());
            }
            false
        });
        Ok(out)
    }

    /// The rules a ClusterRole or Role currently grants (for binding escalation checks).
    pub async fn role_rules(
        &self,
        reader: &CacheReader,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Vec<PolicyRule>>> {
        let snap = self.fresh(reader).await?;
        Ok(match kind {
            "ClusterRole" => snap.cluster_roles.get(name).map(|r| r.as_ref().clone()),
            "Role" => snap
                .roles
                .get(&(namespace.to_string(), name.to_string()))
                .map(|r| r.as_ref().clone()),
            _ => None,
        })
    }
}

fn allow_reason(snap: &Snapshot, a: &Attributes) -> String {
    let matching = |b: &Binding, ns: &str| {
        b.subjects
            .iter()
            .find(|s| subject_matches(s, &a.user, ns))
            .cloned()
    };
    for b in &snap.cluster_bindings {
        if let Some(s) = matching(b, "")
            && let Some(rules) = snap.cluster_roles.get(&b.role_ref.name)
            && rules.iter().any(|r| rule_allows(a, r))
        {
            return format!(
                "RBAC: allowed by ClusterRoleBinding {:?} of ClusterRole {:?} to {} {:?}",
                b.name, b.role_ref.name, s.kind, s.name
            );
        }
    }
    if let Some(bs) = snap.bindings.get(&a.namespace) {
        for b in bs {
            if let Some(s) = matching(b, &a.namespace)
                && let Some(rules) = snap.role_rules(b)
                && rules.iter().any(|r| rule_allows(a, r))
            {
                return format!(
                    "RBAC: allowed by RoleBinding \"{}/{}\" of {} {:?} to {} {:?}",
                    b.name, b.namespace, b.role_ref.kind, b.role_ref.name, s.kind, s.name
                );
            }
        }
    }
    String::new()
}

/// Breaks rules into atomic rules (one group, one resource, one verb, one name / one URL, one
/// verb), as Kubernetes' `BreakdownRule`.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in &rule.api_groups {
        for r in &rule.resources {
            for v in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: vec![v.clone()],
                        api_groups: vec![g.clone()],
                        resources: vec![r.clone()],
                        ..Default::default()
                    });
                } else {
                    for n in &rule.resource_names {
                        out.push(PolicyRule {
                            verbs: vec![v.clone()],
                            api_groups: vec![g.clone()],
                            resources: vec![r.clone()],
                            resource_names: vec![n.clone()],
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(PolicyRule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn rule_covers(owner: &PolicyRule, s: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || s.verbs.iter().all(|v| has(&owner.verbs, v));
    let urls = s.non_resource_urls.iter().all(|u| {
        owner.non_resource_urls.iter().any(|o| {
            o == "*" || o == u || (o.ends_with('*') && u.starts_with(o.trim_end_matches('*')))
        })
    });
    let groups =
        has(&owner.api_groups, "*") || s.api_groups.iter().all(|g| has(&owner.api_groups, g));
    let resources = s.resources.iter().all(|r| {
        has(&owner.resources, "*")
            || has(&owner.resources, r)
            || r.split_once('/')
                .is_some_and(|(_, sub)| has(&owner.resources, &format!("*/{sub}")))
    });
    let names = owner.resource_names.is_empty()
        || (!s.resource_names.is_empty()
            && s.resource_names
                .iter()
                .all(|n| has(&owner.resource_names, n)));
    verbs && urls && groups && resources && names
}

/// Kubernetes' `Covers`: the atomic rules of `servant` not covered by any owner rule.
pub fn missing_rules(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for r in servant {
        for atom in breakdown(r) {
            if !owner.iter().any(|o| rule_covers(o, &atom)) {
                missing.push(atom);
            }
        }
    }
    missing
}

/// Kubernetes' `CompactRules`: merges simple resource rules that differ only in verbs.
fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut simple: BTreeMap<(String, String, Vec<String>), PolicyRule> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rules {
        if r.api_groups.len() == 1 && r.resources.len() == 1 && r.non_resource_urls.is_empty() {
            let key = (
                r.api_groups[0].clone(),
                r.resources[0].clone(),
                r.resource_names.clone(),
            );
            let e = simple.entry(key).or_insert_with(|| PolicyRule {
                verbs: vec![],
                ..r.clone()
            });
            for v in r.verbs {
                if !e.verbs.contains(&v) {
                    e.verbs.push(v);
                }
            }
        } else {
            out.push(r);
        }
    }
    out.extend(simple.into_values());
    out
}

/// Kubernetes' `ConfirmNoEscalation` message for `user` trying to grant `rules` in
/// `namespace`: Ok when the user holds them all.
pub async fn confirm_no_escalation(
    rbac: &Authorizer,
    reader: &CacheReader,
    user: &UserInfo,
    namespace: &str,
    rules: &[PolicyRule],
) -> Result<(), String> {
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let owner = rbac
        .rules_for(reader, user, namespace)
        .await
        .map_err(|e| e.message)?;
    let missing = missing_rules(&owner, rules);
    if missing.is_empty() {
        return Ok(());
    }
    let descriptions: BTreeSet<String> = compact(missing)
        .iter()
        .map(PolicyRule::compact_string)
        .collect();
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    Err(format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        descriptions.into_iter().collect::<Vec<_>>().join("\n")
    ))
}

/// Keeps aggregated ClusterRoles' rules equal to the union of the rules of the ClusterRoles
/// their `aggregationRule` selects (Kubernetes' clusterrole-aggregation controller).
pub fn spawn_aggregation(cacher: Arc<Cacher>, writer: Arc<dyn ObjectWriter>) {
    tokio::spawn(async move {
        loop {
            let mut rx = match cacher.watch_from(None).await {
                Ok(WatchStart::Snapshot(_, _, rx)) | Ok(WatchStart::Replay(_, rx)) => rx,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                if let Err(e) = aggregate_once(&cacher, writer.as_ref()).await {
                    tracing::warn!(error = %e, "clusterrole aggregation failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                match rx.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Coalesce bursts (bootstrap creates many roles at once).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    });
}

fn label_map(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The aggregated rules of `role` given all ClusterRoles, or None when it is not aggregated.
pub fn aggregated_rules(role: &Value, all: &[Value]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let sels: Vec<LabelSelector> = selectors
        .iter()
        .filter_map(|s| LabelSelector::parse(&selector_string(Some(s))).ok())
        .collect();
    let me = crate::registry::fields::name(role);
    let mut sources: Vec<&Value> = all
        .iter()
        .filter(|o| crate::registry::fields::name(o) != me)
        .filter(|o| {
            let labels = label_map(o);
            sels.iter().any(|s| !s.is_empty() && s.matches(&labels))
        })
        .collect();
    sources.sort_by_key(|o| crate::registry::fields::name(o).to_string());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for s in sources {
        for r in rules_of(s) {
            if !rules.contains(&r) {
                rules.push(r);
            }
        }
    }
    Some(rules)
}

async fn aggregate_once(cacher: &Cacher, writer: &dyn ObjectWriter) -> ApiResult<()> {
    let (mut all, _) = list_cached(cacher, &CLUSTERROLES).await?;
    // Aggregated roles may select other aggregated roles (admin ⊇ edit ⊇ view): iterate to a
    // fixed point, bounded in case of a cycle.
    for _ in 0..8 {
        let mut changed = false;
        for i in 0..all.len() {
            let Some(rules) = aggregated_rules(&all[i], &all) else {
                continue;
            };
            if rules_of(&all[i]) == rules {
                continue;
            }
            let rules_json =
                serde_json::to_value(&rules).map_err(|e| ApiError::internal(e.to_string()))?;
            let name = crate::registry::fields::name(&all[i]).to_string();
            let (old, old_rv) = match writer.get_stored(&CLUSTERROLES, None, &name).await {
                Ok(x) => x,
                Err(e) if e.code == 404 => continue,
                Err(e) => return Err(e),
            };
            let mut new = old.clone();
            if let Value::Object(m) = &mut new {
                m.insert("rules".into(), rules_json.clone());
            }
            match writer
                .update_object(
                    &CLUSTERROLES,
                    None,
                    &name,
                    old,
                    old_rv,
                    new,
                    UpdateScope::Main,
                )
                .await
            {
                Ok(_) => tracing::debug!(clusterrole = %name, "aggregated rules updated"),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
            if let Value::Object(m) = &mut all[i] {
                m.insert("rules".into(), rules_json);
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        serde_json::from_value(v).unwrap()
    }

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes::resource(&UserInfo::default(), verb, group, resource, sub, ns, name)
    }

    #[test]
    fn matches_verbs_groups_resources_names() {
        let r = rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}),
        );
        assert!(rule_allows(&attrs("list", "", "pods", "", "ns", ""), &r));
        assert!(rule_allows(&attrs("get", "", "pods", "log", "ns", "p"), &r));
        assert!(!rule_allows(
            &attrs("get", "", "pods", "exec", "ns", "p"),
            &r
        ));
        assert!(!rule_allows(
            &attrs("delete", "", "pods", "", "ns", "p"),
            &r
        ));
        assert!(!rule_allows(
            &attrs("get", "apps", "pods", "", "ns", "p"),
            &r
        ));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status"]}));
        assert!(rule_allows(
            &attrs("patch", "apps", "deployments", "status", "", "d"),
            &star
        ));
        assert!(!rule_allows(
            &attrs("patch", "apps", "deployments", "", "", "d"),
            &star
        ));
        let named = rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
        );
        assert!(rule_allows(
            &attrs("get", "", "configmaps", "", "ns", "a"),
            &named
        ));
        assert!(!rule_allows(
            &attrs("get", "", "configmaps", "", "ns", "b"),
            &named
        ));
        assert!(!rule_allows(
            &attrs("list", "", "configmaps", "", "ns", ""),
            &rule(
                json!({"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]})
            )
        ));
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]}));
        let mut a = Attributes {
            verb: "get".into(),
            path: "/api/v1".into(),
            ..Default::default()
        };
        assert!(rule_allows(&a, &urls));
        a.path = "/apis".into();
        assert!(!rule_allows(&a, &urls));
    }

    #[test]
    fn escalation_lists_missing_rules() {
        let owner = vec![rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        let want = vec![
            rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})),
            rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})),
            rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
        ];
        let missing: Vec<String> = compact(missing_rules(&owner, &want))
            .iter()
            .map(PolicyRule::compact_string)
            .collect();
        assert!(
            missing.contains(&"{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}".to_string())
        );
        assert!(missing.contains(&"{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}".to_string()));
        assert_eq!(missing.len(), 2);
        assert!(missing_rules(&want, &owner).is_empty());
    }

    #[test]
    fn aggregation_unions_selected_roles() {
        let all = vec![
            json!({"metadata": {"name": "edit"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg/edit": "true"}}]}, "rules": []}),
            json!({"metadata": {"name": "b", "labels": {"agg/edit": "true"}}, "rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"metadata": {"name": "a", "labels": {"agg/edit": "true"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"metadata": {"name": "c"}, "rules": [{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]}),
        ];
        let rules = aggregated_rules(&all[0], &all).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].verbs, vec!["get"]);
        assert_eq!(rules[1].verbs, vec!["create"]);
        assert!(aggregated_rules(&all[1], &all).is_none());
    }
}
