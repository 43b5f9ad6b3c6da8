//! A teacher's class namespace with a ResourceQuota and a LimitRange, driven by the real
//! kubectl 1.33 against the real apiserver binary: pods that fit are defaulted and admitted,
//! pods that break a limit or the quota are refused with Kubernetes' exact messages, and
//! `status.used` follows.

use e2e::{ApiServer, Backend, Kubectl};

const CLASS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: klasse-7b
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: klasse
  namespace: klasse-7b
spec:
  hard:
    pods: "2"
    requests.cpu: "1"
    limits.cpu: "2"
---
apiVersion: v1
kind: LimitRange
metadata:
  name: klasse
  namespace: klasse-7b
spec:
  limits:
  - type: Container
    max:
      cpu: "2"
    default:
      cpu: 500m
    defaultRequest:
      cpu: 250m
    maxLimitRequestRatio:
      cpu: "2"
  - type: Pod
    max:
      cpu: "2"
"#;

fn pod(name: &str, containers: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: klasse-7b\nspec:\n  containers:\n"
    );
    for (cname, request, limit) in containers {
        out.push_str(&format!("  - name: {cname}\n    image: busybox\n"));
        if !request.is_empty() {
            out.push_str(&format!(
                "    resources:\n      requests:\n        cpu: {request}\n      limits:\n        cpu: {limit}\n"
            ));
        }
    }
    out
}

/// `kubectl apply -f -` that must fail; returns stderr.
fn refused(kubectl: &Kubectl, manifest: &str) -> String {
    let out = kubectl
        .run_stdin(&["apply", "-f", "-"], manifest)
        .expect("run kubectl");
    assert_ne!(out.code, 0, "apply should fail: {}", out.stdout);
    out.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn class_namespace_quota_and_limit_range_with_kubectl() {
    let server = ApiServer::start(Backend::Sqlite)
        .await
        .expect("start apiserver");
    let kubectl = server.kubectl(33);
    let out = kubectl
        .ok_stdin(&["apply", "-f", "-"], CLASS)
        .expect("apply class namespace");
    assert!(out.contains("resourcequota/klasse created"), "{out}");
    assert!(out.contains("limitrange/klasse created"), "{out}");

    // No resources stated: the LimitRange defaults make the pod acceptable to the quota.
    kubectl
        .ok_stdin(
            &["apply", "-f", "-"],
            &pod("hausaufgabe", &[("app", "", "")]),
        )
        .expect("defaulted pod");
    let res = kubectl
        .ok(&[
            "get",
            "pod",
            "hausaufgabe",
            "-n",
            "klasse-7b",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ])
        .expect("get pod");
    assert_eq!(
        res,
        r#"{"limits":{"cpu":"500m"},"requests":{"cpu":"250m"}}"#
    );

    // Pod max: two containers of 1.5 cpu each.
    let err = refused(
        &kubectl,
        &pod(
            "zu-gross",
            &[("a", "1500m", "1500m"), ("b", "1500m", "1500m")],
        ),
    );
    assert!(
        err.contains(
            r#"Error from server (Forbidden): error when creating "STDIN": pods "zu-gross" is forbidden: maximum cpu usage per Pod is 2, but limit is 3"#
        ),
        "{err}"
    );

    // Container limit/request ratio.
    let err = refused(&kubectl, &pod("gierig", &[("app", "250m", "1")]));
    assert!(
        err.contains(
            r#"pods "gierig" is forbidden: cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"#
        ),
        "{err}"
    );

    // The quota: requests.cpu 1 holds 250m + 750m, not a further 500m.
    let err = refused(&kubectl, &pod("referat", &[("app", "1", "1")]));
    assert!(
        err.contains(
            r#"pods "referat" is forbidden: exceeded quota: klasse, requested: requests.cpu=1, used: requests.cpu=250m, limited: requests.cpu=1"#
        ),
        "{err}"
    );
    kubectl
        .ok_stdin(
            &["apply", "-f", "-"],
            &pod("referat", &[("app", "750m", "1")]),
        )
        .expect("pod that fits");
    let err = refused(&kubectl, &pod("dritter", &[("app", "", "")]));
    assert!(
        err.contains(
            r#"pods "dritter" is forbidden: exceeded quota: klasse, requested: pods=1,requests.cpu=250m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"#
        ),
        "{err}"
    );
    let used = kubectl
        .ok(&[
            "get",
            "resourcequota",
            "klasse",
            "-n",
            "klasse-7b",
            "-o",
            "jsonpath={.status.used}",
        ])
        .expect("get quota");
    assert_eq!(
        used,
        r#"{"limits.cpu":"1500m","pods":"2","requests.cpu":"1"}"#
    );
    let describe = kubectl
        .ok(&["describe", "quota", "klasse", "-n", "klasse-7b"])
        .expect("describe quota");
    assert!(
        describe.contains("limits.cpu    1500m  2\npods          2      2\nrequests.cpu  1      1"),
        "{describe}"
    );
}
