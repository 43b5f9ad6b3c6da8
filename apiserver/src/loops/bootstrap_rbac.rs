//! Kubernetes' bootstrap RBAC policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`):
//! the user-facing roles (cluster-admin, admin, edit, view with their aggregation), discovery
//! and self-review roles, and the roles of Lotse's own components, created at start when
//! missing.

use serde_json::{Value, json};

use crate::authn::bootstrap_token as bt;
use crate::registry::resources::{
    CLUSTERROLEBINDINGS, CLUSTERROLES, CONFIGMAPS, ROLEBINDINGS, ROLES,
};
use crate::write::ObjectWriter;

/// The user the node network agent (kube-proxy's counterpart) authenticates as.
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate_to: Option<&str>) -> Value {
    let mut labels = labels;
    if let Value::Object(m) = &mut labels {
        m.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    }
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    });
    if let (Some(label), Value::Object(m)) = (aggregate_to, &mut role) {
        m.insert(
            "aggregationRule".into(),
            json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/{label}"): "true"}}]}),
        );
    }
    role
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let none = json!({});
    vec![
        cluster_role(
            "cluster-admin",
            none.clone(),
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
            None,
        ),
        cluster_role(
            "system:discovery",
            none.clone(),
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            none.clone(),
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
            None,
        ),
        cluster_role(
            "system:basic-user",
            none.clone(),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
            None,
        ),
        cluster_role("admin", json!({}), vec![], Some("aggregate-to-admin")),
        cluster_role(
            "edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![],
            Some("aggregate-to-edit"),
        ),
        cluster_role(
            "view",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            vec![],
            Some("aggregate-to-view"),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(
                    READ_WRITE,
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
            None,
        ),
        // metrics-server's role: `kubectl top` for everyone who may view pods.
        cluster_role(
            "system:aggregated-metrics-reader",
            json!({
                "rbac.authorization.k8s.io/aggregate-to-view": "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            }),
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:kube-scheduler",
            none.clone(),
            vec![
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                rule(
                    READ,
                    &[""],
                    &[
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                ),
                rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                rule(&["create"], &[""], &["bindings", "pods/binding"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(READ, &["apps"], &["replicasets", "statefulsets"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    READ,
                    &["storage.k8s.io"],
                    &[
                        "csidrivers",
                        "csinodes",
                        "csistoragecapacities",
                        "storageclasses",
                        "volumeattachments",
                    ],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:kube-controller-manager",
            none.clone(),
            vec![
                // Lotse runs all controllers under one identity, so this is the union of
                // Kubernetes' per-controller roles for the resources Lotse serves.
                rule(READ, &["*"], &["*"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/status",
                        "pods/binding",
                        "pods/eviction",
                        "endpoints",
                        "events",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "nodes",
                        "nodes/status",
                        "namespaces",
                        "namespaces/status",
                        "namespaces/finalize",
                        "resourcequotas/status",
                        "configmaps",
                        "secrets",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "persistentvolumes",
                        "persistentvolumes/status",
                        "replicationcontrollers",
                        "replicationcontrollers/status",
                    ],
                ),
                // The built-in local-path provisioner's class exists on a new cluster.
                rule(&["create"], &["storage.k8s.io"], &["storageclasses"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/status",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/status",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/status",
                        "statefulsets/scale",
                    ],
                ),
                rule(
                    WRITE,
                    &["batch"],
                    &[
                        "jobs",
                        "jobs/status",
                        "jobs/finalizers",
                        "cronjobs",
                        "cronjobs/status",
                    ],
                ),
                rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
                rule(WRITE, &["events.k8s.io"], &["events"]),
                rule(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
                // The horizontal pod autoscaler: its status and any target's scale.
                rule(
                    &["update", "patch"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                rule(&["get", "update", "patch"], &["*"], &["*/scale"]),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
                rule(&["*"], &["*"], &["*/finalizers"]),
                // Garbage collector and namespace controller: delete dependents and namespace
                // content of any kind, and update owner references.
                rule(
                    &["delete", "deletecollection", "patch", "update"],
                    &["*"],
                    &["*"],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                // csrapproving and csrsigning (Kubernetes' certificate-controller role).
                rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
            ],
            None,
        ),
        // The scheduler's VolumeBinding plugin (Kubernetes' system:volume-scheduler).
        cluster_role(
            "system:volume-scheduler",
            none.clone(),
            vec![
                rule(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes", "persistentvolumeclaims"],
                ),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
            ],
            None,
        ),
        // kube-proxy's role (Kubernetes' bootstrap policy); Lotse's node network agent runs as
        // user system:kube-proxy.
        cluster_role(
            "system:node-proxier",
            none.clone(),
            vec![
                rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                rule(READ, &[""], &["nodes"]),
                rule(
                    &["create", "update", "patch"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
            None,
        ),
        // The built-in ingress controller reads its routes and certificates and publishes
        // the addresses it serves on, the nodes' (as k3s's Traefik's ClusterRole). `lotse up`
        // binds it to the ServiceAccount `kube-system/lotse-ingress` of the controller's pods
        // (manifests/system/ingress.yaml).
        cluster_role(
            "system:lotse:ingress",
            none.clone(),
            vec![
                rule(READ, &[""], &["services", "secrets"]),
                rule(&["list", "watch"], &[""], &["nodes"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                ),
                rule(
                    &["update", "patch"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
            ],
            None,
        ),
        // The agent's built-in service load balancer (as k3s's ServiceLB) writes LoadBalancer
        // Services' status.loadBalancer.ingress.
        cluster_role(
            "system:lotse:service-lb",
            none.clone(),
            vec![
                rule(READ, &[""], &["services", "nodes"]),
                rule(&["patch", "update"], &[""], &["services/status"]),
            ],
            None,
        ),
        // The Classroom controller (controllers/src/classroom.rs, run by the controller
        // manager's identity): installs its CRD, creates the student namespaces and their
        // quota, limits, policies, ServiceAccount and `edit` RoleBinding (`bind` on `edit`
        // only), and applies the labs impersonating the student's ServiceAccount.
        cluster_role(
            "system:controller:classroom",
            none.clone(),
            vec![
                rule(
                    &["create", "get", "list", "watch", "update", "patch"],
                    &["apiextensions.k8s.io"],
                    &["customresourcedefinitions"],
                ),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["lotse.dev"],
                    &["classrooms", "classrooms/status"],
                ),
                rule(
                    &["create"],
                    &[""],
                    &[
                        "namespaces",
                        "resourcequotas",
                        "limitranges",
                        "serviceaccounts",
                    ],
                ),
                rule(&["create"], &["networking.k8s.io"], &["networkpolicies"]),
                rule(
                    &["create"],
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings"],
                ),
                json!({"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit"]}),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
            ],
            None,
        ),
        // The agent's NetworkPolicy enforcement (as Calico's or kube-router's node agents) reads
        // the policies, pods and namespaces.
        cluster_role(
            "system:lotse:network-policy",
            none.clone(),
            vec![
                rule(READ, &[""], &["pods", "namespaces"]),
                rule(READ, &["networking.k8s.io"], &["networkpolicies"]),
            ],
            None,
        ),
        // Node bootstrap (Kubernetes' bootstrap policy): bootstrap tokens may request node
        // client certificates; the csrapproving controller approves requests whose requester may
        // create the `nodeclient` (first certificate) or `selfnodeclient` (renewal) subresource.
        cluster_role(
            "system:node-bootstrapper",
            none.clone(),
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
            None,
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            none.clone(),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
            None,
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            none.clone(),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
            None,
        ),
        // kubeadm's: a joining node checks whether a Node of its name exists already.
        cluster_role(
            "kubeadm:get-nodes",
            none.clone(),
            vec![rule(&["get"], &[""], &["nodes"])],
            None,
        ),
        cluster_role(
            "system:node",
            none.clone(),
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews", "subjectaccessreviews"],
                ),
                rule(READ, &[""], &["services"]),
                rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(&["patch", "update"], &[""], &["nodes"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(READ, &[""], &["pods"]),
                rule(&["create", "delete"], &[""], &["pods"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    &["get"],
                    &[""],
                    &[
                        "configmaps",
                        "secrets",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "endpoints",
                    ],
                ),
                rule(&["list", "watch"], &[""], &["configmaps", "secrets"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(&["get"], &[""], &["serviceaccounts"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(READ, &["networking.k8s.io"], &["networkpolicies"]),
                rule(READ, &[""], &["namespaces"]),
                rule(
                    &["create", "delete", "get", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
                // Nodes renew their client certificates and ask for serving ones.
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
            ],
            None,
        ),
    ]
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        // The bindings kubeadm's bootstrap-token phase creates.
        binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            vec![group(BOOTSTRAPPERS)],
        ),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![group(BOOTSTRAPPERS)],
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![group("system:nodes")],
        ),
        binding(
            "kubeadm:get-nodes",
            "kubeadm:get-nodes",
            vec![group(BOOTSTRAPPERS)],
        ),
        binding(
            "cluster-admin",
            "cluster-admin",
            vec![group(crate::auth::MASTERS)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            vec![group(crate::auth::AUTHENTICATED)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![group(crate::auth::AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![
                group(crate::auth::AUTHENTICATED),
                group(crate::auth::UNAUTHENTICATED),
            ],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        binding(
            "system:volume-scheduler",
            "system:volume-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding(
            "system:controller:classroom",
            "system:controller:classroom",
            vec![user("system:kube-controller-manager")],
        ),
        // Kubernetes authorizes kubelets with the Node authorizer; Lotse binds the node role to
        // the group and confines each kubelet to its own objects in NodeRestriction admission.
        binding("system:node", "system:node", vec![group("system:nodes")]),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            vec![user(KUBE_PROXY_USER)],
        ),
        binding(
            "system:lotse:network-policy",
            "system:lotse:network-policy",
            vec![user(KUBE_PROXY_USER)],
        ),
        binding(
            "system:lotse:service-lb",
            "system:lotse:service-lb",
            vec![user(KUBE_PROXY_USER)],
        ),
        // A node that joined (`lotse join`) runs its network agent with the node's own
        // credentials, as k3s's agent runs kube-proxy beside the kubelet.
        binding(
            "lotse:node-proxier",
            "system:node-proxier",
            vec![group("system:nodes")],
        ),
        binding(
            "lotse:node-network-policy",
            "system:lotse:network-policy",
            vec![group("system:nodes")],
        ),
    ]
}

/// The group of bootstrap-token users.
const BOOTSTRAPPERS: &str = crate::authn::bootstrap_token::BOOTSTRAPPERS_GROUP;

/// kubeadm's `kubeadm:bootstrap-signer-clusterinfo` Role and RoleBinding in `kube-public`:
/// anonymous users may get the `cluster-info` ConfigMap (joining nodes read it before they have
/// credentials, and verify it with its JWS signature and the CA hash).
pub fn cluster_info_role_and_binding() -> (Value, Value) {
    let name = "kubeadm:bootstrap-signer-clusterinfo";
    let ns = crate::authn::bootstrap_token::PUBLIC_NAMESPACE;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": ns},
        "rules": [{
            "verbs": ["get"],
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [crate::authn::bootstrap_token::CLUSTER_INFO],
        }],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [user(crate::auth::ANONYMOUS)],
    });
    (role, binding)
}

/// Creates the `kube-public` Role and RoleBinding of [`cluster_info_role_and_binding`] when
/// missing (after the namespace exists).
pub async fn ensure_cluster_info_access(writer: &dyn ObjectWriter) {
    let (role, binding) = cluster_info_role_and_binding();
    let ns = Some(crate::authn::bootstrap_token::PUBLIC_NAMESPACE);
    for (def, obj) in [(&ROLES, role), (&ROLEBINDINGS, binding)] {
        match writer.create_object(def, ns, obj).await {
            Ok(_) | Err(crate::error::ApiError { code: 409, .. }) => {}
            Err(e) => {
                tracing::warn!(kind = def.kind, error = %e, "could not create kubeadm:bootstrap-signer-clusterinfo")
            }
        }
    }
}

/// Creates `kube-public/cluster-info` with the CA and `server_url`, or updates its kubeconfig
/// when the CA or the URL changed (signatures are then recomputed by the bootstrap signer).
pub async fn ensure_cluster_info(writer: &dyn ObjectWriter, ca_pem: &str, server_url: &str) {
    let kubeconfig = bt::cluster_info_kubeconfig(ca_pem, server_url);
    match writer
        .get_stored(&CONFIGMAPS, Some(bt::PUBLIC_NAMESPACE), bt::CLUSTER_INFO)
        .await
    {
        Ok((old, rv)) => {
            if old.pointer("/data/kubeconfig").and_then(Value::as_str) == Some(&kubeconfig) {
                return;
            }
            let mut new = old.clone();
            crate::registry::fields::ensure_object(&mut new, &["data"])
                .insert(bt::KUBECONFIG_KEY.into(), Value::String(kubeconfig));
            if let Err(e) = writer
                .update_object(
                    &CONFIGMAPS,
                    Some(bt::PUBLIC_NAMESPACE),
                    bt::CLUSTER_INFO,
                    old,
                    rv,
                    new,
                    crate::write::UpdateScope::Main,
                )
                .await
            {
                tracing::warn!(error = %e, "could not update kube-public/cluster-info");
            }
        }
        Err(crate::error::ApiError { code: 404, .. }) => {
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": bt::CLUSTER_INFO, "namespace": bt::PUBLIC_NAMESPACE},
                "data": {bt::KUBECONFIG_KEY: kubeconfig},
            });
            match writer
                .create_object(&CONFIGMAPS, Some(bt::PUBLIC_NAMESPACE), cm)
                .await
            {
                Ok(_) => tracing::info!("created kube-public/cluster-info"),
                Err(e) if e.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "could not create kube-public/cluster-info"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read kube-public/cluster-info"),
    }
}

/// Brings an existing bootstrap ClusterRole that allows auto-update back to this version's rules
/// (Kubernetes reconciles them the same way at start).
async fn reconcile_rules(writer: &dyn ObjectWriter, name: &str, rules: Option<Value>) {
    let Ok((old, rv)) = writer.get_stored(&CLUSTERROLES, None, name).await else {
        return;
    };
    let autoupdate = old
        .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
        .and_then(Value::as_str)
        != Some("false");
    if !autoupdate || old.get("rules") == rules.as_ref() {
        return;
    }
    let mut new = old.clone();
    if let (Value::Object(m), Some(r)) = (&mut new, rules) {
        m.insert("rules".into(), r);
    }
    match writer
        .update_object(
            &CLUSTERROLES,
            None,
            name,
            old,
            rv,
            new,
            crate::write::UpdateScope::Main,
        )
        .await
    {
        Ok(_) => tracing::info!(clusterrole = %name, "reconciled bootstrap clusterrole rules"),
        Err(e) => {
            tracing::warn!(clusterrole = %name, error = %e, "could not reconcile bootstrap clusterrole")
        }
    }
}

/// Creates missing bootstrap roles and bindings.
pub async fn ensure(writer: &dyn ObjectWriter) {
    for role in cluster_roles() {
        let name = crate::registry::fields::name(&role).to_string();
        let rules = role.get("rules").cloned();
        let aggregated = role.get("aggregationRule").is_some();
        match writer.create_object(&CLUSTERROLES, None, role).await {
            Ok(_) => tracing::debug!(clusterrole = %name, "created bootstrap clusterrole"),
            Err(e) if e.code == 409 && !aggregated => reconcile_rules(writer, &name, rules).await,
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(clusterrole = %name, error = %e, "could not create bootstrap clusterrole")
            }
        }
    }
    for b in cluster_role_bindings() {
        let name = crate::registry::fields::name(&b).to_string();
        match writer.create_object(&CLUSTERROLEBINDINGS, None, b).await {
            Ok(_) => {
                tracing::debug!(clusterrolebinding = %name, "created bootstrap clusterrolebinding")
            }
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(clusterrolebinding = %name, error = %e, "could not create bootstrap clusterrolebinding")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorization::rbac::PolicyRule;

    #[test]
    fn bootstrap_objects_decode_and_aggregate() {
        let roles = cluster_roles();
        for r in &roles {
            let rules: Vec<PolicyRule> = serde_json::from_value(r["rules"].clone()).unwrap();
            assert!(rules.iter().all(|r| !r.verbs.is_empty()));
        }
        let edit = roles
            .iter()
            .find(|r| r["metadata"]["name"] == "edit")
            .unwrap();
        let rules = crate::authorization::rbac::aggregated_rules(edit, &roles).unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r.resources.contains(&"deployments/scale".to_string())
                    && r.verbs.contains(&"update".to_string()))
        );
        // view's own rules are aggregated into edit through system:aggregate-to-view → view.
        assert!(
            cluster_role_bindings()
                .iter()
                .all(|b| b["roleRef"]["name"].is_string())
        );
    }
}
