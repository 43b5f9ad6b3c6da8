//! The `Classroom` custom resource (`lotse.dev/v1alpha1`, cluster-scoped) and its controller:
//! one object builds a whole class of isolated student environments.
//!
//! For every student the controller creates and keeps, with the field manager
//! [`FIELD_MANAGER`] (server-side apply):
//! - the namespace `<classroom>-<student>` labelled `lotse.dev/classroom`, `lotse.dev/student`
//!   and `pod-security.kubernetes.io/enforce`, owned by the Classroom (deleting the Classroom
//!   lets the garbage collector remove every namespace, and the namespace controller their
//!   content);
//! - the ResourceQuota `budget` and the LimitRange `defaults` from `spec.budget`;
//! - NetworkPolicies: ingress only from the namespace itself (so other namespaces are denied),
//!   from the classmates' namespaces when `studentsCanReachEachOther`, from the teacher's
//!   namespace, and from `access.allowedCIDRs` (an `ipBlock`) when `access.mode` is `nodePort`;
//! - the ServiceAccount `student` and the RoleBinding `student-edit` to the ClusterRole `edit`;
//! - the lab objects of `spec.labs`, with `{{student}}`, `{{namespace}}` and `{{classroom}}`
//!   replaced, applied *as the student* (impersonating `system:serviceaccount:<ns>:student`),
//!   so a lab can only hold what the student could create themselves.
//!
//! A student removed from the spec loses exactly their namespace. The CRD is generated from the
//! Rust types below and installed (created or updated) by [`run`] before the controller starts.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{conditions, wait::await_condition, watcher};
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;

/// The field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "lotse-classroom";
/// Label on a student namespace naming its Classroom.
pub const CLASSROOM_LABEL: &str = "lotse.dev/classroom";
/// Label on a student namespace naming its student.
pub const STUDENT_LABEL: &str = "lotse.dev/student";
/// The student's ServiceAccount in their namespace.
pub const STUDENT_SERVICE_ACCOUNT: &str = "student";
/// The CRD's name.
pub const CRD_NAME: &str = "classrooms.lotse.dev";

/// A quantity that cannot be negative (Kubernetes' quantity syntax without a sign).
const QUANTITY_PATTERN: &str =
    r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$";
/// A DNS label (RFC 1123), as Kubernetes' namespace names.
const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A class of students, each with an isolated namespace, budget and lab.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "lotse.dev",
    version = "v1alpha1",
    kind = "Classroom",
    plural = "classrooms",
    shortname = "classroom",
    shortname = "cr",
    status = "ClassroomStatus",
    printcolumn = r#"{"name":"Students","type":"integer","jsonPath":".status.studentCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClassroomSpec {
    /// The students; each gets the namespace `<classroom>-<name>`.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub students: Vec<Student>,
    /// Each student's budget (ResourceQuota `budget`, LimitRange `defaults`).
    #[serde(default)]
    pub budget: Budget,
    /// The Pod Security level enforced in the student namespaces.
    #[serde(default)]
    pub pod_security: PodSecurityLevel,
    /// Lab manifests instantiated in every student namespace: YAML strings (several documents
    /// allowed) or objects; `{{student}}`, `{{namespace}}` and `{{classroom}}` are replaced.
    #[serde(default)]
    #[schemars(schema_with = "labs_schema")]
    pub labs: Vec<Value>,
    /// Whether students' pods may reach the other students' pods.
    #[serde(default)]
    pub students_can_reach_each_other: bool,
    /// How students reach their labs from their own machine.
    #[serde(default)]
    pub access: Access,
    /// A namespace (the teacher's) whose pods may reach every student's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub teacher_namespace: Option<String>,
}

/// One student.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
pub struct Student {
    /// The student's name, a DNS label (it becomes part of the namespace name).
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub name: String,
}

/// A student's budget: ResourceQuota limits (absent ones are unlimited).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// CPU requests and limits in total (`requests.cpu`, `limits.cpu`), e.g. `2` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub cpu: Option<String>,
    /// Memory requests and limits in total (`requests.memory`, `limits.memory`), e.g. `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub memory: Option<String>,
    /// Storage requested by PersistentVolumeClaims in total (`requests.storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub storage: Option<String>,
    /// Number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i64>,
    /// Number of Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub services: Option<i64>,
    /// Number of PersistentVolumeClaims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub persistentvolumeclaims: Option<i64>,
    /// Number of ConfigMaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub configmaps: Option<i64>,
    /// Number of Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub secrets: Option<i64>,
}

/// Pod Security Standards level.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    /// Unrestricted.
    Privileged,
    /// Prevents known privilege escalations (the default).
    #[default]
    Baseline,
    /// Hardened pods only.
    Restricted,
}

impl PodSecurityLevel {
    fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Privileged => "privileged",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

/// How students reach their labs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// `portForward` (through the apiserver; nothing is opened) or `nodePort` (NodePort
    /// Services admitted from `allowedCIDRs`).
    #[serde(default)]
    pub mode: AccessMode,
    /// Source ranges admitted to the student namespaces in `nodePort` mode (an `ipBlock`).
    #[serde(
        default,
        rename = "allowedCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_cidrs: Vec<String>,
}

/// Access mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessMode {
    /// `kubectl port-forward` with the student's kubeconfig.
    #[default]
    PortForward,
    /// NodePort Services, admitted from `allowedCIDRs`.
    NodePort,
}

/// What the controller observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassroomStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of students.
    #[serde(default)]
    pub student_count: i64,
    /// Ready students out of all, e.g. `3/3`.
    #[serde(default)]
    pub ready: String,
    /// Per student.
    #[serde(default)]
    pub students: Vec<StudentStatus>,
    /// `Ready` (every student environment is in place) and `Valid` (the spec is usable).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One student's environment.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StudentStatus {
    /// The student.
    pub name: String,
    /// Their namespace.
    pub namespace: String,
    /// Whether every object is in place.
    pub ready: bool,
    /// What failed, when something did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The ResourceQuota's `status.used`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota_used: BTreeMap<String, String>,
}

/// A condition, as metav1.Condition.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Valid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn labs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"x-kubernetes-preserve-unknown-fields": true},
    })
}

/// The namespace of `student` in `classroom`.
pub fn student_namespace(classroom: &str, student: &str) -> String {
    format!("{classroom}-{student}")
}

/// Replaces the placeholders in a lab text.
fn substitute(text: &str, classroom: &str, student: &str, namespace: &str) -> String {
    text.replace("{{student}}", student)
        .replace("{{namespace}}", namespace)
        .replace("{{classroom}}", classroom)
}

/// The lab objects for one student, or why the labs cannot be used.
pub fn lab_objects(
    labs: &[Value],
    classroom: &str,
    student: &str,
    namespace: &str,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        let docs: Vec<Value> = match lab {
            Value::String(text) => {
                let text = substitute(text, classroom, student, namespace);
                let mut docs = Vec::new();
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let v = Value::deserialize(doc)
                        .map_err(|e| format!("spec.labs[{i}]: the manifest does not parse: {e}"))?;
                    if !v.is_null() {
                        docs.push(v);
                    }
                }
                docs
            }
            Value::Object(_) => {
                let text = substitute(&lab.to_string(), classroom, student, namespace);
                vec![
                    serde_json::from_str(&text)
                        .map_err(|e| format!("spec.labs[{i}]: the object does not parse: {e}"))?,
                ]
            }
            _ => {
                return Err(format!(
                    "spec.labs[{i}]: must be a manifest string or an object"
                ));
            }
        };
        for mut d in docs {
            // A `List` holds its objects in `items`.
            if d.get("kind").and_then(Value::as_str) == Some("List") {
                if let Some(items) = d.get("items").and_then(Value::as_array) {
                    out.extend(items.iter().cloned());
                }
                continue;
            }
            for f in ["apiVersion", "kind"] {
                if d.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(format!("spec.labs[{i}]: an object has no {f}"));
                }
            }
            if d.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!("spec.labs[{i}]: an object has no metadata.name"));
            }
            if let Some(ns) = d.pointer("/metadata/namespace").and_then(Value::as_str)
                && ns != namespace
            {
                return Err(format!(
                    "spec.labs[{i}]: metadata.namespace {ns:?} is not the student's namespace (use {{{{namespace}}}} or leave it out)"
                ));
            }
            if let Some(m) = d.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("namespace".into(), Value::String(namespace.to_string()));
            }
            out.push(d);
        }
    }
    Ok(out)
}

/// Checks what the CRD schema cannot: duplicates (also caught by the schema's list map),
/// namespace name length, quantities, CIDRs and that every lab parses.
pub fn validate(name: &str, spec: &ClassroomSpec) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (i, s) in spec.students.iter().enumerate() {
        let problems = lotse_core::names::dns1123_label(&s.name);
        if !problems.is_empty() {
            return Err(format!(
                "spec.students[{i}].name: Invalid value: {:?}: {}",
                s.name,
                problems.join("; ")
            ));
        }
        if !seen.insert(&s.name) {
            return Err(format!(
                "spec.students[{i}]: Duplicate value: map[string]interface {{}}{{\"name\":{:?}}}",
                s.name
            ));
        }
        let ns = student_namespace(name, &s.name);
        if ns.len() > 63 {
            return Err(format!(
                "spec.students[{i}].name: Invalid value: {:?}: the namespace {ns:?} would be longer than 63 characters",
                s.name
            ));
        }
        lab_objects(&spec.labs, name, &s.name, &ns)?;
    }
    for (i, c) in spec.access.allowed_cidrs.iter().enumerate() {
        if c.parse::<ipnet::IpNet>().is_err() {
            return Err(format!(
                "spec.access.allowedCIDRs[{i}]: Invalid value: {c:?}: must be a valid CIDR"
            ));
        }
    }
    Ok(())
}

/// The ResourceQuota `hard` of a budget.
pub fn quota_hard(b: &Budget) -> BTreeMap<String, String> {
    let mut hard = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            hard.insert(k.to_string(), v);
        }
    };
    put("requests.cpu", b.cpu.clone());
    put("limits.cpu", b.cpu.clone());
    put("requests.memory", b.memory.clone());
    put("limits.memory", b.memory.clone());
    put("requests.storage", b.storage.clone());
    put("pods", b.pods.map(|n| n.to_string()));
    put("services", b.services.map(|n| n.to_string()));
    put(
        "persistentvolumeclaims",
        b.persistentvolumeclaims.map(|n| n.to_string()),
    );
    put("configmaps", b.configmaps.map(|n| n.to_string()));
    put("secrets", b.secrets.map(|n| n.to_string()));
    hard
}

/// The LimitRange of a budget: container defaults so pods without resources fit the quota.
pub fn limit_range(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "defaults", "namespace": namespace},
        "spec": {"limits": [{
            "type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "50m", "memory": "64Mi"},
        }]},
    })
}

/// The NetworkPolicies of one student namespace.
pub fn network_policies(
    classroom: &str,
    namespace: &str,
    spec: &ClassroomSpec,
    cluster_cidr: &str,
) -> Vec<Value> {
    let policy = |name: &str, from: Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": from}]},
        })
    };
    let mut out = vec![policy(
        "classroom-same-namespace",
        json!([{"podSelector": {}}]),
    )];
    if spec.students_can_reach_each_other {
        out.push(policy(
            "classroom-classmates",
            json!([{"namespaceSelector": {"matchLabels": {CLASSROOM_LABEL: classroom}}}]),
        ));
    }
    if let Some(t) = &spec.teacher_namespace {
        out.push(policy(
            "classroom-teacher",
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": t}}}]),
        ));
    }
    if spec.access.mode == AccessMode::NodePort && !spec.access.allowed_cidrs.is_empty() {
        let blocks: Vec<Value> = spec
            .access
            .allowed_cidrs
            .iter()
            .map(|c| json!({"ipBlock": {"cidr": c}}))
            .collect();
        out.push(policy("classroom-access", Value::Array(blocks)));
    }
    // Egress: the namespace itself, DNS anywhere, everything outside the pod network (the
    // node, the apiserver, the internet), and the namespaces ingress admits from.
    let mut egress = vec![
        json!({"to": [{"podSelector": {}}]}),
        json!({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
    ];
    match cluster_cidr.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(net)) => {
            egress.push(json!({"to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": [net.trunc().to_string()]}},
                {"ipBlock": {"cidr": "::/0"}},
            ]}));
        }
        Ok(ipnet::IpNet::V6(net)) => {
            egress.push(json!({"to": [
                {"ipBlock": {"cidr": "0.0.0.0/0"}},
                {"ipBlock": {"cidr": "::/0", "except": [net.trunc().to_string()]}},
            ]}));
        }
        Err(_) => egress.push(
            json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]}),
        ),
    }
    if spec.students_can_reach_each_other {
        egress.push(
            json!({"to": [{"namespaceSelector": {"matchLabels": {CLASSROOM_LABEL: classroom}}}]}),
        );
    }
    if let Some(t) = &spec.teacher_namespace {
        egress.push(json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": t}}}]}));
    }
    out.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "classroom-egress", "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
    }));
    out
}

/// The policy names the controller may own (the ones not wanted any more are deleted).
const POLICY_NAMES: &[&str] = &[
    "classroom-same-namespace",
    "classroom-classmates",
    "classroom-teacher",
    "classroom-access",
    "classroom-egress",
];

/// Installs (creates or updates) the Classroom CRD and waits until it is Established.
pub async fn install_crd(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = Classroom::crd();
    match crds.get_opt(CRD_NAME).await? {
        None => match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        },
        Some(old) => {
            if old.spec != crd.spec {
                crd.metadata.resource_version = old.metadata.resource_version.clone();
                crd.metadata.labels = old.metadata.labels.clone();
                crd.metadata.annotations = old.metadata.annotations.clone();
                crds.replace(CRD_NAME, &PostParams::default(), &crd).await?;
            }
        }
    }
    let established = await_condition(crds, CRD_NAME, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .map_err(|_| Error::Invalid(format!("{CRD_NAME} not Established after 30s")))?
        .map_err(|e| Error::Invalid(format!("waiting for {CRD_NAME}: {e}")))?;
    Ok(())
}

struct Ctx {
    client: Client,
    cluster_cidr: String,
}

/// Installs the CRD, then reconciles Classrooms until the watch ends.
/// `cluster_cidr` is the pod network: student pods reach everything outside it, and inside it
/// only their own namespace (and classmates or the teacher when the spec says so).
pub async fn run(client: Client, cluster_cidr: String) -> Result<(), Error> {
    // The apiserver may still be starting its CRD controller: retry (never give up, so the
    // other controllers keep running whatever happens here).
    let mut delay = Duration::from_millis(500);
    while let Err(e) = install_crd(&client).await {
        tracing::warn!(error = %e, "installing the Classroom CRD; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    let classrooms: Api<Classroom> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cluster_cidr,
    });
    Controller::new(classrooms, watcher::Config::default())
        .owns(
            namespaces,
            watcher::Config::default().labels(CLASSROOM_LABEL),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "classroom reconcile");
            }
        })
        .await;
    Err(Error::Stopped("classroom"))
}

fn error_policy(_: Arc<Classroom>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "classroom reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn reconcile(c: Arc<Classroom>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if c.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let name = c.name_any();
    let classrooms: Api<Classroom> = Api::all(client.clone());
    let old_status = c.status.clone().unwrap_or_default();
    if let Err(message) = validate(&name, &c.spec) {
        let status = ClassroomStatus {
            observed_generation: c.meta().generation,
            student_count: c.spec.students.len() as i64,
            ready: format!("0/{}", c.spec.students.len()),
            students: old_status.students.clone(),
            conditions: vec![
                condition(&old_status, "Valid", false, "InvalidSpec", &message, &c),
                condition(&old_status, "Ready", false, "InvalidSpec", &message, &c),
            ],
        };
        patch_status(&classrooms, &name, &status).await?;
        return Ok(Action::await_change());
    }

    let owner = json!({
        "apiVersion": Classroom::api_version(&()), "kind": Classroom::kind(&()),
        "name": name, "uid": c.uid().unwrap_or_default(),
        "controller": true, "blockOwnerDeletion": true,
    });
    // Plural and scope of every lab kind, looked up once (kinds are the same for everyone).
    let mut kinds = Kinds::new();
    if let Some(first) = c.spec.students.first() {
        let ns = student_namespace(&name, &first.name);
        for obj in lab_objects(&c.spec.labs, &name, &first.name, &ns).unwrap_or_default() {
            let av = obj["apiVersion"].as_str().unwrap_or_default();
            let kind = obj["kind"].as_str().unwrap_or_default();
            let key = (av.to_string(), kind.to_string());
            if let std::collections::hash_map::Entry::Vacant(e) = kinds.entry(key) {
                e.insert(resolve_kind(client, av, kind).await);
            }
        }
    }
    let kinds = Arc::new(kinds);
    // Up to 8 students at a time; the objects of one student go in parallel where they do not
    // depend on each other.
    let names: Vec<String> = c.spec.students.iter().map(|s| s.name.clone()).collect();
    let students: Vec<StudentStatus> = futures::stream::iter(names)
        .map(|student| {
            let owner = owner.clone();
            let c = c.clone();
            let client = client.clone();
            let kinds = kinds.clone();
            let cidr = ctx.cluster_cidr.clone();
            async move { reconcile_student(&client, &c, &student, &owner, &kinds, &cidr).await }
        })
        .buffered(8)
        .collect()
        .await;

    // Students no longer in the spec lose their namespace (only namespaces this Classroom owns).
    let wanted: BTreeSet<String> = c
        .spec
        .students
        .iter()
        .map(|s| student_namespace(&name, &s.name))
        .collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let owned = namespaces
        .list(&ListParams::default().labels(&format!("{CLASSROOM_LABEL}={name}")))
        .await?;
    for ns in owned.items {
        let ns_name = ns.name_any();
        let ours = ns
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == c.uid().as_ref());
        if ours && !wanted.contains(&ns_name) && ns.metadata.deletion_timestamp.is_none() {
            tracing::info!(classroom = %name, namespace = %ns_name, "student removed: deleting namespace");
            match namespaces
                .delete(&ns_name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    let ready = students.iter().filter(|s| s.ready).count();
    let total = students.len();
    let all_ready = ready == total;
    let failed: Vec<String> = students
        .iter()
        .filter(|s| !s.ready)
        .map(|s| format!("{}: {}", s.name, s.message))
        .collect();
    let status = ClassroomStatus {
        observed_generation: c.meta().generation,
        student_count: total as i64,
        ready: format!("{ready}/{total}"),
        conditions: vec![
            condition(&old_status, "Valid", true, "Valid", "", &c),
            if all_ready {
                condition(
                    &old_status,
                    "Ready",
                    true,
                    "EnvironmentsReady",
                    "every student environment is in place",
                    &c,
                )
            } else {
                condition(
                    &old_status,
                    "Ready",
                    false,
                    "EnvironmentsFailed",
                    &failed.join("; "),
                    &c,
                )
            },
        ],
        students,
    };
    patch_status(&classrooms, &name, &status).await?;
    // Requeue to refresh quota usage and repair drift; sooner while something failed.
    Ok(if all_ready {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

fn condition(
    old: &ClassroomStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    c: &Classroom,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = old
        .conditions
        .iter()
        .find(|o| o.type_ == type_ && o.status == status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| {
            jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        });
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: last,
        observed_generation: c.meta().generation,
    }
}

async fn patch_status(
    api: &Api<Classroom>,
    name: &str,
    status: &ClassroomStatus,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Applies one student's namespace and its fixed objects; the status says what failed.
async fn reconcile_student(
    client: &Client,
    c: &Classroom,
    student: &str,
    owner: &Value,
    kinds: &Kinds,
    cluster_cidr: &str,
) -> StudentStatus {
    let classroom = c.name_any();
    let ns = student_namespace(&classroom, student);
    let mut st = StudentStatus {
        name: student.to_string(),
        namespace: ns.clone(),
        ..Default::default()
    };
    let result = match reconcile_student_objects(client, c, student, &ns, owner, cluster_cidr).await
    {
        Ok(used) => apply_labs(client, c, student, &ns, kinds)
            .await
            .map(|()| used),
        Err(e) => Err(e),
    };
    match result {
        Ok(used) => {
            st.ready = true;
            st.quota_used = used;
        }
        Err(msg) => st.message = msg,
    }
    st
}

async fn reconcile_student_objects(
    client: &Client,
    c: &Classroom,
    student: &str,
    ns: &str,
    owner: &Value,
    cluster_cidr: &str,
) -> Result<BTreeMap<String, String>, String> {
    let classroom = c.name_any();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // Never take over a namespace that belongs to someone else.
    if let Some(existing) = namespaces.get_opt(ns).await.map_err(|e| e.to_string())? {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == c.uid().as_ref());
        if !ours {
            return Err(format!(
                "namespace {ns:?} already exists and does not belong to Classroom {classroom:?}"
            ));
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Err(format!("namespace {ns:?} is being deleted"));
        }
    }
    let ns_obj = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": ns,
            "labels": {
                CLASSROOM_LABEL: classroom,
                STUDENT_LABEL: student,
                "pod-security.kubernetes.io/enforce": c.spec.pod_security.as_str(),
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
            "ownerReferences": [owner],
        },
    });
    namespaces
        .patch(ns, &apply_params(), &Patch::Apply(&ns_obj))
        .await
        .map_err(|e| format!("namespace: {e}"))?;

    let hard = quota_hard(&c.spec.budget);
    let mut fixed = vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": STUDENT_SERVICE_ACCOUNT, "namespace": ns},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "student-edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": STUDENT_SERVICE_ACCOUNT, "namespace": ns}],
        }),
        limit_range(ns),
    ];
    if !hard.is_empty() {
        fixed.push(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "budget", "namespace": ns},
            "spec": {"hard": hard},
        }));
    }
    let policies = network_policies(&classroom, ns, &c.spec, cluster_cidr);
    let wanted_policies: BTreeSet<String> = policies
        .iter()
        .filter_map(|p| p.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    fixed.extend(policies);
    let applies = fixed.iter().map(|o| apply_builtin(client, ns, o));
    for r in futures::future::join_all(applies).await {
        r?;
    }
    let np_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
            "networkpolicies",
        ),
    );
    for name in POLICY_NAMES
        .iter()
        .filter(|n| !wanted_policies.contains(**n))
    {
        match np_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("NetworkPolicy {name}: {e}")),
        }
    }
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    if hard.is_empty() {
        let _ = quotas.delete("budget", &DeleteParams::default()).await;
        return Ok(BTreeMap::new());
    }
    let used = quotas
        .get_opt("budget")
        .await
        .ok()
        .flatten()
        .and_then(|q| q.status?.used)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(used)
}

/// Server-side applies one of the controller's built-in objects.
async fn apply_builtin(client: &Client, ns: &str, obj: &Value) -> Result<(), String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (group, version) = split_api_version(obj["apiVersion"].as_str().unwrap_or_default());
    let plural = match kind {
        "ServiceAccount" => "serviceaccounts",
        "RoleBinding" => "rolebindings",
        "LimitRange" => "limitranges",
        "ResourceQuota" => "resourcequotas",
        _ => "networkpolicies",
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch(name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|e| format!("{kind} {name}: {e}"))?;
    Ok(())
}

fn split_api_version(av: &str) -> (&str, &str) {
    match av.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", av),
    }
}

/// Plural and scope (namespaced or not) per (apiVersion, kind), or why the kind is unknown.
type Kinds = HashMap<(String, String), Result<(ApiResource, bool), String>>;

async fn resolve_kind(
    client: &Client,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, bool), String> {
    let (group, version) = split_api_version(api_version);
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{api_version} {kind}: not served by the cluster ({e})"))?;
    Ok((ar, matches!(caps.scope, Scope::Namespaced)))
}

/// Applies the labs in a student namespace as the student (impersonation).
async fn apply_labs(
    client: &Client,
    c: &Classroom,
    student: &str,
    ns: &str,
    kinds: &Kinds,
) -> Result<(), String> {
    let objects = lab_objects(&c.spec.labs, &c.name_any(), student, ns)?;
    let user = format!("system:serviceaccount:{ns}:{STUDENT_SERVICE_ACCOUNT}");
    for obj in objects {
        let av = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (ar, namespaced) = match kinds.get(&(av.to_string(), kind.to_string())) {
            Some(r) => r.clone()?,
            None => resolve_kind(client, av, kind).await?,
        };
        if !namespaced {
            return Err(format!(
                "lab {kind} {name}: cluster-scoped objects cannot be part of a lab"
            ));
        }
        let url = kube::core::Request::new(format!(
            "{}/namespaces/{ns}/{}",
            if ar.group.is_empty() {
                format!("/api/{}", ar.version)
            } else {
                format!("/apis/{}/{}", ar.group, ar.version)
            },
            ar.plural
        ));
        let mut req = url
            .patch(name, &apply_params(), &Patch::Apply(&obj))
            .map_err(|e| format!("lab {kind} {name}: {e}"))?;
        let header = http::HeaderValue::from_str(&user).map_err(|e| e.to_string())?;
        req.headers_mut().insert("Impersonate-User", header);
        client
            .request::<DynamicObject>(req)
            .await
            .map_err(|e| format!("lab {kind} {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(students: &[&str], labs: Vec<Value>) -> ClassroomSpec {
        ClassroomSpec {
            students: students
                .iter()
                .map(|n| Student {
                    name: n.to_string(),
                })
                .collect(),
            budget: Budget::default(),
            pod_security: PodSecurityLevel::Baseline,
            labs,
            students_can_reach_each_other: false,
            access: Access::default(),
            teacher_namespace: None,
        }
    }

    #[test]
    fn crd_schema_has_validation() {
        let crd = serde_json::to_value(Classroom::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let students = &schema["properties"]["students"];
        assert_eq!(students["x-kubernetes-list-type"], "map");
        assert_eq!(students["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(
            students["items"]["properties"]["name"]["pattern"],
            DNS_LABEL_PATTERN
        );
        assert_eq!(
            schema["properties"]["budget"]["properties"]["pods"]["minimum"].as_f64(),
            Some(0.0)
        );
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(
            schema["properties"]["podSecurity"]["enum"],
            json!(["privileged", "baseline", "restricted"])
        );
    }

    #[test]
    fn labs_substitute_and_parse() {
        let labs = vec![
            json!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '{{student}}-cm'}\ndata: {ns: '{{namespace}}'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
            ),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "{{classroom}}"}}),
        ];
        let objs = lab_objects(&labs, "math", "ada", "math-ada").unwrap();
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0]["metadata"]["name"], "ada-cm");
        assert_eq!(objs[0]["data"]["ns"], "math-ada");
        assert_eq!(objs[0]["metadata"]["namespace"], "math-ada");
        assert_eq!(objs[2]["metadata"]["name"], "math");
    }

    #[test]
    fn bad_input_is_refused_whole() {
        assert!(validate("c", &spec(&["a", "b"], vec![])).is_ok());
        let dup = validate("c", &spec(&["a", "a"], vec![])).unwrap_err();
        assert!(dup.contains("Duplicate value"), "{dup}");
        let bad = validate("c", &spec(&["Not_A_Label"], vec![])).unwrap_err();
        assert!(bad.contains("RFC 1123"), "{bad}");
        let dotted = validate("c", &spec(&["a.b"], vec![])).unwrap_err();
        assert!(dotted.ends_with(": must not contain dots"), "{dotted}");
        let lab = validate("c", &spec(&["a"], vec![json!("kind: [")])).unwrap_err();
        assert!(
            lab.contains("spec.labs[0]: the manifest does not parse"),
            "{lab}"
        );
        let other_ns = validate(
            "c",
            &spec(
                &["a"],
                vec![json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "kube-system"}})],
            ),
        )
        .unwrap_err();
        assert!(
            other_ns.contains("not the student's namespace"),
            "{other_ns}"
        );
    }

    #[test]
    fn budget_to_quota() {
        let b = Budget {
            cpu: Some("2".into()),
            memory: Some("1Gi".into()),
            pods: Some(4),
            ..Default::default()
        };
        let hard = quota_hard(&b);
        assert_eq!(hard["limits.cpu"], "2");
        assert_eq!(hard["requests.memory"], "1Gi");
        assert_eq!(hard["pods"], "4");
        assert!(!hard.contains_key("services"));
    }

    #[test]
    fn policies_follow_the_spec() {
        let mut s = spec(&["a"], vec![]);
        assert_eq!(network_policies("c", "c-a", &s, "10.244.0.0/16").len(), 2);
        s.students_can_reach_each_other = true;
        s.teacher_namespace = Some("teacher".into());
        s.access = Access {
            mode: AccessMode::NodePort,
            allowed_cidrs: vec!["192.0.2.0/24".into()],
        };
        let p = network_policies("c", "c-a", &s, "10.244.0.0/16");
        assert_eq!(p.len(), 5);
        assert_eq!(
            p[4]["spec"]["egress"][2]["to"][0]["ipBlock"]["except"][0],
            "10.244.0.0/16"
        );
        assert_eq!(
            p[3]["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
            "192.0.2.0/24"
        );
    }
}
