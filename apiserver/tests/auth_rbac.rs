//! The RBAC authorizer in-process over real watch caches: decisions with many bindings, fresh
//! reads after writes, aggregation, and the authorization cost with 1 000 RoleBindings and
//! 200 ClusterRoles (printed, not asserted).

use std::sync::Arc;
use std::time::Instant;

use apiserver::auth::UserInfo;
use apiserver::authorization::{Attributes, Decision};
use apiserver::endpoints::handlers::create_object;
use apiserver::registry::resources::{
    CLUSTERROLEBINDINGS, CLUSTERROLES, NAMESPACES, ROLEBINDINGS, SERVICEACCOUNTS,
};
use apiserver::state::AppState;
use apiserver::storage::Storage;
use serde_json::json;

mod common;

async fn state() -> (Arc<AppState>, Arc<dyn Storage>) {
    let (state, store) = common::state().await;
    state.start_loops();
    (state, store)
}

fn sa(ns: &str, name: &str) -> UserInfo {
    UserInfo::service_account(ns, name, "uid")
}

async fn allowed(state: &AppState, a: &Attributes) -> bool {
    matches!(
        state.authz().authorize(a).await.expect("authorize"),
        Decision::Allow(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_bindings_and_aggregation() {
    let (state, _store) = state().await;
    create_object(
        &state,
        &NAMESPACES,
        None,
        json!({"metadata": {"name": "entenhausen"}}),
        false,
        None,
        "Update",
    )
    .await
    .expect("ns");
    create_object(
        &state,
        &SERVICEACCOUNTS,
        Some("entenhausen"),
        json!({"metadata": {"name": "donald"}}),
        false,
        None,
        "Update",
    )
    .await
    .expect("sa");
    let donald = sa("entenhausen", "donald");
    let list_pods = Attributes::resource(&donald, "list", "", "pods", "", "entenhausen", "");
    assert!(!allowed(&state, &list_pods).await);
    create_object(
        &state,
        &ROLEBINDINGS,
        Some("entenhausen"),
        json!({"metadata": {"name": "donald-edit"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "ServiceAccount", "name": "donald", "namespace": "entenhausen"}]}),
        false,
        None,
        "Update",
    )
    .await
    .expect("binding");
    // edit gets its rules from the aggregation loop; wait for it.
    let scale = Attributes::resource(
        &donald,
        "update",
        "apps",
        "deployments",
        "scale",
        "entenhausen",
        "web",
    );
    let mut ok = false;
    for _ in 0..100 {
        if allowed(&state, &list_pods).await && allowed(&state, &scale).await {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "edit (aggregated) allows listing pods and scaling deployments"
    );
    let other_ns = Attributes::resource(&donald, "list", "", "pods", "", "kube-system", "");
    assert!(!allowed(&state, &other_ns).await);
    assert!(
        !allowed(
            &state,
            &Attributes::resource(
                &donald,
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                "",
                "entenhausen",
                ""
            )
        )
        .await
    );
    let admin = UserInfo::from_cert("lotse-admin".into(), vec!["system:masters".into()]);
    assert!(
        allowed(
            &state,
            &Attributes::resource(&admin, "delete", "", "nodes", "", "", "n1")
        )
        .await
    );
    let anon = UserInfo::anonymous();
    let healthz = Attributes {
        user: anon.clone(),
        verb: "get".into(),
        path: "/healthz".into(),
        ..Default::default()
    };
    assert!(allowed(&state, &healthz).await);
    let api = Attributes {
        user: anon,
        verb: "get".into(),
        path: "/api".into(),
        ..Default::default()
    };
    assert!(!allowed(&state, &api).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_cost_with_many_bindings() {
    let (state, _store) = state().await;
    for i in 0..200 {
        let role = json!({"metadata": {"name": format!("role-{i}")},
            "rules": [{"apiGroups": [""], "resources": ["configmaps", format!("res{i}")], "verbs": ["get", "list"]},
                      {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": [format!("d{i}")]}]});
        create_object(&state, &CLUSTERROLES, None, role, false, None, "Update")
            .await
            .expect("clusterrole");
    }
    for i in 0..50 {
        create_object(
            &state,
            &NAMESPACES,
            None,
            json!({"metadata": {"name": format!("ns-{i}")}}),
            false,
            None,
            "Update",
        )
        .await
        .expect("ns");
    }
    for i in 0..1000 {
        let ns = format!("ns-{}", i % 50);
        let rb = json!({"metadata": {"name": format!("rb-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("role-{}", i % 200)},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns}, {"kind": "Group", "name": format!("group-{i}")}]});
        create_object(&state, &ROLEBINDINGS, Some(&ns), rb, false, None, "Update")
            .await
            .expect("rolebinding");
    }
    for i in 0..20 {
        let crb = json!({"metadata": {"name": format!("crb-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("role-{i}")},
            "subjects": [{"kind": "User", "name": format!("user-{i}")}]});
        create_object(
            &state,
            &CLUSTERROLEBINDINGS,
            None,
            crb,
            false,
            None,
            "Update",
        )
        .await
        .expect("crb");
    }
    let user = sa("ns-7", "sa-957");
    let allowed_req = Attributes::resource(&user, "list", "", "configmaps", "", "ns-7", "");
    let denied_req = Attributes::resource(&user, "delete", "", "configmaps", "", "ns-7", "x");
    // Warm up (first call builds the snapshot after the caches caught up).
    assert!(allowed(&state, &allowed_req).await);
    assert!(!allowed(&state, &denied_req).await);
    for (what, req) in [("allowed", &allowed_req), ("denied", &denied_req)] {
        let mut samples = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            let _ = state.authz().authorize(req).await.expect("authorize");
            samples.push(t.elapsed());
        }
        samples.sort();
        let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "rbac authorize ({what}) with 1000 RoleBindings, 200 ClusterRoles: p50 {:?}, p99 {:?}, max {:?} (goal: p99 <= 200µs)",
            p(0.5),
            p(0.99),
            samples[samples.len() - 1]
        );
    }
}
