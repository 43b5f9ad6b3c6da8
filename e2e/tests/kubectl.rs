//! The real kubectl (1.27, 1.30, 1.33) against the real apiserver binary, on SQLite and etcd.
//!
//! Each test starts its own apiserver and walks the command set of issue 2: apply a
//! multi-document manifest, get (table and -o yaml), get -w, label, scale, patch (merge and
//! json), replace, explain, delete, and the error cases kubectl users hit.

use std::time::Duration;

use e2e::{ApiServer, Backend, Kubectl, manifest, testdata};
use serde_json::Value;

/// Extra flags for apply/create -f. None: every kubectl (1.27/1.28 read OpenAPI v2 protobuf,
/// newer ones v3) validates against the server with the default `--validate`.
fn validate_flags(_k: &Kubectl) -> Vec<&'static str> {
    vec![]
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_default()
}

fn get_json(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&all).expect("kubectl get -o json")).expect("JSON output")
}

fn get_yaml(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "yaml"]);
    serde_yaml::from_str(&k.ok(&all).expect("kubectl get -o yaml")).expect("YAML output")
}

/// Asserts that `text` (kubectl output) contains `want`.
#[track_caller]
fn assert_has(text: &str, want: &str) {
    assert!(text.contains(want), "output lacks {want:?}:\n{text}");
}

fn in_service_range(ip: &str) -> bool {
    // 10.96.0.0/12 = 10.96.0.0 – 10.111.255.255
    let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
    octets.len() == 4 && octets[0] == 10 && (96..=111).contains(&octets[1])
}

/// The whole kubectl walk-through against one apiserver with one kubectl minor.
fn walk_through(server: &ApiServer, minor: u32) {
    let k = server.kubectl(minor);
    let v = validate_flags(&k);
    let web_lab = manifest("examples/web-lab.yaml");
    let web_lab = web_lab.to_str().expect("path");

    // apply: one multi-document manifest, five kinds.
    let mut args = vec!["apply", "-f", web_lab];
    args.extend(&v);
    let out = k.ok(&args).expect("apply");
    for line in [
        "namespace/web-lab created",
        "serviceaccount/student created",
        "deployment.apps/web created",
        "service/web created",
        "networkpolicy.networking.k8s.io/web-allow-http created",
    ] {
        assert_has(&out, line);
    }
    // Applying the same manifest again changes nothing.
    let out = k.ok(&args).expect("apply again");
    assert_has(&out, "deployment.apps/web unchanged");

    // get: tables with the columns Kubernetes prints.
    let ns = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", "web-lab"]);
        k.ok(&all).expect("get")
    };
    let t = ns(&["get", "deployments"]);
    assert_eq!(
        header(&t),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{t}"
    );
    assert_eq!(row(&t, "web")[1..4], ["0/2", "0", "0"], "{t}");
    let t = ns(&["get", "services"]);
    assert_eq!(
        header(&t),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{t}"
    );
    let svc_row = row(&t, "web");
    assert_eq!(svc_row[1], "ClusterIP", "{t}");
    assert!(
        in_service_range(svc_row[2]),
        "cluster IP {} outside 10.96.0.0/12",
        svc_row[2]
    );
    assert_eq!(svc_row[3..5], ["<none>", "80/TCP"], "{t}");
    let t = ns(&["get", "networkpolicies"]);
    assert_eq!(header(&t), ["NAME", "POD-SELECTOR", "AGE"], "{t}");
    assert_eq!(row(&t, "web-allow-http")[1], "app=web", "{t}");
    let t = ns(&["get", "serviceaccounts"]);
    assert_eq!(header(&t), ["NAME", "SECRETS", "AGE"], "{t}");
    assert_eq!(row(&t, "student")[1], "0", "{t}");
    let t = k.ok(&["get", "namespaces"]).expect("get ns");
    assert_eq!(header(&t), ["NAME", "STATUS", "AGE"], "{t}");
    assert_eq!(row(&t, "web-lab")[1], "Active", "{t}");
    assert_eq!(row(&t, "default")[1], "Active", "{t}");
    let t = ns(&["get", "deployments", "-o", "wide"]);
    assert_eq!(
        header(&t),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{t}"
    );
    assert_eq!(
        row(&t, "web")[5..],
        ["nginx", "nginx:1.22", "app=web"],
        "{t}"
    );

    // get -o yaml: server-set metadata and defaults.
    let d = get_yaml(&k, &["get", "deployment", "web", "-n", "web-lab"]);
    let meta = &d["metadata"];
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() == 36),
        "uid: {meta}"
    );
    let rv0: u64 = meta["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("numeric resourceVersion");
    assert!(rv0 > 0);
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "creationTimestamp: {meta}"
    );
    assert_eq!(meta["generation"], 1);
    let spec = &d["spec"];
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], "25%");
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    let s = get_yaml(&k, &["get", "service", "web", "-n", "web-lab"]);
    let ip = s["spec"]["clusterIP"].as_str().expect("clusterIP");
    assert!(in_service_range(ip), "clusterIP {ip}");
    assert_eq!(s["spec"]["clusterIPs"][0], ip);
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["sessionAffinity"], "None");
    assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);

    // label: metadata only, generation unchanged.
    assert_has(
        &k.ok(&[
            "label",
            "deployment",
            "web",
            "-n",
            "web-lab",
            "tier=frontend",
        ])
        .expect("label"),
        "deployment.apps/web labeled",
    );
    let d = get_json(&k, &["get", "deployment", "web", "-n", "web-lab"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["generation"], 1);
    let t = ns(&["get", "deployments", "-l", "tier=frontend"]);
    assert_eq!(row(&t, "web").first(), Some(&"web"), "label selector: {t}");
    let t = k
        .run(&["get", "deployments", "-n", "web-lab", "-l", "tier=backend"])
        .expect("get");
    assert!(
        !t.stdout.contains("web"),
        "selector tier=backend matched: {}",
        t.stdout
    );

    // get -w sees a later change (scale), and scale bumps generation.
    let watch = k
        .spawn(
            &["get", "deployment", "web", "-n", "web-lab", "-w"],
            server.data_dir(),
        )
        .expect("spawn get -w");
    let (seen, out) = watch.wait_for(Duration::from_secs(20), |o| o.contains("0/2"));
    assert!(
        seen,
        "get -w printed no initial row: {out}\n{}",
        watch.stderr()
    );
    assert_has(
        &k.ok(&[
            "scale",
            "deployment",
            "web",
            "-n",
            "web-lab",
            "--replicas=3",
        ])
        .expect("scale"),
        "deployment.apps/web scaled",
    );
    let (seen, out) = watch.wait_for(Duration::from_secs(20), |o| o.contains("0/3"));
    assert!(
        seen,
        "get -w did not see the scale: {out}\n{}",
        watch.stderr()
    );
    drop(watch);
    let d = get_json(&k, &["get", "deployment", "web", "-n", "web-lab"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);

    // patch --type merge and --type json.
    let patch = |ty: &str, body: &str| {
        k.run(&[
            "patch",
            "deployment",
            "web",
            "-n",
            "web-lab",
            "--type",
            ty,
            "-p",
            body,
        ])
    };
    let out = patch(
        "merge",
        r#"{"spec":{"minReadySeconds":5},"metadata":{"annotations":{"lotse.dev/note":"merged"}}}"#,
    );
    assert_has(
        &out.and_then(|o| o.success()).expect("merge patch").stdout,
        "deployment.apps/web patched",
    );
    let out = patch(
        "json",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:1.26"}]"#,
    );
    assert_has(
        &out.and_then(|o| o.success()).expect("json patch").stdout,
        "deployment.apps/web patched",
    );
    let d = get_json(&k, &["get", "deployment", "web", "-n", "web-lab"]);
    assert_eq!(d["spec"]["minReadySeconds"], 5);
    assert_eq!(d["metadata"]["annotations"]["lotse.dev/note"], "merged");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(d["metadata"]["generation"], 4);
    // A json patch whose test op fails is refused and changes nothing.
    let out = patch(
        "json",
        r#"[{"op":"test","path":"/spec/replicas","value":7},{"op":"replace","path":"/spec/replicas","value":9}]"#,
    );
    out.and_then(|o| o.failure())
        .expect("failed json patch test op");
    assert_eq!(
        get_json(&k, &["get", "deployment", "web", "-n", "web-lab"])["spec"]["replicas"],
        3
    );

    // replace with the current object; then with the stale one → Conflict.
    let mut stale = d.clone();
    let mut current = d;
    current["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "replaced".into();
    let mut replace = vec!["replace", "-f", "-", "-v=6"];
    replace.extend(&v);
    let out = k.ok_stdin(&replace, &current.to_string());
    assert_has(&out.expect("replace"), "deployment.apps/web replaced");
    let d = get_json(&k, &["get", "deployment", "web", "-n", "web-lab"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "replaced"
    );
    assert_eq!(d["metadata"]["generation"], 5);
    stale["spec"]["replicas"] = 1.into();
    let out = k
        .run_stdin(&replace, &stale.to_string())
        .and_then(|o| o.failure())
        .expect("stale replace");
    assert!(
        out.stderr.contains("409 Conflict"),
        "stale replace: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on \
             deployments.apps \"web\": the object has been modified; please apply your changes to the latest \
             version and try again"
        ),
        "stale replace: {}",
        out.stderr
    );
    assert_eq!(
        get_json(&k, &["get", "deployment", "web", "-n", "web-lab"])["spec"]["replicas"],
        3
    );

    // explain reads the schema from /openapi/v3 (all three versions).
    let out = k.ok(&["explain", "deployment.spec"]).expect("explain");
    for want in [
        "KIND:",
        "Deployment",
        "FIELD: spec",
        "replicas",
        "strategy",
        "template",
    ] {
        assert_has(&out, want);
    }

    // Error cases as kubectl shows them.
    // (`create -f`: kubectl 1.32+ sends protobuf bodies for `create namespace|configmap`, which
    // the apiserver does not decode yet; `-f` sends JSON on every version.)
    let mut create = vec!["create", "-f", "-", "-v=6"];
    create.extend(&v);
    // Duplicate create → AlreadyExists.
    let ns_doc = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"web-lab"}}"#;
    let out = k
        .run_stdin(&create, ns_doc)
        .and_then(|o| o.failure())
        .expect("dup");
    assert_has(&out.stderr, "409 Conflict");
    assert_has(
        &out.stderr,
        "Error from server (AlreadyExists): error when creating \"STDIN\": namespaces \"web-lab\" already exists",
    );
    // Invalid name → 422 Invalid with the field path.
    let cm = |ns: &str, name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"{ns}"}}}}"#
        )
    };
    let out = k
        .run_stdin(&create, &cm("web-lab", "Bad_Name"))
        .and_then(|o| o.failure())
        .expect("invalid name");
    assert_has(&out.stderr, "422 Unprocessable Entity");
    assert_has(
        &out.stderr,
        "The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\"",
    );
    // Missing namespace → NotFound for the namespace.
    let out = k
        .run_stdin(&create, &cm("nowhere", "cm"))
        .and_then(|o| o.failure())
        .expect("missing namespace");
    assert_has(&out.stderr, "404 Not Found");
    assert_has(&out.stderr, "namespaces \"nowhere\" not found");
    // Unknown field with --validate=strict → 400 naming the field (server-side validation on
    // every version, 1.27 included).
    {
        let bad = testdata("unknown-field-deployment.yaml");
        let out = k
            .run(&[
                "apply",
                "--validate=strict",
                "-f",
                bad.to_str().expect("path"),
            ])
            .and_then(|o| o.failure())
            .expect("unknown field");
        assert_has(&out.stderr, "unknown field \"spec.replicaz\"");
        assert_has(&out.stderr, "BadRequest");
    }
    // Unknown resource → 404.
    let out = k
        .run(&["get", "--raw", "/api/v1/namespaces/web-lab/gizmos"])
        .and_then(|o| o.failure())
        .expect("unknown resource");
    assert_has(&out.stderr, "(NotFound)");
    let out = k
        .run(&["get", "gizmos"])
        .and_then(|o| o.failure())
        .expect("unknown kind");
    assert_has(
        &out.stderr,
        "the server doesn't have a resource type \"gizmos\"",
    );
    // Malformed JSON body → 400.
    let out = k
        .run(&[
            "create",
            "--raw",
            "/api/v1/namespaces/web-lab/configmaps",
            "-f",
            testdata("malformed.json").to_str().expect("path"),
            "-v=6",
        ])
        .and_then(|o| o.failure())
        .expect("malformed");
    assert_has(&out.stderr, "400 Bad Request");

    // delete returns once the object is gone.
    assert_has(
        &k.ok(&["delete", "deployment", "web", "-n", "web-lab"])
            .expect("delete"),
        "deployment.apps \"web\" deleted",
    );
    let out = k
        .run(&["get", "deployment", "web", "-n", "web-lab"])
        .and_then(|o| o.failure())
        .expect("gone");
    assert_has(
        &out.stderr,
        "Error from server (NotFound): deployments.apps \"web\" not found",
    );
    assert_has(
        &k.ok(&[
            "delete",
            "-f",
            web_lab,
            "--ignore-not-found",
            "--wait=false",
        ])
        .expect("delete -f"),
        "service \"web\" deleted",
    );
}

async fn run(backend: Backend, minor: u32) {
    let server = ApiServer::start(backend).await.expect("start apiserver");
    let result = tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            walk_through(&server, minor)
        }))
    });
    if let Err(panic) = result {
        eprintln!("--- apiserver log ---\n{}", server.log());
        std::panic::resume_unwind(panic);
    }
}

/// One test per backend and kubectl minor.
macro_rules! kubectl_tests {
    ($($name:ident: $backend:ident, $minor:literal, $why:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = $why]
        async fn $name() {
            run(Backend::$backend, $minor).await;
        }
    )*};
}

kubectl_tests! {
    kubectl_1_27_sqlite: Sqlite, 27, "needs built apiserver binary; run via .ci/test";
    kubectl_1_30_sqlite: Sqlite, 30, "needs built apiserver binary; run via .ci/test";
    kubectl_1_33_sqlite: Sqlite, 33, "needs built apiserver binary; run via .ci/test";
    kubectl_1_27_etcd: Etcd, 27, "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test";
    kubectl_1_30_etcd: Etcd, 30, "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test";
    kubectl_1_33_etcd: Etcd, 33, "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test";
}

const RUNTIME_CLASS: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: sandboxed}
handler: runsc
overhead:
  podFixed: {cpu: 250m, memory: 120Mi}
scheduling:
  nodeSelector: {runtime: sandboxed}
  tolerations:
  - {key: runtime, operator: Equal, value: sandboxed, effect: NoSchedule}
"#;

fn pod_yaml(name: &str, class: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  runtimeClassName: {class}\n  automountServiceAccountToken: false\n  containers: [{{name: c, image: busybox}}]\n{extra}"
    )
}

/// A pending kubelet client certificate request named `name`, as JSON.
fn csr_json(name: &str) -> String {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    let pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("csr");
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"]},
    })
    .to_string()
}

/// The rest of the everyday API (issue 17 point 6) with kubectl 1.33 against the apiserver
/// alone: the APIServices kube-apiserver registers for its group versions (`kubectl get
/// apiservices`: SERVICE Local, AVAILABLE True) and an aggregated one reported unavailable;
/// RuntimeClass (api-resources, explain, NAME/HANDLER/AGE, immutable handler) and its admission
/// (overhead and scheduling set on the pod, a missing class or another overhead refused with
/// Kubernetes' messages); PATCH (merge and JSON) on `certificatesigningrequests/<name>/approval`;
/// a CRD's group versions registered and unregistered. About 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn apiservices_runtimeclasses_and_csr_approval_patch() {
    let server = ApiServer::start(Backend::Sqlite)
        .await
        .expect("start apiserver");
    let k = server.kubectl(33);
    let result = tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| everyday_api(&k)))
    });
    if let Err(panic) = result {
        eprintln!("--- apiserver log ---\n{}", server.log());
        std::panic::resume_unwind(panic);
    }
    // PATCH on the approval subresource, as client libraries send it.
    k.ok_stdin(&["create", "-f", "-"], &csr_json("n1"))
        .expect("create csr n1");
    k.ok_stdin(&["create", "-f", "-"], &csr_json("n2"))
        .expect("create csr n2");
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let approve = serde_json::json!({"spec": {"signerName": "example.com/changed"},
        "status": {"conditions": [{"type": "Approved", "status": "True",
        "reason": "PatchApproved", "message": "approved by a merge patch"}]}});
    let (code, body) = server
        .raw(
            "PATCH",
            &format!("{path}/n1/approval"),
            Some("application/merge-patch+json"),
            approve.to_string().into_bytes(),
        )
        .await
        .expect("patch approval");
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 200, "{body}");
    let deny = serde_json::json!([{"op": "add", "path": "/status", "value": {"conditions": [
        {"type": "Denied", "status": "True", "reason": "PatchDenied", "message": "no"}]}}]);
    let (code, body) = server
        .raw(
            "PATCH",
            &format!("{path}/n2/approval"),
            Some("application/json-patch+json"),
            deny.to_string().into_bytes(),
        )
        .await
        .expect("patch approval");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let both = serde_json::json!({"status": {"conditions": [
        {"type": "Approved", "status": "True", "reason": "A"},
        {"type": "Denied", "status": "True", "reason": "D"}]}});
    let (code, body) = server
        .raw(
            "PATCH",
            &format!("{path}/n2/approval"),
            Some("application/merge-patch+json"),
            both.to_string().into_bytes(),
        )
        .await
        .expect("patch approval");
    assert_eq!(code, 422, "{}", String::from_utf8_lossy(&body));
    let table = k.ok(&["get", "csr"]).expect("get csr");
    assert_eq!(row(&table, "n1").last(), Some(&"Approved"), "{table}");
    assert_eq!(row(&table, "n2").last(), Some(&"Denied"), "{table}");
    let signer = k
        .ok(&["get", "csr", "n1", "-o", "jsonpath={.spec.signerName}"])
        .expect("signer");
    assert_eq!(signer, "kubernetes.io/kube-apiserver-client-kubelet");
}

fn everyday_api(k: &Kubectl) {
    // The APIServices of the served group versions.
    let table = k.ok(&["get", "apiservices"]).expect("get apiservices");
    assert_eq!(
        header(&table),
        ["NAME", "SERVICE", "AVAILABLE", "AGE"],
        "{table}"
    );
    for name in [
        "v1.",
        "v1.apps",
        "v1.batch",
        "v2.autoscaling",
        "v1.autoscaling",
        "v1.node.k8s.io",
        "v1.apiregistration.k8s.io",
        "v1beta1.metrics.k8s.io",
    ] {
        assert_eq!(
            row(&table, name)[1..3],
            ["Local", "True"],
            "{name}: {table}"
        );
    }
    let apps = get_json(k, &["get", "apiservice", "v1.apps"]);
    assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800, "{apps}");
    assert_eq!(apps["spec"]["versionPriority"], 15, "{apps}");
    assert!(apps["spec"].get("service").is_none(), "{apps}");
    assert_eq!(
        apps["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"],
        "onstart"
    );
    assert_eq!(apps["status"]["conditions"][0]["reason"], "Local", "{apps}");
    // An aggregated API is stored, and reported unavailable: Lotse does not proxy it.
    k.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1beta1.custom.metrics.k8s.io}\nspec:\n  group: custom.metrics.k8s.io\n  version: v1beta1\n  groupPriorityMinimum: 100\n  versionPriority: 100\n  insecureSkipTLSVerify: true\n  service: {namespace: monitoring, name: adapter}\n",
    )
    .expect("create apiservice");
    let table = e2e::eventually(
        "aggregated APIService reported",
        Duration::from_secs(30),
        || {
            let t = k.ok(&["get", "apiservices"])?;
            anyhow::ensure!(
                row(&t, "v1beta1.custom.metrics.k8s.io")[1..3] == ["monitoring/adapter", "False"],
                "{t}"
            );
            Ok(t)
        },
    )
    .expect("availability");
    assert_eq!(
        row(&table, "v1beta1.custom.metrics.k8s.io")[3],
        "(AggregationNotSupported)",
        "{table}"
    );

    // A CRD's group versions get APIServices while it exists (the crdRegistrationController).
    let crd = testdata("crd/crontab-crd.yaml");
    let crd = crd.to_str().unwrap_or_default();
    k.ok(&["apply", "-f", crd]).expect("apply crd");
    for v in ["v1", "v1beta1"] {
        let name = format!("{v}.stable.example.com");
        let got = e2e::eventually("CRD APIService", Duration::from_secs(30), || {
            let out = k.ok(&[
                "get",
                "apiservice",
                &name,
                "-o",
                "jsonpath={.spec.groupPriorityMinimum} {.spec.versionPriority} {.metadata.labels}",
            ])?;
            anyhow::ensure!(!out.is_empty());
            Ok(out)
        })
        .expect("CRD APIService");
        assert_eq!(
            got,
            r#"1000 100 {"kube-aggregator.kubernetes.io/automanaged":"true"}"#
        );
    }
    k.ok(&["delete", "-f", crd]).expect("delete crd");
    e2e::eventually("CRD APIService gone", Duration::from_secs(30), || {
        let out = k.run(&["get", "apiservice", "v1.stable.example.com"])?;
        anyhow::ensure!(out.code != 0, "still there");
        Ok(())
    })
    .expect("CRD APIService removed");

    // Neither a custom nor an external metrics API is served (the HPA controller reports it).
    let err = k
        .fails(&[
            "get",
            "--raw",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue",
        ])
        .expect("no external metrics API");
    assert_has(
        &err,
        "Error from server (NotFound): the server could not find the requested resource",
    );
    assert!(
        !k.ok(&["api-versions"])
            .expect("api-versions")
            .contains("custom.metrics.k8s.io")
    );

    // RuntimeClass: discovery, explain, table, validation.
    let resources = k.ok(&["api-resources"]).expect("api-resources");
    let rc_row = row(&resources, "runtimeclasses");
    assert_eq!(
        rc_row,
        ["runtimeclasses", "node.k8s.io/v1", "false", "RuntimeClass"]
    );
    let as_row = row(&resources, "apiservices");
    assert_eq!(
        as_row,
        [
            "apiservices",
            "apiregistration.k8s.io/v1",
            "false",
            "APIService"
        ]
    );
    let explain = k.ok(&["explain", "runtimeclass"]).expect("explain");
    assert_has(&explain, "RuntimeClass");
    assert_has(&explain, "handler");
    k.ok_stdin(&["create", "-f", "-"], RUNTIME_CLASS)
        .expect("create runtimeclass");
    let table = k.ok(&["get", "runtimeclass"]).expect("get runtimeclass");
    assert_eq!(header(&table), ["NAME", "HANDLER", "AGE"], "{table}");
    assert_eq!(
        row(&table, "sandboxed")[..2],
        ["sandboxed", "runsc"],
        "{table}"
    );
    let err = k
        .fails(&[
            "patch",
            "runtimeclass",
            "sandboxed",
            "--type=merge",
            "-p",
            r#"{"handler":"kata"}"#,
        ])
        .expect("immutable handler");
    assert_has(
        &err,
        "The RuntimeClass \"sandboxed\" is invalid: handler: Invalid value: \"kata\": field is immutable",
    );

    // RuntimeClass admission.
    k.ok(&["create", "serviceaccount", "default"]).ok();
    k.ok_stdin(
        &["create", "-f", "-"],
        &pod_yaml("sandboxed", "sandboxed", "  nodeSelector: {disk: ssd}\n"),
    )
    .expect("create pod");
    let pod = get_json(k, &["get", "pod", "sandboxed"]);
    assert_eq!(
        pod["spec"]["overhead"],
        serde_json::json!({"cpu": "250m", "memory": "120Mi"}),
        "{pod}"
    );
    assert_eq!(
        pod["spec"]["nodeSelector"],
        serde_json::json!({"disk": "ssd", "runtime": "sandboxed"}),
        "{pod}"
    );
    assert!(
        pod["spec"]["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["value"] == "sandboxed")),
        "{pod}"
    );
    let err = k
        .run_stdin(&["create", "-f", "-"], &pod_yaml("lost", "missing", ""))
        .and_then(|o| o.failure())
        .expect("missing class refused")
        .stderr;
    assert_has(
        &err,
        "Error from server (Forbidden): error when creating \"STDIN\": pods \"lost\" is forbidden: pod rejected: RuntimeClass \"missing\" not found",
    );
    let err = k
        .run_stdin(
            &["create", "-f", "-"],
            &pod_yaml("greedy", "sandboxed", "  overhead: {cpu: '1'}\n"),
        )
        .and_then(|o| o.failure())
        .expect("other overhead refused")
        .stderr;
    assert_has(
        &err,
        "pods \"greedy\" is forbidden: pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead",
    );
}
